"""The linear-evaluation commands' library: ``linear_eval.py`` and ``linear_eval_sup.py`` (the
shared flags, :func:`build_eval_parser`, and :func:`evaluate`: which checkpoints, which probe,
which downstream split, the records written and the table printed), and the helpers that
``linear_finetune_simclr.py`` and ``linsimsiam.py`` share with them. The probes themselves are
:mod:`evaluation.probe`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from attacks.encoder import STEAL_DEFAULTS
from data_aug import dataset_info, get_dataset, split_holdout
from engine.presets import DEFAULT_DATASET, preset_for, scale_of, steal_run_dir, victim_run_dir
from evaluation.probe import (
    PROBES,
    REFERENCE_LR,
    REFERENCE_NUM_LABELED,
    REFERENCE_TEST_BATCH,
    REFERENCE_VICTIM_LR,
    REFERENCE_WD,
    fit_downstream,
    save_probe,
)
from loss import canonical_loss
from models import ARCHS, build_encoder, load_encoder
from models.checkpoint import encoder_kwargs
from models.probe import Probe
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_reference_args,
    append_jsonl,
    atomic_write_text,
    check_writable,
    parse_tags,
    pick_device,
    read_jsonl,
    read_run_config,
    redacted,
    seed_everything,
    setup_threads,
    str2bool,
)


def resolve_probe(probe: str, dataset_test: str, scale: Optional[str], augment: bool = False) -> str:
    """``--probe auto``: reference at paper scale, lbfgs at cpu scale (``utils.scale_of`` of the
    downstream dataset); ``--augment`` is its own probe."""
    if augment:
        if probe != "auto":
            raise UserError(f"--augment is a probe of its own; drop --probe {probe} or --augment")
        return "augment"
    if probe != "auto":
        return probe
    return "reference" if scale_of(dataset_test, scale) == "paper" else "lbfgs"


def resolve_eval_set(eval_set: str, dataset_test: str) -> str:
    """``--eval-set auto``: the whole test split for stl10 (the reference's 8k), the held-out
    end of the test split otherwise (the reference's last 1,000)."""
    if eval_set != "auto":
        return eval_set
    return "test" if dataset_test == "stl10" else "holdout"


def load_downstream(dataset_test: str, *, root=None, image_size: Optional[int] = None, eval_set: str = "auto",
                    holdout: Optional[int] = None):
    """``(train set, test set, resolved eval set)`` of the downstream task."""
    info = dataset_info(dataset_test)
    eval_set = resolve_eval_set(eval_set, dataset_test)
    train_set = get_dataset(dataset_test, info.train_split, root=root, image_size=image_size)
    test_set = get_dataset(dataset_test, info.test_split, root=root, image_size=image_size)
    if eval_set == "holdout":
        test_set = split_holdout(test_set, holdout)[1]
    return train_set, test_set, eval_set


def reference_test_batch(eval_set: str, batch_size: int) -> int:
    """The reference tests the last 1,000 images in batches of 64 and the full STL10 split in
    batches of 2B (this matters for ``--probe-bn train``, where BatchNorm uses batch statistics)."""
    return 2 * batch_size if eval_set == "test" else REFERENCE_TEST_BATCH


def add_probe_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The probe flags shared by linear_eval*.py and linear_finetune_simclr.py."""
    g = p.add_argument_group("the probe")
    g.add_argument("--probe", default="auto", choices=["auto", *PROBES],
                   help="reference = the reference's probe (a linear layer trained with Adam through the frozen "
                        "encoder, unshuffled, --probe-epochs epochs, --probe-bn BatchNorm); lbfgs = logistic "
                        "regression on standardised fixed features with a tuned L2 penalty; auto = reference at "
                        "paper scale, lbfgs at cpu scale (see --scale)")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="picks --probe auto: auto = cpu for the offline downstream datasets, paper otherwise")
    g.add_argument("--probe-epochs", dest="probe_epochs", type=int, default=100,
                   help="epochs of the reference probe (the reference always trains 100)")
    g.add_argument("--probe-bn", dest="probe_bn", default="train", choices=["train", "eval"],
                   help="BatchNorm of the frozen encoder in the reference probe: train = the reference's quirk "
                        "(batch statistics when training and testing the probe; runs on a copy, so the "
                        "checkpoint's encoder is unchanged), eval = running statistics")
    g.add_argument("--probe-wd", dest="probe_wd", type=float, default=REFERENCE_WD,
                   help="Adam weight decay of the reference probe")
    g.add_argument("--probe-lr", dest="probe_lr", type=float, default=None,
                   help="Adam learning rate of the reference probe for every encoder (default: the reference's "
                        f"rule, {REFERENCE_VICTIM_LR:g} for the victim and --lr for anything else)")
    g.add_argument("-n", "--num-labeled", dest="num_labeled", type=int, default=None,
                   help=f"training images of the downstream task: the reference probe stops each epoch once "
                        f"batches x B >= n (default {REFERENCE_NUM_LABELED}, the reference's, which capped SVHN at "
                        f"its first 50,176 images); lbfgs uses the first n images (default: all)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=256,
                   help="training batch B of the reference probe (tested in batches of 64 on the held-out "
                        "1,000, of 2B on a whole test split, as the reference); feature batch of lbfgs")
    return g


def build_eval_parser(supervised: bool = False, description: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of linear_eval.py (``supervised=False``) or linear_eval_sup.py: every flag of
    the reference's script parses; the supervised one lacks --watermark/--entropy/--victimhead
    as the reference's does, and its default victim is simclrsup.py's run."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.set_defaults(victim_kind="supervised" if supervised else "victim")
    _add_eval_target_args(p, supervised)
    _add_eval_probe_args(p)
    _add_checkpoint_search_args(p, supervised)
    _add_eval_output_args(p)
    refs = ["folder_name", "epochstrain", "sigma_unused", "mu_unused"]
    if not supervised:
        refs += ["entropy", "victimhead_unused"]
    add_reference_args(p, *refs)
    add_common_args(p)
    return p


def _add_eval_target_args(p: argparse.ArgumentParser, supervised: bool) -> None:
    """linear_eval*.py's ungrouped flags: what to evaluate, on which downstream images."""
    victim = "supervised victim (simclrsup.py's run)" if supervised else "victim (run.py's run)"
    p.add_argument("--checkpoint", default=None,
                   help="encoder checkpoint to evaluate (e.g. <logdir>/checkpoint.pt); default: found from the "
                        "reference's flags below (--modeltype victim: the " + victim + "; stolen: steal.py's "
                        "or, with --head True, stealhead.py's run)")
    p.add_argument("--modeltype", nargs="+", default=["stolen"], choices=["victim", "stolen", "random", "pixels"],
                   help="what to evaluate: the stolen copy or the victim (as the reference), the same "
                        "architecture at random initialisation, or raw pixels; several give a table. The "
                        "victim's reference probe uses lr " + f"{REFERENCE_VICTIM_LR:g}, anything else --lr")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    p.add_argument("--dataset-test", dest="dataset_test", default=None,
                   help="downstream dataset (default: the checkpoint's training dataset, else --dataset)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resolution fed to the encoder (default: the checkpoint's training resolution)")
    p.add_argument("--eval-set", default="auto", choices=["auto", "holdout", "test"],
                   help="what the probe is tested on: holdout = the last images of the test split (1,000, 200 "
                        "for digits/digitsm; the reference's rule for cifar10/svhn, and the images steal.py never "
                        "queries), test = the whole test split (the reference's rule for stl10); auto = test for "
                        "stl10, holdout otherwise")
    p.add_argument("--holdout", type=int, default=None, help="size of the holdout (default: the dataset's)")


def _add_eval_probe_args(p: argparse.ArgumentParser) -> None:
    """The group "the probe": :func:`add_probe_args` plus linear_eval*.py's --lr, --augment, --epochs."""
    g = add_probe_args(p)
    g.add_argument("--lr", type=float, default=None,
                   help=f"reference probe: Adam lr for a stolen (or random/pixels) encoder (default "
                        f"{REFERENCE_LR:g}, the reference's; the victim always gets {REFERENCE_VICTIM_LR:g} "
                        f"unless --probe-lr); with --augment: its Adam lr (default 1e-3)")
    g.add_argument("--augment", action="store_true",
                   help="a third probe: the linear layer trained with Adam through augmented images (crops) for "
                        "--epochs, on standardised features; the backbone stays frozen")
    g.add_argument("--epochs", type=int, default=100,
                   help="probe epochs with --augment only. In the reference --epochs is the stealing epochs, used "
                        "only in the checkpoint path (here runs are found without it); the reference probe's "
                        "epochs are --probe-epochs")


def _add_checkpoint_search_args(p: argparse.ArgumentParser, supervised: bool) -> None:
    """The reference's flags that find the checkpoint without --checkpoint (:func:`default_checkpoint`)."""
    g = p.add_argument_group("finding the checkpoint without --checkpoint (the reference's flags)")
    g.add_argument("--dataset", default=None, help="the victim's dataset (default mnistm5k)")
    g.add_argument("--datasetsteal", default=None, help="the stolen copy's query dataset (default: --dataset)")
    g.add_argument("--losstype", default="infonce", type=canonical_loss, help="the stolen copy's loss")
    g.add_argument("--num_queries", type=int, default=None,
                   help="the stolen copy's query count (default as steal.py's, by scale: cpu 500, paper 9000)")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="the encoder's architecture: checked against the checkpoint (a mismatch is an error), "
                        "names a plain state dict's architecture, and is the random baseline's architecture "
                        "without --checkpoint (default: the checkpoint's; by scale without one)")
    g.add_argument("--head", type=str2bool, default=False,
                   help="True: the stolen copy is stealhead.py's run (runs/stealhead_<loss>_<queries>_<dataset>"
                        "_s<seed>) instead of steal.py's")
    g.add_argument("--defence", type=str2bool, default=False,
                   help="True: the stolen copy was stolen from a defended victim; there is no default path for "
                        "it here, so pass that run's --checkpoint (with --checkpoint the flag has no effect)")
    if not supervised:
        g.add_argument("--watermark", type=str2bool, default=False,
                       help="True: the victim is the reference's WATERMARK variant; there is no default path for "
                            "it here, so pass its --checkpoint (with --checkpoint the flag has no effect)")


def _add_eval_output_args(p: argparse.ArgumentParser) -> None:
    """The group "output": the printed label, the results file and the saved probes."""
    g = p.add_argument_group("output")
    g.add_argument("--label", default=None, help="name of this encoder in the printed table and results")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in each result record (repeatable), e.g. --tag table=table2")
    g.add_argument("--summarize", metavar="RESULTS", default=None,
                   help="only print a table of the evaluations recorded in this results file")
    g.add_argument("--results", default=None,
                   help="JSON-lines file to append one record per evaluation to "
                        "(default: <checkpoint dir>/linear_eval.jsonl)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="True: start the results file afresh with this run's records instead of appending (the "
                        "reference's linear_eval.py deleted its log by default)")
    g.add_argument("--save", type=str2bool, default=False,
                   help="True: also write each fitted probe to <checkpoint dir>/probe_<modeltype>_<dataset-test>.pt "
                        "(next to --results for pixels): a small torch file that loads with weights_only=True "
                        "and that linear_finetune_simclr.py --victim-probe/--stolen-probe reads")


def default_checkpoint(args, modeltype: str) -> Path:
    """Where run.py / simclrsup.py / steal.py / stealhead.py put a checkpoint by default, from the
    reference-style flags; the reference's DEFENCE and WATERMARK variants have no default here."""
    dataset = args.dataset or DEFAULT_DATASET
    dataset_info(dataset)  # a clear error for an unknown name
    if modeltype == "stolen":
        if args.num_queries is None:  # steal.py's default by scale (cpu 500, paper 9000)
            args.num_queries = STEAL_DEFAULTS[scale_of(dataset, getattr(args, "scale", None))]["*"]["num_queries"]
        if args.defence:
            raise UserError("--defence True names a copy stolen from a defended victim, which has no default run "
                            "directory here; pass that run's checkpoint with --checkpoint PATH")
        if args.head:
            run_dir = steal_run_dir(args.losstype, args.num_queries, dataset, args.seed, kind="stealhead")
            return run_dir / "checkpoint.pt"
        query_dataset = getattr(args, "datasetsteal", None) or dataset
        return steal_run_dir(args.losstype, args.num_queries, query_dataset, args.seed) / "checkpoint.pt"
    if getattr(args, "watermark", False):
        raise UserError("--watermark True names the reference's watermarked victim, which has no default run "
                        "directory here; pass its checkpoint with --checkpoint PATH")
    kind = getattr(args, "victim_kind", "victim")
    return victim_run_dir(dataset, args.seed, arch=args.arch, kind=kind) / "checkpoint.pt"


def print_table(records: list[dict]) -> None:
    print("\n| encoder | dataset | probe | top-1 % | top-5 % |\n|---|---|---|---|---|")
    for r in records:
        kind = (r.get("probe") or {}).get("kind") or ("augment" if r["metrics"].get("augment") else "lbfgs")
        print(f"| {r.get('label') or r['modeltype']} | {r['dataset_test']} | {kind} | {r['metrics']['top1']:.1f} "
              f"| {r['metrics']['top5']:.1f} |")


def _random_encoder(args, checkpoint_encoder, dataset_test: str, scale: Optional[str]):
    """The random baseline: the checkpoint's architecture, or ``--arch`` and the scale preset."""
    if checkpoint_encoder is not None:
        kwargs = encoder_kwargs(checkpoint_encoder)
    else:
        preset = preset_for(dataset_test, scale)
        info = dataset_info(dataset_test)
        size = args.image_size or preset["image_size"]
        kwargs = {"arch": args.arch or preset["arch"], "width": preset["width"],
                  "stem": "imagenet" if size >= 128 else "cifar", "mean": info.mean, "std": info.std}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return build_encoder(**kwargs)


def _write_record(path: Path, record: dict, replace: bool) -> None:
    if replace:
        atomic_write_text(path, json.dumps(record, default=str) + "\n")
    else:
        append_jsonl(path, record)


def evaluate(args: argparse.Namespace) -> list[dict]:
    """linear_eval.py / linear_eval_sup.py: probe each ``--modeltype`` and record the results."""
    if args.summarize:
        return _summarize(Path(args.summarize))
    tags = parse_tags(args.tag)
    device = pick_device(args.device, args.gpu_index)
    setup_threads()
    seed_everything(args.seed)
    paths = _checkpoint_paths(args)
    loaded = _load_checkpoints(paths, args.arch)
    dataset_test = _dataset_test(args, loaded)
    kind = resolve_probe(args.probe, dataset_test, args.scale, args.augment)
    num_labeled = args.num_labeled
    if num_labeled is None and kind == "reference":
        num_labeled = REFERENCE_NUM_LABELED
    results_path = _results_path(args, loaded)
    _check_outputs(args, paths, results_path, dataset_test)
    datasets: dict[int, tuple] = {}
    records = []
    for modeltype in args.modeltype:
        path = paths[modeltype]
        encoder, config, _ = loaded[path] if path else (None, {}, {})
        model = _model_to_probe(args, modeltype, encoder, dataset_test)
        size = int(args.image_size or config.get("image_size") or preset_for(dataset_test, args.scale)["image_size"])
        if size not in datasets:
            datasets[size] = load_downstream(dataset_test, root=args.data, image_size=size, eval_set=args.eval_set,
                                             holdout=args.holdout)
        train_set, test_set, _ = datasets[size]
        probe_kind = "lbfgs" if kind == "augment" and model is None else kind
        metrics, probe, how = _fit_eval_probe(args, probe_kind, modeltype, model, datasets[size], device=device,
                                              num_labeled=num_labeled)
        how["scale"] = scale_of(dataset_test, args.scale)
        label = args.label if args.label and len(args.modeltype) == 1 else None
        record = {**tags, "modeltype": modeltype, "label": label, "dataset_test": dataset_test, "checkpoint": path,
                  "victim_checkpoint": config.get("victim_checkpoint"), "image_size": train_set.image_size,
                  "eval_set": f"{test_set.split} ({len(test_set)} images)", "seed": args.seed, "probe": how,
                  "model_config": model_config(modeltype, path, config),
                  "probe_config": probe_config(args), "metrics": metrics,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if args.save:
            record["probe_file"] = str(_save_eval_probe(probe, record, results_path))
        _write_record(results_path, record, replace=bool(args.clear) and not records)
        records.append(record)
        _print_result(label or modeltype, dataset_test, probe_kind, metrics, how,
                      record["probe_file"] if args.save else None)
    if len(records) > 1:
        print_table(records)
    print(f"results {'written' if args.clear else 'appended'} to {results_path}")
    return records


def model_config(modeltype: str, path: Optional[str], fallback: Optional[dict] = None) -> Optional[dict]:
    """What the evaluated model is, for its record: the training config of the run that wrote its checkpoint
    (:func:`utils.read_run_config`); a random or raw-pixel baseline trains nothing, so it names only the
    checkpoint whose architecture (or images) it borrows."""
    if modeltype in ("random", "pixels"):
        return {"init": modeltype, "architecture_from": path}
    return read_run_config(path, fallback) if path else None


def probe_config(args: argparse.Namespace | dict) -> dict:
    """The probe's own flags for its record (redacted; the record's tags are stored as fields already)."""
    config = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return redacted({k: v for k, v in config.items() if k != "tag"})


def _summarize(path: Path) -> list[dict]:
    """``--summarize``: print the table of the records already in ``path`` and return them."""
    if not path.is_file():
        raise UserError(f"results file {path} does not exist")
    records = read_jsonl(path)
    print_table(records)
    return records


def _checkpoint_paths(args: argparse.Namespace) -> dict[str, Optional[str]]:
    """The checkpoint each ``--modeltype`` reads (``None``: pixels, or random without --checkpoint)."""
    paths: dict[str, Optional[str]] = {}
    for modeltype in args.modeltype:
        if modeltype == "pixels":
            paths[modeltype] = None
        elif args.checkpoint:
            paths[modeltype] = args.checkpoint
        elif modeltype == "random":
            paths[modeltype] = None  # --arch and the scale preset
        else:
            path = default_checkpoint(args, modeltype)
            if not path.is_file():
                raise UserError(f"no {modeltype} checkpoint at {path} (derived from --dataset/--datasetsteal/"
                                f"--losstype/--num_queries/--head/--seed); pass --checkpoint PATH")
            paths[modeltype] = str(path)
    return paths


def _load_checkpoints(paths: dict[str, Optional[str]], arch: Optional[str]) -> dict[str, tuple]:
    """``{path: (encoder, its training config, checkpoint)}``, each file loaded once, in order."""
    loaded: dict[str, tuple] = {}
    for path in dict.fromkeys(p for p in paths.values() if p):
        with torch.random.fork_rng(devices=[]):
            encoder, _, ckpt = load_encoder(path, arch=arch)
        loaded[path] = (encoder, ckpt.get("config", {}) or {}, ckpt)
    return loaded


def _dataset_test(args: argparse.Namespace, loaded: dict[str, tuple]) -> str:
    """The downstream dataset: --dataset-test, else the first checkpoint's, else --dataset; it must be labelled."""
    first = next(iter(loaded.values()), (None, {}, {}))
    dataset_test = args.dataset_test or first[1].get("dataset") or args.dataset
    if dataset_test is None:
        raise UserError("name the downstream dataset with --dataset-test")
    if not dataset_info(dataset_test).num_classes:
        raise UserError(f"{dataset_test} has no labels; pick a labelled --dataset-test")
    return dataset_test


def _results_path(args: argparse.Namespace, loaded: dict[str, tuple]) -> Path:
    """--results, else linear_eval.jsonl beside the first checkpoint (in the working directory without one)."""
    if args.results:
        return Path(args.results)
    return Path(next(iter(loaded))).parent / "linear_eval.jsonl" if loaded else Path("linear_eval.jsonl")


def _model_to_probe(args: argparse.Namespace, modeltype: str, encoder: Optional[nn.Module],
                    dataset_test: str) -> Optional[nn.Module]:
    """The encoder a ``modeltype`` probes: the checkpoint's, a seeded random one, or ``None`` (pixels)."""
    if modeltype == "random":
        return _random_encoder(args, encoder, dataset_test, args.scale)
    return encoder if modeltype in ("victim", "stolen") else None


def _fit_eval_probe(args: argparse.Namespace, probe_kind: str, modeltype: str, model: Optional[nn.Module],
                    sets: tuple, *, device: torch.device, num_labeled: Optional[int]) -> tuple[dict, Probe, dict]:
    """:func:`fit_downstream` with linear_eval*.py's flags; ``sets`` is :func:`load_downstream`'s triple.
    The reference probe's lr follows the reference: --probe-lr, else 3e-4 for the victim, --lr otherwise."""
    train_set, test_set, eval_set = sets
    if probe_kind == "reference":
        lr = args.probe_lr or (REFERENCE_VICTIM_LR if modeltype == "victim" else (args.lr or REFERENCE_LR))
    else:
        lr = args.lr
    return fit_downstream(
        probe_kind, model, train_set, test_set, device=device, seed=args.seed, workers=args.workers, lr=lr,
        weight_decay=args.probe_wd, epochs=args.epochs if probe_kind == "augment" else args.probe_epochs,
        batch_size=args.batch_size, num_labeled=num_labeled, bn=args.probe_bn,
        test_batch_size=reference_test_batch(eval_set, args.batch_size))


def _probe_path(checkpoint: Optional[str], modeltype: str, dataset_test: str, results_path: Path) -> Path:
    """Where ``--save True`` writes a probe: beside its checkpoint (beside the results without one)."""
    where = Path(checkpoint).parent if checkpoint else results_path.parent
    return where / f"probe_{modeltype}_{dataset_test}.pt"


def _check_outputs(args: argparse.Namespace, paths: dict[str, Optional[str]], results_path: Path,
                   dataset_test: str) -> None:
    """Before any feature or probe is computed: the results file and, with ``--save True``, every probe
    file can be written (one sentence if not, so no evaluation is lost at its end)."""
    check_writable(results_path, what="the results file", fix="pass a writable --results PATH")
    if args.save:
        for modeltype, checkpoint in paths.items():
            check_writable(_probe_path(checkpoint, modeltype, dataset_test, results_path), what="the probe file",
                           fix="make its folder writable, or drop --save True")


def _save_eval_probe(probe: Probe, record: dict, results_path: Path) -> Path:
    """``--save True``: write the probe of ``record`` beside its checkpoint (beside the results without one)."""
    path, modeltype, dataset_test = record["checkpoint"], record["modeltype"], record["dataset_test"]
    probe_path = _probe_path(path, modeltype, dataset_test, results_path)
    metrics = record["metrics"]
    # a random encoder is not saved: its probe names no checkpoint to reuse it with
    return save_probe(probe_path, probe, probe=record["probe"], modeltype=modeltype, dataset_test=dataset_test,
                      checkpoint=path if modeltype in ("victim", "stolen") else None,
                      image_size=record["image_size"], eval_set=record["eval_set"], seed=record["seed"],
                      metrics={"top1": metrics["top1"], "top5": metrics["top5"], "n_test": metrics["n_test"]})


def _print_result(name: str, dataset_test: str, probe_kind: str, metrics: dict, how: dict,
                  probe_file: Optional[str]) -> None:
    """The one line linear_eval*.py prints per evaluation (``probe_file``: where --save wrote the probe)."""
    detail = f"L2 {metrics['l2']:g}" if "l2" in metrics else (
        f"lr {how['lr']:g}, {how['epochs']} epochs" + (f", BN {how['bn']}" if probe_kind == "reference" else ""))
    print(f"{name:>8s} on {dataset_test}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
          f"({probe_kind} probe, {detail}; features {metrics['feature_dim']}-d, {metrics['seconds']:.1f}s)"
          + (f"; probe saved to {probe_file}" if probe_file is not None else ""), flush=True)
