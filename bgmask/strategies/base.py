"""What a masking strategy is, and the registry that names them.

A strategy is one module: a :class:`Strategy` subclass decorated with :func:`register`. It declares

* its **data view** (:meth:`Strategy.data_view`): the image folders it trains and tests on, and the mask folders
  loaded with the images, if any (images and masks then share every augmentation draw);
* its **model wrapper** (:meth:`Strategy.wrap_model`): what turns the plain classifier into the strategy's model;
* its **name** in ``results.json`` and ``--masking``, its **label** in results tables, and its own settings
  (``Options``: a dataclass whose fields become flags, as :mod:`bgmask.config`'s do).

Everything else (augmentation draws, mixup, optimiser, schedule, evaluation, diagnostics) is shared by
:func:`bgmask.trainer.run`, which is what makes the strategies comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from bgmask.errors import ConfigError

if TYPE_CHECKING:
    from bgmask.config import TrainConfig


@dataclass(frozen=True)
class DataView:
    """Folders under the CUB root that a strategy reads.

    Attributes:
        train, test, ood: image folders for training, the CUB test set and Waterbirds (None: no Waterbirds folder).
        masks: mask folders for (train, test, Waterbirds), loaded with the images so the items are
            ``(image, mask, label)`` and the model is called as ``model(image, mask)``; None: images only.
    """

    train: str
    test: str
    ood: str | None
    masks: tuple[str, str, str] | None = None


class Strategy:
    """Base class: the baseline's behaviour (original images, the plain classifier). Override what differs."""

    name: ClassVar[str]  # results.json "masking" and the --masking value
    label: ClassVar[str]  # results tables and figures
    summary: ClassVar[str] = ""  # one line for --help
    # How diagnostics feed the test views to the model: "none" (the view as is), "early" (the view masked by its
    # bird mask), "late" (view and mask; attribution on the masked features), or None (no diagnostics, recorded).
    diagnostics_input: ClassVar[str | None] = "none"
    Options: ClassVar[type | None] = None  # a dataclass of strategy-specific settings (fields become flags)

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """Fill in settings whose default depends on the strategy (e.g. early masking's image folders)."""
        return cfg

    def check(self, cfg: TrainConfig) -> None:
        """Refuse settings this strategy cannot honour, before anything is built (raise ConfigError)."""

    def data_view(self, cfg: TrainConfig) -> DataView:
        data = cfg.data
        return DataView(data.image_sub_path_train, data.image_sub_path_test, data.ood_image_sub_path)

    def wrap_model(self, cfg: TrainConfig, classifier: nn.Module) -> nn.Module:
        return classifier

    def results_info(self, cfg: TrainConfig) -> dict:
        """Extra keys for results.json (e.g. where the masks came from)."""
        return {}


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy known by its ``name`` (to the entry points and ``collect_results``)."""
    known = _REGISTRY.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"strategy name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown masking strategy {name!r}; known: {', '.join(_REGISTRY)}. A new strategy is a "
                          f"module with a @register-ed Strategy subclass, imported before the run (see "
                          f"docs/architecture.md).") from None


def names() -> list[str]:
    """Registered strategy names, in registration order (the built-in ones first)."""
    return list(_REGISTRY)


def label(name: str) -> str:
    """A strategy's label for tables; an unregistered name (a run of a strategy not imported here) is its own."""
    cls = _REGISTRY.get(name)
    return cls.label if cls is not None else name
