"""All frozen heads in one pass: each head trains exactly as its own single-head run (same seed)."""

from __future__ import annotations

import json

import pytest
import torch

from bgmask.infra.checkpoint import load_checkpoint
from bgmask.models.backbones import TokenAdapter
from bgmask.models.heads import head_errors, parse_heads
from bgmask.reporting.results import build_table
from bgmask.reporting.runs import load_runs
from early_masking_and_baseline.train import main as early_main
from late_masking.train import main as late_main

VIT = "vit_small_patch14_dinov2"


def common(root, arch, size, *extra):
    """A frozen run with every source of randomness on: timm RandAugment, random erasing, mixup/cutmix, warm-up."""
    return ["--data_path", str(root), "--model_arch", arch, "--image_size", str(size), "--freeze_backbone",
            "--batch_size", "4", "--num_workers", "0", "--epochs", "2", "--seed", "3", "--lr", "1e-2",
            "--augmentations_to_use", "timm", "--turn_on_mixup_or_cutmix", "--reprob", "0.5",
            "--scheduler_type", "cosine_with_warmup", "--scheduler_warmup_epochs", "1", "--sched_on_updates",
            "--diagnostics", "none", *extra]


def head_weight(run_dir, prefix: str) -> torch.Tensor:
    """The final weights (a probe run keeps no best.pt: each head has its own best epoch)."""
    return load_checkpoint(run_dir / "last.pt")["model"][f"{prefix}.weight"]


@pytest.mark.parametrize("arch,size,heads,singles", [
    (VIT, 28, "mean,cls_mean,late:mean,late:masked_mean",
     {"mean": ("base", ["--patch_tokens_only"]), "cls_mean": ("base", []),
      "late:mean": ("late", ["--patch_tokens_only"]),
      "late:masked_mean": ("late", ["--patch_tokens_only", "--masked_mean"])}),
    ("convnext_atto", 64, "pool,late:pool", {"pool": ("base", []), "late:pool": ("late", [])}),
])
def test_each_probe_head_equals_its_single_head_run(tiny_cub_root, tmp_path, arch, size, heads, singles):
    probe_dir = tmp_path / "probes"
    argv = common(tiny_cub_root, arch, size, "--mask_source", "gt", "--probe_heads", heads)
    assert late_main([*argv, "--snapshot_dir", str(probe_dir)]) == 0
    probes = json.loads((probe_dir / "results.json").read_text())
    assert list(probes["probes"]) == parse_heads(heads)
    first = parse_heads(heads)[0]
    assert probes["cub_test"] == probes["probes"][first]["cub_test"]  # top level: the first head
    entries = load_runs(probe_dir)  # collect_results: one table entry per head
    assert [(e.masking, e.cub_top1) for e in entries] == [("late" if h.startswith("late:") else "none",
                                                           probes["probes"][h]["cub_test"]["top1"])
                                                          for h in parse_heads(heads)]
    build_table(entries)
    for head, (kind, flags) in singles.items():
        run = tmp_path / head.replace(":", "_")
        single_argv = common(tiny_cub_root, arch, size, *flags, "--snapshot_dir", str(run))
        if kind == "late":
            assert late_main([*single_argv, "--mask_source", "gt"]) == 0
        else:
            assert early_main(single_argv) == 0
        single = json.loads((run / "results.json").read_text())
        assert "probes" not in single and "probes" not in single["best"]  # one head: the run's, at the top level
        for split in ("cub_test", "waterbirds"):
            assert probes["probes"][head][split] == single[split], (head, split)
        prefix = "classifier.head" if kind == "late" else "head"
        torch.testing.assert_close(head_weight(probe_dir, f"probes.{head.replace(':', '__')}"),
                                   head_weight(run, prefix), rtol=1e-5, atol=1e-6)
        if arch.startswith("convnext"):  # each probe trains its own copy of the head's LayerNorm, as its single run
            norm = prefix.removesuffix("head") + "backbone.head.norm"
            torch.testing.assert_close(head_weight(probe_dir, f"pools.{head.replace(':', '__')}.norm"),
                                       head_weight(run, norm), rtol=1e-5, atol=1e-6)
            assert not torch.equal(head_weight(run, norm), torch.ones_like(head_weight(run, norm)))


