# The demo's classifier recipes, shared by scripts/demo.sh and scripts/study/*.sh (sourced): the same for every
# strategy of a regime. FROZEN_EPOCHS=10 / EPOCHS=12 / VIT_EPOCHS=6 (frozen, fine-tuned ConvNeXt, fine-tuned ViT).
FROZEN_EPOCHS="${FROZEN_EPOCHS:-10}"
EPOCHS="${EPOCHS:-12}"
VIT_EPOCHS="${VIT_EPOCHS:-6}"
# Frozen (linear probes): evaluation at the end only.
FROZEN=(--freeze_backbone --lr 5e-3 --weight_decay 0.01 --scheduler_type cosine --epochs "$FROZEN_EPOCHS"
        --eval_every "$FROZEN_EPOCHS")
# Fine-tuned: the whole network, the new head at lr x 10, 1 warm-up epoch (the epochs are the model's).
FINETUNE=(--lr 5e-4 --scratch_lr_factor 10 --weight_decay 0.05 --scheduler_type cosine_with_warmup
          --scheduler_warmup_epochs 1)
