"""Late masking: feature zeroing, gradient blocking, head equivalence, training runs."""

from __future__ import annotations

import json

import pytest
import torch

from bgmask.models import ModelSpec, create_classifier
from bgmask.models.masking import mask_features, mask_to_feature_grid
from bgmask.strategies.late import LateMaskedClassifier

VIT = "vit_small_patch14_dinov2"


def classifier(arch, head="cls_mean"):
    torch.manual_seed(0)
    size = 28 if arch == VIT else None
    return create_classifier(ModelSpec(arch=arch, num_classes=5, image_size=size, vit_head=head)).eval()


def inputs(arch, batch=2):
    size = 28 if arch == VIT else 64
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size)
    masks = torch.zeros(batch, size, size, dtype=torch.uint8)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return images, masks


@pytest.mark.parametrize("arch,head", [("convnext_atto", "cls_mean"), (VIT, "cls_mean"), (VIT, "cls"), (VIT, "mean")])
def test_all_ones_mask_gives_the_unwrapped_logits(arch, head):
    clf = classifier(arch, head)
    images, _ = inputs(arch)
    ones = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.uint8)
    wrapped = LateMaskedClassifier(clf).eval()
    with torch.no_grad():
        assert torch.allclose(wrapped(images, ones), clf(images), atol=1e-5)
    if arch != VIT:  # the CNN second-last variant adds nothing when nothing is masked
        with torch.no_grad():
            assert torch.allclose(LateMaskedClassifier(clf, second_last=True).eval()(images, ones), clf(images),
                                  atol=1e-5)


def test_mask_to_feature_grid_nearest_exact():
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :] = 1  # top half
    grid = mask_to_feature_grid(mask, (2, 2))
    assert grid.shape == (1, 1, 2, 2) and grid.flatten().tolist() == [1, 1, 0, 0]


def test_masked_positions_are_zero_and_background_gets_no_gradient():
    feats = torch.randn(2, 4, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 16, 16)
    masks[:, :8, :8] = 1  # foreground = top-left feature cell block (2x2 of 4x4)
    out = mask_features(feats, masks)
    grid = mask_to_feature_grid(masks, (4, 4)).bool().expand_as(feats)
    assert torch.all(out[~grid] == 0) and torch.equal(out[grid], feats[grid])
    (out * torch.randn_like(out)).sum().backward()
    assert torch.all(feats.grad[~grid] == 0) and torch.all(feats.grad[grid] != 0)
    assert feats.grad is not None and not torch.equal(feats, out)  # input untouched (no in-place masking)


@pytest.mark.parametrize("arch,second_last", [("convnext_atto", False), ("convnext_atto", True), (VIT, False),
                                              (VIT, True)])
def test_wrapper_blocks_background_gradients_at_the_masked_layer(arch, second_last):
    clf = classifier(arch)
    model = LateMaskedClassifier(clf, second_last=second_last).train()
    captured = {}
    backbone = clf.backbone
    if arch == VIT:
        layer = model.pre_mask_norm if second_last else backbone.norm
    else:
        layer = backbone.stages[-2] if second_last else backbone.stages[-1]

    def keep(_, __, out):
        out.retain_grad()
        captured["out"] = out

    layer.register_forward_hook(keep)
    images, masks = inputs(arch)
    model(images, masks).sum().backward()
    out = captured["out"]
    if arch == VIT:
        h, w = backbone.patch_embed.grid_size
        grid = mask_to_feature_grid(masks, (h, w)).flatten(1).bool()  # B, N
        patch_grad = out.grad[:, clf.num_prefix_tokens:]
        assert torch.all(patch_grad[~grid] == 0) and patch_grad[grid].abs().sum() > 0
    else:
        grid = mask_to_feature_grid(masks, tuple(out.shape[-2:])).bool().expand_as(out)
        assert torch.all(out.grad[~grid] == 0) and out.grad[grid].abs().sum() > 0


def test_masked_mean_averages_foreground_tokens_only():
    clf = classifier(VIT, "mean")
    images, masks = inputs(VIT)
    plain = LateMaskedClassifier(clf).eval()
    fg_only = LateMaskedClassifier(clf, masked_mean=True).eval()
    with torch.no_grad():
        feats = plain.masked_features(images, masks)
        pooled_all, pooled_fg = plain.pool(feats, masks), fg_only.pool(feats, masks)
    n_fg = mask_to_feature_grid(masks, clf.backbone.patch_embed.grid_size).flatten(1).sum(1, keepdim=True)
    assert torch.allclose(pooled_fg, pooled_all * feats[:, clf.num_prefix_tokens:].shape[1] / n_fg, atol=1e-5)


def test_online_mask_provider_is_frozen_and_not_saved():
    provider_net = torch.nn.Conv2d(3, 1, 1)

    def provider(images):
        return (provider_net(images)[:, 0] > 0).long()

    model = LateMaskedClassifier(classifier("convnext_atto"), mask_provider=provider).train()
    images, _ = inputs("convnext_atto")
    model(images).sum().backward()
    assert provider_net.weight.grad is None
    assert all(not k.startswith("mask_provider") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.classifier.parameters())


