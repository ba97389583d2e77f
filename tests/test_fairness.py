"""Fair by construction: one transform, one mixup, one optimiser for every strategy, as upstream (or as timm)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from bgmask.data.transforms import GEOMETRIC_AUGMENT_OPS, PairedTransform, build_eval_transform, build_train_transform
from bgmask.training.mixup import MaskMixup


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bird_image(size=(96, 80)):
    """Textured image with a 'bird' rectangle (the mask)."""
    w, h = size
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[20:60, 30:70] = 1
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(img), Image.fromarray(mask)


# ------------------------------------------------------------------------------------------- transforms
TIMM_KW = {"aa": "rand-m9-mstd0.5-inc1", "color_jitter": 0.4, "reprob": 0.25, "remode": "pixel", "recount": 1,
           "interpolation": "bicubic"}


@pytest.mark.parametrize("kw", [TIMM_KW, {**TIMM_KW, "interpolation": "random", "recount": 2, "reprob": 1.0},
                                {**TIMM_KW, "aa": "", "remode": "const"}])
def test_baseline_transform_is_timms_training_pipeline(kw):
    """Against the pipeline written out op by op (what DeiT's and upstream's ``create_transform(is_training=True)``
    builds): random-resized crop, flip, RandAugment (or colour jitter), to tensor, normalise, random erasing."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import MaybeToTensor, str_to_pil_interp

    image, _ = bird_image()
    ours = build_train_transform(40, "timm", **kw)
    if kw["aa"]:
        hparams = {"translate_const": int(40 * 0.45), "img_mean": tuple(round(255 * x) for x in IMAGENET_DEFAULT_MEAN)}
        if kw["interpolation"] != "random":
            hparams["interpolation"] = str_to_pil_interp(kw["interpolation"])
        colour = rand_augment_transform(kw["aa"], hparams)
    else:
        colour = T.ColorJitter(kw["color_jitter"], kw["color_jitter"], kw["color_jitter"])
    theirs = T.Compose([RandomResizedCropAndInterpolation(40, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                                          interpolation=kw["interpolation"]),
                        T.RandomHorizontalFlip(0.5), colour, MaybeToTensor(),
                        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
                        RandomErasing(kw["reprob"], mode=kw["remode"], max_count=kw["recount"], device="cpu")])
    for seed in range(12):
        seed_all(seed)
        a = ours(image)
        seed_all(seed)
        assert torch.equal(a, theirs(image))


@pytest.mark.parametrize("augmentations,kw", [
    ("timm", TIMM_KW),
    ("timm", {**TIMM_KW, "interpolation": "random", "aa": "rand-m9-n3-mstd1", "reprob": 1.0, "recount": 3}),
    ("timm", {**TIMM_KW, "aa": "v0-mstd0.5"}),  # AutoAugment policy
    ("timm", {**TIMM_KW, "aa": ""}),  # colour jitter instead of RandAugment
    ("cub_original", TIMM_KW),
])
def test_with_a_mask_the_image_tensor_is_the_baselines(augmentations, kw):
    image, mask = bird_image()
    tf = build_train_transform(40, augmentations, **kw)
    for seed in range(25):
        seed_all(seed)
        alone = tf(image)
        seed_all(seed)
        paired, mask_t = tf(image, mask)
        assert torch.equal(alone, paired), seed
        assert mask_t.shape == (40, 40) and mask_t.dtype == torch.uint8 and set(mask_t.unique().tolist()) <= {0, 1}
        # the random stream after the call is the same too (the next image gets the same draws)
        assert random.random() == (seed_all(seed), tf(image), random.random())[2]


@pytest.mark.parametrize("reprob,remode,recount", [(0.0, "pixel", 1), (1.0, "pixel", 3), (1.0, "rand", 2),
                                                  (1.0, "const", 1)])
