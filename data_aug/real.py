"""Real image datasets, read from their standard on-disk formats with torchvision.

:func:`load_real` returns an in-memory :class:`~data_aug.base.ImageSet` (uint8
``N x 3 x S x S`` images resized once to ``S``, long labels, ``-1`` where a split has
none), or for ImageNet a lazily decoded :class:`~data_aug.base.FolderImageSet`.
Whole arrays are converted at once (never image by image), so even CIFAR's 50,000
images load in well under a second once the files are read.

Directory layout under ``-data DIR``
------------------------------------
This is what torchvision's dataset classes read, and what ``--download`` creates.
Only the files of the split being loaded have to be present::

    cifar10       DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
                  (the "python version" of CIFAR-10, unpacked)
    cifar100      DIR/cifar-100-python/train, test, meta  (the "python version", unpacked)
    svhn          DIR/SVHN/train_32x32.mat, test_32x32.mat, extra_32x32.mat
                  (the cropped-digits .mat files; they may also sit directly in DIR)
    stl10         DIR/stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin,
                  unlabeled_X.bin  (the binary version, unpacked)
    mnist         DIR/MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,
                  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte  (uncompressed idx files)
    fashionmnist  DIR/FashionMNIST/raw/ with the same four idx file names as MNIST
    imagenet      DIR/imagenet/train/<class folder>/<images>,
                  DIR/imagenet/val/<class folder>/<images>
                  (validation images sorted into the same class folders as train;
                  ImageNet cannot be downloaded automatically)

Splits: ``train``/``test`` everywhere except SVHN (also ``extra``), STL-10 (also
``unlabeled`` and ``train+unlabeled``; unlabeled images get label ``-1``) and ImageNet
(``train``/``val``). SVHN's label 10 (digit 0) becomes 0; STL-10's 1-based labels
become 0-based.

Checksums
---------
torchvision knows the md5 of the official CIFAR-10/100, SVHN and STL-10 files, and
``load_real`` checks the files of the requested split against them (``verify=True``,
the default), so a truncated copy or a different release is reported instead of
silently training on it. ``verify=False`` reads any files in the right format without
the check (tests use this with tiny fixtures). Setting the environment variable
``SSLSTEAL_SKIP_MD5=1`` makes ``verify=False`` the default, so end-to-end CLI runs can
use such fixtures; an explicit ``verify=True`` still checks. MNIST's uncompressed idx
files have no published checksum, so they are only checked for format.

Untrusted files
---------------
CIFAR's files are pickles. Whatever the md5 setting they are read by a restricted unpickler
(:class:`_CIFARUnpickler`: numpy arrays, lists, strings and numbers, nothing else), never by
torchvision's classes, which use plain ``pickle.load``; a file naming any other Python object
is refused in one sentence before anything in it runs. Image folders decode through
:func:`load_image`, which names a corrupt, truncated or oversized image file in one sentence.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torchvision import datasets as tvd
from torchvision.datasets.utils import calculate_md5

from utils import UserError

from .base import FolderImageSet, ImageSet, resize_uint8, to_rgb_uint8

SKIP_MD5_ENV = "SSLSTEAL_SKIP_MD5"

REAL_DATASETS: dict[str, dict] = {
    "cifar10": {"splits": ("train", "test"), "num_classes": 10, "native_size": 32,
                "subdir": "cifar-10-batches-py",
                "layout": "cifar-10-batches-py/ with data_batch_1..data_batch_5 and test_batch "
                          "from the python version of CIFAR-10"},
    "cifar100": {"splits": ("train", "test"), "num_classes": 100, "native_size": 32,
                 "subdir": "cifar-100-python",
                 "layout": "cifar-100-python/ with train and test from the python version of CIFAR-100"},
    "svhn": {"splits": ("train", "test", "extra"), "num_classes": 10, "native_size": 32,
             "subdir": "SVHN",
             "layout": "SVHN/ with train_32x32.mat, test_32x32.mat and extra_32x32.mat "
                       "(or those files directly in DIR)"},
    "stl10": {"splits": ("train", "test", "unlabeled", "train+unlabeled"), "num_classes": 10,
              "native_size": 96, "subdir": "stl10_binary",
              "layout": "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin and "
                        "unlabeled_X.bin from the binary version of STL-10"},
    "mnist": {"splits": ("train", "test"), "num_classes": 10, "native_size": 28,
              "subdir": os.path.join("MNIST", "raw"),
              "layout": "MNIST/raw/ with the uncompressed idx files train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"},
    "fashionmnist": {"splits": ("train", "test"), "num_classes": 10, "native_size": 28,
                     "subdir": os.path.join("FashionMNIST", "raw"),
                     "layout": "FashionMNIST/raw/ with the uncompressed idx files train-images-idx3-ubyte, "
                               "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"},
    "imagenet": {"splits": ("train", "val"), "num_classes": 1000, "native_size": 224,
                 "subdir": "imagenet",
                 "layout": "imagenet/train/<class>/<images> and imagenet/val/<class>/<images>, "
                           "with val sorted into the same class folders as train"},
}

_STL10_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin",),
    "train+unlabeled": ("train_X.bin", "train_y.bin", "unlabeled_X.bin"),
}
_STL10_IMAGE_BYTES = 3 * 96 * 96


def default_verify() -> bool:
    """``True`` unless the environment variable ``SSLSTEAL_SKIP_MD5`` is set to 1/true/yes."""
    return os.environ.get(SKIP_MD5_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


# ------------------------------------------------------------- torchvision readers
# The official classes verify every file's md5 (all splits at once) before reading.
# load_real does its own, per-split existence and md5 checks first (with torchvision's
# md5 table), so these subclasses only re-check that the split's files exist.


class _RefusedGlobal(Exception):
    """A CIFAR pickle names a Python object the restricted reader does not admit."""


def _latin1_encode(text, encoding: str = "latin1"):
    # what pickle protocol 2 writes for bytes from Python 3 (the format-exact fixtures): text.encode("latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would hold Python objects, not pixels
        raise _RefusedGlobal(f"numpy.dtype({dtype!s})")
    return dtype


def _numpy_reconstruct():
    core = getattr(np, "_core", None)  # numpy 2 (never import numpy.core there: it warns)
    return (core if core is not None else np.core).multiarray._reconstruct


# every global the official CIFAR pickles (Python 2, numpy 1) and format-exact ones written by Python 3
# (protocol 2, numpy 2) name: numpy's array reconstruction, ndarray, dtype, and latin-1 bytes
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
                  ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
                  ("_codecs", "encode"): _latin1_encode}


class _CIFARUnpickler(pickle.Unpickler):
    """Reads a CIFAR pickle without running code: only :data:`_CIFAR_GLOBALS` may be named, so a file
    can hold dicts, lists, strings, numbers and numpy arrays of plain values, and nothing else."""

    def find_class(self, module: str, name: str):
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise _RefusedGlobal("a persistent id")


def _unpickle_cifar(name: str, split: str, path: str):
    """One CIFAR file through :class:`_CIFARUnpickler` (latin-1 strings, as torchvision reads them),
    whatever the md5 setting; a refused object or an unreadable file is one :class:`UserError`."""
    try:
        with open(path, "rb") as f:
            return _CIFARUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise UserError(f"the {name} {split} file {path} holds Python objects other than arrays, lists and strings "
                        f"({err}), so reading it could run code; replace it with the official file (or delete it "
                        f"and use --download).") from None
    except Exception as err:  # noqa: BLE001 - a malformed pickle fails in many ways
        raise _parse_error(name, split, path, err) from err


def _read_cifar(name: str, split: str, data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images (uint8 ``N x 3 x 32 x 32``) and labels from the python-version files, read
    with the restricted unpickler; the class-name file (``batches.meta``/``meta``), when present, too."""
    data, labels = [], []
    for fname in _split_files(name, split):
        path = os.path.join(data_dir, fname)
        entry = _unpickle_cifar(name, split, path)
        try:
            rows = np.asarray(entry["data"])
            file_labels = [int(v) for v in (entry["labels"] if "labels" in entry else entry["fine_labels"])]
            if rows.dtype != np.uint8 or rows.size % 3072 or rows.size // 3072 != len(file_labels):
                raise ValueError(f"{rows.size // 3072} images of {rows.dtype} but {len(file_labels)} labels")
        except Exception as err:  # noqa: BLE001 - a dict of the wrong shape fails in many ways
            raise _parse_error(name, split, path, err) from err
        data.append(rows.reshape(-1, 3, 32, 32))
        labels.extend(file_labels)
    meta = _OFFICIAL[name].meta
    meta_path = os.path.join(data_dir, meta["filename"])
    if os.path.isfile(meta_path):
        entry = _unpickle_cifar(name, split, meta_path)
        if not isinstance(entry, dict) or not isinstance(entry.get(meta["key"]), list):
            raise _parse_error(name, split, meta_path, ValueError(f"no list of {meta['key']}"))
    images = torch.from_numpy(np.concatenate(data)) if data else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    return images, torch.as_tensor(labels, dtype=torch.long)


