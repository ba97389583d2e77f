#!/usr/bin/env python
r"""Training-step cost of late masking: baseline vs precomputed masks vs the online segmenter (upstream's way).

Times forward + backward + optimizer step on one fixed batch, all three in the same process, interleaved in rounds
so drift affects them alike; reports the median step time and the ratio to the baseline, and writes JSON.

CPU default (small):  python scripts/bench/late_masking_overhead.py
Paper sizes on GPU:   python scripts/bench/late_masking_overhead.py --model_arch vit_base_patch14_dinov2 \
                          --image_size 518 --batch_size 16 --seg_config mmsegmentation/configs/\
mask2former_swin-t_8xb2-160k_cub-512x512.py --device cuda
Without --seg_checkpoint the segmenter has random weights (its cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bgmask.infra.distributed import resolve_device
from bgmask.models import ModelSpec, create_classifier, param_groups
from bgmask.strategies.late import LateMaskedClassifier

REPO = Path(__file__).resolve().parents[2]
TINY_SEGMENTER = REPO / "mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py"


def random_checkpoint(config: str, folder: str) -> str:
    """A checkpoint of the config's model with random weights (to time a segmenter without training one)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import cub_seg  # noqa: F401  (registers the plugin)
    from cub_seg.runner import disable_pretrained

    cfg = Config.fromfile(config)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    disable_pretrained(cfg)
    model = MODELS.build(cfg.model)
    path = str(Path(folder) / "random_segmenter.pth")
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def time_steps(model, batch, optimizer, steps: int, device) -> list[float]:
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(*batch[:-1])
        loss = torch.nn.functional.cross_entropy(logits, batch[-1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_arch", default="convnext_atto")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_classes", type=int, default=200)
    p.add_argument("--seg_config", default=str(TINY_SEGMENTER))
    p.add_argument("--seg_checkpoint", default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="runs/bench/late_masking_overhead.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    from cub_seg.inference import SegmenterMaskProvider

    torch.manual_seed(0)
    spec = ModelSpec(arch=args.model_arch, num_classes=args.num_classes, image_size=args.image_size,
                     vit_head="mean")
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    masks = torch.zeros(args.batch_size, args.image_size, args.image_size, dtype=torch.uint8, device=device)
    masks[:, args.image_size // 4: 3 * args.image_size // 4, args.image_size // 4: 3 * args.image_size // 4] = 1
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.seg_checkpoint or random_checkpoint(args.seg_config, tmp)
        provider = SegmenterMaskProvider(args.seg_config, checkpoint, device=device)
        modes = {
            "baseline": (create_classifier(spec), (images, labels)),
            "late_precomputed": (LateMaskedClassifier(create_classifier(spec)), (images, masks, labels)),
            "late_segmenter": (LateMaskedClassifier(create_classifier(spec), mask_provider=provider),
                               (images, labels)),
        }
        timings = {name: [] for name in modes}
        optimizers = {}
        for name, (model, batch) in modes.items():
            model.to(device).train()
            optimizers[name] = torch.optim.AdamW(param_groups(model, 1e-4, 0.05, 10.0), lr=1e-4)
            time_steps(model, batch, optimizers[name], args.warmup, device)
        for _ in range(args.rounds):
            for name, (model, batch) in modes.items():
                timings[name] += time_steps(model, batch, optimizers[name], args.steps, device)
    medians = {name: statistics.median(t) for name, t in timings.items()}
    result = {
        "model_arch": args.model_arch, "image_size": args.image_size, "batch_size": args.batch_size,
        "segmenter_config": Path(args.seg_config).name, "device": str(device),
        "torch_threads": torch.get_num_threads(), "steps_per_mode": len(timings["baseline"]),
        "median_step_s": medians,
        "ratio_to_baseline": {name: medians[name] / medians["baseline"] for name in medians},
    }
    print(f"{args.model_arch} @ {args.image_size}px, batch {args.batch_size}, segmenter {Path(args.seg_config).name}, "
          f"{device}, median of {result['steps_per_mode']} steps:")
    for name, m in medians.items():
        print(f"  {name:18s} {m * 1000:8.1f} ms/step   x{result['ratio_to_baseline'][name]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
