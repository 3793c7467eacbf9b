"""The one training loop, and the steps that train victim encoders.

``fit`` runs epochs of a ``step`` function: victim training (here: SimCLR's InfoNCE, the
soft nearest-neighbour and the supervised contrastive victims, and a supervised classifier),
stealing, head recreation and distillation differ only in the step they pass. The loop owns everything
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
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_aug import NViews, iterate_batches, to_float
from loss import SPECS, info_nce_views, softnn, supcon
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


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_from_flags(config: dict, device: torch.device) -> Precision:
    """Mixed precision from a run's flags, decided once: ``--precision`` (the ImageNet path: auto =
    bf16 autocast on CUDA; fp32, bf16 or fp16), else the reference's ``--fp16-precision`` (float16
    autocast and a GradScaler on CUDA; the reference made a GradScaler without autocast, i.e. no
    effect), else off, so that numbers do not depend on it. Always fp32 on CPU."""
    choice = config.get("precision") or ("fp16" if config.get("fp16_precision") else "fp32")
    return Precision(device, enabled=choice in ("auto", "bf16", "fp16"),
                     dtype=PRECISION_DTYPES.get(choice, torch.bfloat16))


@dataclass
class FitResult:
    epochs_run: int
    last_epoch: int
    history: list[dict]


@dataclass(frozen=True)
class _Loop:
    """What every optimizer step of one ``fit`` run shares; fixed for the whole run."""

    step: Step
    optimizer: torch.optim.Optimizer
    precision: Precision
    base_lr: float
    total_steps: int  # the cosine schedule's horizon, in optimizer steps
    warmup_steps: int
    desc: str
    log_every_n_steps: int
    kill_at: int  # the optimizer step after which the test hook SIGKILLs this process; 0 = never
    writer: Any = None  # TensorBoard SummaryWriter on the main process, else None
    dist: Any = None


@dataclass
class _EpochTotals:
    """What the optimizer steps of one epoch add up to."""

    step: int  # global optimizer steps done, the epoch's included
    lr: float  # the learning rate of the epoch's last step
    loss_sum: float = 0.0
    n_steps: int = 0
    n_images: int = 0
    sums: dict = field(default_factory=dict)  # {metric name: sum over the epoch's steps}

    def add(self, loss: float, metrics: dict, n_images: int) -> None:
        self.step += 1
        self.loss_sum += loss
        self.n_steps += 1
        self.n_images += n_images
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)


def fit(*, step: Step, batches: Callable[[int, torch.Generator], Iterable], steps_per_epoch: int,
        modules: Iterable[nn.Module], optimizer: torch.optim.Optimizer, epochs: int, base_lr: float,
        seed: int, precision: Precision, save: Callable[[dict], None], run_dir: Path,
        logger, start: Optional[dict] = None, warmup_epochs: float = 0.0,
        tensorboard: bool = True, desc: str = "train", log_every_n_steps: int = 50,
        evaluate: Optional[Callable[[int], dict]] = None, dist=None) -> FitResult:
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
        evaluate: optional ``evaluate(epoch) -> {name: float}``, called after each epoch's steps
            with ``modules`` in eval mode and gradients off (then back to train mode); its
            metrics join the epoch's record, log line, metrics.jsonl and TensorBoard.
        dist: a :class:`distributed.Dist` when this is one process of several (DDP): every rank
            runs the loop on its own batches; the logged loss is the mean over ranks, the image
            counts their sum, and only the main process shows progress, writes metrics.jsonl
            and TensorBoard (``save`` runs on every rank and decides who writes).
    """
    main = dist is None or dist.is_main
    modules = list(modules)
    first_epoch, global_step, history = _restore(start, optimizer, precision, steps_per_epoch)
    if start is not None:
        logger.info(f"resuming from {run_dir / 'checkpoint.pt'}: {first_epoch} of {epochs} epochs done")
    if first_epoch >= epochs:
        logger.info(f"nothing to do: all {epochs} epochs are already done")
        return FitResult(0, first_epoch, history)

    loop = _Loop(step=step, optimizer=optimizer, precision=precision, base_lr=base_lr,
                 total_steps=max(1, epochs * steps_per_epoch),
                 warmup_steps=int(round(warmup_epochs * steps_per_epoch)), desc=desc,
                 log_every_n_steps=log_every_n_steps, kill_at=int(os.environ.get(_KILL_AT_STEP, "0") or 0),
                 writer=_tensorboard(run_dir, logger) if tensorboard and main else None, dist=dist)
    for module in modules:
        module.train()
    try:
        for epoch in range(first_epoch, epochs):
            generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
            t0 = time.perf_counter()
            bar = tqdm(batches(epoch, generator), total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}",
                       leave=False, dynamic_ncols=True, disable=None if main else True)
            totals = _train_epoch(loop, bar, generator, epoch, global_step)
            seconds = time.perf_counter() - t0
            global_step = totals.step
            record = _epoch_record(epoch, totals, seconds, dist)
            evaluated = _evaluate(evaluate, modules, epoch)
            record.update(evaluated)
            history.append(record)
            logger.info(_epoch_line(desc, epoch, epochs, record, totals, evaluated, seconds))
            _write_epoch(record, run_dir, main, loop.writer, desc, epoch)
            save({"epoch": epoch + 1, "step": global_step, "optimizer": optimizer.state_dict(),
                  "scaler": precision.scaler.state_dict() if precision.scaler.is_enabled() else None,
                  "history": history})
    finally:
        if loop.writer is not None:
            loop.writer.close()
    return FitResult(epochs - first_epoch, epochs, history)


