"""Benchmark: a stealing epoch with the victim's answer cache vs without it, and loss costs.

Without the cache every epoch sends every query to the victim again (the reference's
behaviour, a victim forward pass per image per epoch); with it, answers are paid for once
and later epochs only train the stolen model. Prints images/s of one stealing epoch
each way (after a first epoch that fills the cache), their ratio, and the time of each
loss of ``loss.LOSSES`` on a ``batch x dim`` pair. All in one run, same data and models.
Usage: python bench/steal_bench.py [--width 8] [--size 16] [--queries 1024] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attacks.client import QueryClient  # noqa: E402
from data_aug import get_dataset, to_float  # noqa: E402
from loss import LOSSES, NEEDS  # noqa: E402
from models import build_encoder  # noqa: E402
from service.victim import EncoderBackend, VictimService  # noqa: E402
from utils import pick_device, setup_threads  # noqa: E402


def steal_epoch(victim: QueryClient, stolen, opt, inputs, batch: int, use_cache: bool, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for start in range(0, inputs.shape[0], batch):
        x = inputs[start:start + batch]
        keys = list(range(start, start + x.shape[0])) if use_cache else None
        answers = victim.query(x, keys=keys)
        loss = LOSSES["mse"](stolen(x), answers)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    return inputs.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=8, help="width of victim and stolen ResNet18")
    p.add_argument("--victim-width", type=int, default=None, help="victim width (default: --width)")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loss-batch", type=int, default=256)
    p.add_argument("--loss-dim", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs of each, alternating; the best is kept")
    args = p.parse_args()
    device = pick_device(args.device)
    setup_threads()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    inputs = to_float(get_dataset("patches", "train", image_size=args.size).images[:args.queries]).to(device)
    venc = build_encoder("resnet18", width=args.victim_width or args.width)
    runs = {}
    for use_cache in (True, False):
        victim = QueryClient(VictimService(EncoderBackend(venc, device=device)).connect("bench"))
        stolen = build_encoder("resnet18", width=args.width).to(device)
        if stolen.out_dim != victim.out_dim:
            raise SystemExit("stolen and victim widths must give the same output size")
        opt = torch.optim.Adam(stolen.parameters(), lr=1e-3)
        steal_epoch(victim, stolen, opt, inputs, args.batch, use_cache, sync)  # first epoch: pays for answers
        runs[use_cache] = (victim, stolen, opt)
    results = {True: 0.0, False: 0.0}
    for _ in range(args.repeats):  # alternate the two, keep each one's best epoch: fair under a varying load
        for use_cache, (victim, stolen, opt) in runs.items():
            rate = steal_epoch(victim, stolen, opt, inputs, args.batch, use_cache, sync)
            results[use_cache] = max(results[use_cache], rate)
    print(f"device {device}; {args.queries} queries at {args.size}px, ResNet18 width {args.width}, batch {args.batch}")
    print(f"  stealing epoch with answer cache    : {results[True]:9.0f} images/s")
    print(f"  stealing epoch re-querying (ref.)   : {results[False]:9.0f} images/s")
    print(f"  speed-up from the cache             : {results[True] / results[False]:9.2f}x")

    g = torch.Generator().manual_seed(0)
    n, d = args.loss_batch, args.loss_dim
    stolen_out = torch.randn(n, d, generator=g).to(device).requires_grad_(True)
    victim_out = torch.randn(n, d, generator=g).to(device)
    labels = torch.randint(0, 10, (n // 2,), generator=g).to(device)
    print(f"  loss forward+backward on {n} x {d} (ms):")
    for name, fn in LOSSES.items():
        kwargs = {"labels": labels} if "labels" in NEEDS.get(name, ()) else {}
        for _ in range(2):  # warm-up
            fn(stolen_out, victim_out, **kwargs).backward()
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            fn(stolen_out, victim_out, **kwargs).backward()
        sync()
        print(f"    {name:12s} {(time.perf_counter() - t0) / 10 * 1000:8.2f}")


if __name__ == "__main__":
    main()
