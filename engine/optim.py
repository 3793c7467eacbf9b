"""Optimizers by name, built from a run's flags: one table for every training loop of the project.

``sgd`` (with momentum), ``adam``, and ``lars`` (the reference's apex LARC rule on SGD,
:class:`engine.lars.LARS`, for the ImageNet path).
"""
from __future__ import annotations

import torch

from engine.lars import LARS


def _sgd(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adam(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # Adam's betas, not SGD's momentum


def _lars(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "lars": _lars}


def build_optimizer(name: str, params, *, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over ``params`` (``momentum`` is SGD's and LARS's; Adam ignores it)."""
    return OPTIMIZERS[name](params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    """The optimizer a run's flags name: ``--optimizer`` (sgd or adam), ``--lr``, ``--wd`` and
    ``--momentum`` (0.9 when the script has no such flag or it is unset)."""
    momentum = config.get("momentum")
    return build_optimizer(config["optimizer"], params, lr=config["lr"], weight_decay=config["weight_decay"],
                           momentum=0.9 if momentum is None else momentum)
