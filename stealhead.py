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
attacker then also has head access; those answers are counted as queries too). Over HTTP
(``--victim-url``) it asks the service for ``representation+head``, which only an account
created with ``serve.py accounts create NAME --head-access`` may buy.

Examples:
  python stealhead.py --dataset mnistm5k --num_queries 500
  python stealhead.py --victim-checkpoint CKPT --losshead softnn --losstype infonce
  python stealhead.py --victim-url http://127.0.0.1:8000 --api-key KEY --num_queries 500   # a served victim
"""
from __future__ import annotations

import argparse
from pathlib import Path

from attacks.connect import add_http_victim_args, open_victim
from attacks.encoder import HEAD_LOSSES, resolve_defaults, steal_through_recreated_head
from defenses import add_defense_args
from engine.presets import steal_run_dir
from loss import HEAD_STEAL_LOSSES, canonical_loss
from models import ARCHS, load_checkpoint
from service.victim import add_victim_args
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    get_logger,
    prepare_run_dir,
    run_cli,
    setup_run,
    str2bool,
    write_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_victim_args(p, head_flag=False)
    g = p.add_argument_group("queries")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--num_queries", type=int, default=None,
                   help="query budget; every view is one query (by scale: cpu 500, paper 9000)")
    g.add_argument("--n-views", dest="n_views", type=int, default=2, help="views per query image (>= 2)")
    g.add_argument("--holdout", type=int, default=None, help="images kept out at the end of the test split")
    g.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest crop area of the attacker's views (by scale: paper 0.08, cpu 0.8)")
    g.add_argument("--hflip-p", type=float, default=None,
                   help="flip probability of the attacker's views (by scale: paper 0.5, cpu 0)")

    g = p.add_argument_group("recreated head")
    g.add_argument("--losshead", default="infonce", choices=HEAD_LOSSES, help="loss that trains the head g'")
    g.add_argument("--out_dim", type=int, default=128, help="output size of g' and of the stolen head")
    g.add_argument("--lrhead", type=float, default=1e-3, help="Adam learning rate of g'")
    g.add_argument("--epochs-head", type=int, default=None, help="epochs of g' (default: 2 x --epochs)")
    g.add_argument("--tempsn", dest="temperaturesn", type=float, default=100.0, help="soft-NN temperature")
    g.add_argument("--resume", type=str2bool, default=False,
                   help="True: load g' saved by an earlier run in --logdir (head/head.pt) instead of training "
                        "it (the reference's default was True and needed a saved head)")
    g.add_argument("--victimhead", type=str2bool, default=False,
                   help="the attacker also gets the victim's head outputs g(h); as the reference, only with "
                        "--losshead msewithhead, which queries them anyway")

    g = p.add_argument_group("stolen model")
    g.add_argument("-a", "--arch", dest="archstolen", default=None, choices=ARCHS,
                   help="stolen architecture (default: the victim's, as its service publishes it)")
    g.add_argument("--widthstolen", type=int, default=None,
                   help="stolen width (default: the victim's, as its service publishes it)")
    g.add_argument("--losstype", default="infonce", choices=HEAD_STEAL_LOSSES, type=canonical_loss,
                   help="stealing loss between the stolen head's output and g'(h)")
    g.add_argument("--epochs", type=int, default=None, help="stealing epochs (by scale)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None, help="images per step (by scale)")
    g.add_argument("--lr", type=float, default=None, help="stealing learning rate (by scale)")
    g.add_argument("--optimizer", default=None, choices=["adam", "sgd"], help="stealing optimizer (by scale)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (used when the optimizer is sgd)")
    g.add_argument("--pairing", default="view", choices=["view", "reference"],
                   help="two-view InfoNCE/SoftNN between the stolen head and g'(h): view (ours) or the "
                        "reference's rows labelled by image (see steal.py --help)")
    g.add_argument("--fp16-precision", action="store_true",
                   help="mixed precision (float16 autocast + GradScaler) on CUDA; no effect on CPU")
    g.add_argument("--log-every-n-steps", type=int, default=50, help="TensorBoard scalar interval in steps")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--temperature", type=float, default=None, help="InfoNCE temperature (by scale)")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"], help="preset of the defaults")
    g.add_argument("--logdir", default=None,
                   help="run directory (default: runs/stealhead_<loss>_<queries>_<dataset>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_http_victim_args(p)
    add_defense_args(p, mu_default=0.0)  # the reference's stealhead: noise mean 0
    add_common_args(p)
    return p


def main(argv=None) -> Path:
    config = dict(vars(build_parser().parse_args(argv)), datasetsteal=None, force=False, stolenhead=True)
    device = setup_run(config)
    # with msewithhead the API answers both h and g(h) for each view: one query, two outputs
    answers = "representation+head" if config["losshead"] == "msewithhead" else "representation"
    victim = open_victim(config, output=answers, device=device)
    connection, victim_record = victim.connection, victim.record
    config.update(victim_record)
    config = resolve_defaults(config, config["scale"])  # --n-views has its own default (2)
    if config["victimhead"] and config["losshead"] != "msewithhead":
        raise UserError("--victimhead True gives the attacker the victim's head outputs, which only --losshead "
                        "msewithhead uses (as in the reference); add --losshead msewithhead or drop --victimhead")
    if config["n_views"] < 2:
        raise UserError(f"recreating the head compares two views of each image; use --n-views 2 "
                        f"(got {config['n_views']})")
    config["epochs_head"] = config["epochs_head"] or 2 * config["epochs"]
    if config["logdir"] is None:
        config["logdir"] = str(steal_run_dir(config["losstype"], config["num_queries"], config["dataset"],
                                             config["seed"], kind="stealhead"))
    run_dir = prepare_run_dir(config["logdir"])
    if (run_dir / "checkpoint.pt").exists() and not (config["clear"] or config["resume"]):
        raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --clear or another --logdir")
    if config["resume"] and not (run_dir / "head" / "head.pt").is_file():
        raise UserError(f"--resume True loads the recreated head from {run_dir / 'head' / 'head.pt'}, which does "
                        f"not exist; run once with --resume False (the default) to train it")
    for stale in ("queries.jsonl", "metrics.jsonl") + (() if config["resume"] else ("head/metrics.jsonl",)):
        (run_dir / stale).unlink(missing_ok=True)
    config["victim_out_dim"] = connection.out_dim
    write_config(run_dir, config)
    saved_head = load_checkpoint(run_dir / "head" / "head.pt") if config["resume"] else None
    return steal_through_recreated_head(config, connection, run_dir, get_logger(run_dir), device,
                                        saved_head=saved_head)["checkpoint"]


if __name__ == "__main__":
    run_cli(main)
