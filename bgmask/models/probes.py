"""Several linear heads on one frozen backbone, trained together on one backbone forward per batch.

With a frozen backbone, the baseline heads and late masking after the last stage or block all read the same
features: only the pooling differs (and, for late masking, the background positions are zeroed first). Training
them as separate runs repeats the backbone forward once per head; here each batch runs the backbone once and every
head gets its own loss. As in DINOv2's linear evaluation, the heads never interact:

* each head is initialised exactly as the head of a single-head run with the same seed would be; a CNN whose timm
  head module holds a norm that trains with the head (ConvNeXt, ``--head_norm head``) gives every head its own copy
  of that module, starting from the backbone's weights;
* the loss that is back-propagated is the *sum* of the heads' losses, so each head's gradient is its own loss's
  gradient; the optimiser (AdamW, SGD...) keeps per-parameter state, so every head's updates are those of its own run;
* data order, augmentation and mixup draws are the run's, shared by all heads.

So a head's metrics equal those of a separate run with the same seed (tested). Head names are
:mod:`bgmask.models.heads`, their pooling the backbone adapter's; ``late:cls`` is refused: zeroing patch tokens
after the last block never reaches the CLS token.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bgmask.models.classifier import Classifier
from bgmask.models.heads import LATE, needs_masks
from bgmask.models.late_masked import LateMaskedClassifier
from bgmask.models.masking import NEAREST, MaskGrid


class ProbeHeads(nn.Module):
    """A frozen :class:`~bgmask.models.Classifier` backbone with one linear head per name.

    ``forward(images[, masks])`` returns ``{head: logits}``. The classifier's own head is replaced; the backbone is
    run once, without gradient, and stays in eval mode.
    """

    def __init__(self, classifier: Classifier, heads: list[str], num_classes: int, to_grid: MaskGrid = NEAREST):
        super().__init__()
        self.to_grid = to_grid  # how the late heads' masks reach the token grid
        if not classifier.freeze_backbone:
            raise ValueError("probe heads need a frozen backbone (--freeze_backbone)")
        self.classifier = classifier
        self.head_names = list(heads)
        rng = torch.get_rng_state()
        modules, after_first = {}, None
        for head in self.head_names:
            torch.set_rng_state(classifier.head_rng_state)  # the init a single-head run would draw
            modules[_key(head)] = classifier.new_head(head, num_classes)
            after_first = after_first if after_first is not None else torch.get_rng_state()
        torch.set_rng_state(after_first if after_first is not None else rng)  # as after the first head's init
        self.probes = nn.ModuleDict(modules)
        classifier.head = nn.Identity()  # unused: the probes are the heads
        # A head norm that trains with the head (ConvNeXt's): one copy per probe, the backbone's own stays frozen.
        trained_norm = classifier.head_norm_parameters()
        self.pools = nn.ModuleDict({_key(h): copy.deepcopy(classifier.head_norm_module())
                                    for h in self.head_names}) if trained_norm else None
        for p in trained_norm:
            p.requires_grad_(False)

    @classmethod
    def around(cls, model: nn.Module, heads: list[str], num_classes: int) -> ProbeHeads:
        """Probe heads on a strategy's model: its classifier's frozen backbone and, for the late heads, its rule of
        how masks reach the feature grid (a late-masked model's ``to_grid``; nearest-exact for any other model)."""
        if isinstance(model, LateMaskedClassifier):
            return cls(model.classifier, heads, num_classes, to_grid=model.to_grid)
        return cls(model, heads, num_classes)

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.probes.parameters()) + (list(self.pools.parameters()) if self.pools is not None else [])

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.train(mode)  # keeps the frozen backbone in eval mode
        if self.pools is not None:
            self.pools.train(mode)
        return self

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        clf = self.classifier
        with torch.no_grad():
            feats = clf.adapter.features(images)
            masked = None
            if needs_masks(self.head_names):
                if masks is None:
                    raise ValueError("late: probe heads need masks with the images")
                masked = clf.adapter.mask(feats, masks, self.to_grid)
        return {head: self.probes[_key(head)](self.pool(head, masked if head.startswith(LATE) else feats, masks))
                for head in self.head_names}

    def single_head_model(self, head: str) -> nn.Module:
        """``head`` as the model of its single-head run (sharing this backbone and head): a classifier, or a late-masked
        one for ``late:`` heads. Diagnostics score it like any run's model."""
        base = head.removeprefix(LATE)
        pool_module = self.pools[_key(head)] if self.pools is not None else None
        vit_head = "mean" if base == "masked_mean" else base if base != "pool" else "cls_mean"
        clf = Classifier(self.classifier.backbone, 1, vit_head=vit_head, freeze_backbone=True, head_norm="backbone",
                         pool_module=pool_module)
        clf.head = self.probes[_key(head)]
        if not head.startswith(LATE):
            return clf
        return LateMaskedClassifier(clf, masked_mean=base == "masked_mean", to_grid=self.to_grid)

    def pool(self, head: str, feats: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """The head input: the features of ``head``'s kind, pooled as that head's single-head run pools them."""
        cnn_pool = self.pools[_key(head)] if self.pools is not None else None
        return self.classifier.pool(feats, masks, kind=head.removeprefix(LATE), cnn_pool=cnn_pool, to_grid=self.to_grid)


def _key(head: str) -> str:
    return head.replace(":", "__")  # ModuleDict keys cannot hold ':' in state-dict-friendly form
