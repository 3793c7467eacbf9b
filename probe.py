"""Linear probes of a frozen encoder, saved probes, fidelity, and the linear-evaluation CLI library.

Two probes measure a representation:

* ``lbfgs`` (:func:`linear_probe`): features of the frozen encoder (eval mode) once, then a
  multinomial logistic regression by full-batch L-BFGS. Features are standardised
  (train-split mean and std per dimension) so that the scale of a representation does not
  decide the result, and the L2 penalty is picked from a small grid on a held-out fifth of
  the training split before the final fit on the whole split.
* ``reference`` (:func:`reference_probe`): the reference's linear_eval.py. A linear layer
  trained with Adam (weight decay 8e-4) and cross-entropy through forward passes of the
  frozen encoder, for 100 epochs, over the unshuffled training set, each epoch stopping
  once ``batches * B >= num_labeled``; the test accuracy after the last epoch is reported.
  Its BatchNorm quirk is switchable: ``bn="train"`` (the reference: the encoder is never put
  in eval mode, so BatchNorm uses batch statistics when training and testing the probe) or
  ``bn="eval"``. It runs on a deep copy of the encoder, so the caller's encoder never changes.

``sgd`` (:func:`sgd_probe`) is the reference's ImageNet-path probe (its linsimsiam.py), used by
``linsimsiam.py``: a linear layer (weight ~ N(0, 0.01^2), bias 0) on the raw features of the
frozen encoder in eval mode, SGD with momentum (or LARS) at ``lr x B / 256``, cosine per epoch;
since the encoder never changes, its features are computed once.

In all of them, the caller's encoder is checked unchanged afterwards (every parameter and buffer).
A fitted probe is a :class:`Probe` (standardise, then a linear layer; the reference's probes
standardise with mean 0 and std 1); :func:`save_probe` writes it as a small
self-describing file that loads with ``weights_only=True``.

``linear_eval.py`` and ``linear_eval_sup.py`` are thin CLIs over :func:`build_eval_parser`
and :func:`evaluate`; ``linear_finetune_simclr.py`` uses :func:`fit_downstream`,
:func:`probe_logits`, :func:`fidelity` and :func:`finetune`. Attacks, defenses and the
legitimate user import the probes from here.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_aug import DATASETS, SimCLRAugment, dataset_info, get_dataset, iterate_batches, split_holdout, to_float
from errors import UserError
from utils import accuracy, atomic_path

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PROBES = ("reference", "lbfgs")  # linear_eval*.py's --probe; fit_downstream also fits "augment" and "sgd"
PROBE_FORMAT = "sslsteal-probe/1"
# the reference's fixed settings (linear_eval.py)
REFERENCE_VICTIM_LR = 3e-4      # Adam lr of the victim's probe (the reference ignores --lr for the victim)
REFERENCE_LR = 1e-4             # its --lr default, used for a stolen model
REFERENCE_WD = 8e-4
REFERENCE_NUM_LABELED = 50000   # its -n default
REFERENCE_TEST_BATCH = 64       # its batch size on the last 1,000 test images (2B on the full STL10 split)
# the reference's linsimsiam.py probe (the ImageNet path)
SGD_BASE_LR = 0.1               # its --lr default; the learning rate is lr x B / 256
SGD_INIT_STD = 0.01             # fc.weight ~ N(0, 0.01^2), fc.bias = 0


def _inputs(images: torch.Tensor, transform: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """A batch of uint8 images (on the device) as the encoder's input: ``transform(images)``,
    or float in [0, 1] without one."""
    return to_float(images) if transform is None else transform(images)


@torch.no_grad()
def extract_features(encoder: Optional[nn.Module], dataset, *, device: torch.device,
                     batch_size: int = 512, workers: int = 0,
                     limit: Optional[int] = None, transform: Optional[Callable] = None,
                     indices: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations ``N x D`` (float32, CPU) and labels of a whole dataset (its first
    ``limit`` images when given; the images at ``indices``, in that order, when given).

    ``transform`` maps each batch of uint8 images, on ``device``, to the encoder's input (e.g.
    ``lambda x: imagenet.view(x, 224)`` to resize native-size images on the device); without
    it the input is the images as float in [0, 1]. ``encoder=None`` returns that input
    flattened (the pixel baseline).
    """
    if limit is not None and indices is not None:
        raise ValueError("extract_features takes limit or indices, not both")
    if limit is not None:
        indices = torch.arange(min(limit, len(dataset)))
    feats, labels = [], []
    for images, y, _ in iterate_batches(dataset, batch_size, device=device, workers=workers, indices=indices):
        x = _inputs(images, transform)
        out = x.flatten(1) if encoder is None else encoder(x)
        feats.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    """Full-batch L-BFGS on cross-entropy + ``l2 * ||W||^2`` (deterministic)."""
    linear = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return linear


class Probe(nn.Module):
    """A fitted linear probe: standardise the features (train statistics), then a linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1).clone())
        self.register_buffer("std", std.reshape(1, -1).clone())
        self.linear = linear

    @property
    def feature_dim(self) -> int:
        return self.linear.in_features

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, *, num_classes: int,
                l2_grid: Sequence[float] = DEFAULT_L2_GRID, max_iter: int = 300, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[Probe, float, dict]:
    """Standardise, choose the L2 penalty on a held-out fifth of train, refit on all of it.

    Returns ``(probe, chosen l2, validation top-1 by l2)``.
    """
    device = torch.device(device)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xtr, ytr = ((train_x - mean) / std).to(device), train_y.to(device)
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed)).to(device)
    n_val = max(1, len(ytr) // 5)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    scores = {}
    for l2 in l2_grid:
        lin = _fit_logreg(xtr[fit_idx], ytr[fit_idx], num_classes, l2, max_iter)
        with torch.no_grad():
            scores[l2] = accuracy(lin(xtr[val_idx]), ytr[val_idx])[0]
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    probe = Probe(mean.to(device), std.to(device), _fit_logreg(xtr, ytr, num_classes, best, max_iter))
    return probe.eval().requires_grad_(False), best, {str(k): v for k, v in scores.items()}


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
              num_classes: int, l2_grid: Sequence[float] = DEFAULT_L2_GRID, max_iter: int = 300,
              seed: int = 0, device: torch.device | str = "cpu", return_probe: bool = False):
    """Train a probe (:func:`train_probe`) and evaluate it on the test features.

    Returns ``{"top1", "top5", "train_top1", "l2", "val_top1_by_l2"}`` (accuracies in %), and
    the :class:`Probe` as well (``(metrics, probe)``) with ``return_probe=True``.
    """
    probe, best, scores = train_probe(train_x, train_y, num_classes=num_classes, l2_grid=l2_grid,
                                      max_iter=max_iter, seed=seed, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(probe(test_x.to(probe.mean.device)), test_y.to(probe.mean.device), topk=(1, 5))
        train_top1 = accuracy(probe(train_x.to(probe.mean.device)), train_y.to(probe.mean.device))[0]
    metrics = {"top1": top1, "top5": top5, "train_top1": train_top1, "l2": best, "val_top1_by_l2": scores}
    return (metrics, probe) if return_probe else metrics


def freeze(encoder: nn.Module) -> dict:
    """Freeze an encoder (no grad, eval mode) and return a copy of its state for the check."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return snapshot(encoder)


