#!/usr/bin/env python
"""The paper's runs at true size, simulated on CPU: parameters, FLOPs, peak memory, checkpoint bytes, evaluation
share of the compute and projected hours on a GPU node, for every classifier run ``scripts/paper/*.sh --dry-run``
prints.

How each figure is obtained (no GPU is needed):

* **parameters**: the run's model as the trainer builds it (``pretrained=False``; same shapes as the weights).
* **FLOPs** per trained and per evaluated image: ``torch.utils.flop_counter.FlopCounterMode`` over one real training
  step (forward, loss, backward) and one evaluation forward of the model, on fake tensors (shapes only, no compute).
* **peak memory** of a training step at the run's per-GPU batch in its precision: ``torch.distributed._tools.
  mem_tracker.MemTracker`` over two optimiser steps (the second is the steady state: AdamW state exists) with
  ``FakeTensorMode`` inputs, so nothing is allocated; bf16 autocast is CPU autocast on fake CPU tensors (the CUDA
  autocast op lists differ in detail: normalisations and softmax stay fp32 in both). Attention is timm's call of
  PyTorch's scaled-dot-product attention, which the traced CPU path dispatches to its flash-style kernel
  (``_scaled_dot_product_flash_attention_for_cpu``, forward and backward: no N x N matrix kept); the figure
  therefore assumes a fused kernel on the GPU too (FlashAttention / memory-efficient SDPA, which timm's ViTs use).
  Diagnostics: the attribution pass (gradient to the input) at the trainer's attribution batch.
* **reserved memory (estimate)**: the traced peak is what tensors hold; a GPU process reserves more. The estimate
  adds, as stated constants: the CUDA context (0.6 GiB), cuBLAS/cuDNN workspaces (1.0 GiB), NCCL and DDP buffers
  (0.5 GiB; with ``gradient_as_bucket_view`` the gradients are the buckets, no second copy), the optimiser's
  temporaries (timm's AdamW steps with ``foreach``/fused kernels: about one fp32 copy of the trainable parameters)
  and the caching allocator's fragmentation (15 % of the traced peak). It is an estimate to compare with
  ``torch.cuda.max_memory_reserved`` (``scripts/gpu_check.sh``), not a measurement.
* **checkpoint bytes** written per run: ``last.pt`` every epoch and ``best.pt`` on improvement (bounded by the number
  of evaluations), from the state dicts' tensor sizes, before (the whole model) and after (a frozen backbone's
  checkpoints hold what trains only).
* **evaluation / training compute**: evaluation FLOPs (CUB test at every ``--eval_every``, Waterbirds, the
  diagnostics' five views and the attribution pass) over training FLOPs, before (every set every epoch) and after.
* **hours** on the run's own GPUs (the processes its command line asks for: 4 in the paper scripts) at
  ``--peak_tflops`` dense bf16 and a model FLOPs utilisation assumed per family and regime (``MFU``; ``--mfu``
  overrides all): ConvNeXt's depthwise convolutions are memory-bound and batch-16 linear probes run the backbone
  forward only, so neither reaches what a large ViT's matrix multiplies do.

Real CUB: 5,994 training and 5,794 test images (Waterbirds: the same 5,794). Usage:

    python scripts/bench/paper_scale.py                       # every paper run, table to stdout
    python scripts/bench/paper_scale.py --out runs/bench/scale_table.md --json runs/bench/paper_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bgmask import cli  # noqa: E402
from bgmask.config import TrainConfig  # noqa: E402
from bgmask.diagnostics.attribution import attribution_maps, no_parameter_grads  # noqa: E402
from bgmask.diagnostics.views import VIEWS  # noqa: E402
from bgmask.infra.checkpoint import trained_state_keys  # noqa: E402
from bgmask.models import create_classifier  # noqa: E402
from bgmask.models.heads import needs_masks, parse_heads  # noqa: E402
from bgmask.models.probes import ProbeHeads  # noqa: E402
from bgmask.run.bias_report import attribution_batch_size, head_input  # noqa: E402

CUB_TRAIN, CUB_TEST = 5994, 5794
NUM_CLASSES = 200
ENTRY_POINTS = {"early_masking_and_baseline/train.py": ("none", "early"), "late_masking/train.py": ("late",)}
GIB = 1024 ** 3


@dataclass
class PaperRun:
    script: str
    name: str
    cfg: TrainConfig
    strategy: object
    processes: int


def paper_runs(scripts: list[Path]) -> list[PaperRun]:
    """Every classifier run the paper scripts print, resolved as the entry points resolve them."""
    runs = []
    for script in scripts:
        out = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, check=True,
                             env={**os.environ, "DATA_ROOT": "/data", "OUT": "/runs"}).stdout
        for line in out.splitlines():
            cmd = shlex.split(line)
            entry = next((i for i, t in enumerate(cmd) if t.endswith(".py")), None)
            key = "/".join(Path(cmd[entry]).parts[-2:]) if entry is not None else None
            if key not in ENTRY_POINTS:
                continue
            nproc = int(cmd[cmd.index("--nproc_per_node") + 1]) if "--nproc_per_node" in cmd else 1
            nnodes = int(cmd[cmd.index("--nnodes") + 1]) if "--nnodes" in cmd else 1
            cfg, strategy = cli.parse_config(ENTRY_POINTS[key], cmd[entry + 1:])
            runs.append(PaperRun(script.name, Path(cfg.run.snapshot_dir).name, cfg, strategy, nproc * nnodes))
    return runs


def build(run: PaperRun) -> torch.nn.Module:
    """The model the trainer trains for this run (random weights of the same shapes)."""
    cfg = run.cfg
    spec = dataclasses.replace(cfg.model.spec(NUM_CLASSES, cfg.model.image_size), pretrained=False,
                               pretrained_path=None)
    classifier = create_classifier(spec)
    if cfg.run.grad_checkpointing:
        classifier.backbone.set_grad_checkpointing(True)
    if cfg.model.probe_heads is not None:
        return ProbeHeads(classifier, parse_heads(cfg.model.probe_heads), NUM_CLASSES)
    return run.strategy.wrap_model(cfg, classifier)


def takes_masks(run: PaperRun, model) -> bool:
    if isinstance(model, ProbeHeads):
        return needs_masks(model.head_names)
    return run.cfg.masking == "late"


def inputs(run: PaperRun, model, batch: int) -> list[torch.Tensor]:
    size = run.cfg.model.image_size
    x = [torch.randn(batch, 3, size, size)]
    if takes_masks(run, model):
        x.append((torch.rand(batch, size, size) > 0.5).float())
    return x


def autocast(run: PaperRun):
    if not run.cfg.optim.use_amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if run.cfg.optim.amp_dtype == "bfloat16" else torch.float16
    return torch.autocast("cpu", dtype=dtype)


def loss_of(out, labels):
    outs = out.values() if isinstance(out, dict) else [out]
    return sum(torch.nn.functional.cross_entropy(o.float(), labels) for o in outs)


def train_step(run: PaperRun, model, optimizer, batch: int) -> None:
    model.train()
    with autocast(run):
        out = model(*inputs(run, model, batch))
    loss_of(out, torch.randint(0, NUM_CLASSES, (batch,))).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def eval_forward(run: PaperRun, model, batch: int) -> None:
    model.eval()
    with torch.no_grad(), autocast(run):
        model(*inputs(run, model, batch))


def attribution(run: PaperRun, model, batch: int) -> None:
    """The diagnostics' attribution pass of the run's (first) head."""
    model.eval()
    if isinstance(model, ProbeHeads):
        head = model.head_names[0]
        view, kind = model.single_head_model(head), head_input(head, run.strategy.diagnostics_input)
    else:
        view, kind = model, run.strategy.diagnostics_input
    size = run.cfg.model.image_size
    masks = torch.ones(batch, size, size)
    attribution_maps(view, torch.randn(batch, 3, size, size), masks, torch.zeros(batch, dtype=torch.long), kind,
                     autocast=lambda: autocast(run))


class _NoHook:
    def remove(self) -> None:
        pass


def flops(fn, *args) -> float:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def peak_bytes(fn, model, optimizer=None, repeat: int = 1) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*(m for m in (model, optimizer) if m is not None))
    # MemTracker hooks every parameter's gradient, which torch refuses for frozen ones: mark those as hooked.
    for param in model.parameters():
        if not param.requires_grad:
            tracker._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        for i in range(repeat):
            if i:
                tracker.reset_mod_stats()  # per-module figures of the previous step; the peak is kept
            fn()
    peak = tracker.get_tracker_snapshot("peak")
    return int(sum(v.get("Total", 0) for v in peak.values()))


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def measure(run: PaperRun) -> dict:
    cfg = run.cfg
    torch.manual_seed(0)
    model = build(run)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    batch = cfg.data.batch_size
    row = {"script": run.script, "run": run.name, "arch": cfg.model.model_arch, "image_size": cfg.model.image_size,
           "regime": "frozen" if cfg.model.freeze_backbone else "fine-tuned", "masking": cfg.masking,
           "heads": cfg.model.probe_heads or "-", "batch_per_gpu": batch, "gpus": run.processes,
           "epochs": cfg.optim.epochs, "precision": cfg.optim.amp_dtype if cfg.optim.use_amp else "fp32",
           "params": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trainable)}
    # FLOPs per image (batch 2: counts scale linearly with the batch).
    row["train_flops"] = flops(train_step, run, model, torch.optim.SGD(trainable, lr=0.0), 2) / 2
    row["eval_flops"] = flops(eval_forward, run, model, 2) / 2
    row["attribution_flops"] = flops(attribution, run, model, 2) / 2
    # Peak memory at the paper batch: two steps (the second has AdamW's state), and the attribution pass.
    row["train_peak_gib"] = peak_bytes(lambda: train_step(run, model, optimizer, batch), model, optimizer, 2) / GIB
    diag_batch = attribution_batch_size(cfg)
    row["diag_batch"] = diag_batch
    with no_parameter_grads(model):  # as in the attribution pass (the tracker sees the parameters as they are)
        row["diag_peak_gib"] = peak_bytes(lambda: attribution(run, model, diag_batch), model) / GIB
    # Checkpoint bytes per run.
    state = model.state_dict()
    kept = trained_state_keys(model) if cfg.model.freeze_backbone else set(state)
    opt_bytes = 2 * tensor_bytes(trainable)  # AdamW: exp_avg and exp_avg_sq per trainable parameter
    full = tensor_bytes(state.values())
    mine = tensor_bytes(v for k, v in state.items() if k in kept)
    evals_before, evals_after = cfg.optim.epochs, math.ceil(cfg.optim.epochs / cfg.run.eval_every)
    lasts_after = math.ceil(cfg.optim.epochs / cfg.run.checkpoint_every)
    # best.pt at most once per evaluation (an upper bound: it is written on improvement only)
    row["ckpt_bytes_before"] = cfg.optim.epochs * (full + opt_bytes) + evals_before * full
    row["ckpt_bytes_after"] = lasts_after * (mine + opt_bytes) + evals_after * mine
    row["second_last"] = bool(getattr(cfg.strategy_options, "fm_second_last_block", False))
    # Compute: training against evaluation, before (every set every epoch) and now.
    train_total = cfg.optim.epochs * CUB_TRAIN * row["train_flops"]
    diagnostics = CUB_TEST * (len(VIEWS) * row["eval_flops"] + row["attribution_flops"])
    before = cfg.optim.epochs * 2 * CUB_TEST * row["eval_flops"] + diagnostics
    after = (evals_after + 1) * CUB_TEST * row["eval_flops"] + diagnostics  # + Waterbirds once at the end
    row["eval_share_before"] = before / (train_total + before)
    row["eval_share_after"] = after / (train_total + after)
    row["total_flops"] = train_total + after
    return row


# Assumed model FLOPs utilisation on an H100 per (family, regime): an assumption stated for the projection, to be
# replaced by what scripts/gpu_check.sh measures.
MFU = {("vit", "fine-tuned"): 0.35, ("vit", "frozen"): 0.30, ("convnext", "fine-tuned"): 0.20,
       ("convnext", "frozen"): 0.15}
CUDA_CONTEXT_GIB, WORKSPACES_GIB, COMM_BUFFERS_GIB, FRAGMENTATION = 0.6, 1.0, 0.5, 0.15


def family(arch: str) -> str:
    return "vit" if arch.startswith("vit") else "convnext"


def mfu_of(row: dict, override: float | None) -> float:
    return override if override else MFU[(family(row["arch"]), row["regime"])]


def hours(row: dict, peak_tflops: float, mfu: float | None = None) -> float:
    """Hours on the run's own GPUs (``row["gpus"]``, the processes its command asks for)."""
    return row["total_flops"] / (row["gpus"] * peak_tflops * 1e12 * mfu_of(row, mfu)) / 3600


