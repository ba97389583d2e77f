"""Batched bird-mask prediction with a trained MMSeg segmenter, shared by generate_masks.py and late masking.

Two entry points:

* :class:`Segmenter` runs a checkpoint on batches of RGB images of any sizes and returns one {0, 1} mask per image at
  that image's own resolution (the config's test resize, normalisation and padding are applied here).
* :class:`SegmenterMaskProvider` is the online-mode callable for late masking: it takes the classifier's
  ImageNet-normalised batch and returns the bird masks at the same H, W.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

from bgmask.distributed import resolve_device
from cub_seg.checkpoint import trusted_local_checkpoints
from cub_seg.runner import disable_pretrained

# timm's IMAGENET_DEFAULT_MEAN / STD, the normalisation of the classifiers' transforms.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Transforms of a test pipeline that do not change the image (loading, annotations, packing).
_NON_IMAGE_TRANSFORMS = ("LoadImageFromFile", "LoadAnnotations", "PackSegInputs", "LoadImageFromNDArray")


def load_segmenter(config: str | os.PathLike | Config, checkpoint: str | os.PathLike,
                   device: str | torch.device | None = "cpu") -> torch.nn.Module:
    """Build the model of an MMSeg config and load a checkpoint into it, ready for inference.

    Pretrained backbone initialisation is dropped (the checkpoint holds every weight, so nothing is downloaded),
    SyncBN becomes BN, the model is in eval mode and its parameters are frozen.

    Args:
        config: config file (or a loaded Config) the checkpoint was trained with.
        checkpoint: local checkpoint file written by tools/train.py.
        device: where the model goes; 'auto' picks CUDA when available.
    """
    if not isinstance(config, Config):
        if not os.path.isfile(config):
            raise FileNotFoundError(f"Segmenter config {config} does not exist; use one of mmsegmentation/configs/ "
                                    f"(the one the checkpoint was trained with).")
        config = Config.fromfile(config)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"Segmenter checkpoint {checkpoint} does not exist; train one with "
                                f"mmsegmentation/tools/train.py (it writes WORK_DIR/iter_N.pth).")
    cfg = config.copy()
    disable_pretrained(cfg)
    cfg.model.train_cfg = None
    init_default_scope(cfg.get("default_scope", "mmseg"))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    try:
        with trusted_local_checkpoints():
            load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except RuntimeError as e:
        reason = str(e).splitlines()[0].rstrip(".")
        raise RuntimeError(f"Checkpoint {checkpoint} does not fit the model of config "
                           f"{getattr(config, 'filename', config)} ({reason}). Use the config the checkpoint was "
                           f"trained with.") from None
    model.cfg = cfg
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))


class TestResize:
    """The size a config's test pipeline gives an image (Resize with keep_ratio, ResizeToMultiple).

    Args:
        cfg: an MMSeg config with ``test_pipeline`` (or ``test_dataloader.dataset.pipeline``).
    """

    def __init__(self, cfg: Config):
        pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline
        self.scale, self.keep_ratio, self.size_divisor = None, True, None
        for t in pipeline:
            if t["type"] == "Resize":
                if t.get("scale") is None:
                    raise ValueError(f"Only Resize with `scale` is supported in the test pipeline, got {t}.")
                self.scale, self.keep_ratio = tuple(t["scale"]), t.get("keep_ratio", False)
            elif t["type"] == "ResizeToMultiple":
                self.size_divisor = t.get("size_divisor", 32)
            elif t["type"] not in _NON_IMAGE_TRANSFORMS:
                raise ValueError(f"Test-pipeline transform {t['type']} is not supported for mask generation; "
                                 f"supported: Resize, ResizeToMultiple.")

    def shape(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after the test resize of an ``h x w`` image (same rounding as mmcv)."""
        if self.scale is not None:
            if self.keep_ratio:
                w, h = mmcv.rescale_size((w, h), self.scale)
            else:
                w, h = self.scale
        if self.size_divisor:
            d = self.size_divisor
            h, w = int(np.ceil(h / d)) * d, int(np.ceil(w / d)) * d
        return h, w

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``H,W,3`` uint8 image as the test pipeline does (mmcv bilinear, i.e. cv2)."""
        h, w = self.shape(*image.shape[:2])
        if (h, w) == image.shape[:2]:
            return image
        return mmcv.imresize(image, (w, h), interpolation="bilinear")


class Segmenter:
    """A loaded segmenter plus the preprocessing its config implies; predicts masks for batches of images.

    Args:
        model: an MMSeg ``EncoderDecoder`` in eval mode (see :func:`load_segmenter`).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.resize = TestResize(model.cfg)
        pre = model.data_preprocessor
        # The preprocessor converts the BGR images MMSeg loads to RGB when bgr_to_rgb is set: then the network
        # expects RGB, which is what we feed. Without the conversion it was trained on BGR, so we flip ours.
        self.flip_channels = not bool(getattr(pre, "channel_conversion", False))
        if getattr(pre, "_enable_normalize", False):
            self.mean = pre.mean.detach().reshape(1, -1, 1, 1).float().cpu()
            self.std = pre.std.detach().reshape(1, -1, 1, 1).float().cpu()
        else:
            self.mean, self.std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        test_cfg = getattr(pre, "test_cfg", None) or {}
        self.pad_divisor = test_cfg.get("size_divisor") or 1
        self.align_corners = bool(getattr(model, "align_corners", False))

    @classmethod
    def from_files(cls, config, checkpoint, device="auto") -> Segmenter:
        """Load ``checkpoint`` into the model of ``config`` on ``device`` ('auto': CUDA when available)."""
        return cls(load_segmenter(config, checkpoint, device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Segmenter:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """Class scores for a batch of test-resized RGB images.

        Args:
            images: ``B,3,H,W`` float RGB in 0..255 on the model's device; image ``i`` occupies the top-left
                ``sizes[i]`` and the rest is padding (ignored: set to 0 after normalisation, as MMSeg pads).
            sizes: valid (h, w) per image; None when no image is padded.

        Returns:
            ``B,C,H',W'`` scores where ``H',W'`` is the input size rounded up to the preprocessor's divisor.
        """
        x = images.float()
        if self.flip_channels:
            x = x.flip(1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if sizes is not None:
            for i, (h, w) in enumerate(sizes):
                x[i, :, h:, :] = 0
                x[i, :, :, w:] = 0
        H, W = x.shape[-2:]
        Hp, Wp = -(-H // self.pad_divisor) * self.pad_divisor, -(-W // self.pad_divisor) * self.pad_divisor
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H))
        meta = dict(ori_shape=(Hp, Wp), img_shape=(Hp, Wp), pad_shape=(Hp, Wp), padding_size=[0, 0, 0, 0])
        # Autocast off: masks must not depend on whether the caller trains with AMP.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.model.inference(x, [dict(meta) for _ in range(x.shape[0])])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]],
                out_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Bird masks for a padded batch of test-resized images, each at its own original resolution.

        Args:
            images: ``B,3,H,W`` float or uint8 RGB 0..255 (on any device; moved to the model's).
            sizes: valid (h, w) of each image inside the batch (its test-resized size).
            out_sizes: (height, width) each mask is returned at (the original image size).

        Returns:
            ``B`` uint8 tensors ``out_h x out_w`` on the model's device, 1 = bird.
        """
        scores = self.logits(images.to(self.device), sizes)
        masks = []
        for i, ((h, w), out_size) in enumerate(zip(sizes, out_sizes)):
            # As MMSeg's postprocess_result: drop the padding, resize the scores bilinearly, then argmax.
            s = F.interpolate(scores[i:i + 1, :, :h, :w], size=tuple(out_size), mode="bilinear",
                              align_corners=self.align_corners)
            masks.append(s[0].argmax(0).to(torch.uint8))
        return masks

    def predict_images(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Bird masks ({0, 1} uint8, original size) for RGB ``H,W,3`` uint8 arrays of any sizes, as one batch."""
        resized = [self.resize(img) for img in images]
        batch, sizes = pad_batch(resized)
        masks = self.predict(batch, sizes, [img.shape[:2] for img in images])
        return [m.cpu().numpy() for m in masks]


def pad_batch(images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stack ``H,W,3`` uint8 arrays of different sizes into a zero-padded ``B,3,H,W`` uint8 tensor (top-left)."""
    sizes = [tuple(img.shape[:2]) for img in images]
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = torch.zeros(len(images), 3, H, W, dtype=torch.uint8)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[0], : img.shape[1]] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    return batch, sizes


class SegmenterMaskProvider:
    """Online bird masks for late masking: classifier batch in, ``B,H,W`` {0, 1} uint8 mask out.

    The input is what the classifier's transforms produce (RGB, ImageNet mean/std normalised). It is mapped back to
    0..255, resized like the segmenter's test pipeline, normalised the segmenter's way, and the argmax of the two
    classes is resized back to the input's H, W. Runs under no_grad in eval mode with frozen parameters and follows
    the batch's device on the first call. It is deliberately not an ``nn.Module``: stored on a model it does not
    become a submodule (no state_dict entries, no DDP parameters, no optimizer groups).

    Args:
        config_path: the segmenter's config file.
        checkpoint_path: its checkpoint.
        device: where to load it (default CPU; it moves to the batch's device on call).
        input_mean: per-channel mean of the classifier normalisation (0..1 scale).
        input_std: per-channel std of the classifier normalisation (0..1 scale).
    """

    def __init__(self, config_path, checkpoint_path, device=None, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD):
        self.segmenter = Segmenter(load_segmenter(config_path, checkpoint_path, device or "cpu"))
        self.input_mean = torch.tensor(input_mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.input_std = torch.tensor(input_std, dtype=torch.float32).reshape(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a B,3,H,W image batch, got shape {tuple(images.shape)}")
        if self.segmenter.device != images.device:
            self.segmenter.to(images.device)
        mean, std = self.input_mean.to(images.device), self.input_std.to(images.device)
        rgb = ((images.float() * std + mean) * 255.0).clamp_(0, 255)
        h, w = rgb.shape[-2:]
        th, tw = self.segmenter.resize.shape(h, w)
        if (th, tw) != (h, w):
            rgb = F.interpolate(rgb, size=(th, tw), mode="bilinear", align_corners=False)
        scores = self.segmenter.logits(rgb)[:, :, :th, :tw]
        if (th, tw) != (h, w):
            scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=self.segmenter.align_corners)
        return scores.argmax(1).to(torch.uint8)
