"""Model selection: which evaluated epoch a run keeps as its best, by a rule that can choose.

The selection metric (top-1, or the worst group on a set with groups) decides first; ties — which are the rule, not
the exception, when a validation group holds a handful of images and its accuracy is 0 % in every epoch — break on
the adjusted average (where the set has one), then on the lower validation loss. An epoch whose every optimizer step
ran at learning rate 0 (e.g. the first epoch of a warm-up from 0 stepped per epoch) is never selected: it would be
the starting model, not a trained one.
"""

from __future__ import annotations

import math

ZERO_WORST_GROUP_NOTE = ("the validation worst group was 0 % in every evaluated epoch: the epoch was chosen by the "
                         "tie-breaks (adjusted average, then validation loss)")
NO_TRAINED_EPOCH_NOTE = "no evaluated epoch trained at a learning rate above 0: the last epoch is reported"


def selection_key(metrics: dict, metric: str) -> tuple[float, ...]:
    """The lexicographic score of one set's metrics: (metric, adjusted average, -loss); higher is better."""
    adjusted = metrics.get("adjusted_average") if metric == "worst_group" else None
    loss = metrics.get("loss")
    return (float(metrics[metric]),
            float(adjusted) if adjusted is not None else 0.0,
            -float(loss) if loss is not None and math.isfinite(loss) else -math.inf)


def is_better(key: tuple[float, ...], best: tuple[float, ...] | None) -> bool:
    return best is None or tuple(key) > tuple(best)


def selection_note(history: list[dict], metric: str) -> str | None:
    """A sentence for results.json's ``best.note`` when the selection could not rank epochs on its metric."""
    trained = [h for h in history if h["trained"]]
    if history and not trained:
        return NO_TRAINED_EPOCH_NOTE
    if metric == "worst_group" and trained and all(h["score"] == 0.0 for h in trained):
        return ZERO_WORST_GROUP_NOTE
    return None
