"""Classifier extraction with self-supervised pre-training (the companion study of the paper).

The victim is a *classifier* served by the victim service (a supervised model trained by
simclrsup.py, or with ``--victimtype simclr`` a SimCLR victim encoder plus a linear probe),
answering each query with ``--victim-output``:

* ``probabilities``: the full softmax (the study's setting);
* ``top5``: the 5 highest probabilities, every other class 0;
* ``logits``: the raw scores;
* ``labels``: the predicted class only (one-hot).

The attacker holds an unlabeled pool (the victim's training split by default, ``--datasetsteal``
for another) and proceeds in two stages:

1. **Pre-training**, which costs no queries (``--pretrain``): ``moco`` (MoCo v2: momentum key
   encoder ``theta_k <- m theta_k + (1 - m) theta_q``, a queue of K negatives, InfoNCE at
   temperature t), ``simsiam`` (stop-gradient, predictor, symmetric negative cosine),
   ``rotation`` (predict 0/90/180/270 degrees, the study's baseline), or ``none`` (a randomly
   initialised encoder: the supervised baseline). The pre-trained encoder is kept in
   ``--pretrained`` (default ``runs/pretrain_<method>_<pool>_<arch>_w<width>_s<seed>/checkpoint.pt``),
   made there if missing, resumed if unfinished, and shared by every query fraction.
2. **Distillation**: the victim is queried on ``--query-fraction`` of the pool (a random subset
   drawn with --seed; exactly that many queries are counted, the budget is that number) and a
   linear layer on the encoder is fine-tuned, encoder included, on the answers: soft
   cross-entropy on scores (probabilities, top5, logits at ``--distill-temperature``),
   cross-entropy on labels. Head and encoder have their own learning rates (``--lr-head``,
   ``--lr-encoder``; 0 freezes the encoder). The number of epochs scales with the fraction
   (``--pool-epochs`` passes' worth of image-steps, at most ``--max-epochs``): 20 / 200 / 1,000
   epochs at 100% / 10% / 1%, the study's schedule without pre-training, for every method.

Reported on the held-out images (the last ``--holdout`` of the task's test split, never
queried): the stolen classifier's top-1 and top-5 accuracy on the true labels and its
agreement (fidelity) with the victim's predictions, beside the victim's own accuracy.

**A victim served over HTTP** (``--victim-url URL --api-key KEY``): the classifier of ``serve.py
--victimtype supervised`` (or of ``serve.py --outputs probabilities ...``). Its card (``/v1/info``)
gives the task (the pool, unless ``--datasetsteal``), the classes and the input size (``--dataset``
and ``--image-size``, when given, must agree with it); ``--victim-output`` is the output the account
buys, and the owner's flags (``--victim-checkpoint``, ``--victimtype``) are refused. The run buys
round(fraction x pool) answers for the distillation, then the victim's answers on each distinct
held-out image, once, for its accuracy and the agreement (``evaluation_queries`` in the record;
with ``labels`` the victim's top-5 is not measurable and is recorded as null). An account whose
``/v1/usage`` cannot cover both is refused with one sentence before the first query. Pre-training
queries nothing and is the same either way; with the same seed, the run equals the in-process one.

Examples:
  python simclrsup.py --dataset mnistm5k                         # the victim classifier (once)
  python sslextract.py --pretrain moco --query-fraction 0.01     # cpu scale, offline data
  python sslextract.py --pretrain none --query-fraction 0.01 --victim-output labels
  python sslextract.py --pretrain moco --pretrain-only           # pre-train, query nothing
  python serve.py --victimtype supervised --port 8000             # the victim as a service (owner)
  python sslextract.py --victim-url http://127.0.0.1:8000 --api-key KEY --victim-output probabilities
  python scripts/tables.py sslextract --scale cpu                # the study's table, 3 seeds

Outputs in --logdir (default runs/sslextract_<method>_<fraction>_<output>_s<seed>): config.yaml,
train.log, metrics.jsonl (per epoch: loss, agreement on the batch), queries.jsonl (the query
ledger), checkpoint.pt (kind stolen-classifier) and results.json; ``--results FILE`` also
appends the record to a JSONL file that report.py reads.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from attacks.connect import VICTIM_TYPES, add_http_victim_args
from attacks.distill import DISTILL_KINDS, open_classifier, run
from attacks.pretrain import PRETRAIN, pretrain_run
from data_aug import DATASETS, dataset_info, get_dataset
from engine.presets import defaults_epilog, preset_for, pretrain_run_dir, run_dir, scale_of
from models import ARCHS, build_encoder
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    append_jsonl,
    apply_numeric_rules,
    check_writable,
    get_logger,
    parse_tags,
    pick_device,
    run_cli,
    seed_everything,
    setup_run,
    setup_threads,
    str2bool,
)

# by scale. cpu: measured on mnistm5k (28 px, ResNet18 width 8, a 3,000-image pool, seed 0; see
# docs/classifier-extraction.md): pre-training with run.py's
# cpu victim recipe (Adam 2e-3, batch 128, crops of at least 80%); MoCo needs its 60 epochs (at 20
# its features probed at 27% against 30% for random weights, at 60 at 43%); rotation sees four
# rotated copies of every image per epoch, so 20 epochs give it as many views as MoCo's 60 x 2 /
# 1.5. paper: MoCo v2's ImageNet recipe (SGD 0.03 at batch 256, 200 epochs, K 65,536, m 0.999).
PRESETS = {
    "cpu": {"pretrain_epochs": {"moco": 60, "simsiam": 60, "rotation": 20}, "pretrain_batch_size": 128,
            "pretrain_lr": 2e-3, "pretrain_optimizer": "adam", "pretrain_wd": 0.0, "crop_min_scale": 0.8,
            "hflip_p": 0.0, "moco_dim": 64, "moco_k": 512, "moco_m": 0.99, "batch_size": 64, "lr_head": 1e-3,
            "lr_encoder": 1e-3, "weight_decay": 0.0, "distill_crop_min_scale": 0.8},
    "paper": {"pretrain_epochs": 200, "pretrain_batch_size": 256, "pretrain_lr": 0.03, "pretrain_optimizer": "sgd",
              "pretrain_wd": 1e-4, "crop_min_scale": 0.2, "hflip_p": 0.5, "moco_dim": 128, "moco_k": 65536,
              "moco_m": 0.999, "batch_size": 256, "lr_head": 1e-3, "lr_encoder": 1e-4, "weight_decay": 0.0,
              "distill_crop_min_scale": 0.2},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                epilog=defaults_epilog({k: {"*": v} for k, v in PRESETS.items()}))
    g = p.add_argument_group("victim")
    g.add_argument("--victim-checkpoint", default=None,
                   help="the victim (default: simclrsup.py's default run for --dataset and --seed, or run.py's "
                        "with --victimtype simclr; not with --victim-url)")
    g.add_argument("--victimtype", default=None, choices=sorted(VICTIM_TYPES),
                   help="the owner's classifier (default supervised): supervised: a simclrsup.py checkpoint answers "
                        "with its own classifier; simclr: a run.py victim encoder with a linear probe fitted on its "
                        "dataset's train split (not with --victim-url: serve.py builds the served classifier)")
    g.add_argument("--victim-output", default="probabilities", choices=DISTILL_KINDS,
                   help="what the victim answers per query (docs/classifier-extraction.md says what each costs the "
                        "attacker); with --victim-url, the output the account buys (one the service offers it)")
    g.add_argument("--dataset", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the victim's task (default: from its checkpoint, or the card's task with --victim-url; "
                        "mnistm5k for the default path)")
    g.add_argument("--datasetsteal", default=None, choices=sorted(DATASETS), metavar="NAME",
                   help="the attacker's unlabeled pool (default: the task's train split, as the study's ImageNet)")
    g.add_argument("-data", "--data", dest="data", metavar="DIR", default=None, help="root of the real datasets")
    g.add_argument("--holdout", type=int, default=None,
                   help="evaluation images at the end of the task's test split (default 1000; never used for "
                        "distillation; with --victim-url the victim's answers on them are bought, each image once)")
    g.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the victim's, the card's input_size with --victim-url; with "
                        "--pretrain-only, the dataset's default at --scale)")
    g.add_argument("--scale", default="auto", choices=["auto", "cpu", "paper"],
                   help="defaults by scale (auto: cpu for the offline datasets, paper otherwise)")

    add_http_victim_args(p)

    g = p.add_argument_group("the attacker's encoder and its pre-training (no queries)")
    g.add_argument("--pretrain", default="moco", choices=PRETRAIN,
                   help="moco, simsiam, rotation, or none (random initialisation: the supervised baseline)")
    g.add_argument("--pretrained", default=None,
                   help="the pre-trained encoder's checkpoint: used if finished, resumed if not, made if missing "
                        "(default runs/pretrain_<method>_<pool>_<arch>_w<width>_s<seed>/checkpoint.pt)")
    g.add_argument("--pretrain-only", nargs="?", const=True, default=False, type=str2bool,
                   help="pre-train (or finish pre-training) and stop, querying nothing")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="encoder architecture (default by scale: resnet18 cpu)")
    g.add_argument("--width", type=int, default=None, help="encoder width (default by scale: 8 cpu, 64 paper)")
    g.add_argument("--stem", default=None, choices=["cifar", "imagenet"],
                   help="encoder stem (default: imagenet from 128 px, cifar below)")
    g.add_argument("--pretrain-epochs", type=int, default=None,
                   help="pre-training epochs over the pool (by scale and method: cpu moco 60, simsiam 60, "
                        "rotation 20; paper 200)")
    g.add_argument("--pretrain-batch-size", type=int, default=None, help="pre-training batch size")
    g.add_argument("--pretrain-lr", type=float, default=None, help="pre-training learning rate (cosine)")
    g.add_argument("--pretrain-optimizer", default=None, choices=["adam", "sgd"], help="pre-training optimizer")
    g.add_argument("--pretrain-wd", type=float, default=None, help="pre-training weight decay")
    g.add_argument("--crop-min-scale", type=float, default=None,
                   help="pre-training augmentation: smallest random-resized-crop area (SimCLR's colour "
                        "augmentations on top; rotation uses the same views)")
    g.add_argument("--hflip-p", type=float, default=None, help="horizontal-flip probability (pre-training "
                   "and distillation; 0 for digits)")
    g.add_argument("--moco-dim", type=int, default=None, help="MoCo: output dimension of the projection head")
    g.add_argument("--moco-k", type=int, default=None, help="MoCo: queue size K (keep it well below the pool size)")
    g.add_argument("--moco-m", type=float, default=None, help="MoCo: momentum m of the key encoder")
    g.add_argument("--moco-t", type=float, default=0.2, help="MoCo: softmax temperature t")

    g = p.add_argument_group("distillation (the queries)")
    g.add_argument("--query-fraction", type=float, default=0.01,
                   help="fraction of the pool to query (the study: 0.01, 0.1, 1.0); the budget is exactly "
                        "round(fraction x pool), at least 1")
    g.add_argument("--epochs", type=int, default=None,
                   help="distillation epochs (default: scaled with the fraction, see --pool-epochs)")
    g.add_argument("--pool-epochs", type=int, default=20,
                   help="default epochs: the image-steps of this many passes over the whole pool, at least this "
                        "many epochs (20: 20 / 200 / 1,000 epochs at 100%% / 10%% / 1%%)")
    g.add_argument("--max-epochs", type=int, default=1000, help="cap on the default number of epochs")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None, help="distillation batch size")
    g.add_argument("--lr-head", type=float, default=None, help="Adam learning rate of the linear head (cosine)")
    g.add_argument("--lr-encoder", type=float, default=None,
                   help="Adam learning rate of the encoder (0 freezes it: a linear probe on the answers)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None, help="weight decay")
    g.add_argument("--distill-temperature", type=float, default=1.0,
                   help="softmax temperature of the soft cross-entropy (logits: also applied to the answers)")
    g.add_argument("--distill-crop-min-scale", type=float, default=None,
                   help="augmentation of the queried images during distillation (random resized crops of at least "
                        "this area, after the query: the victim sees each image once, unaugmented); 1 turns it off")

    g = p.add_argument_group("outputs")
    g.add_argument("--logdir", default=None,
                   help="run directory (default runs/sslextract_<method>_<fraction>_<output>_s<seed>)")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="replace the results already in --logdir")
    g.add_argument("--results", default=None, help="also append the result record to this JSONL file")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field stored in the record (repeatable), e.g. --tag table=sslextract")
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision for pre-training (auto: on with CUDA)")
    add_common_args(p)
    return apply_numeric_rules(p)


def resolve(flags: dict | argparse.Namespace) -> dict:
    """The flags (parsed, or their dict) with every by-scale default filled in and the default paths named."""
    config = dict(vars(flags) if isinstance(flags, argparse.Namespace) else flags)
    dataset = config["dataset"] or "mnistm5k"
    scale = scale_of(config["datasetsteal"] or dataset, config["scale"])
    preset = preset_for(dataset, scale)
    for key, value in {**preset, **PRESETS[scale]}.items():
        if config.get(key) is None and key != "image_size":  # the victim's input size unless given
            config[key] = value
    if isinstance(config["pretrain_epochs"], dict):  # by method
        config["pretrain_epochs"] = config["pretrain_epochs"].get(config["pretrain"], 0) or None
    config["scale"] = scale
    if config["victimtype"] is None and not config.get("victim_url"):
        config["victimtype"] = "supervised"  # the owner's classifier; a served one is serve.py's
    if config["stem"] is None:
        config["stem"] = "imagenet" if (config["image_size"] or preset["image_size"]) >= 128 else "cifar"
    pool = config["datasetsteal"] or dataset
    if config["pretrained"] is None and config["pretrain"] != "none":
        config["pretrained"] = str(pretrain_run_dir(config["pretrain"], pool, config["arch"], config["width"],
                                                    config["seed"]) / "checkpoint.pt")
    if config["logdir"] is None:
        config["logdir"] = str(run_dir("sslextract", config["pretrain"], f"{config['query_fraction']:g}",
                                       config["victim_output"], seed=config["seed"]))
    return config


def pretrain_only(config: dict) -> str:
    """``--pretrain-only``: make (or finish) the pre-trained encoder on the pool and stop."""
    if config["pretrain"] == "none":
        raise UserError("--pretrain none has nothing to pre-train; drop --pretrain-only")
    device = pick_device(config["device"], config["gpu_index"])
    setup_threads()
    seed_everything(config["seed"])
    name = config["datasetsteal"] or config["dataset"] or "mnistm5k"
    config["dataset"] = config["dataset"] or name
    config["image_size"] = config["image_size"] or preset_for(config["dataset"], config["scale"])["image_size"]
    info = dataset_info(name)
    pool = get_dataset(name, info.train_split if name == config["dataset"] else info.query_split,
                       root=config["data"], image_size=config["image_size"])
    encoder = build_encoder(config["arch"], stem=config["stem"], width=config["width"], mean=info.mean, std=info.std)
    folder = Path(config["pretrained"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    logger = get_logger(folder)
    path = pretrain_run(config, encoder, pool, ckpt_path=config["pretrained"], device=device, logger=logger)
    print(f"pre-trained encoder ({config['pretrain']}): {path}")
    return str(path)


def main(argv=None):
    config = dict(vars(build_parser().parse_args(argv)))
    if config["pretrain_only"]:
        return pretrain_only(resolve(config))
    if config["results"]:  # before any query: a record that cannot be written would waste them
        check_writable(config["results"], what="the results file", fix="pass a writable --results PATH")
    if config["victimtype"] is None and not config.get("victim_url"):
        config["victimtype"] = "supervised"  # the owner's classifier; a served one is serve.py's
    device = setup_run(config)
    victim = open_classifier(config, device)  # its card names the task and the input size (no query)
    config = resolve({**config, "dataset": victim.card["task"], "image_size": int(victim.card["input_size"])})
    tags = parse_tags(config["tag"])
    record = run(config, victim, device)
    record.update(tags)
    if config["results"]:
        append_jsonl(config["results"], record)
    m = record["metrics"]
    print(f"\nvictim top-1 {record['victim']['top1']:.1f}% | {config['pretrain']} + distillation on "
          f"{record['queries']} queries ({100 * config['query_fraction']:g}% of {record['pool']}, "
          f"{config['victim_output']}): top-1 {m['top1']:.1f}% top-5 {m['top5']:.1f}% "
          f"agreement {m['agreement']:.1f}% (on {record['n_test']} held-out images)")
    print(f"results: {config['logdir']}/results.json" + (f" and {config['results']}" if config["results"] else ""))
    return record


if __name__ == "__main__":
    run_cli(main)
