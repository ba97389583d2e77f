"""The group protocol as evidence: head init per benchmark, model selection that can choose, the field's answers to
imbalance (class-balanced loss and sampler, group reweighting, GroupDRO), reference rows and collapsed runs, DFR's
scalers and its degenerate grid, and the twin's validation split."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from bgmask import benchmarks, cli
from bgmask.benchmarks import resolve_head_init
from bgmask.config import TrainConfig
from bgmask.data.sampling import WeightedResumableSampler, balancing_weights
from bgmask.data.synthetic import SyntheticConfig, generate
from bgmask.models import ModelSpec, create_classifier
from bgmask.reporting.group_results import collapsed_onto, constant_predictor, group_table
from bgmask.reporting.runs import RunResult
from bgmask.strategies import dfr
from bgmask.training.losses import GroupDROLoss, TrainingLoss, balanced_class_weights
from bgmask.training.selection import ZERO_WORST_GROUP_NOTE, is_better, selection_key, selection_note
from tests.test_classifier import train_argv

STRATEGIES = ["none", "early", "late", "dfr", "groupdro"]


# ------------------------------------------------------------------------------------------- head init
@pytest.mark.parametrize("dataset, expected", [("cub", "upstream"), ("waterbirds", "timm"), ("csv", "timm")])
def test_each_benchmark_declares_its_head_init(dataset, expected):
    cfg = resolve_head_init(TrainConfig(), benchmarks.get(dataset)())
    assert cfg.model.head_init == expected
    explicit = TrainConfig()
    explicit.model.head_init = "torch"
    assert resolve_head_init(explicit, benchmarks.get(dataset)()).model.head_init == "torch"  # the flag wins


def test_a_two_class_head_starts_no_larger_than_timms():
    torch.manual_seed(0)
    cfg = resolve_head_init(TrainConfig(), benchmarks.get("waterbirds")())
    head = create_classifier(ModelSpec(arch="convnext_atto", num_classes=2, head_init=cfg.model.head_init)).head
    assert head.weight.std() <= 0.02 * 1.1
    upstream = create_classifier(ModelSpec(arch="convnext_atto", num_classes=2, head_init="upstream")).head
    assert upstream.weight.std() > 0.5  # kaiming fan_out at K = 2: std 1.0, what the benchmark default avoids


# ------------------------------------------------------------------------------------------- selection
def test_selection_breaks_ties_on_the_adjusted_average_then_the_loss():
    a = selection_key({"worst_group": 0.0, "adjusted_average": 60.0, "loss": 0.7}, "worst_group")
    b = selection_key({"worst_group": 0.0, "adjusted_average": 70.0, "loss": 0.9}, "worst_group")
    c = selection_key({"worst_group": 0.0, "adjusted_average": 70.0, "loss": 0.5}, "worst_group")
    assert is_better(b, a) and is_better(c, b) and not is_better(a, c)
    assert is_better(selection_key({"worst_group": 5.0, "adjusted_average": 1.0, "loss": 9.0}, "worst_group"), c)
    assert not is_better(c, c)  # an exact tie keeps the earlier epoch
    history = [{"epoch": 1, "score": 0.0, "trained": False}, {"epoch": 2, "score": 0.0, "trained": True}]
    assert selection_note(history, "worst_group") == ZERO_WORST_GROUP_NOTE
    assert selection_note([{"epoch": 1, "score": 10.0, "trained": True}], "worst_group") is None


def wb_argv(root, run, *extra):
    return ["--dataset", "waterbirds", *train_argv(root, run, "--diagnostics", "none", *extra)]


def test_an_epoch_trained_at_lr_0_is_never_selected(tiny_cub_root, tmp_path, monkeypatch):
    """A warm-up from 0 stepped per epoch trains its first epoch at lr 0: the starting model, never selected, even
    when it scores best (here every epoch scores lower than the one before)."""
    import bgmask.run.fit as fit

    scores = iter([(0.0, 0.0, -1.0), (0.0, 0.0, -2.0), (0.0, 0.0, -3.0)])
    monkeypatch.setattr(fit, "selection_key", lambda metrics, metric: next(scores))
    run = tmp_path / "warmup"
    argv = wb_argv(tiny_cub_root, run, "--epochs", "3", "--scheduler_type", "cosine_with_warmup",
                   "--scheduler_warmup_epochs", "1")
    assert cli.main(STRATEGIES, argv) == 0
    out = json.loads((run / "results.json").read_text())
    history = out["best"]["history"]
    assert [h["trained"] for h in history] == [False, True, True]
    assert out["best"]["epoch"] == 2  # the best-scoring epoch that trained
    assert out["head_init"] == "timm"
    assert out["best"]["note"] == ZERO_WORST_GROUP_NOTE  # every (patched) score is 0


# ------------------------------------------------------------------------------------------- imbalance
def test_class_balanced_loss_by_hand():
    labels = np.array([0, 0, 0, 1])
    w = balanced_class_weights(labels, 3)
    assert w == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    per = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (w[0] * per[0] + w[1] * per[1]) / (w[0] + w[1])
    assert TrainingLoss(0.0, w)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # mixup's probability targets: each sample weighted by its classes' weights in proportion
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    ws = [0.5 * w[0] + 0.5 * w[1], w[1]]
    per = -(soft * torch.log_softmax(logits, 1)).sum(1)
    assert TrainingLoss(0.0, w)(logits, soft).item() == pytest.approx(
        ((ws[0] * per[0] + ws[1] * per[1]) / (ws[0] + ws[1])).item(), rel=1e-6)
    # unweighted, it is timm's label-smoothing cross-entropy
    from timm.loss import LabelSmoothingCrossEntropy
    assert TrainingLoss(0.1)(logits, targets).item() == pytest.approx(
        LabelSmoothingCrossEntropy(0.1)(logits, targets).item(), rel=1e-6)


def test_reweighting_sampler_weights_by_hand_and_their_draws():
    groups = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])
    w = balancing_weights(groups, 4)
    assert w == pytest.approx([10 / 6] * 6 + [10 / 2] * 2 + [10 / 1, 10 / 1])
    sampler = WeightedResumableSampler(w, seed=0)
    drawn = Counter()
    for epoch in range(300):
        sampler.set_epoch(epoch)
        drawn.update(groups[i] for i in sampler)
    shares = np.array([drawn[g] for g in range(4)]) / sum(drawn.values())
    assert shares == pytest.approx([0.25] * 4, abs=0.03)  # unweighted: 0.6 / 0.2 / 0.1 / 0.1
    # the same draws whatever the process count, dealt round-robin; a resumed epoch continues exactly
    one, (r0, r1) = WeightedResumableSampler(w, seed=3), [WeightedResumableSampler(w, 3, 2, r) for r in (0, 1)]
    for s in (one, r0, r1):
        s.set_epoch(5)
    merged = [i for pair in zip(list(r0), list(r1)) for i in pair]
    assert merged == list(one)
    r0.set_start(2)
    assert list(r0) == merged[0::2][2:]


def test_class_balanced_and_reweighted_runs_train(tiny_cub_root, tmp_path):
    for flags in (["--class_balance", "loss"], ["--class_balance", "sampler"], ["--reweight_groups"]):
        run = tmp_path / "_".join(flags).strip("-")
        assert cli.main(STRATEGIES, wb_argv(tiny_cub_root, run, "--epochs", "1", *flags)) == 0
        assert json.loads((run / "results.json").read_text())["test"]["num_images"] > 0


def spurious_problem(n: int, rng: np.random.Generator, train: bool):
    """y in {0, 1}; a = the spurious attribute, equal to y in 95 % of training items (balanced at test). Feature 0
    is the core (noisy), feature 1 the spurious one (clean)."""
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < (0.95 if train else 0.5), y, 1 - y)
    x = np.stack([(2 * y - 1) * 1.0 + rng.normal(0, 1.2, n), (2 * a - 1) * 2.0 + rng.normal(0, 0.1, n)], 1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(2 * y + a)


def worst_group(model, x, y, g) -> float:
    pred = model(x).argmax(1)
    return min(float((pred[g == k] == y[g == k]).float().mean()) for k in range(4))


def test_groupdro_weights_the_worst_group_and_beats_erm_there():
    rng = np.random.default_rng(0)
    x, y, g = spurious_problem(2000, rng, train=True)
    xt, yt, gt = spurious_problem(2000, rng, train=False)
    results = {}
    for name in ("erm", "groupdro"):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = TrainingLoss() if name == "erm" else GroupDROLoss(4, np.bincount(g.numpy(), minlength=4),
                                                                   step_size=0.05)
        for _ in range(300):
            for idx in torch.randperm(2000).split(200):
                opt.zero_grad()
                out = loss(model(x[idx]), y[idx], g[idx]) if name == "groupdro" else loss(model(x[idx]), y[idx])
                out.backward()
                opt.step()
        results[name] = worst_group(model, xt, yt, gt)
        if name == "groupdro":
            minority = [1, 2]  # (y 0, a 1), (y 1, a 0): 4.75 % of the training items
            assert loss.q[minority].sum() > 5 * 0.0475
            with torch.no_grad():
                per = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
                group_loss = torch.stack([per[g == k].mean() for k in range(4)])
            assert loss.q[group_loss.argmax()] > 0.25  # the worst training group carries more than a uniform share
    assert results["erm"] < 0.5 < results["groupdro"]  # ERM follows the spurious feature; GroupDRO does not
    assert results["groupdro"] - results["erm"] > 0.2


def test_groupdro_update_by_hand():
    loss = GroupDROLoss(3, [10, 10, 10], step_size=0.5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [0.0, 3.0]])
    targets, groups = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 2])
    per = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    means = torch.stack([per[0], per[1], (per[2] + per[3]) / 2])
    q = torch.exp(0.5 * means) / 3
    q = q / q.sum()
    value = loss(logits, targets, groups)
    assert loss.q == pytest.approx(q.tolist(), rel=1e-5)
    assert value.item() == pytest.approx((q * means).sum().item(), rel=1e-5)
    assert loss.q.argmax() == means.argmax()  # the weight moves toward the worst group
    # the generalisation adjustment raises small groups' losses in the update
    adjusted = GroupDROLoss(2, [100, 1], step_size=1.0, adjustment=1.0)
    adjusted(torch.zeros(2, 2), torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert adjusted.q[1] > adjusted.q[0]


def test_groupdro_trains_through_the_trainer_and_resumes_its_weights(tiny_cub_root, tmp_path):
    run = tmp_path / "dro"
    assert cli.main(STRATEGIES, ["--masking", "groupdro", *wb_argv(tiny_cub_root, run, "--epochs", "2")]) == 0
    state = torch.load(run / "last.pt", weights_only=False)
    q = state["criterion"]["q"]
    assert q.sum().item() == pytest.approx(1.0) and not torch.allclose(q, torch.full_like(q, 1 / len(q)))
    out = json.loads((run / "results.json").read_text())
    assert out["masking"] == "groupdro" and out["robust_step_size"] == 0.01


def stop_in_epoch_2(argv, monkeypatch) -> None:
    """Run ``argv`` and interrupt it at the start of epoch 2 (last.pt then holds epoch 1)."""
    import bgmask.run.fit as fit

    real, calls = fit.train_one_epoch, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt("stopped in epoch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(STRATEGIES, argv)
    monkeypatch.undo()


def test_groupdro_resumes_its_group_weights(tiny_cub_root, tmp_path, monkeypatch):
    """A GroupDRO run that crashes after epoch 1 resumes from last.pt with its group weights: the same weights and q
    as the uninterrupted run."""

    def argv(run):
        return ["--masking", "groupdro", *wb_argv(tiny_cub_root, run, "--epochs", "2")]

    assert cli.main(STRATEGIES, argv(tmp_path / "whole")) == 0
    stop_in_epoch_2(argv(tmp_path / "resumed"), monkeypatch)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 1
    assert cli.main(STRATEGIES, argv(tmp_path / "resumed")) == 0
    whole, resumed = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("whole", "resumed"))
    assert torch.equal(whole["criterion"]["q"], resumed["criterion"]["q"])
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])


def test_groupdro_and_reweighting_without_training_groups_are_refused(tiny_cub_root, tmp_path, capsys):
    for flags in (["--masking", "groupdro"], ["--reweight_groups"]):
        argv = [*flags, *train_argv(tiny_cub_root, tmp_path / "r", "--diagnostics", "none")]
        assert cli.main(STRATEGIES, argv) == 2
        assert "has none in its training split" in capsys.readouterr().err
        assert not (tmp_path / "r" / "last.pt").exists()
    argv = wb_argv(tiny_cub_root, tmp_path / "both", "--class_balance", "sampler", "--reweight_groups")
    assert cli.main(STRATEGIES, argv) == 2
    assert "each choose the training sampler" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- reference rows
def group_set(hits: dict[str, tuple[int, int]]) -> dict:
    from bgmask.data.groups import wilson_interval

    groups = {g: {"top1": 100.0 * c / n, "num_images": n, "correct": c, "interval": wilson_interval(c, n)}
              for g, (c, n) in hits.items()}
    accs = [v["top1"] for v in groups.values()]
    total = sum(n for _, n in hits.values())
    return {"groups": groups, "worst_group": min(accs), "average": 100.0 * sum(c for c, _ in hits.values()) / total,
            "adjusted_average": 0.0, "intervals": {}}


def test_constant_predictor_and_collapsed_marking():
    collapsed = group_set({"y0_place0": (60, 60), "y0_place1": (39, 40), "y1_place0": (0, 30), "y1_place1": (1, 30)})
    working = group_set({"y0_place0": (55, 60), "y0_place1": (30, 40), "y1_place0": (12, 30), "y1_place1": (25, 30)})
    assert collapsed_onto(collapsed, [0, 1]) == 0
    assert collapsed_onto(working, [0, 1]) is None
    const = constant_predictor(collapsed, 0, {"y0_place0": 70, "y0_place1": 10, "y1_place0": 5, "y1_place1": 15})
    assert const["worst_group"] == 0.0 and const["average"] == pytest.approx(100 * 100 / 160)
    assert const["adjusted_average"] == pytest.approx(80.0)
    runs = [RunResult(f"r{s}", "convnext_atto", "frozen", "-", "none", {"test": m}, dataset="waterbirds", seed=s,
                      best={"epoch": 3, "selected_on": "val", "worst_group": 10.0})
            for s, m in enumerate((collapsed, working))]
    header, table = group_table(runs)
    col = header.index("collapsed")
    assert [row[4] for row in table[:2]] == ["constant (always class 0)", "chance (1/2)"]
    assert all(len(row) == len(header) for row in table)
    assert table[2][col] == "collapsed (class 0)" and table[3][col] == "–"
    assert table[4][5] == "mean of 2" and table[4][col] == "1/2 collapsed"


# ------------------------------------------------------------------------------------------------- DFR
def test_dfr_scales_with_the_training_split_and_tunes_on_one_shared_subset(monkeypatch):
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 2, n)
    groups = labels * 2 + rng.integers(0, 2, n)
    features = rng.normal(0, 1, (n, 5)) + labels[:, None] * 2.0
    train = rng.normal(3.0, 2.0, (400, 5))
    seen = []
    real = dfr.fit_logistic

    def spy(x, y, c, k, seed):
        seen.append((x.copy(), c))
        return real(x, y, c, k, seed)

    monkeypatch.setattr(dfr, "fit_logistic", spy)
    grid = [1.0, 0.1]
    w, b, report = dfr.reweight(features, labels, groups, 2, grid, 1, 3, 0, train_features=train)
    assert report["scaler_fitted_on"] == "training split"
    tuning, final = seen[:2], seen[2:]
    assert np.array_equal(tuning[0][0], tuning[1][0])  # one balanced subset (and its scaler) for every C
    assert tuning[0][0].mean(0) == pytest.approx(np.zeros(5), abs=1e-9)  # standardised on itself
    mean, std = train.mean(0), train.std(0)
    for x, _ in final:  # the final fits see validation features standardised with the training statistics
        rows = [np.flatnonzero(np.all(np.isclose((features - mean) / std, r), 1)) for r in x[:3]]
        assert all(len(r) == 1 for r in rows)
    # the folded layer on raw features equals the mean fit on standardised ones
    logits = features @ w.T + b
    assert np.isfinite(logits).all()


def test_a_grid_that_cannot_choose_is_flagged():
    rng = np.random.default_rng(1)
    n = 120
    labels = rng.integers(0, 2, n)
    groups = labels * 2 + rng.integers(0, 2, n)
    noise = rng.normal(0, 1, (n, 4))
    _, _, report = dfr.reweight(noise, labels, groups, 2, [0.001, 0.0005], 1, 2, 0)
    assert report["degenerate_c_grid"] is True  # every C zeroes the weights: the same worst group
    signal = noise + labels[:, None] * 3.0
    _, _, report = dfr.reweight(signal, labels, groups, 2, [1.0, 0.001], 1, 2, 0)
    assert report["degenerate_c_grid"] is False and report["c"] == 1.0


def test_dfr_starts_from_the_final_checkpoint(tmp_path):
    from bgmask.run.refit import load_source

    class Model:
        loaded = None

        def load(self, state, path, identity):
            Model.loaded = path

    for name in ("best.pt", "last.pt"):
        torch.save({"model": {}, "epoch": 1}, tmp_path / name)
    cfg = TrainConfig.from_flat({"masking": "dfr", "dfr_from": str(tmp_path)}, dfr.DFROptions)
    source = dfr.DeepFeatureReweighting().starts_from(cfg)
    assert load_source(source, Model()) == str(tmp_path / "last.pt") and Model.loaded == tmp_path / "last.pt"


# ------------------------------------------------------------------------------------------- the twin
def test_the_twins_extra_validation_images_fill_every_group_and_leave_cub_alone(tmp_path):
    base = SyntheticConfig(num_classes=4, images_per_class=6, image_size=32, habitats=2, seed=2)
    plain = generate(tmp_path / "plain", base, progress=False).cub_root
    extra = generate(tmp_path / "extra", SyntheticConfig(**{**base.__dict__, "waterbirds_extra_val": 8}),
                     progress=False).cub_root
    for name in ("images.txt", "train_test_split.txt", "image_class_labels.txt"):
        assert (plain / name).read_bytes() == (extra / name).read_bytes()
    for rel in (plain / "images.txt").read_text().split():
        if rel.endswith(".jpg"):
            assert (plain / "images" / rel).read_bytes() == (extra / "images" / rel).read_bytes()
    wb = "waterbird_complete95_forest2water2"
    rows = list(csv.DictReader(open(extra / wb / "metadata.csv")))
    plain_rows = list(csv.DictReader(open(plain / wb / "metadata.csv")))
    assert rows[:len(plain_rows)] == plain_rows  # every existing row, train and test splits included, unchanged
    added = rows[len(plain_rows):]
    assert len(added) == 4 * 8 and {r["split"] for r in added} == {"1"}
    per_class_place = Counter((r["img_filename"].split("/")[0], r["place"]) for r in added)
    assert set(per_class_place.values()) == {4}  # each habitat equally often in every class
    for r in added:
        assert (extra / wb / r["img_filename"]).is_file()
        assert (extra / "segmentations" / r["img_filename"].replace(".jpg", ".png")).is_file()
    from bgmask.data.masks import write_gt_masked_folders  # the masked twin covers them too (early masking reads it)

    write_gt_masked_folders(extra, progress=False)
    assert all((extra / f"{wb}_masked" / r["img_filename"]).is_file() for r in added)


def test_a_checkpoint_from_before_the_tie_breaks_keeps_its_best_epoch(tiny_cub_root, tmp_path, monkeypatch):
    """A last.pt written without best_key (older runs) resumes with its best epoch intact: a later epoch must beat
    the recorded metric, as the old strict rule required."""

    run = tmp_path / "old"
    argv = wb_argv(tiny_cub_root, run, "--epochs", "2")
    stop_in_epoch_2(argv, monkeypatch)
    state = torch.load(run / "last.pt", weights_only=False)
    state.pop("best_key"), state.pop("history")
    state["best_top1"], state["best_epoch"] = 100.0, 1  # an old checkpoint whose epoch 1 scored 100 %
    torch.save(state, run / "last.pt")
    assert cli.main(STRATEGIES, argv) == 0
    assert json.loads((run / "results.json").read_text())["best"]["epoch"] == 1
