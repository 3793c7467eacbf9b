"""Steal a victim encoder through its outputs.

The owner's side loads the victim into a service (``service.victim.VictimService``, with the
defenses named by ``--defenses``/``--defence``); the attacker (``attack.steal_encoder``)
holds only a connection to it, sends images through a ``attacks.client.QueryClient`` (counted,
cached, budgeted) and trains a stolen encoder so that its outputs match the answers under
a chosen loss. The training loop is ``simclr.fit``, shared with victim training.

Examples:
  python run.py --dataset mnistm5k && python steal.py --dataset mnistm5k --losstype mse --num_queries 300
  python steal.py --victim-checkpoint CKPT --datasetsteal patches --losstype infonce --num_queries 1000
  python steal.py --victim-checkpoint CKPT --losstype infonce --victimhead True --stolenhead True  # access head
  python steal.py --victim-checkpoint CKPT --losstype supcon        # two augmented views, true labels
  python steal.py --losstype infonce --n-views 2 --defenses detect --sigma 20   # a defended victim
  python steal.py --losstype infonce --n-views 2 --defenses detect --sigma 20 --accounts 8   # over 8 accounts (Sybil)

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
import json
from pathlib import Path

from attacks.connect import OWNER_FLAGS, add_http_victim_args, open_victim
from attacks.encoder import LOCAL_AUGMENTATIONS, QUERY_AUGMENTATIONS, STEAL_DEFAULTS, resolve_defaults, steal_encoder
from attacks.sybil import SPLITS, account_names, account_stats, summary, sybil_connection
from data_aug import DATASETS
from defenses import add_defense_args
from defenses.ownership import stolen_watermark
from engine.presets import defaults_epilog, steal_run_dir
from loss import LOSSES, SPECS, canonical_loss
from models import ARCHS
from service.victim import add_victim_args, load_victim
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_reference_args,
    atomic_write_text,
    get_logger,
    prepare_run_dir,
    run_cli,
    setup_run,
    str2bool,
    write_config,
)


def steal_epilog() -> str:
    """``--help``'s table of the defaults by scale and loss, and the views each loss needs."""
    two = [name for name, spec in SPECS.items() if spec.views > 1]
    return defaults_epilog(STEAL_DEFAULTS, [f"  n_views: 2 for {', '.join(two)} (the loss table), else 1"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=steal_epilog())
    g = add_victim_args(p)
    g.add_argument("-a", "--arch", dest="arch", default=None, help="the victim's architecture (same as --archvic)")
    g.add_argument("--watermark", type=str2bool, default=False,
                   help="steal a watermarked victim (run.py --watermark True; the default victim checkpoint becomes "
                        "runs/victimwm_...) and, at the end, report the stolen encoder's watermark success rate: the "
                        "owner's augmentation predictor on the stolen encoder's representations of the victim's "
                        "rotated training images (the owner's side; written to watermark.json)")

    g = p.add_argument_group("queries")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--datasetsteal", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="query dataset (default: the victim's dataset); patches = out-of-distribution photos")
    g.add_argument("--num_queries", type=int, default=None,
                   help="query budget; every view is one query (by scale: cpu 500, paper 9000 as the reference)")
    g.add_argument("--n-views", dest="n_views", type=int, default=None,
                   help="views per query image: 1 = the plain image, >1 = augmented views drawn once "
                        "(by loss; supcon, barlow and symmetrized need 2)")
    g.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest crop area of the attacker's augmented views and --local-aug copies (by "
                        "scale: paper 0.08 as SimCLR, cpu 0.8); the attacker's own choice, never the victim's")
    g.add_argument("--hflip-p", type=float, default=None,
                   help="flip probability of the attacker's augmented views (by scale: paper 0.5, cpu 0)")
    g.add_argument("--query-aug", dest="query_aug", default=None, choices=list(QUERY_AUGMENTATIONS),
                   help="what each query is: none = the plain image (needs --n-views 1), standard = a SimCLR view "
                        "(crop --crop-min-scale, flip --hflip-p, colour jitter, grayscale, blur) drawn once, rotation "
                        "= a standard view rotated by an angle uniform in [0, 360) degrees (Table 17's columns "
                        "NoAug / Standard / +Rotation; default: none with one view, standard with more)")
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
    g.add_argument("--losstype", default="infonce", choices=tuple(LOSSES), type=canonical_loss,
                   help="stealing loss (the reference's spelling wassersein is accepted for wasserstein)")
    g.add_argument("--archstolen", default=None, choices=ARCHS,
                   help="stolen architecture (default: the victim's, as its service publishes it)")
    g.add_argument("--widthstolen", type=int, default=None,
                   help="stolen encoder width (default: the victim's, as its service publishes it)")
    g.add_argument("--stolenhead", type=str2bool, default=None,
                   help="the stolen model has its own head (h -> h -> victim answer size) whose output is "
                        "matched to the answers; needed with --victimhead True (default: False)")
    g.add_argument("--epochs", type=int, default=None, help="stealing epochs over the query set (by scale)")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None,
                   help="images per step, each with its --n-views views (by scale and loss)")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="peak learning rate of the cosine schedule (by scale and loss)")
    g.add_argument("--optimizer", default=None, choices=["adam", "sgd"],
                   help="adam, or sgd with --momentum (by loss: sgd for supcon/symmetrized at paper scale)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (used when the optimizer is sgd)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--temperature", type=float, default=None, help="InfoNCE / SupCon temperature (by scale)")
    g.add_argument("--temperaturesn", type=float, default=100.0, help="soft nearest-neighbour temperature")
    g.add_argument("--pairing", default="view", choices=["view", "reference"],
                   help="two-view InfoNCE/SoftNN (--n-views 2): view = each stolen view is paired with the "
                        "victim's answer to that view, the image's other views are negatives (ours); reference "
                        "= rows labelled by image as the reference did (its InfoNCE targets the stolen anchor's "
                        "other view; see docs/differences.md, difference 1); identical with one view")
    g.add_argument("--simsiam-heads", dest="simsiam_heads", default=None, choices=["reference", "small"],
                   help="symmetrized: the attacker's SimSiam heads; reference = 3-layer projector and "
                        "d-d-d predictor (the reference), small = 2-layer projector and d-d/4-d predictor "
                        "(by scale: paper reference, cpu small)")
    g.add_argument("--out_dim", type=int, default=None,
                   help="output size of the stolen model (reference flag): it must equal the size of the "
                        "victim's answers, which is the default")
    g.add_argument("--fp16-precision", action="store_true",
                   help="mixed precision (float16 autocast + GradScaler) on CUDA; no effect on CPU")
    g.add_argument("--log-every-n-steps", type=int, default=50, help="TensorBoard scalar interval in steps")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="preset for the defaults marked 'by scale': auto = cpu for an offline victim "
                        "dataset, paper otherwise")
    g.add_argument("--logdir", default=None,
                   help="run directory (default: runs/steal_<loss>_<queries>_<querydata>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace an existing run in --logdir")
    add_http_victim_args(p)
    g = p.add_argument_group("several accounts (a Sybil attack on per-account defenses; see sybil.py)")
    g.add_argument("--accounts", type=int, default=1, metavar="K",
                   help="spread the queries over K in-process accounts of the service (attacker0 ... "
                        "attacker{K-1}; 1 = the single account 'attacker'); each account's defenses see only its "
                        "share. Over HTTP, give one API key per account instead (repeat --api-key, or one key per line "
                        "of --api-key-file or in SSLSTEAL_API_KEY; routed by --sybil-split too). Per-account "
                        "defense statistics go to accounts.json in the run directory")
    g.add_argument("--sybil-split", dest="sybil_split", default="views", choices=list(SPLITS),
                   help="how several accounts share the queries: views = the views of one image go to different "
                        "accounts, images round-robin (no account sees an image twice when K >= --n-views); "
                        "images = all views of one image to one account, images round-robin; even = each batch cut "
                        "into K contiguous parts as sent (client.SybilConnection)")
    add_defense_args(p)
    add_reference_args(p, "entropy")
    add_common_args(p)
    return p


