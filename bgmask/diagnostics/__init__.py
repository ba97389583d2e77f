"""Background-reliance diagnostics: Backgrounds-Challenge views of the CUB test set, BG-Gap, and how much of a
standard attribution falls inside the bird (:mod:`~bgmask.diagnostics.views`, :mod:`~bgmask.diagnostics.attribution`).
``docs/diagnostics.md`` documents every construction.

Views (built on the fly from each test image and its bird mask, then the run's evaluation transform):
``only_fg`` background black; ``only_bg_b`` the mask's bounding box black; ``only_bg_t`` the box filled by tiling
the image's own background; ``mixed_same`` / ``mixed_rand`` the bird, composited with its soft mask, on the
``only_bg_t`` of another test image of the same / of another class. ``bg_gap = mixed_same - mixed_rand``.
"""