class _SVHN(tvd.SVHN):
    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class _STL10(tvd.STL10):
    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in _STL10_FILES[self.split])


class _MNISTFiles:
    folder = "MNIST"

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, self.folder, "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, self.folder, "processed")

    def _check_exists(self) -> bool:
        return all(os.path.isfile(os.path.join(self.raw_folder, f)) for f in _mnist_files(self.train))


class _MNIST(_MNISTFiles, tvd.MNIST):
    folder = "MNIST"


class _FashionMNIST(_MNISTFiles, tvd.FashionMNIST):
    folder = "FashionMNIST"


def _mnist_files(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


# torchvision's classes: their file and md5 tables, and downloading (never reading: the CIFAR classes
# unpickle with plain pickle.load, so CIFAR is read by _read_cifar)
_OFFICIAL = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN, "stl10": tvd.STL10,
             "mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST}
_READER = {"svhn": _SVHN, "stl10": _STL10, "mnist": _MNIST, "fashionmnist": _FashionMNIST}


# ------------------------------------------------------------------ file tables


def _split_files(name: str, split: str) -> list[str]:
    """File names (inside the dataset folder) the split needs."""
    cls = _OFFICIAL.get(name)
    if name in ("cifar10", "cifar100"):
        return [f for f, _ in (cls.train_list if split == "train" else cls.test_list)]
    if name == "svhn":
        return [tvd.SVHN.split_list[split][1]]
    if name == "stl10":
        return list(_STL10_FILES[split])
    return list(_mnist_files(split == "train"))


def _md5_table(name: str) -> dict[str, str]:
    """torchvision's md5 for each official file (empty where none is published)."""
    cls = _OFFICIAL[name]
    if name in ("cifar10", "cifar100"):
        table = dict(cls.train_list + cls.test_list)
        table[cls.meta["filename"]] = cls.meta["md5"]
        return table
    if name == "svhn":
        return {fname: md5 for _, fname, md5 in tvd.SVHN.split_list.values()}
    if name == "stl10":
        return dict(tvd.STL10.train_list + tvd.STL10.test_list)
    return {}


def _data_dir(name: str, root: str, split: str) -> str:
    """The folder holding the split's files (SVHN: ``root/SVHN`` or ``root`` itself)."""
    if name == "svhn":
        fname = _split_files(name, split)[0]
        nested = os.path.join(root, "SVHN")
        if not os.path.isfile(os.path.join(nested, fname)) and os.path.isfile(os.path.join(root, fname)):
            return root
        return nested
    return os.path.join(root, REAL_DATASETS[name]["subdir"])


_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def _md5(path: str) -> str:
    """md5 of a file, remembered per (path, size, mtime) so a process hashes each file once."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = calculate_md5(path)
    return _MD5_CACHE[key]


# ------------------------------------------------------------------- messages


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()).rstrip(".")
    if not text:
        return type(err).__name__
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _hint(root: str, subdir: str, fname: str) -> str:
    """Spot the usual misplacements of a missing file; returns '' or ' (...)'."""
    parts = Path(subdir).parts
    full = os.path.join(root, subdir, fname)
    if os.path.isfile(full + ".gz"):
        return f" (found {full}.gz: decompress it with gunzip first)"
    for k in range(len(parts), 0, -1):  # -data pointing inside the expected folder
        found = os.path.join(root, *parts[k:], fname)
        if os.path.isfile(found):
            root_parts = Path(os.path.abspath(root)).parts
            if tuple(root_parts[-k:]) == tuple(parts[:k]):
                return (f" (found {found}: -data points inside the dataset folder, "
                        f"use {Path(root).resolve().parents[k - 1]})")
            return f" (found {found}: move the files into {os.path.join(root, subdir)})"
    if not os.path.isdir(root):
        return f" ({root} does not exist)"
    return ""


def _missing_error(name: str, split: str, root: str, path: str, hint: str, download: bool) -> UserError:
    layout = REAL_DATASETS[name]["layout"]
    if download:
        return UserError(f"{name} {split} data is still missing after --download: expected {path}{hint}; "
                         f"place the files there manually, as DIR/{layout}.")
    return UserError(f"{name} {split} data not found: expected {path}{hint}; pass -data DIR where DIR contains "
                     f"{layout}, or add --download to fetch it into DIR on a machine with internet.")


def _checksum_error(name: str, split: str, paths: Sequence[str]) -> UserError:
    folders = {os.path.dirname(p) for p in paths}
    if len(paths) > 1 and len(folders) == 1:
        where = f"{folders.pop()} ({', '.join(os.path.basename(p) for p in paths)})"
    else:
        where = ", ".join(paths)
    return UserError(f"the {name} {split} files at {where} failed the md5 checksum (corrupt, truncated or not the "
                     f"official release); replace them with the official files, or delete them and use --download.")


def _parse_error(name: str, split: str, path: str, err: BaseException) -> UserError:
    return UserError(f"could not read the {name} {split} file {path} ({_short(err)}); it is truncated or corrupt, so "
                     f"replace it with a fresh copy of the official file (or delete it and use --download).")


# --------------------------------------------------------------- diagnostics


def _find_bad_file(name: str, data_dir: str, files: Sequence[str]) -> Optional[tuple[str, BaseException]]:
    """After a failed read, find which of the split's files is broken (first one wins)."""
    paths = [os.path.join(data_dir, f) for f in files]
    if name == "svhn":
        return None  # one file: the caller names it
    if name == "stl10":
        for path in paths:
            if path.endswith("_X.bin") and (os.path.getsize(path) % _STL10_IMAGE_BYTES or not os.path.getsize(path)):
                return path, ValueError(f"size {os.path.getsize(path)} bytes is not a multiple of one 3x96x96 image")
        return None
    from torchvision.datasets.mnist import read_image_file, read_label_file

    for path, reader in zip(paths, (read_image_file, read_label_file)):
        try:
            reader(path)
        except Exception as err:  # noqa: BLE001
            return path, err
    return None


# -------------------------------------------------------------------- loading


def _download(name: str, root: str, split: str) -> None:
    """Let torchvision fetch (and md5-check) the official files into ``root``."""
    cls = _OFFICIAL[name]
    try:
        if name in ("cifar10", "cifar100"):  # the archive alone: torchvision's class would unpickle the files
            tvd.utils.download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)
        elif name == "svhn":
            cls(os.path.join(root, "SVHN"), split=split, download=True)
        elif name == "stl10":
            cls(root, split=split, download=True)
        else:
            cls(root, train=split == "train", download=True)
    except Exception as err:  # noqa: BLE001 - network, disk and archive errors all end here
        target = os.path.join(root, REAL_DATASETS[name]["subdir"])
        raise UserError(f"downloading {name} into {target} failed ({_short(err)}); place the files there manually, "
                        f"as DIR/{REAL_DATASETS[name]['layout']}, and run without --download.") from err


