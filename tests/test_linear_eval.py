import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import linear_eval
import linear_eval_sup
from data_aug import ImageSet, get_dataset, split_holdout
from evaluation import probe as probe_mod
from evaluation.cli import default_checkpoint, resolve_eval_set, resolve_probe
from evaluation.probe import assert_unchanged, freeze, linear_probe, load_probe, probe_logits, reference_probe
from models import build_encoder, load_encoder, save_checkpoint
from models.probe import fit_probe
from utils import UserError, accuracy

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
               "--device", "cpu", "-n", "300")
    assert r.returncode == 0, r.stderr
    assert "| pixels |" in r.stdout and "| random |" in r.stdout
    lines = (tmp_path / "linear_eval.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # no --checkpoint: the default victim path (a seed no run uses) does not exist
    r = script("linear_eval.py", "--modeltype", "victim", "--seed", "987654")
    assert r.returncode == 2 and "--checkpoint" in r.stderr


# ------------------------------------------------------------------ the reference's probe

CPU = torch.device("cpu")


def digits(n_train=None, n_test=None):
    train = get_dataset("digits", "train", image_size=8)
    test = split_holdout(get_dataset("digits", "test", image_size=8))[1]
    if n_train:
        train = train.subset(range(n_train))
    if n_test:
        test = test.subset(range(n_test))
    return train, test


def capture_copies(monkeypatch):
    """Record the encoder copies the reference probe makes."""
    copies = []
    real = probe_mod.frozen_copy

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        copies.append(out)
        return out

    monkeypatch.setattr(probe_mod, "frozen_copy", spy)
    return copies


def bn_buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_reference_probe_bn_quirk_runs_on_a_copy(bn, monkeypatch):
    train, test = digits(96, 40)
    enc = build_encoder("resnet18", width=4)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    copies = capture_copies(monkeypatch)
    m = reference_probe(enc, train, test, device=CPU, lr=1e-2, epochs=2, batch_size=32, bn=bn, test_batch_size=20)
    assert len(copies) == 1 and copies[0] is not enc
    moved = [k for k, v in bn_buffers(copies[0]).items() if not torch.equal(v, before[k])]
    if bn == "train":  # the reference's quirk: the copy's running statistics drift
        assert any("running_mean" in k for k in moved) and copies[0].training
    else:  # frozen BatchNorm: not even the copy's buffers move
        assert moved == [] and not copies[0].training
    # the copy's weights are frozen, and the caller's encoder is untouched (mode and grads too)
    assert not any(p.requires_grad for p in copies[0].parameters())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert len(m["curve"]["top1"]) == 2 and m["top1"] == pytest.approx(m["curve"]["top1"][-1], abs=1e-3)


class Pixels(nn.Module):
    """An identity-like encoder (flattened pixels) whose forward passes a hook can count."""
    out_dim = 192

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("num_labeled,per_epoch", [(40, 48), (None, 100), (1000, 100)])
def test_reference_probe_unshuffled_prefix_capped_by_num_labeled(num_labeled, per_epoch):
    train, test = digits(100, 30)
    enc, calls = Pixels(), []
    enc.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].clone()))  # survives the deep copy
    m = reference_probe(enc, train, test, device=CPU, lr=1e-2, epochs=2, batch_size=16, num_labeled=num_labeled,
                        test_batch_size=64)
    assert m["n_train"] == per_epoch
    n_batches = -(-per_epoch // 16)
    assert len(calls) == 2 * (n_batches + 1)  # per epoch: the training batches, then one test batch
    expected = train.images[:per_epoch].float() / 255
    for epoch in range(2):
        batches = calls[epoch * (n_batches + 1):(epoch + 1) * (n_batches + 1)]
        assert [len(b) for b in batches[:-1]] == [16] * (per_epoch // 16) + ([per_epoch % 16] if per_epoch % 16 else [])
        assert torch.equal(torch.cat(batches[:-1]), expected)  # the reference's order: no shuffling
        assert torch.equal(batches[-1], test.images.float() / 255)


def quadrants(n, seed):
    """A linearly separable toy set: class k lights up quadrant k of an 8x8 image over noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        images[labels == k, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
    return ImageSet(images.to(torch.uint8), labels, name="quadrants", split=f"s{seed}", num_classes=4)


def test_reference_probe_learns_separable_features():
    train, test = quadrants(200, 0), quadrants(100, 1)
    ref = reference_probe(Pixels(), train, test, device=CPU, lr=1e-2, epochs=15, batch_size=32, test_batch_size=64)
    assert ref["top1"] == 100.0 and ref["curve"]["train_top1"][-1] == 100.0
    # chance level before training, so the probe (not the features alone) gets there
    untrained = reference_probe(Pixels(), train, test, device=CPU, lr=1e-9, epochs=1, batch_size=32)
    assert untrained["top1"] < 60


def tiny_checkpoint(path, seed=0, dataset="digits"):
    torch.manual_seed(seed)
    enc = build_encoder("resnet18", width=4)
    return save_checkpoint(path, encoder=enc, config={"dataset": dataset, "image_size": 8})


@pytest.mark.parametrize("kind", ["reference", "lbfgs"])
def test_save_writes_a_probe_that_reloads_and_reproduces_the_accuracy(tmp_path, kind):
    ckpt = tiny_checkpoint(tmp_path / "run" / "checkpoint.pt")
    results = tmp_path / "r.jsonl"
    (record,) = linear_eval.main(["--checkpoint", str(ckpt), "--modeltype", "victim", "--probe", kind,
                                  "--probe-epochs", "2", "-n", "256", "--save", "True", "--results", str(results),
                                  "--device", "cpu"])
    assert record["probe"]["kind"] == kind and json.loads(results.read_text())["probe"] == record["probe"]
    if kind == "reference":
        assert record["probe"]["lr"] == 3e-4 and record["probe"]["bn"] == "train" and record["probe"]["epochs"] == 2
        assert record["probe"]["weight_decay"] == 8e-4 and record["metrics"]["n_train"] == 256
    path = tmp_path / "run" / "probe_victim_digits.pt"
    assert record["probe_file"] == str(path)
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["dataset_test"] == "digits" and raw["probe"]["kind"] == kind
    probe, info = load_probe(path)
    enc = load_encoder(ckpt)[0]
    _, test = digits()
    logits, labels = probe_logits(enc, probe, test, device=CPU, bn=info["probe"]["bn"],
                                  batch_size=info["probe"]["test_batch_size"])
    top1, top5 = accuracy(logits, labels, topk=(1, 5))
    assert top1 == record["metrics"]["top1"] and top5 == record["metrics"]["top5"]


def test_clear_starts_the_results_file_afresh(tmp_path):
    results = tmp_path / "r.jsonl"
    argv = ["--modeltype", "pixels", "--dataset-test", "digits", "--image-size", "8", "--results", str(results),
            "--device", "cpu", "-n", "64", "--probe", "reference", "--probe-epochs", "1"]
    linear_eval.main(argv)
    linear_eval.main(argv)
    assert len(results.read_text().splitlines()) == 2
    linear_eval.main(argv + ["--clear", "True"])
    assert len(results.read_text().splitlines()) == 1


def test_the_reference_readme_command_evaluates_the_stolen_copy(tmp_path, monkeypatch):
    argv = ["--dataset", "cifar10", "--datasetsteal", "svhn", "--dataset-test", "stl10", "--losstype", "mse",
            "--num_queries", "9000"]
    args = linear_eval.build_parser().parse_args(argv)
    assert args.modeltype == ["stolen"] and args.clear is False
    assert default_checkpoint(args, "stolen") == Path("runs/steal_mse_9000_svhn_s0/checkpoint.pt")
    # the reference's rules for its test sets and probe at paper scale
    assert resolve_eval_set(args.eval_set, "stl10") == "test" and resolve_eval_set("auto", "cifar10") == "holdout"
    assert resolve_probe(args.probe, "stl10", args.scale) == "reference"
    assert resolve_probe(args.probe, "digits", args.scale) == "lbfgs"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"no stolen checkpoint at runs/steal_mse_9000_svhn_s0/checkpoint.pt"):
        linear_eval.main(argv)


def test_every_reference_flag_parses_and_head_picks_stealhead():
    common = ["-folder-name", "x", "-a", "resnet34", "-n", "50000", "--epochstrain", "200", "--epochs", "100",
              "--num_queries", "9000", "--lr", "1e-4", "--modeltype", "stolen", "--save", "False", "--losstype",
              "infonce", "--head", "True", "--defence", "False", "--sigma", "0.5", "--mu", "5", "--clear", "True",
              "-b", "256", "--dataset", "cifar10", "--dataset-test", "cifar10", "--datasetsteal", "cifar10"]
    args = linear_eval.build_parser().parse_args(common + ["--watermark", "False", "--entropy", "False",
                                                           "--victimhead", "False"])
    assert args.head and args.num_labeled == 50000 and args.arch == "resnet34" and args.clear is True
    assert default_checkpoint(args, "stolen") == Path("runs/stealhead_infonce_9000_cifar10_s0/checkpoint.pt")
    args.head = False
    assert default_checkpoint(args, "stolen") == Path("runs/steal_infonce_9000_cifar10_s0/checkpoint.pt")
    sup = linear_eval_sup.build_parser()
    args = sup.parse_args(common)
    assert args.clear is True and sup.parse_args([]).clear is False
    assert default_checkpoint(args, "victim") == Path("runs/supervised_cifar10_resnet34_w64_s0/checkpoint.pt")
    with pytest.raises(SystemExit):
        sup.parse_args(["--watermark", "False"])


def test_defence_and_watermark_without_checkpoint_are_one_clear_error(script):
    r = script("linear_eval.py", "--defence", "True", "--dataset", "digits")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--defence" in line and "--checkpoint" in line
    args = linear_eval.build_parser().parse_args(["--watermark", "True", "--modeltype", "victim"])
    with pytest.raises(UserError, match="--watermark True.*--checkpoint"):
        default_checkpoint(args, "victim")


def test_arch_is_checked_against_the_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="resnet34"):
        linear_eval.main(["--checkpoint", str(ckpt), "-a", "resnet34", "--device", "cpu",
                          "--results", str(tmp_path / "r.jsonl")])
    assert not (tmp_path / "r.jsonl").exists()


def test_reference_probe_does_not_touch_the_callers_random_state():
    train, test = digits(64, 30)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    reference_probe(copy.deepcopy(Pixels()), train, test, device=CPU, lr=1e-2, epochs=1, batch_size=32)
    assert torch.equal(torch.rand(3), expected)
