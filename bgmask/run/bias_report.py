"""The background diagnostics of a run (:mod:`bgmask.diagnostics`): which model and heads are scored, on which
images, how each takes them; recorded in results.json, and never fatal to the run."""

from __future__ import annotations

import warnings

from bgmask.benchmarks import Benchmark, BenchmarkData
from bgmask.config import TrainConfig
from bgmask.diagnostics import attribution, views
from bgmask.errors import PeerFailure
from bgmask.infra.checkpoint import atomic_torch_save
from bgmask.infra.distributed import agree
from bgmask.models import heads
from bgmask.models.heads import LATE
from bgmask.run.model import RunModel, reports_every_head
from bgmask.run.session import Session
from bgmask.strategies import ModelInput, Strategy
from bgmask.training.engine import evaluate

GALLERY_IMAGES = 6  # attribution maps kept per run for collect_results' gallery


def safe_diagnostics(session: Session, model: RunModel, strategy: Strategy, benchmark: Benchmark,
                     data: BenchmarkData) -> dict:
    """Every head's diagnostics, or ``{"failed": reason}`` for each when they raise (reported, never fatal to the
    run)."""
    try:
        return run_diagnostics(session, model, strategy, benchmark, data)
    except Exception as e:  # noqa: BLE001 - optional step: any failure is recorded, the metrics stay
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
        warnings.warn(f"background diagnostics failed ({reason}); results.json keeps the metrics and records the "
                      f"failure. Rerun with --eval_only to compute them again.", stacklevel=2)
        return {head: {"failed": reason} for head in heads.names_of(model.module)}


def add_diagnostics(results: dict, per_head: dict[str, dict]) -> None:
    """The one writer of the diagnostics in results.json, as of the metrics: the first head's at the top level,
    every probe head's own under ``probes``."""
    for head, head_diagnostics in per_head.items():
        if head in results.get("probes", {}):
            results["probes"][head]["diagnostics"] = head_diagnostics
    results["diagnostics"] = next(iter(per_head.values()))


def head_input(head: str, strategy_input: ModelInput) -> ModelInput:
    """How a probe head's single-head run takes its images: late heads with the mask, the others as the strategy's
    images are (masked for early masking)."""
    if head.startswith(LATE):
        return ModelInput.IMAGE_AND_MASK
    return ModelInput.MASKED_IMAGE if strategy_input is ModelInput.MASKED_IMAGE else ModelInput.IMAGE


