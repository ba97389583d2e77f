#!/usr/bin/env python
"""The GPU acceptance checks of ``scripts/gpu_check.sh``: one line per check with ratios, and one JSON file with
every figure (docs/scale.md quotes it).

* ``sync_free_steps``: 20 bf16 late-masking training steps through the real loader, the device tail and mixup under
  ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation inside a step raises. The one sync of the
  logging interval (the loss check after the 20th step) comes after the mode is switched off in that step's
  ``on_update``.
* ``tail_parity``: the same loader items through the CPU and the device tail: equal pixels outside the erasing
  boxes, and each tail changes pixels only inside the boxes the worker drew (and fills every box).
* ``compiled_late_<family>``: late masking (bf16 autocast, channels_last) under ``torch.compile``: zero graph breaks
  (``torch._dynamo.explain``), logits close to eager, and the gradient reaching the backbone's features exactly zero
  at every background position of the feature grid.
* ``paper_step``: ViT-L/14 at 518 px, batch 16, bf16, late masking, 10 timed steps: measured MFU ÷ the 0.35 the
  projection assumes, ``max_memory_reserved`` ÷ the table's reserved estimate, compiled ÷ eager step throughput;
  ConvNeXt-B at 224 px: channels_last on ÷ off.
* ``loader``: the training loader as a run builds it (workers per GPU from the allocation: CPUs ÷ GPUs − 1, pinned
  memory, persistent workers, the device tail) on CUB-sized images: images/s ÷ each model's demand (the images/s
  its measured step consumes).
* ``preemption_two_ranks``: ``torchrun`` with 2 processes and 2 loader workers each, SIGTERM to every process of the
  job mid-epoch: both ranks save ``last.pt`` at their position and the resumed run finishes. Two ranks share no
  GPU (the trainer starts one process per GPU), so with one GPU this check runs on CPU (gloo) and says so.

``--cpu`` (``GPU_CHECK_ON_CPU=1``) runs every check on CPU at toy sizes (bf16 CPU autocast, ``aot_eager`` compile
backend, no sync-debug mode): the figures are then liveness checks of this script, not measurements of a GPU.

    python scripts/bench/gpu_acceptance.py --json runs/gpu_check/gpu_check.json
    python scripts/bench/gpu_acceptance.py --cpu --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts/bench"))

import paper_scale  # noqa: E402

from bgmask import cli  # noqa: E402
from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset  # noqa: E402
from bgmask.data.sampling import SeededAugmentation  # noqa: E402
from bgmask.data.synthetic import SyntheticConfig, generate  # noqa: E402
from bgmask.data.transforms import build_train_transform  # noqa: E402
from bgmask.infra.preemption import ignore_preemption_signals  # noqa: E402
from bgmask.models import create_classifier  # noqa: E402
from bgmask.run.fit import build_criterion, build_mixup  # noqa: E402
from bgmask.training.engine import AmpSettings, train_one_epoch  # noqa: E402
from bgmask.training.optim import build_optimizer  # noqa: E402

PROJECTED_MFU = paper_scale.MFU[("vit", "fine-tuned")]
# Dense bf16 peak (TFLOP/s) per GPU name fragment; --peak_tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclasses.dataclass
class Sizes:
    """What each check runs at: the paper's sizes on a GPU, toy sizes on CPU."""

    vit: str = "vit_large_patch14_dinov2"
    vit_size: int = 518
    convnext: str = "convnext_base"
    convnext_size: int = 224
    batch: int = 16
    timed_steps: int = 10
    compile_vit: str = "vit_base_patch14_dinov2"
    compile_size: int = 224
    sync_model: str = "vit_base_patch14_dinov2"
    sync_size: int = 224
    sync_steps: int = 20
    loader_images: int = 256
    source_size: int = 375  # CUB's JPEGs are ~500 x 375
    warmup: int = 3  # untimed steps first (cuDNN autotuning, the compiled graph, AdamW's state)

    @classmethod
    def toy(cls) -> Sizes:
        return cls("vit_small_patch14_dinov2", 56, "convnext_atto", 64, 4, 1, "vit_small_patch14_dinov2", 56,
                   "convnext_atto", 64, 20, 16, 64, 1)


