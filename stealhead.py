"""Recreate the victim's projection head, then steal through it (Algorithm 2 of the paper).

SimCLR trains its encoder through a projection head g that the API does not expose: it
answers only the representation h. The attacker recreates a head g' from the answers:

1. **head**: query the victim on two augmented views of each image (every view is one
   query) and train g' on the answers ``h(x1), h(x2)`` with ``--losshead`` (InfoNCE by
   default: ``g'(h(x1))`` and ``g'(h(x2))`` are the positive pair), for ``--epochs-head``
   epochs (the reference: twice ``--epochs``);
2. **steal**: train a stolen encoder with its own head so that its output matches
   ``g'(h(x))`` (g' frozen) under ``--losstype``, on the same cached answers: the whole
   attack costs ``--num_queries`` queries.

``--losshead msewithhead`` instead fits g' to the victim's true head outputs g(h) (the
attacker then also has head access; those answers are counted as queries too).

Examples:
  python stealhead.py --dataset mnistm5k --num_queries 500
  python stealhead.py --victim-checkpoint CKPT --losshead softnn --losstype infonce
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from loss import LOSSES, info_nce_views, mse, softnn
from models import build_encoder, build_mlp, save_checkpoint, simclr_head_dims
from simclr import Precision, fit
from steal import (QueryViews, check_loss_inputs, image_batches, load_victim, query_augment, loss_kwargs, make_optimizer,
                   query_set, resolve_defaults)
from data_aug import DATASETS, dataset_info
from defenses import NoisePerturbation
from utils import (HelpFormatter, UserError, add_common_args, get_logger, pick_device, prepare_run_dir, run_cli,
                   seed_everything, setup_threads, str2bool, write_config)
from victim import LocalEncoder, Victim, no_defense

HEAD_LOSSES = ("infonce", "softnn", "mse", "msewithhead")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("victim and queries")
    g.add_argument("--victim-checkpoint", default=None,
                   help="the victim's checkpoint (default: run.py's default run directory for --dataset)")
    g.add_argument("-dataset", "--dataset", dest="dataset", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the victim's dataset, also the query dataset (default: from the checkpoint)")
    g.add_argument("--archvic", dest="arch", default=None, help="the victim's architecture (checked)")
    g.add_argument("--widthvic", dest="width", type=int, default=None, help="the victim's width (checked)")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--num_queries", type=int, default=500, help="query budget; every view is one query")
    g.add_argument("--n-views", dest="n_views", type=int, default=2, help="views per query image (>= 2)")
    g.add_argument("--holdout", type=int, default=None, help="images kept out at the end of the test split")
    g.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest crop area of the views (default: the victim's recipe, else 0.08)")
    g.add_argument("--hflip-p", type=float, default=None,
                   help="flip probability of the views (default: the victim's recipe, else 0.5)")
    g.add_argument("--defence", type=str2bool, default=False, help="the victim adds N(--mu, --sigma^2) noise")
    g.add_argument("--sigma", type=float, default=0.5, help="noise standard deviation of --defence")
    g.add_argument("--mu", type=float, default=0.0, help="noise mean of --defence (the reference's stealhead: 0)")

    g = p.add_argument_group("recreated head")
    g.add_argument("--losshead", default="infonce", choices=HEAD_LOSSES, help="loss that trains the head g'")
    g.add_argument("--out_dim", type=int, default=128, help="output size of g' and of the stolen head")
    g.add_argument("--lrhead", type=float, default=1e-3, help="Adam learning rate of g'")
    g.add_argument("--epochs-head", type=int, default=None, help="epochs of g' (default: 2 x --epochs)")
    g.add_argument("--tempsn", dest="temperaturesn", type=float, default=100.0, help="soft-NN temperature")

    g = p.add_argument_group("stolen model")
    g.add_argument("-a", "--arch", dest="archstolen", default=None, help="stolen architecture (default: the victim's)")
    g.add_argument("--widthstolen", type=int, default=None, help="stolen width (default: the victim's)")
    g.add_argument("--losstype", default="infonce", choices=[n for n in LOSSES if n not in ("supcon", "symmetrized")],
                   help="stealing loss between the stolen head's output and g'(h)")
    g.add_argument("--epochs", type=int, default=None, help="stealing epochs (by scale)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None, help="images per step (by scale)")
    g.add_argument("--lr", type=float, default=None, help="stealing learning rate (by scale)")
    g.add_argument("--optimizer", default=None, choices=["adam", "sgd"], help="stealing optimizer (by scale)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--temperature", type=float, default=None, help="InfoNCE temperature (by scale)")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"], help="preset of the defaults")
    g.add_argument("--logdir", default=None, help="run directory (default: runs/stealhead_<loss>_<queries>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_common_args(p)
    return p


class BothOutputs:
    """A backend answering ``cat[h(x), g(h(x))]``: the representation and the head output at once."""

    def __init__(self, representation: LocalEncoder, head_output: LocalEncoder):
        self.representation, self.head_output = representation, head_output
        self.out_dim = representation.out_dim + head_output.out_dim

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.representation(images), self.head_output(images)], dim=1)


def head_loss(name: str, out: torch.Tensor, views: int, target: torch.Tensor | None, config: dict) -> torch.Tensor:
    """The loss of the recreated head on its outputs ``out`` (view-major, ``views * B`` rows)."""
    if name == "infonce":
        return info_nce_views(out.view(views, -1, out.shape[1]), temperature=config["temperature"])
    b = out.shape[0] // views
    if name == "softnn":
        return softnn(out[:b], out[b:2 * b], temperature=config["temperaturesn"])
    if name == "mse":
        return mse(out[:b], out[b:2 * b])
    return mse(out, target)  # msewithhead


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    config = dict(vars(args), datasetsteal=None, force=False, victimhead=False, stolenhead=True)
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    with_head = config["losshead"] == "msewithhead"
    venc, vhead, vckpt = load_victim(config, with_head=with_head)
    resolve_defaults(config)  # --n-views has its own default (2), so the per-loss one never replaces it
    if config["n_views"] < 2:
        raise UserError(f"recreating the head compares two views of each image; use --n-views 2 "
                        f"(got {config['n_views']})")
    config["epochs_head"] = config["epochs_head"] or 2 * config["epochs"]
    images = query_set(config)
    check_loss_inputs(config, images.labels)
    if config["logdir"] is None:
        config["logdir"] = f"runs/stealhead_{config['losstype']}_{config['num_queries']}_{config['dataset']}_s{config['seed']}"
    run_dir = prepare_run_dir(config["logdir"])
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --clear or another --logdir")
    for stale in ("queries.jsonl", "metrics.jsonl", "head/metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    defense = NoisePerturbation(config["mu"], config["sigma"], seed=config["seed"]) if config["defence"] \
        else no_defense
    # with msewithhead the API answers both h and g(h) for each view: one query, two outputs
    backend = LocalEncoder(venc, device=device)
    d = backend.out_dim
    if with_head:
        backend = BothOutputs(LocalEncoder(venc, device=device), LocalEncoder(venc, vhead, device=device))
    victim = Victim(backend, budget=config["num_queries"], defense=defense, log_path=run_dir / "queries.jsonl")
    arch, width = config["archstolen"] or venc.arch, config["widthstolen"] or venc.width
    config.update(archstolen=arch, widthstolen=width, victim_out_dim=d)
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    views = QueryViews.build(images, config["n_views"], config["seed"], device,
                             query_augment(config, vckpt.get("config") or {}))
    batches, steps = image_batches(views.n, config["batch_size"])
    precision = Precision(device)

    def answers(idx: torch.Tensor):
        x, keys, labels = views.rows(idx)
        out = victim.query(x, keys=keys)
        return x, out[:, :d], (out[:, d:] if with_head else None), labels

    # ---- phase 1: recreate the head g' on the answers
    head_kwargs = {"dims": simclr_head_dims(d, config["out_dim"])}
    head = build_mlp(**head_kwargs).to(device)

    def head_step(idx: torch.Tensor, generator: torch.Generator):
        _, h, target, _ = answers(idx)
        return head_loss(config["losshead"], head(h), views.n_views, target, config), {}, h.shape[0]

    logger.info(f"recreating the victim's head ({d} -> {config['out_dim']}) with {config['losshead']} on "
                f"{len(images)} images x {views.n_views} views ({config['num_queries']} queries), "
                f"{config['epochs_head']} epochs")
    fit(step=head_step, batches=batches, steps_per_epoch=steps, modules=[head],
        optimizer=torch.optim.Adam(head.parameters(), lr=config["lrhead"], weight_decay=config["weight_decay"]),
        epochs=config["epochs_head"], base_lr=config["lrhead"], seed=config["seed"], precision=precision,
        save=lambda state: victim.end_epoch(state["epoch"]), run_dir=prepare_run_dir(run_dir / "head"),
        logger=logger, desc="head", tensorboard=False)
    head.eval().requires_grad_(False)

    # ---- phase 2: steal through g'
    stolen = build_encoder(arch, stem=venc.stem, width=width, mean=dataset_info(images.name).mean,
                           std=dataset_info(images.name).std)
    stolen_head_kwargs = {"dims": simclr_head_dims(stolen.out_dim, config["out_dim"])}
    stolen_head = build_mlp(**stolen_head_kwargs)
    model = nn.Sequential(stolen, stolen_head).to(device)
    loss_fn, hparams = LOSSES[config["losstype"]], loss_kwargs(config)
    if config["losstype"] == "barlow":
        hparams["n_views"] = views.n_views

    def steal_step(idx: torch.Tensor, generator: torch.Generator):
        x, h, _, _ = answers(idx)
        with torch.no_grad():
            q = head(h)
        return loss_fn(model(x), q, **hparams), {}, x.shape[0]

    def save(state: dict) -> None:
        victim.end_epoch(config["epochs_head"] + state["epoch"])
        save_checkpoint(ckpt_path, encoder=stolen, head=stolen_head, head_kwargs=stolen_head_kwargs, kind="stolen",
                        attack="recreate-head", dataset=config["dataset"], config=config,
                        queries_used=victim.queries_used, victim_forward_calls=victim.forward_calls,
                        recreated_head={"kwargs": head_kwargs, "state_dict": head.state_dict()}, **state)

    logger.info(f"stealing through g' with {config['losstype']}: stolen {arch} width {width}, "
                f"{config['optimizer']} lr {config['lr']:g}, {config['epochs']} epochs")
    fit(step=steal_step, batches=batches, steps_per_epoch=steps, modules=[model],
        optimizer=make_optimizer(config, model.parameters()), epochs=config["epochs"], base_lr=config["lr"],
        seed=config["seed"], precision=precision, save=save, run_dir=run_dir, logger=logger, desc="steal")
    logger.info(f"{victim.queries_used} queries used of {config['num_queries']}; victim forward passes: "
                f"{victim.forward_calls}; stolen checkpoint: {ckpt_path}")
    return ckpt_path


if __name__ == "__main__":
    run_cli(main)
