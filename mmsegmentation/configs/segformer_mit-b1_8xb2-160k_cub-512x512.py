# SegFormer MiT-B1 bird segmenter on CUB (as MiT-B0, wider backbone).
#   python mmsegmentation/tools/train.py mmsegmentation/configs/segformer_mit-b1_8xb2-160k_cub-512x512.py
# Offline nodes: --cfg-options model.backbone.init_cfg.checkpoint=/path/mit_b1_20220624-02e5a6a1.pth
_base_ = ['./segformer_mit-b0_8xb2-160k_cub-512x512.py']

checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b1_20220624-02e5a6a1.pth'  # noqa
model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
        embed_dims=64,
        num_heads=[1, 2, 5, 8],
        num_layers=[2, 2, 2, 2]),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
