"""The one training loop, and the SimCLR step that trains a victim encoder.

``fit`` runs epochs of a ``step`` function: victim training (here), stealing, head
recreation and distillation differ only in the step they pass. The loop owns everything
they share: device placement of the batch, mixed precision, the per-iteration learning
rate, progress bars, one log line per epoch, metrics files, TensorBoard scalars,
checkpoints after every epoch (atomic) and resuming.

Reproducibility and resume: each epoch draws its data order and augmentations from a
generator seeded by ``(seed, epoch)``, so an interrupted run resumed from the checkpoint
of its last completed epoch replays exactly the epochs an uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm

from data_aug import NViews, iterate_batches
from loss import info_nce_views
from models import EncoderWithHead
from utils import append_jsonl, derive_seed

# A batch is whatever ``batches(epoch, generator)`` yields; a step turns one batch into
# (loss, {name: float metrics}, number of images processed).
Step = Callable[[Any, torch.Generator], tuple[torch.Tensor, dict, int]]

# Test hook: SSLSTEAL_KILL_AT_STEP=N sends SIGKILL to this process right after optimizer
# step N, simulating a crash in the middle of an epoch (used by the resume test).
_KILL_AT_STEP = "SSLSTEAL_KILL_AT_STEP"


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
              min_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then a cosine
    from ``base_lr`` to ``min_lr`` over the remaining steps of the whole run."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class Precision:
    """Mixed precision decided once: autocast + GradScaler on CUDA when enabled, no-ops otherwise."""

    device: torch.device
    enabled: bool = False
    dtype: torch.dtype = torch.float16
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.enabled = bool(self.enabled and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)


@dataclass
class FitResult:
    epochs_run: int
    last_epoch: int
    history: list[dict]


def fit(*, step: Step, batches: Callable[[int, torch.Generator], Iterable], steps_per_epoch: int,
        modules: Iterable[nn.Module], optimizer: torch.optim.Optimizer, epochs: int, base_lr: float,
        seed: int, precision: Precision, save: Callable[[dict], None], run_dir: Path,
        logger, start: Optional[dict] = None, warmup_epochs: float = 0.0,
        tensorboard: bool = True, desc: str = "train", log_every_n_steps: int = 50) -> FitResult:
    """Train for ``epochs`` epochs, checkpointing through ``save`` after every epoch.

    Args:
        step: ``step(batch, generator) -> (loss, metrics, n_images)``; runs under autocast.
        batches: ``batches(epoch, generator) -> iterable of batches`` for that epoch.
        steps_per_epoch: batches per epoch (sets the cosine schedule's horizon).
        modules: the trainable modules (put in train mode).
        save: called with ``{"epoch", "step", "optimizer", "scaler", "history"}`` after each epoch;
            it writes the checkpoint (atomically) with whatever else the caller keeps in it.
        start: a loaded checkpoint to resume from (its weights already loaded by the caller);
            the optimizer and scaler states and the epoch counter are restored here.
    """
    modules = list(modules)
    total_steps = max(1, epochs * steps_per_epoch)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    first_epoch, global_step, history = 0, 0, []
    if start is not None:
        first_epoch = int(start["epoch"])
        global_step = int(start.get("step", first_epoch * steps_per_epoch))
        optimizer.load_state_dict(start["optimizer"])
        if start.get("scaler"):
            precision.scaler.load_state_dict(start["scaler"])
        history = list(start.get("history", []))
        logger.info(f"resuming from {run_dir / 'checkpoint.pt'}: {first_epoch} of {epochs} epochs done")
    if first_epoch >= epochs:
        logger.info(f"nothing to do: all {epochs} epochs are already done")
        return FitResult(0, first_epoch, history)

    kill_at = int(os.environ.get(_KILL_AT_STEP, "0") or 0)
    writer = _tensorboard(run_dir, logger) if tensorboard else None
    for module in modules:
        module.train()
    try:
        for epoch in range(first_epoch, epochs):
            generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
            t0, n_images, loss_sum, n_steps, sums = time.perf_counter(), 0, 0.0, 0, {}
            bar = tqdm(batches(epoch, generator), total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}",
                       leave=False, dynamic_ncols=True, disable=None)
            lr = base_lr
            for batch in bar:
                lr = cosine_lr(global_step, total_steps, base_lr, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with precision.autocast():
                    loss, metrics, n = step(batch, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                             f"{global_step}; lower --lr or check the inputs")
                optimizer.zero_grad(set_to_none=True)
                precision.scaler.scale(loss).backward()
                precision.scaler.step(optimizer)
                precision.scaler.update()
                global_step += 1
                value = loss.item()
                loss_sum, n_steps, n_images = loss_sum + value, n_steps + 1, n_images + n
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                if writer is not None and global_step % log_every_n_steps == 0:
                    writer.add_scalar(f"{desc}/loss_step", value, global_step)
                    writer.add_scalar(f"{desc}/lr", lr, global_step)
                if kill_at and global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            bar.close()
            if n_steps == 0:
                raise ValueError("an epoch produced no batch: the dataset is smaller than one batch "
                                 "(lower -b/--batch-size)")
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": global_step, "loss": loss_sum / n_steps, "lr": lr,
                      "seconds": round(seconds, 3), "images_per_s": round(n_images / max(seconds, 1e-9), 1)}
            record.update({k: v / n_steps for k, v in sums.items()})
            history.append(record)
            extra = "".join(f" {k} {v / n_steps:.4f}" for k, v in sums.items())
            logger.info(f"{desc} epoch {epoch + 1}/{epochs} loss {record['loss']:.4f}{extra} "
                        f"lr {lr:.3e} time {seconds:.1f}s {record['images_per_s']:.0f} img/s")
            append_jsonl(run_dir / "metrics.jsonl", record)
            if writer is not None:
                for k, v in record.items():
                    if k not in ("epoch", "step"):
                        writer.add_scalar(f"{desc}/{k}", v, epoch + 1)
                writer.flush()
            save({"epoch": epoch + 1, "step": global_step, "optimizer": optimizer.state_dict(),
                  "scaler": precision.scaler.state_dict() if precision.scaler.is_enabled() else None,
                  "history": history})
    finally:
        if writer is not None:
            writer.close()
    return FitResult(epochs - first_epoch, epochs, history)


def _tensorboard(run_dir: Path, logger):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in requirements.txt; a missing one only loses the plots
        logger.info("tensorboard is not installed; scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


# ----------------------------------------------------------------------------- SimCLR


SimCLRModel = EncoderWithHead
"""Encoder f and projection head g, kept as separate modules; ``forward`` is g(f(x))."""


def simclr_step(model: nn.Module, augment: Callable, *, n_views: int = 2, temperature: float = 0.07) -> Step:
    """The SimCLR step: ``n_views`` augmented views of each image, InfoNCE on the head outputs."""
    views_of = NViews(augment, n_views)

    def step(batch, generator: torch.Generator):
        images = batch[0]
        views = torch.cat(views_of(images, generator))  # view-major: all first views, then second
        z = model(views)
        loss = info_nce_views(z.view(n_views, images.shape[0], -1), temperature=temperature)
        return loss, {}, views.shape[0]

    return step


def epoch_batches(dataset, batch_size: int, device: torch.device, workers: int = 0,
                  drop_last: bool = True) -> Callable[[int, torch.Generator], Iterable]:
    """``batches(epoch, generator)`` over ``dataset``, shuffled by the epoch's generator."""
    def batches(epoch: int, generator: torch.Generator):
        return iterate_batches(dataset, batch_size, shuffle=True, drop_last=drop_last,
                               generator=generator, device=device, workers=workers)

    return batches
