"""Steal a victim encoder through its outputs.

The attacker sends images to the victim through :class:`victim.Victim` (counted, cached,
budgeted) and trains a stolen encoder so that its outputs match the victim's answers
under a chosen loss. The training loop is ``simclr.fit``, shared with victim training.

Examples:
  python run.py --dataset mnistm5k && python steal.py --dataset mnistm5k --losstype mse --num_queries 300
  python steal.py --victim-checkpoint CKPT --datasetsteal patches --losstype infonce --num_queries 1000
  python steal.py --victim-checkpoint CKPT --losstype infonce --victimhead True --stolenhead True  # access head
  python steal.py --victim-checkpoint CKPT --losstype supcon        # two augmented views, true labels

Attack variants: direct extraction (default: the victim answers its representation h);
access head (``--victimhead True``: it answers g(h), and the stolen model needs its own
head, ``--stolenhead True``); the attacker's own head on top of h (``--stolenhead True``);
recreate head is ``stealhead.py``.

Query set rules (as the reference): stealing with the victim's own dataset uses its test
split without its last images (1,000, or 200 for digits/digitsm; the
linear probe's evaluation set) unless ``--force True``; another dataset (e.g. ``patches``,
out of distribution) uses its train split. The first ``num_queries / n_views`` images are
used; with ``--n-views`` > 1 each gets that many augmented views, drawn once, and every
view is one query. The run directory gets config.yaml, train.log, metrics.jsonl,
queries.jsonl and checkpoint.pt (the stolen encoder).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
import torch
from torch import nn

from data_aug import DATASETS, ImageSet, SimCLRAugment, dataset_info, get_dataset, split_holdout, to_float
from defenses import NoisePerturbation
from loss import LOSSES
from models import build_encoder, build_mlp, load_encoder, save_checkpoint, simclr_head_dims
from simclr import Precision, fit
from utils import (DEFAULT_DATASET, HelpFormatter, UserError, add_common_args, get_logger, pick_device,
                   prepare_run_dir, run_cli, seed_everything, setup_threads, steal_run_dir, str2bool,
                   victim_run_dir, write_config)
from victim import LocalEncoder, Victim, no_defense

STEAL_LOSSES = tuple(LOSSES)

# Defaults that depend on the scale and on the loss, applied in this order: the scale's base,
# then the loss's overrides; a value typed on the command line always wins. "paper" follows
# the reference's steal.py (its per-loss overrides, with the two-view losses given the two
# views they need); "cpu" was tuned on the offline mnistm5k victim (100-1,000 queries, 2 cores):
# attacker-side SimCLR augmentation of the queried images (--local-aug, no extra queries)
# lifted MSE at 100 queries from 40.3% to 56.9% of a 61.2% victim, at 300 from 56.7% to 60.4%.
STEAL_DEFAULTS: dict[str, dict[str, dict]] = {
    "paper": {
        "*": {"epochs": 100, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "n_views": 1,
              "temperature": 0.07, "local_aug": "none"},
        "infonce": {"batch_size": 256, "lr": 3e-4},
        "softnn": {"batch_size": 256, "lr": 1e-3},
        "supcon": {"batch_size": 256, "lr": 0.05, "optimizer": "sgd", "n_views": 2},
        "barlow": {"batch_size": 256, "n_views": 2},
        "symmetrized": {"batch_size": 256, "lr": 0.05, "optimizer": "sgd", "n_views": 2},
    },
    "cpu": {
        "*": {"epochs": 100, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "n_views": 1,
              "temperature": 0.2, "local_aug": "simclr"},
        "supcon": {"n_views": 2},
        "barlow": {"n_views": 2},
        "symmetrized": {"n_views": 2},
    },
}


def loss_defaults(scale: str, losstype: str) -> dict:
    table = STEAL_DEFAULTS[scale]
    return {**table["*"], **table.get(losstype, {})}


def _defaults_epilog() -> str:
    lines = ["defaults by scale and loss (a value you type always wins; config.yaml records the result):"]
    for scale, table in STEAL_DEFAULTS.items():
        lines.append(f"  {scale}: " + ", ".join(f"{k} {v}" for k, v in table["*"].items()))
        for loss, over in table.items():
            if loss != "*":
                lines.append(f"    {loss}: " + ", ".join(f"{k} {v}" for k, v in over.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=_defaults_epilog())
    g = p.add_argument_group("victim")
    g.add_argument("--victim-checkpoint", default=None,
                   help="the victim's checkpoint (default: run.py's default run directory for --dataset, "
                        "--arch, --width and --seed, e.g. runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt)")
    g.add_argument("--dataset", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the victim's training dataset (default: read from its checkpoint; mnistm5k when "
                        "the checkpoint is found by its default path)")
    g.add_argument("-a", "--arch", default=None,
                   help="the victim's architecture; checked against the checkpoint (default: the checkpoint's)")
    g.add_argument("--width", type=int, default=None,
                   help="the victim's base width; checked against the checkpoint (default: the checkpoint's)")
    g.add_argument("--lossvictim", default=None,
                   help="the loss the victim was trained with; checked against the checkpoint")
    g.add_argument("--epochstrain", type=int, default=None,
                   help="the victim's training epochs; checked against the checkpoint")
    g.add_argument("--victimhead", type=str2bool, default=False,
                   help="access head: the victim answers its projection head output g(h) instead of h")
    g.add_argument("--defence", type=str2bool, default=False,
                   help="the victim perturbs its answers with Gaussian noise N(--mu, --sigma^2)")
    g.add_argument("--sigma", type=float, default=0.5, help="noise standard deviation of --defence")
    g.add_argument("--mu", type=float, default=5.0, help="noise mean of --defence")
    g.add_argument("--watermark", type=str2bool, default=False,
                   help="after stealing, test the stolen encoder with the victim's watermark head (the "
                        "victim checkpoint must carry one)")

    g = p.add_argument_group("queries")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--datasetsteal", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="query dataset (default: the victim's dataset); patches = out-of-distribution photos")
    g.add_argument("--num_queries", type=int, default=500, help="query budget; every view is one query")
    g.add_argument("--n-views", dest="n_views", type=int, default=None,
                   help="views per query image: 1 = the plain image, >1 = augmented views drawn once "
                        "(by loss; supcon, barlow and symmetrized need 2)")
    g.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest crop area of the augmented views (default: the victim's run.py recipe, "
                        "else 0.08 as SimCLR)")
    g.add_argument("--hflip-p", type=float, default=None,
                   help="flip probability of the augmented views (default: the victim's recipe, else 0.5)")
    g.add_argument("--local-aug", dest="local_aug", default=None, choices=sorted(LOCAL_AUGMENTATIONS),
                   help="attacker-side augmentation that costs no query: each step the stolen encoder sees a "
                        "fresh augmented copy of each queried image, and its target stays the victim's answer "
                        "for the image as queried. none = the reference (the stolen encoder sees exactly the "
                        "queried images); crop = random resized crops of at least --crop-min-scale of the area "
                        "(and flips with --hflip-p); simclr = crops plus the colour jitter, grayscale and blur "
                        "of SimCLR (by scale; none when --n-views > 1, whose queries are augmented views "
                        "already)")
    g.add_argument("--holdout", type=int, default=None,
                   help="images kept out at the end of the victim's test split (default: the dataset's "
                        "evaluation set: 1000, or 200 for digits/digitsm)")
    g.add_argument("--force", type=str2bool, default=False,
                   help="query the train split of the victim's own dataset instead of its test split")

    g = p.add_argument_group("stolen model and training")
    g.add_argument("--losstype", default="infonce", choices=STEAL_LOSSES, help="stealing loss")
    g.add_argument("--archstolen", default=None, help="stolen architecture (default: the victim's)")
    g.add_argument("--widthstolen", type=int, default=None, help="stolen encoder width (default: the victim's)")
    g.add_argument("--stolenhead", type=str2bool, default=None,
                   help="the stolen model has its own head (h -> h -> victim answer size) whose output is "
                        "matched to the answers; needed with --victimhead True (default: False)")
    g.add_argument("--epochs", type=int, default=None, help="stealing epochs over the query set (by scale)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None,
                   help="images per step, each with its --n-views views (by scale and loss)")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="peak learning rate of the cosine schedule (by scale and loss)")
    g.add_argument("--optimizer", default=None, choices=["adam", "sgd"],
                   help="adam, or sgd with momentum 0.9 (by loss: sgd for supcon/symmetrized at paper scale)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--temperature", type=float, default=None, help="InfoNCE / SupCon temperature (by scale)")
    g.add_argument("--temperaturesn", type=float, default=100.0, help="soft nearest-neighbour temperature")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="preset for the defaults marked 'by scale': auto = cpu for an offline victim "
                        "dataset, paper otherwise")
    g.add_argument("--logdir", default=None,
                   help="run directory (default: runs/steal_<loss>_<queries>_<querydata>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_common_args(p)
    return p


# --------------------------------------------------------------------------------------
# pieces shared by the stealing scripts (steal.py, stealhead.py)


def default_victim_checkpoint(config: dict) -> Path:
    """run.py's default run directory for this dataset/arch/width/seed (see run.py --logdir)."""
    return victim_run_dir(config.get("dataset") or DEFAULT_DATASET, config["seed"], config.get("arch"),
                          config.get("width")) / "checkpoint.pt"


