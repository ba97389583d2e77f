"""Groups of an evaluation set: a group id per item, the groups' names, and named unions of groups.

Worst-group accuracy and per-group accuracy are dataset-neutral once every item carries a group id (as
group_DRO's ``group_array`` / ``group_str``): the evaluation loop counts hits per id, a benchmark says what the ids
mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Attributes:
        ids: the group id of every item, in dataset order (``0 .. len(names) - 1``).
        names: each group's name in results.json.
        partitions: ``{metric: {part: group ids}}``: each part's top-1 over the union of its groups is reported
            under ``metric`` (e.g. Waterbirds' ``per_place``).
    """

    ids: np.ndarray
    names: tuple[str, ...]
    partitions: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)

    def __post_init__(self):
        ids = np.asarray(self.ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.names)):
            raise ValueError(f"group ids must lie in [0, {len(self.names)}), got [{ids.min()}, {ids.max()}]")
        object.__setattr__(self, "ids", ids)


def group_metrics(correct: np.ndarray, total: np.ndarray, groups: Groups) -> dict:
    """``per-partition`` top-1, ``groups`` (top-1 and count of every group with images) and ``worst_group`` (the
    lowest group top-1; None without groups), from hits and counts per group id."""
    result = {}
    for metric, parts in groups.partitions.items():
        result[metric] = {}
        for part, members in parts.items():
            n = float(sum(total[g] for g in members))
            if n > 0:
                result[metric][part] = 100.0 * float(sum(correct[g] for g in members)) / n
    result["groups"] = {name: {"top1": 100.0 * float(correct[g] / total[g]), "num_images": int(total[g])}
                        for g, name in enumerate(groups.names) if total[g] > 0}
    result["worst_group"] = min(v["top1"] for v in result["groups"].values()) if result["groups"] else None
    return result
