"""prefgame.game."""