def test_probe_heads_are_refused_where_they_cannot_be_honoured(tiny_cub_root, tmp_path, capsys):
    base = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "r"), "--model_arch", VIT,
            "--image_size", "28", "--num_workers", "0"]
    cases = [
        (early_main, ["--probe_heads", "mean,cls"], "add --freeze_backbone"),
        (early_main, ["--freeze_backbone", "--probe_heads", "mean,late:mean"], "late_masking/train.py"),
        (late_main, ["--freeze_backbone", "--probe_heads", "late:cls"], "never reaches the CLS token"),
        (late_main, ["--freeze_backbone", "--probe_heads", "mean", "--fm_second_last_block"], "a separate run"),
        (early_main, ["--freeze_backbone", "--probe_heads", "pool"], "not a head of this backbone"),
        (early_main, ["--freeze_backbone", "--probe_heads", "mean", "--grad_norm_clip", "1"], "couple"),
        (early_main, ["--freeze_backbone", "--probe_heads", "mean", "--use_amp", "--amp_dtype", "float16"],
         "one loss scaler"),
    ]
    for main, extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err, message
    assert not (tmp_path / "r").exists()
    assert head_errors(["cls", "cls"], TokenAdapter.heads) and head_errors(["pool", "late:pool"], ("pool",)) == []
    assert head_errors(["late:masked_mean"], TokenAdapter.heads, TokenAdapter.late_only_heads) == []
    assert head_errors(["masked_mean"], TokenAdapter.heads, TokenAdapter.late_only_heads)  # late masking's alone


def test_each_probe_head_gets_the_diagnostics_of_its_single_head_run(tiny_cub_root, tmp_path):
    def flags(run, *extra):
        argv = common(tiny_cub_root, "convnext_atto", 64, "--snapshot_dir", str(tmp_path / run), *extra)
        argv[argv.index("--diagnostics") + 1] = "auto"
        return argv

    assert late_main(flags("probes", "--mask_source", "gt", "--probe_heads", "pool,late:pool")) == 0
    assert early_main(flags("pool")) == 0
    assert late_main(flags("late", "--mask_source", "gt")) == 0
    probes = json.loads((tmp_path / "probes" / "results.json").read_text())
    assert probes["diagnostics"] == probes["probes"]["pool"]["diagnostics"]
    for head, run in (("pool", "pool"), ("late:pool", "late")):
        single = json.loads((tmp_path / run / "results.json").read_text())["diagnostics"]
        mine = dict(probes["probes"][head]["diagnostics"])
        assert mine.pop("model").endswith(f"probe head {head}")
        single.pop("model")
        assert mine.keys() == single.keys() and "bg_gap" in mine
        for key, value in single.items():
            if key == "fg_attribution":
                assert mine[key] == pytest.approx(value, abs=1e-5), head
            else:
                assert mine[key] == value, (head, key)
    assert [e.has_gallery for e in load_runs(tmp_path / "probes")] == [True, False]  # the maps are the first head's
    galleries = {run: torch.load(tmp_path / run / "attribution_gallery.pt", weights_only=False)
                 for run in ("probes", "pool", "late")}
    assert set(galleries["probes"]["heads"]) == {"pool", "late:pool"}  # and every head's, as its single-head run's
    for head, run in (("pool", "pool"), ("late:pool", "late")):
        mine = galleries["probes"]["heads"][head]
        assert mine["labels"] == galleries[run]["labels"] and mine["predictions"] == galleries[run]["predictions"]
        assert torch.allclose(mine["maps"].float(), galleries[run]["maps"].float(), atol=1e-2, rtol=1e-2)
    entries = {e.masking: e for e in load_runs(tmp_path / "probes")}
    assert entries["late"].diagnostics == probes["probes"]["late:pool"]["diagnostics"]
    assert not (tmp_path / "probes" / "best.pt").exists()  # one best epoch cannot be every head's
    assert set(probes["best"]["probes"]) == {"pool", "late:pool"}
    # --eval_only scores the final weights of every head (no best.pt), with the same metrics as at the end of training.
    assert late_main(flags("probes", "--mask_source", "gt", "--probe_heads", "pool,late:pool", "--eval_only")) == 0
    scored = json.loads((tmp_path / "probes" / "results.json").read_text())
    assert scored["checkpoint"].endswith("last.pt")
    assert all(scored["probes"][h]["cub_test"] == probes["probes"][h]["cub_test"] for h in ("pool", "late:pool"))