def test_the_device_tail_finishes_the_images_as_the_workers_would(reprob, remode, recount):
    """uint8 from the worker, then float, normalisation and erasing on the device, for a batch: the same pixels as
    the worker pipeline, the same erased boxes (noise values aside), whatever batch an image lands in, and the
    same mask."""
    from bgmask.data.transforms import RawImage

    image, mask = bird_image()
    kw = {**TIMM_KW, "reprob": reprob, "remode": remode, "recount": recount}
    workers = build_train_transform(40, "timm", **kw)
    device = build_train_transform(40, "timm", **kw, device_tail=True)
    unerased = build_train_transform(40, "timm", **{**kw, "reprob": 0.0})
    raws, expected, clean = [], [], []
    for seed in range(6):
        seed_all(seed)
        expected.append(workers(image))
        seed_all(seed)
        raw, mask_t = device(image, mask)
        seed_all(seed)
        _, mask_ref = workers(image, mask)
        assert isinstance(raw, RawImage) and raw.pixels.dtype == torch.uint8 and torch.equal(mask_t, mask_ref)
        seed_all(seed)
        alone = device(image)  # the image path draws what the paired path draws
        assert torch.equal(alone.pixels, raw.pixels) and torch.equal(alone.erasing, raw.erasing)
        seed_all(seed)
        clean.append(unerased(image))
        raws.append(raw)
    batch = RawImage(torch.stack([r.pixels for r in raws]), torch.stack([r.erasing for r in raws]))
    batched = device.device_tail(batch, torch.device("cpu"))
    for k, (got, want, plain) in enumerate(zip(batched, expected, clean)):
        erased_want, erased_got = (want != plain).any(0), (got != plain).any(0)
        assert torch.equal(erased_got, erased_want), k  # the same boxes
        assert torch.equal(got[:, ~erased_want], want[:, ~erased_want]), k  # bit-identical elsewhere
        alone = device.device_tail(RawImage(raws[k].pixels[None], raws[k].erasing[None]), torch.device("cpu"))[0]
        assert torch.equal(alone, got), k  # an image's noise does not depend on its batch
    erased = sum(int((want != plain).any(0).sum()) for want, plain in zip(expected, clean))
    assert (erased > 0) == (reprob > 0)


def test_every_geometric_op_moves_the_mask_with_the_image():
    """An image that *is* its mask (red = bird) keeps equal to the mask through every geometric op (nearest)."""
    w, h = 96, 80
    mask = np.zeros((h, w), np.uint8)
    mask[10:50, 20:75] = 1
    mask[50:70, 5:20] = 1  # an asymmetric second part, so flips and rotations show
    image = Image.fromarray(np.stack([mask * 255, np.zeros_like(mask), np.zeros_like(mask)], -1))
    red = (255, 0, 0)  # fill colour of the image = "mask 1", the mask's fill
    geometric = [op for op in GEOMETRIC_AUGMENT_OPS if op not in ("TranslateX", "TranslateY")]
    randaug = rand_augment_transform("rand-m9-n4-mstd0.5", {"interpolation": Image.Resampling.NEAREST,
                                                            "img_mean": red, "translate_const": 20},
                                     transforms=geometric)
    compose = T.Compose([RandomResizedCropAndInterpolation(48, scale=(0.3, 1.0), interpolation="nearest"),
                         T.RandomHorizontalFlip(), T.RandomVerticalFlip(), randaug,
                         T.RandomAffine(degrees=90, translate=(0.2, 0.2), scale=(0.8, 1.2), fill=list(red)),
                         T.Resize(44, interpolation=T.InterpolationMode.NEAREST), T.RandomCrop(40),
                         T.CenterCrop(36), T.ToTensor()])
    tf = PairedTransform(compose)
    moved = 0
    for seed in range(40):
        seed_all(seed)
        img_t, mask_t = tf(image, Image.fromarray(mask))
        assert torch.equal(img_t[0] > 0.5, mask_t.bool()), seed
        moved += int(mask_t.float().mean() != mask_t[0].float().mean())  # not trivially constant
    assert moved > 0


def test_photometric_ops_and_erasing_leave_the_mask_alone():
    image, _ = bird_image()
    ones = Image.fromarray(np.ones((80, 96), np.uint8))
    photometric_only = rand_augment_transform("rand-m9-n3-mstd0.5", {}, transforms=["Solarize", "Color", "Invert",
                                                                                     "Posterize", "Equalize"])
    tf = PairedTransform(T.Compose([T.ColorJitter(0.4, 0.4, 0.4), photometric_only, T.ToTensor(),
                                    build_train_transform(32, reprob=1.0, recount=3).compose.transforms[-1]]))
    for seed in range(10):
        seed_all(seed)
        _, mask_t = tf(image, ones)
        assert bool(mask_t.all())


