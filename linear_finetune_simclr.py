"""Fidelity of a downstream classifier built on a stolen encoder: the reference's
linear_finetune_simclr.py, every flag of which parses.

A linear classifier on the stolen encoder and one on the victim encoder are trained on the
downstream task (or read from probes saved by `linear_eval.py --save True`); the script
reports each one's test accuracy and the fidelity, the % of test images where their argmax
agrees. Despite its name the reference trains only the linear layer; that is the default
here too (--finetune False). --finetune True then fine-tunes the stolen encoder together
with its linear layer (Adam --lr for --epochs, BatchNorm in train mode, tested in eval
mode) and reports that model's accuracy and fidelity as well.

The probes are those of linear_eval.py (--probe; auto = reference at paper scale, lbfgs at
cpu scale); the victim's reference probe uses lr 3e-4 and the stolen one --lr, as there.
Writes results.json and config.yaml into --logdir (default runs/finetune_<dataset-test>_s<seed>)
and prints a table.

Examples:
  python linear_finetune_simclr.py --victim-checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt \\
      --checkpoint runs/steal_mse_500_mnistm5k_s0/checkpoint.pt
  python linear_finetune_simclr.py --victim-probe VICTIM_DIR/probe_victim_cifar10.pt \\
      --stolen-probe STOLEN_DIR/probe_stolen_cifar10.pt      # probes saved by linear_eval.py --save True
  python linear_finetune_simclr.py --checkpoint CKPT --finetune True --epochs 20 --lr 1e-4
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from data_aug import dataset_info
from engine.presets import DEFAULT_DATASET, run_dir, scale_of, victim_run_dir
from evaluation.cli import add_probe_args, default_checkpoint, load_downstream, reference_test_batch, resolve_probe
from evaluation.probe import (
    REFERENCE_LR,
    REFERENCE_NUM_LABELED,
    REFERENCE_VICTIM_LR,
    finetune,
    fit_downstream,
    load_probe,
    probe_logits,
    save_probe,
    snapshot,
)
from loss import canonical_loss
from models import ARCHS, load_encoder, save_checkpoint
from models.probe import fidelity
from utils import (
    HelpFormatter,
    UserError,
    accuracy,
    add_common_args,
    add_reference_args,
    atomic_write_text,
    pick_device,
    prepare_run_dir,
    run_cli,
    seed_everything,
    setup_threads,
    str2bool,
    write_config,
)

FINETUNE_EPOCHS = {"cpu": 20, "paper": 100}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("the two encoders")
    g.add_argument("--victim-checkpoint", default=None,
                   help="the victim's checkpoint (default: the one --victim-probe names, else run.py's run "
                        "directory for --dataset and --seed)")
    g.add_argument("--checkpoint", default=None,
                   help="the stolen encoder's checkpoint (default: the one --stolen-probe names, else steal.py's "
                        "run directory for --losstype/--num_queries/--dataset/--seed, stealhead.py's with --head True)")
    g.add_argument("--victim-probe", default=None, metavar="PATH",
                   help="use this probe (written by linear_eval.py --save True) for the victim instead of training one")
    g.add_argument("--stolen-probe", default=None, metavar="PATH",
                   help="use this probe (written by linear_eval.py --save True) for the stolen encoder instead of "
                        "training one")
    g = p.add_argument_group("downstream task")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--dataset-test", dest="dataset_test", default=None,
                   help="downstream dataset (default: the saved probe's, else the victim's training dataset)")
    g.add_argument("--image-size", type=int, default=None,
                   help="resolution fed to both encoders (default: the victim's training resolution)")
    g.add_argument("--eval-set", default="auto", choices=["auto", "holdout", "test"],
                   help="test images: holdout = the last images of the test split, test = all of it; auto = test "
                        "for stl10, holdout otherwise (the reference's rule)")
    g.add_argument("--holdout", type=int, default=None, help="size of the holdout (default: the dataset's)")
    g = add_probe_args(p)
    g.add_argument("--lr", type=float, default=None,
                   help=f"Adam lr of the stolen encoder's reference probe and of --finetune (default "
                        f"{REFERENCE_LR:g}, the reference's); the victim's reference probe uses "
                        f"{REFERENCE_VICTIM_LR:g} unless --probe-lr")
    g.add_argument("--finetune", type=str2bool, default=False,
                   help="True: also fine-tune the stolen encoder with its linear layer on the downstream task and "
                        "report that model too; False: linear layers only (the reference)")
    g.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs with --finetune True (by scale: cpu 20, paper 100). In the reference "
                        "--epochs is the stealing epochs, used only in the checkpoint path")

    g = p.add_argument_group("finding the stolen checkpoint without --checkpoint (the reference's flags)")
    g.add_argument("--dataset", default=None, help="the victim's dataset (default mnistm5k)")
    g.add_argument("--losstype", default="infonce", type=canonical_loss, help="the stolen copy's loss")
    g.add_argument("--num_queries", type=int, default=500, help="the stolen copy's query count")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="the stolen encoder's architecture: checked against its checkpoint, or names a plain "
                        "state dict's architecture (default: the checkpoint's)")
    g.add_argument("--head", type=str2bool, default=False,
                   help="True: the stolen copy is stealhead.py's run instead of steal.py's")
    g.add_argument("--defence", type=str2bool, default=False,
                   help="True: the copy was stolen from a defended victim; pass that run's --checkpoint (with "
                        "--checkpoint the flag has no effect)")
    g.add_argument("--modeltype", default="stolen", choices=["victim", "stolen"],
                   help="no effect: the reference's script parses it and never reads it")

    g = p.add_argument_group("output")
    g.add_argument("--logdir", default=None,
                   help="run directory for results.json and config.yaml (default: "
                        "runs/finetune_<dataset-test>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace the results of an earlier run in --logdir")
    g.add_argument("--save", type=str2bool, default=False,
                   help="True: also write the probes trained here (victim_probe.pt, stolen_probe.pt) and, with "
                        "--finetune True, the fine-tuned encoder (finetuned.pt) and its probe into --logdir")
    add_reference_args(p, "folder_name", "epochstrain", "sigma_unused", "mu_unused")
    add_common_args(p)
    return p


def _check_probe(probe, info: dict, path: str, encoder, dataset_test: str, num_classes: int) -> None:
    if info.get("dataset_test") not in (None, dataset_test):
        raise UserError(f"the probe {path} was trained on {info['dataset_test']}, not on {dataset_test}; pass "
                        f"--dataset-test {info['dataset_test']} or a probe of {dataset_test}")
    dim = getattr(encoder, "out_dim", None)
    if probe.num_classes != num_classes or (dim is not None and probe.feature_dim != dim):
        raise UserError(f"the probe {path} maps {probe.feature_dim}-d features to {probe.num_classes} classes, but the "
                        f"encoder gives {dim}-d features and {dataset_test} has {num_classes} classes; pass the probe "
                        f"saved for this encoder")


def _row(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> dict:
    top1, top5 = accuracy(logits, labels, topk=(1, 5))
    return {"top1": top1, "top5": top5, "fidelity": fidelity(logits, reference)}


@dataclass(frozen=True)
class _Task:
    """The downstream task both encoders are probed on."""

    dataset: str  # --dataset-test
    num_classes: int
    train_set: Any  # the probes' (and the fine-tuning's) training images
    test_set: Any  # the N images that accuracy and fidelity are measured on
    eval_set: str  # which images test_set is: "holdout" or "test"


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    device = pick_device(args.device, args.gpu_index)
    setup_threads()
    seed_everything(args.seed)

    loaded = {role: (*load_probe(path), path)
              for role, path in (("victim", args.victim_probe), ("stolen", args.stolen_probe)) if path}
    victim_path, stolen_path = _checkpoint_paths(args, loaded)
    with torch.random.fork_rng(devices=[]):
        victim, _, vckpt = load_encoder(victim_path)
        stolen, _, sckpt = load_encoder(stolen_path, arch=args.arch)
    vconfig = vckpt.get("config") or {}
    task = _downstream_task(args, loaded, vconfig)
    scale = scale_of(task.dataset, args.scale)
    kind = resolve_probe(args.probe, task.dataset, args.scale)
    num_labeled = args.num_labeled or (REFERENCE_NUM_LABELED if kind == "reference" else None)
    lr = args.lr or REFERENCE_LR
    logdir = prepare_run_dir(args.logdir or run_dir("finetune", task.dataset, seed=args.seed))
    if (logdir / "results.json").exists() and not args.clear:
        raise UserError(f"{logdir} already holds results.json; pass --clear True or another --logdir")

    fitted, logits, labels = _probe_both(args, task, {"victim": victim, "stolen": stolen}, loaded, kind=kind,
                                         num_labeled=num_labeled, lr=lr, device=device)
    rows = {role: {**_row(logits[role], labels, logits["victim"]), "checkpoint": str(path), "probe": fitted[role][1]}
            for role, path in (("victim", victim_path), ("stolen", stolen_path))}
    finetuned = None
    if args.finetune:
        epochs = args.epochs or FINETUNE_EPOCHS[scale]
        finetuned, ft_encoder, ft_probe = _finetune_stolen(args, task, stolen, fitted["stolen"][0], epochs=epochs,
                                                           lr=lr, num_labeled=num_labeled, labels=labels,
                                                           victim_logits=logits["victim"], device=device)
        rows["finetuned"] = finetuned
        if args.save:
            _save_finetuned(logdir, ft_encoder, ft_probe, task, stolen_path, test_batch_size=args.batch_size)
    if args.save:
        _save_probes(logdir, fitted, rows, [role for role in ("victim", "stolen") if role not in loaded],
                     dataset_test=task.dataset, image_size=task.train_set.image_size, seed=args.seed)

    results = {"dataset_test": task.dataset, "eval_set": f"{task.test_set.split} ({len(task.test_set)} images)",
               "n_test": len(task.test_set), "image_size": task.train_set.image_size, "probe": kind, "scale": scale,
               "seed": args.seed, "victim": rows["victim"], "stolen": rows["stolen"],
               "fidelity": rows["stolen"]["fidelity"], "finetuned": finetuned,
               "seconds": round(time.perf_counter() - t0, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_config(logdir, {**vars(args), "victim_checkpoint": str(victim_path), "checkpoint": str(stolen_path),
                          "dataset_test": task.dataset, "eval_set": task.eval_set, "probe": kind, "scale": scale,
                          "num_labeled": num_labeled, "lr": lr, "device": str(device)})
    atomic_write_text(logdir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"results written to {logdir / 'results.json'}")
    return results


def _checkpoint_paths(args: argparse.Namespace, loaded: dict) -> tuple[str, str]:
    """``(victim checkpoint, stolen checkpoint)``: the flags', else the ones the ``loaded`` probes were
    saved for, else the run directories the reference-style flags name (which must exist)."""
    victim_path = args.victim_checkpoint or (loaded["victim"][1].get("checkpoint") if "victim" in loaded else None)
    if victim_path is None:
        victim_path = str(victim_run_dir(args.dataset or DEFAULT_DATASET, args.seed) / "checkpoint.pt")
        if not Path(victim_path).is_file():
            raise UserError(f"no victim checkpoint at {victim_path}; pass --victim-checkpoint PATH")
    stolen_path = args.checkpoint or (loaded["stolen"][1].get("checkpoint") if "stolen" in loaded else None)
    if stolen_path is None:
        stolen_path = str(default_checkpoint(args, "stolen"))
        if not Path(stolen_path).is_file():
            raise UserError(f"no stolen checkpoint at {stolen_path} (derived from --dataset/--losstype/--num_queries/"
                            f"--head/--seed); pass --checkpoint PATH")
    return victim_path, stolen_path


def _downstream_task(args: argparse.Namespace, loaded: dict, vconfig: dict) -> _Task:
    """The downstream task: --dataset-test, else the ``loaded`` probes', else the victim's training
    dataset (from its config ``vconfig``), at --image-size or the victim's resolution."""
    saved_dataset = next((info.get("dataset_test") for _, info, _ in loaded.values() if info.get("dataset_test")), None)
    dataset_test = args.dataset_test or saved_dataset or vconfig.get("dataset") or args.dataset
    if dataset_test is None:
        raise UserError("name the downstream dataset with --dataset-test")
    num_classes = dataset_info(dataset_test).num_classes
    if not num_classes:
        raise UserError(f"{dataset_test} has no labels; pick a labelled --dataset-test")
    image_size = args.image_size or vconfig.get("image_size")
    train_set, test_set, eval_set = load_downstream(dataset_test, root=args.data, image_size=image_size,
                                                    eval_set=args.eval_set, holdout=args.holdout)
    return _Task(dataset_test, num_classes, train_set, test_set, eval_set)


