"""The scripts on CUDA (skipped without a GPU: marked ``cuda``): victim training -> stealing ->
probe, and stealsimsiam.py with bf16 autocast and channels_last, each compared with the same run
on CPU.

Tolerances, measured on an H100 (2026-11-24, torch 2.11): fp32 CUDA and CPU kernels differ in
summation order, so two short runs from the same seed drift apart slowly. Victim training: the
per-epoch losses of a 2-epoch run differed by at most 0.4% (relative); stealing the *same* victim
on each device, 4 seeds: at most 0.7%. Both are checked within 5%. (Stealing two victims trained
on different devices differed by 10%: the victims' answers differ, so the test steals one.) The
stolen encoders' probe accuracies differed by 0.5 to 6 points over those seeds (the seeds' own
spread on CPU: 65.5 to 75.5 %), checked within 15. bf16 autocast rounds activations to 8 bits of
mantissa, so its losses are compared with a 10% tolerance.
"""
import json

import pytest
import torch

import linear_eval
import run as run_script
import steal
import stealsimsiam
from attacks.imagenet import use_channels_last
from data_aug import get_dataset, write_image_folder
from models import build_encoder, load_checkpoint, save_simsiam
from simclr import precision_from_flags
from utils import read_jsonl

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("one_thread")]
LOSS_TOLERANCE, BF16_TOLERANCE, PROBE_TOLERANCE = 0.05, 0.10, 15.0


def _losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def _close(a, b, tolerance):
    assert len(a) == len(b) and all(abs(x - y) <= tolerance * abs(x) for x, y in zip(a, b)), (a, b)


def test_victim_steal_probe_on_cuda_match_cpu(tmp_path):
    results, victims = {}, {}
    for device in ("cpu", "cuda"):
        victim_dir, steal_dir = tmp_path / f"victim_{device}", tmp_path / f"steal_{device}"
        torch.cuda.reset_peak_memory_stats()
        victims[device] = run_script.main(["--dataset", "digits", "--epochs", "2", "--width", "4", "-b", "64",
                                           "--amp", "off", "--device", device, "--logdir", str(victim_dir),
                                           "--seed", "0"])
        # both devices steal the CPU-trained victim: the same answers, so only the device differs
        steal.main(["--victim-checkpoint", str(victims["cpu"]), "--losstype", "mse", "--num_queries", "200",
                    "--epochs", "2", "--device", device, "--logdir", str(steal_dir), "--seed", "0"])
        if device == "cuda":
            assert torch.cuda.max_memory_allocated() > 0  # the work ran on the GPU
        for d in (victim_dir, steal_dir):
            saved = load_checkpoint(d / "checkpoint.pt")
            assert saved["config"]["device"].startswith(device)
            assert all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64)
                       for t in saved["encoder"]["state_dict"].values())
        records = linear_eval.main(["--checkpoint", str(steal_dir / "checkpoint.pt"), "--modeltype", "stolen",
                                    "--device", device, "--results", str(tmp_path / f"probe_{device}.jsonl")])
        results[device] = (_losses(victim_dir), _losses(steal_dir), records[0]["metrics"]["top1"])
    _close(results["cpu"][0], results["cuda"][0], LOSS_TOLERANCE)
    _close(results["cpu"][1], results["cuda"][1], LOSS_TOLERANCE)
    assert abs(results["cpu"][2] - results["cuda"][2]) <= PROBE_TOLERANCE


def test_stealsimsiam_bf16_step_on_cuda_matches_cpu(tmp_path):
    root = tmp_path / "data"
    write_image_folder(get_dataset("digits", "train").subset(range(128)), root, "train")
    torch.manual_seed(0)
    victim = save_simsiam(root / "victim.pth.tar", build_encoder("resnet18", stem="cifar", width=4,
                                                                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    precision = precision_from_flags({"precision": "auto"}, torch.device("cuda"))
    channels_last = use_channels_last({"precision": "auto"}, torch.device("cuda"))
    assert precision.enabled and precision.dtype == torch.bfloat16 and channels_last
    with precision.autocast():
        out = build_encoder("resnet18", width=4).cuda()(torch.rand(2, 3, 16, 16, device="cuda"))
    assert out.dtype == torch.bfloat16
    losses = {}
    for device in ("cpu", "cuda"):
        logdir = tmp_path / device
        stealsimsiam.main(["--pretrained", str(victim), "--data", str(root), "--datasetsteal", "imagenet",
                           "--image-size", "16", "--num_queries", "128", "-b", "32", "--epochs", "1",
                           "--useaug", "False", "--device", device, "--logdir", str(logdir)])
        config = load_checkpoint(logdir / "checkpoint.pt")["config"]
        assert config["device"].startswith(device)
        assert json.loads((logdir / "queries.json").read_text())["queries_used"] == 128
        losses[device] = _losses(logdir)
    _close(losses["cpu"], losses["cuda"], BF16_TOLERANCE)