def load_victim(config: dict, *, with_head: bool = False):
    """Load the victim named by the config, check it against --arch/--width/--lossvictim/--epochstrain.

    Fills ``victim_checkpoint``, ``dataset`` and ``image_size`` in ``config``; returns
    ``(encoder, head, checkpoint)``.
    """
    path = config.get("victim_checkpoint")
    if path is None:
        path = default_victim_checkpoint(config)
        if not path.is_file():
            raise UserError(f"no victim checkpoint at {path}; train one with `python run.py --dataset "
                            f"{config.get('dataset') or DEFAULT_DATASET}` or pass --victim-checkpoint PATH")
    config["victim_checkpoint"] = str(path)
    venc, vhead, vckpt = load_encoder(path, arch=config.get("arch"), width=config.get("width"),
                                      with_head=with_head)
    vconfig = vckpt.get("config") or {}
    for flag, key in (("lossvictim", "losstype"), ("epochstrain", "epochs")):
        if config.get(flag) is not None and key in vconfig and vconfig[key] != config[flag]:
            raise UserError(f"--{flag} {config[flag]} does not match the victim checkpoint {path}, which was "
                            f"trained with {key} {vconfig[key]}; drop --{flag} or pass the right checkpoint")
    trained_on = vconfig.get("dataset") or vckpt.get("dataset")
    if config.get("dataset") and trained_on and config["dataset"] != trained_on:
        raise UserError(f"--dataset {config['dataset']} does not match the victim checkpoint {path}, which was "
                        f"trained on {trained_on}; drop --dataset or pass the right checkpoint")
    dataset = config.get("dataset") or trained_on
    if dataset is None:
        raise UserError(f"the victim checkpoint {path} does not name its dataset; pass --dataset")
    config["dataset"] = dataset
    config["arch"], config["width"] = venc.arch, venc.width
    config["image_size"] = int(vconfig.get("image_size") or dataset_info(dataset).native_size)
    return venc, vhead, vckpt


