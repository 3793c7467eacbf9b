"""A legitimate customer of the victim's API: what a defense costs the people it should not hurt.

The customer queries the victim service (through the same defenses an attacker would face)
on the query pool's images (the victim dataset's test split without its evaluation
holdout, as the reference's legitimate.py), trains a two-layer network
``Linear(D, D) - ReLU - Linear(D, classes)`` on the answers with the true labels (Adam,
``--lrhead``), and is tested on the holdout, whose answers also come through the service
and its defenses (as in the reference). The paper's Tables 10-12 put this accuracy beside
the adversary's (a stolen encoder's linear probe): ``scripts/defenses.py`` runs both.

As the reference, ``--defence True`` picks similar-query detection when ``--losstype`` is
infonce or softnn (the loss the adversary uses) and noise otherwise; ``--defenses`` names
the chain explicitly. Results: results.json in the run directory, printed, and one record
appended to ``--results`` when given (with its ``--tag`` fields).

Over HTTP (``--victim-url URL --api-key KEY``) the customer is an account of a victim served by
``serve.py``, whose defenses are the server's; its queries are at most what the account has
left (``/v1/usage``), and a run that needs more stops before its first query.

Examples:
  python legitimate.py --dataset mnistm5k --defenses noise --mu 10 --sigma 2
  python legitimate.py --victim-checkpoint CKPT --defence True --losstype infonce --sigma 20
  python legitimate.py --victim-url http://127.0.0.1:8000 --api-key KEY --num_queries 500
"""
from __future__ import annotations

import argparse
import json
import time

from attacks.connect import add_http_victim_args, open_victim
from attacks.encoder import legitimate_user
from defenses import add_defense_args
from engine.presets import run_dir
from loss import LOSSES, canonical_loss
from service.victim import add_victim_args
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_reference_args,
    append_jsonl,
    atomic_write_text,
    check_writable,
    get_logger,
    parse_tags,
    prepare_run_dir,
    run_cli,
    setup_run,
    str2bool,
    write_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_victim_args(p, head_flag=False)
    g = p.add_argument_group("the legitimate user")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--num_queries", type=int, default=9000,
                   help="training images queried (at most the query pool: 1,000 for the offline sets); the "
                        "holdout's answers are queried too")
    g.add_argument("--holdout", type=int, default=None,
                   help="evaluation images at the end of the test split (default: the dataset's evaluation set)")
    g.add_argument("--losstype", default="infonce", choices=tuple(LOSSES), type=canonical_loss,
                   help="the adversary's loss: with --defence True it picks the defense (detection against "
                        "infonce/softnn, noise otherwise), as in the reference")
    g.add_argument("--epochs", type=int, default=100, help="training epochs of the two-layer network")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=64, help="batch size")
    g.add_argument("--lrhead", type=float, default=1e-3, help="Adam learning rate of the two-layer network")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="preset of the defaults marked 'by scale' (detection thresholds)")
    g.add_argument("--logdir", default=None, help="run directory (default: runs/legitimate_<dataset>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    g.add_argument("--results", default=None, help="append one JSON record to this file")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in the record (repeatable), e.g. --tag table=table10")
    g.add_argument("--n-views", dest="n_views", type=int, default=1,
                   help="views per image; the legitimate user queries each image once, so only 1 applies")
    g.add_argument("--fp16-precision", action="store_true",
                   help="mixed precision (float16 autocast + GradScaler) on CUDA; no effect on CPU")
    add_http_victim_args(p)
    add_defense_args(p)
    add_reference_args(p, "arch_unused", "lr_unused", "out_dim_unused", "log_every_n_steps", "temperature_unused",
                       "tempsn", "losshead", "resume_unused", "victimhead_unused")
    add_common_args(p)
    return p


def main(argv=None) -> dict:
    config = dict(vars(build_parser().parse_args(argv)))
    if config["n_views"] != 1:
        raise UserError(f"a legitimate user queries each image once: --n-views must be 1 (got {config['n_views']})")
    tags = parse_tags(config["tag"])
    if config["results"]:  # before any query: a record that cannot be written would waste them
        check_writable(config["results"], what="the results file", fix="pass a writable --results PATH")
    device = setup_run(config)
    # a customer of the victim; served elsewhere, the server's defenses apply
    victim = open_victim(config, output="representation", accounts=("legitimate",), device=device)
    connection, victim_record = victim.connection, victim.record
    config.update(victim_record)
    if config["logdir"] is None:
        config["logdir"] = str(run_dir("legitimate", config["dataset"], seed=config["seed"]))
    out_dir = prepare_run_dir(config["logdir"])
    if (out_dir / "results.json").exists() and not config["clear"]:
        raise UserError(f"{out_dir} already holds results; pass --clear or another --logdir")
    write_config(out_dir, config)
    logger = get_logger(out_dir)
    names = [d["name"] if isinstance(d, dict) else d for d in config["defenses"]] or ["none"]
    logger.info(f"legitimate user of a {config['arch']} victim on {config['dataset']}, defenses: {', '.join(names)}")
    metrics = legitimate_user(config, connection, out_dir, logger, device)
    atomic_write_text(out_dir / "results.json", json.dumps(metrics, indent=2))
    print(f"legitimate user: top-1 {metrics['top1']:.2f}% on {metrics['n_test']} held-out images "
          f"({metrics['n_train']} training queries; defenses: {', '.join(names)})")
    if config["results"]:
        append_jsonl(config["results"], {**tags, "role": "legitimate", "defenses": config["defenses"],
                                         "seed": config["seed"], "metrics": metrics,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return metrics


if __name__ == "__main__":
    run_cli(main)
