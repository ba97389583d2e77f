"""What a masking strategy is, and the registry that names them.

A strategy is one module: a :class:`Strategy` subclass decorated with :func:`register`. It declares

* what it **needs of the data** (:meth:`Strategy.needs`, a :class:`~bgmask.data.needs.DataNeeds`): original or
  masked images, masks loaded with the images or not (images and masks then share every augmentation draw). The
  benchmark (:mod:`bgmask.benchmarks`) resolves that to its own folders: a strategy never names a folder;
* its **model wrapper** (:meth:`Strategy.wrap_model`): what turns the plain classifier into the strategy's model;
* its **name** in ``results.json`` and ``--masking``, its **label** in results tables, and its own settings
  (``Options``: a dataclass whose fields become flags, as :mod:`bgmask.config`'s do);
* how its model takes the diagnostics' test views (``diagnostics_input``, a :class:`ModelInput`).

Everything else (augmentation draws, mixup, optimiser, schedule, evaluation, diagnostics) is shared by
:func:`bgmask.run.pipeline.run`, which is what makes the strategies comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from bgmask.data.needs import DataNeeds, ModelInput
from bgmask.infra.registry import Registry

if TYPE_CHECKING:
    from bgmask.config import TrainConfig
    from bgmask.data.groups import Groups


class Strategy:
    """Base class: the baseline's behaviour (original images, the plain classifier). Override what differs."""

    name: ClassVar[str]  # results.json "masking" and the --masking value
    label: ClassVar[str]  # results tables and figures
    # Its column in the paper's results table (always shown, in this order); None: after those, when a run used it.
    table_column: ClassVar[int | None] = None
    summary: ClassVar[str] = ""  # one line for --help
    # How the diagnostics feed the test views to the model; None: no diagnostics (recorded in results.json).
    diagnostics_input: ClassVar[ModelInput | None] = ModelInput.IMAGE
    Options: ClassVar[type | None] = None  # a dataclass of strategy-specific settings (fields become flags)
    # The run phase between building the model and writing results.json (bgmask.run.pipeline.PHASES): "train", the
    # shared training loop; "refit_last_layer", no training: the last layer of the model it starts from is fitted
    # again on the selection split by refit_last_layer (bgmask.run.refit).
    phase: ClassVar[str] = "train"

    def check(self, cfg: TrainConfig) -> None:
        """Refuse settings this strategy cannot honour, before anything is built (raise ConfigError)."""

    def needs(self, cfg: TrainConfig) -> DataNeeds:
        """What the strategy trains and tests on: original images, no masks."""
        return DataNeeds()

    def wrap_model(self, cfg: TrainConfig, classifier: nn.Module) -> nn.Module:
        return classifier

    def training_loss(self, cfg: TrainConfig, loss: nn.Module, train_groups: Groups | None) -> nn.Module:
        """The training objective, called ``loss(logits, targets)``, or ``loss(logits, targets, groups)`` when this
        returns a module with ``needs_groups = True`` (the batches then carry each image's training group). Default:
        the loss every strategy shares (:mod:`bgmask.training.losses`)."""
        return loss

    def results_info(self, cfg: TrainConfig) -> dict:
        """Extra keys for results.json (e.g. where the masks came from)."""
        return {}

    def starts_from(self, cfg: TrainConfig) -> Path | None:
        """A finished run's checkpoint whose weights the phase starts from (None: the weights the model is built
        with, from ``--pretrained_path`` / ``--start_weights``)."""
        return None

    def refit_last_layer(self, cfg: TrainConfig, features, labels, groups, num_classes: int, train_features=None):
        """The ``refit_last_layer`` phase's fit: the new last layer ``(weight num_classes x d, bias, report)`` from the
        selection set's embeddings, labels and group ids (numpy arrays), and the training split's embeddings
        without augmentation where the benchmark has them; see :mod:`bgmask.run.refit`."""
        raise NotImplementedError


_REGISTRY: Registry[Strategy] = Registry(
    "strategy", "unknown masking strategy {name!r}.{hint} Known: {known}. A new strategy is a module with a "
                "@register-ed Strategy subclass, imported before the run (see docs/architecture.md).")
register, get, names = _REGISTRY.register, _REGISTRY.get, _REGISTRY.names


def label(name: str) -> str:
    """A strategy's label for tables; an unregistered name (a run of a strategy not imported here) is its own."""
    cls = _REGISTRY.find(name)
    return cls.label if cls is not None else name
