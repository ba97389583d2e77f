# Mask2Former R50 bird segmenter on CUB (upstream schedule: 160k iterations, 8 GPUs x 2 images = batch 16).
#   python mmsegmentation/tools/train.py mmsegmentation/configs/mask2former_r50_8xb2-160k_cub-512x512.py
# The backbone starts from torchvision's ImageNet ResNet-50 (downloaded on first use). Offline nodes: pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/resnet50-0676ba61.pth, or --no-pretrained.
#
# MMSeg's Mask2Former config defines the model and the ADE20K data in one file, so it cannot be combined with
# _base_/datasets/cub_binary_seg.py (mmengine forbids duplicate keys among bases). The data section below
# therefore restates that file; tests/test_segmentation.py checks that the two stay identical.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py']
# mmdet provides Mask2Former's pixel decoder, losses and assigner.
custom_imports = dict(imports=['mmdet.models', 'cub_seg'], allow_failed_imports=False)

num_classes = 2
# The R50 backbone keeps MMSeg's frozen-affine SyncBN: mmengine reverts it to BN in single-process runs.
model = dict(
    decode_head=dict(
        num_classes=num_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))
# Upstream kept the last checkpoint (iter 160000); selecting the "best" on the validation split would select on the
# CUB test images.
default_hooks = dict(checkpoint=dict(save_best=None))

# ---- data: keep identical to _base_/datasets/cub_binary_seg.py ----
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
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    _delete_=True,
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
    _delete_=True,
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
    _delete_=True,
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/waterbird_test', seg_map_path='annotations/test'),
        pipeline=test_pipeline))
val_evaluator = dict(_delete_=True, type='PerClassIoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