def _check_files(name: str, root: str, split: str, verify: bool, download: bool) -> str:
    """Make sure the split's files exist (and match the md5 when ``verify``); returns their folder."""
    files = _split_files(name, split)
    table = _md5_table(name) if verify else {}
    meta = _OFFICIAL[name].meta["filename"] if name in ("cifar10", "cifar100") else None
    for attempt in (0, 1):
        data_dir = _data_dir(name, root, split)
        missing = [f for f in files if not os.path.isfile(os.path.join(data_dir, f))]
        bad: list[str] = []
        if not missing and table:
            checked = files + ([meta] if meta and os.path.isfile(os.path.join(data_dir, meta)) else [])
            bad = [os.path.join(data_dir, f) for f in checked
                   if f in table and _md5(os.path.join(data_dir, f)) != table[f]]
        if not missing and not bad:
            return data_dir
        if not download or attempt:
            break
        _download(name, root, split)
    if bad:
        raise _checksum_error(name, split, bad)
    path = os.path.join(data_dir, missing[0])
    if name == "svhn":
        path += f" (or {os.path.join(root, missing[0])})"
    raise _missing_error(name, split, root, path, _hint(root, REAL_DATASETS[name]["subdir"], missing[0]), download)


def _read(name: str, root: str, split: str, data_dir: str):
    """Run torchvision's reader (CIFAR: ours); return ``(images N x C x H x W uint8 tensor, labels long tensor)``."""
    if name in ("cifar10", "cifar100"):
        return _read_cifar(name, split, data_dir)
    reader = _READER[name]
    try:
        if name == "svhn":
            ds = reader(data_dir, split=split)
        elif name == "stl10":
            ds = reader(root, split=split)
        else:
            ds = reader(root, train=split == "train")
    except Exception as err:  # noqa: BLE001 - a malformed file can fail in many ways
        files = _split_files(name, split)
        found = _find_bad_file(name, data_dir, files)
        if found is None:
            path = ", ".join(os.path.join(data_dir, f) for f in files)
            raise _parse_error(name, split, path, err) from err
        raise _parse_error(name, split, found[0], found[1]) from err

    if name in ("svhn", "stl10"):
        images = torch.from_numpy(np.asarray(ds.data))  # already N x C x H x W
        labels = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64))
    else:
        images = ds.data.unsqueeze(1)  # N x 28 x 28 -> N x 1 x 28 x 28
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
    # one copy into N x C x H x W order: the resize (and ImageSet) want contiguous images
    return images.contiguous(), labels.reshape(-1)