def run_diagnostics(session: Session, model: RunModel, strategy: Strategy, benchmark: Benchmark,
                    data: BenchmarkData) -> dict:
    """Background-reliance diagnostics of the final weights, or why they are absent.

    Every test image is scored once per view on any number of processes; rank 0 keeps a few attribution maps, with
    their true and predicted classes, in ``attribution_gallery.pt`` for ``collect_results`` (of every head, with
    probe heads: :func:`~bgmask.diagnostics.attribution.gallery_path`). With probe heads the
    result is ``{head: diagnostics}`` (a single-head run's: a dict of one); a probe head is scored as its
    single-head run's model would be.
    """
    cfg, info = session.cfg, session.info
    names, every_head = heads.names_of(model.module), reports_every_head(session.cfg)
    skipped = None
    if cfg.diagnostics.diagnostics == "none":
        skipped = {"skipped": "--diagnostics none"}
    elif strategy.diagnostics_input is None:
        skipped = {"skipped": f"the {strategy.name!r} strategy declares no diagnostics input"}
    # Every step from here on is agreed by all processes: one that fails alone would leave the others waiting.
    base = agreed(lambda: benchmark.diagnostics_images(cfg), info.device) if skipped is None else None
    if isinstance(base, str):
        skipped = {"skipped": base}
    if skipped is not None:
        return {head: dict(skipped) for head in names}
    per_head = {head: head_input(head, strategy.diagnostics_input) for head in names} if every_head \
        else {names[0]: strategy.diagnostics_input}
    # The views go through the model once for every head; masks come with them when any head takes them.
    kinds = set(per_head.values())
    views_input = next(k for k in (ModelInput.IMAGE_AND_MASK, ModelInput.MASKED_IMAGE, ModelInput.IMAGE)
                       if k in kinds or k is ModelInput.IMAGE)
    seed, eval_tf = cfg.run.seed, data.eval_sets[data.selection].dataset.transform
    stages = [*views.VIEWS, *(f"attribution {head}" for head in per_head)]
    done: list[str] = []
    try:
        out = scored_views(session, model, base, views_input, eval_tf, seed, names, done)
        ds = agreed(lambda: views.DiagnosticViews(base, "original", views_input, eval_tf, seed, with_mask=True),
                    info.device)
        galleries = {}
        for head, kind in per_head.items():
            head_model = model.module.single_head_model(head) if every_head else model.module
            keep = GALLERY_IMAGES if info.is_main else 0
            share, counted, gallery = attribution.fg_attribution(
                head_model, session.eval_loader(ds, attribution_batch_size(cfg)), info.device, kind, gallery=keep,
                progress=info.is_main, autocast=session.amp.autocast, agree_first=True)
            done.append(f"attribution {head}")
            result = out[head]
            result["bg_gap"] = result["mixed_same"]["top1"] - result["mixed_rand"]["top1"]
            result.update(fg_attribution=share, fg_attribution_images=counted,
                          attribution=attribution.attribution_method(head_model),
                          model=f"{strategy.name}, probe head {head}" if every_head else strategy.name)
            if keep:
                galleries[head] = {**gallery, "paths": [ds.base.paths[i] for i in gallery["index"]]}
        if galleries:  # the first head's maps at the top level; every head's (same images) under "heads"
            first = galleries[next(iter(galleries))]
            heads_maps = {h: {k: g[k] for k in ("maps", "labels", "predictions")} for h, g in galleries.items()}
            atomic_torch_save({**first, **({"heads": heads_maps} if every_head else {})},
                              attribution.gallery_path(session.snapshot_dir))
    except PeerFailure as e:
        # Every process gets here at the same stage: the run goes on to write results.json, none waits.
        failure = {"failed": str(e)[:500], "completed": list(done), "skipped": [s for s in stages if s not in done]}
        warnings.warn(f"background diagnostics stopped at {failure['skipped'][0]!r} on every process ({e}); "
                      f"results.json names the skipped views.", stacklevel=2)
        return {head: dict(failure) for head in names}
    return out


def scored_views(session: Session, model: RunModel, base, views_input, eval_tf, seed: int, names: list[str],
                 done: list[str]) -> dict:
    """Top-1 of every head on every view; each view a stage the processes agree on (``done`` grows per view)."""
    out = {head: {} for head in names}
    for view in views.VIEWS:
        ds = agreed(lambda v=view: views.DiagnosticViews(base, v, views_input, eval_tf, seed),
                    session.info.device)
        metrics = evaluate(model.module, session.eval_loader(ds), session.info.device, session.amp,
                           progress=session.info.is_main, desc=f"diagnostics {view}", agree_first=True)
        for head, m in metrics.items():
            out[head][view] = {"top1": m["top1"], "correct": m["correct"], "num_images": m["num_images"]}
        done.append(view)
    return out


def agreed(build, device):
    """``build()`` on every process, then agree: a failure on any process raises PeerFailure on all."""
    error, value = None, None
    try:
        value = build()
    except PeerFailure:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised on every process by agree
        error = e
    agree(error, device)
    return value


def attribution_batch_size(cfg: TrainConfig) -> int:
    """Images per attribution pass (a forward that keeps its activations for a backward to the input).

    A fine-tuning step held the same activations at the training batch, plus gradients and optimiser state; a
    frozen backbone held none, so its attribution runs at an eighth of the batch (docs/scale.md measures both
    against the training step at the paper's sizes). An out-of-memory batch is halved anyway
    (:func:`bgmask.diagnostics.attribution.attribution_in_chunks`)."""
    if cfg.diagnostics.diagnostics_batch_size:
        return cfg.diagnostics.diagnostics_batch_size
    return max(1, cfg.data.batch_size // 8) if cfg.model.freeze_backbone else cfg.data.batch_size
