"""Benchmarks: `python -m benchmarks` runs them all, prints ratios to a reference measured in the same run."""
