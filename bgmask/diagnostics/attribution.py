"""How much of a standard attribution (Grad-CAM, or |gradient x input| for token backbones) falls inside the
bird, over a test set, in chunks and across processes."""


from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from bgmask.data.needs import ModelInput
from bgmask.infra.distributed import agree, all_reduce_sum
from bgmask.infra.progress import progress_bar
from bgmask.models.backbones import INPUT_GRADIENT


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
    :class:`~bgmask.infra.distributed.PeerFailure` on every process before the sums are reduced."""
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