def _check_labels(name: str, split: str, data_dir: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    n_images, n_labels = images.shape[0], labels.shape[0]
    if n_images != n_labels:
        files = ", ".join(os.path.join(data_dir, f) for f in _split_files(name, split))
        raise UserError(f"the {name} {split} files {files} do not match ({n_images} images but {n_labels} labels), "
                        f"so one is truncated or from another release; replace them with fresh copies of the "
                        f"official files.")
    num_classes = REAL_DATASETS[name]["num_classes"]
    allowed = (labels >= 0) & (labels < num_classes)
    if "unlabeled" in split:
        allowed |= labels == -1
    if n_labels and not bool(allowed.all()):
        bad = labels[~allowed][0].item()
        raise UserError(f"the {name} {split} files in {data_dir} contain label {bad}, outside 0..{num_classes - 1}; "
                        f"replace them with a fresh copy of the official release.")


def _pil_reason(err: BaseException) -> str:
    """PIL's message without the file object's repr (``<_io.BufferedReader name=...>``, ``<... at 0x...>``)."""
    text = re.sub(r"\s*<[^<>]*(?:name=|object at 0x)[^<>]*>", "", " ".join(str(err).split())).strip(" .:")
    return text or type(err).__name__


def load_image(path: str):
    """An image folder's loader: the file at ``path`` as an RGB PIL image, or one :class:`UserError`
    naming the file and the fix: not an image, truncated or corrupt, or a header declaring more
    pixels than PIL decodes safely (its decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``: raised
    here from the warning PIL gives above it, so no such image is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"the image file {path} is too large to decode safely ({_pil_reason(err).split(',')[0]}); "
                        f"remove it or replace it with a smaller image.") from None
    except UnidentifiedImageError:
        raise UserError(f"the file {path} is not an image PIL can read (corrupt, or not an image despite its "
                        f"name); remove it or replace it with a valid image.") from None
    except OSError as err:
        if err.filename is not None or err.errno is not None:  # the file system's error, not PIL's
            raise UserError(f"cannot read the image file {path} ({err.strerror or _pil_reason(err)}); fix its "
                            f"permissions, or remove it or replace it.") from None
        what = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise UserError(f"the image file {path} is {what} ({_pil_reason(err)}); remove it or replace it with a "
                        f"complete copy.") from None
    except Exception as err:  # noqa: BLE001 - PIL's decoders raise many types for a malformed file
        raise UserError(f"the image file {path} is corrupt ({type(err).__name__}: {_pil_reason(err)}); remove it "
                        f"or replace it with a valid image.") from None


class _ImageFolder(tvd.ImageFolder):
    """An ImageFolder whose class list is given (train's), so val labels line up with train, and whose
    loader (:func:`load_image`) turns a broken image into one sentence naming it."""

    def __init__(self, root: str, classes: list[str], **kwargs):
        self._given_classes = list(classes)
        super().__init__(root, loader=load_image, **kwargs)

    def find_classes(self, directory):
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}


def _load_imagenet(root: str, split: str, image_size: int, download: bool) -> FolderImageSet:
    base_dir = os.path.join(root, "imagenet")
    split_dir = os.path.join(base_dir, split)
    layout = REAL_DATASETS["imagenet"]["layout"]
    if not os.path.isdir(split_dir):
        hint = ""
        if os.path.isdir(os.path.join(root, split)):
            hint = (f" (found {os.path.join(root, split)}: -data should be the folder that contains imagenet/, "
                    f"or rename {root} to imagenet inside it)")
        elif not os.path.isdir(root):
            hint = f" ({root} does not exist)"
        raise UserError(f"imagenet {split} data not found: expected the folder {split_dir}{hint}; pass -data DIR "
                        f"where DIR holds {layout}, and place the images there yourself since --download does not "
                        f"cover ImageNet.")
    train_dir = os.path.join(base_dir, "train")
    class_dir = train_dir if os.path.isdir(train_dir) else split_dir
    try:
        classes, _ = tvd.folder.find_classes(class_dir)
    except FileNotFoundError as err:
        raise UserError(f"found no class folders in {class_dir}; ImageNet needs DIR/{layout}.") from err
    if class_dir != split_dir:
        known = set(classes)
        extra_classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name not in known)
        if extra_classes:
            raise UserError(f"{split_dir} has class folders that {train_dir} lacks ({', '.join(extra_classes[:5])}"
                            f"{', ...' if len(extra_classes) > 5 else ''}); both splits must use the same class "
                            f"folder names.")
    try:
        base = _ImageFolder(split_dir, classes, allow_empty=class_dir != split_dir)
    except FileNotFoundError as err:
        raise UserError(f"found no images in the class folders of {split_dir} ({_short(err)}); ImageNet needs "
                        f"DIR/{layout}.") from err
    if len(base) == 0:
        raise UserError(f"found no images in class folders under {split_dir}; sort the {split} images into "
                        f"class folders like {os.path.join(split_dir, classes[0], '<image>.JPEG')}.")
    return FolderImageSet(base, image_size, name="imagenet", split=split, num_classes=len(classes))


def _normalise_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in REAL_DATASETS:
        raise UserError(f"unknown real dataset {name!r}; choose one of {', '.join(REAL_DATASETS)}.")
    return key


def load_real(name: str, root: Union[str, os.PathLike, None], split: str, image_size: int, *,
              download: bool = False, verify: Optional[bool] = None) -> Union[ImageSet, FolderImageSet]:
    """Load split ``split`` of dataset ``name`` from ``root`` at ``image_size`` px, 3 channels.

    ``root`` is ``-data DIR``; see the module docstring for the layout under it.
    ``download`` lets torchvision fetch missing (or, with ``verify``, mismatching) files
    into ``root``. ``verify`` checks the md5 of the official files; its default is True
    unless ``SSLSTEAL_SKIP_MD5=1`` is set. Every problem with the files raises
    :class:`~utils.UserError`.
    """
    name = _normalise_name(name)
    spec = REAL_DATASETS[name]
    if split not in spec["splits"]:
        raise UserError(f"{name} has no split {split!r}; use one of {', '.join(spec['splits'])}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {image_size!r}.")
    if root is None:
        if name == "imagenet":
            raise UserError(f"imagenet needs -data DIR, where DIR holds {spec['layout']}; ImageNet cannot be "
                            f"downloaded automatically.")
        if download:
            raise UserError(f"--download needs -data DIR to say where to store {name}; it creates "
                            f"DIR/{spec['layout']}.")
        raise UserError(f"{name} needs its data files: pass -data DIR, where DIR holds {spec['layout']}, or "
                        f"-data DIR --download on a machine with internet to fetch them into DIR.")
    root = os.path.expanduser(os.fspath(root))
    verify = default_verify() if verify is None else bool(verify)

    if name == "imagenet":
        return _load_imagenet(root, split, image_size, download)

    data_dir = _check_files(name, root, split, verify, download)
    images, labels = _read(name, root, split, data_dir)
    _check_labels(name, split, data_dir, images, labels)
    images = to_rgb_uint8(resize_uint8(images, image_size))
    return ImageSet(images, labels, name=name, split=split, num_classes=spec["num_classes"])


__all__ = ["REAL_DATASETS", "SKIP_MD5_ENV", "default_verify", "load_real"]
