"""DFR, deep feature reweighting (Kirichenko et al., 2022), beside the masking strategies (``--masking dfr``).

The backbone is not trained: a model whose last layer learned the background — a baseline run's weights
(``--dfr_from RUN_FOLDER``) or any weights the trainer loads (``--pretrained_path``, ``--start_weights``) — keeps
its features, and only the last layer is fitted again, on the benchmark's validation split where the groups are
balanced, as the DFR paper does it (its ``dfr_evaluate_spurious.py``):

* the base model is a trained baseline's *final* weights (``last.pt``), as the DFR code loads the ERM run's final
  checkpoint; a frozen probe's features are the pretrained ones, so DFR on it is a probe refitted, not DFR;
* embeddings (the head's input) of the validation images, without augmentation;
* an L1-regularised logistic regression (scikit-learn, liblinear); its strength ``C`` is chosen on one half of the
  validation split (one group-balanced subset shared by every ``C``, standardised on its own statistics) by the
  worst-group accuracy on the other half; a grid on which every ``C`` scores the same is flagged;
* the final layer is the average of ``--dfr_retrains`` fits with that ``C``, each on a group-balanced subset of the
  whole validation split (every group cut to the smallest one's size), standardised with the statistics of the
  training split's embeddings (no augmentation), as the reference does.

The fitted layer replaces the model's head (the standardisation folded into it), and the run is evaluated as any
other: the same sets, groups and results.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from bgmask.config import TrainConfig, option
from bgmask.errors import ConfigError, DatasetError
from bgmask.strategies.base import ModelInput, Strategy, register


@dataclass
class DFROptions:
    section: ClassVar[str] = "DFR (deep feature reweighting)"
    dfr_from: str | None = option(None, "run folder of a trained baseline whose features are reweighted: its final "
                                        "weights (last.pt, as the DFR code takes the ERM run's final checkpoint; "
                                        "best.pt when there is no last.pt); default: the weights --pretrained_path / "
                                        "--start_weights load")
    dfr_c_grid: str = option("1.0,0.7,0.3,0.1,0.07,0.03,0.01", "inverse L1 strengths tried (the DFR paper's grid)")
    dfr_tune_retrains: int = option(1, "balanced subsets per C while tuning (the DFR paper: 1)")
    dfr_retrains: int = option(20, "balanced subsets whose fits are averaged into the final layer (the DFR paper: "
                                   "20)")


@register
class DeepFeatureReweighting(Strategy):
    name = "dfr"
    label = "DFR"
    summary = ("deep feature reweighting: a baseline's frozen features, its last layer refitted on group-balanced "
               "validation data (L1 logistic regression)")
    diagnostics_input = ModelInput.IMAGE
    Options = DFROptions
    phase = "refit_last_layer"  # no training (bgmask.run.refit)

    def check(self, cfg: TrainConfig) -> None:
        opts: DFROptions = cfg.strategy_options
        if not cfg.model.freeze_backbone:
            raise ConfigError("--masking dfr refits the last layer of a frozen model: add --freeze_backbone.")
        if cfg.model.probe_heads is not None:
            raise ConfigError("--masking dfr fits one head; drop --probe_heads.")
        if opts.dfr_from is not None:
            source_checkpoint(opts.dfr_from)
        if opts.dfr_retrains < 1 or opts.dfr_tune_retrains < 1:
            raise ConfigError("--dfr_retrains and --dfr_tune_retrains must be >= 1.")
        try:
            grid = c_grid(opts.dfr_c_grid)
        except ValueError:
            grid = []
        if not grid or min(grid) <= 0:
            raise ConfigError(f"--dfr_c_grid takes positive numbers separated by commas, got {opts.dfr_c_grid!r}.")

    def starts_from(self, cfg: TrainConfig) -> Path | None:
        run_dir = cfg.strategy_options.dfr_from
        return source_checkpoint(run_dir) if run_dir is not None else None

    def refit_last_layer(self, cfg: TrainConfig, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                         num_classes: int, train_features: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
        opts: DFROptions = cfg.strategy_options
        return reweight(features, labels, groups, num_classes, c_grid(opts.dfr_c_grid), opts.dfr_tune_retrains,
                        opts.dfr_retrains, cfg.run.seed, train_features)

    def results_info(self, cfg: TrainConfig) -> dict:
        opts: DFROptions = cfg.strategy_options
        return {"dfr_from": opts.dfr_from, "dfr_c_grid": opts.dfr_c_grid, "dfr_retrains": opts.dfr_retrains}


def c_grid(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a group-balanced subset: every group present cut to the size of the smallest one."""
    present = np.unique(groups)
    n = min(int((groups == g).sum()) for g in present)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(groups == g), n, replace=False) for g in present]))


