"""Training and evaluation loops shared by every strategy: AMP, grad clipping, exact cross-process test counts.

Batches are tuples ``(*inputs, labels)``; the model is called as ``model(*inputs)``, so a strategy that needs masks
just returns ``(image, mask, label)`` from its dataset and takes ``(image, mask)`` in its forward. Every model is
read as ``{head: logits}`` (:func:`bgmask.models.heads.outputs`; several heads on one forward:
:mod:`bgmask.models.probes`): training back-propagates the sum of the heads' losses and evaluation reports every head.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from timm.utils import NativeScaler, dispatch_clip_grad
from torch import nn
from torch.utils.data import Dataset, Sampler

from bgmask.data.groups import Groups, group_metrics
from bgmask.errors import NonFiniteLossError
from bgmask.infra.distributed import agree, all_reduce_sum
from bgmask.infra.progress import progress_bar
from bgmask.models import heads


@dataclass
class AmpSettings:
    """Mixed precision: ``dtype`` None means fp32. fp16 uses a GradScaler, bf16 does not need one."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        """What results.json records: ``fp32``, ``bfloat16`` or ``float16`` (autocast dtype)."""
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


class IndexedDataset(Dataset):
    """Wraps a dataset so each item also carries its index (for per-group metrics): ``(*item, index)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` gets indices ``r, r+w, ...`` — every image exactly once, no padding."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _to_device(batch: Iterable, device: torch.device) -> list:
    return [x.to(device, non_blocking=True) if torch.is_tensor(x) else x for x in batch]


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: Callable,
                    device: torch.device, amp: AmpSettings, scaler: NativeScaler | None = None,
                    batch_transform: Callable | None = None, grad_norm_clip: float = 0.0, max_batches: int = 0,
                    progress: bool = True, desc: str = "train", should_stop: Callable[[], bool] | None = None,
                    on_update: Callable[[], None] | None = None, sync_every: int = 10,
                    input_tail: Callable | None = None, with_groups: bool = False) -> dict:
    """One pass over ``loader``.

    The host waits for the device only every ``sync_every`` steps and at the end (as timm and DINOv2 do at their
    logging interval): that is when the loss is checked for NaN/inf, the progress line updated and ``should_stop``
    polled. Every process polls at the same steps, so a collective inside ``should_stop`` stays matched.

    Args:
        scaler: timm's ``NativeScaler`` for fp16 AMP (scaled backward, unscale before clipping, step, update).
        batch_transform: ``(inputs, labels) -> (inputs, targets)`` applied on device (mixup/cutmix).
        input_tail: ``(raw images, device) -> images``, the end of the image pipeline on the device (a
            :class:`~bgmask.data.transforms.DeviceTail`), before ``batch_transform``.
        grad_norm_clip: clip the global gradient norm to this value (0: off).
        max_batches: stop after this many batches (0: the whole loader).
        should_stop: polled every ``sync_every`` steps; when it returns True the epoch ends there (preemption).
        on_update: called after every optimizer step (per-iteration learning-rate schedules).
        sync_every: steps between host synchronisations.
        with_groups: batches are ``(*inputs, labels, groups)`` and the criterion is called
            ``criterion(logits, targets, groups)`` (objectives that weight groups: GroupDRO).

    Returns:
        ``{"loss": mean loss over seen samples, "images": count, "steps": optimizer steps, "seconds": time,
        "images_per_s": throughput, "completed": False when stopped early}``.
    """
    model.train()
    names = heads.names_of(model)
    sync_every = max(1, sync_every)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # stays on the device between syncs
    checked_loss, checked_steps, seen, start = 0.0, 0, 0, time.perf_counter()
    num_batches = len(loader) if not max_batches else min(max_batches, len(loader))
    bar = progress_bar(total=num_batches, desc=desc, disable=not progress)
    completed, steps = True, 0
    for step, batch in enumerate(loader):
        if step >= num_batches:
            break
        *inputs, labels = _to_device(batch, device)
        extra = ()
        if with_groups:
            *inputs, labels, group_ids = [*inputs, labels]
            extra = (group_ids,)
        if input_tail is not None:
            inputs[0] = input_tail(inputs[0], device)
        targets = labels
        if batch_transform is not None:
            inputs, targets = batch_transform(inputs, labels)
        with amp.autocast():
            # Several heads: the sum gives each head exactly its own loss's gradient; the mean is what is logged.
            losses = [criterion(o, targets, *extra) for o in heads.outputs(model(*inputs), names).values()]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler(loss, optimizer, clip_grad=grad_norm_clip or None, parameters=model.parameters())
        else:
            loss.backward()
            if grad_norm_clip:
                dispatch_clip_grad(model.parameters(), grad_norm_clip)
            optimizer.step()
        if on_update is not None:
            on_update()
        n = labels.shape[0]
        steps += 1
        seen += n
        loss_sum += loss.detach().double() * (n / len(losses))
        bar.update()
        if steps % sync_every == 0 or step + 1 == num_batches:
            total = loss_sum.item()  # the one host sync of the interval
            if not math.isfinite(total):
                raise NonFiniteLossError(f"training loss is {total} within steps {checked_steps + 1}-{steps} of the "
                                         f"epoch; lower --lr, enable --grad_norm_clip, or check the inputs. The "
                                         f"last good checkpoint is kept.")
            checked_loss, checked_steps = total, steps
            bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
            if should_stop is not None and should_stop():
                completed = False
                break
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": checked_loss / max(seen, 1), "images": seen, "steps": steps, "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9), "completed": completed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: AmpSettings, groups: Groups | None = None,
             progress: bool = True, desc: str = "eval", agree_first: bool = False) -> dict[str, dict]:
    """Top-1 of every head over a loader of ``(*inputs, labels, index)`` batches, summed exactly across processes:
    ``{head: metrics}`` (:func:`bgmask.models.heads.outputs`; one entry for a single-head model).

    Each process must see a disjoint shard (:class:`ShardSampler`); correct/total counts are all-reduced, so every
    image counts once whatever the number of processes or batch size. With ``groups`` (a group id per dataset
    position) it also reports top-1 per group, the worst group and the group unions the benchmark names
    (:func:`bgmask.data.groups.group_metrics`). With ``agree_first`` a failure on any process raises
    :class:`~bgmask.infra.distributed.PeerFailure` on every process before the counts are reduced (optional stages).
    """
    model.eval()
    names = heads.names_of(model)
    error, counts = None, None
    try:
        counts = _count(model, names, loader, device, amp, groups, progress, desc)
    except Exception as e:  # noqa: BLE001 - re-raised below, on every process at once when agreeing
        if not agree_first:
            raise
        error = e
    if agree_first:
        agree(error, device)
    counts = all_reduce_sum(counts).cpu()
    return {name: _metrics(row, groups) for name, row in zip(names, counts)}


def _count(model, names, loader, device, amp: AmpSettings, groups: Groups | None, progress: bool,
           desc: str) -> torch.Tensor:
    """This process's counts per head: ``[correct, total, summed cross-entropy, group correct..., group n...]``."""
    num_groups = len(groups.names) if groups is not None else 0
    # Counts stay on the device until the end: no host sync per batch.
    counts = torch.zeros(len(names), 3 + 2 * num_groups, dtype=torch.float64, device=device)
    group_t = torch.as_tensor(groups.ids).to(device) if groups is not None else None
    for batch in progress_bar(loader, desc=desc, disable=not progress):
        *inputs, labels, index = _to_device(batch, device)
        with amp.autocast():
            out = heads.outputs(model(*inputs), names)
        group = group_t[index] if group_t is not None else None
        for row, name in zip(counts, names):
            hits = (out[name].argmax(dim=1) == labels).to(torch.float64)
            row[0] += hits.sum()
            row[1] += hits.numel()
            row[2] += nn.functional.cross_entropy(out[name].float(), labels, reduction="sum").double()
            if group is not None:  # index_add_, not bincount: bincount on CUDA reads its maximum back to the host
                row[3:3 + num_groups].index_add_(0, group, hits)
                row[3 + num_groups:].index_add_(0, group, torch.ones_like(hits))
    return counts


def _metrics(counts: torch.Tensor, groups: Groups | None) -> dict:
    total = int(counts[1])
    # loss: the mean cross-entropy without label smoothing (breaks ties in model selection)
    result = {"top1": 100.0 * float(counts[0]) / max(total, 1), "correct": int(counts[0]), "num_images": total,
              "loss": float(counts[2]) / max(total, 1)}
    if groups is not None:
        n = len(groups.names)
        result.update(group_metrics(counts[3:3 + n].numpy(), counts[3 + n:].numpy(), groups))
    return result
