"""What the paper's runs need on GPU nodes, held on CPU: mixed precision (bf16 autocast), results before the
diagnostics, small frozen checkpoints, evaluation cadence, gradient checkpointing, readable logs."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from bgmask.infra.checkpoint import atomic_torch_save, load_checkpoint
from bgmask.infra.progress import LineProgress, progress_bar
from bgmask.models import ModelSpec, create_classifier
from bgmask.strategies import ModelInput
from bgmask.strategies.late import LateMaskedClassifier
from early_masking_and_baseline.train import main as early_main
from late_masking.train import main as late_main

VIT = "vit_small_patch14_dinov2"
BF16_ON_CPU = ("--use_amp", "--amp_dtype", "bfloat16", "--amp_on_cpu")


def argv(root, run_dir, *extra, arch="convnext_atto", size=32):
    return ["--data_path", str(root), "--snapshot_dir", str(run_dir), "--model_arch", arch, "--image_size", str(size),
            "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--seed", "0", "--aa", "", "--reprob", "0",
            "--diagnostics", "none", *extra]


def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ---------------------------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("main,extra", [
    (early_main, ()),
    (early_main, ("--masking", "early")),
    (late_main, ("--mask_source", "gt")),
    (late_main, ("--mask_source", "gt", "--fm_second_last_block")),
])
def test_bf16_autocast_trains_every_strategy_on_cpu(tiny_cub_copy, tmp_path, main, extra):
    if "early" in extra:
        from bgmask.data.masks import write_gt_masked_folders

        write_gt_masked_folders(tiny_cub_copy, progress=False)
    run = tmp_path / "run"
    assert main(argv(tiny_cub_copy, run, *BF16_ON_CPU, "--max_train_batches", "2", *extra,
                     "--diagnostics", "auto")) == 0
    res = results(run)
    assert res["precision"] == "bfloat16" and res["cub_test"]["num_images"] == 12
    assert "bg_gap" in res["diagnostics"]  # the diagnostics ran under the same autocast
    log = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert log["train_steps"] == 2 and torch.isfinite(torch.tensor(log["train_loss"]))


def test_bf16_autocast_trains_probe_heads_and_the_amp_flag_alone_keeps_cpu_runs_fp32(tiny_cub_root, tmp_path, capsys):
    probes = tmp_path / "probes"
    assert late_main(argv(tiny_cub_root, probes, *BF16_ON_CPU, "--freeze_backbone", "--mask_source", "gt",
                          "--probe_heads", "mean,late:mean", arch=VIT, size=28)) == 0
    res = results(probes)
    assert res["precision"] == "bfloat16" and set(res["probes"]) == {"mean", "late:mean"}
    plain = tmp_path / "plain"
    assert early_main(argv(tiny_cub_root, plain, "--use_amp", "--amp_dtype", "bfloat16")) == 0
    assert results(plain)["precision"] == "fp32"
    assert "trains in fp32" in capsys.readouterr().out


def test_bf16_autocast_computes_in_bf16():
    """The autocast really reaches the model: its logits differ from fp32's by bf16 rounding, not by nothing."""
    from bgmask.training.engine import AmpSettings

    torch.manual_seed(0)
    model = create_classifier(ModelSpec(arch=VIT, num_classes=5, image_size=28)).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        fp32 = model(x)
        with AmpSettings("cpu", torch.bfloat16).autocast():
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16 and not torch.equal(bf16.float(), fp32)
    torch.testing.assert_close(bf16.float(), fp32, atol=0.1, rtol=0.1)


