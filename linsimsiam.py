"""Linear evaluation on the ImageNet path (paper Tables 3 and 8): the reference's linsimsiam.py,
every flag of which parses.

It probes the SimSiam victim (--pretrained), the encoder stolen from it by stealsimsiam.py
(--checkpoint, or that script's default run directory from --losstype/--num_queries/
--datasetsteal/--seed) or the same architecture at random initialisation (random; seeded by
--seed) on a downstream --dataset (cifar10, cifar100, stl10, svhn, fashionmnist alias fmnist,
imagenet under --data, or any labelled dataset of the project), at --image-size (default: the
encoder's training resolution, 224 for SimSiam). The downstream images stay at their native
size in memory and each batch is resized on the device just before the encoder (bilinear,
antialiased), so CIFAR at 224 px needs no 7.5 GB tensor.

Probes (--probe; auto = sgd at paper scale, lbfgs at cpu scale, see --scale):

* sgd: the reference's probe. A linear layer (weight ~ N(0, 0.01^2), bias 0) on the features
  of the frozen encoder in eval mode, cross-entropy, SGD with momentum --momentum and weight
  decay --wd (LARS with --lars) at --lr x --batch-size / 256, cosine per epoch, --epochs
  epochs, shuffled; top-1 and top-5 on the test set after every epoch, the last epoch's
  reported (the best is recorded too).
* lbfgs: logistic regression on standardised fixed features, its L2 penalty tuned on a fifth of
  the training split (probe.py; linear_eval.py's cpu-scale probe).
* reference: linear_eval.py's Adam probe (lr 3e-4 for the victim, 1e-4 otherwise, weight decay
  8e-4, BatchNorm in train mode, the first 50,000 training images unshuffled, --epochs epochs),
  for comparison with linear_eval.py's numbers. One process only.

Differences from the reference's linsimsiam.py:

* The encoder is frozen and in eval mode in the reference too, so an image's features never
  change: sgd and lbfgs compute them once and train the linear layer on them (one feature
  pass instead of one per epoch). The reference's train-time augmentation (RandomCrop(32,
  padding 4) and flips for CIFAR) is therefore not applied; the training images are seen as
  the test images are (resized only).
* Inputs are normalised by the encoder itself (ImageNet's statistics for SimSiam, the query
  set's for a stolen encoder of stealsimsiam.py); the reference fed unnormalised [0, 1] images.
* Resizing happens on the device from the uint8 images (bilinear, antialiased when shrinking)
  instead of PIL's Resize; ImageNet as downstream is read with the shorter side resized to
  --image-size and a centre crop (the reference: Resize 256, CenterCrop 224; and no crop
  augmentation for training, as above).
* The stolen checkpoint is stealsimsiam.py's run directory, not logs/checkpoint_*.pth.tar; a
  checkpoint of the reference's (module.backbone.* keys, with or without DataParallel's
  module. prefix) loads through --checkpoint. caltech101 is not offered (broken in the
  reference). The probe itself is not saved; each evaluation is one JSON record.
* Under torchrun the feature pass is sharded (process r takes images r, r + W, ...), the
  features are gathered on the main process, and the probe trains there alone (the other
  processes wait); --batch-size is the probe's global batch as in the reference's DDP.

Examples:
  # the reference README's command (needs runs/stealsimsiam_infonce_250000_imagenet_s0/checkpoint.pt)
  python linsimsiam.py --world-size -1 --rank 0 --batch-size 256 --lars --lr 1.0 --datasetsteal imagenet \\
      --num_queries 250000 --losstype infonce --dataset cifar10 --modeltype stolen --workers 8 --data /datasets
  # victim, stolen and random side by side (a table), the feature pass on 8 GPUs
  torchrun --nproc_per_node 8 linsimsiam.py --pretrained checkpoint_0099-batch256.pth.tar \\
      --checkpoint runs/stealsimsiam_infonce_100000_imagenet_s0/checkpoint.pt --modeltype victim stolen random \\
      --dataset cifar10 --data /datasets --lars --lr 1.0
  # CPU stand-in: a small victim at 16 px on the offline digits
  python linsimsiam.py --pretrained runs/imagenet_cpu/simsiam_victim.pth.tar --modeltype victim random \\
      --dataset digits --image-size 16
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from attacks.imagenet import STEAL_LOSSES, view
from data_aug import DATASETS
from engine.distributed import Dist, add_job_args, default_workers, launch, run_ranks
from engine.presets import preset_for, scale_of, stealsimsiam_run_dir
from evaluation.cli import (
    _random_encoder,
    load_downstream,
    model_config,
    print_table,
    probe_config,
    reference_test_batch,
)
from evaluation.probe import (
    REFERENCE_LR,
    REFERENCE_NUM_LABELED,
    REFERENCE_VICTIM_LR,
    assert_unchanged,
    fit_downstream,
    freeze,
)
from models import ARCHS, load_encoder
from models.probe import extract_features
from utils import (
    HelpFormatter,
    UserError,
    add_reference_args,
    append_jsonl,
    check_writable,
    parse_tags,
    run_cli,
    seed_everything,
    setup_threads,
)

DATASET_ALIASES = {"fmnist": "fashionmnist"}  # the reference's name
PROBE_CHOICES = ("auto", "sgd", "lbfgs", "reference")
SIMSIAM_SIZE = 224  # the published SimSiam encoder's training resolution
DEFAULT_RESULTS = Path("results") / "linsimsiam.jsonl"
GATHER_ROWS = 16384  # features gathered over processes this many rows per process at a time


def downstream_dataset(name: str) -> str:
    """``--dataset``: a labelled dataset of the project (``fmnist`` is ``fashionmnist``)."""
    name = DATASET_ALIASES.get(name, name)
    if name not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {name!r}; choose one of "
                                         f"{', '.join(n for n, d in DATASETS.items() if d.num_classes)} (or fmnist)")
    if not DATASETS[name].num_classes:
        raise argparse.ArgumentTypeError(f"{name} has no labels, so no linear probe can be trained on it")
    return name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    _add_encoder_args(p)
    _add_stolen_search_args(p)
    _add_downstream_args(p)
    _add_probe_args(p)
    _add_output_args(p)
    _add_reference_only_args(p)
    add_job_args(p)
    return p


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    """The group "what to evaluate": --modeltype and the checkpoints."""
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--modeltype", nargs="+", default=["victim"], choices=["victim", "stolen", "random"],
                   help="the victim (--pretrained), the stolen encoder (--checkpoint or stealsimsiam.py's default "
                        "run), or the stolen (else the victim's) architecture at random initialisation, seeded by "
                        "--seed; several give a table")
    g.add_argument("--pretrained", default="",
                   help="the victim's checkpoint: the published SimSiam format (checkpoint_0099-batch256.pth.tar) or "
                        "any checkpoint of this project; without it, the victim the stolen checkpoint names")
    g.add_argument("--checkpoint", default=None,
                   help="the stolen encoder's checkpoint (default: runs/stealsimsiam_<losstype>_<num_queries>_"
                        "<datasetsteal>_s<seed>/checkpoint.pt, from the flags below)")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="the encoders' architecture, checked against each checkpoint (default: the checkpoint's; "
                        "for random without any checkpoint resnet50, the reference's, at paper scale and the scale "
                        "preset's at cpu scale)")


def _add_stolen_search_args(p: argparse.ArgumentParser) -> None:
    """The reference's flags that find the stolen checkpoint without --checkpoint (:func:`default_stolen_path`)."""
    g = p.add_argument_group("finding the stolen checkpoint without --checkpoint (the reference's flags)")
    g.add_argument("--losstype", default="infonce", choices=STEAL_LOSSES, help="stealsimsiam.py's --losstype")
    g.add_argument("--num_queries", type=int, default=10000, help="stealsimsiam.py's --num_queries")
    g.add_argument("--datasetsteal", default="cifar10", choices=sorted(DATASETS), metavar="NAME",
                   help="stealsimsiam.py's --datasetsteal")