def reserved_estimate_gib(row: dict) -> float:
    """The traced training peak plus the stated overheads of a GPU process (module docstring)."""
    optimiser_temporaries = 4 * row["trainable"] / GIB
    return (row["train_peak_gib"] * (1 + FRAGMENTATION) + CUDA_CONTEXT_GIB + WORKSPACES_GIB + COMM_BUFFERS_GIB
            + optimiser_temporaries)


def table(rows: list[dict], args) -> str:
    head = ["script", "run", "params (M)", "trainable (M)", "GFLOPs / trained img", "GFLOPs / eval img",
            "train step peak (GiB, batch/GPU)", "reserved per GPU, estimate (GiB)", "diagnostics peak (GiB, batch)",
            "checkpoints written (GB) before → after", "eval share before → after", "GPUs", "assumed MFU", "hours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["script"], r["run"], f"{r['params'] / 1e6:.1f}", f"{r['trainable'] / 1e6:.3f}",
            f"{r['train_flops'] / 1e9:.1f}", f"{r['eval_flops'] / 1e9:.1f}",
            f"{r['train_peak_gib']:.1f} ({r['batch_per_gpu']}, {r['precision']})",
            f"{reserved_estimate_gib(r):.1f}",
            f"{r['diag_peak_gib']:.1f} ({r['diag_batch']})",
            f"{r['ckpt_bytes_before'] / 1e9:.1f} → {r['ckpt_bytes_after'] / 1e9:.2f}",
            f"{100 * r['eval_share_before']:.0f} % → {100 * r['eval_share_after']:.1f} %",
            str(r["gpus"]), f"{mfu_of(r, args.mfu):.2f}",
            f"{hours(r, args.peak_tflops, args.mfu):.2f}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="*", type=Path,
                        default=sorted((REPO / "scripts/paper").glob("[!_]*.sh")))
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 TFLOP/s of one GPU (H100 SXM)")
    parser.add_argument("--mfu", type=float, default=None, help="one model FLOPs utilisation for every run (default: "
                                                                  "the per-family assumptions of MFU)")
    parser.add_argument("--limit", type=int, default=0, help="measure the first N distinct runs only (0: all)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    runs = paper_runs(args.scripts)
    seen, rows = {}, []
    start = time.time()
    for run in runs:
        key = json.dumps({k: v for k, v in run.cfg.flat().items() if k != "snapshot_dir"}, sort_keys=True,
                         default=str)
        if key not in seen:
            if args.limit and len(seen) >= args.limit:
                continue
            t = time.time()
            seen[key] = measure(run)
            print(f"[{len(seen)}] {run.script} {run.name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        rows.append({**seen[key], "script": run.script, "run": run.name})
    text = table(rows, args)
    print(text)
    fits = all(reserved_estimate_gib(r) <= 40 and r["diag_peak_gib"] <= 40 for r in rows)
    worst_eval = max(r["eval_share_after"] for r in rows)
    probes = [r for r in rows if r["regime"] == "frozen" and not r["second_last"]]
    ckpt_ratio = max((r["ckpt_bytes_after"] / r["ckpt_bytes_before"] for r in probes), default=0.0)
    summary = (f"{len(rows)} runs ({len(seen)} distinct) measured in {time.time() - start:.0f} s. Every run fits "
               f"40 GiB per GPU (reserved estimate): {'yes' if fits else 'NO'}; largest evaluation share "
               f"{100 * worst_eval:.1f} %; frozen backbones with linear heads write at most "
               f"{100 * ckpt_ratio:.2f} % of the checkpoint bytes they wrote before.")
    print("\n" + summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n\n" + summary + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for r in rows:
            r.update(reserved_estimate_gib=reserved_estimate_gib(r), mfu=mfu_of(r, args.mfu),
                     hours=hours(r, args.peak_tflops, args.mfu))
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "peak_tflops": args.peak_tflops,
                                         "mfu_override": args.mfu, "mfu_assumed": {f"{k[0]} {k[1]}": v
                                                                                   for k, v in MFU.items()}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
