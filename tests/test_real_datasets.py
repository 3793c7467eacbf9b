"""Real dataset loaders (data_aug.real) on tiny fixtures in the exact on-disk formats."""
from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest
import torch

from data_aug.base import FolderImageSet, ImageSet
from data_aug.real import REAL_DATASETS, SKIP_MD5_ENV, load_real
from utils import UserError

try:
    from tests import fixtures_real as fx
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    import fixtures_real as fx

IN_MEMORY = ("cifar10", "cifar100", "svhn", "stl10", "mnist", "fashionmnist")
CASES = [(name, split) for name, spec in REAL_DATASETS.items() for split in spec["splits"]]
FIRST_FILE = {
    "cifar10": os.path.join("cifar-10-batches-py", "data_batch_1"),
    "cifar100": os.path.join("cifar-100-python", "train"),
    "svhn": os.path.join("SVHN", "train_32x32.mat"),
    "stl10": os.path.join("stl10_binary", "train_X.bin"),
    "mnist": os.path.join("MNIST", "raw", "train-images-idx3-ubyte"),
    "fashionmnist": os.path.join("FashionMNIST", "raw", "train-images-idx3-ubyte"),
}


@pytest.fixture(autouse=True)
def _no_env_and_no_network(monkeypatch):
    """Tests see the default verify=True and can never reach the network."""
    monkeypatch.delenv(SKIP_MD5_ENV, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    return message


def _folder_items(ds: FolderImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds.load(i) for i in range(len(ds))]
    return torch.stack([img for img, _ in items]), torch.tensor([label for _, label in items])


# -------------------------------------------------------------- every split


@pytest.mark.parametrize("name,split", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_load_exact_pixels_and_labels(tmp_path, name, split):
    expected = fx.WRITERS[name](tmp_path)
    exp_images, exp_labels = expected[split]
    spec = REAL_DATASETS[name]

    if name == "imagenet":
        size = exp_images.shape[-1]
        ds = load_real(name, tmp_path, split, size, verify=False)
        assert isinstance(ds, FolderImageSet)
        assert (ds.name, ds.split, ds.num_classes) == (name, split, len(fx.IMAGENET_CLASSES))
        assert len(ds) == len(exp_labels)
        images, labels = _folder_items(ds)
        assert images.dtype == torch.uint8 and images.shape == exp_images.shape
        assert torch.equal(labels, exp_labels)
        assert torch.equal(images, exp_images)
        small = load_real(name, tmp_path, split, 8, verify=False)
        assert small.load(0)[0].shape == (3, 8, 8)
        return

    size = spec["native_size"]
    ds = load_real(name, tmp_path, split, size, verify=False)
    assert isinstance(ds, ImageSet)
    assert (ds.name, ds.split, ds.num_classes) == (name, split, spec["num_classes"])
    assert len(ds) == len(exp_labels)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(exp_labels), 3, size, size)
    assert ds.labels.dtype == torch.long
    assert torch.equal(ds.labels, exp_labels)
    assert torch.equal(ds.images, exp_images)  # proves the channel/row/column layout

    small = load_real(name, tmp_path, split, 16, verify=False)
    assert small.images.dtype == torch.uint8 and small.images.shape == (len(exp_labels), 3, 16, 16)
    assert torch.equal(small.labels, exp_labels)


def test_label_conventions(tmp_path):
    fx.write_svhn(tmp_path)
    fx.write_stl10(tmp_path)
    svhn = load_real("svhn", tmp_path, "train", 32, verify=False)
    assert svhn.labels.min() >= 0 and (svhn.labels == 0).any()  # the .mat's 10 became 0
    stl = load_real("stl10", tmp_path, "train", 96, verify=False)
    assert stl.labels.min() == 0 and stl.labels.max() == 9  # 1-based became 0-based
    unl = load_real("stl10", tmp_path, "unlabeled", 96, verify=False)
    assert (unl.labels == -1).all()


def test_mnist_is_grey_in_three_channels(tmp_path):
    fx.write_mnist(tmp_path)
    ds = load_real("mnist", tmp_path, "test", 32, verify=False)
    assert ds.images.shape[1:] == (3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_svhn_files_directly_in_root(tmp_path):
    expected = fx.write_svhn(tmp_path, nested=False)
    ds = load_real("svhn", tmp_path, "test", 32, verify=False)
    assert torch.equal(ds.images, expected["test"][0]) and torch.equal(ds.labels, expected["test"][1])


def test_only_the_requested_split_is_needed(tmp_path):
    expected = fx.write_cifar10(tmp_path)
    for b in range(1, 6):
        os.remove(tmp_path / "cifar-10-batches-py" / f"data_batch_{b}")
    os.remove(tmp_path / "cifar-10-batches-py" / "batches.meta")
    ds = load_real("cifar10", tmp_path, "test", 32, verify=False)
    assert torch.equal(ds.labels, expected["test"][1])


def test_name_spelling_is_forgiving(tmp_path):
    fx.write_fashionmnist(tmp_path)
    assert load_real("Fashion-MNIST", str(tmp_path), "test", 28, verify=False).name == "fashionmnist"


def test_imagenet_val_uses_train_class_indices(tmp_path):
    fx.write_imagenet(tmp_path)
    # drop one class from val: the others must keep train's indices
    missing = tmp_path / "imagenet" / "val" / fx.IMAGENET_CLASSES[0]
    for f in missing.iterdir():
        f.unlink()
    missing.rmdir()
    ds = load_real("imagenet", tmp_path, "val", 16, verify=False)
    assert ds.num_classes == 3
    assert sorted({label for _, label in ds.base.samples}) == [1, 2]


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", list(REAL_DATASETS))
def test_root_none(name):
    with pytest.raises(UserError) as err:
        load_real(name, None, REAL_DATASETS[name]["splits"][0], 32)
    message = _one_sentence(err)
    assert "-data DIR" in message and REAL_DATASETS[name]["subdir"].split(os.sep)[0] in message
    if name != "imagenet":
        assert "--download" in message


@pytest.mark.parametrize("name", IN_MEMORY)
def test_missing_root_dir(tmp_path, name):
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        load_real(name, root, "train", 32)
    message = _one_sentence(err)
    assert str(root / FIRST_FILE[name]) in message
    assert "--download" in message and "-data DIR" in message


def test_missing_imagenet(tmp_path):
    with pytest.raises(UserError) as err:
        load_real("imagenet", tmp_path, "val", 64)
    assert str(tmp_path / "imagenet" / "val") in _one_sentence(err)


def test_data_pointing_inside_dataset_folder(tmp_path):
    fx.write_cifar10(tmp_path)
    inner = tmp_path / "cifar-10-batches-py"
    with pytest.raises(UserError) as err:
        load_real("cifar10", inner, "train", 32, verify=False)
    message = _one_sentence(err)
    assert str(inner / "cifar-10-batches-py" / "data_batch_1") in message
    assert f"use {tmp_path.resolve()}" in message


def test_mnist_gz_hint(tmp_path):
    fx.write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    os.rename(raw / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(UserError) as err:
        load_real("mnist", tmp_path, "test", 28)
    assert "gunzip" in _one_sentence(err)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "stl10"])
def test_checksum_is_checked_by_default(tmp_path, name):
    fx.WRITERS[name](tmp_path)
    for kwargs in ({}, {"verify": True}):
        with pytest.raises(UserError) as err:
            load_real(name, tmp_path, "test", 32, **kwargs)
        message = _one_sentence(err)
        assert "checksum" in message and str(tmp_path) in message


def test_skip_md5_environment_variable(tmp_path, monkeypatch):
    expected = fx.write_cifar10(tmp_path)
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    ds = load_real("cifar10", tmp_path, "test", 32)
    assert torch.equal(ds.images, expected["test"][0])
    with pytest.raises(UserError, match="checksum"):
        load_real("cifar10", tmp_path, "test", 32, verify=True)


@pytest.mark.parametrize("name", list(REAL_DATASETS))
def test_unknown_split(tmp_path, name):
    with pytest.raises(UserError) as err:
        load_real(name, tmp_path, "validation", 32, verify=False)
    message = _one_sentence(err)
    assert all(split in message for split in REAL_DATASETS[name]["splits"])


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="cifar10"):
        load_real("cifar11", tmp_path, "train", 32)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("name,relpath", [
    ("cifar10", ("cifar-10-batches-py", "data_batch_3")),
    ("cifar100", ("cifar-100-python", "train")),
    ("svhn", ("SVHN", "train_32x32.mat")),
    ("stl10", ("stl10_binary", "train_X.bin")),
    ("mnist", ("MNIST", "raw", "train-images-idx3-ubyte")),
    ("fashionmnist", ("FashionMNIST", "raw", "train-labels-idx1-ubyte")),
])
def test_truncated_file(tmp_path, name, relpath):
    fx.WRITERS[name](tmp_path)
    path = tmp_path.joinpath(*relpath)
    _truncate(path, 0.5 if name != "fashionmnist" else 0.2)
    with pytest.raises(UserError) as err:
        load_real(name, tmp_path, "train", 32, verify=False)
    message = _one_sentence(err)
    assert str(path) in message


