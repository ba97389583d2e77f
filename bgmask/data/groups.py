"""Groups of an evaluation set: a group id per item, the groups' names, and what is reported over them.

Worst-group accuracy and per-group accuracy are dataset-neutral once every item carries a group id (as
group_DRO's ``group_array`` / ``group_str``): the evaluation loop counts hits per id, a benchmark says what the ids
mean and, for the group-robustness protocol, how large each group was in training (the weights of the adjusted
average of group_DRO, WILDS' ``adj_acc_avg``, JTT and DFR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def wilson_interval(correct: float, total: float, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy ``correct / total``, in percent (``total`` may be an effective,
    non-integer sample size)."""
    if total <= 0:
        return 0.0, 100.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def difference_interval(correct_a: float, total_a: float, correct_b: float,
                        total_b: float) -> tuple[float, float, float]:
    """The difference of two accuracies ``a - b`` in points, with its 95 % interval from the two Wilson intervals
    (Newcombe's hybrid score method, 1998, method 10). It treats the two as independent samples, which is
    conservative for two models scored on the same test images."""
    pa, pb = 100.0 * correct_a / total_a, 100.0 * correct_b / total_b
    (la, ua), (lb, ub) = wilson_interval(correct_a, total_a), wilson_interval(correct_b, total_b)
    d = pa - pb
    return d, d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)


@dataclass(frozen=True)
class Groups:
    """Attributes:
        ids: the group id of every item, in dataset order (``0 .. len(names) - 1``).
        names: each group's name in results.json.
        partitions: ``{metric: {part: group ids}}``: each part's top-1 over the union of its groups is reported
            under ``metric`` (e.g. Waterbirds' ``per_place``).
        train_sizes: each group's image count in the training split; with it the metrics also hold the
            ``adjusted_average`` (group accuracies weighted by these sizes) and every figure's interval.
    """

    ids: np.ndarray
    names: tuple[str, ...]
    partitions: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    train_sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        ids = np.asarray(self.ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.names)):
            raise ValueError(f"group ids must lie in [0, {len(self.names)}), got [{ids.min()}, {ids.max()}]")
        if self.train_sizes is not None and len(self.train_sizes) != len(self.names):
            raise ValueError(f"{len(self.train_sizes)} training group sizes for {len(self.names)} groups")
        object.__setattr__(self, "ids", ids)

    def sizes(self) -> tuple[int, ...]:
        """Images per group (e.g. of a training split: the ``train_sizes`` of its evaluation sets)."""
        return tuple(int(n) for n in np.bincount(self.ids, minlength=len(self.names)))


def group_metrics(correct: np.ndarray, total: np.ndarray, groups: Groups) -> dict:
    """From hits and counts per group id: ``per-partition`` top-1, ``groups`` (top-1, count and hits of every
    group with images) and ``worst_group`` (the lowest group top-1, not "the minority group"; None without
    groups). With training group sizes also ``average`` (top-1 over all images), ``adjusted_average`` and
    ``intervals`` (95 % Wilson) of the three.

    The adjusted average weights each group present in the set by its training size, as group_DRO and WILDS do.
    Its interval is Wilson's at the Kish effective sample size ``1 / sum_g(w_g**2 / n_g)`` (normalised weights
    ``w_g``, ``n_g`` images of group ``g``): the plain interval when the groups are weighted by their own sizes.
    """
    result = {}
    for metric, parts in groups.partitions.items():
        result[metric] = {}
        for part, members in parts.items():
            n = float(sum(total[g] for g in members))
            if n > 0:
                result[metric][part] = 100.0 * float(sum(correct[g] for g in members)) / n
    present = [g for g in range(len(groups.names)) if total[g] > 0]
    result["groups"] = {groups.names[g]: {"top1": 100.0 * float(correct[g] / total[g]), "num_images": int(total[g]),
                                          "correct": int(correct[g])} for g in present}
    result["worst_group"] = min(v["top1"] for v in result["groups"].values()) if present else None
    if groups.train_sizes is None or not present:
        return result
    worst = min(present, key=lambda g: correct[g] / total[g])
    weights = np.array([float(groups.train_sizes[g]) for g in present])
    if weights.sum() <= 0:
        raise ValueError("the training split holds none of the groups this set has: no adjusted average")
    weights /= weights.sum()
    accs = np.array([float(correct[g] / total[g]) for g in present])
    adjusted = float(weights @ accs)
    n_eff = 1.0 / float(sum(w * w / float(total[g]) for w, g in zip(weights, present)))
    n_all = float(sum(total[g] for g in present))
    result["average"] = 100.0 * float(sum(correct[g] for g in present)) / n_all
    result["adjusted_average"] = 100.0 * adjusted
    result["intervals"] = {"worst_group": wilson_interval(float(correct[worst]), float(total[worst])),
                           "adjusted_average": wilson_interval(adjusted * n_eff, n_eff),
                           "average": wilson_interval(float(sum(correct[g] for g in present)), n_all)}
    for g in present:
        result["groups"][groups.names[g]]["interval"] = wilson_interval(float(correct[g]), float(total[g]))
    return result
