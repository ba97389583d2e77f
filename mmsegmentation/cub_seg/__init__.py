"""MMSegmentation plugin for the binary bird segmentation task (registers CUBBinarySegDataset).

Configs load it with ``custom_imports = dict(imports=['cub_seg'])``. Importing it registers, in MMSeg's registries,
the dataset ``CUBBinarySegDataset`` and the metric ``PerClassIoUMetric`` (the plugin mechanism); nothing else.
Loading this repository's own checkpoints under torch >= 2.6 happens inside
:func:`cub_seg.checkpoint.trusted_local_checkpoints`.
"""

from cub_seg.checkpoint import load_from_local_trusted, trusted_local_checkpoints
from cub_seg.dataset import CUB_BINARY_SEG_METAINFO, CUBBinarySegDataset
from cub_seg.metrics import PerClassIoUMetric

__all__ = ["CUB_BINARY_SEG_METAINFO", "CUBBinarySegDataset", "PerClassIoUMetric", "load_from_local_trusted",
           "trusted_local_checkpoints"]
