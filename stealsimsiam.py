"""Steal an ImageNet SimSiam encoder (paper Tables 3 and 8): the reference's stealsimsiam.py.

The victim is a SimSiam checkpoint named by --pretrained (the published ResNet50 format:
`module.encoder.*` backbone, its projector `module.encoder.fc.*` dropped, `module.predictor.*`
ignored; ImageNet's normalisation), served through the project's victim interface: 2048-d
representations. --num_queries images of the query set (--datasetsteal) are each asked once,
in total over all processes; the stolen encoder then trains on the answers for --epochs with
SGD (LARS with --lars), learning rate --lr x --batch-size / 256, cosine per step. See
attacks/imagenet.py for the details and docs/imagenet.md for the numbers.

Examples:
  # the reference README's command (one process; needs ImageNet under -data DIR/imagenet/train)
  python stealsimsiam.py --world-size -1 --rank 0 --pretrained models/checkpoint_0099-batch256.pth.tar \\
      --batch-size 512 --lr 0.1 --lars --losstype infonce --datasetsteal imagenet --workers 8 \\
      --num_queries 100000 --temperature 0.1 --data /datasets
  # the same on 8 GPUs of one machine (--batch-size stays the global batch)
  torchrun --nproc_per_node 8 stealsimsiam.py --pretrained CKPT --batch-size 512 --lars ...
  # two machines of 8 GPUs: run this on each, R = 0 and 1
  torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
      stealsimsiam.py --pretrained CKPT ...
  # CPU stand-in (scripts/table3.sh --scale cpu): 2 processes with gloo
  torchrun --nproc_per_node 2 stealsimsiam.py --pretrained runs/imagenet_cpu/simsiam_victim.pth.tar \\
      --data runs/imagenet_cpu --datasetsteal imagenet --image-size 28 --num_queries 2000 -b 64 --epochs 20

A victim served over HTTP (serve.py, e.g. `serve.py --pretrained CKPT`): --victim-url URL --api-key KEY
instead of --pretrained. The victim's architecture, width, stem and input size come from its card
(/v1/info; --image-size, if given, must equal the served input size); the job's --num_queries is
checked against the account's /v1/usage before the first query (under torchrun every process opens
its own connection with the same key and asks its share; the ledger counts the total exactly).
Queries travel as uint8: images read at --image-size (an ImageFolder such as ImageNet's) go
exactly; a query set at another resolution is resized here to float views that are rounded to
the nearest of 256 levels when sent, so the victim answers the rounded view. The stolen encoder's
augmentations stay on this side and cost no query.
  python serve.py --pretrained models/checkpoint_0099-batch256.pth.tar --max-body-mb 64 --port 8000
  python stealsimsiam.py --victim-url http://127.0.0.1:8000 --api-key sk-... --datasetsteal imagenet \\
      --data /datasets --num_queries 100000 --batch-size 512 --lars --losstype infonce --temperature 0.1

Under torchrun every process reads the same flags; rank 0 alone logs and writes. The run
directory gets config.yaml, train.log, metrics.jsonl, queries.json, answers.pt (the victim's
answers, so a resumed run asks nothing again) and checkpoint.pt (the stolen encoder, after
every epoch). Resume after an interruption with --resume (the same flags otherwise).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from attacks.connect import add_http_victim_args, open_victim
from attacks.imagenet import STEAL_LOSSES, steal
from data_aug import DATASETS
from engine.distributed import add_job_args, default_workers, launch, quiet_logger, run_ranks
from engine.presets import stealsimsiam_run_dir
from models import ARCHS, STEMS, load_checkpoint
from utils import (
    HelpFormatter,
    UserError,
    add_reference_args,
    atomic_write_text,
    get_logger,
    prepare_run_dir,
    run_cli,
    seed_everything,
    setup_threads,
    str2bool,
    write_config,
)

# flags a resumed run must share with the run it continues
RESUME_KEYS = ("losstype", "num_queries", "datasetsteal", "useval", "batch_size", "seed", "arch", "width",
               "image_size", "epochs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("victim")
    g.add_argument("--pretrained", default="",
                   help="the victim's checkpoint: the published SimSiam format (e.g. checkpoint_0099-batch256.pth.tar) "
                        "or any checkpoint of this project (the reference ignored this flag and used a hard-coded "
                        "path); with --victim-url the victim is the served one and this flag is refused")

    add_http_victim_args(p)

    g = p.add_argument_group("queries")
    g.add_argument("--data", "-data", dest="data", metavar="DIR", default=None,
                   help="root of the real datasets: ImageNet as DIR/imagenet/{train,val}/<class>/<image> (see "
                        "docs/benchmark.md, Data)")
    g.add_argument("--datasetsteal", default="cifar10", choices=sorted(DATASETS), metavar="NAME",
                   help="query set: imagenet (train/ folder, val/ with --useval True), cifar10, cifar100, svhn, stl10 "
                        "(its unlabeled split) as in the paper, or any other dataset of the project")
    g.add_argument("--num_queries", type=int, default=50000,
                   help="query budget: this many images of the query set (drawn with --seed), each asked once in "
                        "total over all processes")
    g.add_argument("--useval", type=str2bool, default=False,
                   help="query the test split (ImageNet's val/) instead of the train split")
    g.add_argument("--useaug", type=str2bool, default=True,
                   help="the stolen encoder sees a fresh SimCLR augmentation of each queried image every epoch "
                        "(crop, flip, colour jitter, grayscale, blur on the raw image; costs no query); the victim's "
                        "answer stays that of the plain image")
    g.add_argument("--crop-min-scale", dest="crop_min_scale", type=float, default=0.08,
                   help="with --useaug True: the smallest crop area of the random resized crop (0.08 = SimCLR's and "
                        "the reference's; the CPU stand-in of the tables uses 0.8 for 28 px digits)")
    g.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="resolution of the queries and of the stolen encoder's inputs (default: the victim's, 224 "
                        "for SimSiam; with --victim-url the served input size, which it must equal); query images "
                        "of another size are resized on the device")

    g = p.add_argument_group("stolen encoder and training")
    g.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="stolen architecture (default: the victim's, resnet50 for SimSiam)")
    g.add_argument("--width", type=int, default=None, help="stolen encoder width (default: the victim's, 64)")
    g.add_argument("--stem", default=None, choices=STEMS, help="stolen encoder stem (default: the victim's)")
    g.add_argument("--losstype", default="mse", choices=STEAL_LOSSES,
                   help="stealing loss (the loss table's single-view losses that need no labels)")
    g.add_argument("--temperature", type=float, default=0.07, help="InfoNCE temperature (the README used 0.1)")
    g.add_argument("--temperaturesn", type=float, default=1000.0, help="soft nearest-neighbour temperature")
    g.add_argument("--epochs", type=int, default=100, help="training epochs over the answered queries")
    g.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=128,
                   help="global batch over all processes (each gets batch / world size)")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1,
                   help="base learning rate; the peak is lr x batch / 256, then a cosine per step to 0")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.0, help="weight decay")
    g.add_argument("--lars", action="store_true",
                   help="LARS: SGD with the layer-wise trust ratio of apex's LARC (trust 0.001, eps 1e-8; lars.py)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision on CUDA: auto = bf16 autocast; CPU always runs fp32")
    g.add_argument("--channels-last", dest="channels_last", default="auto", choices=["auto", "on", "off"],
                   help="channels_last memory format on CUDA (auto = on); no effect on CPU")
    g.add_argument("-p", "--print-freq", dest="print_freq", type=int, default=10,
                   help="TensorBoard step-scalar interval in steps (progress is shown by a bar)")

    g = p.add_argument_group("run directory")
    g.add_argument("--logdir", default=None,
                   help="run directory (default: runs/stealsimsiam_<loss>_<queries>_<querydata>_s<seed>)")
    g.add_argument("--resume", nargs="?", const="auto", default="",
                   help="continue from <logdir>/checkpoint.pt (or from this checkpoint path) with its answers.pt: "
                        "no query is asked again")
    g.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                   help="start over in a run directory that already holds a run")

    g = add_reference_args(p, "epochstrain_unused", "epochssteal")
    g.add_argument("--start-epoch", dest="start_epoch", type=int, default=0,
                   help="no effect: a resumed run continues from its checkpoint's epoch")
    g.add_argument("--dataset", default="cifar10",
                   help="no effect: the reference only read it in its --useval check")
    g.add_argument("-e", "--evaluate", action="store_true", help="no effect: the reference never read it")
    add_job_args(p)
    return p


def _run_dir(config: dict) -> Path:
    if config["resume"] not in ("", "auto") and config["logdir"] is None:
        return Path(config["resume"]).parent
    if config["logdir"]:
        return Path(config["logdir"])
    return stealsimsiam_run_dir(config["losstype"], config["num_queries"], config["datasetsteal"], config["seed"])


def _resume_state(config: dict, run_dir: Path):
    ckpt_path = run_dir / "checkpoint.pt" if config["resume"] in ("", "auto") else Path(config["resume"])
    if not config["resume"]:
        if (run_dir / "checkpoint.pt").exists() and not config["clear"]:
            raise UserError(f"{run_dir} already holds a stolen checkpoint; pass --resume to continue it, --clear to "
                            f"start over, or another --logdir")
        return None
    if not ckpt_path.is_file():
        return None  # nothing to resume yet (e.g. killed during the query pass): start, reusing answers.pt
    ckpt = load_checkpoint(ckpt_path)
    before = ckpt.get("config") or {}
    changed = [k for k in RESUME_KEYS if k in before and before[k] != config[k]]
    if changed:
        raise UserError(f"--resume continues {ckpt_path}, which ran with other " + ", ".join(
            f"{k} ({before[k]} vs {config[k]})" for k in changed) + "; use the original flags or --clear")
    return ckpt


def run(config: dict, dist) -> dict:
    """One process's part of the job (every rank runs it)."""
    setup_threads()
    seed_everything(config["seed"])
    # the published checkpoint (--pretrained) in this process, or a victim served by serve.py (every
    # rank opens its own connection): -a/--arch, --width and --stem name the *stolen* encoder here,
    # so they are not checked against the card, but --image-size must be the size a served victim accepts
    victim = open_victim(config, output="representation", kind="pretrained", device=dist.device,
                         owner_flags={"pretrained": "--pretrained"}, card_flags={})
    card = victim.card
    if victim.url and config.get("image_size") not in (None, card["input_size"]):
        raise UserError(f"--image-size {config['image_size']} differs from the {card['input_size']} px images the "
                        f"victim {victim.description} accepts; drop --image-size (or serve the victim "
                        f"with `serve.py --input-size {config['image_size']}`)")
    config.update(victim.served_entries)
    for key, value in (("arch", card["arch"]), ("width", card["width"]), ("stem", card["stem"]),
                       ("image_size", card["input_size"])):
        if config.get(key) is None:
            config[key] = value
    if config["workers"] is None:
        config["workers"] = default_workers(dist)
    config.update(world_size_used=dist.world_size, device=str(dist.device),
                  victim_checkpoint=victim.record["victim_checkpoint"])
    run_dir = _run_dir(config)
    config["logdir"] = str(run_dir)
    resume = _resume_state(config, run_dir)
    if dist.is_main:
        prepare_run_dir(run_dir)
        if config["clear"] and not config["resume"]:
            for stale in ("checkpoint.pt", "answers.pt", "metrics.jsonl", "queries.json"):
                (run_dir / stale).unlink(missing_ok=True)
        write_config(run_dir, config)
    dist.barrier()
    logger = get_logger(run_dir) if dist.is_main else quiet_logger()
    result = steal(config, victim.connection, dist, run_dir, logger, resume=resume)
    if dist.is_main:
        record = {"queries_used": result["queries_used"], "budget": config["num_queries"],
                  "per_rank": result["per_rank"], "processes": dist.world_size}
        atomic_write_text(run_dir / "queries.json", json.dumps(record, indent=2) + "\n")
    return result


def main(argv=None):
    config = dict(vars(build_parser().parse_args(argv)))
    out = {}

    def body(dist):
        out.update(run(config, dist))

    launch(lambda: run_ranks(body, config), config)
    return out.get("checkpoint")


if __name__ == "__main__":
    run_cli(main)
