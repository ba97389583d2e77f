"""Synthetic pretraining: the demo's backbones pretrained on a synthetic corpus (:mod:`~bgmask.pretraining.pretrain`)
and the cache that keeps them outside the clone, keyed by the code and versions they depend on
(:mod:`~bgmask.pretraining.cache`)."""
