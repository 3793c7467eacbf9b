"""Steal a victim encoder through its outputs (direct extraction).

The attacker sends images to the victim through :class:`victim.Victim` (counted, cached,
budgeted) and trains a stolen encoder so that its outputs match the victim's answers
under a chosen loss. The training loop is ``simclr.fit``, shared with victim training.

Examples:
  python steal.py --victim-checkpoint runs/quickstart/checkpoint.pt --losstype mse --num_queries 500
  python steal.py --victim-checkpoint CKPT --datasetsteal patches --losstype infonce --num_queries 1000

Query set rules (as the reference): stealing with the victim's own dataset uses its test
split without the last ``--holdout`` images (kept for evaluation) unless ``--force True``;
another dataset uses its train split. The first ``num_queries / n_views`` images are used,
and with ``--n-views`` > 1 each gets that many augmented views, drawn once; every view is
one query. The run directory gets config.yaml, train.log, metrics.jsonl, queries.jsonl
and checkpoint.pt (the stolen encoder).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data_aug import DATASETS, SimCLRAugment, dataset_info, get_dataset, to_float
from loss import LOSSES
from models import build_encoder, build_mlp, load_encoder, save_checkpoint, simclr_head_dims
from simclr import Precision, fit
from utils import (HelpFormatter, UserError, add_common_args, get_logger, pick_device, prepare_run_dir,
                   run_cli, seed_everything, setup_threads, str2bool, write_config)
from victim import LocalEncoder, Victim

# the losses steal.py trains with (pairwise: stolen row i matches victim row i)
STEAL_LOSSES = tuple(n for n in ("mse", "infonce", "softnn", "wasserstein", "softce", "bce") if n in LOSSES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--victim-checkpoint", required=True, help="the victim's checkpoint (from run.py)")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    p.add_argument("--dataset", default=None, help="the victim's dataset (default: from its checkpoint)")
    p.add_argument("--datasetsteal", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="query dataset (default: the victim's dataset)")
    p.add_argument("--num_queries", type=int, default=500, help="query budget; every view is one query")
    p.add_argument("--holdout", type=int, default=None,
                   help="images kept out at the end of the victim's test split (default: 1000, or a "
                        "fifth of the split when it is smaller, e.g. 100 of digitsm's 500)")
    p.add_argument("--force", type=str2bool, default=False,
                   help="query the train split of the victim's own dataset instead of its test split")
    p.add_argument("--losstype", default="mse", choices=STEAL_LOSSES, help="stealing loss")
    p.add_argument("--archstolen", default=None, help="stolen architecture (default: the victim's)")
    p.add_argument("--width", type=int, default=None, help="stolen encoder width (default: the victim's)")
    p.add_argument("--victimhead", type=str2bool, default=False,
                   help="the victim answers with its projection head output g(h) instead of h")
    p.add_argument("--stolenhead", type=str2bool, default=False,
                   help="the stolen model gets its own head; its output is matched to the answers")
    p.add_argument("--n-views", dest="n_views", type=int, default=1,
                   help="views per query image: 1 = the plain image, >1 = augmented views drawn once")
    p.add_argument("--epochs", type=int, default=30, help="stealing epochs over the query set")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    p.add_argument("--wd", dest="weight_decay", type=float, default=1e-4, help="Adam weight decay")
    p.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature")
    p.add_argument("--temperaturesn", type=float, default=100.0, help="soft nearest-neighbour temperature")
    p.add_argument("--logdir", default=None, help="run directory (default: runs/steal_<loss>_<queries>_<data>)")
    p.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_common_args(p)
    return p


def query_set(config: dict, victim_dataset: str, image_size: int):
    """The attacker's images per the reference's rules (see the module docstring)."""
    steal_name = config["datasetsteal"] or victim_dataset
    info = dataset_info(steal_name)
    if steal_name == victim_dataset and not config["force"]:
        test = get_dataset(steal_name, info.test_split, root=config["data"], image_size=image_size)
        holdout = config["holdout"] if config["holdout"] is not None else min(1000, len(test) // 5)
        pool = test.subset(range(len(test) - holdout), split=f"{info.test_split}[:-{holdout}]")
    else:
        pool = get_dataset(steal_name, info.train_split, root=config["data"], image_size=image_size)
    n_images = config["num_queries"] // config["n_views"]
    if config["num_queries"] > len(pool) * config["n_views"]:
        raise UserError(f"--num_queries {config['num_queries']} is more than the query set offers "
                        f"({len(pool)} images of {pool.name}/{pool.split} x {config['n_views']} views); "
                        f"lower it or use --force True / another --datasetsteal")
    if n_images < 1:
        raise UserError(f"--num_queries {config['num_queries']} gives no whole image at "
                        f"{config['n_views']} views each; raise it")
    return pool.subset(range(n_images))


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    config = dict(vars(args))
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    venc, vhead, vckpt = load_encoder(config["victim_checkpoint"], with_head=config["victimhead"])
    vconfig = vckpt.get("config") or {}
    victim_dataset = config["dataset"] or vconfig.get("dataset")
    if victim_dataset is None:
        raise UserError("the victim checkpoint does not name its dataset; pass --dataset")
    image_size = int(vconfig.get("image_size") or dataset_info(victim_dataset).native_size)
    config.update(dataset=victim_dataset, image_size=image_size)
    if config["n_views"] < 1:
        raise UserError("--n-views must be at least 1")
    if config["logdir"] is None:
        config["logdir"] = (f"runs/steal_{config['losstype']}_{config['num_queries']}_"
                            f"{config['datasetsteal'] or victim_dataset}_s{config['seed']}")
    run_dir = prepare_run_dir(config["logdir"])
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --clear or another --logdir")
    for stale in ("queries.jsonl", "metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    images = query_set(config, victim_dataset, image_size)
    victim = Victim(LocalEncoder(venc, vhead, device=device), budget=config["num_queries"],
                    log_path=run_dir / "queries.jsonl")

    arch = config["archstolen"] or venc.arch
    width = config["width"] or venc.width
    config.update(archstolen=arch, width=width, victim_out_dim=victim.out_dim)
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    # the attacker normalises with its own query data's statistics: it does not know the victim's
    qinfo = dataset_info(images.name)
    stolen = build_encoder(arch, stem=venc.stem, width=width, mean=qinfo.mean, std=qinfo.std)
    head_kwargs = None
    head = None
    if config["stolenhead"]:
        head_kwargs = {"dims": simclr_head_dims(stolen.out_dim, victim.out_dim)}
        head = build_mlp(**head_kwargs)
    elif stolen.out_dim != victim.out_dim:
        raise UserError(f"the stolen {arch} (width {width}) outputs {stolen.out_dim}-d but the victim answers "
                        f"{victim.out_dim}-d; pick a matching --archstolen/--width or pass --stolenhead True")
    model = torch.nn.Sequential(stolen, head) if head is not None else stolen
    model.to(device)

    # the inputs: plain images, or n augmented views per image drawn once (each view one query)
    gen = torch.Generator().manual_seed(config["seed"])
    if config["n_views"] == 1:
        inputs = to_float(images.images)
    else:
        augment = SimCLRAugment(image_size)
        inputs = torch.cat([augment(images.images, gen) for _ in range(config["n_views"])])
    n_items = inputs.shape[0]
    keys = [(i % len(images), i // len(images)) for i in range(n_items)]  # (image index, view)
    inputs = inputs.to(device)
    hparams = {"infonce": {"temperature": config["temperature"]},
               "softnn": {"temperature": config["temperaturesn"]}}.get(config["losstype"], {})
    loss_fn = LOSSES[config["losstype"]]
    batch_size = min(config["batch_size"], n_items)
    steps_per_epoch = n_items // batch_size

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n_items, generator=generator)
        for s in range(steps_per_epoch):
            yield order[s * batch_size:(s + 1) * batch_size]

    def step(idx: torch.Tensor, generator: torch.Generator):
        x = inputs[idx.to(device)]
        answers = victim.query(x, keys=[keys[i] for i in idx.tolist()])
        return loss_fn(model(x), answers, **hparams), {}, x.shape[0]

    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    logger.info(f"stealing a {venc.arch} victim ({victim.out_dim}-d answers) with {config['losstype']}: "
                f"{config['num_queries']} queries = {len(images)} images of {images.name}/{images.split} "
                f"x {config['n_views']} view(s); stolen {arch} width {width}")

    def save(state: dict) -> None:
        victim.end_epoch(state["epoch"])
        save_checkpoint(ckpt_path, encoder=stolen, head=head, head_kwargs=head_kwargs, kind="stolen",
                        dataset=victim_dataset, config=config, queries_used=victim.queries_used, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps_per_epoch, modules=[model], optimizer=optimizer,
        epochs=config["epochs"], base_lr=config["lr"], seed=config["seed"], precision=Precision(device),
        save=save, run_dir=run_dir, logger=logger, desc="steal")
    logger.info(f"{victim.queries_used} queries used of {config['num_queries']}; victim forward passes: "
                f"{victim.forward_calls}; stolen checkpoint: {ckpt_path}")
    return ckpt_path


if __name__ == "__main__":
    run_cli(main)