def test_stl10_truncated_mid_image(tmp_path):
    fx.write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError) as err:
        load_real("stl10", tmp_path, "test", 96, verify=False)
    assert str(path) in _one_sentence(err)


def test_garbage_file(tmp_path):
    fx.write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(UserError) as err:
        load_real("cifar10", tmp_path, "test", 32, verify=False)
    assert str(path) in _one_sentence(err)


def test_label_count_mismatch(tmp_path):
    fx.write_stl10(tmp_path)
    labels = tmp_path / "stl10_binary" / "test_y.bin"
    labels.write_bytes(labels.read_bytes() + b"\x01")
    with pytest.raises(UserError) as err:
        load_real("stl10", tmp_path, "test", 96, verify=False)
    assert "8 images but 9 labels" in _one_sentence(err)


def test_download_failure_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_real("cifar10", tmp_path, "train", 32, download=True)
    message = _one_sentence(err)
    assert "download" in message and "failed" in message and str(tmp_path) in message


def test_download_skipped_when_files_present(tmp_path):
    expected = fx.write_svhn(tmp_path)
    ds = load_real("svhn", tmp_path, "test", 32, download=True, verify=False)  # urlopen would raise
    assert torch.equal(ds.labels, expected["test"][1])


def test_bad_image_size(tmp_path):
    with pytest.raises(UserError):
        load_real("cifar10", tmp_path, "train", 0)


def test_image_folder_subsets_and_holdout_and_a_clear_error_when_too_big(tmp_path, monkeypatch):
    """ImageNet folders are decoded lazily; the in-memory steps (holdout split, query views) work on
    them through ``subset``/``images``, and a set too big to hold in memory is one sentence."""
    import data_aug.base as base
    from data_aug import split_holdout

    expected = fx.WRITERS["imagenet"](tmp_path)
    exp_images, exp_labels = expected["val"]
    ds = load_real("imagenet", tmp_path, "val", exp_images.shape[-1], verify=False)
    part = ds.subset([2, 0], split="val[picked]")
    assert isinstance(part, FolderImageSet) and len(part) == 2 and part.split == "val[picked]" and len(ds) > 2
    assert torch.equal(part.images, exp_images[[2, 0]]) and torch.equal(part.labels, exp_labels[[2, 0]])
    query, evaluation = split_holdout(ds, holdout=2)
    assert len(query) == len(ds) - 2 and torch.equal(evaluation.images, exp_images[-2:])
    monkeypatch.setattr(base, "IN_MEMORY_LIMIT", 10)
    with pytest.raises(UserError, match="decoded lazily from image files") as err:
        _ = ds.subset(range(3)).images
    _one_sentence(err)
