"""Offline datasets built only from data that ships inside scikit-learn.

They need no data directory and no network, are generated in memory in about a second,
are deterministic (fixed generator seeds, independent of ``--seed``), and come at any
resolution with 3 channels:

* ``digits``  - scikit-learn's 1,797 real 8x8 handwritten digits (grey levels 0-16),
  upsampled, white on black; a fixed stratified split of 1,097 train / 700 test.
* ``digitsm`` - the same digits blended over random crops of scikit-learn's two bundled
  photographs (``china.jpg``, ``flower.jpg``) as in MNIST-M: ``|patch - digit|`` per
  channel. Colour and texture now vary more than the digit does, so raw pixels are a
  weak feature and invariance to augmentation matters. Same split as ``digits``.
* ``patches`` - unlabeled crops of those photographs (label -1): an out-of-distribution
  query set for stealing. ``train`` has 5,000 crops, ``test`` 1,000 disjoint draws.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .base import ImageSet, resize_uint8, to_rgb_uint8

DIGITS_TEST_SIZE = 700
PATCHES_SIZES = {"train": 5000, "test": 1000}
_SPLIT_SEED = 0        # stratified train/test split of the digits
_BLEND_SEED = 20220    # crops behind digitsm
_PATCH_SEEDS = {"train": 7, "test": 8}
# side of the square photo crops, in photo pixels, before resizing to the working size
CROP_SIDES = (24, 160)
# side of the square photo crops, in photo pixels, before resizing to the working size
CROP_SIDES = (24, 160)
BACKGROUND_POOL = None


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images / 16.0).float()  # 1797 x 8 x 8 in [0, 1]
    labels = torch.from_numpy(data.target).long()
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=data.target,
                                           random_state=_SPLIT_SEED)
    splits = {"train": torch.from_numpy(np.sort(train_idx)), "test": torch.from_numpy(np.sort(test_idx))}
    return images, labels, splits


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
                 for im in load_sample_images().images)  # 3 x 427 x 640 uint8 each


def _random_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` square crops of random side in ``CROP_SIDES`` from the photographs,
    randomly flipped, resized to ``size``: uint8 ``n x 3 x size x size``."""
    g = torch.Generator().manual_seed(seed)
    photos = _photos()
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    which = torch.randint(len(photos), (n,), generator=g)
    sides = torch.randint(CROP_SIDES[0], CROP_SIDES[1] + 1, (n,), generator=g)
    u = torch.rand(n, 3, generator=g)
    for i in range(n):
        photo = photos[int(which[i])]
        side = int(sides[i])
        top = int(u[i, 0] * (photo.shape[1] - side + 1))
        left = int(u[i, 1] * (photo.shape[2] - side + 1))
        crop = photo[:, top:top + side, left:left + side]
        if u[i, 2] < 0.5:
            crop = crop.flip(-1)
        out[i] = resize_uint8(crop.unsqueeze(0), size)[0]
    return out


def _digit_masks(indices: torch.Tensor, size: int) -> torch.Tensor:
    """Digits as float masks ``n x 1 x size x size`` in [0, 1] (bilinear upsampling)."""
    images, _, _ = _digits()
    x = images[indices].unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def _check_split(name: str, split: str, splits) -> None:
    from utils import UserError

    if split not in splits:
        raise UserError(f"{name} has no split {split!r}; use one of {sorted(splits)}")


@functools.lru_cache(maxsize=16)
def _build_cached(name: str, split: str, image_size: int) -> ImageSet:
    if name == "patches":
        _check_split(name, split, PATCHES_SIZES)
        images = _random_crops(PATCHES_SIZES[split], image_size, _PATCH_SEEDS[split])
        return ImageSet(images, torch.full((len(images),), -1, dtype=torch.long), name=name,
                        split=split, num_classes=0)
    _, labels, splits = _digits()
    _check_split(name, split, splits)
    idx = splits[split]
    masks = _digit_masks(idx, image_size)
    if name == "digits":
        images = to_rgb_uint8((masks * 255).round())
    else:  # digitsm: the crops are drawn for all 1,797 digits at once, so both splits share one draw
        if BACKGROUND_POOL:
            pool = _random_crops(BACKGROUND_POOL, image_size, _BLEND_SEED)
            pick = torch.randint(BACKGROUND_POOL, (len(labels),), generator=torch.Generator().manual_seed(_BLEND_SEED + 1))
            all_crops = pool[pick]
        else:
            all_crops = _random_crops(len(labels), image_size, _BLEND_SEED)
        patch = all_crops[idx].float()
        images = (patch - masks * 255.0).abs().round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, labels[idx].clone(), name=name, split=split, num_classes=10)


def load_offline(name: str, split: str, image_size: int) -> ImageSet:
    """Build an offline dataset (``digits``, ``digitsm`` or ``patches``) at ``image_size``."""
    cached = _build_cached(name, split, int(image_size))
    # a fresh container around the cached tensors, so moving one to a GPU affects no other
    return ImageSet(cached.images, cached.labels, name=cached.name, split=cached.split,
                    num_classes=cached.num_classes)
