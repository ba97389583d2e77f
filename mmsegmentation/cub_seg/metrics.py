"""PerClassIoUMetric: MMSeg's IoUMetric that also returns each class's scores (e.g. ``IoU.bird``)."""

from __future__ import annotations

from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """IoUMetric whose result dict carries per-class values next to the means.

    IoUMetric only prints the per-class table to the log; returning ``IoU.bird`` / ``Dice.bird`` as metrics puts the
    number that matters for masking into the JSON logs, wandb, ``test.py``'s summary and ``save_best``.
    """

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or not results:
            return metrics
        intersect, union, pred_area, label_area = (sum(parts) for parts in zip(*results))
        per_class = self.total_area_to_metrics(intersect, union, pred_area, label_area, self.metrics,
                                               self.nan_to_num, self.beta)
        for name, values in per_class.items():
            if name == "aAcc":
                continue
            for class_name, value in zip(self.dataset_meta["classes"], values):
                metrics[f"{name}.{class_name}"] = round(float(value) * 100, 2)
        return metrics
