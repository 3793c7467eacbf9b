"""Ownership by watermark: a private rotation task embedded in the victim, and tests of a suspect.

The owner trains its encoder jointly with an **augmentation predictor** (the paper's
Section 5.1): every training image gives two extra views, one rotated by an angle drawn
uniformly from [0°, 180°), the other from [180°, 360°) (nearest-neighbour, black fill, no
expansion, counter-clockwise as torchvision's ``rotate``), and a two-layer MLP on the
encoder's representation says which interval each view came from (cross-entropy, weighted
by ``--watermark-weight`` and added to the victim's own loss in the same step). The
predictor is trained with the encoder (the reference left its MLP at its random
initialisation, outside the optimizer) and saved in the victim checkpoint under
``watermark``; it is the owner's secret and never goes through the service.

Tests of a suspect encoder (``watermark.py`` is the CLI):

* **WSR** (watermark success rate, Section 5.1): the owner's predictor applied to the
  suspect's representations of the victim's training images, rotated as in training; the
  fraction of views whose interval it gets right. An unrelated encoder sits near 50%.
* **Retrained WSR** (Appendix E.2's wording): a fresh predictor of the same shape trained on
  the suspect's own representations of rotated training images and tested on other rotated
  training images. It does not need the suspect to live in the victim's coordinates (an
  InfoNCE or SoftNN copy need not), but any encoder that sees orientation can learn the task,
  so it measures how well the suspect encodes rotation, not only the watermark.
* **Ownership t-test** (Table 4): per-view correctness (0/1) of the owner's predictor on the
  suspect against the same views on an independently trained encoder; one-sided Student
  t-test (H1: the suspect scores higher), reporting Δμ (the WSR difference as a fraction), t
  and p. The victim itself is the positive control: if the watermarked victim does not beat
  the independent encoder, the watermark carries no signal and the verdict is inconclusive.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from data_aug import rotate
from models import build_mlp, load_state_dict_strict
from simclr import Step
from statistical_tests.t_test import ttest
from utils import UserError

TASK = "rotation"
INTERVALS = ((0.0, 180.0), (180.0, 360.0))  # class 0, class 1 (degrees, upper bound excluded)


def watermark_views(images: torch.Tensor, generator: Optional[torch.Generator] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The watermark task's inputs and labels for a batch of ``B`` images: ``2B`` views
    (all the [0°, 180°) rotations, then all the [180°, 360°) ones) and labels ``[0]*B + [1]*B``.
    The angles are drawn on the CPU from ``generator``."""
    b = images.shape[0]
    views, labels = [], []
    for label, (lo, hi) in enumerate(INTERVALS):
        angles = lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)
        views.append(rotate(images, angles))
        labels.append(torch.full((b,), label, dtype=torch.long))
    return torch.cat(views), torch.cat(labels).to(images.device)


def predictor_dims(rep_dim: int, hidden: Optional[int] = None) -> list[int]:
    """The augmentation predictor: a two-layer MLP ``rep_dim -> hidden (default rep_dim) -> 2``."""
    return [rep_dim, hidden or rep_dim, 2]


def build_predictor(rep_dim: int, hidden: Optional[int] = None) -> nn.Sequential:
    return build_mlp(predictor_dims(rep_dim, hidden))


def with_watermark(step: Step, encoder: nn.Module, predictor: nn.Module, weight: float) -> Step:
    """``step`` plus the watermark term: loss + ``weight`` x CE(predictor(encoder(rotated views))).

    The views are rotations of the batch's own images (``batch[0]``), drawn from the step's
    generator after the wrapped step's draws, so a run stays reproducible and resumable.
    Adds the metrics ``wm_loss`` and ``wm_acc`` (% of views whose interval is right).
    """
    def watermarked(batch, generator: torch.Generator):
        loss, metrics, n = step(batch, generator)
        views, labels = watermark_views(batch[0], generator)
        logits = predictor(encoder(views)).float()
        wm = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean().item() * 100.0
        return loss + weight * wm, {**metrics, "wm_loss": wm.item(), "wm_acc": acc}, n + views.shape[0]

    return watermarked


def watermark_record(predictor: nn.Module, rep_dim: int, hidden: Optional[int], weight: float) -> dict:
    """What a victim checkpoint keeps under ``watermark`` (plain values and tensors only)."""
    return {"task": TASK, "intervals": [list(i) for i in INTERVALS], "weight": float(weight),
            "kwargs": {"dims": predictor_dims(rep_dim, hidden)},
            "state_dict": {k: v.detach().cpu() for k, v in predictor.state_dict().items()}}


def load_predictor(checkpoint: dict, path: object = "the victim checkpoint") -> nn.Sequential:
    """The owner's augmentation predictor from a victim checkpoint, or one clear error."""
    record = checkpoint.get("watermark")
    if not record:
        raise UserError(f"{path} has no watermark predictor, so it cannot measure a watermark success rate; "
                        f"train a watermarked victim with `python run.py --watermark True` and pass its checkpoint")
    if record.get("task") != TASK:
        raise UserError(f"{path} holds a {record.get('task')!r} watermark; this version knows only {TASK!r}")
    predictor = build_mlp(record["kwargs"]["dims"])
    load_state_dict_strict(predictor, record["state_dict"], what="watermark predictor")
    return predictor.eval()


