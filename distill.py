"""Classifier extraction by distillation: fine-tune a linear layer plus an encoder on a victim's answers.

The attacker has pre-trained an encoder of its own on its unlabeled pool (``pretrain.py``,
no queries), then queries a *classifier* victim (:class:`victim.ClassifierBackend` behind a
:class:`victim.VictimService`) on a fraction of that pool (:func:`query_fraction`) and trains
:class:`Distiller` (encoder + linear head) on the answers in the one training loop
(:func:`simclr.fit` with :func:`distill_step`), with separate learning rates for the head and
the encoder (:func:`distill_optimizer`). The loss depends on what the victim answers
(:func:`distillation_loss`): soft cross-entropy on scores, cross-entropy on labels.
:func:`fidelity_and_accuracy` measures the result on held-out data: top-1/top-5 accuracy on
the true labels and agreement with the victim.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from probe import fidelity
from utils import accuracy

DISTILL_KINDS = ("probabilities", "top5", "logits", "labels")


def query_fraction(pool_size: int, fraction: float) -> int:
    """The number of queries for ``fraction`` of a pool of ``pool_size`` images (nearest, at least 1)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"the query fraction must be in (0, 1], got {fraction!r}")
    if pool_size < 1:
        raise ValueError(f"the pool must hold at least one image, got {pool_size}")
    return max(1, min(pool_size, int(math.floor(pool_size * fraction + 0.5))))


def distillation_loss(logits: torch.Tensor, answers: torch.Tensor, kind: str,
                      temperature: float = 1.0) -> torch.Tensor:
    """The loss of the student's ``logits`` (``B x C``) on the victim's ``answers`` (``B x C``).

    * ``probabilities``, ``top5``: soft cross-entropy ``-(t * log_softmax(logits / T)).sum(1).mean()``
      with ``t`` the answers renormalised to sum 1 per row (for ``top5``: the kept mass);
    * ``logits``: the same with ``t = softmax(answers / T)``;
    * ``labels``: cross-entropy with the argmax of the one-hot answers (``temperature`` unused).

    No ``T**2`` factor is applied. Computed in float32 (also under autocast).
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"unknown distillation kind {kind!r}; use one of {', '.join(DISTILL_KINDS)}")
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, got {temperature}")
    logits, answers = logits.float(), answers.float()
    if kind == "labels":
        return F.cross_entropy(logits, answers.argmax(1))
    if kind == "logits":
        target = (answers / temperature).softmax(1)
    else:
        target = answers / answers.sum(1, keepdim=True).clamp_min(1e-12)
    return -(target * (logits / temperature).log_softmax(1)).sum(1).mean()


class Distiller(nn.Module):
    """The attacker's classifier: its encoder and a linear head, ``head(encoder(x))``.

    When the encoder is frozen (no parameter requires gradient, see :func:`distill_optimizer`)
    it stays in eval mode, so its batch-norm statistics do not drift either.
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self


def distill_optimizer(model: Distiller, *, lr_head: float, lr_encoder: float,
                      weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the head's and the encoder's own learning rates under :func:`simclr.fit`.

    The groups carry ``lr_scale`` 1.0 (head) and ``lr_encoder / lr_head`` (encoder), so that
    ``fit(base_lr=lr_head)`` gives each its own rate (times the shared cosine schedule).
    ``lr_encoder=0`` freezes the encoder: its parameters stop requiring gradient and it has no group.
    """
    if lr_head <= 0:
        raise ValueError(f"the head's learning rate must be positive, got {lr_head}")
    if lr_encoder < 0:
        raise ValueError(f"the encoder's learning rate must be non-negative, got {lr_encoder}")
    groups = [{"params": list(model.head.parameters()), "lr": lr_head, "lr_scale": 1.0, "name": "head"}]
    if lr_encoder == 0:
        model.encoder.requires_grad_(False)
        model.encoder.eval()
    else:
        model.encoder.requires_grad_(True)
        groups.append({"params": list(model.encoder.parameters()), "lr": lr_encoder,
                       "lr_scale": lr_encoder / lr_head, "name": "encoder"})
    return torch.optim.Adam(groups, lr=lr_head, weight_decay=weight_decay)


def distill_step(model: nn.Module, client, images_fn: Callable[[torch.Tensor], torch.Tensor], kind: str,
                 temperature: float = 1.0,
                 augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None):
    """A :func:`simclr.fit` step over a fixed query set: ``step(idx, generator) -> (loss, metrics, n)``.

    ``idx`` are indices into the query set and ``images_fn(idx)`` its images (float); each index
    is the query's cache key in ``client`` (a :class:`client.QueryClient`), so the first epoch
    queries each image once and later epochs reuse the answers at no cost. ``augment(x, generator)``
    runs after the query (the victim never sees the augmented copies). Metrics: ``agreement``
    (% of the batch where the student's argmax equals the victim's).
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"unknown distillation kind {kind!r}; use one of {', '.join(DISTILL_KINDS)}")

    def step(idx: torch.Tensor, generator: torch.Generator):
        x = images_fn(idx)
        answers = client.query(x, keys=[int(i) for i in idx.tolist()])
        if augment is not None:
            x = augment(x, generator)
        logits = model(x)
        loss = distillation_loss(logits, answers, kind, temperature)
        return loss, {"agreement": fidelity(logits.detach(), answers)}, x.shape[0]

    return step


@torch.no_grad()
def fidelity_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          victim_answers: torch.Tensor, *, batch_size: int = 512) -> dict:
    """On held-out data: ``top1``/``top5`` accuracy on ``labels`` and ``agreement`` with the victim (percent).

    ``images`` are float inputs for ``model``; ``victim_answers`` the victim's answers on them
    (any output kind: its argmax is the victim's prediction). top-5 uses ``k = min(5, classes)``.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = torch.cat([model(images[i:i + batch_size].to(device)).float().cpu()
                            for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)
    top1, top5 = accuracy(logits, labels.cpu(), topk=(1, 5))  # k capped at the number of classes
    return {"top1": top1, "top5": top5, "agreement": fidelity(logits, victim_answers.cpu())}
