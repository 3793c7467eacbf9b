"""Training-free measurements of the serving-side defenses: similar-query detection's false
positives and negatives by threshold (Tables 13-15) and what calibrated proof of work costs three
customers (the PoW table). What each measures: ``evaluation/defenses.py`` (shown by ``--help``).

  python measure_defenses.py detection --victim-checkpoint CKPT --results results/table13_cpu.jsonl
  python measure_defenses.py pow --victim-checkpoint CKPT --results results/pow_cpu.jsonl
"""
from __future__ import annotations

import argparse
import time

from attacks.encoder import query_pool, view_augment
from defenses.detect import default_threshold
from engine.presets import scale_of
from evaluation import defenses as measurements
from evaluation.defenses import ATTACKER_VIEWS, GRIDS, detection_rates, pow_costs
from service.victim import EncoderBackend, load_victim
from utils import (
    HelpFormatter,
    append_jsonl,
    apply_numeric_rules,
    check_writable,
    parse_tags,
    run_cli,
    setup_threads,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=measurements.__doc__, formatter_class=HelpFormatter)
    p.add_argument("what", choices=["detection", "pow"], help="which measurement")
    p.add_argument("--victim-checkpoint", required=True, help="the victim (the service side)")
    p.add_argument("-data", "--data", dest="data", default=None, help="root of the real datasets")
    p.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="threshold grid and attacker augmentation (auto: cpu for offline victims)")
    p.add_argument("--n", type=int, default=500, help="detection: distinct images per draw")
    p.add_argument("--draws", type=int, default=5, help="detection: random draws (mean and std over them)")
    p.add_argument("--queries", type=int, default=1000, help="pow: queries per customer")
    p.add_argument("--batch", type=int, default=64, help="pow: images per request")
    p.add_argument("--pow-bits-min", type=int, nargs="+", default=[0], help="pow: minimum bits per query (swept)")
    p.add_argument("--pow-bits-max", type=int, nargs="+", default=[8, 12, 16], help="pow: maximum bits (swept)")
    p.add_argument("--seed", type=int, default=0, help="draws and augmentations")
    p.add_argument("--results", required=True, help="append one JSON record per row to this file")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra record fields")
    p.add_argument("--device", default="cpu", help="device of the victim's forward passes")
    return apply_numeric_rules(p)


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    tags = parse_tags(args.tag)
    check_writable(args.results, what="the results file", fix="pass a writable --results PATH")
    setup_threads()
    victim = load_victim(args.victim_checkpoint)
    scale = scale_of(victim.dataset, args.scale)
    backend = EncoderBackend(victim.encoder, victim.head, device=args.device)
    pool, _ = query_pool(victim.dataset, victim.image_size, data=args.data)
    augment = view_augment(ATTACKER_VIEWS[scale], victim.image_size)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.what == "detection":
        grid = {k: v for k, v in GRIDS[scale].items() if k[1] == "rep" or "head" in backend.out_dims}
        rows = detection_rates(backend, pool.images, grid=grid, augment=augment, n=min(args.n, len(pool)),
                               draws=args.draws, seed=args.seed)
        print("| metric | on | threshold | false positive % | false negative % |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['metric']} | {r['on']} | {r['threshold']:g} | {r['fp_mean']:.1f} ± {r['fp_std']:.1f} "
                  f"| {r['fn_mean']:.1f} ± {r['fn_std']:.1f} |")
    else:
        on = "head" if "head" in backend.out_dims else "rep"
        threshold = default_threshold(scale, "cosine", on)
        rows = []
        for lo in args.pow_bits_min:
            for hi in args.pow_bits_max:
                rows += pow_costs(backend, pool.images, augment=augment, queries=min(args.queries, len(pool)),
                                  batch=args.batch, bits_min=lo, bits_max=hi, threshold=threshold, on=on,
                                  seed=args.seed)
        print("| bits min-max | customer | deviation score | puzzles | expected hashes | solve s | × legitimate |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['bits_min']}-{r['bits_max']} | {r['role']} | {r['deviation_score']:.2f} | {r['puzzles']} "
                  f"| {r['expected_hashes']:.3g} | {r['solve_seconds']:.2f} | {r['cost_ratio_vs_legitimate']:.1f} |")
    for r in rows:
        append_jsonl(args.results, {**tags, "what": args.what, "scale": scale, "seed": args.seed,
                                    "victim_checkpoint": args.victim_checkpoint, "metrics": r, "time": stamp})
    return rows


if __name__ == "__main__":
    run_cli(main)
