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
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tqdm import tqdm

from data_aug import DATASETS, SimCLRAugment, dataset_info, get_dataset, iterate_batches, split_holdout, to_float
from models import build_encoder, load_encoder
from utils import (HelpFormatter, UserError, accuracy, add_common_args, append_jsonl, pick_device, read_jsonl,
                   run_cli, seed_everything, setup_threads)

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def extract_features(encoder: Optional[nn.Module], dataset, *, device: torch.device,
                     batch_size: int = 512, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations ``N x D`` (float32, CPU) and labels of a whole dataset.

    ``encoder=None`` returns the raw pixels in [0, 1], flattened (the pixel baseline).
    """
    feats, labels = [], []
    for images, y, _ in iterate_batches(dataset, batch_size, device=device, workers=workers):
        x = to_float(images)
        out = x.flatten(1) if encoder is None else encoder(x)
        feats.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    """Full-batch L-BFGS on cross-entropy + ``l2 * ||W||^2`` (deterministic)."""
    linear = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return linear


class Probe(nn.Module):
    """A fitted linear probe: standardise the features (train statistics), then a linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1).clone())
        self.register_buffer("std", std.reshape(1, -1).clone())
        self.linear = linear

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, *, num_classes: int,
                l2_grid: Sequence[float] = DEFAULT_L2_GRID, max_iter: int = 300, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[Probe, float, dict]:
    """Standardise, choose the L2 penalty on a held-out fifth of train, refit on all of it.

    Returns ``(probe, chosen l2, validation top-1 by l2)``.
    """
    device = torch.device(device)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xtr, ytr = ((train_x - mean) / std).to(device), train_y.to(device)
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed)).to(device)
    n_val = max(1, len(ytr) // 5)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    scores = {}
    for l2 in l2_grid:
        lin = _fit_logreg(xtr[fit_idx], ytr[fit_idx], num_classes, l2, max_iter)
        with torch.no_grad():
            scores[l2] = accuracy(lin(xtr[val_idx]), ytr[val_idx])[0]
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    probe = Probe(mean.to(device), std.to(device), _fit_logreg(xtr, ytr, num_classes, best, max_iter))
    return probe.eval().requires_grad_(False), best, {str(k): v for k, v in scores.items()}


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
              num_classes: int, l2_grid: Sequence[float] = DEFAULT_L2_GRID, max_iter: int = 300,
              seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Train a probe (:func:`train_probe`) and evaluate it on the test features.

    Returns ``{"top1", "top5", "train_top1", "l2", "val_top1_by_l2"}`` (accuracies in %).
    """
    probe, best, scores = train_probe(train_x, train_y, num_classes=num_classes, l2_grid=l2_grid,
                                      max_iter=max_iter, seed=seed, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(probe(test_x.to(probe.mean.device)), test_y.to(probe.mean.device), topk=(1, 5))
        train_top1 = accuracy(probe(train_x.to(probe.mean.device)), train_y.to(probe.mean.device))[0]
    return {"top1": top1, "top5": top5, "train_top1": train_top1, "l2": best, "val_top1_by_l2": scores}


def freeze(encoder: nn.Module) -> dict:
    """Freeze an encoder (no grad, eval mode) and return a copy of its state for the check."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return snapshot(encoder)


def snapshot(encoder: nn.Module) -> dict:
    """A copy of every parameter and buffer, for :func:`assert_unchanged`."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def assert_unchanged(encoder: nn.Module, before: dict) -> None:
    """Every parameter and buffer (BatchNorm statistics included) is as before the probe."""
    for k, v in encoder.state_dict().items():
        if not torch.equal(v, before[k]):
            raise AssertionError(f"the frozen encoder changed during linear evaluation: {k}")


def linear_probe(encoder: Optional[nn.Module], train_set, test_set, *, device: torch.device,
                 seed: int = 0, batch_size: int = 512, workers: int = 0, **probe_kwargs) -> dict:
    """Linear evaluation of a frozen ``encoder`` (``None``: raw pixels); a metrics dict."""
    t0 = time.perf_counter()
    before = None
    if encoder is not None:
        encoder = encoder.to(device)
        before = freeze(encoder)
    num_classes = train_set.num_classes
    if not num_classes:
        raise UserError(f"{train_set.name} has no labels; pick a labelled --dataset-test")
    xtr, ytr = extract_features(encoder, train_set, device=device, batch_size=batch_size, workers=workers)
    xte, yte = extract_features(encoder, test_set, device=device, batch_size=batch_size, workers=workers)
    metrics = fit_probe(xtr, ytr, xte, yte, num_classes=num_classes, seed=seed, device=device, **probe_kwargs)
    if encoder is not None:
        assert_unchanged(encoder, before)
    metrics.update(feature_dim=int(xtr.shape[1]), n_train=len(ytr), n_test=len(yte),
                   seconds=round(time.perf_counter() - t0, 2))
    return metrics


def augmented_probe(encoder: nn.Module, train_set, test_set, *, device: torch.device, seed: int = 0,
                    epochs: int = 100, lr: float = 1e-3, batch_size: int = 256,
                    freeze_backbone: bool = True) -> dict:
    """A linear probe trained through augmented images (random crops of at least 80% of the
    area, and flips for the real datasets) on a frozen encoder, with Adam and cross-entropy.

    The features are standardised with the statistics of the un-augmented training set.
    ``freeze_backbone=False`` exists to show that the unchanged-backbone check fires.
    """
    t0 = time.perf_counter()
    encoder = encoder.to(device)
    if freeze_backbone:
        before = freeze(encoder)
    else:
        before = snapshot(encoder)
        encoder.train()
    xtr, _ = extract_features(encoder, train_set, device=device)
    mean, std = xtr.mean(0, keepdim=True).to(device), xtr.std(0, keepdim=True).clamp_min(1e-6).to(device)
    probe = Probe(mean, std, nn.Linear(xtr.shape[1], train_set.num_classes)).to(device)
    params = list(probe.linear.parameters()) + ([] if freeze_backbone else list(encoder.parameters()))
    optimizer = torch.optim.Adam(params, lr=lr)
    flip = 0.0 if DATASETS[train_set.name].offline else 0.5
    augment = SimCLRAugment(train_set.image_size, crop_scale=(0.8, 1.0), flip_p=flip, jitter_p=0.0,
                            gray_p=0.0, blur_p=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="probe", leave=False, disable=None):
        for images, labels, _ in iterate_batches(train_set, batch_size, shuffle=True, generator=gen, device=device):
            x = augment(images, gen).to(device)
            with torch.set_grad_enabled(not freeze_backbone):
                feats = encoder(x)
            loss = F.cross_entropy(probe(feats.float()), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    encoder.eval()
    xte, yte = extract_features(encoder, test_set, device=device)
    with torch.no_grad():
        top1, top5 = accuracy(probe(xte.to(device)), yte.to(device), topk=(1, 5))
    assert_unchanged(encoder, before)
    return {"top1": top1, "top5": top5, "augment": True, "epochs": epochs, "lr": lr, "feature_dim": int(xtr.shape[1]),
            "n_train": len(train_set), "n_test": len(yte), "seconds": round(time.perf_counter() - t0, 2)}


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
    tags = {}
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UserError(f"--tag {tag!r} is not KEY=VALUE")
        tags[key] = value
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
