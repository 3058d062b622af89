"""Ratatoskr's daemon and gateway core."""
