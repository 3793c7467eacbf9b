"""bench/imagenet_bench.py: the step runs, its FLOP count matches a hand count, bad settings fail clearly."""
import json
import re

import pytest
import torch
from torch import nn

from bench import imagenet_bench
from bench.imagenet_bench import IMAGENET_MEAN, IMAGENET_STD, peak_flops_for, run_bench
from models import build_encoder
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(arch="resnet18", width=4, size=32, batch=4, steps=1, warmup=1)


def _conv_forward_flops(arch: str, width: int, size: int, batch: int) -> tuple[int, int]:
    """Hand count of one encoder forward: 2 * N * Cout * Hout * Wout * Cin/groups * kh * kw per conv.

    Returns (all convolutions, the first convolution alone). The encoder has no linear layer."""
    enc = build_encoder(arch, stem="imagenet", width=width, mean=IMAGENET_MEAN, std=IMAGENET_STD).eval()
    counts = []

    def hook(mod, _inp, out):
        kh, kw = mod.kernel_size
        counts.append(2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw)

    for m in enc.modules():
        assert not isinstance(m, nn.Linear)
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        enc(torch.rand(batch, 3, size, size))
    return sum(counts), counts[0]


def test_cpu_run_numbers_and_flop_count():
    r = run_bench(device="cpu", **TINY)
    assert r["device"] == "cpu" and r["precision"] == "fp32" and r["channels_last"] is False
    assert r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["peak_mem_bytes"] > 0
    assert r["peak_mem_kind"] == "process_peak_rss"
    assert r["mfu"] is None and r["peak_flops_per_s"] is None
    assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_step"] / (r["ms_per_step"] / 1000))

    # victim forward F + stolen forward F + stolen backward 2F (input and weight gradients) less the
    # first conv's input gradient (the images need none): 4F - conv1. Not simply 4F at this width,
    # where the 3-channel 7x7 stem is a large share of F.
    fwd, conv1 = _conv_forward_flops(TINY["arch"], TINY["width"], TINY["size"], TINY["batch"])
    assert r["flops_per_step"] > 0
    assert r["flops_per_step"] == pytest.approx(4 * fwd - conv1, rel=0.02)


def test_peak_table_and_override():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H200") == 989.4e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA L4") == 121e12
    assert peak_flops_for("NVIDIA A10") == 125e12
    for unknown in ("NVIDIA L40S", "NVIDIA A10G", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA H100 NVL", "cpu"):
        assert peak_flops_for(unknown) is None, unknown
    r = run_bench(device="cpu", peak_tflops=1.0, **TINY)
    assert r["mfu"] == pytest.approx(r["achieved_flops_per_s"] / 1e12)


def _one_sentence(message: str) -> bool:
    return bool(message) and "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no CUDA GPU is visible")
def test_cuda_without_gpu_is_one_clear_sentence():
    with pytest.raises(UserError) as err:
        run_bench(device="cuda", **TINY)
    msg = str(err.value)
    assert _one_sentence(msg) and "CUDA" in msg and "--device cpu" in msg


@pytest.mark.parametrize("kwargs, words", [
    (dict(precision="fp16"), "--precision"),
    (dict(channels_last="maybe"), "--channels-last"),
    (dict(arch="vit"), "--arch"),
    (dict(batch=0), "--batch"),
    (dict(device="tpu"), "--device"),
    (dict(compare=True), "--compare"),  # CPU main run is already fp32 without channels_last
])
def test_bad_settings_raise_one_sentence(kwargs, words):
    with pytest.raises(UserError) as err:
        run_bench(**{**TINY, "device": "cpu", **kwargs})
    assert _one_sentence(str(err.value)) and words in str(err.value)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    r = imagenet_bench.main(["--device", "cpu", "--arch", "resnet18", "--width", "4", "--size", "32",
                             "--batch", "4", "--steps", "1", "--warmup", "0", "--out", str(out)])
    text = capsys.readouterr().out
    assert "images/s" in text and "peak unknown" in text and "RSS" in text
    assert json.loads(out.read_text())["flops_per_step"] == r["flops_per_step"]


@pytest.mark.cuda
def test_cuda_bf16_channels_last():
    r = run_bench(device="cuda", arch="resnet18", width=16, size=64, batch=8, steps=2, warmup=1)
    assert r["precision"] == "bf16" and r["channels_last"] is True
    assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and r["peak_mem_bytes"] > 0
    assert r["peak_mem_kind"] == "cuda_max_memory_allocated"
    assert r["mfu"] is None or r["mfu"] > 0