def _probe_both(args: argparse.Namespace, task: _Task, encoders: dict, loaded: dict, *, kind: str,
                num_labeled: Optional[int], lr: float, device: torch.device) -> tuple[dict, dict, torch.Tensor]:
    """A linear probe on each of ``encoders`` ({role: encoder}, victim first): the one ``loaded`` for
    that role, else one of ``kind`` trained here. Returns ``({role: (probe, how it was made)},
    {role: [N, num_classes] test logits}, the [N] test labels)``."""
    fitted, logits = {}, {}
    for role, encoder in encoders.items():
        if role in loaded:
            probe, info, path = loaded[role]
            _check_probe(probe, info, path, encoder, task.dataset, task.num_classes)
            how = dict(info.get("probe") or {}, file=str(path))
        else:
            role_lr = args.probe_lr or (REFERENCE_VICTIM_LR if role == "victim" else lr)
            _, probe, how = fit_downstream(kind, encoder, task.train_set, task.test_set, device=device, seed=args.seed,
                                           workers=args.workers, lr=role_lr, weight_decay=args.probe_wd,
                                           epochs=args.probe_epochs, batch_size=args.batch_size,
                                           num_labeled=num_labeled, bn=args.probe_bn,
                                           test_batch_size=reference_test_batch(task.eval_set, args.batch_size))
        fitted[role] = (probe, how)
        logits[role], labels = probe_logits(encoder, probe, task.test_set, device=device, bn=how.get("bn", "eval"),
                                            batch_size=int(how.get("test_batch_size", args.batch_size)),
                                            workers=args.workers)
    return fitted, logits, labels