# ------------------------------------------------------------------------------------------ training runs
def late_main(argv):
    from late_masking.train import main

    return main(argv)


@pytest.mark.parametrize("source,arch,extra", [
    ("gt", "convnext_atto", []),
    ("precomputed", "convnext_atto", ["--fm_second_last_block"]),
    ("gt", VIT, ["--patch_tokens_only", "--masked_mean"]),
    ("precomputed", VIT, ["--fm_second_last_block", "--turn_on_mixup_or_cutmix"]),
])
def test_short_training_runs(tiny_cub_copy, tmp_path, source, arch, extra):
    from bgmask.data.masks import write_gt_masked_folders

    if source == "precomputed":
        write_gt_masked_folders(tiny_cub_copy, progress=False)
    size = "28" if arch == VIT else "32"
    run = tmp_path / "late"
    argv = ["--data_path", str(tiny_cub_copy), "--snapshot_dir", str(run), "--model_arch", arch, "--image_size", size,
            "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--mask_source", source, *extra]
    assert late_main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["masking"] == "late" and results["mask_source"] == source
    assert results["variant"] == ("second_last" if "--fm_second_last_block" in extra else "last")
    assert results["cub_test"]["num_images"] == 12 and results["waterbirds"]["num_images"] == 12


def test_segmenter_source_requires_its_files(tiny_cub_root, tmp_path, capsys):
    argv = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "r"), "--mask_source", "segmenter"]
    assert late_main(argv) == 2
    assert "--seg_model_config_path" in capsys.readouterr().err


def test_param_groups_give_scratch_lr_to_head_and_new_layernorm():
    from bgmask.models import param_groups

    model = LateMaskedClassifier(classifier(VIT), second_last=True)
    groups = param_groups(model, lr=1e-4, weight_decay=0.05, scratch_lr_factor=100)
    scratch = {id(p) for g in groups if g["lr"] == pytest.approx(1e-2) for p in g["params"]}
    backbone = model.classifier.backbone
    expected = {id(p) for p in [*model.head.parameters(), *model.pre_mask_norm.parameters(),
                                *backbone.blocks[-1].parameters(), *backbone.norm.parameters()]}
    assert scratch == expected


