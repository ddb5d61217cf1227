"""Experiments of the papers at a scale that runs on a laptop, and the benchmark."""
