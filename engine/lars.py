"""LARS: SGD with a layer-wise adaptive learning rate (You et al. 2017), as the reference's
ImageNet scripts used it through apex's ``LARC`` (trust coefficient 0.001, no clipping,
eps 1e-8; ``docs/reference-behaviour.md`` section 6.2). Neither PyTorch nor torchvision ships
one, so this is a small one of our own, tested against that formula.

For every parameter tensor ``w`` with gradient ``g``, when both ``||w||`` and ``||g||`` are
non-zero::

    local = trust * ||w|| / (||g|| + weight_decay * ||w|| + eps)
    g    <- (g + weight_decay * w) * local

and then a plain SGD step with momentum and no further weight decay, so a tensor moves by about
``lr * local`` times its gradient. A tensor whose weight or gradient norm is zero keeps its
gradient unchanged (and gets no weight decay), as in apex's LARC. Parameter groups may set
``lars=False`` (e.g. biases and BatchNorm parameters) to get plain SGD with weight decay.
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """``LARS(params, lr, momentum=0.9, weight_decay=0.0, trust=0.001, eps=1e-8)``."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 0.001,
                 eps: float = 1e-8, lars: bool = True):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust <= 0 or eps <= 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, trust > 0 and eps > 0; "
                             f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, trust={trust}, eps={eps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, eps=eps,
                                      lars=lars))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    if w_norm > 0 and g_norm > 0:
                        local = group["trust"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                        g = (g + wd * p) * local
                elif wd:
                    g = g + wd * p
                if momentum:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(momentum).add_(g)
                    g = buf
                p.add_(g, alpha=-group["lr"])
        return loss
