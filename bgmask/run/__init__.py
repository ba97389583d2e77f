"""A classifier run: the spine that composes a benchmark, a strategy and a model (:mod:`~bgmask.run.pipeline`, whose
``run(cfg, strategy)`` is the library's entry to training), and its phases: the process group, device and seeds
(:mod:`~bgmask.run.session`), the model on the device (:mod:`~bgmask.run.model`), training with resume and
preemption (:mod:`~bgmask.run.fit`) or a last-layer refit (:mod:`~bgmask.run.refit`), evaluation
(:mod:`~bgmask.run.evaluation`), the background diagnostics (:mod:`~bgmask.run.bias_report`) and what the run says on
its console (:mod:`~bgmask.run.console`)."""
