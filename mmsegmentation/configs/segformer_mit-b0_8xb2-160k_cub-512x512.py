# SegFormer MiT-B0 bird segmenter on CUB (upstream schedule: 160k iterations, 8 GPUs x 2 images = batch 16).
#   python mmsegmentation/tools/train.py mmsegmentation/configs/segformer_mit-b0_8xb2-160k_cub-512x512.py
#   (8 GPUs: torchrun --nproc_per_node 8 mmsegmentation/tools/train.py CONFIG --launcher pytorch)
# The backbone starts from MMSeg's ImageNet MiT-B0 weights (downloaded on first use). Offline nodes: pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/mit_b0_20220624-7e0fe6dd.pth, or --no-pretrained.
_base_ = [
    'mmseg::_base_/models/segformer_mit-b0.py',
    './_base_/datasets/cub_binary_seg.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['cub_seg'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0_20220624-7e0fe6dd.pth'  # noqa
# The head's SyncBN is reverted to BN by mmengine in single-process runs; tools/train.py turns it into BN for
# multi-process CPU runs too.
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(num_classes=2))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_block': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'head': dict(lr_mult=10.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2, num_workers=2)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = dict(batch_size=1, num_workers=4)
# Lets tools/train.py --auto-scale-lr adapt the learning rate when the total batch is not 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