def _restore(start: Optional[dict], optimizer: torch.optim.Optimizer, precision: Precision,
             steps_per_epoch: int) -> tuple[int, int, list[dict]]:
    """``(epochs done, optimizer steps done, history)`` of a run: nothing for a fresh one (``start`` None),
    else the checkpoint's, whose optimizer and GradScaler states go into ``optimizer`` and ``precision``."""
    if start is None:
        return 0, 0, []
    first_epoch = int(start["epoch"])
    global_step = int(start.get("step", first_epoch * steps_per_epoch))  # older checkpoints lack "step"
    optimizer.load_state_dict(start["optimizer"])
    if start.get("scaler"):
        precision.scaler.load_state_dict(start["scaler"])
    return first_epoch, global_step, list(start.get("history", []))


def _train_epoch(loop: _Loop, bar, generator: torch.Generator, epoch: int, global_step: int) -> _EpochTotals:
    """The optimizer steps of epoch ``epoch`` (0-based) over ``bar`` (a tqdm over its batches), the
    first being global step ``global_step``; ``generator`` is the epoch's (augmentations draw from it)."""
    totals = _EpochTotals(step=global_step, lr=loop.base_lr)
    for batch in bar:
        lr = cosine_lr(totals.step, loop.total_steps, loop.base_lr, loop.warmup_steps)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss, metrics, n = _optimizer_step(loop, batch, generator, epoch, totals.step)
        value = (loss.detach() if loop.dist is None else loop.dist.average(loss.detach())).item()
        totals.add(value, metrics, n)
        totals.lr = lr
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if loop.writer is not None and totals.step % loop.log_every_n_steps == 0:
            loop.writer.add_scalar(f"{loop.desc}/loss_step", value, totals.step)
            loop.writer.add_scalar(f"{loop.desc}/lr", lr, totals.step)
        if loop.kill_at and totals.step == loop.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if totals.n_steps == 0:
        raise ValueError("an epoch produced no batch: the dataset is smaller than one batch "
                         "(lower -b/--batch-size)")
    return totals


