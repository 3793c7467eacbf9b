import pytest
import torch

from data_aug import DATASETS, OFFLINE, get_dataset, iterate_batches, split_holdout
from utils import UserError


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("size", [8, 16, 32])
def test_offline_shapes(name, size):
    for split in ("train", "test"):
        ds = get_dataset(name, split, image_size=size)
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, size, size)
        img, label = ds[0]
        assert img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        if name == "patches":
            assert (ds.labels == -1).all()
        else:
            assert ds.num_classes == 10 and set(ds.labels.tolist()) == set(range(10))


def test_digits_split_is_fixed_stratified_and_disjoint():
    tr, te = get_dataset("digits", "train", image_size=8), get_dataset("digits", "test", image_size=8)
    assert len(tr) == 1097 and len(te) == 700
    counts = torch.bincount(te.labels, minlength=10)
    assert counts.min() >= 68 and counts.max() <= 72  # stratified: 70 per class
    # disjoint: no test image appears in train
    trs = {bytes(x.numpy()) for x in tr.images}
    assert not any(bytes(x.numpy()) in trs for x in te.images)


def test_mnist5k_split_is_balanced_disjoint_and_holds_out_1000():
    tr, te = get_dataset("mnist5k", "train", image_size=28), get_dataset("mnist5k", "test", image_size=28)
    assert len(tr) == 3000 and len(te) == 2000
    assert torch.bincount(tr.labels, minlength=10).tolist() == [300] * 10
    pool, holdout = split_holdout(te)
    # the probe's evaluation set: exactly 100 per class, never queried; the query pool likewise
    assert len(holdout) == 1000 and torch.bincount(holdout.labels, minlength=10).tolist() == [100] * 10
    assert len(pool) == 1000 and torch.bincount(pool.labels, minlength=10).tolist() == [100] * 10
    # real MNIST digits: white strokes on black, about 19% of the pixels lit
    lit = (tr.images[:, 0].float() > 127).float().mean().item()
    assert 0.1 < lit < 0.3 and tr.images[:, :, 0, 0].max() == 0
    # disjoint: no test image appears in train
    trs = {bytes(x.numpy()) for x in tr.images}
    assert not any(bytes(x.numpy()) in trs for x in te.images)


def test_mnistm5k_blends_the_same_digits_over_photographs():
    plain, blended = get_dataset("mnist5k", "test", image_size=28), get_dataset("mnistm5k", "test", image_size=28)
    assert torch.equal(plain.labels, blended.labels)
    assert torch.equal(blended.images, get_dataset("mnistm5k", "test", image_size=28).images)  # deterministic
    x, digit = blended.images.float(), plain.images[:, :1].float()
    # |crop - digit|: on the strokes the colour flips, elsewhere the photograph shows, in colour
    assert not torch.equal(blended.images[:, 0], blended.images[:, 1])
    assert x[(digit > 250).expand_as(x)].mean() < x[(digit < 5).expand_as(x)].mean() + 60
    assert x.std() > 50 and DATASETS["mnistm5k"].cpu_image_size == 28


def test_deterministic_and_digitsm_differs_from_digits():
    a = get_dataset("digitsm", "train", image_size=16)
    b = get_dataset("digitsm", "train", image_size=16)
    assert torch.equal(a.images, b.images)
    d = get_dataset("digits", "train", image_size=16)
    assert torch.equal(a.labels, d.labels)
    # colour: the channels differ in digitsm, are equal in digits
    assert not torch.equal(a.images[:, 0], a.images[:, 1])
    assert torch.equal(d.images[:, 0], d.images[:, 1])


@pytest.mark.parametrize("name", OFFLINE)
def test_normalisation_constants_match_data(name):
    x = get_dataset(name, "train", image_size=DATASETS[name].cpu_image_size).images.float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(DATASETS[name].mean), atol=0.02)
    assert torch.allclose(std, torch.tensor(DATASETS[name].std), atol=0.02)


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="unknown dataset 'mnistt'"):
        get_dataset("mnistt", "train")
    with pytest.raises(UserError, match="no split 'validation'"):
        get_dataset("digits", "validation")


def test_iterate_batches_order_and_drop_last():
    ds = get_dataset("digits", "test", image_size=8)
    g = torch.Generator().manual_seed(0)
    seen = [idx for _, _, idx in iterate_batches(ds, 64, shuffle=True, drop_last=True, generator=g)]
    assert len(seen) == 700 // 64 and all(len(i) == 64 for i in seen)
    allidx = torch.cat(seen)
    assert len(set(allidx.tolist())) == len(allidx)
    x, y, idx = next(iterate_batches(ds, 10))
    assert torch.equal(x, ds.images[:10]) and torch.equal(y, ds.labels[:10])
