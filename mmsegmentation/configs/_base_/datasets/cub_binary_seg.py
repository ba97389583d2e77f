# CUB binary bird segmentation (background / bird), MMSeg layout written by tools/prepare_cub_binary_seg.py.
# Validation: CUB test images. Test: the same birds on Waterbirds backgrounds (images/waterbird_test), scored
# against the CUB test maps (Waterbirds keeps every bird at its CUB position). test.py evaluates both.
dataset_type = 'CUBBinarySegDataset'
data_root = 'data/cub_binary_segmentation'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    # Maps are loaded after the resize: metrics are computed at the original resolution.
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/train', seg_map_path='annotations/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/test', seg_map_path='annotations/test'),
        pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/waterbird_test', seg_map_path='annotations/test'),
        pipeline=test_pipeline))
# PerClassIoUMetric (cub_seg) = MMSeg's IoUMetric plus per-class entries such as IoU.bird and Dice.bird.
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