@pytest.mark.parametrize("arch", ["convnext_atto", VIT])
def test_second_last_variant_trains_what_runs_on_masked_features_even_when_frozen(arch):
    """As upstream: with a frozen backbone, the last stage/block and the final norm still learn."""
    torch.manual_seed(0)
    size = 28 if arch == VIT else None
    clf = create_classifier(ModelSpec(arch=arch, num_classes=5, image_size=size, freeze_backbone=True))
    model = LateMaskedClassifier(clf, second_last=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = "classifier.backbone.blocks.11." if arch == VIT else "classifier.backbone.stages.3."
    assert any(n.startswith(last) for n in trainable)
    assert not any(n.startswith("classifier.backbone.blocks.10.") or n.startswith("classifier.backbone.stages.2.")
                   for n in trainable)
    model.train()
    assert not model.classifier.backbone.patch_embed.training if arch == VIT else \
        not model.classifier.backbone.stem.training
    assert (model.classifier.backbone.blocks[-1] if arch == VIT else model.classifier.backbone.stages[-1]).training


# ---------------------------------------------------------------------------------------- backbone adapters
def swin():
    torch.manual_seed(0)
    return create_classifier(ModelSpec(arch="swin_tiny_patch4_window7_224", num_classes=5, image_size=64)).eval()


def test_nhwc_masking_zeroes_spatial_positions_not_channels():
    """A Swin map is B,H,W,C: the mask must act on H and W (an NCHW assumption would mask channels)."""
    from bgmask.models.backbones import NHWCAdapter, adapter_for

    clf = swin()
    adapter = adapter_for(clf.backbone)
    assert isinstance(adapter, NHWCAdapter) and adapter.layout == "NHWC" and adapter.heads == ("pool",)
    feats = torch.randn(2, 4, 4, 768)  # B, H, W, C
    masks = torch.zeros(2, 64, 64)
    masks[:, :32, :] = 1  # top half of the image is bird
    masked = adapter.mask(feats, masks)
    assert masked.shape == feats.shape
    assert torch.equal(masked[:, :2], feats[:, :2]) and torch.all(masked[:, 2:] == 0)


def test_swin_late_masking_runs_and_all_ones_masks_change_nothing():
    clf = swin()
    images = torch.randn(2, 3, 64, 64)
    ones, half = torch.ones(2, 64, 64), torch.zeros(2, 64, 64)
    half[:, :, :32] = 1
    with torch.no_grad():
        for second_last in (False, True):
            wrapped = LateMaskedClassifier(clf, second_last=second_last).eval()
            assert torch.allclose(wrapped(images, ones), clf(images), atol=1e-4)
            assert not torch.allclose(wrapped(images, half), clf(images), atol=1e-3)


def test_an_unknown_feature_layout_is_refused():
    from bgmask.errors import UnsupportedBackbone
    from bgmask.models.backbones import adapter_for

    class Odd(torch.nn.Module):
        output_fmt = "NLC"

        def forward_features(self, x):
            return x

    with pytest.raises(UnsupportedBackbone, match="supported: CNNs"):
        adapter_for(Odd())
    with pytest.raises(UnsupportedBackbone, match="second-last"):
        LateMaskedClassifier(create_classifier(ModelSpec(arch="resnet10t", num_classes=3)), second_last=True)


def test_is_a_vit_is_answered_by_the_layout():
    from bgmask.models.backbones import arch_layout

    assert arch_layout("vit_small_patch14_dinov2.lvd142m") == "tokens"
    assert arch_layout("swin_tiny_patch4_window7_224") == "NHWC"
    assert arch_layout("convnext_atto") == "NCHW" and arch_layout("no_such_model") is None


# ------------------------------------------------------------------------------------------- grid orientation
# An L-shaped bird (the left column and the bottom row of the feature grid) on a non-square image: a transposed,
# flipped or mis-reshaped grid masks other positions, which a centred mask on a square grid cannot show.
ORIENTATION_CASES = [  # arch, timm kwargs, image (H, W), second_last
    ("convnext_atto", {}, (96, 160), False),  # last stage: 3 x 5
    ("convnext_atto", {}, (96, 160), True),  # third stage: 6 x 10
    (VIT, {"img_size": (42, 70)}, (42, 70), False),  # 3 x 5 tokens
    (VIT, {"img_size": (42, 70)}, (42, 70), True),
    ("swin_tiny_patch4_window7_224", {"img_size": (64, 96), "window_size": 2}, (64, 96), False),  # 2 x 3
    ("swin_tiny_patch4_window7_224", {"img_size": (64, 96), "window_size": 2}, (64, 96), True),  # 4 x 6
]


def l_shaped_mask(grid: tuple[int, int], image: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-cell reference (``gh, gw`` bool) and the pixel mask (``1, H, W``) whose cells it fills exactly."""
    (gh, gw), (h, w) = grid, image
    cells = torch.zeros(gh, gw, dtype=torch.bool)
    cells[:, 0] = True
    cells[-1, :] = True
    pixels = cells.repeat_interleave(h // gh, 0).repeat_interleave(w // gw, 1)
    assert pixels.shape == (h, w)
    return cells, pixels[None].to(torch.uint8)


@pytest.mark.parametrize("arch,kwargs,image,second_last", ORIENTATION_CASES)
def test_masks_land_on_the_right_feature_cells_of_a_non_square_grid(arch, kwargs, image, second_last):
    import timm

    from bgmask.models.backbones import adapter_for

    torch.manual_seed(0)
    adapter = adapter_for(timm.create_model(arch, num_classes=0, **kwargs).eval())
    x = torch.randn(1, 3, *image)
    with torch.no_grad():
        feats = adapter.before_last(x) if second_last else adapter.features(x)
    if adapter.layout == "tokens":
        grid = adapter.grid_size
        cells_of = lambda f: f[0, adapter.num_prefix_tokens:].reshape(*grid, -1)  # noqa: E731 (timm: row-major)
    elif adapter.layout == "NHWC":
        grid = tuple(feats.shape[1:3])
        cells_of = lambda f: f[0]  # noqa: E731
    else:
        grid = tuple(feats.shape[2:])
        cells_of = lambda f: f[0].permute(1, 2, 0)  # noqa: E731
    assert grid[0] != grid[1]
    reference, mask = l_shaped_mask(grid, image)
    masked = cells_of(adapter.mask(feats, mask))
    kept = masked.abs().amax(-1) > 0
    assert torch.equal(kept, reference), f"kept cells\n{kept.int()}\nexpected\n{reference.int()}"
    assert torch.equal(masked[reference], cells_of(feats)[reference])
    if adapter.layout == "tokens":  # prefix tokens untouched
        assert torch.equal(adapter.mask(feats, mask)[:, :adapter.num_prefix_tokens],
                           feats[:, :adapter.num_prefix_tokens])


def test_the_token_grid_is_timms_patch_order():
    """The per-token reference above is row-major: check it against the patch embedding itself (a patch of zeros
    embeds to the convolution's bias alone)."""
    import timm

    vit = timm.create_model(VIT, num_classes=0, img_size=(42, 70))
    reference, mask = l_shaped_mask(tuple(vit.patch_embed.grid_size), (42, 70))
    image = torch.rand(1, 3, 42, 70) * mask + 0.1 * mask
    with torch.no_grad():
        tokens = vit.patch_embed(image)[0]  # N, D
    not_bias = (tokens - vit.patch_embed.proj.bias).abs().amax(-1) > 1e-6
    assert torch.equal(not_bias.reshape(reference.shape), reference)
