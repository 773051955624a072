"""Readers of the pipeline's outputs for code outside Spark (model training): libraries, not jobs."""