def _optimizer_step(loop: _Loop, batch, generator: torch.Generator, epoch: int,
                    global_step: int) -> tuple[torch.Tensor, dict, int]:
    """One optimizer step on ``batch``: ``loop.step`` under autocast, then backward through the
    GradScaler; returns the step's ``(loss, metrics, n_images)``. Refuses a non-finite loss."""
    with loop.precision.autocast():
        loss, metrics, n = loop.step(batch, generator)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                 f"{global_step}; lower --lr or check the inputs")
    loop.optimizer.zero_grad(set_to_none=True)
    loop.precision.scaler.scale(loss).backward()
    loop.precision.scaler.step(loop.optimizer)
    loop.precision.scaler.update()
    return loss, metrics, n


def _epoch_record(epoch: int, totals: _EpochTotals, seconds: float, dist) -> dict:
    """The epoch's line of metrics.jsonl (and of the checkpoint's history), before evaluation:
    means over its steps, and images counted over all ranks."""
    n_images = totals.n_images if dist is None else int(dist.sum(totals.n_images))
    record = {"epoch": epoch + 1, "step": totals.step, "loss": totals.loss_sum / totals.n_steps, "lr": totals.lr,
              "seconds": round(seconds, 3), "images_per_s": round(n_images / max(seconds, 1e-9), 1)}
    record.update({k: v / totals.n_steps for k, v in totals.sums.items()})
    return record


def _evaluate(evaluate: Optional[Callable[[int], dict]], modules: list[nn.Module], epoch: int) -> dict:
    """``evaluate(epoch)`` as floats, run with ``modules`` in eval mode and no gradients (then back in
    train mode); ``{}`` without ``evaluate``."""
    if evaluate is None:
        return {}
    for module in modules:
        module.eval()
    with torch.no_grad():
        evaluated = {k: float(v) for k, v in evaluate(epoch).items()}
    for module in modules:
        module.train()
    return evaluated


def _epoch_line(desc: str, epoch: int, epochs: int, record: dict, totals: _EpochTotals, evaluated: dict,
                seconds: float) -> str:
    """The log line of an epoch: loss, the step metrics' means, the evaluation, lr and speed."""
    extra = "".join(f" {k} {v / totals.n_steps:.4f}" for k, v in totals.sums.items())
    extra += "".join(f" {k} {v:.4f}" for k, v in evaluated.items())
    return (f"{desc} epoch {epoch + 1}/{epochs} loss {record['loss']:.4f}{extra} "
            f"lr {totals.lr:.3e} time {seconds:.1f}s {record['images_per_s']:.0f} img/s")


def _write_epoch(record: dict, run_dir: Path, main: bool, writer, desc: str, epoch: int) -> None:
    """Append ``record`` to ``run_dir``/metrics.jsonl (on the ``main`` process only) and its values to
    TensorBoard (with a ``writer``), at x = the epoch's number."""
    if main:
        append_jsonl(run_dir / "metrics.jsonl", record)
    if writer is not None:
        for k, v in record.items():
            if k not in ("epoch", "step"):
                writer.add_scalar(f"{desc}/{k}", v, epoch + 1)
        writer.flush()


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


def _two_views(name: str, n_views: int) -> None:
    if n_views != 2:
        raise ValueError(f"the {name} victim compares exactly two views of each image (--n-views 2), "
                         f"got n_views={n_views}")


def softnn_step(model: nn.Module, augment: Callable, *, temperature: float = 100.0) -> Step:
    """The soft nearest-neighbour victim step (Frosst et al. 2019; the reference's ``softnn``).

    Two augmented views of each of the ``B`` images go through the model (encoder and head);
    ``loss.softnn`` runs on the ``2B`` outputs ``[view 1; view 2]`` (squared Euclidean
    distances, no normalisation, as the reference) with the image index as the identity:
    row ``i`` of view 1 and row ``i`` of view 2 are the only same-identity pair.
    ``temperature`` is ``--temperaturesn``.
    """
    views_of = NViews(augment, 2)

    def step(batch, generator: torch.Generator):
        images = batch[0]
        first, second = views_of(images, generator)
        z = model(torch.cat((first, second)))
        b = images.shape[0]
        loss = softnn(z[:b], z[b:], temperature=temperature)
        return loss, {}, 2 * b

    return step


