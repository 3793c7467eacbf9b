"""Dataset inference: does a suspect encoder come from the victim's? Three tests (paper Appendix F, Tables 18-20).

The owner (victim) holds its private training images and wants to know whether a suspect encoder was stolen
from its own. Every test reduces each encoder to one number per image, compares the samples with Welch's
t-test (:func:`statistical_tests.t_test.ttest`, ``equal_var=False``) and returns a :class:`Verdict`:
``"stolen"``, ``"not stolen"`` or ``"inconclusive"``, with the statistics and one sentence of reason.

**A failed null is no evidence.** A p value at or above ``alpha`` only says that the data did not show the
effect; it does not show that the effect is absent. A test may only answer "not stolen" when something proves
it *could* have answered "stolen": a positive control (the victim itself shows the signal, or the statistic
tells the victim from an unrelated model). Without such a control a negative is "inconclusive".

1. ``l2_distance_test`` (Table 18). On the ``N`` private images, the Euclidean distance of each row of the
   suspect's representations to the victim's row, ``d_S``, against the same for an independently trained model,
   ``d_I`` (and, reported only, a random model ``d_R``). H0: mean d_S >= mean d_I; H1: mean d_S < mean d_I
   (one-sided Welch). Verdict: "stolen" if p < alpha, else "not stolen": the test always has power against an
   exact copy, whose distances are all 0. The paper's mean distances: random 34.1, MSE-stolen copies 26.6 and
   14.6, SoftNN 14.4, but the InfoNCE copy 44, farther than random: a copy that does not live in the victim's
   coordinates (any rotation or rescaling of them) escapes this test.
2. ``noise_ball_test`` (Table 19). Per image, ``sigma`` = the RMS per-coordinate standard deviation of the
   L2-normalised representations of ``n_noise`` Gaussian-noised copies (:func:`noise_ball_sigmas`): how far
   the encoder's output spreads around a training image. With ``direction = sign(mean unrelated - mean
   victim)``: p2 = two-sided Welch, unrelated vs victim (the paper's H0 mu_R = mu_V); p1 = one-sided Welch of
   suspect vs victim toward the unrelated side (``greater`` for direction +1, which is exactly the paper's
   H0 mu_S <= mu_V); p3 = one-sided Welch of suspect vs unrelated toward the victim's side. Verdict:
   "inconclusive" if p2 >= alpha (the statistic does not separate the victim from an unrelated model, so it
   says nothing about a suspect); else "stolen" if p3 < alpha and p1 >= alpha (the suspect sits on the
   victim's side of the unrelated model and not significantly on the unrelated side of the victim); else
   "not stolen".
3. ``private_public_test`` (Table 20). Per image, the mean L2 distance between the normalised representation
   of an image and those of its augmentations (:func:`augmentation_distances`), on the victim's private
   training images and on public images. A model trained on the private images maps their augmentations
   closer: delta_mu = mean(public) - mean(private), H1: mean public > mean private (one-sided Welch).
   Positive control: the victim's own distances (``victim_private``/``victim_public``) give p_victim; if
   p_victim >= alpha the verdict is "inconclusive" (even the victim shows no membership signal); else
   "stolen" if p < alpha, else "not stolen". Without a control: "stolen" if p < alpha, else "inconclusive".
   The paper found no signal for SSL encoders (delta_mu <= 0, p >= 0.79; SVHN delta_mu -0.17, p 0.99;
   ImageNet -0.02, p 1.0), whereas supervised models often show one (delta_mu 1.06, t 4.03, p 1e-5).

A p value that is undefined (both samples with zero variance) is stored as ``None`` and counts as 1 for the
verdict; non-finite statistics are stored as ``None`` too, so :meth:`Verdict.as_dict` is JSON-serialisable.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_aug.augment import to_float
from statistical_tests.t_test import ttest
from utils import UserError

VERDICTS = ("stolen", "not stolen", "inconclusive")
TESTS = ("l2", "noise_ball", "private_public")


@dataclass
class Verdict:
    """The answer of one ownership test: ``verdict`` in :data:`VERDICTS`, its statistics and why."""

    test: str
    verdict: str
    alpha: float
    stats: dict = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"unknown test {self.test!r}; choose one of {TESTS}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; choose one of {VERDICTS}")

    def as_dict(self) -> dict:
        """``{"test", "verdict", "alpha", "reason", **stats}``: one flat JSON-serialisable record."""
        return {"test": self.test, "verdict": self.verdict, "alpha": self.alpha, "reason": self.reason,
                **copy.deepcopy(self.stats)}


# -- representations ------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"the {what} must be a tensor N x C x H x W, got {shape} (stack the images into one batch)")
    if len(images) == 0:
        raise UserError(f"no {what} were given (pass at least one image)")


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")


class _EvalMode:
    """Puts every submodule in eval mode and restores each one's own mode afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            m.training = mode