def run_config(arch: str, size: int, batch: int, device: torch.device, extra=()):
    """A late-masking fine-tuning config as the paper's regime file sets it (mixup/cutmix, drop-path, smoothing)."""
    args = ["--config", str(REPO / "configs/classifier/finetune.yaml"), "--data_path", "/data", "--snapshot_dir",
            "/runs/x", "--model_arch", arch, "--image_size", str(size), "--batch_size", str(batch),
            "--start_weights", "none", "--device", device.type, "--mask_source", "gt", *extra]
    return cli.parse_config(("late",), args)


def late_model(cfg, strategy, num_classes: int) -> torch.nn.Module:
    spec = cfg.model.spec(num_classes, cfg.model.image_size)
    return strategy.wrap_model(cfg, create_classifier(spec))


def amp(device: torch.device) -> AmpSettings:
    return AmpSettings(device.type, torch.bfloat16)


def train_loader(root: Path, size: int, batch: int, workers: int, device: torch.device, steps: int = 0,
                 reprob: float = 0.25, recount: int = 1):
    """The training loader as a run builds it (late masking: images and masks, the device tail); ``steps``: draw
    that many batches with replacement (more than one pass over the small synthetic split)."""
    transform = build_train_transform(size, "timm", reprob=reprob, recount=recount, device_tail=True)
    ds = SeededAugmentation(CUBDataset(root, "train", "images", GT_MASK_SUB_PATH, transform=transform), 0)
    sampler = RandomSampler(ds, replacement=True, num_samples=steps * batch,
                            generator=torch.Generator().manual_seed(0)) if steps else None
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, shuffle=None if steps else True, drop_last=True,
                        num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_preemption_signals, generator=torch.Generator().manual_seed(0))
    return loader, transform.device_tail


def sync_free_steps(ctx) -> dict:
    device, sizes = ctx.device, ctx.sizes
    cfg, strategy = run_config(sizes.sync_model, sizes.sync_size, 8, device, ["--grad_norm_clip", "1.0"])
    model = late_model(cfg, strategy, ctx.num_classes).to(device)
    loader, tail = train_loader(ctx.data, sizes.sync_size, 8, 2, device, steps=sizes.sync_steps)
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    mixup = build_mixup(cfg.aug, cfg.optim.smoothing, ctx.num_classes)
    criterion = build_criterion(cfg.optim.smoothing, True)
    steps = [0]

    def on_update():
        steps[0] += 1
        if steps[0] == sizes.sync_steps and device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")  # the logging interval's one sync follows this step

    guarded = device.type == "cuda"
    if guarded:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        stats = train_one_epoch(model, loader, optimizer, criterion, device, amp(device), batch_transform=mixup,
                                grad_norm_clip=cfg.optim.grad_norm_clip, max_batches=sizes.sync_steps,
                                progress=False, on_update=on_update, sync_every=sizes.sync_steps, input_tail=tail)
    finally:
        if guarded:
            torch.cuda.set_sync_debug_mode("default")
    ok = stats["steps"] == sizes.sync_steps
    return {"ok": ok, "steps": stats["steps"], "sync_debug_mode": "error" if guarded else "n/a on CPU",
            "loss": stats["loss"]}


def tail_parity(ctx) -> dict:
    # Every image erased (3 boxes at most): the boxes are what is compared.
    loader, tail = train_loader(ctx.data, ctx.sizes.sync_size, ctx.sizes.batch, 0, torch.device("cpu"), reprob=1.0,
                                recount=3)
    raw, _masks, _labels = next(iter(loader))
    reference = (raw.pixels.float() / 255 - torch.tensor(tail.mean).view(1, 3, 1, 1)) / \
        torch.tensor(tail.std).view(1, 3, 1, 1)
    boxes = torch.zeros(reference.shape[0], *reference.shape[2:], dtype=torch.bool)
    for i, rows in enumerate(raw.erasing.tolist()):
        for top, left, h, w, _seed in rows:
            if h >= 0:
                boxes[i, top:top + h, left:left + w] = True
    outs = {"cpu": tail(raw, torch.device("cpu")), ctx.device.type: tail(raw, ctx.device).cpu()}
    result = {"images": reference.shape[0], "boxes": int((raw.erasing[..., 2] >= 0).sum())}
    ok = True
    for name, out in outs.items():
        changed = (out - reference).abs().amax(1) > 1e-4
        result[f"{name}_changed_outside_boxes"] = int((changed & ~boxes).sum())
        result[f"{name}_box_pixels_changed"] = float(changed[boxes].float().mean()) if boxes.any() else 1.0
        ok &= result[f"{name}_changed_outside_boxes"] == 0 and result[f"{name}_box_pixels_changed"] > 0.99
    outside = ~boxes[:, None].expand_as(reference)
    result["max_abs_diff_outside_boxes"] = float((outs["cpu"] - outs[ctx.device.type])[outside].abs().max())
    result["ok"] = bool(ok and result["max_abs_diff_outside_boxes"] <= 1e-5)
    return result


