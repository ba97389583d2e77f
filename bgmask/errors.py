"""The library's own errors, all of them here. Entry points turn any :class:`BgmaskError` into a one-paragraph message
and exit code 2."""

from __future__ import annotations


class BgmaskError(Exception):
    """A problem the user can fix (a setting, a path, a file); the message says how."""


class ConfigError(BgmaskError, ValueError):
    """A setting, a combination of settings or a path in a run's configuration is wrong; says how to fix it.

    Settings are named by their command-line flags (``--lr``), which are also their YAML keys and config field names.
    """


class ExportError(BgmaskError, ValueError):
    """A run folder cannot be exported, or a folder is not an export this version reads; says how to fix it."""


class PretrainError(BgmaskError, RuntimeError):
    """Pretraining cannot run as asked (bad settings) or its training run failed; says why."""


class CheckpointError(BgmaskError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which file and why."""


class DatasetError(BgmaskError, RuntimeError):
    """A dataset on disk is missing, incomplete or inconsistent. The message says which file and what to do."""


class PredictError(BgmaskError, ValueError):
    """The inputs cannot be classified as given; says how to fix it."""


class UnsupportedBackbone(BgmaskError, ValueError):
    """A backbone whose feature layout the project does not know; the message lists what is supported."""


class ModelError(BgmaskError, ValueError):
    """The model asked for does not exist or cannot take the given options; says what to use instead."""


class WeightsError(BgmaskError, RuntimeError):
    """Pretrained weights cannot be loaded (offline without a cache, or a file of another model); says how to fix."""


# Raised and caught inside the library (not shown to users as they are):
class ConfigFileError(ValueError):
    """A ``--config`` file is missing, unreadable or has keys that are no flags."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; training stops and the last good checkpoint is kept."""


class PeerFailure(RuntimeError):
    """A stage failed on at least one process; every process raises it at the same point (see :func:`agree`)."""


def did_you_mean(name: str, known, what: str = "") -> str:
    """`` Did you mean 'x'?`` for the known names closest to a mistyped ``name`` (difflib's ratio), else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" Did you mean {' or '.join(repr(c) for c in close)}{f' ({what})' if what else ''}?"


def timm_name_hint(arch: str) -> str:
    """The suggestion for an unknown timm model name: upstream's DINOv2 short names translated, else the closest names
    timm knows, with or without a pretrained tag (``convnext_tiny``, ``vit_base_patch14_dinov2.lvd142m``)."""
    import timm

    if arch in ("vit_small", "vit_base", "vit_large", "vit_giant"):
        return f" Upstream's short name {arch!r} is {arch}_patch14_dinov2.lvd142m here."
    base, dot, _ = str(arch).partition(".")
    names = timm.list_models()
    if dot and base in names:  # a known model with an unknown pretrained tag
        return did_you_mean(arch, [n for n in timm.list_models(pretrained=True) if n.startswith(base + ".")])
    return did_you_mean(base, names)
