"""Benchmark: the cost of solving HashCash puzzles (defenses.pow) at each difficulty.

For each number of leading zero bits k, solves fresh puzzles (challenges drawn from a
seeded generator, so a run is reproducible) and prints a markdown table of the expected
hashes 2^k, the mean hashes measured, the mean solve time +- its standard deviation and the
measured hash rate (at k = 0 the solver hashes nothing, so its "hash rate" is just call
overhead). Then predicts, from the hash rate pooled over all puzzles, the mean
solve time at k = 22, 24 and 28. Single-threaded solver: a Python loop over hashlib's SHA-256 (C).
Usage: python bench/pow_bench.py [--bits 0,4,8,12,14,16,18,20] [--puzzles 20] [--seed 0] [--out pow.jsonl]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defenses.pow import expected_hashes, new_puzzle, solve, verify  # noqa: E402

PREDICT_BITS = (22, 24, 28)


def puzzles_for(bits: int, n: int, min_puzzles: int, cheap_bits: int) -> int:
    """Puzzles to solve at ``bits``: ``n`` up to ``cheap_bits``, then halved per extra bit, never below
    ``min_puzzles``."""
    if bits <= cheap_bits:
        return n
    return max(min(n, min_puzzles), n >> (bits - cheap_bits))


def run_bits(bits: int, n: int, rng: random.Random) -> dict:
    hashes, times = [], []
    for _ in range(n):
        puzzle = new_puzzle(bits, challenge=rng.randbytes(32))
        t0 = time.perf_counter()
        nonce, tried = solve(puzzle)
        times.append(time.perf_counter() - t0)
        if not verify(puzzle, nonce):
            raise SystemExit(f"solver returned a nonce that does not verify at {bits} bits")
        hashes.append(tried)
    total_s = sum(times)
    return {"expected_hashes": expected_hashes(bits), "hashes_mean": statistics.fmean(hashes),
            "solve_s_mean": statistics.fmean(times), "solve_s_std": statistics.stdev(times) if n > 1 else 0.0,
            "hashes_per_s": sum(hashes) / total_s if total_s > 0 else float("nan"),
            "hashes_total": sum(hashes), "solve_s_total": total_s}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", default="0,4,8,12,14,16,18,20",
                   help="comma-separated difficulties k (leading zero bits) to measure")
    p.add_argument("--puzzles", type=int, default=20,
                   help="puzzles solved per k (above --cheap-bits halved per extra bit, see --min-puzzles)")
    p.add_argument("--min-puzzles", type=int, default=3,
                   help="fewest puzzles solved at any k (the expensive ones)")
    p.add_argument("--cheap-bits", type=int, default=20,
                   help="largest k that gets all --puzzles puzzles")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator that draws the challenges")
    p.add_argument("--out", default=None, help="optional path to append one JSON line per k")
    args = p.parse_args(argv)
    try:
        bits_list = [int(b) for b in args.bits.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--bits must be comma-separated integers, got {args.bits!r}") from None
    if not bits_list or any(not 0 <= b <= 256 for b in bits_list):
        raise SystemExit(f"--bits must list integers in [0, 256], got {args.bits!r}")
    if args.puzzles < 1 or args.min_puzzles < 1:
        raise SystemExit("--puzzles and --min-puzzles must be >= 1")

    rng = random.Random(args.seed)
    rows = []
    print("| k | expected hashes 2^k | mean hashes measured | mean solve time (s) ± std | measured hashes/s |")
    print("|---:|---:|---:|---:|---:|")
    for bits in bits_list:
        n = puzzles_for(bits, args.puzzles, args.min_puzzles, args.cheap_bits)
        m = run_bits(bits, n, rng)
        rows.append(m)
        print(f"| {bits} | {m['expected_hashes']:.0f} | {m['hashes_mean']:.1f} (n={n}) | "
              f"{m['solve_s_mean']:.4g} ± {m['solve_s_std']:.2g} | {m['hashes_per_s']:,.0f} |", flush=True)
        if args.out:
            record = {"table": "pow", "config": {"bits": bits, "puzzles": n},
                      "metrics": {k: m[k] for k in ("expected_hashes", "hashes_mean", "solve_s_mean",
                                                    "solve_s_std", "hashes_per_s")},
                      "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # Pooled over every puzzle: dominated by the hardest k, where per-call overhead is negligible.
    total_s = sum(m["solve_s_total"] for m in rows)
    rate = sum(m["hashes_total"] for m in rows) / total_s if total_s > 0 else float("nan")
    print(f"\nmeasured hash rate (all puzzles pooled): {rate:,.0f} hashes/s (one core, a Python loop over hashlib)")
    for bits in PREDICT_BITS:
        s = expected_hashes(bits) / rate
        print(f"  predicted mean solve time at k = {bits}: {s:,.1f} s")


if __name__ == "__main__":
    main()
