"""Shared library: data, models, masking and training engine for background-masking experiments."""


def load_classifier(folder):
    """An exported classifier (``python -m bgmask.export``) in eval mode: see :func:`bgmask.export.load_classifier`."""
    from bgmask.export import load_classifier as load

    return load(folder)
