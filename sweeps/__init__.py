"""sweeps: the Ray Tune sweep service."""
