"""Model options for the runner (being written)."""
