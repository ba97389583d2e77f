"""Classifier engine: model factory, freezing, head variants, training steps, resume, results, configs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from bgmask.cli import build_parser, config_from_args, parse_with_config
from bgmask.errors import ConfigError
from bgmask.models import ModelSpec, create_classifier, param_groups

REPO = Path(__file__).resolve().parents[1]
VIT = "vit_small_patch14_dinov2"  # tests build it at 28-42 px with random weights


def tiny_vit(head="cls_mean", **kw):
    return create_classifier(ModelSpec(arch=VIT, num_classes=5, image_size=28, vit_head=head, **kw))


@pytest.mark.parametrize("head,width", [("cls_mean", 768), ("cls", 384), ("mean", 384)])
def test_vit_head_variants_input_width_and_pooling(head, width):
    torch.manual_seed(0)
    model = tiny_vit(head).eval()
    assert model.head_input_width == width
    x = torch.randn(2, 3, 28, 28)
    feats = model.features(x)  # B, prefix + 4 patches, D
    assert feats.shape == (2, model.num_prefix_tokens + 4, 384)
    pooled = model.pool(feats)
    patches_mean = feats[:, model.num_prefix_tokens:].mean(1)
    expected = {"cls": feats[:, 0], "mean": patches_mean, "cls_mean": torch.cat([feats[:, 0], patches_mean], 1)}[head]
    assert torch.allclose(pooled, expected)
    assert model(x).shape == (2, 5)


def test_convnext_features_are_a_feature_map():
    model = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3)).eval()
    feats = model.features(torch.randn(1, 3, 64, 64))
    assert feats.ndim == 4 and feats.shape[1] == model.head_input_width and feats.shape[-1] == 2


def test_freeze_backbone_trains_only_the_head_and_keeps_norm_stats():
    torch.manual_seed(0)
    model = create_classifier(ModelSpec(arch="resnet10t", num_classes=4, freeze_backbone=True))
    before = copy.deepcopy(model.state_dict())
    groups = param_groups(model, lr=0.1, weight_decay=0.0, scratch_lr_factor=1.0)
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in model.head.parameters()}
    opt = torch.optim.SGD(groups, lr=0.1)
    model.train()
    assert not model.backbone.training  # BatchNorm running stats must not move
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32) * 3 + 1), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


def test_param_groups_head_lr_factor():
    model = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3))
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, weight_decay=0.05, scratch_lr_factor=1000,
                                                 weight_decay_rule="timm")}
    assert groups["head_decay"]["lr"] == pytest.approx(0.1) and groups["backbone_decay"]["lr"] == 1e-4
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    n_params = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())


def decayed_names(model, rule):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in param_groups(model, 1e-3, 0.05, 10.0, weight_decay_rule=rule)
            if g["weight_decay"] > 0 for p in g["params"]}


def test_upstream_weight_decay_rule_decays_every_parameter():
    model = create_classifier(ModelSpec(arch=VIT, num_classes=3, image_size=28))
    assert decayed_names(model, "all") == {n for n, _ in model.named_parameters()}


def test_timm_weight_decay_rule_exempts_biases_norms_and_no_weight_decay_set():
    import timm.optim

    model = create_classifier(ModelSpec(arch="vit_small_patch14_reg4_dinov2", num_classes=3, image_size=28))
    decayed = decayed_names(model, "timm")
    all_names = {n for n, _ in model.named_parameters()}
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.reg_token", "backbone.norm.weight",
                 "backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.ls1.gamma", "head.bias"):
        assert name in all_names and name not in decayed, name
    for name in ("backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight", "head.weight"):
        assert name in decayed, name
    # the same split as timm's own rule on the bare backbone
    backbone = model.backbone
    ours = {n.removeprefix("backbone.") for n in decayed if n.startswith("backbone.")}
    theirs = timm.optim.param_groups_weight_decay(backbone, 0.05, no_weight_decay_list=backbone.no_weight_decay())
    ids = {id(p) for g in theirs if g["weight_decay"] > 0 for p in g["params"]}
    assert ours == {n for n, p in backbone.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("arch,size", [("convnext_atto", 64), (VIT, 28)])
def test_loss_decreases_on_a_fixed_batch(arch, size):
    torch.manual_seed(0)
    model = create_classifier(ModelSpec(arch=arch, num_classes=4, image_size=size if arch == VIT else None))
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.0, 10.0), lr=1e-3)
    x, y = torch.randn(8, 3, size, size), torch.arange(8) % 4
    losses = []
    model.train()
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def parse(argv):
    return parse_with_config(build_parser(["none"]), argv)


def check(args, cuda_available=False):
    cfg, strategy = config_from_args(args)
    cfg.check(cuda_available)
    strategy.check(cfg)


def test_config_sets_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.5\nepochs: 7\n")
    args = parse(["--config", str(cfg), "--epochs", "3"])
    assert args.lr == 0.5 and args.epochs == 3
    cfg.write_text("learning_rate: 0.5\n")
    with pytest.raises(SystemExit):
        parse(["--config", str(cfg)])


def test_contradictory_flags_fail_before_training(tiny_cub_root, tmp_path):
    base = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "run")]
    check(parse(base))
    cases = {
        "mutually exclusive": ["--class_token_only", "--patch_tokens_only", "--model_arch", VIT],
        "takes --amp_dtype bfloat16": ["--use_amp", "--amp_on_cpu", "--device", "cpu"],
        "no effect with --freeze_backbone": ["--freeze_backbone", "--drop_path", "0.1"],
        "select a ViT head": ["--model_arch", "convnext_atto", "--class_token_only"],
        "needs a validation part": ["--eval_mode", "val"],
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError, match=message):
            check(parse(base + extra))
    with pytest.raises(ConfigError, match="does not exist"):
        check(parse(["--data_path", str(tmp_path / "nope"), "--snapshot_dir", "x"]))
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check(parse(["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "afile")]))


def test_values_from_config_files_are_held_to_the_flags_choices(tiny_cub_root, tmp_path):
    """argparse checks choices on the command line only; a YAML typo must not silently pick another behaviour."""
    base = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "run")]
    cfg = tmp_path / "c.yaml"
    for text, message in (("eval_mode: validation\n", "--eval_mode must be one of test, val; got 'validation'"),
                          ("amp_dtype: fp16\n", "--amp_dtype must be one of"),
                          ("weight_decay_rule: timmy\n", "--weight_decay_rule must be one of")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            check(parse([*base, "--config", str(cfg)]))
    cfg.write_text("mask_source: segmentor\n")
    args = parse_with_config(build_parser(["late"]), [*base, "--config", str(cfg)])
    with pytest.raises(ConfigError, match="--mask_source must be one of precomputed, gt, segmenter"):
        check(args)


def test_options_of_another_strategy_are_refused_not_ignored(tiny_cub_root, tmp_path):
    base = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "run")]
    parser = build_parser(["none", "early", "late"])
    with pytest.raises(ConfigError, match=r"--masking none does not use --mask_source \(late\)"):
        config_from_args(parse_with_config(parser, [*base, "--masking", "none", "--mask_source", "gt"]))
    cfg, strategy = config_from_args(parse_with_config(parser, [*base, "--masking", "late", "--mask_source", "gt"]))
    assert strategy.name == "late" and cfg.strategy_options.mask_source == "gt"
    assert config_from_args(parse_with_config(parser, [*base, "--masking", "early"]))[1].name == "early"


# ------------------------------------------------------------------------------------------ end-to-end runs
def train_argv(root, run_dir, *extra):
    return ["--data_path", str(root), "--snapshot_dir", str(run_dir), "--model_arch", "convnext_atto",
            "--image_size", "32", "--batch_size", "4", "--num_workers", "0", "--epochs", "2", "--lr", "1e-3",
            "--seed", "0", "--aa", "", "--reprob", "0", *extra]


def early_main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("early_train", REPO / "early_masking_and_baseline/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def two_epoch_run(tiny_cub_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "baseline"
    assert early_main(train_argv(tiny_cub_root, run_dir, "--save_every_n_epochs", "1")) == 0
    return run_dir


def test_results_json_schema_and_outputs(two_epoch_run):
    results = json.loads((two_epoch_run / "results.json").read_text())
    cub = results["cub_test"]
    assert cub["num_images"] == 12 and cub["top1"] == pytest.approx(100 * cub["correct"] / 12, abs=1e-12)
    wb = results["waterbirds"]
    assert wb["num_images"] == 12 and set(wb) >= {"top1", "per_place", "worst_group", "groups"}
    assert sum(g["num_images"] for g in wb["groups"].values()) == 12
    assert wb["worst_group"] == min(g["top1"] for g in wb["groups"].values())  # the exact figures: test_group_metrics
    assert results["epoch"] == 2 and results["model_arch"] == "convnext_atto" and results["masking"] == "none"
    log = [json.loads(line) for line in (two_epoch_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert yaml.safe_load((two_epoch_run / "args.yaml").read_text())["epochs"] == 2
    for name in ("last.pt", "best.pt", "epoch_1.pt", "epoch_2.pt"):
        assert (two_epoch_run / name).is_file()
    assert not list(two_epoch_run.glob(".*.tmp"))


def test_resume_reproduces_uninterrupted_run_exactly(two_epoch_run, tiny_cub_root, tmp_path):
    """Interrupt after epoch 1 (its checkpoint becomes last.pt), restart: same final weights and metrics."""
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(two_epoch_run / "epoch_1.pt", resumed_dir / "last.pt")
    assert early_main(train_argv(tiny_cub_root, resumed_dir)) == 0
    full = torch.load(two_epoch_run / "last.pt", weights_only=False)
    resumed = torch.load(resumed_dir / "last.pt", weights_only=False)
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    a = json.loads((two_epoch_run / "results.json").read_text())
    b = json.loads((resumed_dir / "results.json").read_text())
    assert a["cub_test"] == b["cub_test"] and a["waterbirds"] == b["waterbirds"]


def test_eval_only_and_checkpoint_mismatch(two_epoch_run, tiny_cub_root, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = train_argv(tiny_cub_root, out, "--eval_only", "--checkpoint", str(two_epoch_run / "last.pt"))
    assert early_main(argv) == 0
    a = json.loads((two_epoch_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["cub_test"] == b["cub_test"]
    argv = train_argv(tiny_cub_root, out, "--eval_only", "--checkpoint", str(two_epoch_run / "last.pt"))
    argv[argv.index("convnext_atto")] = "convnext_femto"
    assert early_main(argv) == 2
    assert "does not match this model" in capsys.readouterr().err


def test_early_masking_reads_masked_folders(tiny_cub_copy, tmp_path):
    from bgmask.data.masks import MASK_FOLDERS, write_gt_masked_folders

    write_gt_masked_folders(tiny_cub_copy, progress=False)
    run_dir = tmp_path / "early"
    assert early_main(train_argv(tiny_cub_copy, run_dir, "--masking", "early", "--epochs", "1")) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["masking"] == "early"
    assert results["image_sub_path_train"] == MASK_FOLDERS["images"][1]
    assert results["ood_image_sub_path"].endswith("_masked") and results["waterbirds"]["num_images"] == 12


@pytest.mark.distributed
def test_two_process_eval_counts_each_image_once(two_epoch_run, tiny_cub_root, tmp_path):
    """torchrun with 2 gloo processes, batch 5: 12 test images is not divisible by 5 x 2."""
    import subprocess
    import sys

    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["--eval_only", "--checkpoint", str(two_epoch_run / "last.pt")]
    argv = train_argv(tiny_cub_root, single, *common)
    argv[argv.index("--batch_size") + 1] = "5"
    assert early_main(argv) == 0
    argv = train_argv(tiny_cub_root, multi, *common)
    argv[argv.index("--batch_size") + 1] = "5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "early_masking_and_baseline/train.py"), *argv, "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "results.json").read_text())
    b = json.loads((multi / "results.json").read_text())
    assert b["world_size"] == 2
    for key in ("cub_test", "waterbirds"):
        assert (a[key]["correct"], a[key]["num_images"]) == (b[key]["correct"], b[key]["num_images"])
    assert a["waterbirds"]["groups"] == b["waterbirds"]["groups"]
    # the background diagnostics too: every test image scored once per view, same pairings on every process
    for view in ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand"):
        assert a["diagnostics"][view] == b["diagnostics"][view] and a["diagnostics"][view]["num_images"] == 12
    assert a["diagnostics"]["fg_attribution_images"] == b["diagnostics"]["fg_attribution_images"]
    assert a["diagnostics"]["fg_attribution"] == pytest.approx(b["diagnostics"]["fg_attribution"], rel=1e-4)


def test_every_config_parses_and_composes(tmp_path):
    """Every regime file combines with every model file; a delta file inherits with _base_ (its own keys win), and
    several --config files apply in order, flags last."""
    configs = REPO / "configs/classifier"
    regimes, models = sorted(configs.glob("*.yaml")), sorted((configs / "models").glob("*.yaml"))
    assert [p.stem for p in regimes] == ["finetune", "frozen"] and len(models) == 6
    for regime in regimes:
        assert regime.read_text().startswith("#")
        for model in models:
            args = parse(["--config", str(regime), "--config", str(model)])
            assert args.model_arch == yaml.safe_load(model.read_text())["model_arch"]
            assert args.freeze_backbone == (regime.stem == "frozen") and args.epochs in (90, 300)
    delta = tmp_path / "mine.yaml"
    delta.write_text(f"_base_: [{configs / 'frozen.yaml'}, {configs / 'models/vit_small.yaml'}]\nepochs: 5\n")
    args = parse(["--config", str(delta), "--lr", "0.5"])
    assert (args.epochs, args.lr, args.freeze_backbone, args.image_size) == (5, 0.5, True, 518)
    loop = tmp_path / "loop.yaml"
    loop.write_text("_base_: loop.yaml\n")
    with pytest.raises(SystemExit):
        parse(["--config", str(loop)])