def snapshot(encoder: nn.Module) -> dict:
    """A copy of every parameter and buffer, for :func:`assert_unchanged`."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def assert_unchanged(encoder: nn.Module, before: dict) -> None:
    """Every parameter and buffer (BatchNorm statistics included) is as before the probe."""
    for k, v in encoder.state_dict().items():
        if not torch.equal(v, before[k]):
            raise AssertionError(f"the frozen encoder changed during linear evaluation: {k}")


def _num_classes(train_set) -> int:
    if not train_set.num_classes:
        raise UserError(f"{train_set.name} has no labels; pick a labelled --dataset-test")
    return int(train_set.num_classes)


def linear_probe(encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device,
                 seed: int = 0, batch_size: int = 512, workers: int = 0, num_labeled: Optional[int] = None,
                 return_probe: bool = False, transform: Optional[Callable] = None,
                 features: Optional[tuple] = None, **probe_kwargs):
    """Linear evaluation of a frozen ``encoder`` (``None``: raw pixels) by L-BFGS on fixed
    features; a metrics dict (and the :class:`Probe` with ``return_probe=True``).

    ``num_labeled``: train on the first ``num_labeled`` training images only. ``transform``:
    the encoder's input from a uint8 batch (:func:`extract_features`). ``features``:
    ``(train_x, train_y, test_x, test_y)`` already extracted (e.g. sharded over processes), so
    no feature pass runs here; ``train_set`` then only names the classes.
    """
    t0 = time.perf_counter()
    before = None
    if encoder is not None and features is None:
        encoder = encoder.to(device)
        before = freeze(encoder)
    num_classes = _num_classes(train_set)
    if features is None:
        xtr, ytr = extract_features(encoder, train_set, device=device, batch_size=batch_size, workers=workers,
                                    limit=num_labeled, transform=transform)
        xte, yte = extract_features(encoder, test_set, device=device, batch_size=batch_size, workers=workers,
                                    transform=transform)
    else:
        xtr, ytr, xte, yte = features
    metrics, probe = fit_probe(xtr, ytr, xte, yte, num_classes=num_classes, seed=seed, device=device,
                               return_probe=True, **probe_kwargs)
    if before is not None:
        assert_unchanged(encoder, before)
    metrics.update(feature_dim=int(xtr.shape[1]), n_train=len(ytr), n_test=len(yte),
                   seconds=round(time.perf_counter() - t0, 2))
    return (metrics, probe) if return_probe else metrics


# ----------------------------------------------------------------------- the reference's probe


def frozen_copy(encoder: Optional[nn.Module], bn: str, device: torch.device | str) -> Optional[nn.Module]:
    """A deep copy of ``encoder`` without gradients, with BatchNorm in ``bn`` mode ("train": batch
    statistics, running statistics updated on the copy; "eval": running statistics)."""
    if bn not in ("train", "eval"):
        raise ValueError(f"bn must be 'train' or 'eval', got {bn!r}")
    if encoder is None:
        return None
    model = copy.deepcopy(encoder).to(device)
    model.requires_grad_(False)
    return model.train(bn == "train")


def _forward(model: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    if model is None:
        return x.flatten(1)
    try:
        return model(x).float()
    except ValueError as err:
        if "Expected more than 1 value per channel" in str(err):
            raise UserError("a batch of one image cannot go through BatchNorm in train mode; use --probe-bn eval "
                            "or a batch size that leaves no single-image batch") from err
        raise


@torch.no_grad()
def _logits(model: Optional[nn.Module], probe: nn.Module, dataset, *, device, batch_size: int,
            workers: int = 0, transform: Optional[Callable] = None) -> tuple[torch.Tensor, torch.Tensor]:
    out, labels = [], []
    for images, y, _ in iterate_batches(dataset, batch_size, device=device, workers=workers):
        out.append(probe(_forward(model, _inputs(images, transform))).float().cpu())
        labels.append(y.cpu())
    return torch.cat(out), torch.cat(labels)


def probe_logits(encoder: Optional[nn.Module], probe: nn.Module, dataset, *, device: torch.device | str,
                 bn: str = "eval", batch_size: int = 256, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (CPU) and labels of ``probe`` on ``encoder``'s features of every image of ``dataset``.

    The encoder runs as a :func:`frozen_copy` in ``bn`` mode, so the caller's encoder is never
    modified. With ``bn="train"`` the result depends on the batches: give the batch size the
    probe was tested with to reproduce its accuracy.
    """
    device = torch.device(device)
    return _logits(frozen_copy(encoder, bn, device), probe.to(device), dataset, device=device,
                   batch_size=batch_size, workers=workers)


