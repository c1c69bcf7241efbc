"""Synthetic chest CT phantoms for the sample data, tests and demo-model training."""
