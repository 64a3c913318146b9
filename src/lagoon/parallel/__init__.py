"""Parallelism applied to a Laguna model from outside the model files (the model knows nothing of it)."""
