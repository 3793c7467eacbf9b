"""Prediction poisoning for encoders (the paper's Appendix E.1 derivation, never run in the paper).

An attacker trains its copy ``f_s`` with the MSE loss ``||f_s(x) - q||^2`` on the answers
``q``; the gradient of that loss with respect to the copy's output is ``2 (f_s(x) - q)``.
A legitimate customer trains a downstream classifier on ``q``. The defense perturbs the
answers, ``q~ = q + strength * P (s(x) - q)``, where

* ``s`` is a **surrogate attacker**: a freshly initialised model of the victim's own
  architecture (seeded; where a stealing attack starts), so ``s(x) - q`` is the
  direction of the attacker's MSE gradient at the start of training;
* ``P = I - W^T (W W^T)^+ W`` projects onto the null space of a **surrogate downstream
  classifier** ``W``: a linear probe the service fits on its own (clean) answers for its
  training set. Then ``W q~ = W q``: the surrogate classifier's logits, its predictions
  and the gradient of its loss with respect to its logits are unchanged.

So the perturbation moves the attacker's MSE gradient (at the surrogate) along every
direction the downstream classifier cannot see: ``strength`` 1 cancels that component of
the gradient and 2 reverses it. ``strength`` 0 is the identity (the same tensor).
Whether it protects an encoder in practice is measured by ``scripts/defenses.py poison``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from data_aug import dataset_info, get_dataset, to_float
from defenses.base import Defense
from models.probe import train_probe
from utils import UserError


def null_space_projector(weight: torch.Tensor) -> torch.Tensor:
    """``I - W^T (W W^T)^+ W``: the projector onto the null space of ``W`` (``C x D``), in float64."""
    # through an orthonormal basis of W's row space (SVD): exact even when W is badly conditioned
    # (a probe that standardises divides by tiny standard deviations of nearly dead features)
    _, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    basis = vh[s > s.max() * 1e-12]
    return torch.eye(weight.shape[1], dtype=torch.float64) - basis.T @ basis


def fresh_copy(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` with every parameter re-initialised (seeded) and BN statistics reset."""
    clone = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return clone.eval().requires_grad_(False)


class PredictionPoisoning(Defense):
    name = "poison"

    @classmethod
    def from_flags(cls, config: dict, *, scale: str, seed: int) -> "PredictionPoisoning":
        return cls(config["poison_strength"], seed=seed + 2, data=config.get("data"))

    def __init__(self, strength: float = 1.0, seed: int = 0, data: str | None = None, batch_size: int = 512):
        if not 0 <= strength < math.inf:
            raise UserError(f"--poison-strength must be a non-negative number, got {strength}")
        self.strength, self.seed, self.data, self.batch_size = float(strength), seed, data, batch_size
        self.projector: torch.Tensor | None = None
        self.kind = "representation"
        self.classifier: nn.Module | None = None

    def prepare(self, service) -> None:
        if self.strength == 0:
            return
        backend, self.kind = service.backend, service.answers
        if not hasattr(backend, "encoder"):
            raise UserError("prediction poisoning needs an encoder victim")
        self.surrogate = fresh_copy(backend.encoder, self.seed)
        self.surrogate_head = None if backend.head is None else fresh_copy(backend.head, self.seed + 1)
        info = service.info()
        dinfo = dataset_info(info["dataset"])
        if not dinfo.num_classes:
            raise UserError(f"prediction poisoning fits a downstream classifier on the victim's training data, "
                            f"but {info['dataset']} has no labels")
        train = get_dataset(info["dataset"], dinfo.train_split, root=self.data, image_size=info["input_size"])
        x = to_float(train.images)
        answers = torch.cat([backend.outputs(x[i:i + self.batch_size])[service.answers].cpu()
                             for i in range(0, len(x), self.batch_size)])

        probe, _, _ = train_probe(answers, train.labels, num_classes=dinfo.num_classes, seed=self.seed)
        self.classifier = probe.cpu()
        weight = probe.linear.weight.detach().cpu() / probe.std.cpu()  # the probe standardises first
        self.projector = null_space_projector(weight)

    @torch.no_grad()
    def surrogate_answers(self, images: torch.Tensor, answer_kind: str) -> torch.Tensor:
        device = next(self.surrogate.parameters()).device
        out = self.surrogate(images.to(device)).float()
        if answer_kind == "head":
            out = self.surrogate_head(out).float()
        return out

    def apply(self, account, images, answers, state, *, outputs):
        if self.strength == 0:
            return answers
        # in float64: W/std can be large, and float32 rounding would leak into the classifier's logits
        residual = self.surrogate_answers(images, self.kind).double() - answers.double().cpu()
        delta = self.strength * residual @ self.projector
        return (answers.double() + delta.to(answers.device)).to(answers.dtype)

    def describe(self) -> dict:
        return {"name": self.name, "strength": self.strength, "seed": self.seed}