def supcon_step(model: nn.Module, augment: Callable, *, temperature: float = 0.07) -> Step:
    """The supervised contrastive victim step (Khosla et al. 2020; the reference's ``supcon``).

    Two augmented views of each of the ``B`` images go through the model; ``loss.supcon``
    runs on the ``2B`` outputs ``[view 1; view 2]`` with the images' TRUE class labels: every
    output with the same label (the other view of the same image, and every view of the
    other images of that class) is a positive. The outputs are L2-normalised inside
    ``loss.supcon``; the reference's victim path did not normalise them (a bug: SupCon is
    defined on the unit sphere). ``temperature`` is ``--temperature``. Needs an even ``B``
    (``loss.supcon`` takes the two views as its two blocks of view-major rows, one label per row).
    """
    views_of = NViews(augment, 2)

    def step(batch, generator: torch.Generator):
        images, labels = batch[0], batch[1]
        b = images.shape[0]
        if b % 2:
            raise ValueError(f"the supcon victim needs an even batch size, got {b}")
        first, second = views_of(images, generator)
        z = model(torch.cat((first, second)))
        # the two blocks are the two views; one label per row of a block (the row's image)
        loss = supcon(z[:b], z[b:], labels=labels.to(z.device), n_views=2, temperature=temperature)
        return loss, {}, 2 * b

    return step


VICTIM_LOSSES = ("infonce", "softnn", "supcon")
"""The losses a victim encoder can be trained with (``run.py --losstype``)."""


def victim_step(losstype: str, model: nn.Module, augment: Callable, *, n_views: int = 2,
                temperature: float = 0.07, temperaturesn: float = 100.0) -> Step:
    """The step of a ``losstype`` victim (one of :data:`VICTIM_LOSSES`); ``temperature`` is the
    InfoNCE / SupCon tau, ``temperaturesn`` the soft-NN T. softnn and supcon need ``n_views == 2``."""
    if losstype == "infonce":
        return simclr_step(model, augment, n_views=n_views, temperature=temperature)
    if losstype not in VICTIM_LOSSES:
        raise ValueError(f"no victim step for loss {losstype!r}; use one of {', '.join(VICTIM_LOSSES)}")
    _two_views(losstype, n_views)
    if losstype == "softnn":
        return softnn_step(model, augment, temperature=temperaturesn)
    return supcon_step(model, augment, temperature=temperature)


def victim_needs_labels(losstype: str) -> bool:
    """Whether a victim loss trains on the true class labels (from the loss table)."""
    return SPECS[losstype].labels


# ----------------------------------------------------------------------------- supervised


def supervised_step(model: nn.Module, augment: Callable) -> Step:
    """A supervised classifier step: one augmented view of each image, cross-entropy on the
    true labels; reports the batch's training top-1 accuracy (%) as ``train_top1``."""
    def step(batch, generator: torch.Generator):
        images, labels = batch[0], batch[1]
        logits = model(augment(images, generator))
        labels = labels.to(logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        top1 = (logits.detach().argmax(1) == labels).float().mean() * 100.0
        return loss, {"train_top1": top1.item()}, images.shape[0]

    return step


@torch.no_grad()
def classifier_accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy (%) of ``model`` (images in [0, 1] -> logits) over a whole labelled dataset."""
    correct, total = 0, 0
    for images, labels, _ in iterate_batches(dataset, batch_size, device=device):
        pred = model(to_float(images)).argmax(1)
        correct += int((pred == labels.to(pred.device)).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)


def epoch_batches(dataset, batch_size: int, device: torch.device, workers: int = 0,
                  drop_last: bool = True) -> Callable[[int, torch.Generator], Iterable]:
    """``batches(epoch, generator)`` over ``dataset``, shuffled by the epoch's generator."""
    def batches(epoch: int, generator: torch.Generator):
        return iterate_batches(dataset, batch_size, shuffle=True, drop_last=drop_last,
                               generator=generator, device=device, workers=workers)

    return batches