# ----------------------------------------------------------------------------- measuring a suspect


def check_dims(suspect_dim: int, victim_dim: int, what: str = "suspect") -> None:
    if suspect_dim != victim_dim:
        raise UserError(f"the {what}'s representations are {suspect_dim}-d but the victim's are {victim_dim}-d; "
                        f"ownership tests compare encoders with the victim's representation size (pass a "
                        f"checkpoint of an encoder with {victim_dim}-d outputs)")


@torch.no_grad()
def rotated_features(encoder: nn.Module, images: torch.Tensor, *, seed: int, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's representations (CPU, float) of the watermark views of ``images`` and their
    labels, view for view identical for every encoder given the same ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            views, y = watermark_views(images[start:start + batch_size], gen)
            feats.append(encoder(views.to(device)).float().cpu())
            labels.append(y.cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def predictor_correct(predictor: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-view correctness (0./1.) of ``predictor`` on ``features``."""
    check_dims(features.shape[1], predictor[0].in_features)
    predictor = predictor.to("cpu").eval()
    return (predictor(features).argmax(1) == labels).float()


def retrained_wsr(features: torch.Tensor, labels: torch.Tensor, *, hidden: Optional[int] = None, epochs: int = 300,
                  lr: float = 1e-2, train_fraction: float = 0.5, seed: int = 0) -> float:
    """WSR (%) of a fresh predictor trained on the first ``train_fraction`` of the images'
    views (both rotations of an image stay on one side) and tested on the rest. Features
    are standardised with the training part's statistics; full-batch Adam."""
    n = features.shape[0] // 2
    cut = max(1, min(n - 1, int(round(n * train_fraction))))
    train_idx = torch.cat([torch.arange(cut), n + torch.arange(cut)])
    test_idx = torch.cat([torch.arange(cut, n), n + torch.arange(cut, n)])
    mean, std = features[train_idx].mean(0), features[train_idx].std(0).clamp_min(1e-6)
    x = (features - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = build_predictor(features.shape[1], hidden)
    opt = torch.optim.Adam(predictor.parameters(), lr=lr, weight_decay=1e-4)
    predictor.train()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(predictor(x[train_idx]), labels[train_idx]).backward()
        opt.step()
    predictor.eval()
    with torch.no_grad():
        return 100.0 * (predictor(x[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()


def ownership_test(suspect: torch.Tensor, independent: torch.Tensor, *, victim: Optional[torch.Tensor] = None,
                   alpha: float = 0.05) -> dict:
    """Table 4: the owner's predictor's per-view correctness on the suspect against the
    independent encoder's (same views). One-sided Student t-test, H1: the suspect scores
    higher (``delta_mu``, ``t``, ``p``: the paper's test). ``victim``: the watermarked victim's
    own correctness, the positive control.

    The verdict also asks the suspect to beat chance: ``p_chance`` is the one-sided one-sample
    t-test of its correctness against 0.5. One independent encoder is one draw of what an
    unrelated model scores, and it can sit well below 50% (measured at cpu scale: 44.5% on
    2,000 views, five standard errors below), which alone would make a random encoder look
    stolen. So: inconclusive if the victim does not beat the independent encoder; stolen if the
    suspect beats both the independent encoder and chance; else not stolen.
    """
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")

    def test(a: torch.Tensor, b: torch.Tensor) -> tuple[Optional[float], Optional[float]]:
        t, p = ttest(a.double().numpy(), b.double().numpy(), alternative="greater")
        return (None if math.isnan(t) else t), (None if math.isnan(p) else p)

    def beats_chance(a: torch.Tensor) -> Optional[float]:
        res = stats.ttest_1samp(a.double().numpy(), 0.5, alternative="greater")
        return None if math.isnan(res.pvalue) else float(res.pvalue)

    t, p = test(suspect, independent)
    p_chance = beats_chance(suspect)
    out = {"delta_mu": float(suspect.mean() - independent.mean()), "t": t, "p": p, "p_chance": p_chance,
           "n": int(suspect.numel()), "alpha": alpha}
    control = None
    if victim is not None:
        _, control = test(victim, independent)
        out["p_victim"] = control
        out["delta_mu_victim"] = float(victim.mean() - independent.mean())

    def show(x: Optional[float]) -> str:
        return "undefined" if x is None else f"{x:.3g}"

    if victim is not None and (control is None or control >= alpha):
        out["verdict"] = "inconclusive"
        out["reason"] = (f"the watermarked victim itself does not beat the independent encoder (p {show(control)} "
                         f">= {alpha}), so the watermark carries no signal")
    elif p is not None and p < alpha and p_chance is not None and p_chance < alpha:
        out["verdict"] = "stolen"
        out["reason"] = (f"the suspect's WSR exceeds the independent encoder's (p {show(p)}) and chance (p "
                         f"{show(p_chance)}), both < {alpha}")
    else:
        out["verdict"] = "not stolen"
        out["reason"] = (f"no evidence that the suspect's WSR exceeds both the independent encoder's (p {show(p)}) "
                         f"and chance (p {show(p_chance)}) at {alpha}")
    return out
