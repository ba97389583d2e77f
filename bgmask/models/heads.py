"""Heads: their names and their labels in tables (the backbone adapters pool them).

A model's head reads pooled features. Which pooling is named by the head, and the backbone's adapter pools it
(:meth:`bgmask.models.backbones.BackboneAdapter.pool`; DINOv2's linear evaluation keeps its heads in one dict the
same way):

=====================  ===================================================================================
``pool``               CNN: timm's pooling and pre-logits (what ``--model_arch convnext_*`` trains)
``cls``                ViT: the CLS token (``--class_token_only``)
``mean``               ViT: the mean of the patch tokens, GAP (``--patch_tokens_only``)
``cls_mean``           ViT: concat(CLS, mean of the patch tokens) (the default ViT head)
``masked_mean``        ViT: the mean of the foreground patch tokens only (late masking's ``--masked_mean``)
``cls_masked_mean``    ViT: concat(CLS, mean of the foreground patch tokens)
``late:<head>``        the same head after the last stage/block's background features are zeroed (late masking)
=====================  ===================================================================================

The run sees every model through :func:`outputs`: ``{head: logits}``, a single-head model's logits being a dict of
one. Models themselves return plain logits when they have one head, so they stay ordinary timm-style modules that
attribution and user code call directly.
"""

from __future__ import annotations

import torch

LATE = "late:"
CNN_HEADS = ("pool",)
VIT_HEADS = ("cls", "mean", "cls_mean")
LATE_ONLY_HEADS = ("masked_mean",)
# Results tables: the ViT head column (a CNN's single head is "-").
LABELS = {"cls": "CLS", "mean": "GAP", "cls_mean": "CLS+GAP", "masked_mean": "GAP (fg mean)",
          "cls_masked_mean": "CLS+GAP (fg mean)", "pool": "-"}


def label(head: str) -> str:
    """The table label of a head (a ``late:`` head is labelled by the head it masks)."""
    base = head.removeprefix(LATE)
    return LABELS.get(base, base)


def vit_head_of(class_token_only: bool, patch_tokens_only: bool) -> str:
    """The ViT head the flags ``--class_token_only`` / ``--patch_tokens_only`` name."""
    return "cls" if class_token_only else "mean" if patch_tokens_only else "cls_mean"


def parse_heads(spec: str) -> list[str]:
    """``"cls, mean,late:mean"`` -> ``["cls", "mean", "late:mean"]`` (order kept, no duplicates allowed)."""
    return [h.strip() for h in spec.split(",") if h.strip()]


def head_errors(heads: list[str], plain: tuple[str, ...], late_only: tuple[str, ...] = (),
                what: str = "this backbone") -> list[str]:
    """What is wrong with a list of probe heads for a family whose heads are ``plain`` (and ``late_only``, trained
    by late masking alone: :attr:`bgmask.models.backbones.BackboneAdapter.heads`); empty: nothing."""
    if not heads:
        return ["--probe_heads is empty; give a comma list such as cls,mean,late:mean."]
    errors = []
    if len(set(heads)) != len(heads):
        errors.append(f"--probe_heads lists a head twice: {','.join(heads)}.")
    for head in heads:
        base = head.removeprefix(LATE)
        late = head.startswith(LATE)
        if base == "cls" and late:
            errors.append("--probe_heads late:cls cannot differ from cls: zeroing patch tokens after the last block "
                          "never reaches the CLS token.")
        elif base not in plain and not (late and base in late_only):
            known = [*plain, *(f"{LATE}{h}" for h in plain if h != "cls"), *(f"{LATE}{h}" for h in late_only)]
            errors.append(f"--probe_heads {head} is not a head of {what}; heads: {', '.join(known)}.")
    return errors


def needs_masks(heads: list[str]) -> bool:
    return any(h.startswith(LATE) for h in heads)


def head_width(head: str, feature_width: int) -> int:
    """Input width of a head's linear layer over features of ``feature_width`` channels."""
    return feature_width * (2 if head.removeprefix(LATE).startswith("cls_") else 1)


def outputs(model_output, names: list[str]) -> dict[str, torch.Tensor]:
    """A model's output as ``{head: logits}``: a dict as it is, plain logits as a dict of one (named ``names[0]``)."""
    return model_output if isinstance(model_output, dict) else {names[0]: model_output}


def names_of(model) -> list[str]:
    """The heads a model answers with (``head_names``; a model without it has one head, ``logits``)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return list(getattr(model, "head_names", None) or ["logits"])
