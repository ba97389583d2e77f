"""Background-reliance diagnostics: Backgrounds-Challenge views of the CUB test set, BG-Gap, and how much of a
standard attribution falls inside the bird. ``docs/diagnostics.md`` documents every construction.

Views (built on the fly from each test image and its bird mask, then the run's evaluation transform):
``only_fg`` background black; ``only_bg_b`` the mask's bounding box black; ``only_bg_t`` the box filled by tiling
the image's own background; ``mixed_same`` / ``mixed_rand`` the bird, composited with its soft mask, on the
``only_bg_t`` of another test image of the same / of another class. ``bg_gap = mixed_same - mixed_rand``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from bgmask.data.cub import load_mask, load_rgb
from bgmask.distributed import agree, all_reduce_sum
from bgmask.models.backbones import INPUT_GRADIENT
from bgmask.progress import progress_bar
from bgmask.strategies.base import ModelInput

VIEWS = ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand")
BIRD_VIEWS = ("only_fg", "mixed_same", "mixed_rand")  # views that still show the bird


# ------------------------------------------------------------------------------------------------- views
def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (end-exclusive) of the pixels where ``mask > 0``, or None for an empty mask."""
    ys, xs = np.nonzero(mask > 0)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def only_fg(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background black (as early masking)."""
    return image * (mask > 0)[..., None].astype(image.dtype)


def only_bg_b(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bird's bounding box black."""
    out = image.copy()
    box = bounding_box(mask)
    if box is not None:
        y0, y1, x0, x1 = box
        out[y0:y1, x0:x1] = 0
    return out


def only_bg_t(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bird's bounding box filled by tiling the largest background strip beside it (above, below, left or
    right of the box, full width or height). A box that covers the whole image is left black."""
    out = only_bg_b(image, mask)
    box = bounding_box(mask)
    if box is None:
        return out
    y0, y1, x0, x1 = box
    h, w = mask.shape
    strips = [image[:y0], image[y1:], image[:, :x0], image[:, x1:]]
    source = max(strips, key=lambda s: s.shape[0] * s.shape[1])
    if source.size == 0:
        return out
    bh, bw = y1 - y0, x1 - x0
    reps = (math.ceil(bh / source.shape[0]), math.ceil(bw / source.shape[1]), 1)
    out[y0:y1, x0:x1] = np.tile(source, reps)[:bh, :bw]
    return out


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The bird of ``image`` (soft ``alpha`` in [0, 1]) over ``background`` resized to the image's size."""
    h, w = alpha.shape
    if background.shape[:2] != (h, w):
        background = np.asarray(Image.fromarray(background).resize((w, h), Image.Resampling.BILINEAR))
    a = alpha[..., None].astype(np.float32)
    return np.clip(image * a + background * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def pair_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For every test image, another image of the same class and one of another class, fixed by ``seed`` (the same
    on every process). A class with a single test image pairs it with itself."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    same, rand = np.empty_like(idx), np.empty_like(idx)
    for i, y in enumerate(labels):
        same_pool = idx[(labels == y) & (idx != i)]
        same[i] = rng.choice(same_pool) if len(same_pool) else i
        other_pool = idx[labels != y]
        rand[i] = rng.choice(other_pool) if len(other_pool) else i
    return same, rand


class DiagnosticViews(Dataset):
    """One view of the test images, as the strategy's model takes it.

    Args:
        base: the original test images with their bird masks (a benchmark's ``diagnostics_images``: ``labels``,
            ``paths``, ``image_path(i)`` and ``mask_path(i)``; soft masks, bird = > 0, or binary ones).
        view: one of :data:`VIEWS`, or ``original`` (the image itself; for attribution).
        model_input: how the model takes an image (:class:`~bgmask.strategies.ModelInput`): the view as it is,
            the view masked by its bird mask (as early masking feeds it), or the view and its bird mask. The bird
            mask of a view without the bird is empty.
        transform: the run's evaluation transform (a :class:`~bgmask.data.transforms.PairedTransform`).
        with_mask: also return the transformed bird mask (for attribution), whatever the model takes.
    """

    def __init__(self, base, view: str, model_input: ModelInput, transform, seed: int = 0, with_mask: bool = False):
        if view not in (*VIEWS, "original"):
            raise ValueError(f"unknown view {view!r}; one of {VIEWS}")
        self.base = base
        self.view, self.model_input, self.transform, self.with_mask = view, model_input, transform, with_mask
        self.labels = self.base.labels
        self.same, self.rand = pair_indices(self.labels, seed)

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = load_rgb(self.base.image_path(i))
        soft = np.asarray(load_mask(self.base.mask_path(i), image.size, threshold=None), dtype=np.float32) / 255.0
        return np.asarray(image), soft

    def build(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The view of test image ``i`` (``H,W,3`` uint8) and its bird mask (``H,W`` uint8 {0, 1})."""
        image, soft = self._load(i)
        bird = (soft > 0).astype(np.uint8)
        if self.view == "original":
            return image, bird
        if self.view == "only_fg":
            return only_fg(image, bird), bird
        if self.view in ("only_bg_b", "only_bg_t"):
            fn = only_bg_b if self.view == "only_bg_b" else only_bg_t
            return fn(image, bird), np.zeros_like(bird)
        other_image, other_soft = self._load(int((self.same if self.view == "mixed_same" else self.rand)[i]))
        return composite(image, soft, only_bg_t(other_image, (other_soft > 0).astype(np.uint8))), bird

    def __getitem__(self, i: int):
        view, bird = self.build(i)
        if self.model_input is ModelInput.MASKED_IMAGE:
            view = only_fg(view, bird)
        image, mask = self.transform(Image.fromarray(view), Image.fromarray(bird))
        label = int(self.labels[i])
        if self.with_mask or self.model_input is ModelInput.IMAGE_AND_MASK:
            return image, mask, label
        return image, label


# ------------------------------------------------------------------------------------------- attribution
def attribution_method(model) -> str:
    """What :func:`attribution_maps` computes for ``model``'s backbone."""
    return model.adapter.attribution


def attribution_maps(model, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, model_input: ModelInput,
                     autocast=contextlib.nullcontext) -> torch.Tensor:
    """Non-negative attribution of the true class per input pixel, ``B,H,W`` (fp32).

    The backbone's adapter says which (``model.adapter.attribution``). Grad-CAM (CNNs): on the feature map the head
    pools (after masking, for late masking; the adapter's ``feature_map`` brings it to ``B,C,H,W``), upsampled
    bilinearly; the model gives its ``attribution_features(images, masks)`` and ``head_from_features(features,
    masks)``. |gradient x input| (ViTs), summed over colour channels: token maps mix CLS and patches, so the input
    is where ViT attributions are comparable across heads.

    Only the gradient the map needs is computed (``backward(inputs=[...])`` to the input or the feature map, with
    the parameters not requiring grad): no parameter gradients are allocated or left behind. ``autocast`` is the
    run's mixed-precision context.
    """
    with no_parameter_grads(model):
        if model.adapter.attribution == INPUT_GRADIENT:
            x = images.clone().requires_grad_(True)
            with autocast():
                logits = model(*_model_inputs(x, masks, model_input))
            logits.gather(1, labels[:, None]).float().sum().backward(inputs=[x])
            return (x.grad * x.detach()).sum(1).abs()
        with torch.no_grad(), autocast():
            feats = model.attribution_features(images, masks)
        feats = feats.float().requires_grad_(True)  # Grad-CAM: d(logit)/d(features), no backward through the backbone
        model.head_from_features(feats, masks).gather(1, labels[:, None]).sum().backward(inputs=[feats])
        grads = feats.grad
    acts, grads = model.adapter.feature_map(feats.detach()), model.adapter.feature_map(grads)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@contextlib.contextmanager
def no_parameter_grads(model: torch.nn.Module):
    """Parameters stop requiring grad for the duration (autograd then saves nothing for their gradients)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def attribution_in_chunks(model, images, masks, labels, model_input: ModelInput, autocast) -> torch.Tensor:
    """:func:`attribution_maps`, halving the batch on CUDA out-of-memory until one image at a time.

    A frozen backbone never held activations for a backward during training; its diagnostics must still finish.
    """
    try:
        return attribution_maps(model, images, masks, labels, model_input, autocast)
    except torch.OutOfMemoryError:
        if len(images) == 1:
            raise
    # The retry runs after the except block: inside it, the exception's traceback would keep the failed attempt's
    # frames, and with them its activations, alive through the retry (pytorch#18853).
    torch.cuda.empty_cache()
    half = len(images) // 2
    return torch.cat([attribution_in_chunks(model, images[sl], masks[sl], labels[sl], model_input, autocast)
                      for sl in (slice(0, half), slice(half, None))])


def _model_inputs(images, masks, model_input: ModelInput) -> list[torch.Tensor]:
    """What the strategy's model takes (early masking's images are already masked by :class:`DiagnosticViews`)."""
    return [images, masks] if model_input is ModelInput.IMAGE_AND_MASK else [images]


def fg_share(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of each map inside its bird mask; returns ``(shares, valid)`` (an all-zero map has no share)."""
    total = maps.flatten(1).sum(1)
    inside = (maps * (masks > 0)).flatten(1).sum(1)
    valid = total > 0
    return torch.where(valid, inside / total.clamp_min(1e-12), torch.zeros_like(total)), valid


def fg_attribution(model, loader, device, model_input: ModelInput, gallery: int = 0, progress: bool = False,
                   autocast=contextlib.nullcontext, agree_first: bool = False):
    """Mean share of the attribution inside the bird over a loader of ``(image, mask, label, index)`` batches,
    exact across processes. Returns ``(mean share, images counted, gallery)`` with ``gallery`` the first
    ``gallery`` maps this process saw, with their true and predicted classes (``{"index": [...], "maps": B,H,W
    float16, "labels": [...], "predictions": [...]}``). With ``agree_first`` a failure on any process raises
    :class:`~bgmask.distributed.PeerFailure` on every process before the sums are reduced."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    kept_index, kept_maps, kept_labels, kept_predictions, error = [], [], [], [], None
    try:
        for images, masks, labels, index in progress_bar(loader, desc="attribution", disable=not progress):
            images, masks, labels = images.to(device), masks.to(device), labels.to(device)
            maps = attribution_in_chunks(model, images, masks, labels, model_input, autocast)
            shares, valid = fg_share(maps, masks)
            sums += torch.stack([shares[valid].sum(), valid.sum()]).double().cpu()
            if len(kept_index) < gallery:
                take = gallery - len(kept_index)
                kept_index += index[:take].tolist()
                kept_maps.append(maps[:take].cpu().half())
                kept_labels += labels[:take].tolist()
                with torch.no_grad(), autocast():
                    logits = model(*_model_inputs(images[:take], masks[:take], model_input))
                kept_predictions += logits.argmax(1).tolist()
    except Exception as e:  # noqa: BLE001 - re-raised below, on every process at once when agreeing
        if not agree_first:
            raise
        error = e
    finally:
        model.train(was_training)
    if agree_first:
        agree(error, device)
    sums = all_reduce_sum(sums.to(device)).cpu()
    mean = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
    maps = torch.cat(kept_maps) if kept_maps else torch.zeros(0)
    return mean, int(sums[1]), {"index": kept_index, "maps": maps, "labels": kept_labels,
                                "predictions": kept_predictions}


def gallery_path(run_dir: str | Path) -> Path:
    """The run's few attribution maps: ``paths`` (test images, relative to ``images/``), ``maps``, ``labels`` and
    ``predictions`` of the first head; with probe heads also ``heads``: ``{head: {"maps", "labels",
    "predictions"}}`` for every head. Files of older runs hold ``paths`` and ``maps`` (the first head's) only."""
    return Path(run_dir) / "attribution_gallery.pt"
