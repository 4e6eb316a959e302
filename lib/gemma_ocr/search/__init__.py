"""Hyperparameter search with Optuna: search spaces, samplers, pruning, shared storage, best-config export."""