def _forward(encoder: nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    out = encoder(x.to(device))
    if out.dim() != 2:
        out = out.flatten(1)
    return out.detach().float().cpu()


@torch.no_grad()
def representations(encoder: nn.Module, images: torch.Tensor, *, batch_size: int = 256,
                    device="cpu") -> torch.Tensor:
    """The encoder's representations ``N x D`` (float32, CPU) of ``images`` (uint8 0..255 or float 0..1).

    The encoder runs in eval mode during the call (each submodule gets its own training/eval mode back
    afterwards); it must already live on ``device``, where the batches are sent.
    """
    _check_images(images)
    _check_batch_size(batch_size)
    with _EvalMode(encoder):
        parts = [_forward(encoder, to_float(images[i:i + batch_size]), device)
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def _normalised(encoder: nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    return F.normalize(_forward(encoder, x, device).double(), dim=1)


@torch.no_grad()
def noise_ball_sigmas(encoder: nn.Module, images: torch.Tensor, *, n_noise: int = 16, noise_std: float = 0.05,
                      generator: torch.Generator, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Per image, the spread of the encoder's normalised representations over a ball of Gaussian noise: ``[N]``.

    For each image ``x`` (float in [0, 1]), ``n_noise`` copies ``clamp(x + eps, 0, 1)`` with ``eps ~ N(0,
    noise_std^2)`` per pixel, drawn on the CPU from ``generator``; the representations ``r_j`` are
    L2-normalised (so the statistic ignores the representation's scale) and ``sigma = sqrt(mean over copies
    j and coordinates of (r_j - mean_j r_j)^2)``. Images are processed ``max(1, batch_size // n_noise)`` at a
    time, so a fresh generator with the same seed (and the same ``batch_size``) gives every model the same
    noise. float64 ``[N]`` on the CPU.
    """
    _check_images(images)
    _check_batch_size(batch_size)
    if int(n_noise) < 2:
        raise UserError(f"n_noise must be at least 2 to measure a spread, got {n_noise}")
    if not noise_std >= 0:
        raise UserError(f"noise_std must be non-negative, got {noise_std}")
    per = max(1, int(batch_size) // int(n_noise))
    out = []
    with _EvalMode(encoder):
        for i in range(0, len(images), per):
            x = to_float(images[i:i + per])
            b = len(x)
            eps = (torch.randn((b, n_noise, *x.shape[1:]), generator=generator) * noise_std).to(x.device)
            noisy = (x.unsqueeze(1) + eps).clamp_(0.0, 1.0).flatten(0, 1)
            r = _normalised(encoder, noisy, device).view(b, n_noise, -1)
            # shift by the first copy (variance is shift-invariant): a constant output gives exactly 0
            r = r - r[:, :1]
            dev = r - r.mean(dim=1, keepdim=True)
            out.append(dev.pow(2).mean(dim=(1, 2)).sqrt())
    return torch.cat(out)


@torch.no_grad()
def augmentation_distances(encoder: nn.Module, images: torch.Tensor, augment: Callable, *, n_aug: int = 8,
                           generator: torch.Generator, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Per image, the mean L2 distance between normalised representations of its augmentations and of itself.

    ``d(x) = mean_j || r(a_j(x)) - r(x) ||_2`` over ``n_aug`` augmentations, ``r`` L2-normalised;
    ``augment(images, generator) -> float B x 3 x S x S`` (e.g. ``SimCLRAugment(size, crop_scale=(0.8, 1.0),
    flip_p=0.0)``) is called ``n_aug`` times per batch of ``batch_size`` images, batch after batch, so the
    same seed gives the same views. float64 ``[N]`` on the CPU.
    """
    _check_images(images)
    _check_batch_size(batch_size)
    if int(n_aug) < 1:
        raise UserError(f"n_aug must be at least 1, got {n_aug}")
    out = []
    with _EvalMode(encoder):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            base = _normalised(encoder, to_float(x), device)
            total = torch.zeros(len(x), dtype=torch.float64)
            for _ in range(n_aug):
                views = augment(x, generator)
                if tuple(views.shape[:1]) != (len(x),):
                    raise UserError(f"the augmentation returned {len(views)} views for {len(x)} images "
                                    "(it must return one view per image)")
                total += (_normalised(encoder, views, device) - base).norm(dim=1)
            out.append(total / n_aug)
    return torch.cat(out)


# -- checks and statistics ------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UserError(f"alpha must be a number in (0, 1), got {alpha!r} (0.05 is the usual level)") from None
    if not 0.0 < a < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {alpha!r} (0.05 is the usual level)")
    return a


def _numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"the {what} contain NaN or infinite values (check the encoder's outputs)")
    return arr


def _matrix(x, what: str) -> np.ndarray:
    arr = _numpy(x, f"{what}'s representations")
    if arr.ndim != 2:
        raise UserError(f"the {what}'s representations must be a matrix N x D, got shape {arr.shape} "
                        "(pass one representation row per image)")
    return arr


def _vector(x, what: str) -> np.ndarray:
    arr = _numpy(x, what)
    if arr.ndim != 1:
        raise UserError(f"the {what} must be a vector with one value per image, got shape {arr.shape}")
    if len(arr) < 2:
        raise UserError(f"the {what} hold {len(arr)} value(s) but a t-test needs at least 2 per sample "
                        "(use more images)")
    return arr


def _same_matrix(ref: np.ndarray, other: np.ndarray, what: str) -> None:
    if other.shape[1] != ref.shape[1]:
        raise UserError(f"the {what}'s representations are {other.shape[1]}-d but the victim's are "
                        f"{ref.shape[1]}-d; ownership tests compare encoders with the same representation size "
                        "(pass the matching checkpoint)")
    if other.shape[0] != ref.shape[0]:
        raise UserError(f"the {what}'s representations cover {other.shape[0]} images but the victim's cover "
                        f"{ref.shape[0]}; the test compares the same images row by row (pass the representations "
                        "of the same private images, in the same order)")


def _same_length(ref: np.ndarray, other: np.ndarray, what: str, ref_what: str) -> None:
    if len(other) != len(ref):
        raise UserError(f"the {what} hold {len(other)} values but the {ref_what} hold {len(ref)}; the test "
                        "compares the same images (compute every model's values on the same images)")


def _num(x) -> Optional[float]:
    """A finite float, or ``None`` (NaN/inf are not JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _welch(a: np.ndarray, b: np.ndarray, alternative: str) -> tuple[Optional[float], Optional[float], float]:
    """``(t, p, p_for_verdict)``: Welch's t-test, NaN/inf stored as None and an undefined p counted as 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on (nearly) constant samples
        t, p = ttest(a, b, equal_var=False, alternative=alternative)
    p_stat = None if math.isnan(p) else float(p)
    return _num(t), p_stat, 1.0 if p_stat is None else p_stat


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1))


def _fmt(p: Optional[float]) -> str:
    return "undefined (zero variance in both samples, counted as 1)" if p is None else f"{p:.3g}"


# -- the three tests ------------------------------------------------------------------------------------------


def l2_distance_test(victim, suspect, independent, *, random=None, alpha: float = 0.05) -> Verdict:
    """Is the suspect closer to the victim, row by row, than an independently trained model? (Table 18)

    ``victim``, ``suspect``, ``independent`` (and optional ``random``) are the representations ``N x D`` of the
    same ``N`` private images. H1: mean d_S < mean d_I (one-sided Welch); "stolen" if p < alpha, else
    "not stolen".
    """
    alpha = _check_alpha(alpha)
    v = _matrix(victim, "victim")
    others = {"suspect": _matrix(suspect, "suspect"), "independent": _matrix(independent, "independent model")}
    if random is not None:
        others["random"] = _matrix(random, "random model")
    for name, m in others.items():
        _same_matrix(v, m, {"independent": "independent model", "random": "random model"}.get(name, name))
    if len(v) < 2:
        raise UserError(f"the representations cover {len(v)} image(s) but a t-test needs at least 2 "
                        "(use more private images)")
    dist = {name: np.linalg.norm(m - v, axis=1) for name, m in others.items()}
    d_s, d_i = dist["suspect"], dist["independent"]
    t, p, p_v = _welch(d_s, d_i, "less")
    stats: dict = {}
    for name, d in dist.items():
        stats[f"mean_d_{name}"] = float(d.mean())
        stats[f"std_d_{name}"] = _std(d)
    stats.update(delta_mu=float(d_i.mean() - d_s.mean()), t=t, p=p, n=int(len(v)), dim=int(v.shape[1]))
    stolen = p_v < alpha
    reason = (f"the suspect's mean l2 distance to the victim ({d_s.mean():.4g}) is "
              f"{'significantly' if stolen else 'not significantly'} below the independent model's "
              f"({d_i.mean():.4g}): one-sided Welch p = {_fmt(p)} {'<' if stolen else '>='} alpha = {alpha:g}")
    return Verdict("l2", "stolen" if stolen else "not stolen", alpha, stats, reason + ".")


def noise_ball_test(victim_sigmas, suspect_sigmas, unrelated_sigmas, *, alpha: float = 0.05) -> Verdict:
    """Does the suspect spread a noise ball like the victim rather than like an unrelated model? (Table 19)

    Inputs: :func:`noise_ball_sigmas` of the three encoders on the same images. See the module docstring for
    p1, p2, p3 and the verdict rule.
    """
    alpha = _check_alpha(alpha)
    v = _vector(victim_sigmas, "victim's sigmas")
    s = _vector(suspect_sigmas, "suspect's sigmas")
    u = _vector(unrelated_sigmas, "unrelated model's sigmas")
    _same_length(v, s, "suspect's sigmas", "victim's")
    _same_length(v, u, "unrelated model's sigmas", "victim's")
    direction = 1 if u.mean() >= v.mean() else -1
    away, toward = ("greater", "less") if direction == 1 else ("less", "greater")
    t1, p1, p1_v = _welch(s, v, away)
    t2, p2, p2_v = _welch(u, v, "two-sided")
    t3, p3, p3_v = _welch(s, u, toward)
    stats = {"mu_sigma_victim": float(v.mean()), "mu_sigma_suspect": float(s.mean()),
             "mu_sigma_unrelated": float(u.mean()), "std_sigma_victim": _std(v), "std_sigma_suspect": _std(s),
             "std_sigma_unrelated": _std(u), "t1": t1, "p1": p1, "t2": t2, "p2": p2, "t3": t3, "p3": p3,
             "direction": direction, "n": int(len(v))}
    if p2_v >= alpha:
        verdict = "inconclusive"
        reason = (f"the noise-ball spread does not tell the victim from an unrelated model (two-sided p2 = "
                  f"{_fmt(p2)} >= alpha = {alpha:g}), so it cannot say anything about the suspect")
    elif p3_v < alpha and p1_v >= alpha:
        verdict = "stolen"
        reason = (f"the suspect's spread is significantly on the victim's side of the unrelated model's (p3 = "
                  f"{_fmt(p3)} < alpha = {alpha:g}) and not significantly beyond the victim's toward it (p1 = "
                  f"{_fmt(p1)} >= alpha), while the victim and the unrelated model differ (p2 = {_fmt(p2)})")
    else:
        verdict = "not stolen"
        why = []
        if p1_v < alpha:
            why.append(f"significantly on the unrelated model's side of the victim (p1 = {_fmt(p1)} < alpha = "
                       f"{alpha:g})")
        if p3_v >= alpha:
            why.append(f"not significantly on the victim's side of the unrelated model (p3 = {_fmt(p3)} >= "
                       f"alpha = {alpha:g})")
        reason = (f"the suspect's spread is {' and '.join(why)}, although the statistic separates the victim from "
                  f"an unrelated model (p2 = {_fmt(p2)})")
    return Verdict("noise_ball", verdict, alpha, stats, reason + ".")


def private_public_test(private_distances, public_distances, *, victim_private=None, victim_public=None,
                        alpha: float = 0.05) -> Verdict:
    """Does the suspect map the victim's private images' augmentations closer than public ones'? (Table 20)

    Inputs: :func:`augmentation_distances` of the suspect on private and on public images (the two sets may
    differ in size); ``victim_private``/``victim_public``, the victim's own, are the positive control.
    """
    alpha = _check_alpha(alpha)
    priv = _vector(private_distances, "suspect's private-image distances")
    pub = _vector(public_distances, "suspect's public-image distances")
    if (victim_private is None) != (victim_public is None):
        raise UserError("give both victim_private and victim_public for the positive control, or neither")
    t, p, p_v = _welch(pub, priv, "greater")
    stats: dict = {"mean_private": float(priv.mean()), "std_private": _std(priv), "mean_public": float(pub.mean()),
                   "std_public": _std(pub), "delta_mu": float(pub.mean() - priv.mean()), "t": t, "p": p,
                   "n_private": int(len(priv)), "n_public": int(len(pub))}
    signal = p_v < alpha
    suspect_part = (f"the suspect's public-minus-private distance delta_mu = {stats['delta_mu']:.4g} has one-sided "
                    f"p = {_fmt(p)} {'<' if signal else '>='} alpha = {alpha:g}")
    if victim_private is None:
        verdict = "stolen" if signal else "inconclusive"
        reason = suspect_part + ("" if signal else " and there is no positive control to show the test has power")
        return Verdict("private_public", verdict, alpha, stats, reason + ".")
    vpriv = _vector(victim_private, "victim's private-image distances")
    vpub = _vector(victim_public, "victim's public-image distances")
    _, pv, pv_v = _welch(vpub, vpriv, "greater")
    stats.update(delta_mu_victim=float(vpub.mean() - vpriv.mean()), p_victim=pv)
    if pv_v >= alpha:
        verdict = "inconclusive"
        reason = (f"even the victim shows no membership signal (p_victim = {_fmt(pv)} >= alpha = {alpha:g}), "
                  f"so the suspect's result says nothing ({suspect_part})")
    else:
        verdict = "stolen" if signal else "not stolen"
        reason = f"{suspect_part}, while the victim itself shows the signal (p_victim = {_fmt(pv)} < alpha)"
    return Verdict("private_public", verdict, alpha, stats, reason + ".")


__all__ = ["VERDICTS", "Verdict", "representations", "l2_distance_test", "noise_ball_sigmas", "noise_ball_test",
           "augmentation_distances", "private_public_test"]
