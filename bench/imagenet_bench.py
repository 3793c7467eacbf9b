"""Benchmark: one ImageNet-scale stealing step (victim forward + stolen forward/backward/SGD step).

The victim is a ResNet (default ResNet50, ImageNet stem, width 64, ImageNet mean/std inside
the encoder) in eval mode answering under ``no_grad``; the stolen copy (same builder) is
trained to match the victim's outputs with an MSE loss and SGD (momentum 0.9). Inputs are
random uint8 images already on the device, turned into floats in [0, 1] inside the step
(the encoders normalise). On CUDA the defaults are bf16 autocast and channels_last; on CPU
fp32 and the default memory layout.

Prints, from one run: images/s of the whole step, ms per step, peak memory (CUDA:
``torch.cuda.max_memory_allocated`` reset before timing; CPU: the process's peak RSS since
it started), FLOPs of one step (victim forward + stolen forward + backward, counted once
with ``torch.utils.flop_counter.FlopCounterMode`` outside the timed steps), the achieved
FLOP/s and the model FLOPs utilisation (MFU: achieved / the GPU's dense bf16 peak, from a
table keyed by the device name, or ``--peak-tflops``). With ``--compare`` it also runs the
same step in fp32 without channels_last and prints the images/s ratio of the two runs.

Usage: python bench/imagenet_bench.py [--batch 256] [--size 224] [--arch resnet50] [--width 64]
       [--steps 10] [--warmup 3] [--device auto|cpu|cuda] [--precision auto|fp32|bf16]
       [--channels-last auto|on|off] [--compare] [--peak-tflops T] [--out bench.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from loss import mse  # noqa: E402
from models import ARCHS, build_encoder  # noqa: E402
from utils import UserError, atomic_write_text, pick_device, run_cli, setup_threads  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Dense (no sparsity) bf16 tensor-core peak per GPU, matched in order against
# torch.cuda.get_device_name(); the first pattern that matches wins. MIG slices, H100 NVL,
# A10G, L40/L40S and anything else not listed are "unknown" (use --peak-tflops).
PEAK_BF16_FLOPS = (
    (r"\bMIG\b", None),
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH100\b.*\bNVL\b", None),
    (r"\bH100\b", 989.4e12),
    (r"\bH200\b", 989.4e12),
    (r"\bA100\b", 312e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
)


def peak_flops_for(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``name``, or None when it is not in the table."""
    for pattern, peak in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return peak
    return None


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    value = str(value).lower()
    if value not in choices:
        raise UserError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _resolve(device: str, precision: str, channels_last) -> tuple[torch.device, str, bool]:
    device_spec = str(device)
    if device_spec not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device_spec):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device_spec!r}")
    dev = pick_device(device_spec)
    precision = _choice("precision", precision, ("auto", "fp32", "bf16"))
    if isinstance(channels_last, bool):
        channels_last = "on" if channels_last else "off"
    channels_last = _choice("channels-last", channels_last, ("auto", "on", "off"))
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16 needs a GPU with bf16 support and {torch.cuda.get_device_name(dev)} "
                        "has none; use --precision fp32")
    use_cl = dev.type == "cuda" if channels_last == "auto" else channels_last == "on"
    return dev, precision, use_cl


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(*, device: torch.device, precision: str, channels_last: bool, arch: str, width: int, size: int,
             batch: int, steps: int, warmup: int, lr: float, seed: int) -> dict:
    """Build victim + stolen models, count one step's FLOPs, then time ``steps`` steps after ``warmup``."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def encoder():
        return build_encoder(arch, stem="imagenet", width=width, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD).to(device=device, memory_format=fmt)

    victim = encoder().eval()
    for p in victim.parameters():
        p.requires_grad_(False)
    stolen = encoder().train()
    opt = torch.optim.SGD(stolen.parameters(), lr=lr, momentum=0.9)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=fmt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        x = images.float().div_(255.0)  # keeps the memory format of ``images``
        with autocast:
            with torch.no_grad():
                target = victim(x)
            loss = mse(stolen(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = int(counter.get_total_flops())

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps

    if device.type == "cuda":
        peak_mem, mem_kind = int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mem, mem_kind = int(rss if platform.system() == "Darwin" else rss * 1024), "process_peak_rss"
    return {
        "precision": precision,
        "channels_last": channels_last,
        "images_per_s": batch / seconds,
        "ms_per_step": seconds * 1000.0,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / seconds,
        "peak_mem_bytes": peak_mem,
        "peak_mem_kind": mem_kind,
        "out_dim": stolen.out_dim,
    }


def run_bench(*, batch: int = 256, size: int = 224, arch: str = "resnet50", width: int = 64, steps: int = 10,
              warmup: int = 3, device: str = "auto", precision: str = "auto", channels_last="auto",
              compare: bool = False, peak_tflops: float | None = None, lr: float = 0.05, seed: int = 0) -> dict:
    """Time the stealing step and return its numbers (see the module docstring).

    Keys: ``device``, ``device_name``, the settings, ``images_per_s``, ``ms_per_step``,
    ``flops_per_step``, ``achieved_flops_per_s``, ``peak_flops_per_s`` and ``mfu`` (None when the
    peak is unknown, e.g. on CPU), ``peak_mem_bytes`` with ``peak_mem_kind``, and with
    ``compare=True`` also ``fp32`` (the same numbers for the fp32, no-channels_last run) and
    ``speedup_vs_fp32`` (images/s ratio). Raises :class:`UserError` on a bad setting.
    """
    if arch not in ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    for name, value, low in (("batch", batch, 1), ("size", size, 1), ("width", width, 1), ("steps", steps, 1),
                             ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"--{name} must be an integer >= {low}, got {value!r}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise UserError(f"--peak-tflops must be a positive number, got {peak_tflops!r}")
    dev, prec, use_cl = _resolve(device, precision, channels_last)
    if compare and prec == "fp32" and not use_cl:
        raise UserError("--compare measures fp32 without channels_last against the main run, "
                        "which is already that; use --precision bf16 or --channels-last on")

    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak = peak_tflops * 1e12 if peak_tflops is not None else peak_flops_for(name)
    else:
        name = platform.processor() or platform.machine() or "cpu"
        peak = peak_tflops * 1e12 if peak_tflops is not None else None
    settings = dict(arch=arch, width=width, size=size, batch=batch, steps=steps, warmup=warmup, lr=lr, seed=seed)
    result = {"device": str(dev), "device_name": name, "torch": torch.__version__, **settings,
              "peak_flops_per_s": peak}
    if dev.type == "cuda":
        result["cudnn_fp32_conv_tf32"] = bool(torch.backends.cudnn.allow_tf32)

    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    try:
        main_run = _measure(device=dev, precision=prec, channels_last=use_cl, **settings)
        main_run["mfu"] = main_run["achieved_flops_per_s"] / peak if peak else None
        result.update(main_run)
        if compare:
            gc.collect()  # the main run's models and optimizer state go before the fp32 run
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            fp32 = _measure(device=dev, precision="fp32", channels_last=False, **settings)
            fp32["mfu"] = fp32["achieved_flops_per_s"] / peak if peak else None
            result["fp32"] = fp32
            result["speedup_vs_fp32"] = main_run["images_per_s"] / fp32["images_per_s"]
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    return result


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _print_run(label: str, r: dict) -> None:
    mem = "GPU max allocated, reset before timing" if r["peak_mem_kind"].startswith("cuda") else \
        "CPU: process peak RSS since start, not reset"
    mfu = "n/a (peak unknown)" if r["mfu"] is None else f"{r['mfu']:.1%}"
    print(f"  {label}: {r['precision']}, channels_last {'on' if r['channels_last'] else 'off'}")
    print(f"    images/s (whole step)     : {r['images_per_s']:12.1f}")
    print(f"    ms per step               : {r['ms_per_step']:12.2f}")
    print(f"    peak memory               : {_fmt_bytes(r['peak_mem_bytes']):>12s} ({mem})")
    print(f"    FLOPs per step            : {r['flops_per_step'] / 1e9:12.2f} GFLOP")
    print(f"    achieved                  : {r['achieved_flops_per_s'] / 1e12:12.3f} TFLOP/s")
    print(f"    MFU                       : {mfu:>12s}")


def report(r: dict) -> None:
    print(f"device {r['device']} ({r['device_name']}), torch {r['torch']}; {r['arch']} width {r['width']} "
          f"(out dim {r['out_dim']}), batch {r['batch']} at {r['size']}px, {r['steps']} timed steps "
          f"after {r['warmup']} warm-up")
    print("  step = victim forward (eval, no_grad) + stolen forward/backward (MSE) + SGD step")
    if r["peak_flops_per_s"] is None:
        print("  peak unknown: MFU n/a (give --peak-tflops to set the dense bf16 peak)")
    else:
        print(f"  dense bf16 peak: {r['peak_flops_per_s'] / 1e12:.1f} TFLOP/s")
    _print_run("main run", r)
    if "fp32" in r:
        tf32 = " (cuDNN may use TF32 for fp32 convolutions)" if r.get("cudnn_fp32_conv_tf32") else ""
        _print_run("fp32 run" + tf32, r["fp32"])
        print(f"  {r['precision']}/fp32 images/s ratio (same run): {r['speedup_vs_fp32']:.2f}x")


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--width", type=int, default=64, help="ResNet base width (64 = standard)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="auto: on for CUDA, off for CPU")
    p.add_argument("--compare", action="store_true",
                   help="also run fp32 without channels_last and print the images/s ratio")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device in TFLOP/s (overrides the table)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = p.parse_args(argv)
    setup_threads()
    result = run_bench(batch=args.batch, size=args.size, arch=args.arch, width=args.width, steps=args.steps,
                       warmup=args.warmup, device=args.device, precision=args.precision,
                       channels_last=args.channels_last, compare=args.compare, peak_tflops=args.peak_tflops,
                       lr=args.lr, seed=args.seed)
    report(result)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    run_cli(main)
