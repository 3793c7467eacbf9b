import pytest
import torch

from data_aug import get_dataset
from probe import assert_unchanged, fit_probe, freeze, linear_probe
from models import build_encoder, save_checkpoint


def blobs(n, d, k, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.arange(n) % k
    x = centers[y] + torch.randn(n, d, generator=g)
    return x * scale, y


def test_probe_separates_blobs_and_is_scale_invariant():
    xtr, ytr = blobs(300, 8, 3, 0)
    xte, yte = blobs(150, 8, 3, 0)
    m = fit_probe(xtr, ytr, xte, yte, num_classes=3)
    assert m["top1"] > 95 and m["top5"] == 100.0
    scaled = fit_probe(xtr * 1e4, ytr, xte * 1e4, yte, num_classes=3)
    assert scaled["top1"] == pytest.approx(m["top1"], abs=1.0)


def test_probe_on_noise_is_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    assert fit_probe(xtr, ytr, xte, yte, num_classes=4)["top1"] < 40


def test_frozen_encoder_is_unchanged_and_in_eval_mode():
    enc = build_encoder("resnet18", width=4)
    train = get_dataset("digits", "train", image_size=8).subset(range(200))
    test = get_dataset("digits", "test", image_size=8).subset(range(100))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    m = linear_probe(enc, train, test, device=torch.device("cpu"))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    for k, v in enc.state_dict().items():  # BatchNorm running stats included
        assert torch.equal(v, before[k]), k
    assert m["n_train"] == 200 and m["n_test"] == 100 and m["feature_dim"] == 32
    # the check itself catches a change
    snapshot = freeze(enc)
    with torch.no_grad():
        enc.bn1.running_mean.add_(1.0)
    with pytest.raises(AssertionError, match="bn1.running_mean"):
        assert_unchanged(enc, snapshot)


def test_cli_table_and_results_file(tmp_path, script):
    enc = build_encoder("resnet18", width=4)
    ckpt = save_checkpoint(tmp_path / "c.pt", encoder=enc, config={"dataset": "digits", "image_size": 8})
    r = script("linear_eval.py", "--checkpoint", ckpt, "--modeltype", "victim", "random", "pixels",
               "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "| pixels |" in r.stdout and "| random |" in r.stdout
    lines = (tmp_path / "linear_eval.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # no --checkpoint: the default victim path (a seed no run uses) does not exist
    r = script("linear_eval.py", "--modeltype", "victim", "--seed", "987654")
    assert r.returncode == 2 and "--checkpoint" in r.stderr
