"""The ``refit_last_layer`` run phase, for a strategy that refits the last layer instead of training (DFR,
:mod:`bgmask.strategies.dfr`): load the checkpoint it starts from (``Strategy.starts_from``), embed the selection
split without augmentation, let the strategy fit the head (``Strategy.refit_last_layer``), evaluate as any run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from bgmask.benchmarks import BenchmarkData
from bgmask.errors import ConfigError
from bgmask.infra.checkpoint import CheckpointManager, atomic_torch_save, load_checkpoint
from bgmask.infra.logging import save_args
from bgmask.infra.progress import progress_bar
from bgmask.run.evaluation import evaluate_sets
from bgmask.run.model import RunModel
from bgmask.run.session import Session
from bgmask.strategies import Strategy


def refit(session: Session, data: BenchmarkData, model: RunModel, ckpt: CheckpointManager, strategy: Strategy) -> dict:
    cfg, info = session.cfg, session.info
    selection = data.eval_sets[data.selection]
    if not data.validation_selection:
        raise ConfigError(f"--masking {strategy.name} fits the last layer on a validation split, and this benchmark "
                          f"selects on {data.selection!r}, a test set: fitting there would report figures measured "
                          f"on the fitted data. Give the dataset a val split (--dataset csv: rows with split val).")
    if selection.groups is None:
        raise ConfigError(f"--masking {strategy.name} fits on the {data.selection!r} set's groups, and this "
                          f"benchmark's {data.selection!r} set has none: use --dataset waterbirds, or a CSV with an "
                          f"a column.")
    if info.is_main:
        save_args(cfg.flat(), session.snapshot_dir / "args.yaml")
    source = load_source(strategy.starts_from(cfg), model)
    features, labels = embed(session, model.module, selection.dataset)
    train_features = embed(session, model.module, data.train_plain)[0] if data.train_plain is not None else None
    weight, bias, report = strategy.refit_last_layer(cfg, features, labels, selection.groups.ids, data.num_classes,
                                                     train_features)
    if report.get("degenerate_c_grid") and info.is_main:
        print(f"{strategy.name}: warning: every C of the grid scored the same worst group on the tuning half "
              f"({next(iter(report['tuning_worst_group'].values())):.1f} %): the grid cannot choose, the first C "
              f"({report['c']}) is kept. results.json records it (refit.degenerate_c_grid).", flush=True)
    head = model.module.head
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    if info.is_main:
        print(f"{strategy.name}: last layer refitted on {len(labels)} {data.selection} images (C {report['c']}, "
              f"balanced subsets of {report['balanced_subset_size']}) from {source}", flush=True)
        atomic_torch_save({"model": model.state(), "weights_identity": model.weights_identity, "epoch": 0,
                           "args": cfg.flat(), "model_arch": cfg.model.model_arch, "num_classes": data.num_classes},
                          ckpt.last_path)
    metrics = evaluate_sets(session, model, data.eval_sets)
    score = metrics[data.selection][data.selection_metric]
    return {**metrics, "epoch": 0, "refit": {**report, "from": source, "fitted_on": data.selection},
            "best": {"epoch": 0, data.selection_metric: score, "selected_on": data.selection, "refit": True}}


def load_source(path: Path | None, model: RunModel) -> str:
    """Load a checkpoint's weights into the model; without one the model keeps the weights it was built with.
    Returns where the weights came from."""
    if path is None:
        return "the weights the model was built with"
    state = load_checkpoint(path)
    model.load(state["model"], path, state.get("weights_identity"))
    return str(path)


@torch.no_grad()
def embed(session: Session, model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The head's input for every image of ``dataset`` (its eval transform, no augmentation), on every process."""
    model.eval()
    loader = DataLoader(dataset, shuffle=False, drop_last=False, **session.loader_kwargs)
    features, labels = [], []
    for *inputs, y in progress_bar(loader, desc="embed", disable=not session.info.is_main):
        inputs = [x.to(session.info.device) for x in inputs]
        with session.amp.autocast():
            features.append(model.embed(*inputs).float().cpu())
        labels.append(y)
    return torch.cat(features).numpy().astype(np.float64), torch.cat(labels).numpy()
