"""Loss functions: pure functions of tensors, and one ``LOSSES`` table.

Every size is read from the tensors, never from a configured batch size. A loss never
detaches anything: targets that must carry no gradient (a victim's answers) are produced
without gradient at the call site.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_views(views: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE / NT-Xent over ``V`` views of ``B`` items (SimCLR, Chen et al. 2020).

    Args:
        views: ``V x B x D`` (``V >= 2``); row ``b`` of every view is the same item.
        temperature: softmax temperature tau.

    Every one of the ``V*B`` rows is an anchor. Rows are L2-normalised; similarities are
    cosines divided by tau; the anchor itself is excluded from the denominator. For each
    anchor ``a`` and each positive ``p`` (the other views of the same item) the term is
    ``-log(exp(s_ap) / sum_{j != a} exp(s_aj))``; the loss is the mean over all
    (anchor, positive) pairs. With ``V = 2`` this is exactly NT-Xent. (With ``V > 2`` the
    reference kept only the first positive as the target and left the others in the
    denominator; we average over every positive instead.)

    Returns a scalar (mean reduction), in float32 even under autocast.
    """
    if views.dim() != 3 or views.shape[0] < 2:
        raise ValueError(f"info_nce_views expects V x B x D with V >= 2, got {tuple(views.shape)}")
    n_views, batch, _ = views.shape
    z = F.normalize(views.float().reshape(n_views * batch, -1), dim=1)
    logits = z @ z.t() / temperature
    n = n_views * batch
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    item = torch.arange(n, device=z.device) % batch
    positive = (item.view(-1, 1) == item.view(1, -1)) & ~eye
    return -(log_prob[positive]).mean()


def infonce(stolen: torch.Tensor, victim: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE for stealing: stolen row ``i`` and victim row ``i`` are the positive pair; every
    other row of both ``N x D`` batches is a negative. Equals ``info_nce_views`` on the
    stack ``[stolen, victim]``; mean over the ``2N`` anchors."""
    if stolen.shape != victim.shape:
        raise ValueError(f"stolen and victim outputs differ in shape: {tuple(stolen.shape)} vs {tuple(victim.shape)}")
    return info_nce_views(torch.stack((stolen, victim)), temperature=temperature)


LOSSES = {
    "infonce": infonce,
}
