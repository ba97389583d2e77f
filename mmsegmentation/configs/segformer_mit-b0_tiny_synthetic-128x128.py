# Tiny CPU SegFormer MiT-B0 for the synthetic benchmark (scripts/make_synthetic_cub.py defaults: 128 px images).
# Random initialisation (nothing is downloaded), plain BN, one process: 1200 iterations of 4 crops, ~3.5 minutes on
# 2 CPU cores; bird IoU ~88 on the synthetic Waterbirds test images.
#   python scripts/make_synthetic_cub.py --out data/synthetic
#   python mmsegmentation/tools/prepare_cub_binary_seg.py --cub_root data/synthetic/CUB_200_2011 \
#       --out data/synthetic/cub_binary_segmentation
#   python mmsegmentation/tools/train.py mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py \
#       --work-dir runs/seg_tiny
#   python mmsegmentation/tools/test.py mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py \
#       runs/seg_tiny/iter_1200.pth --work-dir runs/seg_tiny
_base_ = ['./segformer_mit-b0_8xb2-160k_cub-512x512.py']

data_root = 'data/synthetic/cub_binary_segmentation'
crop_size = (128, 128)
max_iters = 1200
# BN, not SyncBN: this config also serves CPU runs and tests.
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    decode_head=dict(norm_cfg=norm_cfg))

# The real pipelines at a quarter of the scale: short side 128 instead of 512.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# Loading in the main process: the images are tiny, and on 2 shared cores extra worker processes make torch's
# threads wait for each other (measured: 0.30 s/iteration without workers, 1-10 s with 2 on a busy machine).
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))

# From scratch and short: a larger learning rate than the fine-tuning schedule (head x10 as there). Measured on the
# benchmark: more, smaller steps beat fewer large ones (batch 4 x 1200 > batch 8 x 600 at equal time).
optim_wrapper = dict(optimizer=dict(lr=0.001))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=40, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
