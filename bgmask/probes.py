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

So a head's metrics equal those of a separate run with the same seed (tested). Head names:

=====================  ===================================================================================
``pool``               CNN: timm's pooling and pre-logits (what ``--model_arch convnext_*`` trains)
``cls``                ViT: the CLS token (``--class_token_only``)
``mean``               ViT: the mean of the patch tokens, GAP (``--patch_tokens_only``)
``cls_mean``           ViT: concat(CLS, mean of the patch tokens) (the default ViT head)
``late:<head>``        the same after the last stage/block's background features are zeroed (late masking);
                       ``late:masked_mean`` averages foreground patch tokens only (``--masked_mean``)
=====================  ===================================================================================

``late:cls`` is refused: zeroing patch tokens after the last block never reaches the CLS token.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bgmask.models import Classifier, foreground_mean, new_head, vit_pool

LATE = "late:"
CNN_HEADS = ("pool",)
VIT_HEADS = ("cls", "mean", "cls_mean")
LATE_ONLY_HEADS = ("masked_mean",)


def parse_heads(spec: str) -> list[str]:
    """``"cls, mean,late:mean"`` -> ``["cls", "mean", "late:mean"]`` (order kept, no duplicates allowed)."""
    return [h.strip() for h in spec.split(",") if h.strip()]


def head_errors(heads: list[str], layout: str | None) -> list[str]:
    """What is wrong with a list of probe heads for a backbone layout (empty: nothing)."""
    if not heads:
        return ["--probe_heads is empty; give a comma list such as cls,mean,late:mean."]
    errors = []
    if len(set(heads)) != len(heads):
        errors.append(f"--probe_heads lists a head twice: {','.join(heads)}.")
    plain = VIT_HEADS if layout == "tokens" else CNN_HEADS
    for head in heads:
        base = head.removeprefix(LATE)
        late = head.startswith(LATE)
        if base == "cls" and late:
            errors.append("--probe_heads late:cls cannot differ from cls: zeroing patch tokens after the last block "
                          "never reaches the CLS token.")
        elif base not in plain and not (late and layout == "tokens" and base in LATE_ONLY_HEADS):
            known = [*plain, *(f"{LATE}{h}" for h in plain if h != "cls"),
                     *((f"{LATE}{h}" for h in LATE_ONLY_HEADS) if layout == "tokens" else ())]
            errors.append(f"--probe_heads {head} is not a head of this backbone ({layout or 'unknown'} features); "
                          f"heads: {', '.join(known)}.")
    return errors


def needs_masks(heads: list[str]) -> bool:
    return any(h.startswith(LATE) for h in heads)


class ProbeHeads(nn.Module):
    """A frozen :class:`~bgmask.models.Classifier` backbone with one linear head per name.

    ``forward(images[, masks])`` returns ``{head: logits}``. The classifier's own head is replaced; the backbone is
    run once, without gradient, and stays in eval mode.
    """

    def __init__(self, classifier: Classifier, heads: list[str], num_classes: int):
        super().__init__()
        if not classifier.freeze_backbone:
            raise ValueError("probe heads need a frozen backbone (--freeze_backbone)")
        self.classifier = classifier
        self.probe_names = list(heads)
        width = classifier.adapter.width if classifier.is_vit else classifier.backbone.num_features
        rng = torch.get_rng_state()
        modules, after_first = {}, None
        for head in self.probe_names:
            torch.set_rng_state(classifier.head_rng_state)  # the init a single-head run would draw
            base = head.removeprefix(LATE)
            modules[_key(head)] = new_head(width * (2 if base == "cls_mean" else 1), num_classes,
                                           classifier.head_init, classifier.is_vit)
            after_first = after_first if after_first is not None else torch.get_rng_state()
        torch.set_rng_state(after_first if after_first is not None else rng)  # as after the first head's init
        self.probes = nn.ModuleDict(modules)
        classifier.head = nn.Identity()  # unused: the probes are the heads
        # A head norm that trains with the head (ConvNeXt's): one copy per probe, the backbone's own stays frozen.
        trained_norm = classifier.head_norm_parameters()
        self.pools = nn.ModuleDict({_key(h): copy.deepcopy(classifier.head_norm_module())
                                    for h in self.probe_names}) if trained_norm else None
        for p in trained_norm:
            p.requires_grad_(False)

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
            if needs_masks(self.probe_names):
                if masks is None:
                    raise ValueError("late: probe heads need masks with the images")
                masked = clf.adapter.mask(feats, masks)
        return {head: self.probes[_key(head)](self.pool(head, masked if head.startswith(LATE) else feats, masks))
                for head in self.probe_names}

    def single_head_model(self, head: str) -> nn.Module:
        """``head`` as the model of its single-head run (sharing this backbone and head): a classifier, or a late-masked
        one for ``late:`` heads. Diagnostics score it like any run's model."""
        from bgmask.strategies.late import LateMaskedClassifier

        base = head.removeprefix(LATE)
        vit_head = ("mean" if base == "masked_mean" else base) if self.classifier.is_vit else "cls_mean"
        pool_module = self.pools[_key(head)] if self.pools is not None else None
        clf = Classifier(self.classifier.backbone, 1, vit_head=vit_head, freeze_backbone=True, head_norm="backbone",
                         pool_module=pool_module)
        clf.head = self.probes[_key(head)]
        if not head.startswith(LATE):
            return clf
        return LateMaskedClassifier(clf, masked_mean=base == "masked_mean")

    def pool(self, head: str, feats: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """The head input: the features of ``head``'s kind, pooled as that head's single-head run pools them."""
        clf, base = self.classifier, head.removeprefix(LATE)
        if not clf.is_vit:
            if self.pools is not None:
                return self.pools[_key(head)](feats, pre_logits=True)
            return clf.backbone.forward_head(feats, pre_logits=True)
        if base == "masked_mean":
            return foreground_mean(feats, masks, clf.num_prefix_tokens, clf.adapter.grid_size)
        return vit_pool(feats, base, clf.num_prefix_tokens)


def _key(head: str) -> str:
    return head.replace(":", "__")  # ModuleDict keys cannot hold ':' in state-dict-friendly form