def test_augmix_is_refused_with_masks():
    with pytest.raises(ValueError, match="AugMix"):
        PairedTransform(create_transform(32, is_training=True, auto_augment="augmix-m5-w4-d2"))


def test_default_eval_is_upstreams_resize_and_center_crop():
    image, mask = bird_image()
    upstream = T.Compose([T.Resize(40), T.CenterCrop(40), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ours = build_eval_transform(40)
    assert torch.equal(ours(image), upstream(image))
    img_t, mask_t = ours(image, mask)
    assert torch.equal(img_t, upstream(image)) and mask_t.shape == (40, 40)
    timm_eval = create_transform(40, is_training=False, crop_pct=0.875, interpolation="bicubic")
    assert torch.equal(build_eval_transform(40, crop_pct=0.875, interpolation="bicubic")(image), timm_eval(image))


def test_cub_original_is_upstreams_recipe():
    image, _ = bird_image()
    upstream = T.Compose([T.Resize(40), T.RandomHorizontalFlip(), T.ColorJitter(0.1),
                          T.RandomAffine(degrees=90, translate=(0.2, 0.2), scale=(0.8, 1.2)), T.RandomCrop(40),
                          T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ours = build_train_transform(40, "cub_original")
    for seed in range(8):
        seed_all(seed)
        a = ours(image)
        seed_all(seed)
        assert torch.equal(a, upstream(image))


# ------------------------------------------------------------------------------------------------ mixup
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("alphas", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mask_mixup_mixes_images_exactly_as_timm(mode, alphas):
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    masks = (torch.rand(6, 16, 16) > 0.5).to(torch.uint8)
    kw = {"mixup_alpha": alphas[0], "cutmix_alpha": alphas[1], "mode": mode, "label_smoothing": 0.1,
          "num_classes": 3}
    for seed in range(5):
        np.random.seed(seed)
        ref_images, ref_targets = Mixup(**kw)(images.clone(), labels)
        np.random.seed(seed)
        (plain,), plain_targets = MaskMixup(**kw)([images.clone()], labels)
        np.random.seed(seed)
        (mixed, mixed_masks), targets = MaskMixup(**kw)([images.clone(), masks], labels)
        assert torch.equal(plain, ref_images) and torch.equal(mixed, ref_images)
        assert torch.equal(plain_targets, ref_targets) and torch.equal(targets, ref_targets)
        assert mixed_masks.dtype == torch.uint8 and mixed_masks.shape == masks.shape


def test_cutmix_pastes_the_same_box_into_the_mask_and_mixup_takes_the_union():
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[0, :8] = 1
    masks[1, 8:] = 1
    labels = torch.tensor([0, 1])
    np.random.seed(0)
    (img_c, mask_c), targets = MaskMixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=2)([images, masks], labels)
    pasted = img_c[0, 0] == 1  # where image 0 received image 1's pixels
    assert pasted.any() and torch.equal(mask_c[0][pasted], masks[1][pasted])
    assert torch.equal(mask_c[0][~pasted], masks[0][~pasted])
    assert torch.allclose(targets.sum(1), torch.ones(2))
    (img_m, mask_m), _ = MaskMixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=2)([images, masks], labels)
    assert torch.equal(mask_m[0], masks[0] | masks[1]) and 0 < float(img_m[0, 0, 0, 0]) < 1


# --------------------------------------------------------------------------------- acceptance: late == baseline
def write_all_foreground_masks(cub_root) -> None:
    """Masks that cover every image entirely, in the precomputed-mask folders late masking reads."""
    from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBIndex, mask_path_for
    from bgmask.data.masks import MASK_FOLDERS

    index = CUBIndex.load(cub_root)
    for image_dir in ("images", WATERBIRDS_SUB_PATH):
        for rel in index.paths:
            with Image.open(cub_root / image_dir / rel) as img:
                size = img.size
            out = cub_root / MASK_FOLDERS[image_dir][0] / mask_path_for(rel)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(out)


@pytest.mark.parametrize("device_tail,fast", [("off", False), ("on", False), ("on", True)])
def test_late_masking_with_all_foreground_masks_trains_exactly_like_the_baseline(tiny_cub_copy, tmp_path,
                                                                                 device_tail, fast):
    from early_masking_and_baseline.train import main as early_main
    from late_masking.train import main as late_main

    write_all_foreground_masks(tiny_cub_copy)
    common = ["--data_path", str(tiny_cub_copy), "--model_arch", "convnext_atto", "--image_size", "64",
              "--batch_size", "4", "--num_workers", "0", "--epochs", "2", "--seed", "3", "--lr", "1e-3",
              "--augmentations_to_use", "timm", "--turn_on_mixup_or_cutmix", "--reprob", "0.5",
              "--scheduler_type", "cosine_with_warmup", "--scheduler_warmup_epochs", "1", "--sched_on_updates",
              "--device_tail", device_tail, *(["--fast_augment"] if fast else [])]
    assert early_main([*common, "--snapshot_dir", str(tmp_path / "baseline")]) == 0
    assert late_main([*common, "--snapshot_dir", str(tmp_path / "late"), "--mask_source", "precomputed"]) == 0
    base = json.loads((tmp_path / "baseline" / "results.json").read_text())
    late = json.loads((tmp_path / "late" / "results.json").read_text())
    for split in ("cub_test", "waterbirds"):
        assert late[split] == base[split], split
    assert late["best"] == base["best"]
    assert base["device_tail"] is late["device_tail"] is (device_tail == "on")
    assert base["fast_augment"] is late["fast_augment"] is fast
    base_head = torch.load(tmp_path / "baseline" / "last.pt", weights_only=False)["model"]
    late_head = torch.load(tmp_path / "late" / "last.pt", weights_only=False)["model"]
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(late_head[f"classifier.{name}"], base_head[name], atol=1e-5, rtol=0)
    assert not torch.equal(base_head["head.weight"], torch.zeros_like(base_head["head.weight"]))


def test_late_masking_refuses_a_cls_head_masked_after_the_last_block(tiny_cub_root, tmp_path, capsys):
    from late_masking.train import main as late_main

    argv = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "r"), "--model_arch",
            "vit_small_patch14_dinov2", "--class_token_only", "--mask_source", "gt"]
    assert late_main(argv) == 2
    assert "--fm_second_last_block" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------- optimiser and schedules
def two_group_optimizer(lr=1e-2):
    from bgmask.config import OptimConfig
    from bgmask.models import ModelSpec, create_classifier
    from bgmask.training.optim import build_optimizer

    model = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3))
    return build_optimizer(model, OptimConfig(lr=lr, scratch_lr_factor=10.0))


