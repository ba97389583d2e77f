"""Test suite (CPU, tiny synthetic data)."""
