"""prefgame.data."""