def schedule(name, epochs=12, updates_per_epoch=1, on_updates=False, **kw):
    """lr of both groups at the start of every epoch (and every update with on_updates)."""
    from bgmask.config import OptimConfig
    from bgmask.training.optim import build_scheduler, set_schedule_position

    opt = two_group_optimizer()
    cfg = OptimConfig(lr=1e-2, min_lr=1e-4, scratch_lr_factor=10.0, scheduler_type=name, epochs=epochs,
                      sched_on_updates=on_updates, **{f"scheduler_{k}": v for k, v in kw.items()})
    sched = build_scheduler(opt, cfg, updates_per_epoch)
    lrs, updates = [], 0
    for epoch in range(epochs):
        set_schedule_position(sched, epoch, updates)
        for _ in range(updates_per_epoch):
            lrs.append([g["lr"] for g in opt.param_groups])
            updates += 1
            sched.step_update(updates)
        sched.step(epoch + 1)
    return np.array(lrs)


def torch_schedule(make, epochs=12):
    opt = two_group_optimizer()
    sched = make(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return np.array(lrs)


@pytest.mark.parametrize("name,kw,make", [
    ("cosine", {}, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=1e-4)),
    ("steplr", {"step_size": 5, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.5)),
    ("linearlr", {"start_factor": 0.333, "end_factor": 1.0},
     lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.333, end_factor=1.0, total_iters=12)),
    ("cosine_warmup_restart", {"warmup_epochs": 2, "restart_factor": 2},
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=1e-4)),
])
def test_upstream_schedule_names_give_upstreams_lr_per_epoch(name, kw, make):
    ours = schedule(name, **kw)
    np.testing.assert_allclose(ours, torch_schedule(make), rtol=1e-6, atol=1e-12)  # both groups (head at lr x 10)
    assert ours[0, 1] == pytest.approx(10 * ours[0, 0])


