"""What a run says on the console and keeps of it: one banner line with its recipe at the start, a summary block at
the end, and ``train.log`` in the run folder (rank 0's console, appended to on resume, as MMSegmentation and DeiT
keep a log in their work directory)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bgmask.config import TrainConfig
from bgmask.data.groups import wilson_interval

LOG_NAME = "train.log"


def weights_words(weights: dict) -> str:
    """The backbone's starting weights (:func:`bgmask.models.weights.weights_source`, as results.json records them) in
    words."""
    words = {"none": "random init", "file": f"file {weights.get('location')}", "hub": "timm pretrained (download)",
             "cache": "timm pretrained (cached)"}.get(weights.get("source"), str(weights.get("source")))
    return words + (f", {weights['resampled']}" if weights.get("resampled") else "")


def banner(cfg: TrainConfig, strategy_name: str, image_size: int, world_size: int, weights: dict) -> str:
    """The run's recipe in one line: strategy, model, weights, regime, schedule, batch, data and run folder."""
    m, o, d = cfg.model, cfg.optim, cfg.data
    if cfg.run.eval_only:
        regime = f"evaluation only ({cfg.run.checkpoint or 'best.pt'})"
    elif m.freeze_backbone:
        regime = "frozen backbone" + (f", probe heads {m.probe_heads}" if m.probe_heads else " (linear probe)")
    else:
        regime = "fine-tuning"
    head = f" (head x{o.scratch_lr_factor:g})" if o.scratch_lr_factor != 1 else ""
    return (f"run: {strategy_name} | {m.model_arch} @ {image_size} px, weights: {weights_words(weights)}"
            f" | {regime} | {o.epochs} epochs, {o.optimizer_type} lr {o.lr:g}{head}, {o.scheduler_type} | batch "
            f"{d.batch_size} x {world_size} = {d.batch_size * world_size} | {d.dataset}: {d.data_path} -> "
            f"{cfg.run.snapshot_dir}")


def recipe_warning(cfg: TrainConfig, weights: dict, config_files: Sequence[str] | None) -> str | None:
    """A warning for a run without pretrained weights (and, from the command line, without any ``--config``): the
    library's defaults train a randomly initialised backbone, which no paper run does."""
    if weights.get("source") != "none" or cfg.run.eval_only:
        return None
    text = (f"warning: no pretrained weights (--start_weights DEFAULT or --pretrained_path FILE): "
            f"{cfg.model.model_arch} starts from a random initialisation")
    if config_files is not None and not config_files:
        text += (" and, without --config, trains with the library's defaults and the flags given, not a paper "
                 "recipe (add --config configs/classifier/frozen.yaml or finetune.yaml and "
                 "--config configs/classifier/models/<model>.yaml)")
    return text + "."


def _accuracy(correct: float, total: float, top1: float) -> str:
    low, high = wilson_interval(correct, total)
    return f"{top1:.1f} % [{low:.1f}, {high:.1f}]"


def _set_line(name: str, metrics: dict, num_classes: int | None) -> str:
    chance = f"; chance {100 / num_classes:.1f} %" if num_classes else ""
    line = f"  {name:<12} top-1 {_accuracy(metrics['correct'], metrics['num_images'], metrics['top1'])}" \
           f" ({metrics['num_images']} images{chance})"
    groups = {k: g for k, g in (metrics.get("groups") or {}).items() if g.get("num_images")}
    if groups:
        name, worst = min(groups.items(), key=lambda kv: kv[1]["top1"])
        line += (f"; worst group {name} {_accuracy(worst['correct'], worst['num_images'], worst['top1'])}"
                 f" ({worst['num_images']} images)")
    return line


def summary(results: dict, run_dir: str | os.PathLike) -> str:
    """The block a run ends with: best epoch and what selected it, every evaluation set's top-1 with its 95 % Wilson
    interval, chance (1 / classes) and worst group, the background diagnostics, probe heads, and where results.json
    and train.log are."""
    run_dir = Path(run_dir)
    probes = results.get("probes") or {}
    first = f" | the sets below are probe head {next(iter(probes))}'s" if probes else ""
    lines = [f"==> done: {results.get('masking')} | {results.get('model_arch')} | {run_dir}{first}"]
    best = results.get("best") or {}
    if best.get("epoch") is not None:
        lines.append(f"  best epoch {best['epoch']} of {results.get('epoch')}, selected on "
                     f"{best.get('selected_on', '?')}" + (f"; reported: {results['reported']}"
                                                           if results.get("reported") else ""))
    for name, metrics in results.items():
        if isinstance(metrics, dict) and {"top1", "correct", "num_images"} <= set(metrics):
            lines.append(_set_line(name, metrics, results.get("num_classes")))
    diag = results.get("diagnostics") or {}
    if "bg_gap" in diag:
        lines.append(f"  background   BG-Gap {diag['bg_gap']:.1f} points (mixed_same - mixed_rand), FG-attr "
                     f"{diag.get('fg_attribution', float('nan')):.2f} ({diag.get('attribution', 'attribution')})")
    elif diag:
        reason = next((f"{k} {diag[k]}" if k == "failed" else str(diag[k])
                       for k in ("failed", "skipped", "error", "pending") if k in diag), None)
        lines.append(f"  background   diagnostics not computed{f': {reason}' if reason else ''}")
    width = max(map(len, probes), default=0)
    for head, sets in probes.items():
        scores = ", ".join(f"{s} {m['top1']:.1f}" for s, m in sets.items() if isinstance(m, dict) and "top1" in m)
        epoch = ((best.get("probes") or {}).get(head) or {}).get("epoch")
        lines.append(f"  probe {head:<{width}}  {scores}" + (f" (best epoch {epoch})" if epoch is not None else ""))
    lines.append(f"  results: {run_dir / 'results.json'}   log: {run_dir / LOG_NAME}")
    return "\n".join(lines)


class _Tee:
    """A text stream that writes through to ``stream`` and keeps whole lines in ``log`` (a progress bar's carriage
    return redraws keep only their last state)."""

    def __init__(self, stream, log):
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            self._log.write("".join(line.rsplit("\r", 1)[-1] + "\n" for line in lines))
            self._log.flush()
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self._stream, name)


class ConsoleLog:
    """Within ``with``: rank 0's stdout and stderr are also appended to ``run_dir/train.log``; elsewhere a no-op."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / LOG_NAME
        self.enabled = enabled
        self._file = self._saved = None

    def __enter__(self) -> ConsoleLog:
        if self.enabled:
            resumed = self.path.is_file()
            self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {'resumed' if resumed else 'started'}: "
                             f"{' '.join(sys.argv)}\n")
            self._saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = _Tee(sys.stdout, self._file), _Tee(sys.stderr, self._file)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._saved is not None:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _Tee) and tee._pending:
                    self._file.write(tee._pending.rsplit("\r", 1)[-1] + "\n")
            if exc_type is not None:  # the message the entry point prints after this block
                self._file.write(f"stopped: {exc_type.__name__}: {exc}\n")
            sys.stdout, sys.stderr = self._saved
            self._file.close()
            self._saved = self._file = None