def _finetune_stolen(args: argparse.Namespace, task: _Task, stolen, probe, *, epochs: int, lr: float,
                     num_labeled: Optional[int], labels: torch.Tensor, victim_logits: torch.Tensor,
                     device: torch.device) -> tuple[dict, Any, Any]:
    """Fine-tune the stolen encoder with its linear ``probe`` on the task (``stolen`` itself is left
    as it is). Returns ``(results row, fine-tuned encoder, fine-tuned probe)``; the row's accuracy and
    fidelity are on the [N] test ``labels`` and the victim's [N, num_classes] ``victim_logits``."""
    before = snapshot(stolen)
    ft_encoder, ft_probe = finetune(stolen, probe, task.train_set, device=device, lr=lr, epochs=epochs,
                                    batch_size=args.batch_size, weight_decay=args.probe_wd, seed=args.seed,
                                    num_labeled=num_labeled, workers=args.workers)
    ft_logits, _ = probe_logits(ft_encoder, ft_probe, task.test_set, device=device, bn="eval",
                                batch_size=args.batch_size, workers=args.workers)
    change = max(float((v.float() - before[k].float()).abs().max()) if v.numel() else 0.0
                 for k, v in ft_encoder.state_dict().items() if v.is_floating_point())
    row = {**_row(ft_logits, labels, victim_logits), "epochs": epochs, "lr": lr, "weight_decay": args.probe_wd,
           "bn": "train (tested in eval mode)", "max_weight_change": change}
    return row, ft_encoder, ft_probe