def query_pool(config: dict) -> ImageSet:
    """All images the attacker may query, per the reference's rules (see the module docstring)."""
    victim_dataset, image_size = config["dataset"], config["image_size"]
    steal_name = config.get("datasetsteal") or victim_dataset
    info = dataset_info(steal_name)
    if steal_name == victim_dataset and not config.get("force"):
        test = get_dataset(steal_name, info.test_split, root=config.get("data"), image_size=image_size)
        pool, evaluation = split_holdout(test, config.get("holdout"))
        config["holdout"] = len(evaluation)
        return pool
    return get_dataset(steal_name, info.train_split, root=config.get("data"), image_size=image_size)


def query_set(config: dict) -> ImageSet:
    """The ``num_queries / n_views`` images the attacker sends (the first of the pool)."""
    pool = query_pool(config)
    q, v = config["num_queries"], config["n_views"]
    if v < 1:
        raise UserError(f"--n-views must be at least 1, got {v}")
    if q > len(pool) * v:
        raise UserError(f"--num_queries {q} is more than the query set offers ({len(pool)} images of "
                        f"{pool.name}/{pool.split} x {v} view(s)); lower it, or use --force True or another "
                        f"--datasetsteal")
    if q // v < 1:
        raise UserError(f"--num_queries {q} gives no whole image at {v} views each; raise it")
    return pool.subset(range(q // v))


@dataclass
class QueryViews:
    """The attacker's inputs: ``n_views`` views of each of ``n`` images, view-major.

    Row ``v * n + i`` is view ``v`` of image ``i``; its query key is ``(i, v)``. One view is
    the plain image; more are SimCLR augmentations, drawn once from ``seed`` (so a view is
    a fixed query whose answer can be cached). ``rows(idx)`` gives the view-major rows of a
    batch of image indices: ``n_views * len(idx)`` rows, as the two-view losses expect.
    """
    inputs: torch.Tensor
    labels: torch.Tensor
    n: int
    n_views: int

    @classmethod
    def build(cls, images: ImageSet, n_views: int, seed: int, device: torch.device,
              augment: SimCLRAugment | None = None) -> "QueryViews":
        if n_views == 1:
            inputs = to_float(images.images)
        else:
            gen = torch.Generator().manual_seed(seed)
            augment = augment or SimCLRAugment(images.image_size)
            inputs = torch.cat([augment(images.images, gen) for _ in range(n_views)])
        return cls(inputs.to(device), images.labels.to(device), len(images), n_views)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor]:
        """(inputs, keys, labels per image) of the image indices ``idx``."""
        idx = idx.to(self.inputs.device)
        rows = torch.cat([idx + v * self.n for v in range(self.n_views)])
        keys = [(i, v) for v in range(self.n_views) for i in idx.tolist()]
        return self.inputs[rows], keys, self.labels[idx]


# attacker-side augmentations of --local-aug: SimCLRAugment overrides beside the crop and flip
LOCAL_AUGMENTATIONS = {"none": None, "crop": {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}, "simclr": {}}


def local_augment(config: dict) -> SimCLRAugment | None:
    """The --local-aug transform (``None`` for none), with the query views' crop scale and flip."""
    over = LOCAL_AUGMENTATIONS[config["local_aug"]]
    if over is None:
        return None
    return SimCLRAugment(config["image_size"], crop_scale=(config["crop_min_scale"], 1.0),
                         flip_p=config["hflip_p"], **over)


def query_augment(config: dict, victim_config: dict) -> SimCLRAugment:
    """The augmentation of multi-view queries: SimCLR's, with the crop scale and flip of the
    victim's recipe unless --crop-min-scale / --hflip-p say otherwise (filled into config)."""
    for key, default in (("crop_min_scale", 0.08), ("hflip_p", 0.5)):
        if config.get(key) is None:
            config[key] = victim_config.get(key, default)
    return SimCLRAugment(config["image_size"], crop_scale=(config["crop_min_scale"], 1.0), flip_p=config["hflip_p"])


def image_batches(n: int, batch_size: int):
    """Shuffled batches of image indices, the last incomplete one dropped; and the steps per epoch."""
    batch_size = min(batch_size, n)
    steps = n // batch_size

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n, generator=generator)
        for s in range(steps):
            yield order[s * batch_size:(s + 1) * batch_size]

    return batches, steps


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=0.9, weight_decay=config["weight_decay"])
    return torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])