def compiled_late(ctx, arch: str, size: int) -> dict:
    device = ctx.device
    cfg, strategy = run_config(arch, size, 4, device)
    model = late_model(cfg, strategy, ctx.num_classes).to(device).to(memory_format=torch.channels_last).eval()
    images = torch.randn(4, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(4, size, size, device=device) > 0.5).to(torch.uint8)
    torch._dynamo.reset()
    with torch.no_grad(), amp(device).autocast():
        explained = torch._dynamo.explain(model)(images, masks)
        eager = model(images, masks).float()
        compiled = torch.compile(model, backend=ctx.backend)(images, masks).float()
    rel = float((compiled - eager).abs().max() / eager.abs().max().clamp_min(1e-6))
    # The gradient at the masking point: the backbone's features as a leaf, masked and pooled by the compiled tail.
    adapter = model.classifier.adapter
    with torch.no_grad(), amp(device).autocast():
        feats = adapter.features(images).float()
    feats.requires_grad_(True)

    def masked_tail(f, m):
        return model.head_from_features(adapter.mask(f, m, model.to_grid), m)

    torch._dynamo.reset()
    with amp(device).autocast():
        torch.compile(masked_tail, backend=ctx.backend)(feats, masks).float().sum().backward()
    # Every position the mask does not keep whole is background (random masks: the grid has some).
    background = adapter.mask(torch.ones_like(feats), masks, model.to_grid) < 1
    bg_grad = float(feats.grad[background].abs().max()) if background.any() else float("nan")
    fg_grad = float(feats.grad[~background].abs().max())
    ok = explained.graph_break_count == 0 and rel < 0.05 and bg_grad == 0.0 and fg_grad > 0
    return {"ok": ok, "arch": arch, "image_size": size, "graph_breaks": explained.graph_break_count,
            "backend": ctx.backend, "logits_max_rel_diff": rel, "background_positions": int(background.sum()),
            "background_grad_max": bg_grad, "foreground_grad_max": fg_grad}