def _save_finetuned(logdir: Path, encoder, probe, task: _Task, stolen_path: str, *, test_batch_size: int) -> None:
    """Write the fine-tuned encoder (finetuned.pt) and its probe (finetuned_probe.pt) into ``logdir``."""
    save_checkpoint(logdir / "finetuned.pt", encoder=encoder, kind="finetuned", dataset=task.dataset,
                    config={"dataset": task.dataset, "image_size": task.train_set.image_size,
                            "source_checkpoint": str(stolen_path)})
    save_probe(logdir / "finetuned_probe.pt", probe, checkpoint=str(logdir / "finetuned.pt"),
               dataset_test=task.dataset, image_size=task.train_set.image_size, modeltype="finetuned",
               probe={"kind": "finetuned", "bn": "eval", "test_batch_size": test_batch_size})


def _save_probes(logdir: Path, fitted: dict, rows: dict, roles: list[str], *, dataset_test: str, image_size: int,
                 seed: int) -> None:
    """Write the probes trained here for ``roles`` (``<role>_probe.pt``, as linear_eval.py --save True
    writes them) into ``logdir``, each with its test accuracy."""
    for role in roles:
        save_probe(logdir / f"{role}_probe.pt", fitted[role][0], probe=fitted[role][1], modeltype=role,
                   checkpoint=rows[role]["checkpoint"], dataset_test=dataset_test, image_size=image_size, seed=seed,
                   metrics={"top1": rows[role]["top1"], "top5": rows[role]["top5"]})


def print_table(results: dict) -> None:
    print(f"\n{results['dataset_test']}, {results['eval_set']}, {results['probe']} probes"
          f"\n| model | top-1 % | top-5 % | fidelity to the victim % |\n|---|---|---|---|")
    names = {"victim": "victim", "stolen": "stolen", "finetuned": "stolen, fine-tuned"}
    for key, name in names.items():
        row: Optional[dict] = results.get(key)
        if row:
            print(f"| {name} | {row['top1']:.2f} | {row['top5']:.2f} | {row['fidelity']:.2f} |")


if __name__ == "__main__":
    run_cli(main)
