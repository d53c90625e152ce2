"""prefgame.models."""
