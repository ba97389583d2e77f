"""CUBBinarySegDataset: CUB-200 birds as a two-class (background, bird) MMSeg dataset, with up-front file checks."""

from __future__ import annotations

import os.path as osp

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from bgmask.io import listing

# Same name, classes, palette and suffixes as upstream, so configs written for the upstream fork keep working.
CUB_BINARY_SEG_METAINFO = dict(classes=("background", "bird"), palette=[[0, 0, 0], [255, 255, 255]])


@DATASETS.register_module()
class CUBBinarySegDataset(BaseSegDataset):
    """Binary bird segmentation on CUB-200-2011 (and the Waterbirds test images).

    Layout written by ``mmsegmentation/tools/prepare_cub_binary_seg.py``: ``images/{train,test,waterbird_test}``
    (``.jpg``, class sub-folders allowed) and ``annotations/{train,test}`` (``.png`` maps, 0 background, 1 bird)
    at the same relative paths. ``waterbird_test`` is evaluated against ``annotations/test``.
    """

    METAINFO = CUB_BINARY_SEG_METAINFO

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                 **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)

    def load_data_list(self) -> list[dict]:
        """List the images like MMSeg does, then fail early and clearly on an empty folder or a missing map."""
        img_dir = self.data_prefix.get("img_path", "")
        ann_dir = self.data_prefix.get("seg_map_path")
        hint = ("Prepare the dataset with `python mmsegmentation/tools/prepare_cub_binary_seg.py --cub_root "
                "CUB_200_2011 --out <data_root>` and point the config's data_root (or --data-root) at <data_root>.")
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f"Image folder {img_dir} does not exist. {hint}")
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(f"No {self.img_suffix} images under {img_dir}. {hint}")
        if ann_dir is not None:
            missing = [d["seg_map_path"] for d in data_list if not osp.isfile(d["seg_map_path"])]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of {len(data_list)} images under {img_dir} have no "
                                        f"segmentation map in {ann_dir}: {listing(missing)}. {hint}")
        return data_list