def images_per_epoch(n_images: int, num_labeled: Optional[int], batch_size: int) -> int:
    """How many of the first training images the reference's probe sees per epoch: it stops an
    epoch once ``batches * batch_size >= num_labeled``."""
    if num_labeled is None:
        return n_images
    return min(n_images, -(-num_labeled // batch_size) * batch_size)


@torch.no_grad()
def _feature_dim(model: Optional[nn.Module], dataset, device, transform: Optional[Callable] = None) -> int:
    if model is None and transform is None:
        return 3 * dataset.image_size * dataset.image_size
    if isinstance(getattr(model, "out_dim", None), int):
        return model.out_dim
    was_training = model is not None and model.training
    images = next(iterate_batches(dataset, 2, device=device))[0]
    dim = _forward(None if model is None else model.eval(), _inputs(images, transform)).shape[1]
    if model is not None:
        model.train(was_training)
    return int(dim)


def reference_probe(encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device | str,
                    lr: float, weight_decay: float = REFERENCE_WD, epochs: int = 100, batch_size: int = 256,
                    num_labeled: Optional[int] = None, bn: str = "train", seed: int = 0,
                    test_batch_size: int = REFERENCE_TEST_BATCH, workers: int = 0, return_probe: bool = False,
                    transform: Optional[Callable] = None):
    """The reference's linear probe (its linear_eval.py), on a deep copy of ``encoder``.

    ``nn.Linear(feature_dim, num_classes)`` (default init, drawn from ``seed``) is trained with
    ``Adam(lr, weight_decay)`` and cross-entropy through no-grad forward passes of the frozen
    copy, ``epochs`` times over the *unshuffled* training set; each epoch stops once
    ``batches * batch_size >= num_labeled`` (``None``: the whole set). After every epoch the
    probe is tested (batches of ``test_batch_size``); the last epoch's test accuracy is the
    result, and the per-epoch curve is kept in ``metrics["curve"]``. ``bn="train"`` keeps the
    reference's quirk (BatchNorm in train mode in training and testing, so the copy's running
    statistics drift); ``bn="eval"`` freezes BatchNorm. Accuracy is exact over all test images
    (the reference averaged per-batch accuracies). ``encoder=None`` probes raw pixels.
    ``transform``: the encoder's input from a uint8 batch (:func:`extract_features`).

    Returns a metrics dict, or ``(metrics, probe)`` with ``return_probe=True``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    num_classes = _num_classes(train_set)
    before = None if encoder is None else snapshot(encoder)
    model = frozen_copy(encoder, bn, device)
    n_train = images_per_epoch(len(train_set), num_labeled, batch_size)
    order = torch.arange(n_train)  # the reference's loader: shuffle=False, a prefix of the split
    dim = _feature_dim(model, train_set, device, transform)
    with torch.random.fork_rng(devices=[]):  # a seeded default init that leaves the caller's RNG alone
        torch.manual_seed(seed)
        linear = nn.Linear(dim, num_classes)
    probe = Probe(torch.zeros(dim), torch.ones(dim), linear).to(device)
    optimizer = torch.optim.Adam(probe.linear.parameters(), lr=lr, weight_decay=weight_decay)
    curve: dict[str, list] = {"loss": [], "train_top1": [], "top1": [], "top5": []}
    for _ in tqdm(range(epochs), desc="probe", leave=False, disable=None):
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels, _ in iterate_batches(train_set, batch_size, device=device, workers=workers,
                                                 indices=order):
            with torch.no_grad():
                feats = _forward(model, _inputs(images, transform))
            logits = probe(feats)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        test_logits, test_labels = _logits(model, probe, test_set, device=device, batch_size=test_batch_size,
                                           workers=workers, transform=transform)
        top1, top5 = accuracy(test_logits, test_labels, topk=(1, 5))
        curve["loss"].append(round(loss_sum / max(seen, 1), 6))
        curve["train_top1"].append(round(100.0 * correct / max(seen, 1), 4))
        curve["top1"].append(round(top1, 4))
        curve["top5"].append(round(top5, 4))
    if encoder is not None:
        assert_unchanged(encoder, before)
    metrics = {"top1": top1, "top5": top5, "train_top1": curve["train_top1"][-1], "curve": curve,
               "feature_dim": dim, "n_train": n_train, "n_test": len(test_set),
               "seconds": round(time.perf_counter() - t0, 2)}
    probe = probe.eval().requires_grad_(False)
    return (metrics, probe) if return_probe else metrics


def augmented_probe(encoder: nn.Module, train_set, test_set, *, device: torch.device, seed: int = 0,
                    epochs: int = 100, lr: float = 1e-3, batch_size: int = 256,
                    freeze_backbone: bool = True, return_probe: bool = False):
    """A linear probe trained through augmented images (random crops of at least 80% of the
    area, and flips for the real datasets) on a frozen encoder, with Adam and cross-entropy.

    The features are standardised with the statistics of the un-augmented training set.
    ``freeze_backbone=False`` exists to show that the unchanged-backbone check fires.
    """
    t0 = time.perf_counter()
    encoder = encoder.to(device)
    if freeze_backbone:
        before = freeze(encoder)
    else:
        before = snapshot(encoder)
        encoder.train()
    xtr, _ = extract_features(encoder, train_set, device=device)
    mean, std = xtr.mean(0, keepdim=True).to(device), xtr.std(0, keepdim=True).clamp_min(1e-6).to(device)
    probe = Probe(mean, std, nn.Linear(xtr.shape[1], train_set.num_classes)).to(device)
    params = list(probe.linear.parameters()) + ([] if freeze_backbone else list(encoder.parameters()))
    optimizer = torch.optim.Adam(params, lr=lr)
    flip = 0.0 if DATASETS[train_set.name].offline else 0.5
    augment = SimCLRAugment(train_set.image_size, crop_scale=(0.8, 1.0), flip_p=flip, jitter_p=0.0,
                            gray_p=0.0, blur_p=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="probe", leave=False, disable=None):
        for images, labels, _ in iterate_batches(train_set, batch_size, shuffle=True, generator=gen, device=device):
            x = augment(images, gen).to(device)
            with torch.set_grad_enabled(not freeze_backbone):
                feats = encoder(x)
            loss = F.cross_entropy(probe(feats.float()), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    encoder.eval()
    xte, yte = extract_features(encoder, test_set, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(probe(xte.to(device)), yte.to(device), topk=(1, 5))
    assert_unchanged(encoder, before)
    metrics = {"top1": top1, "top5": top5, "augment": True, "epochs": epochs, "lr": lr,
               "feature_dim": int(xtr.shape[1]), "n_train": len(train_set), "n_test": len(yte),
               "seconds": round(time.perf_counter() - t0, 2)}
    return (metrics, probe.eval().requires_grad_(False)) if return_probe else metrics

# ------------------------------------------------------------- the reference's ImageNet-path probe


def sgd_init_lr(base_lr: float, batch_size: int) -> float:
    """The reference linsimsiam.py's learning-rate rule: ``init_lr = lr x B / 256``."""
    return base_lr * batch_size / 256


def fit_sgd_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                  num_classes: int, lr: float = SGD_BASE_LR, momentum: float = 0.9, weight_decay: float = 0.0,
                  epochs: int = 100, batch_size: int = 256, lars: bool = False, seed: int = 0,
                  device: torch.device | str = "cpu",
                  report: Optional[Callable[[int, dict], None]] = None) -> tuple[dict, Probe]:
    """The reference linsimsiam.py's probe, on fixed features (``N x D``, any device).

    ``nn.Linear(D, num_classes)`` with ``weight ~ N(0, 0.01^2)`` and ``bias = 0`` (drawn from
    ``seed``; the caller's random state is left alone) on the raw features (not standardised),
    trained with cross-entropy by SGD (momentum, weight decay; :class:`lars.LARS` with
    ``lars``) at ``init_lr = lr x batch_size / 256``, set at the start of epoch ``e`` to
    ``init_lr x (1 + cos(pi e / epochs)) / 2``, over the training features shuffled every epoch
    (from ``seed``; the last batch may be smaller). After every epoch the probe is tested on all
    test features; the last epoch's accuracy is the result (``top1``, ``top5``), the best epoch's
    is kept too (``best_top1``, ``best_epoch``), and the per-epoch curve is in ``curve``.
    ``report(epoch, row)`` (epochs counted from 1) is called after each epoch.

    Returns ``(metrics, probe)``: a :class:`Probe` with mean 0 and std 1.
    """
    from lars import LARS

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"the SGD probe needs epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    t0 = time.perf_counter()
    device = torch.device(device)
    init_lr = sgd_init_lr(lr, batch_size)
    dim = int(train_x.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(dim, num_classes)
        nn.init.normal_(linear.weight, mean=0.0, std=SGD_INIT_STD)
        nn.init.zeros_(linear.bias)
    probe = Probe(torch.zeros(dim), torch.ones(dim), linear).to(device)
    params = list(probe.linear.parameters())
    if lars:
        optimizer = LARS(params, lr=init_lr, momentum=momentum, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=init_lr, momentum=momentum, weight_decay=weight_decay)
    xtr, ytr = train_x.to(device, torch.float32), train_y.to(device)
    xte, yte = test_x.to(device, torch.float32), test_y.to(device)
    n = len(ytr)
    gen = torch.Generator().manual_seed(seed)
    curve: dict[str, list] = {"lr": [], "loss": [], "train_top1": [], "top1": [], "top5": []}
    best_top1, best_epoch = -1.0, 0
    for epoch in tqdm(range(epochs), desc="probe", leave=False, disable=None):
        epoch_lr = init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr
        order = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = probe(xtr[idx])
            loss = F.cross_entropy(logits, ytr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == ytr[idx]).sum()
        with torch.no_grad():
            top1, top5 = accuracy(probe(xte), yte, topk=(1, 5))
        if top1 > best_top1:
            best_top1, best_epoch = top1, epoch + 1
        row = {"lr": epoch_lr, "loss": round(loss_sum.item() / max(n, 1), 6),
               "train_top1": round(100.0 * correct.item() / max(n, 1), 4), "top1": round(top1, 4),
               "top5": round(top5, 4)}
        for key, value in row.items():
            curve[key].append(value)
        if report is not None:
            report(epoch + 1, row)
    metrics = {"top1": top1, "top5": top5, "best_top1": best_top1, "best_epoch": best_epoch,
               "train_top1": curve["train_top1"][-1], "curve": curve, "feature_dim": dim, "n_train": n,
               "n_test": len(yte), "seconds": round(time.perf_counter() - t0, 2)}
    return metrics, probe.eval().requires_grad_(False)


def sgd_probe(encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device | str,
              lr: float = SGD_BASE_LR, momentum: float = 0.9, weight_decay: float = 0.0, epochs: int = 100,
              batch_size: int = 256, lars: bool = False, seed: int = 0, workers: int = 0,
              num_labeled: Optional[int] = None, transform: Optional[Callable] = None,
              features: Optional[tuple] = None, report: Optional[Callable[[int, dict], None]] = None,
              return_probe: bool = False):
    """The reference linsimsiam.py's probe (:func:`fit_sgd_probe`) of a frozen ``encoder``.

    The reference trained its linear layer with the encoder in eval mode and frozen, so the
    features of an image never change: they are computed once here (batches of
    ``batch_size``, ``transform`` as in :func:`extract_features`, the first ``num_labeled``
    training images when given), and the encoder is checked unchanged. ``features``:
    ``(train_x, train_y, test_x, test_y)`` already extracted (no feature pass runs).
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    num_classes = _num_classes(train_set)
    if features is None:
        before = None
        if encoder is not None:
            encoder = encoder.to(device)
            before = freeze(encoder)
        xtr, ytr = extract_features(encoder, train_set, device=device, batch_size=batch_size, workers=workers,
                                    limit=num_labeled, transform=transform)
        xte, yte = extract_features(encoder, test_set, device=device, batch_size=batch_size, workers=workers,
                                    transform=transform)
        if before is not None:
            assert_unchanged(encoder, before)
    else:
        xtr, ytr, xte, yte = features
    metrics, probe = fit_sgd_probe(xtr, ytr, xte, yte, num_classes=num_classes, lr=lr, momentum=momentum,
                                   weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, lars=lars,
                                   seed=seed, device=device, report=report)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return (metrics, probe) if return_probe else metrics


def fit_downstream(kind: str, encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device | str,
                   seed: int = 0, workers: int = 0, lr: Optional[float] = None, weight_decay: Optional[float] = None,
                   epochs: int = 100, batch_size: int = 256, num_labeled: Optional[int] = None, bn: str = "train",
                   test_batch_size: int = REFERENCE_TEST_BATCH, transform: Optional[Callable] = None,
                   features: Optional[tuple] = None, momentum: float = 0.9, lars: bool = False,
                   report: Optional[Callable[[int, dict], None]] = None) -> tuple[dict, Probe, dict]:
    """Fit one probe of ``kind`` (reference, lbfgs, augment or sgd) and return ``(metrics, probe, how)``.

    ``how`` says how the probe's logits are computed (``{"bn", "test_batch_size"}``, the
    arguments of :func:`probe_logits` that reproduce its test accuracy) plus the settings used;
    it is what a results record and a saved probe store as ``probe``.

    ``weight_decay`` defaults to the kind's reference value (8e-4 for reference, 0 for sgd);
    ``lr`` is Adam's for reference and augment, the base rate (x batch_size / 256) for sgd
    (default 0.1). ``transform`` maps a uint8 batch on the device to the encoder's input
    (:func:`extract_features`; not for augment). The fixed-feature kinds (lbfgs, sgd) take
    ``features = (train_x, train_y, test_x, test_y)`` already extracted, and then run no feature
    pass. ``momentum``, ``lars`` and ``report`` (called after each epoch) are the sgd probe's.
    """
    device = torch.device(device)
    if features is not None and kind not in ("lbfgs", "sgd"):
        raise ValueError(f"the {kind} probe runs through the encoder; only lbfgs and sgd take fixed features")
    if kind == "reference":
        if lr is None:
            raise ValueError("the reference probe needs a learning rate")
        weight_decay = REFERENCE_WD if weight_decay is None else weight_decay
        metrics, probe = reference_probe(encoder, train_set, test_set, device=device, lr=lr,
                                         weight_decay=weight_decay, epochs=epochs, batch_size=batch_size,
                                         num_labeled=num_labeled, bn=bn, seed=seed, test_batch_size=test_batch_size,
                                         workers=workers, return_probe=True, transform=transform)
        how = {"kind": "reference", "optimizer": "adam", "lr": lr, "weight_decay": weight_decay, "epochs": epochs,
               "batch_size": batch_size, "num_labeled": num_labeled, "images_per_epoch": metrics["n_train"],
               "shuffle": False, "bn": bn, "test_batch_size": test_batch_size, "init_seed": seed}
    elif kind == "lbfgs":
        metrics, probe = linear_probe(encoder, train_set, test_set, device=device, seed=seed, batch_size=batch_size,
                                      workers=workers, num_labeled=num_labeled, return_probe=True,
                                      transform=transform, features=features)
        how = {"kind": "lbfgs", "standardised": True, "l2": metrics["l2"], "l2_grid": list(DEFAULT_L2_GRID),
               "num_labeled": num_labeled, "bn": "eval", "test_batch_size": batch_size}
    elif kind == "augment":
        if transform is not None:
            raise ValueError("the augment probe crops the stored images itself and takes no transform")
        if encoder is None:
            raise UserError("--augment needs an encoder; the pixel baseline has none (use --probe lbfgs or reference)")
        metrics, probe = augmented_probe(encoder, train_set, test_set, device=device, seed=seed, epochs=epochs,
                                         lr=1e-3 if lr is None else lr, batch_size=batch_size, return_probe=True)
        how = {"kind": "augment", "optimizer": "adam", "lr": metrics["lr"], "epochs": epochs,
               "batch_size": batch_size, "bn": "eval", "test_batch_size": 512}
    elif kind == "sgd":
        base_lr = SGD_BASE_LR if lr is None else lr
        weight_decay = 0.0 if weight_decay is None else weight_decay
        metrics, probe = sgd_probe(encoder, train_set, test_set, device=device, lr=base_lr, momentum=momentum,
                                   weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, lars=lars,
                                   seed=seed, workers=workers, num_labeled=num_labeled, transform=transform,
                                   features=features, report=report, return_probe=True)
        how = {"kind": "sgd", "optimizer": "lars" if lars else "sgd", "base_lr": base_lr,
               "lr": sgd_init_lr(base_lr, batch_size), "lr_rule": "base_lr x batch_size / 256",
               "schedule": "cosine per epoch", "momentum": momentum, "weight_decay": weight_decay,
               "epochs": epochs, "batch_size": batch_size, "shuffle": True, "num_labeled": num_labeled,
               "init": f"weight N(0, {SGD_INIT_STD:g}^2), bias 0", "init_seed": seed, "standardised": False,
               "features": "fixed (computed once, encoder in eval mode)", "bn": "eval",
               "test_batch_size": batch_size}
    else:
        raise ValueError(f"unknown probe kind {kind!r}")
    return metrics, probe, how


# ------------------------------------------------------------------------------- saved probes


def save_probe(path: str | Path, probe: Probe, /, **info) -> Path:
    """Write ``probe`` atomically as a small self-describing file (``weights_only`` loadable):
    ``{"format", "feature_dim", "num_classes", "state_dict", **info}``; ``info`` holds plain
    values (how the logits are computed, the encoder checkpoint, the reported metrics)."""
    payload = {"format": PROBE_FORMAT, "feature_dim": probe.feature_dim, "num_classes": probe.num_classes,
               "state_dict": {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()},
               **json.loads(json.dumps(info, default=str))}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_probe(path: str | Path) -> tuple[Probe, dict]:
    """Read a probe written by :func:`save_probe`; returns ``(probe, the file's dict)``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"probe file {path} does not exist; write one with `linear_eval.py --save True`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or unsafe file
        raise UserError(f"cannot read probe file {path} ({type(err).__name__}); write it again with "
                        f"`linear_eval.py --save True`") from err
    if not isinstance(obj, dict) or obj.get("format") != PROBE_FORMAT:
        raise UserError(f"{path} is not a probe file written by `linear_eval.py --save True`")
    sd = obj["state_dict"]
    dim, classes = int(obj["feature_dim"]), int(obj["num_classes"])
    probe = Probe(torch.zeros(dim), torch.ones(dim), nn.Linear(dim, classes))
    probe.load_state_dict(sd, strict=True)
    return probe.eval().requires_grad_(False), obj


# ------------------------------------------------------------------------ fidelity, fine-tuning


def fidelity(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """% of rows where the two classifiers' argmax agree."""
    if logits_a.shape[0] != logits_b.shape[0]:
        raise ValueError(f"fidelity needs the same images: {logits_a.shape[0]} vs {logits_b.shape[0]} rows")
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean().item() * 100.0)


def finetune(encoder: nn.Module, probe: Probe, train_set, *, device: torch.device | str, lr: float,
             epochs: int, batch_size: int = 256, weight_decay: float = REFERENCE_WD, seed: int = 0,
             num_labeled: Optional[int] = None, workers: int = 0) -> tuple[nn.Module, Probe]:
    """Fine-tune copies of ``encoder`` and ``probe``'s linear layer together: Adam(lr,
    weight_decay), cross-entropy, BatchNorm in train mode, ``epochs`` passes over the first
    ``num_labeled`` training images, shuffled from ``seed`` (a batch of one image is skipped).

    The arguments are not modified; returns the fine-tuned ``(encoder, probe)``, frozen, in
    eval mode.
    """
    device = torch.device(device)
    before = snapshot(encoder)
    model = copy.deepcopy(encoder).to(device).requires_grad_(True).train()
    head = copy.deepcopy(probe).to(device)
    head.linear.requires_grad_(True)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(head.linear.parameters()), lr=lr,
                                 weight_decay=weight_decay)
    n = len(train_set) if num_labeled is None else min(num_labeled, len(train_set))
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="fine-tune", leave=False, disable=None):
        for images, labels, _ in iterate_batches(train_set, batch_size, shuffle=True, generator=gen, device=device,
                                                 workers=workers, indices=torch.arange(n)):
            if len(labels) < 2:
                continue
            loss = F.cross_entropy(head(model(to_float(images)).float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    assert_unchanged(encoder, before)
    return model.eval().requires_grad_(False), head.eval().requires_grad_(False)


# ------------------------------------------------------------------ the linear-evaluation CLI library


def resolve_probe(probe: str, dataset_test: str, scale: Optional[str], augment: bool = False) -> str:
    """``--probe auto``: reference at paper scale, lbfgs at cpu scale (``utils.scale_of`` of the
    downstream dataset); ``--augment`` is its own probe."""
    from utils import scale_of

    if augment:
        if probe != "auto":
            raise UserError(f"--augment is a probe of its own; drop --probe {probe} or --augment")
        return "augment"
    if probe != "auto":
        return probe
    return "reference" if scale_of(dataset_test, scale) == "paper" else "lbfgs"


def resolve_eval_set(eval_set: str, dataset_test: str) -> str:
    """``--eval-set auto``: the whole test split for stl10 (the reference's 8k), the held-out
    end of the test split otherwise (the reference's last 1,000)."""
    if eval_set != "auto":
        return eval_set
    return "test" if dataset_test == "stl10" else "holdout"


def load_downstream(dataset_test: str, *, root=None, image_size: Optional[int] = None, eval_set: str = "auto",
                    holdout: Optional[int] = None):
    """``(train set, test set, resolved eval set)`` of the downstream task."""
    info = dataset_info(dataset_test)
    eval_set = resolve_eval_set(eval_set, dataset_test)
    train_set = get_dataset(dataset_test, info.train_split, root=root, image_size=image_size)
    test_set = get_dataset(dataset_test, info.test_split, root=root, image_size=image_size)
    if eval_set == "holdout":
        test_set = split_holdout(test_set, holdout)[1]
    return train_set, test_set, eval_set


def reference_test_batch(eval_set: str, batch_size: int) -> int:
    """The reference tests the last 1,000 images in batches of 64 and the full STL10 split in
    batches of 2B (this matters for ``--probe-bn train``, where BatchNorm uses batch statistics)."""
    return 2 * batch_size if eval_set == "test" else REFERENCE_TEST_BATCH


def add_probe_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The probe flags shared by linear_eval*.py and linear_finetune_simclr.py."""
    g = p.add_argument_group("the probe")
    g.add_argument("--probe", default="auto", choices=["auto", *PROBES],
                   help="reference = the reference's probe (a linear layer trained with Adam through the frozen "
                        "encoder, unshuffled, --probe-epochs epochs, --probe-bn BatchNorm); lbfgs = logistic "
                        "regression on standardised fixed features with a tuned L2 penalty; auto = reference at "
                        "paper scale, lbfgs at cpu scale (see --scale)")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="picks --probe auto: auto = cpu for the offline downstream datasets, paper otherwise")
    g.add_argument("--probe-epochs", dest="probe_epochs", type=int, default=100,
                   help="epochs of the reference probe (the reference always trains 100)")
    g.add_argument("--probe-bn", dest="probe_bn", default="train", choices=["train", "eval"],
                   help="BatchNorm of the frozen encoder in the reference probe: train = the reference's quirk "
                        "(batch statistics when training and testing the probe; runs on a copy, so the "
                        "checkpoint's encoder is unchanged), eval = running statistics")
    g.add_argument("--probe-wd", dest="probe_wd", type=float, default=REFERENCE_WD,
                   help="Adam weight decay of the reference probe")
    g.add_argument("--probe-lr", dest="probe_lr", type=float, default=None,
                   help="Adam learning rate of the reference probe for every encoder (default: the reference's "
                        f"rule, {REFERENCE_VICTIM_LR:g} for the victim and --lr for anything else)")
    g.add_argument("-n", "--num-labeled", dest="num_labeled", type=int, default=None,
                   help=f"training images of the downstream task: the reference probe stops each epoch once "
                        f"batches x B >= n (default {REFERENCE_NUM_LABELED}, the reference's, which capped SVHN at "
                        f"its first 50,176 images); lbfgs uses the first n images (default: all)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=256,
                   help="training batch B of the reference probe (tested in batches of 64 on the held-out "
                        "1,000, of 2B on a whole test split, as the reference); feature batch of lbfgs")
    return g


def build_eval_parser(supervised: bool = False, description: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of linear_eval.py (``supervised=False``) or linear_eval_sup.py: every flag of
    the reference's script parses; the supervised one lacks --watermark/--entropy/--victimhead
    as the reference's does, and its default victim is simclrsup.py's run."""
    from loss import canonical_loss
    from models import ARCHS
    from utils import HelpFormatter, add_common_args, add_reference_args, str2bool

    victim = "supervised victim (simclrsup.py's run)" if supervised else "victim (run.py's run)"
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.set_defaults(victim_kind="supervised" if supervised else "victim")
    p.add_argument("--checkpoint", default=None,
                   help="encoder checkpoint to evaluate (e.g. <logdir>/checkpoint.pt); default: found from the "
                        "reference's flags below (--modeltype victim: the " + victim + "; stolen: steal.py's "
                        "or, with --head True, stealhead.py's run)")
    p.add_argument("--modeltype", nargs="+", default=["stolen"], choices=["victim", "stolen", "random", "pixels"],
                   help="what to evaluate: the stolen copy or the victim (as the reference), the same "
                        "architecture at random initialisation, or raw pixels; several give a table. The "
                        "victim's reference probe uses lr " + f"{REFERENCE_VICTIM_LR:g}, anything else --lr")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    p.add_argument("--dataset-test", dest="dataset_test", default=None,
                   help="downstream dataset (default: the checkpoint's training dataset, else --dataset)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resolution fed to the encoder (default: the checkpoint's training resolution)")
    p.add_argument("--eval-set", default="auto", choices=["auto", "holdout", "test"],
                   help="what the probe is tested on: holdout = the last images of the test split (1,000, 200 "
                        "for digits/digitsm; the reference's rule for cifar10/svhn, and the images steal.py never "
                        "queries), test = the whole test split (the reference's rule for stl10); auto = test for "
                        "stl10, holdout otherwise")
    p.add_argument("--holdout", type=int, default=None, help="size of the holdout (default: the dataset's)")
    g = add_probe_args(p)
    g.add_argument("--lr", type=float, default=None,
                   help=f"reference probe: Adam lr for a stolen (or random/pixels) encoder (default "
                        f"{REFERENCE_LR:g}, the reference's; the victim always gets {REFERENCE_VICTIM_LR:g} "
                        f"unless --probe-lr); with --augment: its Adam lr (default 1e-3)")
    g.add_argument("--augment", action="store_true",
                   help="a third probe: the linear layer trained with Adam through augmented images (crops) for "
                        "--epochs, on standardised features; the backbone stays frozen")
    g.add_argument("--epochs", type=int, default=100,
                   help="probe epochs with --augment only. In the reference --epochs is the stealing epochs, used "
                        "only in the checkpoint path (here runs are found without it); the reference probe's "
                        "epochs are --probe-epochs")

    g = p.add_argument_group("finding the checkpoint without --checkpoint (the reference's flags)")
    g.add_argument("--dataset", default=None, help="the victim's dataset (default mnistm5k)")
    g.add_argument("--datasetsteal", default=None, help="the stolen copy's query dataset (default: --dataset)")
    g.add_argument("--losstype", default="infonce", type=canonical_loss, help="the stolen copy's loss")
    g.add_argument("--num_queries", type=int, default=None,
                   help="the stolen copy's query count (default as steal.py's, by scale: cpu 500, paper 9000)")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="the encoder's architecture: checked against the checkpoint (a mismatch is an error), "
                        "names a plain state dict's architecture, and is the random baseline's architecture "
                        "without --checkpoint (default: the checkpoint's; by scale without one)")
    g.add_argument("--head", type=str2bool, default=False,
                   help="True: the stolen copy is stealhead.py's run (runs/stealhead_<loss>_<queries>_<dataset>"
                        "_s<seed>) instead of steal.py's")
    g.add_argument("--defence", type=str2bool, default=False,
                   help="True: the stolen copy was stolen from a defended victim; there is no default path for "
                        "it here, so pass that run's --checkpoint (with --checkpoint the flag has no effect)")
    if not supervised:
        g.add_argument("--watermark", type=str2bool, default=False,
                       help="True: the victim is the reference's WATERMARK variant; there is no default path for "
                            "it here, so pass its --checkpoint (with --checkpoint the flag has no effect)")

    g = p.add_argument_group("output")
    g.add_argument("--label", default=None, help="name of this encoder in the printed table and results")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in each result record (repeatable), e.g. --tag table=table2")
    g.add_argument("--summarize", metavar="RESULTS", default=None,
                   help="only print a table of the evaluations recorded in this results file")
    g.add_argument("--results", default=None,
                   help="JSON-lines file to append one record per evaluation to "
                        "(default: <checkpoint dir>/linear_eval.jsonl)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="True: start the results file afresh with this run's records instead of appending (the "
                        "reference's linear_eval.py deleted its log by default)")
    g.add_argument("--save", type=str2bool, default=False,
                   help="True: also write each fitted probe to <checkpoint dir>/probe_<modeltype>_<dataset-test>.pt "
                        "(next to --results for pixels): a small torch file that loads with weights_only=True "
                        "and that linear_finetune_simclr.py --victim-probe/--stolen-probe reads")
    refs = ["folder_name", "epochstrain", "sigma_unused", "mu_unused"]
    if not supervised:
        refs += ["entropy", "victimhead_unused"]
    add_reference_args(p, *refs)
    add_common_args(p)
    return p


def default_checkpoint(args, modeltype: str) -> Path:
    """Where run.py / simclrsup.py / steal.py / stealhead.py put a checkpoint by default, from the
    reference-style flags; the reference's DEFENCE and WATERMARK variants have no default here."""
    from utils import DEFAULT_DATASET, steal_run_dir, victim_run_dir

    dataset = args.dataset or DEFAULT_DATASET
    dataset_info(dataset)  # a clear error for an unknown name
    if modeltype == "stolen":
        if args.num_queries is None:  # steal.py's default by scale (cpu 500, paper 9000)
            from attack import STEAL_DEFAULTS
            from utils import scale_of

            args.num_queries = STEAL_DEFAULTS[scale_of(dataset, getattr(args, "scale", None))]["*"]["num_queries"]
        if args.defence:
            raise UserError("--defence True names a copy stolen from a defended victim, which has no default run "
                            "directory here; pass that run's checkpoint with --checkpoint PATH")
        if args.head:
            return steal_run_dir(args.losstype, args.num_queries, dataset, args.seed, kind="stealhead") / "checkpoint.pt"
        query_dataset = getattr(args, "datasetsteal", None) or dataset
        return steal_run_dir(args.losstype, args.num_queries, query_dataset, args.seed) / "checkpoint.pt"
    if getattr(args, "watermark", False):
        raise UserError("--watermark True names the reference's watermarked victim, which has no default run "
                        "directory here; pass its checkpoint with --checkpoint PATH")
    kind = getattr(args, "victim_kind", "victim")
    return victim_run_dir(dataset, args.seed, arch=args.arch, kind=kind) / "checkpoint.pt"


def print_table(records: list[dict]) -> None:
    print("\n| encoder | dataset | probe | top-1 % | top-5 % |\n|---|---|---|---|---|")
    for r in records:
        kind = (r.get("probe") or {}).get("kind") or ("augment" if r["metrics"].get("augment") else "lbfgs")
        print(f"| {r.get('label') or r['modeltype']} | {r['dataset_test']} | {kind} | {r['metrics']['top1']:.1f} "
              f"| {r['metrics']['top5']:.1f} |")


def _random_encoder(args, checkpoint_encoder, dataset_test: str, scale: Optional[str]):
    """The random baseline: the checkpoint's architecture, or ``--arch`` and the scale preset."""
    from models import build_encoder
    from models.checkpoint import encoder_kwargs
    from utils import preset_for

    if checkpoint_encoder is not None:
        kwargs = encoder_kwargs(checkpoint_encoder)
    else:
        preset = preset_for(dataset_test, scale)
        info = dataset_info(dataset_test)
        size = args.image_size or preset["image_size"]
        kwargs = {"arch": args.arch or preset["arch"], "width": preset["width"],
                  "stem": "imagenet" if size >= 128 else "cifar", "mean": info.mean, "std": info.std}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return build_encoder(**kwargs)


def _write_record(path: Path, record: dict, replace: bool) -> None:
    from utils import append_jsonl, atomic_write_text

    if replace:
        atomic_write_text(path, json.dumps(record, default=str) + "\n")
    else:
        append_jsonl(path, record)


def evaluate(args: argparse.Namespace) -> list[dict]:
    """linear_eval.py / linear_eval_sup.py: probe each ``--modeltype`` and record the results."""
    from models import load_encoder
    from utils import parse_tags, pick_device, preset_for, read_jsonl, scale_of, seed_everything, setup_threads

    if args.summarize:
        path = Path(args.summarize)
        if not path.is_file():
            raise UserError(f"results file {path} does not exist")
        records = read_jsonl(path)
        print_table(records)
        return records
    tags = parse_tags(args.tag)
    device = pick_device(args.device, args.gpu_index)
    setup_threads()
    seed_everything(args.seed)

    # which checkpoint each model type reads
    paths: dict[str, Optional[str]] = {}
    for modeltype in args.modeltype:
        if modeltype == "pixels":
            paths[modeltype] = None
        elif args.checkpoint:
            paths[modeltype] = args.checkpoint
        elif modeltype == "random":
            paths[modeltype] = None  # --arch and the scale preset
        else:
            path = default_checkpoint(args, modeltype)
            if not path.is_file():
                raise UserError(f"no {modeltype} checkpoint at {path} (derived from --dataset/--datasetsteal/"
                                f"--losstype/--num_queries/--head/--seed); pass --checkpoint PATH")
            paths[modeltype] = str(path)
    loaded: dict[str, tuple] = {}
    for path in dict.fromkeys(p for p in paths.values() if p):
        with torch.random.fork_rng(devices=[]):
            encoder, _, ckpt = load_encoder(path, arch=args.arch)
        loaded[path] = (encoder, ckpt.get("config", {}) or {}, ckpt)
    first = next(iter(loaded.values()), (None, {}, {}))
    dataset_test = args.dataset_test or first[1].get("dataset") or args.dataset
    if dataset_test is None:
        raise UserError("name the downstream dataset with --dataset-test")
    info = dataset_info(dataset_test)
    if not info.num_classes:
        raise UserError(f"{dataset_test} has no labels; pick a labelled --dataset-test")
    kind = resolve_probe(args.probe, dataset_test, args.scale, args.augment)
    num_labeled = args.num_labeled
    if num_labeled is None and kind == "reference":
        num_labeled = REFERENCE_NUM_LABELED
    results_path = Path(args.results) if args.results else (
        Path(next(iter(loaded))).parent / "linear_eval.jsonl" if loaded else Path("linear_eval.jsonl"))
    datasets: dict[int, tuple] = {}
    records = []
    for modeltype in args.modeltype:
        path = paths[modeltype]
        encoder, config, ckpt = loaded[path] if path else (None, {}, {})
        if modeltype == "random":
            model = _random_encoder(args, encoder, dataset_test, args.scale)
        else:
            model = encoder if modeltype in ("victim", "stolen") else None
        size = int(args.image_size or config.get("image_size") or preset_for(dataset_test, args.scale)["image_size"])
        if size not in datasets:
            datasets[size] = load_downstream(dataset_test, root=args.data, image_size=size, eval_set=args.eval_set,
                                             holdout=args.holdout)
        train_set, test_set, eval_set = datasets[size]
        probe_kind = "lbfgs" if kind == "augment" and model is None else kind
        if probe_kind == "reference":
            lr = args.probe_lr or (REFERENCE_VICTIM_LR if modeltype == "victim" else (args.lr or REFERENCE_LR))
        else:
            lr = args.lr
        metrics, probe, how = fit_downstream(
            probe_kind, model, train_set, test_set, device=device, seed=args.seed, workers=args.workers, lr=lr,
            weight_decay=args.probe_wd, epochs=args.epochs if probe_kind == "augment" else args.probe_epochs,
            batch_size=args.batch_size, num_labeled=num_labeled, bn=args.probe_bn,
            test_batch_size=reference_test_batch(eval_set, args.batch_size))
        how["scale"] = scale_of(dataset_test, args.scale)
        label = args.label if args.label and len(args.modeltype) == 1 else None
        record = {**tags, "modeltype": modeltype, "label": label, "dataset_test": dataset_test, "checkpoint": path,
                  "victim_checkpoint": config.get("victim_checkpoint"), "image_size": train_set.image_size,
                  "eval_set": f"{test_set.split} ({len(test_set)} images)", "seed": args.seed, "probe": how,
                  "metrics": metrics, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if args.save:
            where = Path(path).parent if path else results_path.parent
            probe_path = where / f"probe_{modeltype}_{dataset_test}.pt"
            # a random encoder is not saved: its probe names no checkpoint to reuse it with
            save_probe(probe_path, probe, probe=how, modeltype=modeltype, dataset_test=dataset_test,
                       checkpoint=path if modeltype in ("victim", "stolen") else None,
                       image_size=train_set.image_size, eval_set=record["eval_set"], seed=args.seed,
                       metrics={"top1": metrics["top1"], "top5": metrics["top5"], "n_test": metrics["n_test"]})
            record["probe_file"] = str(probe_path)
        _write_record(results_path, record, replace=bool(args.clear) and not records)
        records.append(record)
        detail = f"L2 {metrics['l2']:g}" if "l2" in metrics else (
            f"lr {how['lr']:g}, {how['epochs']} epochs" + (f", BN {how['bn']}" if probe_kind == "reference" else ""))
        print(f"{label or modeltype:>8s} on {dataset_test}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
              f"({probe_kind} probe, {detail}; features {metrics['feature_dim']}-d, {metrics['seconds']:.1f}s)"
              + (f"; probe saved to {record['probe_file']}" if args.save else ""), flush=True)
    if len(records) > 1:
        print_table(records)
    print(f"results {'written' if args.clear else 'appended'} to {results_path}")
    return records
