"""The training step's parts, shared by every strategy: the loops (engine), the loss, the optimiser and
schedule, class and group balancing, the best-epoch rule and mixup/cutmix on images with masks."""
