"""Training scripts for the shipped models (run once; their weights are committed)."""
