"""Evaluation of a run: every named evaluation set of the benchmark, every head, with groups where the set has them;
and ``--eval_only``'s scoring of a checkpoint."""

from __future__ import annotations

from pathlib import Path

from bgmask.benchmarks import BenchmarkData, EvalSet
from bgmask.errors import ConfigError
from bgmask.infra.checkpoint import CheckpointManager, load_checkpoint
from bgmask.run.model import RunModel, reports_every_head
from bgmask.run.session import Session
from bgmask.training.engine import evaluate


def evaluate_heads(session: Session, model: RunModel, sets: dict[str, EvalSet]) -> dict[str, dict[str, dict]]:
    """``{head: {set: metrics}}`` for every head the model answers with (a single-head model: a dict of one), per
    named set (per group and worst group where the set has groups)."""
    per_set = {}
    for name, eval_set in sets.items():
        per_set[name] = evaluate(model.for_eval, session.eval_loader(eval_set.dataset), session.info.device,
                                 session.amp, groups=eval_set.groups, progress=session.info.is_main,
                                 desc=f"eval {name}")
        for metrics in per_set[name].values():
            metrics.update(eval_set.notes)
    heads = list(next(iter(per_set.values()))) if per_set else []
    return {head: {name: result[head] for name, result in per_set.items()} for head in heads}


def results_layout(per_head: dict[str, dict[str, dict]], every_head: bool) -> dict:
    """The one writer of a run's metrics in results.json: the first head's sets at the top level; with
    ``every_head`` (a probe-heads run, :func:`reports_every_head`) every head's under ``probes``."""
    top = next(iter(per_head.values()), {})
    return {**top, "probes": per_head} if every_head else dict(top)


def evaluate_sets(session: Session, model: RunModel, sets: dict[str, EvalSet]) -> dict:
    """:func:`evaluate_heads` in results.json's layout (:func:`results_layout`)."""
    return results_layout(evaluate_heads(session, model, sets), reports_every_head(session.cfg))


def evaluate_checkpoint(session: Session, data: BenchmarkData, model: RunModel, ckpt: CheckpointManager) -> dict:
    """``--eval_only``: the metrics of ``--checkpoint``, or of the run's best (else last) checkpoint; a probe run's
    last."""
    run = session.cfg.run
    # A probe run has no one best epoch (each head has its own): its final weights are scored.
    best = ckpt.best_path if ckpt.best_path.is_file() and not reports_every_head(session.cfg) else None
    path = Path(run.checkpoint) if run.checkpoint else best or ckpt.last_path
    if not path.is_file():
        raise ConfigError(f"--eval_only found no checkpoint: neither {ckpt.best_path} nor {ckpt.last_path} exists; "
                          f"pass --checkpoint FILE.")
    state = load_checkpoint(path)
    model.load(state["model"], path, state.get("weights_identity"))
    return {**evaluate_sets(session, model, data.eval_sets), "epoch": state["epoch"], "checkpoint": str(path)}


def brief(metrics: dict) -> dict:
    """What the training log keeps of a set's metrics."""
    kept = ("top1", "num_images", "loss", "worst_group", "adjusted_average", "per_place")
    return {k: v for k, v in metrics.items() if k in kept}