def _add_downstream_args(p: argparse.ArgumentParser) -> None:
    """The group "downstream task": the dataset, its resolution and the test images."""
    g = p.add_argument_group("downstream task")
    g.add_argument("--dataset", default="cifar10", type=downstream_dataset, metavar="NAME",
                   help="downstream dataset: cifar10, cifar100, stl10, svhn, fashionmnist (or fmnist), mnist, "
                        "imagenet (an image folder under --data), or an offline one (mnistm5k, mnist5k, digits, "
                        "digitsm)")
    g.add_argument("--data", "-data", dest="data", metavar="DIR", default=None,
                   help="root of the real datasets (see README: Data); not needed for the offline ones")
    g.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="resolution fed to the encoders; each batch of native-size images is resized on the device "
                        "(default: each encoder's training resolution, 224 for SimSiam)")
    g.add_argument("--eval-set", dest="eval_set", default="test", choices=["test", "holdout"],
                   help="test = the whole test split (the reference's val loader); holdout = its last images "
                        "(--holdout), which stealing from the test split never queries")
    g.add_argument("--holdout", type=int, default=None,
                   help="size of the holdout with --eval-set holdout (default: the dataset's, 1,000 for CIFAR)")


def _add_probe_args(p: argparse.ArgumentParser) -> None:
    """The group "the probe": its kind and the sgd probe's optimiser settings."""
    g = p.add_argument_group("the probe")
    g.add_argument("--probe", default="auto", choices=PROBE_CHOICES,
                   help="sgd = the reference's probe on features computed once; lbfgs = logistic regression on "
                        "standardised features (L2 tuned); reference = linear_eval.py's Adam probe (one process); "
                        "auto = sgd at paper scale, lbfgs at cpu scale")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="picks --probe auto: auto = cpu for the offline downstream datasets, paper otherwise")
    g.add_argument("--epochs", type=int, default=100, help="probe epochs (sgd and reference)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=256,
                   help="the probe's batch B over all processes (sgd: lr x B / 256), and each process's batch in "
                        "the feature pass")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1,
                   help="sgd: base learning rate, the rate is lr x B / 256 (the reference README used 1.0 with "
                        "--lars)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd: momentum")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.0, help="sgd: weight decay")
    g.add_argument("--lars", action="store_true",
                   help="sgd: LARS, the reference's apex LARC rule (trust 0.001, eps 1e-8; lars.py)")
    g.add_argument("-p", "--print-freq", dest="print_freq", type=int, default=10,
                   help="sgd: print the test accuracy every N epochs and after the last (the reference printed "
                        "every N batches and the accuracy after every epoch)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The group "output": the results file, the label and the tags of the records."""
    g = p.add_argument_group("output")
    g.add_argument("--results", default=None,
                   help="JSON-lines file to append one record per evaluation to (default: linsimsiam.jsonl in the "
                        "stolen checkpoint's directory when a stolen encoder is evaluated or --checkpoint is given, "
                        f"else {DEFAULT_RESULTS})")
    g.add_argument("--label", default=None, help="name of the encoder in the printed line and the record "
                                                  "(with a single --modeltype)")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in each record (repeatable), e.g. --tag table=table3")


def _add_reference_only_args(p: argparse.ArgumentParser) -> None:
    """The reference's flags that parse but have no effect here (the probe trains in one go)."""
    g = add_reference_args(p, "epochstrain_unused", "epochssteal")
    g.add_argument("--start-epoch", dest="start_epoch", type=int, default=0,
                   help="no effect: the probe trains in one go on fixed features; there is no epoch to restart from")
    g.add_argument("--resume", default="",
                   help="no effect: the probe trains in one go on fixed features; there is nothing to resume")
    g.add_argument("-e", "--evaluate", action="store_true",
                   help="no effect: the reference only validated a resumed probe with it; every run here tests")


# ------------------------------------------------------------------------------- the encoders


def default_stolen_path(config: dict) -> Path:
    """stealsimsiam.py's default checkpoint for the reference's flags."""
    run_dir = stealsimsiam_run_dir(config["losstype"], config["num_queries"], config["datasetsteal"], config["seed"])
    return run_dir / "checkpoint.pt"


def stolen_path(config: dict) -> Path:
    """--checkpoint, else stealsimsiam.py's default run; a missing default is one sentence."""
    if config["checkpoint"]:
        return Path(config["checkpoint"])
    path = default_stolen_path(config)
    if not path.is_file():
        raise UserError(f"no stolen checkpoint at {path} (stealsimsiam.py's run for --losstype {config['losstype']} "
                        f"--num_queries {config['num_queries']} --datasetsteal {config['datasetsteal']} --seed "
                        f"{config['seed']}); pass --checkpoint PATH or the flags of the run that stole it")
    return path


def training_size(ckpt: dict, encoder) -> Optional[int]:
    """The resolution an encoder was trained at: 224 for SimSiam, else its checkpoint's config."""
    if ckpt.get("kind") == "simsiam":
        return SIMSIAM_SIZE
    size = (ckpt.get("config") or {}).get("image_size")
    if size:
        return int(size)
    return SIMSIAM_SIZE if getattr(encoder, "stem", None) == "imagenet" else None


class Encoders:
    """The encoders to evaluate, each file loaded once: ``get(modeltype) -> (encoder, checkpoint
    path or None, image size, victim checkpoint or None, extra record fields)``."""

    def __init__(self, config: dict):
        self.config = config
        self.cache: dict[str, tuple] = {}
        self.scale = scale_of(config["dataset"], config["scale"])

    def load(self, path: Path) -> tuple:
        key = str(path)
        if key not in self.cache:
            with torch.random.fork_rng(devices=[]):
                encoder, _, ckpt = load_encoder(path, arch=self.config["arch"])
            self.cache[key] = (encoder, ckpt)
        return self.cache[key]

    def victim_path(self) -> Path:
        if self.config["pretrained"]:
            return Path(self.config["pretrained"])
        if self.config["checkpoint"] or "stolen" in self.config["modeltype"]:
            spath = stolen_path(self.config)
            named = (self.load(spath)[1].get("config") or {}).get("victim_checkpoint")
            if named:
                if not Path(named).is_file():
                    raise UserError(f"the stolen checkpoint {spath} names its victim {named}, which does not exist "
                                    f"here; pass the victim with --pretrained PATH")
                return Path(named)
        raise UserError("--modeltype victim needs the victim's checkpoint: pass --pretrained PATH (e.g. the published "
                        "SimSiam checkpoint_0099-batch256.pth.tar)")

    def size_of(self, encoder, ckpt: dict) -> int:
        size = self.config["image_size"] or training_size(ckpt, encoder)
        return int(size or preset_for(self.config["dataset"], self.scale)["image_size"])

    def get(self, modeltype: str) -> tuple:
        config = self.config
        if modeltype == "stolen":
            path = stolen_path(config)
            encoder, ckpt = self.load(path)
            cfg = ckpt.get("config") or {}
            extra = {k: cfg[k] for k in ("losstype", "num_queries", "datasetsteal") if k in cfg}
            if cfg.get("useval") and extra.get("datasetsteal") == "imagenet":
                extra["datasetsteal"] = "imagenetval"  # ImageNet's val/ folder: the query set the tables call so
            return encoder, str(path), self.size_of(encoder, ckpt), cfg.get("victim_checkpoint"), extra
        if modeltype == "victim":
            path = self.victim_path()
            encoder, ckpt = self.load(path)
            return encoder, str(path), self.size_of(encoder, ckpt), str(path), {}
        # random: the stolen architecture, else the victim's, else --arch and the scale preset
        source, victim_ckpt = None, None
        if config["checkpoint"] or "stolen" in config["modeltype"]:
            source = stolen_path(config)
        elif config["pretrained"] or "victim" in config["modeltype"]:
            source = victim_ckpt = self.victim_path()
        if source is not None:
            encoder, ckpt = self.load(source)
            size = self.size_of(encoder, ckpt)
            victim_ckpt = str(victim_ckpt) if victim_ckpt else (ckpt.get("config") or {}).get("victim_checkpoint")
        else:
            encoder = None
            paper = self.scale == "paper"
            size = config["image_size"] or (SIMSIAM_SIZE if paper else preset_for(config["dataset"],
                                                                                   self.scale)["image_size"])
        arch = config["arch"] or ("resnet50" if self.scale == "paper" else None)
        spec = argparse.Namespace(arch=arch, image_size=size, seed=config["seed"])
        model = _random_encoder(spec, encoder, config["dataset"], self.scale)
        return model, None if source is None else str(source), int(size), victim_ckpt, {}


# -------------------------------------------------------------------------- the feature pass


def gather_interleaved(local: torch.Tensor, n: int, dist: Dist) -> Optional[torch.Tensor]:
    """Rows ``r, r + W, r + 2W, ...`` of an ``n``-row tensor from each rank ``r``, put back in order
    on the main rank (``None`` on the others), :data:`GATHER_ROWS` rows per rank at a time."""
    world = dist.world_size
    most = -(-n // world)  # rank 0 holds the most rows, so no round is empty everywhere
    parts: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for start in range(0, most, GATHER_ROWS):
        got = dist.all_gather_rows(local[start:start + GATHER_ROWS].contiguous())
        if dist.is_main:
            for rank, rows in enumerate(got):
                parts[rank].append(rows.cpu())
    if not dist.is_main:
        return None
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for rank in range(world):
        out[rank::world] = torch.cat(parts[rank])
    return out


def sharded_features(encoder, dataset, dist: Dist, *, transform, batch_size: int, workers: int):
    """``(features, labels)`` of every image of ``dataset`` on the main rank (``(None, None)`` on
    the others): each rank extracts images ``rank, rank + W, ...``, then they are gathered."""
    n, world = len(dataset), dist.world_size
    if n < world:
        raise UserError(f"{dataset.name}/{dataset.split} has {n} images, fewer than the {world} processes")
    mine = torch.arange(dist.rank, n, world)
    x, y = extract_features(encoder, dataset, device=dist.device, batch_size=batch_size, workers=workers,
                            transform=transform, indices=mine)
    if world == 1:
        return x, y
    return gather_interleaved(x, n, dist), gather_interleaved(y, n, dist)


# ------------------------------------------------------------------------------- evaluation


def resolve_kind(config: dict) -> str:
    if config["probe"] != "auto":
        return config["probe"]
    return "sgd" if scale_of(config["dataset"], config["scale"]) == "paper" else "lbfgs"


def results_path(config: dict) -> Path:
    if config["results"]:
        return Path(config["results"])
    if config["checkpoint"] or "stolen" in config["modeltype"]:
        return stolen_path(config).parent / "linsimsiam.jsonl"
    return DEFAULT_RESULTS


def evaluate(config: dict, dist: Dist) -> list[dict]:
    """Probe each ``--modeltype``; the main rank writes and returns the records (others: [])."""
    setup_threads()
    seed_everything(config["seed"])
    tags = parse_tags(config["tag"])
    if config["workers"] is None:
        config["workers"] = default_workers(dist)
    dataset = config["dataset"]
    scale = scale_of(dataset, config["scale"])
    kind = resolve_kind(config)
    if kind == "reference" and dist.enabled:
        raise UserError("--probe reference trains through the encoder in one process; run it without torchrun, or "
                        "use --probe sgd or lbfgs, whose feature pass is shared among the processes")
    out_path = results_path(config)
    check_writable(out_path, what="the results file", fix="pass a writable --results PATH")  # every rank: one error
    encoders = Encoders(config)
    resolved = {m: encoders.get(m) for m in dict.fromkeys(config["modeltype"])}  # every error before any work
    datasets: dict[Optional[int], tuple] = {}
    records: list[dict] = []
    for modeltype in config["modeltype"]:
        encoder, path, size, victim_ckpt, extra = resolved[modeltype]
        sets = downstream_sets(datasets, config, size)
        train_set, test_set, _ = sets
        label = config["label"] if config["label"] and len(config["modeltype"]) == 1 else None
        name = label or modeltype
        metrics, how = probe_encoder(kind, modeltype, name, encoder, sets, size, config, dist)
        trained = encoders.load(path)[1] if path else {}
        if dist.is_main:
            how["scale"] = scale
            record = {**tags, "script": "linsimsiam", "modeltype": modeltype, "label": label,
                      "dataset_test": dataset, "checkpoint": path, "victim_checkpoint": victim_ckpt,
                      "image_size": size, "native_size": train_set.image_size,
                      "eval_set": f"{test_set.split} ({len(test_set)} images)", "seed": config["seed"], "probe": how,
                      "model_config": model_config(modeltype, path, trained.get("config")),
                      "probe_config": probe_config(config), "metrics": metrics, "processes": dist.world_size,
                      "device": str(dist.device),
                      **({"stolen_with": extra} if extra else {}), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_jsonl(out_path, record)
            records.append(record)
            print_result(name, dataset, kind, metrics, how, size)
        dist.barrier()  # the other processes wait for the main one's probe
    if dist.is_main:
        if len(records) > 1:
            print_table(records)
        print(f"results appended to {out_path}")
    return records


def downstream_sets(datasets: dict[Optional[int], tuple], config: dict, size: int) -> tuple:
    """:func:`load_downstream`'s ``(train, test, eval set)`` for an encoder fed ``size`` px, loaded once into
    ``datasets``: image folders are read at that size, the rest at their native size (key ``None``)."""
    key = size if config["dataset"] == "imagenet" else None
    if key not in datasets:
        datasets[key] = load_downstream(config["dataset"], root=config["data"], image_size=key,
                                        eval_set=config["eval_set"], holdout=config["holdout"])
    return datasets[key]


def resizer(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder's input from a uint8 batch: resized on the device to ``size`` px."""
    def transform(images):
        return view(images, size)

    return transform


def epoch_reporter(name: str, config: dict) -> Callable[[int, dict], None]:
    """The sgd probe's per-epoch line, every --print-freq epochs and after the last."""
    def report(epoch: int, row: dict) -> None:
        if epoch % config["print_freq"] == 0 or epoch == config["epochs"]:
            print(f"  {name} epoch {epoch}/{config['epochs']}: lr {row['lr']:.4g}  loss {row['loss']:.4f}  "
                  f"train top-1 {row['train_top1']:.2f}%   * Acc@1 {row['top1']:.3f} Acc@5 {row['top5']:.3f}",
                  flush=True)

    return report


def probe_encoder(kind: str, modeltype: str, name: str, encoder, sets: tuple, size: int, config: dict,
                  dist: Dist) -> tuple[Optional[dict], Optional[dict]]:
    """Freeze ``encoder``, fit the ``kind`` probe on ``sets`` at ``size`` px and check the encoder unchanged;
    ``(metrics, how)`` on the main rank (with the seconds taken), ``(None, None)`` on the others."""
    t0 = time.perf_counter()
    encoder = encoder.to(dist.device)
    before = freeze(encoder)
    feature_seconds = None
    if kind == "reference":
        metrics, how = fit_reference(modeltype, encoder, sets, size, config, dist)
    else:
        metrics, how, feature_seconds = fit_on_features(kind, name, encoder, sets, size, config, dist, t0)
    assert_unchanged(encoder, before)
    if not dist.is_main:
        return None, None
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    if feature_seconds is not None:
        metrics["feature_seconds"] = feature_seconds
    return metrics, how


def fit_reference(modeltype: str, encoder, sets: tuple, size: int, config: dict, dist: Dist) -> tuple[dict, dict]:
    """linear_eval.py's Adam probe through the encoder (one process): lr 3e-4 for the victim, 1e-4 otherwise."""
    train_set, test_set, eval_set = sets
    batch = config["batch_size"]
    lr = REFERENCE_VICTIM_LR if modeltype == "victim" else REFERENCE_LR
    metrics, _, how = fit_downstream(
        "reference", encoder, train_set, test_set, device=dist.device, seed=config["seed"], workers=config["workers"],
        lr=lr, epochs=config["epochs"], batch_size=batch, num_labeled=REFERENCE_NUM_LABELED, bn="train",
        test_batch_size=reference_test_batch(eval_set, batch), transform=resizer(size))
    return metrics, how


def fit_on_features(kind: str, name: str, encoder, sets: tuple, size: int, config: dict, dist: Dist,
                    t0: float) -> tuple[Optional[dict], Optional[dict], float]:
    """The sgd or lbfgs probe: the feature pass sharded over the processes, then the probe on the main rank.
    ``(metrics, how, seconds from t0 to the end of the feature pass)``; metrics and how are None off the main rank."""
    train_set, test_set, _ = sets
    batch, workers = config["batch_size"], config["workers"]
    transform = resizer(size)
    if dist.is_main:
        print(f"{name}: features of {config['dataset']} ({len(train_set)} train and {len(test_set)} test images, "
              f"{train_set.image_size} px resized to {size} px) on {dist.describe()}", flush=True)
    xtr, ytr = sharded_features(encoder, train_set, dist, transform=transform, batch_size=batch, workers=workers)
    xte, yte = sharded_features(encoder, test_set, dist, transform=transform, batch_size=batch, workers=workers)
    feature_seconds = round(time.perf_counter() - t0, 2)
    if not dist.is_main:
        return None, None, feature_seconds
    metrics, _, how = fit_downstream(
        kind, encoder, train_set, test_set, device=dist.device, seed=config["seed"], workers=workers,
        lr=config["lr"], weight_decay=config["weight_decay"], epochs=config["epochs"], batch_size=batch,
        momentum=config["momentum"], lars=config["lars"], features=(xtr, ytr, xte, yte),
        report=epoch_reporter(name, config))
    return metrics, how, feature_seconds


def print_result(name: str, dataset: str, kind: str, metrics: dict, how: dict, size: int) -> None:
    """The one line printed per evaluation."""
    detail = (f"L2 {metrics['l2']:g}" if kind == "lbfgs" else
              f"{how['optimizer'].upper()} lr {how['lr']:g}, {how['epochs']} epochs, best top-1 "
              f"{metrics['best_top1']:.2f}% at epoch {metrics['best_epoch']}" if kind == "sgd" else
              f"Adam lr {how['lr']:g}, {how['epochs']} epochs, BN train")
    print(f"{name:>8s} on {dataset}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  ({kind} probe, "
          f"{detail}; features {metrics['feature_dim']}-d at {size} px, {metrics['seconds']:.1f}s)", flush=True)


def main(argv=None) -> list[dict]:
    config = dict(vars(build_parser().parse_args(argv)))
    out: list[dict] = []

    def body(dist: Dist) -> None:
        out.extend(evaluate(config, dist))

    launch(lambda: run_ranks(body, config), config)
    return out


if __name__ == "__main__":
    run_cli(main)