def loss_kwargs(config: dict) -> dict:
    """The loss's hyper-parameters from the CLI (labels and views are added per batch)."""
    name = config["losstype"]
    if name == "softnn":
        return {"temperature": config["temperaturesn"]}
    if name in ("infonce", "supcon"):
        return {"temperature": config["temperature"]}
    return {}


def check_loss_inputs(config: dict, pool_labels: torch.Tensor) -> None:
    """One-sentence errors for a loss that cannot run on these queries."""
    name, views = config["losstype"], config["n_views"]
    if name in ("supcon", "barlow", "symmetrized") and views != 2:
        raise UserError(f"--losstype {name} compares two augmented views of each image; use --n-views 2 "
                        f"(got {views})")
    if name == "supcon" and (pool_labels < 0).any():
        raise UserError("--losstype supcon needs the true labels of the query images, but the query set "
                        "is unlabeled; use a labeled --datasetsteal or another loss")


class SimSiamStealer(nn.Module):
    """The attacker's model for ``symmetrized``: encoder f, projector and predictor (SimSiam).

    The stolen encoder's ``p = predictor(projector(f(x)))`` is pulled towards
    ``z = projector(victim answer)`` of the other view, under stop-gradient (loss.symmetrized).
    """

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.projector = build_mlp([dim, dim, dim], batchnorm=True, last_bn=True, last_bn_affine=False)
        self.predictor = build_mlp([dim, max(dim // 4, 1), dim], batchnorm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)))


def resolve_defaults(config: dict) -> None:
    """Fill the by-scale / by-loss defaults that were not typed, in place."""
    if config["scale"] == "auto":
        config["scale"] = "cpu" if DATASETS[config["dataset"]].offline else "paper"
    filled = []
    for key, value in loss_defaults(config["scale"], config["losstype"]).items():
        if config.get(key) is None:
            config[key] = value
            filled.append(key)
    if config.get("stolenhead") is None:
        config["stolenhead"] = config["victimhead"]
        filled.append("stolenhead")
    if "local_aug" in filled and config["n_views"] > 1:
        config["local_aug"] = "none"  # the queries are augmented views already (each one a query)
    config["defaults_filled"] = filled


# --------------------------------------------------------------------------------------


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    config = dict(vars(args))
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    venc, vhead, vckpt = load_victim(config, with_head=config["victimhead"])
    resolve_defaults(config)
    if config["watermark"] and not vckpt.get("watermark"):
        raise UserError(f"--watermark True needs a watermarked victim, but {config['victim_checkpoint']} "
                        f"carries no watermark head; drop --watermark or steal a watermarked victim")
    images = query_set(config)
    check_loss_inputs(config, images.labels)
    if config["logdir"] is None:
        config["logdir"] = str(steal_run_dir(config["losstype"], config["num_queries"],
                                             config["datasetsteal"] or config["dataset"], config["seed"]))
    run_dir = prepare_run_dir(config["logdir"])
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --clear or another --logdir")
    for stale in ("queries.jsonl", "metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    defense = NoisePerturbation(config["mu"], config["sigma"], seed=config["seed"]) if config["defence"] \
        else no_defense
    victim = Victim(LocalEncoder(venc, vhead, device=device), budget=config["num_queries"], defense=defense,
                    log_path=run_dir / "queries.jsonl")

    arch = config["archstolen"] or venc.arch
    width = config["widthstolen"] or venc.width
    config.update(archstolen=arch, widthstolen=width, victim_out_dim=victim.out_dim)
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    # the attacker normalises with its own query data's statistics: it does not know the victim's
    qinfo = dataset_info(images.name)
    stolen = build_encoder(arch, stem=venc.stem, width=width, mean=qinfo.mean, std=qinfo.std)
    head, head_kwargs = None, None
    if config["losstype"] == "symmetrized":
        if config["victimhead"] or stolen.out_dim != victim.out_dim:
            raise UserError(f"--losstype symmetrized sends the victim's {victim.out_dim}-d answers through the "
                            f"attacker's projector, so the stolen encoder must output {victim.out_dim}-d "
                            f"representations (got {stolen.out_dim}-d); match --archstolen/--widthstolen and "
                            f"use --victimhead False")
        model: nn.Module = SimSiamStealer(stolen, stolen.out_dim)
    elif config["stolenhead"]:
        head_kwargs = {"dims": simclr_head_dims(stolen.out_dim, victim.out_dim)}
        head = build_mlp(**head_kwargs)
        model = nn.Sequential(stolen, head)
    elif stolen.out_dim != victim.out_dim:
        raise UserError(f"the stolen {arch} (width {width}) outputs {stolen.out_dim}-d but the victim answers "
                        f"{victim.out_dim}-d; pick a matching --archstolen/--widthstolen or pass --stolenhead True")
    else:
        model = stolen
    model.to(device)

    views = QueryViews.build(images, config["n_views"], config["seed"], device,
                             query_augment(config, vckpt.get("config") or {}))
    batches, steps_per_epoch = image_batches(views.n, config["batch_size"])
    loss_fn, hparams = LOSSES[config["losstype"]], loss_kwargs(config)

    local = local_augment(config)

    def step(idx: torch.Tensor, generator: torch.Generator):
        x, keys, labels = views.rows(idx)
        answers = victim.query(x, keys=keys)
        if local is not None:  # after the query: the victim never sees these copies
            x = local(x, generator)
        extra = {}
        if config["losstype"] in ("supcon", "barlow"):
            extra["n_views"] = views.n_views
        if config["losstype"] == "supcon":
            extra["labels"] = labels
        if config["losstype"] == "symmetrized":
            answers = model.projector(answers)
        return loss_fn(model(x), answers, **hparams, **extra), {}, x.shape[0]

    optimizer = make_optimizer(config, model.parameters())
    logger.info(f"stealing a {venc.arch} victim ({victim.out_dim}-d answers) with {config['losstype']}: "
                f"{config['num_queries']} queries = {len(images)} images of {images.name}/{images.split} "
                f"x {config['n_views']} view(s); stolen {arch} width {width}; {config['optimizer']} lr "
                f"{config['lr']:g}, batch {config['batch_size']}, {config['epochs']} epochs")

    def save(state: dict) -> None:
        victim.end_epoch(state["epoch"])
        save_checkpoint(ckpt_path, encoder=stolen, head=head, head_kwargs=head_kwargs, kind="stolen",
                        dataset=config["dataset"], config=config, queries_used=victim.queries_used,
                        victim_forward_calls=victim.forward_calls, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps_per_epoch, modules=[model], optimizer=optimizer,
        epochs=config["epochs"], base_lr=config["lr"], seed=config["seed"], precision=Precision(device),
        save=save, run_dir=run_dir, logger=logger, desc="steal")
    logger.info(f"{victim.queries_used} queries used of {config['num_queries']}; victim forward passes: "
                f"{victim.forward_calls}; stolen checkpoint: {ckpt_path}")
    return ckpt_path


if __name__ == "__main__":
    run_cli(main)
