"""Preemption and crashes: a signalled run saves its exact position and resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bgmask.infra.checkpoint import CheckpointManager, atomic_torch_save, load_checkpoint
from bgmask.infra.preemption import REQUEUE_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]


# The paper's shape: persistent loader workers, mixup/cutmix and drop-path, whose draws come from the trainer's own
# random streams; with workers > 0 nothing reseeds those streams per image, so only the RNG restore of last.pt makes
# the resumed run equal the uninterrupted one.
PAPER_SHAPE = ("--turn_on_mixup_or_cutmix", "--drop_path", "0.1")


def train_cmd(root, run_dir, epochs=3, workers=2):
    return [sys.executable, str(REPO / "early_masking_and_baseline/train.py"), "--data_path", str(root),
            "--snapshot_dir", str(run_dir), "--model_arch", "convnext_atto", "--image_size", "32", "--batch_size",
            "2", "--num_workers", str(workers), "--epochs", str(epochs), "--seed", "0", "--device", "cpu",
            "--log_interval", "2", *PAPER_SHAPE]  # the preemption flag is polled every 2 of the 6 steps of an epoch


def final_weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_signal_mid_epoch_saves_requeues_and_resumes_exactly(tiny_cub_root, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(train_cmd(tiny_cub_root, reference, workers=1), check=True, capture_output=True, timeout=300)

    run = tmp_path / "preempted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The interrupted run has two persistent workers, the reference one: augmentation seeds are per image, so the
    # result must not depend on it.
    proc = subprocess.Popen(train_cmd(tiny_cub_root, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.time() + 240
    while not (run / "log.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # wait until epoch 1 is complete, so the signal lands in epoch 2 (or 3)
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=USR1@120` sends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, out[-3000:]
    assert "Preempted" in out
    state = load_checkpoint(run / "last.pt")
    assert state["step"] > 0 and state["epoch"] < 3  # a mid-epoch position
    assert not (run / "results.json").exists()

    resumed = subprocess.run(train_cmd(tiny_cub_root, run), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    a, b = final_weights(reference), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((run / "results.json").read_text())
    assert ra["cub_test"] == rb["cub_test"] and ra["waterbirds"] == rb["waterbirds"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_flag_catches_signals_and_restores_handlers(sig):
    from bgmask.infra.preemption import PreemptionFlag

    before = signal.getsignal(sig)
    flag = PreemptionFlag()
    assert not flag.requested()
    os.kill(os.getpid(), sig)
    assert flag.requested() and flag.signal_received == sig
    flag.restore()
    assert signal.getsignal(sig) == before


def test_crash_during_checkpoint_write_keeps_previous_last(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save({"epoch": 1, "weights": torch.ones(3)}, epoch=1, is_best=True)

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        manager.save({"epoch": 2, "weights": torch.zeros(3)}, epoch=2, is_best=True)
    monkeypatch.undo()
    state = manager.resume_state()
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left


def test_killed_writer_leaves_no_partial_checkpoint(tmp_path):
    """A process killed (SIGKILL) in the middle of a large atomic save leaves last.pt untouched."""
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    code = ("import torch, sys; from bgmask.infra.checkpoint import atomic_torch_save; "
            "atomic_torch_save({'epoch': 2, 'w': torch.randn(32, 1024, 1024)}, sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".last.pt.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert load_checkpoint(path)["epoch"] == 1


def torchrun_cmd(root, run_dir, **kwargs):
    """The same run on 2 gloo processes (torchrun forwards SIGTERM to its workers, then waits for them)."""
    python, *script_and_args = train_cmd(root, run_dir, **kwargs)
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--shutdown_timeout",
            "120", *script_and_args]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc): what SLURM signals in a job step."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="module")
def torchrun_reference(tiny_cub_root, tmp_path_factory):
    """The uninterrupted 2-process run the preempted ones must equal."""
    reference = tmp_path_factory.mktemp("torchrun") / "reference"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun_cmd(tiny_cub_root, reference), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return reference


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("who", ["torchrun", "job"])
def test_torchrun_worker_signalled_mid_epoch_saves_and_resumes_to_the_uninterrupted_weights(tiny_cub_root, tmp_path,
                                                                                           torchrun_reference, who):
    """2 processes with 2 persistent loader workers each, signalled mid-epoch: SIGTERM to torchrun (scancel, the
    sbatch trap), or to every process of the job as SLURM does (trainers and their workers included, the trainers
    then twice: directly and forwarded by torchrun). Both save and resume to the uninterrupted run's weights."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    reference = torchrun_reference
    run = tmp_path / "preempted"
    proc = subprocess.Popen(torchrun_cmd(tiny_cub_root, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    deadline = time.time() + 240
    while not (run / "log.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # epoch 1 is complete: the signal lands in epoch 2 (or 3)
    if who == "torchrun":
        proc.send_signal(signal.SIGTERM)  # what scancel / the sbatch trap sends to torchrun
    else:
        for pid in [proc.pid, *descendants(proc.pid)]:  # every process of the job step, loader workers included
            os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert "DataLoader worker" not in out, out[-3000:]
    assert "Preempted" in out, out[-3000:]
    state = load_checkpoint(run / "last.pt")
    assert state["step"] > 0 and state["epoch"] < 3 and len(state["rng"]) == 2  # a mid-epoch position, both ranks
    assert not (run / "results.json").exists()

    resumed = subprocess.run(torchrun_cmd(tiny_cub_root, run), capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    a, b = final_weights(reference), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((run / "results.json").read_text())
    assert ra["world_size"] == rb["world_size"] == 2 and ra["cub_test"] == rb["cub_test"]
