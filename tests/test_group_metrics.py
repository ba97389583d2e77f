"""Group metrics by hand: a stub model with known hits per (y, place) group, every figure asserted exactly, on one
process and summed over two."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from bgmask.benchmarks.cub import waterbirds_groups
from bgmask.training.engine import AmpSettings, IndexedDataset, ShardSampler, evaluate

NUM_CLASSES = 5
# (waterbird y, place) -> (images, hits): 20 images, 14 hits
GROUPS = {(0, 0): (7, 5), (0, 1): (3, 1), (1, 0): (4, 2), (1, 1): (6, 6)}


def stub_data():
    """Items ``(x, label)``: ``x = (label, hit)``, interleaved across groups so each process gets a mix."""
    rows = [(y, place, hit) for (y, place), (n, hits) in GROUPS.items() for hit in [1] * hits + [0] * (n - hits)]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    labels = [i % NUM_CLASSES for i in range(len(rows))]
    items = [(torch.tensor([float(label), float(hit)]), label) for label, (_, _, hit) in zip(labels, rows)]
    waterbird_y = np.array([r[0] for r in rows])
    places = np.array([r[1] for r in rows])
    return items, waterbird_y, places


class Stub(nn.Module):
    """Predicts the label where ``hit`` is 1, the next class otherwise."""

    def forward(self, x):
        label, hit = x[:, 0].long(), x[:, 1].long()
        return nn.functional.one_hot(torch.where(hit == 1, label, (label + 1) % NUM_CLASSES), NUM_CLASSES).float()


def evaluate_shard(rank: int, world_size: int, batch_size: int) -> dict:
    items, waterbird_y, places = stub_data()
    loader = DataLoader(IndexedDataset(items), batch_size=batch_size,
                        sampler=ShardSampler(len(items), rank, world_size))
    groups = waterbirds_groups(waterbird_y, places)
    metrics = evaluate(Stub(), loader, torch.device("cpu"), AmpSettings(), groups=groups, progress=False)
    assert list(metrics) == ["logits"]  # a model without head names is one head
    return metrics["logits"]


EXPECTED = {
    "top1": 70.0, "correct": 14, "num_images": 20,
    "per_place": {"0": 100 * 7 / 11, "1": 100 * 7 / 9},
    "groups": {"y0_place0": {"top1": 100 * 5 / 7, "num_images": 7}, "y0_place1": {"top1": 100 / 3, "num_images": 3},
               "y1_place0": {"top1": 50.0, "num_images": 4}, "y1_place1": {"top1": 100.0, "num_images": 6}},
    "worst_group": 100 / 3,
}


def assert_expected(metrics: dict) -> None:
    # "loss" (the mean validation cross-entropy, a tie-break of model selection) depends on the stub's logits
    assert metrics.keys() == EXPECTED.keys() | {"loss"} and metrics["loss"] >= 0
    assert (metrics["correct"], metrics["num_images"]) == (14, 20)
    assert metrics["top1"] == pytest.approx(EXPECTED["top1"], abs=1e-12)
    assert metrics["per_place"] == pytest.approx(EXPECTED["per_place"], abs=1e-12)
    assert metrics["groups"].keys() == EXPECTED["groups"].keys()
    for name, group in EXPECTED["groups"].items():
        assert metrics["groups"][name]["num_images"] == group["num_images"], name
        assert metrics["groups"][name]["top1"] == pytest.approx(group["top1"], abs=1e-12), name
    assert metrics["worst_group"] == pytest.approx(EXPECTED["worst_group"], abs=1e-12)


@pytest.mark.parametrize("batch_size", [1, 3, 20])
def test_group_metrics_on_one_process(batch_size):
    assert_expected(evaluate_shard(0, 1, batch_size))


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metrics = evaluate_shard(rank, world_size, batch_size=3)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_group_metrics_summed_over_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):  # every process reports the whole set's figures
        assert_expected(json.loads((tmp_path / f"rank{rank}.json").read_text()))