def worst_group_accuracy(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    return min(float((predictions[groups == g] == labels[groups == g]).mean()) for g in np.unique(groups))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic regression (liblinear); the weights as ``num_classes x d`` logits: a binary fit as [0, w], more
    classes one-vs-rest (liblinear's own scheme, which scikit-learn >= 1.8 asks for explicitly)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    present = np.unique(y)
    if len(present) < 2:
        raise DatasetError(f"a group-balanced subset of the validation split holds one class only ({len(y)} images): "
                           f"DFR needs every class in it; the validation split is too small or lacks a class.")
    # scikit-learn 1.8 names the L1 penalty l1_ratio=1 (penalty= is deprecated there, the only way before)
    l1 = {"l1_ratio": 1.0} if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8) else {"penalty": "l1"}
    model = LogisticRegression(C=c, solver="liblinear", random_state=seed, **l1)
    weight, bias = np.zeros((num_classes, x.shape[1])), np.zeros(num_classes)
    if len(present) == 2 and num_classes == 2:
        model.fit(x, y)
        weight[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        return weight, bias
    if len(present) < num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise DatasetError(f"the validation split has no image of class(es) {missing}: DFR cannot fit their logits.")
    ovr = OneVsRestClassifier(model).fit(x, y)
    for k, estimator in zip(ovr.classes_, ovr.estimators_):
        weight[k], bias[k] = estimator.coef_[0], estimator.intercept_[0]
    return weight, bias


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``StandardScaler`` statistics (mean, population std; a constant feature keeps std 1)."""
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 0, std, 1.0)


def reweight(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, grid: list[float],
             tune_retrains: int, retrains: int, seed: int,
             train_features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The DFR last layer on (unstandardised) validation features: ``(weight, bias, report)``, weight
    ``num_classes x d`` acting on the raw features (the standardisation is folded in).

    As ``dfr_evaluate_spurious.py``: the validation split is halved at random; per tuning round one group-balanced
    subset of the first half (shared by every ``C``) is standardised on its own statistics and fitted, and each ``C``
    is scored by the worst group of the other half. The final layer is the mean of ``retrains`` fits on balanced
    subsets of the whole split, standardised with the statistics of the training split's embeddings
    (``train_features``; without them, the validation split's). A grid on which every ``C`` scores the same cannot
    choose: the report says so (``degenerate_c_grid``) and the first ``C`` of the grid is kept.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    half = len(features) // 2
    tune, held = order[:half], order[half:]
    totals = {c: 0.0 for c in grid}
    for _ in range(tune_retrains):
        sub = tune[balanced_subset(groups[tune], rng)]
        mean, std = standardise(features[sub])
        x_sub, x_held = (features[sub] - mean) / std, (features[held] - mean) / std
        for c in grid:
            w, b = fit_logistic(x_sub, labels[sub], c, num_classes, seed)
            totals[c] += worst_group_accuracy((x_held @ w.T + b).argmax(1), labels[held], groups[held])
    scores = {c: totals[c] / tune_retrains for c in grid}
    best_c = max(grid, key=lambda c: (scores[c], -grid.index(c)))  # ties: the first in the grid
    degenerate = len(set(scores.values())) == 1
    scaler_source = "training split" if train_features is not None and len(train_features) else "validation split"
    mean, std = standardise(train_features if scaler_source == "training split" else features)
    x = (features - mean) / std
    weights, biases = [], []
    for _ in range(retrains):
        sub = balanced_subset(groups, rng)
        w, b = fit_logistic(x[sub], labels[sub], best_c, num_classes, seed)
        weights.append(w)
        biases.append(b)
    w, b = np.mean(weights, 0), np.mean(biases, 0)
    report = {"c": best_c, "tuning_worst_group": {str(c): 100.0 * s for c, s in scores.items()},
              "degenerate_c_grid": degenerate, "scaler_fitted_on": scaler_source,
              "nonzero_weights": int((np.abs(w) > 0).any(0).sum()), "features": int(w.shape[1]),
              "balanced_subset_size": int(len(balanced_subset(groups, rng))), "validation_images": int(len(x))}
    return w / std, b - (w / std) @ mean, report


def source_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint DFR refits from in a finished run folder (``--dfr_from``): its final weights, ``last.pt``, as
    the DFR code takes the ERM run's final checkpoint; ``best.pt`` when there is no ``last.pt``."""
    folder = Path(run_dir)
    path = next((p for p in (folder / "last.pt", folder / "best.pt") if p.is_file()), None)
    if path is None:
        raise ConfigError(f"--dfr_from {folder} holds neither best.pt nor last.pt: point it at a finished run folder "
                          f"(e.g. the baseline's --snapshot_dir).")
    return path
