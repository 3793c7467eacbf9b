"""Benchmark: cost of the similar-query detection search (defenses.similarity).

For each answer dimension D and history size N, stores N random answers in an
``AnswerHistory`` and times ``nearest_earlier`` for one batch of B new answers (median of
--repeats runs after one warm-up). Prints a markdown table (ms per batch, µs per query,
history memory, bytes per stored query) and, per D and metric, the least-squares slope
of time against N (ms per 1e5 stored queries): the search is brute force, so time grows
linearly with the history (B x N x D multiply-adds per batch).
Usage: python bench/detect_bench.py [--dims 128 512] [--sizes 1000 10000 100000 500000]
       [--batch 256] [--metrics cosine l2] [--out results/detect.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from defenses.similarity import METRICS, AnswerHistory, nearest_earlier  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def time_search(batch, history, metric: str, chunk: int, repeats: int, sync) -> float:
    """Median seconds of one nearest_earlier call (after one warm-up call)."""
    nearest_earlier(batch, history, metric, chunk=chunk)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        nearest_earlier(batch, history, metric, chunk=chunk)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512], help="answer dimensions D to time")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 500000],
                   help="history sizes N (stored answers) to time")
    p.add_argument("--batch", type=int, default=256, help="new answers per searched batch (B)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS, help="similarity metrics to time")
    p.add_argument("--chunk", type=int, default=8192, help="history rows per matrix product")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage dtype of the history")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (the median is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="device of the batch and the history (cpu, cuda)")
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per cell to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)

    print(f"device {device}, {torch.get_num_threads()} threads, batch B={args.batch}, chunk {args.chunk}, "
          f"history dtype {args.dtype}, median of {args.repeats}")
    print()
    print("| metric | D | N | ms per batch | µs per query | history memory (MB) | bytes per stored query |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    records = []
    for d in args.dims:
        batch = torch.randn(args.batch, d, generator=g).to(device)
        history = AnswerHistory(d, dtype=DTYPES[args.dtype], device=device, capacity=max(args.sizes))
        for n in sorted(args.sizes):
            while len(history) < n:  # grow the same history to each size
                step = min(65536, n - len(history))
                history.append(torch.randn(step, d, generator=g))
            for metric in args.metrics:
                secs = time_search(batch, history.view(), metric, args.chunk, args.repeats, sync)
                metrics = {"ms_per_batch": secs * 1e3, "us_per_query": secs * 1e6 / args.batch,
                           "history_mb": history.nbytes / 1e6, "bytes_per_query": history.bytes_per_query}
                records.append((metric, d, n, metrics))
                print(f"| {metric} | {d} | {n} | {metrics['ms_per_batch']:.2f} | {metrics['us_per_query']:.2f} | "
                      f"{metrics['history_mb']:.1f} | {metrics['bytes_per_query']} |", flush=True)
                if args.out is not None:
                    config = {"metric": metric, "dim": d, "history": n, "batch": args.batch, "chunk": args.chunk,
                              "dtype": args.dtype, "threads": torch.get_num_threads(), "device": str(device)}
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"table": "detect_search", "config": config, "metrics": metrics,
                                            "time": time.time()}) + "\n")
        del history
    print()
    for metric in args.metrics:
        for d in args.dims:
            rows = [(n, m["ms_per_batch"]) for mt, dd, n, m in records if mt == metric and dd == d]
            slope = fit_slope([n for n, _ in rows], [ms for _, ms in rows]) * 1e5
            print(f"{metric}, D={d}: {slope:.1f} ms per batch per 1e5 stored queries (least-squares slope)")


if __name__ == "__main__":
    main()
