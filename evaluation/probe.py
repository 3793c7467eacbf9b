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

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_aug import DATASETS, SimCLRAugment, iterate_batches, to_float
from engine.lars import LARS
from models.checkpoint import read_torch_file
from models.probe import DEFAULT_L2_GRID, Probe, encoder_inputs, extract_features, fit_probe
from utils import (
    UserError,
    accuracy,
    atomic_path,
)

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
        out.append(probe(_forward(model, encoder_inputs(images, transform))).float().cpu())
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
    dim = _forward(None if model is None else model.eval(), encoder_inputs(images, transform)).shape[1]
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
                feats = _forward(model, encoder_inputs(images, transform))
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
    obj = read_torch_file(path, what="probe file", kind="probe file written by `linear_eval.py --save True`")
    if not isinstance(obj, dict) or obj.get("format") != PROBE_FORMAT:
        raise UserError(f"{path} is not a probe file written by `linear_eval.py --save True`")
    sd = obj["state_dict"]
    dim, classes = int(obj["feature_dim"]), int(obj["num_classes"])
    probe = Probe(torch.zeros(dim), torch.ones(dim), nn.Linear(dim, classes))
    probe.load_state_dict(sd, strict=True)
    return probe.eval().requires_grad_(False), obj


# ------------------------------------------------------------------------ fidelity, fine-tuning


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
