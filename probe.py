"""The linear probe: features of a frozen encoder once, then a multinomial logistic regression.

Features are standardised (train-split mean and std per dimension) so that the scale of a
representation does not decide the result, and the L2 penalty is picked from a small grid
on a held-out fifth of the training split before the final fit on the whole split. The
encoder is frozen three ways (no grad, eval mode, no_grad forward passes) and checked
unchanged afterwards. ``linear_eval.py`` is the CLI; attacks, defenses and the legitimate
user import from here.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_aug import DATASETS, SimCLRAugment, iterate_batches, to_float
from errors import UserError
from utils import accuracy

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def extract_features(encoder: Optional[nn.Module], dataset, *, device: torch.device,
                     batch_size: int = 512, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations ``N x D`` (float32, CPU) and labels of a whole dataset.

    ``encoder=None`` returns the raw pixels in [0, 1], flattened (the pixel baseline).
    """
    feats, labels = [], []
    for images, y, _ in iterate_batches(dataset, batch_size, device=device, workers=workers):
        x = to_float(images)
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
              seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Train a probe (:func:`train_probe`) and evaluate it on the test features.

    Returns ``{"top1", "top5", "train_top1", "l2", "val_top1_by_l2"}`` (accuracies in %).
    """
    probe, best, scores = train_probe(train_x, train_y, num_classes=num_classes, l2_grid=l2_grid,
                                      max_iter=max_iter, seed=seed, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(probe(test_x.to(probe.mean.device)), test_y.to(probe.mean.device), topk=(1, 5))
        train_top1 = accuracy(probe(train_x.to(probe.mean.device)), train_y.to(probe.mean.device))[0]
    return {"top1": top1, "top5": top5, "train_top1": train_top1, "l2": best, "val_top1_by_l2": scores}


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


def linear_probe(encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device,
                 seed: int = 0, batch_size: int = 512, workers: int = 0, **probe_kwargs) -> dict:
    """Linear evaluation of a frozen ``encoder`` (``None``: raw pixels); a metrics dict."""
    t0 = time.perf_counter()
    before = None
    if encoder is not None:
        encoder = encoder.to(device)
        before = freeze(encoder)
    num_classes = train_set.num_classes
    if not num_classes:
        raise UserError(f"{train_set.name} has no labels; pick a labelled --dataset-test")
    xtr, ytr = extract_features(encoder, train_set, device=device, batch_size=batch_size, workers=workers)
    xte, yte = extract_features(encoder, test_set, device=device, batch_size=batch_size, workers=workers)
    metrics = fit_probe(xtr, ytr, xte, yte, num_classes=num_classes, seed=seed, device=device, **probe_kwargs)
    if encoder is not None:
        assert_unchanged(encoder, before)
    metrics.update(feature_dim=int(xtr.shape[1]), n_train=len(ytr), n_test=len(yte),
                   seconds=round(time.perf_counter() - t0, 2))
    return metrics


def augmented_probe(encoder: nn.Module, train_set, test_set, *, device: torch.device, seed: int = 0,
                    epochs: int = 100, lr: float = 1e-3, batch_size: int = 256,
                    freeze_backbone: bool = True) -> dict:
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
    return {"top1": top1, "top5": top5, "augment": True, "epochs": epochs, "lr": lr, "feature_dim": int(xtr.shape[1]),
            "n_train": len(train_set), "n_test": len(yte), "seconds": round(time.perf_counter() - t0, 2)}
