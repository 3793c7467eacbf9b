"""The owner's ownership tests of one suspect encoder, run together (the library behind ``watermark.py``).

:func:`verify` takes the victim (a loaded checkpoint), the suspect, an independently trained
encoder and a randomly initialised one, and runs the tests asked for:

=============== ============================================ ==================================
test            what it measures                             paper
=============== ============================================ ==================================
wsr             the owner's predictor on the suspect's       Section 5.1, Tables 16-17
                representations of rotated training images
retrained       a predictor retrained on the suspect's own   Appendix E.2
                representations
ttest           suspect vs independent WSR, one-sided t-test Table 4
l2              distance to the victim's representations     Table 18
noise_ball      spread of representations around training    Table 19
                images, victim vs suspect vs random
private_public  augmentation distances, private vs public    Table 20
=============== ============================================ ==================================

The watermark tests (wsr, retrained, ttest) need a watermarked victim (``run.py --watermark
True``); the dataset-inference tests (:mod:`defenses.inference`) work on any victim.
Private images are the victim's training images (the first ``n``), public images the
held-out end of its test split (never queried by the attacks, never trained on).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from data_aug import SimCLRAugment, dataset_info, get_dataset, split_holdout
from defenses import inference
from defenses.watermark import (
    check_dims,
    load_predictor,
    ownership_test,
    predictor_correct,
    retrained_wsr,
    rotated_features,
)
from engine.presets import scale_of
from models import ResNetEncoder, load_encoder
from models.checkpoint import encoder_kwargs
from utils import UserError

WATERMARK_TESTS = ("wsr", "retrained", "ttest")
INFERENCE_TESTS = ("l2", "noise_ball", "private_public")
TESTS = WATERMARK_TESTS + INFERENCE_TESTS
# per scale: private/public images, noise ball and augmentations of the dataset-inference tests
SETTINGS = {
    "cpu": {"n": 1000, "noise_std": 0.05, "n_noise": 16, "n_aug": 8, "crop_min_scale": 0.8, "hflip_p": 0.0},
    "paper": {"n": 5000, "noise_std": 0.05, "n_noise": 16, "n_aug": 8, "crop_min_scale": 0.08, "hflip_p": 0.5},
}


def private_public_images(dataset: str, image_size: int, *, n: Optional[int] = None, data: Optional[str] = None,
                          supervised: bool = False, with_public: bool = True
                          ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(private, public)`` uint8 images: the first ``n`` of the victim's training images (its
    self-supervised training split, STL10's unlabeled images; the labelled train split for a
    supervised victim) and up to ``n`` of the held-out end of the test split (the linear probe's
    evaluation set, which no attack queries), or ``None`` without ``with_public``."""
    info = dataset_info(dataset)
    split = info.train_split if supervised else info.query_split
    private = get_dataset(dataset, split, root=data, image_size=image_size).images[:n]
    if not with_public:
        return private, None
    _, evaluation = split_holdout(get_dataset(dataset, info.test_split, root=data, image_size=image_size))
    return private, evaluation.images[:n]