# --------------------------------------------------------------------------------------- results, diagnostics
def test_metrics_are_written_before_the_diagnostics_and_survive_their_failure(tiny_cub_root, tmp_path, monkeypatch):
    import bgmask.run.bias_report as diagnose

    run = tmp_path / "run"
    seen = {}

    def failing_diagnostics(session, *args, **kwargs):
        seen["on_disk"] = results(run)  # what a crash at this point would leave
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(diagnose, "run_diagnostics", failing_diagnostics)
    with pytest.warns(UserWarning, match="diagnostics failed"):
        assert early_main(argv(tiny_cub_root, run, "--diagnostics", "auto")) == 0
    assert seen["on_disk"]["cub_test"]["num_images"] == 12 and "pending" in seen["on_disk"]["diagnostics"]
    res = results(run)
    assert res["cub_test"] == seen["on_disk"]["cub_test"]
    assert res["diagnostics"] == {"failed": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"}


@pytest.mark.parametrize("arch,size,layout", [(VIT, 28, "tokens"), ("convnext_atto", 64, "NCHW")])
def test_attribution_leaves_no_parameter_gradients(arch, size, layout):
    from bgmask.diagnostics.attribution import attribution_maps

    torch.manual_seed(0)
    model = create_classifier(ModelSpec(arch=arch, num_classes=3, image_size=size))  # fine-tuned: all train
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    maps = attribution_maps(model, images, torch.ones(2, size, size), labels, ModelInput.IMAGE)
    assert model.layout == layout
    assert maps.shape == (2, size, size) and maps.sum() > 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_attribution_halves_the_batch_on_out_of_memory(monkeypatch):
    import bgmask.diagnostics.attribution as diagnostics

    sizes = []
    real = diagnostics.attribution_maps

    def small_memory(model, images, *args, **kwargs):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(diagnostics, "attribution_maps", small_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = create_classifier(ModelSpec(arch=VIT, num_classes=3, image_size=28))
    images, masks, labels = torch.randn(5, 3, 28, 28), torch.ones(5, 28, 28), torch.tensor([0, 1, 2, 0, 1])
    maps = diagnostics.attribution_in_chunks(model, images, masks, labels, ModelInput.IMAGE, contextlib.nullcontext)
    assert sizes == [5, 2, 3, 1, 2] and maps.shape == (5, 28, 28)
    torch.testing.assert_close(maps, real(model, images, masks, labels, ModelInput.IMAGE))


# ------------------------------------------------------------------------------------------------ checkpoints
def test_frozen_checkpoints_hold_only_what_trains_and_resume_exactly(tiny_cub_root, tmp_path):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    frozen = ("--freeze_backbone", "--epochs", "2", "--save_every_n_epochs", "1")
    assert early_main(argv(tiny_cub_root, full_dir, *frozen)) == 0
    state = load_checkpoint(full_dir / "last.pt")
    assert set(state["model"]) == {"head.weight", "head.bias", "backbone.head.norm.weight", "backbone.head.norm.bias"}
    assert state["weights_identity"] == {"arch": "convnext_atto", "image_size": 32, "resampled": None,
                                         "random_init_seed": 0}
    assert set(load_checkpoint(full_dir / "best.pt")["model"]) == set(state["model"])
    model_bytes = sum(p.numel() * 4 for p in create_classifier(ModelSpec("convnext_atto", 4)).parameters())
    assert (full_dir / "last.pt").stat().st_size < model_bytes / 20

    resumed_dir.mkdir()
    epoch_1 = load_checkpoint(full_dir / "epoch_1.pt")
    atomic_torch_save(epoch_1, resumed_dir / "last.pt")
    assert early_main(argv(tiny_cub_root, resumed_dir, *frozen[:-2])) == 0
    a, b = load_checkpoint(full_dir / "last.pt")["model"], load_checkpoint(resumed_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results(full_dir)["cub_test"] == results(resumed_dir)["cub_test"]
    # --eval_only rebuilds the backbone and loads the head: the same metrics
    assert early_main(argv(tiny_cub_root, full_dir, *frozen, "--eval_only", "--checkpoint",
                           str(full_dir / "last.pt"))) == 0
    assert results(full_dir)["cub_test"] == results(resumed_dir)["cub_test"]


def test_a_frozen_checkpoint_is_refused_on_other_backbone_weights(tiny_cub_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert early_main(argv(tiny_cub_root, run, "--freeze_backbone", "--epochs", "1")) == 0
    state = load_checkpoint(run / "last.pt")
    state["weights_identity"] = {**state["weights_identity"], "random_init_seed": 7}
    atomic_torch_save(state, run / "last.pt")
    assert early_main(argv(tiny_cub_root, run, "--freeze_backbone", "--epochs", "1", "--eval_only", "--checkpoint",
                           str(run / "last.pt"))) == 2
    assert "frozen backbone came from other weights" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("each_time", [False, True])
def test_waterbirds_is_scored_at_the_end_unless_asked_each_time(tiny_cub_root, tmp_path, each_time):
    run = tmp_path / "run"
    extra = ("--eval_ood_each_time",) if each_time else ()
    assert early_main(argv(tiny_cub_root, run, "--epochs", "2", "--eval_every", "1", *extra)) == 0
    first, last = (json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())
    assert "cub_test" in first and ("waterbirds" in first) == each_time
    assert {"cub_test", "waterbirds"} <= set(last)


# ------------------------------------------------------------------------------------------------ memory, logs
@pytest.mark.parametrize("second_last", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(second_last):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        clf = create_classifier(ModelSpec(arch=VIT, num_classes=3, image_size=28))
        clf.backbone.set_grad_checkpointing(checkpointing)
        model = LateMaskedClassifier(clf, second_last=second_last).train()
        torch.manual_seed(1)
        x, masks = torch.randn(2, 3, 28, 28), (torch.rand(2, 28, 28) > 0.5).float()
        torch.nn.functional.cross_entropy(model(x, masks), torch.tensor([0, 2])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_progress_in_a_log_file_is_whole_lines():
    stream = io.StringIO()  # not a terminal, as a SLURM log or the demo's stage logs
    bar = progress_bar(total=100, desc="epoch 1/3", file=stream)
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0  # a line at every update
    for _ in range(3):
        bar.update()
    bar.set_postfix(loss="1.234")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") == 4
    assert text.splitlines()[-1].startswith("epoch 1/3: 3/100 it") and text.endswith("loss=1.234\n")
    assert list(progress_bar(range(4), desc="eval", file=io.StringIO())) == [0, 1, 2, 3]


@pytest.mark.no_gpu
def test_gpu_check_says_so_and_passes_without_cuda():
    import subprocess
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: scripts/gpu_check.sh runs its checks (minutes), not this test")
    script = Path(__file__).resolve().parents[1] / "scripts/gpu_check.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_gpu_check_acceptance_runs_every_check_on_cpu_and_writes_its_figures(tmp_path):
    """GPU_CHECK_ON_CPU=1: the acceptance part of scripts/gpu_check.sh at toy sizes (so it cannot rot without a
    GPU): one PASS line per check, every figure in one JSON file, and the checks' own guards hold on CPU."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts/gpu_check.sh"
    report_path = tmp_path / "gpu_check.json"
    env = {**os.environ, "GPU_CHECK_ON_CPU": "1", "GPU_CHECK_PARTS": "acceptance",
           "GPU_CHECK_JSON": str(report_path), "WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads(report_path.read_text())["checks"]
    assert list(checks) == ["sync_free_steps", "tail_parity", "compiled_late_vit", "compiled_late_convnext",
                            "paper_step", "loader", "preemption_two_ranks"]
    assert all(c["ok"] for c in checks.values()) and proc.stdout.count("PASS  ") == len(checks)
    assert checks["sync_free_steps"]["steps"] == 20
    tail = checks["tail_parity"]
    assert tail["boxes"] > 0 and tail["cpu_changed_outside_boxes"] == 0 and tail["cpu_box_pixels_changed"] > 0.99
    for family in ("vit", "convnext"):
        compiled = checks[f"compiled_late_{family}"]
        assert compiled["graph_breaks"] == 0 and compiled["background_grad_max"] == 0.0
        assert compiled["foreground_grad_max"] > 0 and compiled["logits_max_rel_diff"] < 0.05
    step = checks["paper_step"]
    assert step["train_gflops_per_image"] > 0 and step["reserved_estimate_gib"] > 0 and step["compiled_over_eager"] > 0
    assert checks["loader"]["convnext_atto"]["loader_over_demand"] > 0
    preempted = checks["preemption_two_ranks"]
    assert preempted["saved_at"]["step"] > 0 and preempted["resumed_exit_code"] == 0


def test_checkpoint_every_writes_last_pt_every_n_epochs_and_at_the_end(tiny_cub_root, tmp_path, monkeypatch):
    import bgmask.infra.checkpoint as checkpoint

    written = []
    real_save = checkpoint.atomic_torch_save

    def recording_save(obj, path):
        written.append((path.name, obj.get("epoch")))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", recording_save)
    run = tmp_path / "run"
    assert early_main(argv(tiny_cub_root, run, "--epochs", "3", "--checkpoint_every", "2", "--eval_every", "3")) == 0
    assert [epoch for name, epoch in written if name == "last.pt"] == [2, 3]


def test_projected_hours_use_the_runs_own_gpus_and_memory_adds_the_stated_overheads():
    """A 4-process run's hours divide by 4, not by a node's 8; the reserved estimate adds the CUDA context,
    workspaces, communication buffers, optimiser temporaries and fragmentation to the traced peak."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts/bench/paper_scale.py"
    spec = importlib.util.spec_from_file_location("paper_scale", path)
    paper_scale = importlib.util.module_from_spec(spec)
    sys.modules["paper_scale"] = paper_scale  # its dataclasses look their module up there
    spec.loader.exec_module(paper_scale)
    row = {"total_flops": 4 * 989e12 * 0.35 * 3600, "gpus": 4, "arch": "vit_large_patch14_dinov2",
           "regime": "fine-tuned", "train_peak_gib": 24.5, "trainable": 304.8e6}
    assert paper_scale.hours(row, 989.0) == pytest.approx(1.0)
    assert paper_scale.hours({**row, "gpus": 8}, 989.0) == pytest.approx(0.5)
    assert paper_scale.hours({**row, "arch": "convnext_base"}, 989.0) == pytest.approx(0.35 / 0.20)
    reserved = paper_scale.reserved_estimate_gib(row)
    assert reserved == pytest.approx(24.5 * 1.15 + 0.6 + 1.0 + 0.5 + 4 * 304.8e6 / 2 ** 30)
    assert 29 <= reserved <= 32
