"""Baseline and early masking: classifiers trained on original or pre-masked images."""