def random_like(encoder: nn.Module, seed: int) -> nn.Module:
    """The suspect that was never trained: the victim's architecture at a seeded random initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNetEncoder(**encoder_kwargs(encoder))


def verify(*, victim_encoder: nn.Module, victim_checkpoint: dict, victim_path: object, suspect: nn.Module,
           independent: Optional[nn.Module], random_model: nn.Module, private: torch.Tensor,
           public: Optional[torch.Tensor], tests: tuple[str, ...], scale: str = "cpu", alpha: float = 0.05,
           seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256) -> dict:
    """Run ``tests`` on ``suspect``; returns ``{test: statistics and verdict}`` (plain values)."""
    settings = SETTINGS[scale]
    encoders = {"victim": victim_encoder, "suspect": suspect, "random": random_model}
    if independent is not None:
        encoders["independent"] = independent
    for enc in encoders.values():
        enc.to(device)
    dims = {name: inference.representations(enc, private[:2], device=device).shape[1]
            for name, enc in encoders.items()}
    for name, dim in dims.items():
        check_dims(dim, dims["victim"], what=name)
    needs_independent = {"ttest", "l2"} & set(tests)
    if needs_independent and independent is None:
        raise UserError(f"the {' and '.join(sorted(needs_independent))} test(s) compare the suspect with an "
                        f"independently trained encoder; pass --independent CHECKPOINT")
    out: dict = {}
    if set(tests) & set(WATERMARK_TESTS):
        predictor = load_predictor(victim_checkpoint, victim_path)
        feats = {name: rotated_features(enc, private, seed=seed, batch_size=batch_size, device=device)
                 for name, enc in encoders.items() if name != "random" or "wsr" in tests}
        correct = {name: predictor_correct(predictor, f, y) for name, (f, y) in feats.items()}
        if "wsr" in tests:
            out["wsr"] = {f"wsr_{name}": 100.0 * c.mean().item() for name, c in correct.items()}
            out["wsr"]["n_views"] = int(correct["suspect"].numel())
        if "retrained" in tests:
            out["retrained"] = {f"wsr_{name}": retrained_wsr(*feats[name], seed=seed)
                                for name in ("suspect", "victim", "independent") if name in feats}
        if "ttest" in tests:
            out["ttest"] = ownership_test(correct["suspect"], correct["independent"], victim=correct["victim"],
                                          alpha=alpha)
    if set(tests) & set(INFERENCE_TESTS):
        reps = {name: inference.representations(enc, private, batch_size=batch_size, device=device)
                for name, enc in encoders.items()}
        if "l2" in tests:
            out["l2"] = inference.l2_distance_test(reps["victim"], reps["suspect"], reps["independent"],
                                                   random=reps["random"], alpha=alpha).as_dict()
        if "noise_ball" in tests:
            sig = {name: inference.noise_ball_sigmas(encoders[name], private, n_noise=settings["n_noise"],
                                                     noise_std=settings["noise_std"],
                                                     generator=torch.Generator().manual_seed(seed),
                                                     batch_size=batch_size, device=device)
                   for name in ("victim", "suspect", "random")}
            out["noise_ball"] = inference.noise_ball_test(sig["victim"], sig["suspect"], sig["random"],
                                                          alpha=alpha).as_dict()
        if "private_public" in tests:
            if public is None:
                raise ValueError("the private_public test needs public images")
            augment = SimCLRAugment(private.shape[-1], crop_scale=(settings["crop_min_scale"], 1.0),
                                    flip_p=settings["hflip_p"])

            def distances(enc: nn.Module, images: torch.Tensor) -> torch.Tensor:
                return inference.augmentation_distances(enc, images, augment, n_aug=settings["n_aug"],
                                                        generator=torch.Generator().manual_seed(seed),
                                                        batch_size=batch_size, device=device)

            vp, vq = distances(victim_encoder, private), distances(victim_encoder, public)
            sp, sq = distances(suspect, private), distances(suspect, public)
            out["private_public"] = inference.private_public_test(sp, sq, victim_private=vp, victim_public=vq,
                                                                  alpha=alpha).as_dict()
    return out


def stolen_watermark(victim, stolen_checkpoint: str, *, data: Optional[str] = None,
                     n: Optional[int] = None, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """``steal.py --watermark True``'s last step, on the owner's side: the WSR of the stolen encoder
    and of the victim, with the victim's secret predictor, on its first ``n`` training images.

    ``victim`` is the owner's loaded victim (:func:`service.victim.load_victim`: its encoder,
    checkpoint, path, dataset and image size)."""
    predictor = load_predictor(victim.checkpoint, victim.path)
    with torch.random.fork_rng(devices=[]):
        stolen, _, _ = load_encoder(stolen_checkpoint)
    n = n or SETTINGS[scale_of(victim.dataset)]["n"]
    private, _ = private_public_images(victim.dataset, victim.image_size, n=n, data=data, with_public=False)
    out = {}
    for name, enc in (("stolen", stolen), ("victim", victim.encoder)):
        feats, labels = rotated_features(enc.to(device), private, seed=seed, device=device)
        out[f"wsr_{name}"] = 100.0 * predictor_correct(predictor, feats, labels).mean().item()
    out["n_views"] = int(2 * private.shape[0])
    out["victim_checkpoint"], out["stolen_checkpoint"] = str(victim.path), str(stolen_checkpoint)
    return out