def main(argv=None) -> Path:
    config = dict(vars(build_parser().parse_args(argv)))
    device = setup_run(config)
    if config["victim_url"] and config["accounts"] != 1:
        raise UserError("--accounts opens accounts of an in-process service; with --victim-url repeat "
                        "--api-key, or give one key per line of --api-key-file: one key per account")
    # the owner's side (its checkpoint is read there and nowhere in the attack), or a served victim
    # whose card is all we know; --victimhead True asks for head outputs (access head: an account
    # with head access); --watermark tests the owner's secret predictor, which a served victim keeps
    victim = open_victim(config, output="head" if config["victimhead"] else "representation",
                         accounts=account_names(config["accounts"]), device=device,
                         owner_flags={**OWNER_FLAGS, "watermark": "--watermark"})
    accounts, service, victim_record = victim.accounts, victim.service, victim.record
    if config["watermark"] and not victim_record["victim_watermarked"]:
        raise UserError(f"--watermark True needs a watermarked victim, but {victim_record['victim_checkpoint']} "
                        f"has no watermark predictor; drop --watermark or steal a victim trained with "
                        f"`run.py --watermark True`")
    config.update(victim_record)
    config = resolve_defaults(config, config["scale"])
    if len(accounts) > config["num_queries"]:
        raise UserError(f"{len(accounts)} accounts for {config['num_queries']} queries: some accounts would send "
                        f"nothing; lower --accounts (or the number of API keys) or raise --num_queries")
    # the routing needs the views per image (the attack sends view-major batches: attack.QueryViews.rows)
    connection = sybil_connection(accounts, config["sybil_split"], config["n_views"])
    if config["logdir"] is None:
        config["logdir"] = str(steal_run_dir(config["losstype"], config["num_queries"],
                                             config["datasetsteal"] or config["dataset"], config["seed"]))
    run_dir = prepare_run_dir(config["logdir"])
    if (run_dir / "checkpoint.pt").exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --clear or another --logdir")
    for stale in ("queries.jsonl", "metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    config["victim_out_dim"] = connection.out_dim
    if config["out_dim"] is not None and config["out_dim"] != connection.out_dim:
        raise UserError(f"--out_dim {config['out_dim']} differs from the victim's {connection.out_dim}-d answers; "
                        f"the stolen model's output must match them: drop --out_dim")
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    result = steal_encoder(config, connection, run_dir, logger, device)
    if service is not None:  # the owner's books, per account: what each account's defenses saw
        stats = account_stats(service, account_names(config["accounts"]))
        atomic_write_text(run_dir / "accounts.json", json.dumps(stats, indent=2) + "\n")
        if config["accounts"] > 1 or service.defenses:  # a lone undefended account has nothing to tell
            logger.info(f"accounts: {summary(stats)} ({run_dir / 'accounts.json'})")
    if config["watermark"]:
        # the owner's side again: its secret predictor tests the copy (the attack never sees it)
        record = stolen_watermark(load_victim(config["victim_checkpoint"]), result["checkpoint"], data=config["data"],
                                  seed=config["seed"], device=device)
        atomic_write_text(run_dir / "watermark.json", json.dumps(record, indent=2) + "\n")
        logger.info(f"Watermark accuracy is {record['wsr_stolen']:.2f}% (watermark success rate of the stolen "
                    f"encoder on {record['n_views']} rotated training views; the victim's own is "
                    f"{record['wsr_victim']:.2f}%, an unrelated encoder's about 50%): {run_dir / 'watermark.json'}")
    return result["checkpoint"]


if __name__ == "__main__":
    run_cli(main)
