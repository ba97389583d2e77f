"""The paper's configuration under cluster faults, the parts that need no second process: loader workers that ignore
the preemption signal, one request however many times it arrives, an out-of-memory retry that frees the failed
attempt, and no host synchronisation per step in the device tail and the grouped evaluation."""

from __future__ import annotations

import os
import signal
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bgmask.data.groups import Groups
from bgmask.data.transforms import DeviceTail, RawImage
from bgmask.diagnostics import attribution
from bgmask.infra import preemption
from bgmask.strategies import ModelInput
from bgmask.training.engine import AmpSettings, IndexedDataset, evaluate


class SignalHandlers(Dataset):
    """Reports, from inside a loader worker, how the worker handles the preemption signals."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return torch.tensor([int(signal.getsignal(s) == signal.SIG_IGN)
                             for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)])


def test_loader_workers_ignore_the_preemption_signals(tiny_cub_root, tmp_path):
    from bgmask.config import TrainConfig
    from bgmask.run.session import start_session

    cfg = TrainConfig()
    cfg.data.data_path, cfg.run.snapshot_dir, cfg.run.device, cfg.data.num_workers = (
        str(tiny_cub_root), str(tmp_path / "run"), "cpu", 1)
    session = start_session(cfg)
    assert session.loader_kwargs["worker_init_fn"] is preemption.ignore_preemption_signals
    loader = DataLoader(SignalHandlers(), batch_size=2, num_workers=1,
                        worker_init_fn=session.loader_kwargs["worker_init_fn"])
    assert next(iter(loader)).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # the trainer itself still catches it


def test_a_signal_that_arrives_twice_is_one_request(monkeypatch):
    """SLURM signals every process of the job step and torchrun forwards its own SIGTERM to the trainer: the
    trainer gets the signal twice and must still save, not abort; a second signal much later aborts the wait."""
    flag = preemption.PreemptionFlag()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the same request, forwarded
        assert flag.requested()
        monkeypatch.setattr(preemption, "REPEAT_WINDOW_S", 0.0)
        with pytest.raises(KeyboardInterrupt, match="second signal"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        flag.restore()


def test_an_out_of_memory_retry_frees_the_failed_attempt_first(monkeypatch):
    activations, calls = [], []

    def attribution_maps(model, images, masks, labels, model_input, autocast):
        calls.append(len(images))
        if len(calls) == 1:
            activation = torch.empty(1024)  # what the failed forward held
            activations.append(weakref.ref(activation))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        assert activations[0]() is None, "the failed attempt's activations are alive during the retry"
        return torch.zeros(len(images), 4, 4)

    monkeypatch.setattr(attribution, "attribution_maps", attribution_maps)
    images, masks, labels = torch.zeros(4, 3, 8, 8), torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long)
    out = attribution.attribution_in_chunks(None, images, masks, labels, ModelInput.IMAGE, None)
    assert out.shape == (4, 4, 4) and calls == [4, 2, 2]


def test_the_device_tail_builds_its_constants_once(monkeypatch):
    tail = DeviceTail((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    raw = RawImage(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.full((2, 0, 5), -1))
    expected = tail(raw, torch.device("cpu"))
    made = []
    real = torch.tensor

    def counting(*args, **kwargs):
        made.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting)
    for _ in range(3):  # steps after the first: no new tensor, no copy to the device
        assert torch.equal(tail(raw, torch.device("cpu")), expected)
    assert made == []
    assert torch.allclose(expected, torch.full_like(expected, 2.0))  # (1 - 0.5) / 0.25


class Fixed(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2]


def test_grouped_evaluation_counts_without_bincount(monkeypatch):
    """torch.bincount on CUDA reads its maximum back to the host: the grouped counts use index_add_."""
    def no_bincount(*args, **kwargs):
        raise AssertionError("bincount in the evaluation loop")

    monkeypatch.setattr(torch, "bincount", no_bincount)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]).view(4, 2, 1, 1)
    y = torch.tensor([0, 1, 1, 0])
    data = [(x[i], y[i]) for i in range(4)]
    groups = Groups(np.array([0, 0, 1, 1]), ("y0_a0", "y1_a0"))
    loader = DataLoader(IndexedDataset(data), batch_size=3)
    m = evaluate(Fixed(), loader, torch.device("cpu"), AmpSettings(), groups=groups, progress=False)["logits"]
    assert m["groups"]["y0_a0"]["top1"] == 100.0 and m["groups"]["y1_a0"]["top1"] == 50.0
    assert m["worst_group"] == 50.0 and m["top1"] == 75.0


@pytest.mark.slow
@pytest.mark.distributed
def test_one_ranks_diagnostics_failure_ends_the_run_on_every_rank_in_seconds(tiny_cub_root, tmp_path):
    """Rank 1 fails in the only-BG-T view; without agreement rank 0 would wait in that view's all-reduce until the
    process group's timeout (30 minutes). With it both ranks skip the same views and results.json names them."""
    import json
    import subprocess
    import sys
    import textwrap
    import time
    from pathlib import Path

    from tests.test_classifier import train_argv

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "faulty_diagnostics.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(repo)!r})
        import bgmask.diagnostics.views as d
        real = d.DiagnosticViews.__getitem__
        def faulty(self, i):
            if os.environ["RANK"] == "1" and self.view == "only_bg_t":
                raise RuntimeError("injected diagnostics fault on rank 1")
            return real(self, i)
        d.DiagnosticViews.__getitem__ = faulty
        import importlib.util
        spec = importlib.util.spec_from_file_location("t", {str(repo / "early_masking_and_baseline/train.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.exit(module.main(sys.argv[1:]))
    """))
    run = tmp_path / "run"
    argv = train_argv(tiny_cub_root, run, "--epochs", "1", "--device", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *argv]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - start < 200
    out = json.loads((run / "results.json").read_text())
    diag = out["diagnostics"]
    assert "injected diagnostics fault on rank 1" in diag["failed"] or "another process" in diag["failed"]
    assert diag["completed"] == ["only_fg", "only_bg_b"]
    assert diag["skipped"][:3] == ["only_bg_t", "mixed_same", "mixed_rand"]
    assert out["cub_test"]["num_images"] > 0  # the metrics are intact
