"""Ownership verification: is a suspect encoder a copy of my (watermarked) victim?

Runs the owner's tests on one suspect (library: ``defenses.ownership``, ``defenses.watermark``,
``defenses.inference``; docs/ownership.md):

  wsr             watermark success rate: the victim's augmentation predictor on the suspect's
                  representations of the victim's training images rotated as in training
                  (an unrelated encoder scores about 50%)
  retrained       WSR of a predictor retrained on the suspect's own representations
  ttest           Table 4: suspect vs an independently trained encoder, per-view correctness of
                  the owner's predictor, one-sided t-test (delta mu, t, p), the victim as control
  l2              Table 18: distance to the victim's representations vs the independent encoder's
  noise_ball      Table 19: spread of representations in a noise ball around training images
  private_public  Table 20: distances to augmentations of private training vs public test images

Every test prints its statistics and a verdict (stolen / not stolen / inconclusive at --alpha);
with --results the record is appended as one JSON line (scripts/tables.py and report.py use it).

Examples:
  python run.py --dataset mnistm5k --watermark True           # the watermarked victim
  python watermark.py                                         # the reference's check: an unrelated
                                                              # (plain) victim scores about 50%
  python watermark.py --suspect runs/steal_mse_500_mnistm5k_s0/checkpoint.pt \\
      --independent runs/victim_mnistm5k_resnet18_w8_s1/checkpoint.pt --tests wsr retrained ttest l2
  python watermark.py --victim-checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt \\
      --suspect victim --tests private_public                 # dataset inference needs no watermark
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from defenses.ownership import INFERENCE_TESTS, SETTINGS, TESTS, private_public_images, random_like, verify
from engine.presets import scale_of, victim_run_dir
from models import load_encoder
from service.victim import load_victim
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    append_jsonl,
    apply_numeric_rules,
    check_writable,
    parse_tags,
    pick_device,
    run_cli,
    seed_everything,
    setup_threads,
)

SPECIAL = ("victim", "random")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--victim-checkpoint", default=None,
                   help="the owner's victim (default: run.py --watermark True's run for --dataset and --seed, "
                        "runs/victimwm_<dataset>_<arch>_w<width>_s<seed>/checkpoint.pt)")
    p.add_argument("--dataset", default=None,
                   help="the victim's dataset (default: read from its checkpoint; mnistm5k for the default path)")
    p.add_argument("-data", "--data", dest="data", default=None, help="root of the real datasets")
    p.add_argument("--suspect", default=None,
                   help="the suspect encoder's checkpoint, or 'victim' (the victim itself: a positive control) "
                        "or 'random' (the victim's architecture at a random initialisation); default: run.py's "
                        "plain victim for --dataset and --seed, the reference's false-positive check")
    p.add_argument("--independent", default=None,
                   help="an independently trained encoder's checkpoint (same data, another seed, no theft): "
                        "the baseline of ttest and l2")
    p.add_argument("--tests", nargs="+", default=["wsr"], choices=TESTS, metavar="TEST",
                   help=f"which tests: {', '.join(TESTS)} (default wsr)")
    p.add_argument("--n", type=int, default=None,
                   help="private (training) images used, and public test images for private_public (by scale: "
                        f"cpu {SETTINGS['cpu']['n']}, paper {SETTINGS['paper']['n']})")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of every verdict")
    p.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="noise-ball and augmentation settings, and --n (auto: cpu for offline victims)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=256, help="images per forward pass")
    p.add_argument("--label", default=None, help="the suspect's row name in the record (default: its path)")
    p.add_argument("--results", default=None, help="append the record as one JSON line to this file")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra record fields")
    add_common_args(p)
    return apply_numeric_rules(p)


def _encoder(path: str, what: str) -> torch.nn.Module:
    if not Path(path).is_file():
        raise UserError(f"the {what} checkpoint {path} does not exist; check the path")
    with torch.random.fork_rng(devices=[]):
        encoder, _, _ = load_encoder(path)
    return encoder


def _summary(label: str, out: dict) -> list[str]:
    lines = [f"suspect {label}:"]
    if "wsr" in out:
        w = out["wsr"]
        lines.append("  WSR (owner's predictor): " + ", ".join(
            f"{k[4:]} {v:.1f}%" for k, v in w.items() if k.startswith("wsr_")) + f" ({w['n_views']} rotated views)")
    if "retrained" in out:
        lines.append("  WSR (retrained predictor): " + ", ".join(
            f"{k[4:]} {v:.1f}%" for k, v in out["retrained"].items()))
    for test in ("ttest",) + INFERENCE_TESTS:
        if test in out:
            r = out[test]
            shown = {k: v for k, v in r.items() if k not in ("test", "verdict", "reason", "alpha")}
            lines.append(f"  {test}: {r['verdict'].upper()} — {r['reason']}")
            lines.append("    " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in shown.items()))
    return lines


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must lie strictly between 0 and 1, got {args.alpha}")
    if args.results:
        check_writable(args.results, what="the results file", fix="pass a writable --results PATH")
    device = pick_device(args.device, args.gpu_index)
    setup_threads()
    seed_everything(args.seed)
    dataset = args.dataset or ("mnistm5k" if args.victim_checkpoint is None else None)
    vpath = args.victim_checkpoint or str(victim_run_dir(dataset, args.seed, kind="victimwm") / "checkpoint.pt")
    if args.victim_checkpoint is None and not Path(vpath).is_file():
        raise UserError(f"no watermarked victim at {vpath}; train one with `python run.py --dataset {dataset} "
                        f"--seed {args.seed} --watermark True` or pass --victim-checkpoint PATH")
    victim = load_victim(vpath, dataset=dataset)
    scale = scale_of(victim.dataset, args.scale)
    n = args.n or SETTINGS[scale]["n"]
    suspect_arg = args.suspect or str(victim_run_dir(victim.dataset, args.seed) / "checkpoint.pt")
    if suspect_arg == "victim":
        suspect = victim.encoder
    elif suspect_arg == "random":
        suspect = random_like(victim.encoder, args.seed + 1)
    else:
        suspect = _encoder(suspect_arg, "suspect")
    independent = _encoder(args.independent, "independent") if args.independent else None
    supervised = victim.checkpoint.get("kind") == "supervised"
    private, public = private_public_images(victim.dataset, victim.image_size, n=n, data=args.data,
                                            supervised=supervised, with_public="private_public" in args.tests)
    out = verify(victim_encoder=victim.encoder, victim_checkpoint=victim.checkpoint, victim_path=victim.path,
                 suspect=suspect, independent=independent, random_model=random_like(victim.encoder, args.seed),
                 private=private, public=public, tests=tuple(args.tests), scale=scale, alpha=args.alpha,
                 seed=args.seed, device=device, batch_size=args.batch_size)
    label = args.label or suspect_arg
    print("\n".join(_summary(label, out)))
    record = {**parse_tags(args.tag), "what": "ownership", "row": label, "seed": args.seed, "scale": scale,
              "victim_checkpoint": str(victim.path), "suspect": suspect_arg, "independent": args.independent,
              "n_private": int(private.shape[0]), "metrics": out, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.results:
        append_jsonl(args.results, json.loads(json.dumps(record)))
        print(f"record appended to {args.results}")
    return record


if __name__ == "__main__":
    run_cli(main)