def timed_steps(model, cfg, device, n: int, warmup: int) -> float:
    """Images/s of ``n`` training steps (after ``warmup``) at the config's batch."""
    batch, size = cfg.data.batch_size, cfg.model.image_size
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    images = torch.randn(batch, 3, size, size, device=device)
    if cfg.run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, size, size, device=device) > 0.5).to(torch.uint8)
    labels = torch.randint(0, 200, (batch,), device=device)
    model.train()

    def step():
        with amp(device).autocast():
            loss = torch.nn.functional.cross_entropy(model(images, masks).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    synchronize(device)
    return n * batch / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paper_step(ctx) -> dict:
    device, sizes = ctx.device, ctx.sizes
    cfg, strategy = run_config(sizes.vit, sizes.vit_size, sizes.batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = late_model(cfg, strategy, 200).to(device)
    flops_per_image = train_flops_per_image(model, cfg, device)
    eager = timed_steps(model, cfg, device, sizes.timed_steps, sizes.warmup)
    reserved = torch.cuda.max_memory_reserved() / paper_scale.GIB if device.type == "cuda" else None
    row = {"train_peak_gib": traced_peak_gib(cfg, strategy),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    estimate = paper_scale.reserved_estimate_gib(row)
    torch._dynamo.reset()
    compiled = timed_steps(torch.compile(model, backend=ctx.backend), cfg, device, sizes.timed_steps,
                           sizes.warmup)
    mfu = eager * flops_per_image / (ctx.peak_tflops * 1e12)
    out = {"arch": sizes.vit, "image_size": sizes.vit_size, "batch": sizes.batch, "steps": sizes.timed_steps,
           "train_gflops_per_image": flops_per_image / 1e9, "images_per_s_eager": eager,
           "images_per_s_compiled": compiled, "compiled_over_eager": compiled / eager, "mfu": mfu,
           "mfu_over_projected": mfu / PROJECTED_MFU, "peak_tflops": ctx.peak_tflops,
           "reserved_gib": reserved, "reserved_estimate_gib": estimate,
           "reserved_over_estimate": reserved / estimate if reserved is not None else None}
    del model
    ccfg, cstrategy = run_config(sizes.convnext, sizes.convnext_size, sizes.batch, device)
    rates = {}
    for channels_last in (False, True):
        ccfg.run.channels_last = channels_last
        model = late_model(ccfg, cstrategy, 200).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        rates[channels_last] = timed_steps(model, ccfg, device, sizes.timed_steps, sizes.warmup)
        del model
    out.update({"convnext": sizes.convnext, "convnext_images_per_s": rates[True],
                "convnext_channels_last_on_over_off": rates[True] / rates[False], "ok": True})
    ctx.demand = {sizes.vit: eager, sizes.convnext: rates[True]}
    return out


def train_flops_per_image(model, cfg, device) -> float:
    """FLOPs of one training step (forward, loss, backward) per image, counted by ``FlopCounterMode`` at batch 2."""
    size = cfg.model.image_size
    images, masks = torch.randn(2, 3, size, size, device=device), torch.ones(2, size, size, device=device)
    with FlopCounterMode(display=False) as counter, amp(device).autocast():
        loss = torch.nn.functional.cross_entropy(model(images, masks).float(), torch.zeros(2, dtype=torch.long,
                                                                                          device=device))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) / 2


def traced_peak_gib(cfg, strategy) -> float:
    """The table's traced training peak for this run (``scripts/bench/paper_scale.py``: fake tensors on CPU)."""
    run = paper_scale.PaperRun("gpu_check", "paper_step", cfg, strategy, 4)
    model = paper_scale.build(run)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step = lambda: paper_scale.train_step(run, model, optimizer, cfg.data.batch_size)  # noqa: E731
    return paper_scale.peak_bytes(step, model, optimizer, 2) / paper_scale.GIB


def loader(ctx) -> dict:
    """Images/s of the training loader (late masking: image and mask) at each model's input size."""
    out = {"workers_per_gpu": ctx.workers, "images": ctx.sizes.loader_images}
    ok = True
    for arch, size in ((ctx.sizes.vit, ctx.sizes.vit_size), (ctx.sizes.convnext, ctx.sizes.convnext_size)):
        train, tail = train_loader(ctx.data, size, ctx.sizes.batch, ctx.workers, ctx.device)
        seen, start = 0, None
        while seen < ctx.sizes.loader_images:
            for raw, masks, _labels in train:
                images = tail(raw, ctx.device)
                masks = masks.to(ctx.device, non_blocking=True)
                if start is None:  # the first batch pays for starting the workers
                    synchronize(ctx.device)
                    start = time.perf_counter()
                    continue
                seen += images.shape[0]
                if seen >= ctx.sizes.loader_images:
                    break
        synchronize(ctx.device)
        rate = seen / (time.perf_counter() - start)
        demand = ctx.demand.get(arch)
        out[arch] = {"image_size": size, "images_per_s": rate, "model_images_per_s": demand,
                     "loader_over_demand": rate / demand if demand else None}
        ok &= demand is None or rate / demand >= 1.0 or ctx.device.type == "cpu"
    out["ok"] = bool(ok)
    return out


def preemption_two_ranks(ctx) -> dict:
    device = "cuda" if ctx.device.type == "cuda" and torch.cuda.device_count() >= 2 else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "early_masking_and_baseline/train.py"), "--data_path", str(ctx.data), "--snapshot_dir",
               str(run), "--model_arch", "convnext_atto", "--image_size", "32", "--batch_size", "2", "--num_workers",
               "2", "--epochs", "3", "--seed", "0", "--device", device, "--log_interval", "2",
               "--turn_on_mixup_or_cutmix", "--drop_path", "0.1", "--diagnostics", "none"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        deadline = time.time() + 300
        while not (run / "log.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)  # epoch 1 is complete: the signal lands in epoch 2 or 3
        if proc.poll() is not None:
            out, _ = proc.communicate()
            return {"ok": False, "device": device, "error": f"the run ended (exit {proc.returncode}) before the "
                    f"signal", "log_tail": out[:1500]}
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, loader workers included (SLURM's way)
        out, _ = proc.communicate(timeout=300)
        saved = (run / "last.pt").is_file() and not (run / "results.json").exists()
        state = torch.load(run / "last.pt", weights_only=False) if saved else {}
        resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        ok = ("Preempted" in out and "DataLoader worker" not in out and saved and len(state.get("rng", [])) == 2
              and resumed.returncode == 0 and "Resumed from" in resumed.stdout and (run / "results.json").is_file())
        result = {"ok": bool(ok), "device": device, "exit_code": proc.returncode,
                  "saved_at": {"epoch": state.get("epoch"), "step": state.get("step")},
                  "resumed_exit_code": resumed.returncode}
        if not ok:
            result["log_tail"] = (out + resumed.stdout + resumed.stderr)[-1500:]
        return result


def peak_tflops(override: float | None) -> float:
    if override:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), PEAK_TFLOPS["H100"])
    return PEAK_TFLOPS["H100"]  # on CPU the ratio is only a liveness figure


CHECKS = ("sync_free_steps", "tail_parity", "compiled_late_vit", "compiled_late_convnext", "paper_step", "loader",
          "preemption_two_ranks")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="every check on CPU at toy sizes (tests this script)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--peak_tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA device (use --cpu to run the toy-size checks on CPU)")
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    gpus = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    cpus = len(os.sched_getaffinity(0))
    ctx = argparse.Namespace(device=device, sizes=Sizes.toy() if args.cpu else Sizes(), num_classes=4,
                             backend="aot_eager" if args.cpu else "inductor", peak_tflops=peak_tflops(args.peak_tflops),
                             workers=2 if args.cpu else max(1, cpus // gpus - 1), demand={})
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    selected = args.only.split(",") if args.only else list(CHECKS)
    unknown = set(selected) - set(CHECKS)
    if unknown:
        p.error(f"unknown check(s) {sorted(unknown)}; choose from {CHECKS}")
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (toy sizes)",
              "torch": torch.__version__, "cpus": cpus, "gpus": gpus, "checks": {}}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        ctx.data = generate(Path(tmp), SyntheticConfig(num_classes=4, images_per_class=16,
                                                       image_size=ctx.sizes.source_size), progress=False).cub_root
        for name in CHECKS:
            if name not in selected:
                continue
            start = time.perf_counter()
            try:
                result = run_check(name, ctx)
            except Exception as error:  # one check's failure is reported; the others still run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()[-2000:]}
            result["seconds"] = round(time.perf_counter() - start, 1)
            report["checks"][name] = result
            failed |= not result["ok"]
            print(f"{'PASS' if result['ok'] else 'FAIL'}  {name:<26} {summary(name, result)}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        os.replace(tmp_json, args.json)
        print(f"gpu_acceptance: figures in {args.json}")
    return 1 if failed else 0


def run_check(name: str, ctx) -> dict:
    if name == "compiled_late_vit":
        return compiled_late(ctx, ctx.sizes.compile_vit, ctx.sizes.compile_size)
    if name == "compiled_late_convnext":
        return compiled_late(ctx, ctx.sizes.convnext, ctx.sizes.convnext_size)
    return globals()[name](ctx)


def summary(name: str, r: dict) -> str:
    """The check's ratios in one line."""
    if "error" in r:
        return r["error"][:200] + ("\n" + r["log_tail"] if "log_tail" in r else "")
    fmt = {
        "sync_free_steps": lambda: f"{r['steps']} steps, sync debug {r['sync_debug_mode']}",
        "tail_parity": lambda: (f"{r['boxes']} boxes in {r['images']} images, changed outside boxes "
                                f"{r['cpu_changed_outside_boxes']}, CPU vs device max diff "
                                f"{r['max_abs_diff_outside_boxes']:.1e}"),
        "paper_step": lambda: (f"MFU/0.35 {r['mfu_over_projected']:.2f}, reserved/estimate "
                               f"{fmt_ratio(r['reserved_over_estimate'])}, compiled/eager "
                               f"{r['compiled_over_eager']:.2f}, ConvNeXt channels_last on/off "
                               f"{r['convnext_channels_last_on_over_off']:.2f}"),
        "loader": lambda: ", ".join(f"{k} {v['images_per_s']:.0f} img/s = {fmt_ratio(v['loader_over_demand'])} x "
                                    f"demand" for k, v in r.items() if isinstance(v, dict))
        + f" ({r['workers_per_gpu']} workers)",
        "preemption_two_ranks": lambda: (f"on {r['device']}, saved at epoch {r['saved_at']['epoch']} step "
                                         f"{r['saved_at']['step']}, resumed exit {r['resumed_exit_code']}"),
    }
    if name.startswith("compiled_late"):
        return (f"{r['graph_breaks']} graph breaks, logits rel diff {r['logits_max_rel_diff']:.1e}, "
                f"background grad {r['background_grad_max']:.1e} ({r['backend']})")
    return fmt[name]()


def fmt_ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
