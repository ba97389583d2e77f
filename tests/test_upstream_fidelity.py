"""The head as the official trainers build it: what trains, in which parameter group, and how it starts.

The reference is upstream's rule written out on a plain timm model (``fine_tune_cnn.py``,
``fine_tune_cnn_feature_masking.py``): with ``--freeze_backbone`` every top-level module but ``head`` is frozen, and
every ``head.*`` parameter goes into the scratch group (lr x ``--scratch_lr_factor``); the second-last variant also
trains ``stages.3`` and ``norm_pre`` in that group. The new classifier starts from
``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` with zero bias; the ViT trainers keep ``nn.Linear``'s default.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch

from bgmask.models import ModelSpec, create_classifier, param_groups
from bgmask.models.probes import ProbeHeads
from bgmask.strategies.late import LateMaskedClassifier

CLASSES = 20


def upstream_groups(freeze: bool, second_last: bool = False) -> tuple[set[str], set[str]]:
    """(scratch, finetune) trainable parameter names of upstream's ConvNeXt trainers, on timm's own model."""
    model = timm.create_model("convnext_atto", num_classes=CLASSES)
    if freeze:
        for name, module in model.named_children():
            if name != "head":
                module.requires_grad_(False)
        if second_last:
            model.stages[-1].requires_grad_(True)
            model.norm_pre.requires_grad_(True)
    scratch, finetune = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_scratch = name.split(".")[0] == "head" or (second_last and ("stages.3" in name or "head" in name))
        (scratch if in_scratch else finetune).add(name)
    return scratch, finetune


def as_upstream_names(names: set[str]) -> set[str]:
    """Our parameter names in timm's own model: our linear ``head`` is timm's ``head.fc``."""
    out = set()
    for name in names:
        name = name.removeprefix("classifier.")
        out.add("head.fc." + name.removeprefix("head.") if name.startswith("head.") else name.removeprefix("backbone."))
    return out


def our_groups(model) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    scratch, finetune = set(), set()
    for group in param_groups(model, lr=1e-3, weight_decay=0.05, scratch_lr_factor=1000):
        target = scratch if group["lr"] == pytest.approx(1.0) else finetune
        target.update(names[id(p)] for p in group["params"])
    return as_upstream_names(scratch), as_upstream_names(finetune)


@pytest.mark.parametrize("freeze", [True, False], ids=["probe", "finetune"])
def test_convnext_trains_what_upstream_trains_in_upstreams_groups(freeze):
    model = create_classifier(ModelSpec(arch="convnext_atto", num_classes=CLASSES, freeze_backbone=freeze))
    assert our_groups(model) == upstream_groups(freeze)
    if freeze:  # the figures of the side-by-side run: 7,060 trainable parameters at 20 classes (6,420 before)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7060
        model.train()
        assert model.backbone.head.norm.training and not model.backbone.stages.training


def test_second_last_variant_trains_what_upstream_trains():
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=CLASSES, freeze_backbone=True))
    model = LateMaskedClassifier(clf, second_last=True)
    assert our_groups(model) == upstream_groups(freeze=True, second_last=True)


def test_head_norm_backbone_keeps_the_norm_with_the_backbone():
    probe = create_classifier(ModelSpec(arch="convnext_atto", num_classes=CLASSES, freeze_backbone=True,
                                        head_norm="backbone"))
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    assert sum(p.numel() for p in probe.parameters() if p.requires_grad) == 6420
    tuned = create_classifier(ModelSpec(arch="convnext_atto", num_classes=CLASSES, head_norm="backbone"))
    scratch, _ = our_groups(tuned)
    assert scratch == {"head.fc.weight", "head.fc.bias"}


def test_vit_heads_are_unchanged_by_the_head_norm_rule():
    for rule in ("head", "backbone"):
        model = create_classifier(ModelSpec(arch="vit_small_patch14_dinov2", num_classes=3, image_size=28,
                                            freeze_backbone=True, head_norm=rule))
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_probe_heads_each_train_their_own_copy_of_the_head_norm():
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=CLASSES, freeze_backbone=True))
    probes = ProbeHeads(clf, ["pool", "late:pool"], CLASSES)
    trainable = {n for n, p in probes.named_parameters() if p.requires_grad}
    assert trainable == {f"{kind}.{h}.{p}" for h in ("pool", "late__pool")
                         for kind, p in (("probes", "weight"), ("probes", "bias"), ("pools", "norm.weight"),
                                         ("pools", "norm.bias"))}
    assert {id(p) for p in probes.new_parameters()} == {id(p) for p in probes.parameters() if p.requires_grad}
    torch.testing.assert_close(probes.pools["pool"].norm.weight, clf.backbone.head.norm.weight)
    assert probes.pools["pool"].norm.weight is not probes.pools["late__pool"].norm.weight


@pytest.mark.parametrize("num_classes", [20, 200])
def test_upstream_init_of_a_cnn_head_is_kaiming_normal_fan_out(num_classes):
    torch.manual_seed(0)
    head = create_classifier(ModelSpec(arch="convnext_atto", num_classes=num_classes)).head
    expected_std = math.sqrt(2.0 / num_classes)  # kaiming_normal_(fan_out, relu): gain sqrt(2) / sqrt(fan_out)
    n = head.weight.numel()
    assert head.weight.std().item() == pytest.approx(expected_std, rel=5 / math.sqrt(n))
    assert abs(head.weight.mean().item()) < 5 * expected_std / math.sqrt(n)
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    # nn.Linear's default is uniform within 1/sqrt(fan_in); kaiming-normal weights go far beyond it
    assert head.weight.abs().max().item() > 3 / math.sqrt(head.in_features)


def test_other_head_inits():
    torch.manual_seed(0)
    timm_head = create_classifier(ModelSpec(arch="convnext_atto", num_classes=200, head_init="timm")).head
    assert timm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(timm_head.weight.mean().item()) < 0.001 and not timm_head.bias.any()
    for spec in (ModelSpec(arch="convnext_atto", num_classes=200, head_init="torch"),
                 ModelSpec(arch="vit_small_patch14_dinov2", num_classes=200, image_size=28)):  # upstream's ViT rule
        head = create_classifier(spec).head
        bound = 1 / math.sqrt(head.in_features)
        assert head.weight.abs().max().item() <= bound and head.bias.abs().max().item() <= bound
        assert head.bias.any()
        assert head.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_training_drops_each_processs_last_incomplete_batch_as_upstream(tiny_cub_root, tmp_path):
    import json

    from early_masking_and_baseline.train import main as early_main

    def run(name, batch):
        argv = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / name), "--model_arch",
                "convnext_atto", "--image_size", "32", "--batch_size", str(batch), "--num_workers", "0", "--epochs",
                "1", "--seed", "0", "--aa", "", "--reprob", "0", "--diagnostics", "none"]
        assert early_main(argv) == 0
        return json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])

    n_train = 12  # the tiny benchmark's train split
    record = run("b5", 5)  # 12 = 2 x 5 + 2: the last 2 images are dropped, as upstream's DataLoader(drop_last=True)
    assert (record["train_steps"], record["train_images"]) == (n_train // 5, n_train // 5 * 5)
    record = run("b16", 16)  # fewer images than one batch: kept, or nothing would train
    assert (record["train_steps"], record["train_images"]) == (1, n_train)
