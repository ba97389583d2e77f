"""Training objectives shared by every strategy: cross-entropy (label smoothing, mixup's soft targets), optionally
weighted by class (``--class_balance loss``), and GroupDRO's online group weighting (:class:`GroupDROLoss`).

Every objective is a module called as ``loss(logits, targets, groups=None)``: ``targets`` are class indices or, after
mixup/cutmix, per-class probabilities (which already carry the label smoothing); ``groups`` are the batch's group ids
(GroupDRO only). Per-sample losses come from ``torch.nn.functional.cross_entropy`` with ``reduction="none"``, whose
label smoothing is timm's ``LabelSmoothingCrossEntropy`` and whose probability targets are timm's
``SoftTargetCrossEntropy``: the unweighted objective is exactly the one the trainer used before, written once so the
weighted ones can reuse it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy of every sample; label smoothing applies to class-index targets only (mixup's probability
    targets already carry it)."""
    if targets.dim() == logits.dim():  # probabilities (mixup / cutmix)
        return F.cross_entropy(logits.float(), targets.float(), reduction="none")
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=smoothing)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Weights ``n / (K * n_c)`` (scikit-learn's ``class_weight="balanced"``): every class contributes the same
    total weight; a class absent from training gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class TrainingLoss(nn.Module):
    """Cross-entropy with label smoothing; with ``class_weights`` a weighted mean, each sample weighted by its
    class's weight (by the mixed classes' weights, in proportion, after mixup), as ``nn.CrossEntropyLoss(weight=)``
    normalises: ``sum(w_i * l_i) / sum(w_i)``."""

    def __init__(self, smoothing: float = 0.0, class_weights: np.ndarray | None = None):
        super().__init__()
        self.smoothing = smoothing
        weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 2:
            return targets.float() @ self.class_weights
        return self.class_weights[targets]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor | None = None):
        losses = per_sample_loss(logits, targets, self.smoothing)
        if self.class_weights is None:
            return losses.mean()
        w = self.sample_weights(targets)
        return (w * losses).sum() / w.sum().clamp_min(1e-12)


class GroupDROLoss(nn.Module):
    """Online GroupDRO (Sagawa et al., ICLR 2020; group_DRO's ``LossComputer``).

    Each step: the mean loss of every group in the batch; group weights ``q_g <- q_g * exp(eta * (loss_g +
    C / sqrt(n_g)))`` (``C`` the generalisation adjustment, ``n_g`` the group's training size), normalised; the
    objective is ``sum_g q_g * loss_g``. A group absent from the batch keeps its weight's share (its loss counts as
    0, as group_DRO's). With several processes the weights follow the group losses of the whole global batch (one
    small all-reduce per step, no host synchronisation); ``q`` is a buffer, so it is checkpointed and resumed.
    """

    needs_groups = True  # the trainer hands it the batch's group ids

    def __init__(self, num_groups: int, group_counts, step_size: float = 0.01, adjustment: float = 0.0,
                 smoothing: float = 0.0):
        super().__init__()
        self.smoothing, self.step_size = smoothing, step_size
        counts = torch.as_tensor(np.asarray(group_counts, dtype=np.float64), dtype=torch.float32).clamp_min(1.0)
        self.register_buffer("adjust", adjustment / counts.sqrt(), persistent=False)
        self.register_buffer("q", torch.full((num_groups,), 1.0 / num_groups))

    def group_means(self, losses: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.q.numel()
        sums = torch.zeros(n, device=losses.device, dtype=losses.dtype).index_add(0, groups, losses)
        counts = torch.zeros(n, device=losses.device, dtype=losses.dtype).index_add(0, groups, torch.ones_like(losses))
        return sums, counts

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor | None = None):
        if groups is None:
            raise ValueError("GroupDRO needs the batch's group ids")
        losses = per_sample_loss(logits, targets, self.smoothing)
        sums, counts = self.group_means(losses, groups)
        local = sums / counts.clamp_min(1.0)  # a group absent from the batch: 0
        if self.training:
            with torch.no_grad():
                stats = torch.cat([sums.detach(), counts])
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(stats)
                n = self.q.numel()
                means = stats[:n] / stats[n:].clamp_min(1.0)
                q = self.q * torch.exp(self.step_size * (means + self.adjust).float())
                self.q.copy_(q / q.sum())
        return (self.q.to(local.dtype) * local).sum()
