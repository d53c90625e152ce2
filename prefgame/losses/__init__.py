"""prefgame.losses."""
