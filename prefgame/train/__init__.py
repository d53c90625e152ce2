"""prefgame.train."""
