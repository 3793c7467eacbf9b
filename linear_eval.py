"""Linear evaluation of a frozen encoder on a downstream dataset.

The encoder is frozen three ways (parameters without grad, eval mode so BatchNorm uses
its running statistics, forward passes under no_grad) and checked unchanged afterwards.
Features are computed once; a multinomial logistic regression is trained on them.

The probe is made fair between encoders: features are standardised (train-split mean and
std per dimension) so that the scale of a representation does not decide the result,
and the L2 penalty is picked from a small grid on a held-out fifth of the training split
before the final fit on the whole split. Without this a randomly initialised encoder can
look far worse than it is (on digitsm, a random width-16 ResNet18 scored 12% with
unscaled features and 53% with standardised ones).

Examples:
  python linear_eval.py --checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt
  python linear_eval.py --checkpoint CKPT --modeltype victim random pixels   # a comparison table
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from data_aug import dataset_info, get_dataset, split_holdout
from models import build_encoder, load_encoder
from probe import augmented_probe, linear_probe
from utils import (HelpFormatter, UserError, add_common_args, append_jsonl, parse_tags, pick_device, read_jsonl,
                   run_cli, seed_everything, setup_threads)


def default_checkpoint(args, modeltype: str) -> Path:
    """Where run.py / steal.py put a checkpoint by default, from the reference-style flags."""
    from utils import DEFAULT_DATASET, steal_run_dir, victim_run_dir

    dataset = args.dataset or DEFAULT_DATASET
    dataset_info(dataset)  # a clear error for an unknown name
    if modeltype == "stolen":
        return steal_run_dir(args.losstype, args.num_queries, args.datasetsteal or dataset, args.seed) / "checkpoint.pt"
    return victim_run_dir(dataset, args.seed) / "checkpoint.pt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="encoder checkpoint (e.g. a victim's <logdir>/checkpoint.pt); the random "
                        "baseline takes its architecture from it")
    p.add_argument("--modeltype", nargs="+", default=["victim"], choices=["victim", "stolen", "random", "pixels"],
                   help="what to evaluate: the checkpoint's encoder (victim or stolen), the same "
                        "architecture at random initialisation, or raw pixels; several give a table")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g = p.add_argument_group("finding the checkpoint without --checkpoint (the reference's flags)")
    g.add_argument("--dataset", default=None, help="the victim's dataset (default mnistm5k)")
    g.add_argument("--datasetsteal", default=None, help="the stolen copy's query dataset (default: --dataset)")
    g.add_argument("--losstype", default="infonce", help="the stolen copy's loss")
    g.add_argument("--num_queries", type=int, default=500, help="the stolen copy's query count")
    p.add_argument("--augment", action="store_true",
                   help="train the linear layer through augmented images (crops) for --epochs instead "
                        "of once on fixed features; the backbone stays frozen")
    p.add_argument("--epochs", type=int, default=100, help="probe epochs with --augment")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the probe with --augment")
    p.add_argument("--dataset-test", dest="dataset_test", default=None,
                   help="downstream dataset (default: the checkpoint's training dataset)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resolution fed to the encoder (default: the checkpoint's training resolution)")
    p.add_argument("--eval-set", default="holdout", choices=["holdout", "test"],
                   help="what the probe is tested on: holdout = the last images of the test split (1,000 "
                        "(200 for digits/digitsm); the reference's rule, and the images "
                        "steal.py never queries), test = the whole test split")
    p.add_argument("--holdout", type=int, default=None, help="size of the holdout (default: the dataset's)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=512,
                   help="batch size for feature extraction")
    p.add_argument("--label", default=None, help="name of this encoder in the printed table and results")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in each result record (repeatable), e.g. --tag table=table2")
    p.add_argument("--summarize", metavar="RESULTS", default=None,
                   help="only print a table of the evaluations recorded in this results file")
    p.add_argument("--results", default=None,
                   help="JSON-lines file to append one record per evaluation to "
                        "(default: <checkpoint dir>/linear_eval.jsonl)")
    add_common_args(p)
    return p


def print_table(records: list[dict]) -> None:
    print("\n| encoder | dataset | top-1 % | top-5 % |\n|---|---|---|---|")
    for r in records:
        print(f"| {r.get('label') or r['modeltype']} | {r['dataset_test']} | {r['metrics']['top1']:.1f} "
              f"| {r['metrics']['top5']:.1f} |")


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.summarize:
        path = Path(args.summarize)
        if not path.is_file():
            raise UserError(f"results file {path} does not exist")
        records = read_jsonl(path)
        print_table(records)
        return records
    tags = parse_tags(args.tag)
    device = pick_device(args.device, args.gpu_index)
    setup_threads()
    seed_everything(args.seed)
    encoder, ckpt_config = None, {}
    if not args.checkpoint and any(m in ("victim", "stolen") for m in args.modeltype):
        args.checkpoint = str(default_checkpoint(args, "stolen" if "stolen" in args.modeltype else "victim"))
        if not Path(args.checkpoint).is_file():
            raise UserError(f"no checkpoint at {args.checkpoint} (derived from --dataset/--datasetsteal/"
                            f"--losstype/--num_queries/--seed); pass --checkpoint PATH")
    if args.checkpoint:
        encoder, _, ckpt = load_encoder(args.checkpoint)
        ckpt_config = ckpt.get("config", {}) or {}
    elif any(m in ("victim", "stolen", "random") for m in args.modeltype):
        raise UserError("--modeltype victim/stolen/random needs --checkpoint PATH (the encoder, or the "
                        "architecture for the random baseline)")
    dataset_test = args.dataset_test or ckpt_config.get("dataset")
    if dataset_test is None:
        raise UserError("name the downstream dataset with --dataset-test")
    image_size = args.image_size or ckpt_config.get("image_size")
    info = dataset_info(dataset_test)
    train_set = get_dataset(dataset_test, info.train_split, root=args.data, image_size=image_size)
    test_set = get_dataset(dataset_test, info.test_split, root=args.data, image_size=image_size)
    if args.eval_set == "holdout":
        test_set = split_holdout(test_set, args.holdout)[1]
    results_path = Path(args.results) if args.results else (
        Path(args.checkpoint).parent / "linear_eval.jsonl" if args.checkpoint else Path("linear_eval.jsonl"))
    records = []
    for modeltype in args.modeltype:
        if modeltype in ("victim", "stolen"):
            model = encoder
        elif modeltype == "random":
            torch.manual_seed(args.seed)
            from models.checkpoint import encoder_kwargs

            model = build_encoder(**encoder_kwargs(encoder))
        else:
            model = None
        if args.augment and model is not None:
            metrics = augmented_probe(model, train_set, test_set, device=device, seed=args.seed, epochs=args.epochs,
                                      lr=args.lr, batch_size=min(args.batch_size, 256))
        else:
            metrics = linear_probe(model, train_set, test_set, device=device, seed=args.seed,
                                   batch_size=args.batch_size, workers=args.workers)
        label = args.label if args.label and len(args.modeltype) == 1 else None
        record = {**tags, "modeltype": modeltype, "label": label, "dataset_test": dataset_test, "checkpoint": args.checkpoint,
                  "image_size": train_set.image_size,
                  "eval_set": f"{test_set.split} ({len(test_set)} images)", "seed": args.seed, "metrics": metrics,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_jsonl(results_path, record)
        records.append(record)
        print(f"{label or modeltype:>8s} on {dataset_test}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
              f"(features {metrics['feature_dim']}-d, L2 {metrics['l2']:g}, {metrics['seconds']:.1f}s)", flush=True)
    if len(records) > 1:
        print_table(records)
    print(f"results appended to {results_path}")
    return records


if __name__ == "__main__":
    run_cli(main)
