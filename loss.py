"""Loss functions: pure functions of tensors, and one ``LOSSES`` table.

Every size is read from the tensors, never from a configured batch size. A loss never
detaches its victim input: targets that must carry no gradient (a victim's answers) are
produced without gradient at the call site. The one exception is ``symmetrized``, whose
definition (SimSiam) includes a stop-gradient on its targets.

Table signature: ``LOSSES[name](stolen: N x D, victim: N x D, **hparams) -> scalar``.
Hyper-parameters are keyword arguments with defaults; ``NEEDS`` lists the keywords that some
losses require (``labels``, ``n_views``). Wrong shapes or missing inputs raise ``ValueError``.
Half-precision inputs are computed in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


PAIRINGS = ("view", "reference")
"""How the two-view InfoNCE and SoftNN pair stolen and victim rows (``--pairing``)."""


def _identities(rows: int, n_views: int, pairing: str, device) -> torch.Tensor:
    """Identity of each of the ``2 * rows`` rows of ``cat[stolen, victim]`` (view-major blocks).

    ``view``: row ``r`` is query ``r mod rows`` (a stolen view and the victim's answer to that
    same view); ``reference``: row ``r`` is image ``r mod (rows / n_views)``, so every view of an
    image, stolen or victim, shares one identity (the reference's labels by image index).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}.")
    if n_views < 1 or rows % n_views:
        raise ValueError(f"{rows} rows are not n_views={n_views} equal view blocks.")
    period = rows if pairing == "view" else rows // n_views
    return torch.arange(2 * rows, device=device) % period


def infonce(stolen: torch.Tensor, victim: torch.Tensor, *, temperature: float = 0.07, n_views: int = 1,
            pairing: str = "view") -> torch.Tensor:
    """InfoNCE for stealing, on the ``2N`` rows ``cat[stolen, victim]`` (``N x D`` each, view-major
    when ``n_views > 1``); rows are L2-normalised, similarities are cosines / tau, the anchor is
    left out of its own denominator; mean over the ``2N`` anchors.

    ``pairing="view"`` (ours, the default): stolen row ``i`` and victim row ``i`` (the answer to
    that very view) are the one positive pair; every other row, the image's other views
    included, is a negative. Equals ``info_nce_views`` on ``stack[stolen, victim]``; with one view
    it is the reference's loss exactly.

    ``pairing="reference"`` (the reference's steal with ``--n-views 2``): rows are labelled by
    image, so each anchor has ``2 * n_views - 1`` same-image rows; the target is the *first*
    of them in row order (for a stolen anchor its own other view, for a victim anchor the
    stolen view 0) and the other same-image rows stay in the denominator.
    """
    if stolen.shape != victim.shape:
        raise ValueError(f"stolen and victim outputs differ in shape: {tuple(stolen.shape)} vs {tuple(victim.shape)}")
    if pairing == "view":
        return info_nce_views(torch.stack((stolen, victim)), temperature=temperature)
    ident = _identities(stolen.shape[0], n_views, pairing, stolen.device)
    z = F.normalize(torch.cat((stolen, victim)).float(), dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))
    positive = (ident.view(-1, 1) == ident.view(1, -1)) & ~eye
    target = positive.int().argmax(dim=1)  # the first same-image row after removing the anchor
    return F.cross_entropy(logits, target)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def _work(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 inputs are computed in float32; float32/float64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_pair(name: str, stolen: torch.Tensor, victim: torch.Tensor) -> None:
    if not isinstance(stolen, torch.Tensor) or not isinstance(victim, torch.Tensor):
        raise ValueError(f"{name} needs two tensors (stolen and victim outputs).")
    if stolen.dim() != 2:
        raise ValueError(f"{name} expects N x D outputs, got a stolen tensor of shape {tuple(stolen.shape)}.")
    if stolen.shape != victim.shape:
        raise ValueError(
            f"{name}: stolen and victim outputs differ in shape: {tuple(stolen.shape)} vs {tuple(victim.shape)}."
        )
    if stolen.shape[0] == 0:
        raise ValueError(f"{name} needs at least one row.")


def _check_views(name: str, rows: int, n_views: int) -> int:
    """Return the per-view batch size B, or raise if ``rows`` is not ``n_views * B`` with ``n_views >= 2``."""
    if n_views < 2 or rows % n_views != 0:
        raise ValueError(
            f"{name} needs two views of every image (--n-views 2): got n_views={n_views} and {rows} rows."
        )
    return rows // n_views


# ---------------------------------------------------------------------------------------
# Losses (uniform signature: fn(stolen N x D, victim N x D, **hparams) -> scalar)
# ---------------------------------------------------------------------------------------

def mse(stolen: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
    """Mean squared error between stolen and victim representations.

    Args:
        stolen, victim: ``N x D``; row ``i`` of both is the same query.

    No normalisation; mean over all ``N*D`` elements of ``(stolen - victim)^2`` (``nn.MSELoss``).
    The regression objective of the encoder-stealing paper (Dziedzic et al., "On the
    Difficulty of Defending Self-Supervised Learning against Model Extraction", ICML 2022).
    """
    _check_pair("mse", stolen, victim)
    return F.mse_loss(_work(stolen), _work(victim))


def softnn(stolen: torch.Tensor, victim: torch.Tensor, *, temperature: float = 100.0,
           eps: float = 1e-9, n_views: int = 1, pairing: str = "view") -> torch.Tensor:
    """Soft nearest-neighbour loss (Frosst, Papernot & Hinton, ICML 2019) on ``cat[stolen, victim]``.

    Args:
        stolen, victim: ``N x D``. The ``2N``-row stack ``X = cat[stolen, victim]`` is formed;
            rows ``i`` and ``i + N`` share an identity (stolen_i and victim_i answer the same query).
        temperature: ``T`` (the CLI's ``--temperaturesn``, default 100).
        eps: added inside the log (1e-9, as the reference).
        n_views, pairing: ``pairing="view"`` (ours) gives each query its own identity as above;
            ``"reference"`` (the reference's two-view steal) labels rows by image, so all
            ``2 * n_views - 1`` other rows of the same image are positives.

    Maths: ``d_ij = ||x_i - x_j||^2`` (squared Euclidean, no normalisation of the rows);
    ``w_ij = exp(-d_ij / T)``, ``w_ii = 0``; ``same_i = sum_{j != i, id_j = id_i} w_ij``;
    ``all_i = sum_{j != i} w_ij``; loss ``= -(1/2N) sum_i log(eps + same_i / all_i)``
    (mean over the ``2N`` rows; every row has a positive here).

    Numerics: distances are computed in float64 (like the reference) and the ratio is
    evaluated in log space, ``log(eps + exp(lse_same - lse_all))`` with the diagonal masked
    to ``-inf``, so far-apart points (``d/T`` of hundreds or thousands) do not underflow to
    ``0/0``; where the naive formula is finite the value is the same. The result is cast
    back to the input's (at least float32) dtype.
    """
    _check_pair("softnn", stolen, victim)
    if temperature <= 0:
        raise ValueError(f"softnn needs a positive temperature, got {temperature}.")
    out_dtype = _work(stolen).dtype
    x = torch.cat((stolen, victim)).double()
    n = stolen.shape[0]
    sq = (x * x).sum(dim=1)
    dist = (sq.view(-1, 1) + sq.view(1, -1) - 2.0 * (x @ x.t())).clamp_min(0.0)
    rows = 2 * n
    eye = torch.eye(rows, dtype=torch.bool, device=x.device)
    logits = (-dist / temperature).masked_fill(eye, float("-inf"))
    ident = _identities(n, n_views, pairing, x.device)
    same = (ident.view(-1, 1) == ident.view(1, -1)) & ~eye
    lse_all = torch.logsumexp(logits, dim=1)
    lse_same = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    # log(eps + exp(r)) with r = log(same/all) <= 0, computed without leaving log space.
    r = lse_same - lse_all
    per_row = torch.logaddexp(r, torch.full_like(r, math.log(eps)))
    return (-per_row.mean()).to(out_dtype)


def wasserstein(stolen: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein-1 distance between per-row feature histograms, via their CDFs.

    Args:
        stolen, victim: ``N x D``, assumed non-negative (post-ReLU average-pooled features).

    Each row is normalised by ``its sum + 1e-14`` to a distribution over the ``D`` feature
    indices; ``CDF = cumsum`` over features; per row ``sum_d |CDF_s - CDF_v|`` (the W1 distance
    on the integer grid); mean over the ``N`` rows. Wasserstein / optimal-transport distance
    (Kantorovich; as used for stealing by Dziedzic et al. 2022).
    """
    _check_pair("wasserstein", stolen, victim)
    s, v = _work(stolen), _work(victim)
    s = s / (s.sum(dim=1, keepdim=True) + 1e-14)
    v = v / (v.sum(dim=1, keepdim=True) + 1e-14)
    return (torch.cumsum(s, dim=1) - torch.cumsum(v, dim=1)).abs().sum(dim=1).mean()


def supcon(stolen: torch.Tensor, victim: torch.Tensor, *, labels: torch.Tensor | None = None,
           n_views: int = 2, temperature: float = 0.07, base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), contrast_mode 'all'.

    Args:
        stolen, victim: ``n_views*B x D`` each, view-major (rows ``v*B .. v*B+B-1`` are view ``v``).
        labels: integer class labels, length ``B`` (one per image; repeated over views and
            over stolen/victim) or length ``n_views*B`` (one per row, repeated over
            stolen/victim). ``-1`` (unlabeled) is rejected.
        n_views: views per image; must be >= 2 (the reference's split needs ``--n-views 2``).
        temperature, base_temperature: tau (``--temperature``) and the base tau (0.07).

    Features ``X = cat[normalize(stolen), normalize(victim)]`` (``2*n_views*B`` rows, L2-normalised);
    every row is both an anchor and a contrast. ``l_ab = x_a . x_b / tau``; the anchor itself is
    excluded from the denominator; positives of ``a`` are the rows with the same label,
    ``b != a``. Per anchor: ``-(tau/base_tau) * mean_{b in P(a)} (l_ab - log sum_{b' != a} exp l_ab')``;
    mean over the anchors that have a positive (here: all of them, since stolen_i and
    victim_i share a label).
    """
    _check_pair("supcon", stolen, victim)
    if labels is None:
        raise ValueError("supcon needs class labels (pass labels=...; the victim's true labels).")
    rows = stolen.shape[0]
    batch = _check_views("supcon", rows, n_views)
    labels = torch.as_tensor(labels, device=stolen.device).reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"supcon needs integer class labels, got dtype {labels.dtype}.")
    if labels.numel() == batch:
        row_labels = labels.repeat(n_views)
    elif labels.numel() == rows:
        row_labels = labels
    else:
        raise ValueError(
            f"supcon needs {batch} labels (one per image) or {rows} (one per row), got {labels.numel()}."
        )
    if (row_labels < 0).any():
        raise ValueError("supcon got unlabeled samples (label -1); it needs a class label for every image.")
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError("supcon needs positive temperature and base_temperature.")
    x = torch.cat((F.normalize(_work(stolen), dim=1), F.normalize(_work(victim), dim=1)))
    y = row_labels.repeat(2)
    m = x.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=x.device)
    logits = (x @ x.t() / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y.view(-1, 1) == y.view(1, -1)) & ~eye
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    # where(), not multiplication: the masked diagonal holds -inf.
    pos_sum = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -(temperature / base_temperature) * pos_sum[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


def barlow(stolen: torch.Tensor, victim: torch.Tensor, *, n_views: int = 2,
           lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins redundancy-reduction loss (Zbontar et al., ICML 2021), stealing form.

    Args:
        stolen, victim: ``2B x D`` each, view-major: rows ``:B`` are view 1, rows ``B:`` view 2.
        n_views: must be 2 (Barlow Twins pairs exactly two views; with the reference's default
            of one view the halves were different images).
        lambd: weight of the off-diagonal term (0.0051).
        eps: variance epsilon of the standardisation (1e-5).

    ``Z1 = cat[stolen[:B], victim[:B]]``, ``Z2 = cat[stolen[B:], victim[B:]]`` (``2B x D``). Each
    column of ``Z1`` and ``Z2`` is standardised with the batch mean and the biased variance
    (affine-free BatchNorm in train mode). ``C = Z1^T Z2 / 2B`` (``D x D``);
    loss ``= sum_i (C_ii - 1)^2 + lambd * sum_{i != j} C_ij^2`` (a sum, not a mean).
    """
    _check_pair("barlow", stolen, victim)
    if n_views != 2:
        raise ValueError(f"barlow needs exactly two views of every image (--n-views 2), got n_views={n_views}.")
    batch = _check_views("barlow", stolen.shape[0], n_views)
    s, v = _work(stolen), _work(victim)
    z1 = torch.cat((s[:batch], v[:batch]))
    z2 = torch.cat((s[batch:], v[batch:]))

    def standardise(z: torch.Tensor) -> torch.Tensor:
        mean = z.mean(dim=0, keepdim=True)
        var = z.var(dim=0, unbiased=False, keepdim=True)
        return (z - mean) / torch.sqrt(var + eps)

    c = standardise(z1).t() @ standardise(z2) / z1.shape[0]
    diag = torch.diagonal(c)
    on = (diag - 1.0).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


def symmetrized(stolen: torch.Tensor, victim: torch.Tensor, *, z1: torch.Tensor | None = None,
                z2: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Symmetrised negative cosine with stop-gradient (SimSiam, Chen & He, CVPR 2021).

    Two call forms:

    * explicit, ``symmetrized(p1, p2, z1=z1, z2=z2)``: ``p1, p2`` (``B x D``) are the
      predictor outputs for views 1 and 2, ``z1, z2`` (``B x D``) the targets for views 1, 2;
    * uniform (the ``LOSSES`` table), ``symmetrized(stolen, victim)``: ``stolen`` is
      ``2B x D`` view-major predictions (``p1 = stolen[:B]``, ``p2 = stolen[B:]``) and
      ``victim`` the ``2B x D`` view-major targets (``z1 = victim[:B]``, ``z2 = victim[B:]``).

    Loss ``= -1/2 * (mean_i cos(p1_i, sg(z2_i)) + mean_i cos(p2_i, sg(z1_i)))`` with cosine eps 1e-8;
    ``sg`` = stop-gradient (``detach``), which is part of the definition: the targets get no
    gradient from this loss. (The reference fed the targets through the attacker's projector
    without stop-gradient; we follow SimSiam.) Range ``[-1, 1]``, ``-1`` at perfect alignment.
    """
    if (z1 is None) != (z2 is None):
        raise ValueError("symmetrized needs both targets z1 and z2, or neither (uniform form).")
    if z1 is None:
        _check_pair("symmetrized", stolen, victim)
        batch = _check_views("symmetrized", stolen.shape[0], 2)
        p1, p2 = stolen[:batch], stolen[batch:]
        z1, z2 = victim[:batch], victim[batch:]
    else:
        p1, p2 = stolen, victim
        for name, (p, z) in (("p1/z1", (p1, z1)), ("p2/z2", (p2, z2)), ("p1/p2", (p1, p2))):
            if p.dim() != 2 or p.shape != z.shape:
                raise ValueError(
                    f"symmetrized: {name} must be B x D tensors of one shape, "
                    f"got {tuple(p.shape)} and {tuple(z.shape)}."
                )
    p1, p2 = _work(p1), _work(p2)
    z1, z2 = _work(z1).detach(), _work(z2).detach()
    return -0.5 * (F.cosine_similarity(p1, z2, dim=1, eps=eps).mean()
                   + F.cosine_similarity(p2, z1, dim=1, eps=eps).mean())


def softce(stolen: torch.Tensor, victim: torch.Tensor, *, temperature: float = 1.0,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target cross-entropy (knowledge distillation, Hinton et al. 2015).

    Args:
        stolen: ``N x D`` logits of the stolen model. victim: ``N x D`` victim outputs.
        temperature: the target is ``softmax(victim / temperature)`` (default 1).
        weights: optional ``D`` per-class weights multiplying inside the sum (as the reference).

    Loss ``= mean_i sum_j -softmax(victim_i / T)_j * log_softmax(stolen_i)_j`` (sum over
    classes, mean over rows). The reference stealing code computed the target from the
    stolen output itself (``softmax(f)``), so the victim's output was ignored (a bug); here
    the target is the victim's output, as intended.
    """
    _check_pair("softce", stolen, victim)
    if temperature <= 0:
        raise ValueError(f"softce needs a positive temperature, got {temperature}.")
    target = torch.softmax(_work(victim) / temperature, dim=1)
    terms = -target * F.log_softmax(_work(stolen), dim=1)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=terms.dtype, device=terms.device)
        if weights.shape != (stolen.shape[1],):
            raise ValueError(f"softce weights must have shape ({stolen.shape[1]},), got {tuple(weights.shape)}.")
        terms = terms * weights
    return terms.sum(dim=1).mean()


def bce(stolen: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits against the victim's signs (as the reference).

    Args:
        stolen: ``N x D`` logits. victim: ``N x D`` outputs; the target is
            ``round(sigmoid(victim)) = (victim > 0)`` as 0/1 floats.

    ``BCEWithLogits(stolen, target)``, mean over all ``N*D`` elements. (No paper; a baseline
    of the encoder-stealing code, Dziedzic et al. 2022.)
    """
    _check_pair("bce", stolen, victim)
    s = _work(stolen)
    return F.binary_cross_entropy_with_logits(s, (victim > 0).to(s.dtype))


LOSSES = {
    "infonce": infonce,
    "mse": mse,
    "softnn": softnn,
    "wasserstein": wasserstein,
    "supcon": supcon,
    "barlow": barlow,
    "symmetrized": symmetrized,
    "softce": softce,
    "bce": bce,
}
"""Name -> loss. Every entry is callable as ``fn(stolen, victim, **hparams)``."""

LOSS_NAMES = tuple(LOSSES)

LOSS_ALIASES = {"wassersein": "wasserstein"}
"""Other spellings the reference's command lines use (its ``wassersein`` typo)."""


def canonical_loss(name: str) -> str:
    """A ``--losstype`` value with the reference's spellings mapped to ours (an argparse ``type``)."""
    return LOSS_ALIASES.get(name, name)


@dataclass(frozen=True)
class LossSpec:
    """What a stealing loss needs from its caller; the scripts read this, never the loss names.

    ``views``: views per image in a batch (2 = two augmented views, view-major rows);
    ``labels``: needs the true class labels of the batch; ``n_views_kw``: takes the number
    of views as the keyword ``n_views``; ``flags``: ``(keyword, config key)`` pairs of the
    hyper-parameters the CLI feeds; ``through_head``: usable on a recreated head's outputs
    by ``stealhead.py`` (supcon needs labels, symmetrized its own projector); ``pairing``: takes
    ``pairing`` (``--pairing``) and ``n_views`` keywords (two-view InfoNCE / SoftNN).
    """
    views: int = 1
    labels: bool = False
    n_views_kw: bool = False
    flags: tuple[tuple[str, str], ...] = ()
    through_head: bool = True
    pairing: bool = False

    def hparams(self, config: dict) -> dict:
        """The loss's hyper-parameters from a config (views and labels are added per batch)."""
        return {kw: config[key] for kw, key in self.flags if config.get(key) is not None}

    def batch_kwargs(self, n_views: int, labels: torch.Tensor | None = None) -> dict:
        """The per-batch keywords: ``n_views`` and ``labels`` where the loss takes them."""
        extra: dict = {"n_views": n_views} if self.n_views_kw or self.pairing else {}
        if self.labels:
            extra["labels"] = labels
        return extra


SPECS: dict[str, LossSpec] = {
    "infonce": LossSpec(flags=(("temperature", "temperature"), ("pairing", "pairing")), pairing=True),
    "mse": LossSpec(),
    "softnn": LossSpec(flags=(("temperature", "temperaturesn"), ("pairing", "pairing")), pairing=True),
    "wasserstein": LossSpec(),
    "supcon": LossSpec(views=2, labels=True, n_views_kw=True, flags=(("temperature", "temperature"),),
                       through_head=False),
    "barlow": LossSpec(views=2, n_views_kw=True),
    "symmetrized": LossSpec(views=2, through_head=False),
    "softce": LossSpec(flags=(("temperature", "temperature"),)),
    "bce": LossSpec(),
}
"""Name -> :class:`LossSpec`, one entry per ``LOSSES`` entry (a test checks they match)."""

NEEDS = {name: frozenset(kw for kw, on in (("labels", spec.labels), ("n_views", spec.n_views_kw)) if on)
         for name, spec in SPECS.items() if spec.labels or spec.n_views_kw}
"""Keyword arguments a loss needs from the caller beyond ``(stolen, victim)`` (from ``SPECS``)."""

HPARAMS = {
    "infonce": frozenset({"temperature", "n_views", "pairing"}),
    "softnn": frozenset({"temperature", "n_views", "pairing"}),
    "supcon": frozenset({"temperature", "base_temperature"}),
    "barlow": frozenset({"lambd"}),
    "softce": frozenset({"temperature", "weights"}),
}
"""Every optional hyper-parameter keyword each loss accepts (all have defaults); the ones the
CLI feeds are ``SPECS[name].flags``."""

HEAD_STEAL_LOSSES = tuple(n for n, spec in SPECS.items() if spec.through_head)
