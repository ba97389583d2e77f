"""Shared library: data, models, masking and training engine for background-masking experiments."""
