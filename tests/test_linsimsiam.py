"""linsimsiam.py: the ImageNet path's linear probe on a tiny SimSiam-format victim and a tiny
"stolen" checkpoint, with the offline digits (8 px, resized on the device) as downstream task;
the reference's SGD probe (evaluation.probe.fit_downstream kind "sgd"); one process against two (torchrun)."""
import json
import math
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import linsimsiam
from attacks.imagenet import view
from data_aug import get_dataset, write_image_folder
from engine.distributed import Dist
from evaluation.probe import SGD_INIT_STD, assert_unchanged, fit_downstream, fit_sgd_probe, snapshot
from models import build_encoder, load_encoder, save_checkpoint, save_simsiam
from models.probe import fit_probe
from tests.conftest import ROOT
from utils import UserError, read_jsonl, write_config

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
README = ("python linsimsiam.py --world-size -1 --rank 0 --batch-size 256 --lars --lr 1.0 --datasetsteal 'imagenet' "
          "--num_queries 250000 --losstype 'infonce' --dataset 'cifar10' --modeltype 'stolen' --workers 8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A width-4 ResNet18 victim in SimSiam format and a second checkpoint as its stolen copy."""
    root = tmp_path_factory.mktemp("linsimsiam")
    torch.manual_seed(1)
    victim = build_encoder("resnet18", stem="cifar", width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    vpath = save_simsiam(root / "checkpoint_0099.pth.tar", victim)
    torch.manual_seed(2)
    stolen = build_encoder("resnet18", stem="cifar", width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    spath = save_checkpoint(root / "steal" / "checkpoint.pt", encoder=stolen, kind="stolen", dataset="imagenet",
                            config={"dataset": "digits", "image_size": 16, "victim_checkpoint": str(vpath),
                                    "losstype": "infonce", "num_queries": 100, "datasetsteal": "digits"})
    return SimpleNamespace(root=root, victim=vpath, stolen=spath)


def _base(world, *extra):
    return ["--pretrained", str(world.victim), "--checkpoint", str(world.stolen), "--dataset", "digits",
            "--device", "cpu", "-j", "0", *extra]


def test_victim_stolen_random_records(world, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    records = linsimsiam.main(_base(world, "--modeltype", "victim", "stolen", "random", "--image-size", "16",
                                    "--results", str(results), "--tag", "table=table3", "--seed", "5"))
    out = capsys.readouterr().out
    assert "| victim | digits | lbfgs |" in out and "| random |" in out  # cpu scale: lbfgs
    assert read_jsonl(results) == json.loads(json.dumps(records))
    by = {r["modeltype"]: r for r in records}
    assert list(by) == ["victim", "stolen", "random"]
    for r in records:
        assert r["script"] == "linsimsiam" and r["table"] == "table3" and r["dataset_test"] == "digits"
        assert r["image_size"] == 16 and r["native_size"] == 8 and r["seed"] == 5 and r["processes"] == 1
        assert r["eval_set"] == "test (700 images)" and r["metrics"]["n_test"] == 700  # the whole test split
        assert r["probe"]["kind"] == "lbfgs" and r["probe"]["scale"] == "cpu"
        assert 0 <= r["metrics"]["top1"] <= r["metrics"]["top5"] <= 100 and r["metrics"]["feature_dim"] == 32
        assert r["victim_checkpoint"] == str(world.victim) and "time" in r
    assert by["victim"]["checkpoint"] == str(world.victim) and by["stolen"]["checkpoint"] == str(world.stolen)
    assert by["random"]["checkpoint"] == str(world.stolen)  # the stolen architecture, at random init
    assert by["stolen"]["stolen_with"] == {"losstype": "infonce", "num_queries": 100, "datasetsteal": "digits"}
    assert len({r["metrics"]["top1"] for r in records}) == 3  # three different encoders

    # the sgd probe through the CLI; --pretrained left out: the stolen checkpoint names the victim
    rec = linsimsiam.main(["--checkpoint", str(world.stolen), "--modeltype", "victim", "--dataset", "digits",
                           "--device", "cpu", "-j", "0", "--image-size", "16", "--probe", "sgd", "--epochs", "4",
                           "-b", "128", "--lr", "0.5", "--results", str(results)])[0]
    assert rec["checkpoint"] == str(world.victim) and rec["probe"]["kind"] == "sgd"
    assert rec["probe"]["lr"] == pytest.approx(0.5 * 128 / 256) and len(rec["metrics"]["curve"]["top1"]) == 4
    assert rec["metrics"]["top1"] == pytest.approx(rec["metrics"]["curve"]["top1"][-1], abs=1e-3)  # the last epoch
    assert len(read_jsonl(results)) == 4


def test_default_sizes_and_fmnist_alias(world):
    config = vars(linsimsiam.build_parser().parse_args(_base(world, "--modeltype", "victim", "stolen", "random")))
    enc = linsimsiam.Encoders(config)
    assert enc.get("victim")[2] == 224  # SimSiam's training resolution
    assert enc.get("stolen")[2] == 16  # the stolen checkpoint's config
    assert enc.get("random")[2] == 16
    args = linsimsiam.build_parser().parse_args(["--dataset", "fmnist"])
    assert args.dataset == "fashionmnist" and args.modeltype == ["victim"] and args.probe == "auto"
    with pytest.raises(SystemExit):
        linsimsiam.build_parser().parse_args(["--dataset", "patches"])  # no labels


def test_sgd_probe_separates_blobs_with_the_reference_rules():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 4
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    classes = SimpleNamespace(name="blobs", num_classes=4)
    feats = (x[:300], y[:300], x[300:], y[300:])
    metrics, probe, how = fit_downstream("sgd", None, classes, classes, device="cpu", lr=0.4, epochs=20,
                                         batch_size=64, features=feats)
    assert metrics["top1"] >= 99 and metrics["best_top1"] >= 99 and metrics["n_test"] == 100
    assert how["kind"] == "sgd" and how["optimizer"] == "sgd" and how["base_lr"] == 0.4
    assert how["lr"] == pytest.approx(0.4 * 64 / 256) and how["weight_decay"] == 0.0 and how["momentum"] == 0.9
    assert torch.equal(probe.mean, torch.zeros(1, 16)) and torch.equal(probe.std, torch.ones(1, 16))  # raw features
    lrs = metrics["curve"]["lr"]  # cosine per epoch from lr x B / 256
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    # LARS and its how
    m, _, how = fit_downstream("sgd", None, classes, classes, device="cpu", lr=5.0, epochs=3, batch_size=64,
                               features=feats, lars=True)
    assert how["optimizer"] == "lars" and len(m["curve"]["top1"]) == 3
    # the init: weight ~ N(0, 0.01^2), bias 0 (a negligible learning rate leaves it in place)
    d = 512
    _, probe = fit_sgd_probe(torch.randn(8, d), torch.arange(8) % 10, torch.randn(4, d), torch.arange(4),
                             num_classes=10, lr=1e-12, momentum=0.0, epochs=1, seed=3)
    w = probe.linear.weight
    assert abs(w.std().item() - SGD_INIT_STD) < 0.001 and abs(w.mean().item()) < 0.001
    assert probe.linear.bias.abs().max().item() < 1e-9


def test_image_size_resizes_each_batch_on_the_device(world, tmp_path):
    """--image-size 24 on 8 px digits: the stolen encoder's features at 24 px, as by hand."""
    rec = linsimsiam.main(["--checkpoint", str(world.stolen), "--modeltype", "stolen", "--dataset", "digits",
                           "--image-size", "24", "--device", "cpu", "-j", "0",
                           "--results", str(tmp_path / "r.jsonl")])[0]
    assert rec["image_size"] == 24 and rec["native_size"] == 8
    encoder = load_encoder(world.stolen)[0].eval()
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    with torch.no_grad():
        by_hand = [encoder(F.interpolate(s.images.float() / 255, size=(24, 24), mode="bilinear", align_corners=False))
                   for s in (train, test)]
    xtr, ytr = linsimsiam.sharded_features(encoder, train, Dist(), transform=lambda b: view(b, 24), batch_size=100,
                                           workers=0)
    assert xtr.shape == (len(train), 32) and torch.equal(ytr, train.labels)
    torch.testing.assert_close(xtr, by_hand[0], rtol=1e-4, atol=1e-5)
    expected = fit_probe(by_hand[0], train.labels, by_hand[1], test.labels, num_classes=10)["top1"]
    assert rec["metrics"]["top1"] == pytest.approx(expected, abs=0.5)


def test_imagenet_folder_as_downstream(world, tmp_path):
    write_image_folder(get_dataset("digits", "train").subset(range(120)), tmp_path, "train")
    write_image_folder(get_dataset("digits", "test").subset(range(40)), tmp_path, "val")
    rec = linsimsiam.main(["--checkpoint", str(world.stolen), "--modeltype", "stolen", "--dataset", "imagenet",
                           "--data", str(tmp_path), "--image-size", "16", "--device", "cpu", "-j", "0",
                           "--probe", "lbfgs", "--results", str(tmp_path / "r.jsonl")])[0]
    assert rec["dataset_test"] == "imagenet" and rec["eval_set"] == "val (40 images)"
    assert rec["native_size"] == 16 and rec["metrics"]["n_train"] == 120


def test_missing_stolen_checkpoint_and_the_readme_command(tmp_path, monkeypatch):
    args = linsimsiam.build_parser().parse_args(shlex.split(README)[2:])
    assert (args.world_size, args.rank, args.batch_size, args.lars, args.lr) == (-1, 0, 256, True, 1.0)
    assert (args.datasetsteal, args.num_queries, args.losstype, args.dataset) == ("imagenet", 250000, "infonce",
                                                                                  "cifar10")
    assert args.modeltype == ["stolen"] and args.workers == 8 and args.momentum == 0.9 and args.weight_decay == 0
    monkeypatch.chdir(tmp_path)
    expected = os.path.join("runs", "stealsimsiam_infonce_250000_imagenet_s0", "checkpoint.pt")
    with pytest.raises(UserError, match="no stolen checkpoint at " + expected.replace(".", r"\.")):
        linsimsiam.main(shlex.split(README)[2:])
    with pytest.raises(UserError, match="needs the victim's checkpoint"):
        linsimsiam.main(["--modeltype", "victim"])


def test_default_stolen_run_is_found(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "stealsimsiam_mse_100_digits_s0"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(world.stolen.read_bytes())
    rec = linsimsiam.main(["--modeltype", "stolen", "--losstype", "mse", "--num_queries", "100", "--datasetsteal",
                           "digits", "--dataset", "digits", "--device", "cpu", "-j", "0"])[0]
    assert rec["checkpoint"] == os.path.join("runs", "stealsimsiam_mse_100_digits_s0", "checkpoint.pt")
    assert len(read_jsonl(run / "linsimsiam.jsonl")) == 1  # default results: beside the stolen checkpoint


def test_frozen_encoder_is_unchanged_by_every_probe(world):
    encoder = load_encoder(world.stolen)[0]
    train = get_dataset("digits", "train").subset(range(300))
    test = get_dataset("digits", "test").subset(range(100))
    before = snapshot(encoder)
    for kind in ("sgd", "lbfgs", "reference"):
        metrics, _, how = fit_downstream(kind, encoder, train, test, device="cpu", lr=0.1 if kind == "sgd" else 1e-3,
                                         epochs=2, batch_size=64, transform=lambda b: view(b, 12))
        assert_unchanged(encoder, before)
        assert metrics["feature_dim"] == 32 and metrics["n_test"] == 100, kind
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def _torchrun(args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "linsimsiam.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_two_processes_match_one(world, tmp_path):
    """The feature pass sharded over 2 processes (gloo) and gathered: the same probe result."""
    args = ["--checkpoint", str(world.stolen), "--modeltype", "stolen", "victim", "--dataset", "digits",
            "--image-size", "16", "--device", "cpu", "-j", "0"]
    one = linsimsiam.main(args + ["--results", str(tmp_path / "one.jsonl")])
    run = _torchrun(args + ["--results", str(tmp_path / "two.jsonl")])
    assert run.returncode == 0, run.stderr[-2000:]
    two = read_jsonl(tmp_path / "two.jsonl")
    assert [r["processes"] for r in two] == [2, 2] and run.stdout.count("results appended") == 1
    for a, b in zip(one, two):
        assert a["modeltype"] == b["modeltype"] and a["metrics"]["n_train"] == b["metrics"]["n_train"]
        assert b["metrics"]["top1"] == pytest.approx(a["metrics"]["top1"], abs=0.5)


def test_useval_copy_is_recorded_as_imagenetval_with_its_training_config(world, tmp_path):
    """A copy stolen with ``--datasetsteal imagenet --useval True`` queried ImageNet's val folder: its record
    says ``imagenetval`` (Table 3's row), and carries the run's config.yaml (API key redacted)."""
    torch.manual_seed(3)
    run = tmp_path / "stealsimsiam_mse_q100_imagenet_val"
    config = {"dataset": "digits", "image_size": 16, "victim_checkpoint": str(world.victim), "losstype": "mse",
              "num_queries": 100, "datasetsteal": "imagenet", "useval": True}
    stolen = save_checkpoint(run / "checkpoint.pt", encoder=build_encoder("resnet18", stem="cifar", width=4,
                                                                          mean=IMAGENET_MEAN, std=IMAGENET_STD),
                             kind="stolen", dataset="imagenet", config=config)
    write_config(run, {**config, "epochs": 2, "lr": 0.4, "api_key": "key-abcd9876"})
    (record,) = linsimsiam.main(["--pretrained", str(world.victim), "--checkpoint", str(stolen), "--dataset",
                                 "digits", "--device", "cpu", "-j", "0", "--modeltype", "stolen", "--image-size",
                                 "16", "--results", str(tmp_path / "r.jsonl")])
    assert record["stolen_with"]["datasetsteal"] == "imagenetval"
    assert record["model_config"]["epochs"] == 2 and record["model_config"]["useval"] is True
    assert record["model_config"]["api_key"] == "...9876"
    assert record["probe_config"]["dataset"] == "digits"
