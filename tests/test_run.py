"""End-to-end tests of run.py on tiny settings (width 4, 8 px, a few steps)."""
import json

import pytest
import torch
import yaml

from models import load_checkpoint, save_checkpoint, build_encoder

TINY = ["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "3",
        "--device", "cpu", "--seed", "1"]


def test_tiny_training_run_writes_everything(tmp_path, script):
    logdir = tmp_path / "run"
    r = script("run.py", *TINY, "--logdir", logdir)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((logdir / "config.yaml").read_text())
    assert cfg["width"] == 4 and cfg["image_size"] == 8 and cfg["dataset"] == "digits"
    assert cfg["temperature"] == 0.2  # cpu-scale default filled in and recorded
    lines = [json.loads(l) for l in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    assert all({"loss", "lr", "seconds", "images_per_s"} <= set(l) for l in lines)
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 3 * (1097 // 64)
    assert ckpt["encoder"]["kwargs"]["arch"] == "resnet18" and ckpt["head"] is not None
    assert "simclr epoch 3/3 loss" in (logdir / "train.log").read_text()
    assert list((logdir / "tb").glob("events.*"))
    # the learning rate follows the cosine over all steps: last epoch's lr near zero
    assert lines[-1]["lr"] < 0.05 * cfg["lr"]
    # running again without --resume/--clear refuses and keeps the checkpoint
    r2 = script("run.py", *TINY, "--logdir", logdir)
    assert r2.returncode == 2 and "already holds a checkpoint" in r2.stderr
    assert load_checkpoint(logdir / "checkpoint.pt")["epoch"] == 3


def test_killed_then_resumed_run_equals_uninterrupted(tmp_path, script):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    r = script("run.py", *TINY, "--logdir", full)
    assert r.returncode == 0, r.stderr
    steps_per_epoch = 1097 // 64
    # SIGKILL in the middle of epoch 2 (after 1.5 epochs of optimizer steps)
    r = script("run.py", *TINY, "--logdir", crashed,
               env={"SSLSTEAL_KILL_AT_STEP": str(steps_per_epoch + steps_per_epoch // 2)})
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert load_checkpoint(crashed / "checkpoint.pt")["epoch"] == 1
    r = script("run.py", *TINY, "--logdir", crashed, "--resume")
    assert r.returncode == 0, r.stderr
    assert "1 of 3 epochs done" in r.stdout
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(crashed / "checkpoint.pt")
    assert b["epoch"] == 3
    for part in ("encoder", "head"):
        for k, v in a[part]["state_dict"].items():
            assert torch.equal(v, b[part]["state_dict"][k]), f"{part}.{k} differs after resume"


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "cifar10", "-data", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--dataset", "cifar10"], "-data"),
    (["--dataset", "nosuchset"], "invalid choice"),
    (["--arch", "resnet9"], "invalid choice"),
    (["--n-views", "1"], "at least 2 views"),
    (["--logdir", "/proc/version/sub"], "cannot write to the run directory"),
])
def test_bad_input_gives_one_clear_line(tmp_path, script, args, needle):
    r = script("run.py", "--epochs", "1", "--width", "4", "--image-size", "8",
               *(args if "--logdir" in args else [*args, "--logdir", tmp_path / "x"]))
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_with_another_architecture_or_corrupt_checkpoint(tmp_path, script):
    logdir = tmp_path / "run"
    logdir.mkdir()
    save_checkpoint(logdir / "checkpoint.pt", encoder=build_encoder("resnet34", width=4), epoch=1)
    r = script("run.py", *TINY, "--logdir", logdir, "--resume")
    assert r.returncode == 2 and "different encoder" in r.stderr and "Traceback" not in r.stderr
    (logdir / "checkpoint.pt").write_bytes(b"garbage")
    r = script("run.py", *TINY, "--logdir", logdir, "--resume")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    r = script("run.py", *TINY, "--logdir", logdir, "--resume", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
