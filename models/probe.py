"""The linear probe as a model: features standardised with the training split's statistics,
then a linear layer fitted by full-batch L-BFGS with an L2 penalty chosen on a held-out fifth.

Everything here works on feature tensors (``N x D``) except :func:`extract_features`, which
computes them from a frozen encoder once. The probes that measure encoders, and the
linear-evaluation command's library, are :mod:`evaluation.probe`; the owner's classifier
victims (:mod:`attacks.extraction`) and prediction poisoning (:mod:`defenses.poison`) fit the
same probe.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_aug import iterate_batches, to_float
from utils import accuracy

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def encoder_inputs(images: torch.Tensor, transform: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
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
    ``lambda x: attacks.imagenet.view(x, 224)`` to resize native-size images on the device); without
    it the input is the images as float in [0, 1]. ``encoder=None`` returns that input
    flattened (the pixel baseline).
    """
    if limit is not None and indices is not None:
        raise ValueError("extract_features takes limit or indices, not both")
    if limit is not None:
        indices = torch.arange(min(limit, len(dataset)))
    feats, labels = [], []
    for images, y, _ in iterate_batches(dataset, batch_size, device=device, workers=workers, indices=indices):
        x = encoder_inputs(images, transform)
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


def fidelity(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """% of rows where the two classifiers' argmax agree."""
    if logits_a.shape[0] != logits_b.shape[0]:
        raise ValueError(f"fidelity needs the same images: {logits_a.shape[0]} vs {logits_b.shape[0]} rows")
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean().item() * 100.0)
