"""Bird-mask prediction with a trained MMSeg segmenter, shared by generate_masks.py and late masking.

Two entry points:

* :class:`Segmenter` predicts one {0, 1} mask per image, at the image's own resolution, with MMSeg's own API:
  ``mmseg.apis.init_model`` builds the model and ``mmseg.apis.inference_model`` runs the config's test pipeline,
  data preprocessor and post-processing on lists of images that share one size after the test resize (one list =
  one forward pass; real CUB's many image sizes map to a few).
  This replaced our own batched re-implementation of the test pipeline and preprocessor (resize, pad, normalise,
  crop and resize back), which was not worth keeping: timed against this path before it was deleted (same process,
  interleaved rounds, tiny SegFormer, 400 synthetic images, CPU), it ran at 0.98x the throughput of this path at
  batch 8 with 2 decoding workers (49.8 vs 50.8 images/s) and 1.02x at batch 32 (62.7 vs 61.2), far below the
  1.5x that would justify a second implementation of MMSeg's pipeline. Details and the current figures:
  ``python scripts/bench/mask_generation.py --checkpoint CHECKPOINT --threads 1``.
* :class:`SegmenterMaskProvider` is the online mode of late masking: it takes the classifier's ImageNet-normalised
  batch *tensor*, already on the training device (possibly under autograd and AMP), and returns the masks at the
  same H, W. ``inference_model`` does not apply there: it takes files or ``H,W,3`` uint8 arrays and runs the test
  pipeline on the CPU one image at a time, so the batch would have to go to the host, be de-normalised, quantised,
  split and re-uploaded on every training step. The provider keeps a small tensor version of the test resize and the
  segmenter's normalisation instead (:class:`TestResize`), and calls the model's own ``inference``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.runner import load_checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bgmask.infra.distributed import resolve_device
from cub_seg.checkpoint import trusted_local_checkpoints
from cub_seg.runner import disable_pretrained

# Transforms of a test pipeline that do not change the image (loading, annotations, packing).
_NON_IMAGE_TRANSFORMS = ("LoadImageFromFile", "LoadAnnotations", "PackSegInputs", "LoadImageFromNDArray")


def load_segmenter(config: str | os.PathLike | Config, checkpoint: str | os.PathLike,
                   device: str | torch.device | None = "cpu") -> torch.nn.Module:
    """Build the model of an MMSeg config (``mmseg.apis.init_model``) and load a checkpoint into it, for inference.

    Pretrained backbone initialisation is dropped (the checkpoint holds every weight, so nothing is downloaded),
    SyncBN becomes BN, the checkpoint must fit the model exactly, the model is in eval mode and its parameters are
    frozen. ``model.cfg`` is the config, as ``inference_model`` expects.

    Args:
        config: config file (or a loaded Config) the checkpoint was trained with.
        checkpoint: local checkpoint file written by tools/train.py.
        device: where the model goes; 'auto' picks CUDA when available (see
            :func:`bgmask.infra.distributed.resolve_device`).
    """
    from mmseg.apis import init_model

    if not isinstance(config, Config):
        if not os.path.isfile(config):
            raise FileNotFoundError(f"Segmenter config {config} does not exist; use one of mmsegmentation/configs/ "
                                    f"(the one the checkpoint was trained with).")
        config = Config.fromfile(config)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"Segmenter checkpoint {checkpoint} does not exist; train one with "
                                f"mmsegmentation/tools/train.py (it writes WORK_DIR/iter_N.pth).")
    # A deep copy: init_model and inference_model edit the config they are given (init_cfg, test_pipeline).
    cfg = copy.deepcopy(config)
    disable_pretrained(cfg)
    # init_model's own checkpoint loading is not strict (a wrong config would only warn), so the model is built
    # without one and loaded below.
    model = revert_sync_batchnorm(init_model(cfg, checkpoint=None, device="cpu"))
    try:
        with trusted_local_checkpoints():
            state = load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except RuntimeError as e:
        reason = str(e).splitlines()[0].rstrip(".")
        raise RuntimeError(f"Checkpoint {checkpoint} does not fit the model of config "
                           f"{getattr(config, 'filename', config)} ({reason}). Use the config the checkpoint was "
                           f"trained with.") from None
    dataset_meta = (state.get("meta") or {}).get("dataset_meta")
    if dataset_meta:
        model.dataset_meta = dataset_meta
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))


class Segmenter:
    """A loaded segmenter; predicts bird masks for images with ``mmseg.apis.inference_model``.

    Args:
        model: an MMSeg segmentor in eval mode with its config in ``model.cfg`` (see :func:`load_segmenter`).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        try:
            self._resize = TestResize(model.cfg)
        except ValueError:  # a test pipeline we cannot predict: group images by their own size instead
            self._resize = None

    def batch_key(self, h: int, w: int) -> tuple[int, int]:
        """Images with equal keys go through one ``inference_model`` call: their size after the config's test resize
        (MMSeg's test preprocessor needs one size per batch; each mask still comes back at its image's own size).
        Real CUB images have many sizes (500x333, 500x334, ...) that the test resize maps to a few."""
        return self._resize.shape(h, w) if self._resize is not None else (h, w)

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

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Bird masks ({0, 1} uint8, each at its image's size) for RGB ``H,W,3`` uint8 arrays of any sizes.

        Images of one :meth:`batch_key` go to ``inference_model`` together, ``batch_size`` per call; the masks come
        back in the input order.
        """
        from mmseg.apis import inference_model

        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(self.batch_key(*img.shape[:2]), []).append(i)
        masks: list[np.ndarray | None] = [None] * len(images)
        # inference_model switches the config's first transform to LoadImageFromNDArray for arrays and leaves it so;
        # put the loader back afterwards, so that the model still takes file paths too.
        loader = self.model.cfg.test_pipeline[0]
        loader_type = loader["type"]
        try:
            for indices in groups.values():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start:start + batch_size]
                    # MMSeg's loaders give BGR (its preprocessor converts back when the config says bgr_to_rgb).
                    bgr = [np.ascontiguousarray(images[i][..., ::-1]) for i in chunk]
                    # Autocast off: masks must not depend on whether the caller trains with AMP.
                    with torch.autocast(device_type=self.device.type, enabled=False):
                        results = inference_model(self.model, bgr)
                    for i, result in zip(chunk, results):
                        masks[i] = result.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
        finally:
            loader["type"] = loader_type
        return masks


class TestResize:
    """The size a config's test pipeline gives an image (Resize with keep_ratio, ResizeToMultiple).

    Only the tensor path of :class:`SegmenterMaskProvider` needs this; files and arrays go through MMSeg's pipeline.

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
                raise ValueError(f"Test-pipeline transform {t['type']} is not supported by the online mask "
                                 f"provider; supported: Resize, ResizeToMultiple.")

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


class SegmenterMaskProvider:
    """Online bird masks for late masking: classifier batch in, ``B,H,W`` {0, 1} uint8 mask out.

    The input is what the classifier's transforms produce (RGB, ImageNet mean/std normalised). It is mapped back to
    0..255, resized like the segmenter's test pipeline, normalised the segmenter's way, and the argmax of the two
    classes is resized back to the input's H, W, all on the batch's device (see the module docstring for why this is
    not ``inference_model``). Runs under no_grad in eval mode with frozen parameters and follows the batch's device
    on the first call. It is deliberately not an ``nn.Module``: stored on a model it does not become a submodule (no
    state_dict entries, no DDP parameters, no optimizer groups).

    Args:
        config_path: the segmenter's config file.
        checkpoint_path: its checkpoint.
        device: where to load it (default CPU; it moves to the batch's device on call).
        input_mean: per-channel mean of the classifier normalisation (0..1 scale).
        input_std: per-channel std of the classifier normalisation (0..1 scale).
    """

    def __init__(self, config_path, checkpoint_path, device=None, input_mean=IMAGENET_DEFAULT_MEAN,
                 input_std=IMAGENET_DEFAULT_STD):
        self.segmenter = Segmenter(load_segmenter(config_path, checkpoint_path, device or "cpu"))
        model = self.segmenter.model
        self.resize = TestResize(model.cfg)
        self.input_mean = torch.tensor(input_mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.input_std = torch.tensor(input_std, dtype=torch.float32).reshape(1, 3, 1, 1)
        pre = model.data_preprocessor
        # The preprocessor converts the BGR images MMSeg loads to RGB when bgr_to_rgb is set: then the network
        # expects RGB, which is what we have. Without the conversion it was trained on BGR, so ours is flipped.
        self.flip_channels = not bool(getattr(pre, "channel_conversion", False))
        if getattr(pre, "_enable_normalize", False):
            self.mean = pre.mean.detach().reshape(1, -1, 1, 1).float().cpu()
            self.std = pre.std.detach().reshape(1, -1, 1, 1).float().cpu()
        else:
            self.mean, self.std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        self.pad_divisor = (getattr(pre, "test_cfg", None) or {}).get("size_divisor") or 1
        self.align_corners = bool(getattr(model, "align_corners", False))

    def _scores(self, rgb: torch.Tensor) -> torch.Tensor:
        """Class scores ``B,C,H',W'`` for test-resized ``B,3,H,W`` RGB 0..255 (``H',W'``: padded to the divisor)."""
        x = rgb.flip(1) if self.flip_channels else rgb
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        H, W = x.shape[-2:]
        Hp, Wp = -(-H // self.pad_divisor) * self.pad_divisor, -(-W // self.pad_divisor) * self.pad_divisor
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H))  # zeros after normalisation, as MMSeg pads
        meta = dict(ori_shape=(Hp, Wp), img_shape=(Hp, Wp), pad_shape=(Hp, Wp), padding_size=[0, 0, 0, 0])
        # Autocast off: masks must not depend on whether the caller trains with AMP.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.segmenter.model.inference(x, [dict(meta) for _ in range(x.shape[0])])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a B,3,H,W image batch, got shape {tuple(images.shape)}")
        if self.segmenter.device != images.device:
            self.segmenter.to(images.device)
        mean, std = self.input_mean.to(images.device), self.input_std.to(images.device)
        rgb = ((images.float() * std + mean) * 255.0).clamp_(0, 255)
        h, w = rgb.shape[-2:]
        th, tw = self.resize.shape(h, w)
        if (th, tw) != (h, w):
            rgb = F.interpolate(rgb, size=(th, tw), mode="bilinear", align_corners=False)
        scores = self._scores(rgb)[:, :, :th, :tw]
        if (th, tw) != (h, w):
            scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=self.align_corners)
        return scores.argmax(1).to(torch.uint8)
