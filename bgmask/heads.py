"""Heads: their names, their labels in tables, and the one pooling function every head input goes through.

A model's head reads pooled features. Which pooling is named by the head (DINOv2's linear evaluation keeps its
heads in one dict on one pooling function the same way):

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

from collections.abc import Callable

import torch

from bgmask.masking import NEAREST, MaskGrid, mask_to_feature_grid

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


def head_errors(heads: list[str], layout: str | None) -> list[str]:
    """What is wrong with a list of probe heads for a backbone layout (empty: nothing)."""
    if not heads:
        return ["--probe_heads is empty; give a comma list such as cls,mean,late:mean."]
    errors = []
    if len(set(heads)) != len(heads):
        errors.append(f"--probe_heads lists a head twice: {','.join(heads)}.")
    tokens = layout == "tokens"
    plain = VIT_HEADS if tokens else CNN_HEADS
    for head in heads:
        base = head.removeprefix(LATE)
        late = head.startswith(LATE)
        if base == "cls" and late:
            errors.append("--probe_heads late:cls cannot differ from cls: zeroing patch tokens after the last block "
                          "never reaches the CLS token.")
        elif base not in plain and not (late and tokens and base in LATE_ONLY_HEADS):
            known = [*plain, *(f"{LATE}{h}" for h in plain if h != "cls"),
                     *((f"{LATE}{h}" for h in LATE_ONLY_HEADS) if tokens else ())]
            errors.append(f"--probe_heads {head} is not a head of this backbone ({layout or 'unknown'} features); "
                          f"heads: {', '.join(known)}.")
    return errors


def needs_masks(heads: list[str]) -> bool:
    return any(h.startswith(LATE) for h in heads)


def head_width(head: str, feature_width: int) -> int:
    """Input width of a head's linear layer over features of ``feature_width`` channels."""
    return feature_width * (2 if head.removeprefix(LATE).startswith("cls_") else 1)


def pool(head: str, feats: torch.Tensor, *, masks: torch.Tensor | None = None, num_prefix_tokens: int = 0,
         grid_size: tuple[int, int] | None = None, cnn_pool: Callable | None = None,
         to_grid: MaskGrid = NEAREST) -> torch.Tensor:
    """Features (in the backbone's layout) -> the input of ``head``'s linear layer.

    ``cnn_pool`` is the CNN's timm head module (``forward_head`` or a copy of its ``head``), called with
    ``pre_logits=True``; token heads read ``feats`` as ``B,N,D`` with ``num_prefix_tokens`` CLS/register tokens
    first and the patch tokens on ``grid_size``; the ``masked_mean`` heads need the masks (``B,H,W``, 1 = bird), brought
    to the grid by ``to_grid``.
    """
    base = head.removeprefix(LATE)
    if base == "pool":
        return cnn_pool(feats, pre_logits=True)
    cls_token = feats[:, 0]
    if base == "cls":
        return cls_token
    patches = feats[:, num_prefix_tokens:]
    if base in ("masked_mean", "cls_masked_mean"):
        if masks is None:
            raise ValueError(f"head {head} averages the foreground tokens: it needs the masks")
        weights = mask_to_feature_grid(masks, grid_size, to_grid).flatten(1)[..., None]  # B, N, 1
        mean = (patches * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # all background: zeros
    elif base in ("mean", "cls_mean"):
        mean = patches.mean(dim=1)
    else:
        raise ValueError(f"unknown head {head!r}")
    return mean if base in ("mean", "masked_mean") else torch.cat([cls_token, mean], dim=1)


def outputs(model_output, names: list[str]) -> dict[str, torch.Tensor]:
    """A model's output as ``{head: logits}``: a dict as it is, plain logits as a dict of one (named ``names[0]``)."""
    return model_output if isinstance(model_output, dict) else {names[0]: model_output}


def names_of(model) -> list[str]:
    """The heads a model answers with (``head_names``; a model without it has one head, ``logits``)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return list(getattr(model, "head_names", None) or ["logits"])
