"""The classifier run: one short spine that composes the three axes — a benchmark (the data), a strategy (how the
background is removed) and a model — and writes results.json.

Strategies (:mod:`bgmask.strategies`) differ only in what they ask of the data and the model wrapper; everything
else (data, augmentation, optimiser, evaluation, diagnostics) is shared, which is what keeps their comparison fair.
The phases live in their own modules: :mod:`bgmask.run.session` (processes, device, seeds), :mod:`bgmask.run.model`
(the model on the device, checkpoint loading), :mod:`bgmask.run.fit` (training, resume, preemption),
:mod:`bgmask.run.evaluation` and :mod:`bgmask.run.bias_report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bgmask import benchmarks
from bgmask.benchmarks import resolve_config
from bgmask.config import TrainConfig
from bgmask.errors import ConfigError
from bgmask.infra import distributed
from bgmask.infra.checkpoint import CheckpointManager
from bgmask.infra.logging import write_json_atomic
from bgmask.run.bias_report import add_diagnostics, safe_diagnostics
from bgmask.run.console import ConsoleLog, banner, recipe_warning, summary
from bgmask.run.evaluation import evaluate_checkpoint
from bgmask.run.fit import train
from bgmask.run.model import build_model, check_probe_masks
from bgmask.run.refit import refit
from bgmask.run.session import Session, check_run_folder, resolve_image_size, start_session
from bgmask.strategies import Strategy

# A strategy's run phase (Strategy.phase): what happens between building the model and writing results.json.
PHASES = {"train": train, "refit_last_layer": refit}


def run(cfg: TrainConfig, strategy: Strategy, config_files: Sequence[str] | None = None) -> dict | None:
    """Train (or with ``--eval_only`` evaluate) and write results.json. Returns the results on rank 0.

    The console of rank 0 is kept in the run folder (``train.log``), between a banner line with the recipe and a
    summary block; ``config_files`` (the command line's ``--config`` files) only words the warning given for a
    run without pretrained weights (:func:`bgmask.run.console.recipe_warning`)."""
    cfg.check(torch.cuda.is_available())
    strategy.check(cfg)
    if strategy.phase not in PHASES:
        raise ConfigError(f"--masking {strategy.name} runs the phase {strategy.phase!r}; phases: {', '.join(PHASES)}.")
    benchmark, needs = benchmarks.get(cfg.data.dataset)(), strategy.needs(cfg)
    cfg = resolve_config(cfg, benchmark, needs)  # as the command line does: masked folders, the head init
    benchmark.check(cfg, needs)
    check_probe_masks(cfg, needs)
    session = start_session(cfg)
    check_run_folder(session)
    with ConsoleLog(session.snapshot_dir, enabled=session.info.is_main):
        results = _run(session, benchmark, needs, strategy, config_files)
    distributed.cleanup()
    return results


def _run(session: Session, benchmark, needs, strategy: Strategy, config_files: Sequence[str] | None) -> dict | None:
    cfg = session.cfg
    image_size = resolve_image_size(cfg.model)
    data = benchmark.build(cfg, needs, image_size, device_tail=session.device_tail)
    model, weights = build_model(session, strategy, data.num_classes, image_size)
    if session.info.is_main:  # the recipe, before anything trains
        warning = recipe_warning(cfg, weights, config_files)
        print(banner(cfg, strategy.name, image_size, session.info.world_size, weights)
              + (f"\n{warning}" if warning else ""), flush=True)
    ckpt = CheckpointManager(session.snapshot_dir, cfg.run.save_every_n_epochs, enabled=session.info.is_main)
    if cfg.run.eval_only:
        outcome = evaluate_checkpoint(session, data, model, ckpt)
    else:
        outcome = PHASES[strategy.phase](session, data, model, ckpt, strategy)
    results = {**outcome, "model_arch": cfg.model.model_arch, "masking": strategy.name, "image_size": image_size,
               "num_classes": data.num_classes, "world_size": session.info.world_size, "weights": weights,
               "precision": session.amp.name, "device_tail": session.device_tail,
               "fast_augment": cfg.aug.fast_augment, "dataset": benchmark.name, "head_init": cfg.model.head_init,
               **benchmark.results_info(cfg, needs), **strategy.results_info(cfg),
               "diagnostics": {"pending": "computed after the metrics are written"}}
    # The metrics are on disk before anything optional runs: a failure in the diagnostics never loses them.
    write_results(session, results)
    add_diagnostics(results, safe_diagnostics(session, model, strategy, benchmark, data))
    write_results(session, results)
    if not session.info.is_main:
        return None
    print(summary(results, session.snapshot_dir), flush=True)
    return results


def write_results(session: Session, results: dict) -> None:
    if session.info.is_main:
        write_json_atomic(results, session.snapshot_dir / "results.json")
