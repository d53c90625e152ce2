"""prefgame.arena."""
