"""Tiny fixtures for the real datasets, written in their exact on-disk formats.

Each ``write_*`` function writes a handful of random images with deterministic labels
under ``root`` (the ``-data DIR``), laid out as torchvision expects, and returns
``{split: (images, labels)}`` with what a correct loader must produce at native size:
uint8 ``N x 3 x H x W`` tensors (grey images repeated over 3 channels) and long labels
in the loader's convention (0-based; SVHN's 10 -> 0; STL-10 1-based -> 0-based;
``-1`` for unlabeled images).
"""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
Expected = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _images(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def _labels(n: int, num_classes: int, offset: int) -> np.ndarray:
    return ((np.arange(n) * 7 + offset) % num_classes).astype(np.int64)


def _expected(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1).contiguous()
    return t, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# ---------------------------------------------------------------------- CIFAR


def write_cifar10(root: PathLike, n_per_batch: int = 3, n_test: int = 10, seed: int = 0) -> Expected:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Each batch is a pickled dict: ``data`` N x 3072 uint8 (row-major, channel planes
    R, G, B of 32 x 32), ``labels`` a list of ints, as in the python version.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = [], []
    for b in range(1, 6):
        images = _images(rng, n_per_batch, 3, 32)
        labels = _labels(n_per_batch, 10, offset=b)
        _pickle(folder / f"data_batch_{b}", {
            "batch_label": f"training batch {b} of 5", "labels": [int(v) for v in labels],
            "data": images.reshape(n_per_batch, 3072),
            "filenames": [f"img_{b}_{i}.png" for i in range(n_per_batch)]})
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = _images(rng, n_test, 3, 32), _labels(n_test, 10, offset=0)
    _pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test_labels],
        "data": test_images.reshape(n_test, 3072), "filenames": [f"test_{i}.png" for i in range(n_test)]})
    _pickle(folder / "batches.meta", {
        "num_cases_per_batch": n_per_batch, "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]})
    return {"train": _expected(np.concatenate(train_images), np.concatenate(train_labels)),
            "test": _expected(test_images, test_labels)}


def write_cifar100(root: PathLike, n_train: int = 12, n_test: int = 10, seed: int = 1) -> Expected:
    """``root/cifar-100-python/{train, test, meta}`` with ``fine_labels``/``coarse_labels``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, offset in (("train", n_train, 5), ("test", n_test, 60)):
        images, labels = _images(rng, n, 3, 32), _labels(n, 100, offset=offset)
        labels = (labels * 13 + offset) % 100  # spread over the 100 classes
        _pickle(folder / split, {
            "filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
            "fine_labels": [int(v) for v in labels], "coarse_labels": [int(v) // 5 for v in labels],
            "data": images.reshape(n, 3072)})
        out[split] = _expected(images, labels)
    _pickle(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                              "coarse_label_names": [f"super_{i}" for i in range(20)]})
    return out


# ----------------------------------------------------------------------- SVHN


def write_svhn(root: PathLike, sizes: dict[str, int] | None = None, nested: bool = True, seed: int = 2) -> Expected:
    """``root/SVHN/{train,test,extra}_32x32.mat`` (or directly in ``root`` if not ``nested``).

    Each .mat holds ``X`` 32 x 32 x 3 x N uint8 and ``y`` N x 1 with labels 1..10, where
    10 is the digit 0.
    """
    from scipy.io import savemat

    sizes = sizes or {"train": 12, "test": 10, "extra": 8}
    rng = np.random.default_rng(seed)
    folder = Path(root) / "SVHN" if nested else Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in sizes.items():
        images = _images(rng, n, 3, 32)  # N x C x H x W
        digits = _labels(n, 10, offset=len(split))
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
        out[split] = _expected(images, digits)
    return out


# ---------------------------------------------------------------------- STL-10


def _stl_bytes(images: np.ndarray) -> bytes:
    # per image: 3 channel planes, each stored column-major (column by column)
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root: PathLike, n_train: int = 10, n_test: int = 8, n_unlabeled: int = 6, seed: int = 3) -> Expected:
    """``root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, fold_indices.txt``.

    ``*_X.bin``: raw uint8, per image 3 x 96 x 96 with each channel column-major;
    ``*_y.bin``: one uint8 label per image, 1-based.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _images(rng, n, 3, 96), _labels(n, 10, offset=3 if split == "train" else 8)
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(images))
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = _expected(images, labels)
    unlabeled = _images(rng, n_unlabeled, 3, 96)
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(unlabeled))
    out["unlabeled"] = _expected(unlabeled, np.full(n_unlabeled, -1))
    out["train+unlabeled"] = (torch.cat([out["train"][0], out["unlabeled"][0]]),
                              torch.cat([out["train"][1], out["unlabeled"][1]]))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    folds = [" ".join(str((f + i) % n_train) for i in range(0, n_train, 2)) for f in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return out


# ------------------------------------------------------------------- MNIST idx


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(root: PathLike, folder: str = "MNIST", n_train: int = 12, n_test: int = 10, seed: int = 4) -> Expected:
    """``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed idx).

    Images: big-endian header (magic 2051, N, 28, 28) then N*28*28 bytes; labels:
    header (magic 2049, N) then N bytes. ``folder`` is ``MNIST`` or ``FashionMNIST``.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = _images(rng, n, 1, 28)[:, 0]
        labels = _labels(n, 10, offset=1 if split == "train" else 4)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_images(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_labels(labels))
        out[split] = _expected(images[:, None], labels)
    return out


def write_fashionmnist(root: PathLike, **kwargs) -> Expected:
    """Same format as MNIST, under ``root/FashionMNIST/raw``."""
    kwargs.setdefault("seed", 5)
    return write_mnist(root, folder="FashionMNIST", **kwargs)


# ------------------------------------------------------------------- ImageNet


IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")


def write_imagenet(root: PathLike, per_class: dict[str, int] | None = None, size: int = 16,
                   seed: int = 6) -> Expected:
    """``root/imagenet/{train,val}/<class>/*.png``: small RGB PNGs (``size`` px square).

    Returned in ImageFolder order: classes sorted, files sorted within a class.
    """
    from PIL import Image

    per_class = per_class or {"train": 3, "val": 2}
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in per_class.items():
        images, labels = [], []
        for label, cls in enumerate(sorted(IMAGENET_CLASSES)):
            folder = Path(root) / "imagenet" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _images(rng, 1, 3, size)[0]
                Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{cls}_{i:04d}.png")
                images.append(img)
                labels.append(label)
        out[split] = _expected(np.stack(images), np.array(labels))
    return out


WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "stl10": write_stl10,
    "mnist": write_mnist,
    "fashionmnist": write_fashionmnist,
    "imagenet": write_imagenet,
}