def test_cosine_with_warmup_rises_linearly_from_zero_then_follows_the_cosine():
    lrs = schedule("cosine_with_warmup", warmup_epochs=3)[:, 0]
    np.testing.assert_allclose(lrs[:3], [0.0, 1e-2 / 3, 2e-2 / 3], rtol=1e-9, atol=1e-15)
    cos = [1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + np.cos(np.pi * (e - 3) / 9)) for e in range(3, 12)]
    np.testing.assert_allclose(lrs[3:], cos, rtol=1e-9)


def test_per_update_stepping_changes_the_lr_inside_an_epoch():
    per_epoch = schedule("cosine", epochs=3, updates_per_epoch=4)[:, 0]
    per_update = schedule("cosine", epochs=3, updates_per_epoch=4, on_updates=True)[:, 0]
    assert len(set(per_epoch[:4])) == 1 and len(set(per_update[:4])) == 4
    np.testing.assert_allclose(per_update[::4], per_epoch[::4], rtol=1e-9)  # same at epoch boundaries
    assert np.all(np.diff(per_update) < 0)


# ------------------------------------------------------------------------------ schedules through the trainer
class _Stopped(Exception):
    pass


def closed_form_lr(name: str, epoch: int, epochs: int = 6, lr: float = 1e-2, min_lr: float = 1e-4) -> float:
    """Upstream's schedules written out (its torch schedulers stepped once per epoch)."""
    cosine = lambda t, total: min_lr + 0.5 * (lr - min_lr) * (1 + np.cos(np.pi * t / total))  # noqa: E731
    if name == "cosine":
        return cosine(epoch, epochs)
    if name == "cosine_with_warmup":  # 2 warm-up epochs from 0
        return lr * epoch / 2 if epoch < 2 else cosine(epoch - 2, epochs - 2)
    if name == "cosine_warmup_restart":  # cycles of 2, then 4 epochs
        return cosine(epoch, 2) if epoch < 2 else cosine(epoch - 2, 4)
    if name == "steplr":  # x 0.5 every 2 epochs
        return lr * 0.5 ** (epoch // 2)
    if name == "linearlr":  # factor 1/3 -> 1 over the epochs
        return lr * (1 / 3 + (1 - 1 / 3) * epoch / epochs)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["cosine", "cosine_with_warmup", "cosine_warmup_restart", "steplr", "linearlr"])
def test_the_trainers_lr_per_epoch_is_the_closed_form_across_a_resume(tiny_cub_root, tmp_path, monkeypatch, name):
    """The lr each epoch trained with, as log.jsonl records it, for a run stopped after epoch 3 and resumed."""
    from bgmask import cli
    from bgmask.run.fit import EpochLoop

    argv = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(tmp_path / "r"), "--model_arch", "convnext_atto",
            "--image_size", "32", "--batch_size", "4", "--num_workers", "0", "--epochs", "6", "--seed", "0",
            "--lr", "1e-2", "--min_lr", "1e-4", "--scheduler_type", name, "--scheduler_warmup_epochs", "2",
            "--scheduler_restart_factor", "2", "--scheduler_step_size", "2", "--scheduler_gamma", "0.5",
            "--scheduler_start_factor", str(1 / 3), "--scheduler_end_factor", "1", "--max_train_batches", "1",
            "--eval_every", "6", "--skip_ood_eval", "--diagnostics", "none", "--aa", "", "--reprob", "0"]
    end_epoch = EpochLoop.end_epoch

    def stop_after_epoch_3(self, stats, progress):
        out = end_epoch(self, stats, progress)
        if progress.epoch == 3:
            raise _Stopped  # after last.pt of epoch 3 is written, as a crash or a time limit would
        return out

    monkeypatch.setattr(EpochLoop, "end_epoch", stop_after_epoch_3)
    with pytest.raises(_Stopped):
        cli.main(["none"], argv)
    monkeypatch.setattr(EpochLoop, "end_epoch", end_epoch)
    assert cli.main(["none"], [*argv, "--resume_training"]) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    expected = [closed_form_lr(name, e) for e in range(6)]
    np.testing.assert_allclose([r["lr"] for r in records], expected, rtol=1e-9, atol=1e-15)
