"""Evaluation: win rates, length-controlled win rates, ratings, agreement and reports.

This package may import prefgame; prefgame core never imports it."""
