"""Train a self-supervised victim encoder: SimCLR (InfoNCE), soft nearest neighbour or SupCon.

Examples:
  python run.py --dataset mnistm5k                      # offline data, CPU defaults, minutes
  python run.py -data DATA --dataset cifar10            # the paper's setup (GPU recommended)
  python run.py --dataset mnistm5k --resume             # continue an interrupted run
  python run.py --dataset mnistm5k --losstype softnn    # soft nearest-neighbour victim (identity = image)
  python run.py --dataset mnistm5k --losstype supcon    # supervised contrastive victim (true labels)
  python run.py --dataset mnistm5k --watermark True     # watermarked victim (runs/victimwm_...; see watermark.py)

Losses (--losstype): infonce = SimCLR's NT-Xent over the views of each image; softnn = the
soft nearest-neighbour loss over the 2B outputs of two views, the image index as identity,
temperature --temperaturesn, no normalisation; supcon = the supervised contrastive loss over
the 2B outputs of two views with the TRUE class labels, temperature --temperature, on
L2-normalised outputs (the reference forgot the normalisation in its victim path). The
per-loss defaults (learning rate, optimizer, ...) are listed at the end of --help.

The run directory (--logdir) receives, in this order: config.yaml, train.log,
metrics.jsonl (one JSON line per epoch), tb/ (TensorBoard) and checkpoint.pt (written
atomically after every epoch; `--resume` continues from it). Later scripts read the
victim with `--victim-checkpoint <logdir>/checkpoint.pt`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data_aug import SimCLRAugment, dataset_info, get_dataset
from defenses.watermark import build_predictor, predictor_dims, watermark_record, with_watermark
from engine.optim import make_optimizer
from engine.presets import add_data_args, add_model_args, defaults_epilog, resolve_scale, victim_run_dir
from models import build_encoder, build_mlp, load_checkpoint, load_state_dict_strict, save_checkpoint, simclr_head_dims
from models.checkpoint import encoder_kwargs
from simclr import VICTIM_LOSSES, Precision, SimCLRModel, epoch_batches, fit, victim_needs_labels, victim_step
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_reference_args,
    add_training_run_args,
    get_logger,
    pick_device,
    prepare_run_dir,
    run_cli,
    seed_everything,
    setup_threads,
    str2bool,
    write_config,
)

# run.py's own defaults by scale ("*") and by loss (overrides), the one place they live (see
# utils.SCALE_PRESETS for the shared ones). "paper" follows the reference's run.py: Adam 3e-4 for
# InfoNCE, Adam 1e-3 for soft-NN, SGD (momentum 0.9) with lr 0.05 for SupCon. "cpu" was measured on
# mnistm5k (28 px, width 8, 30 epochs, linear probe on the 1,000 held-out images, seeds 0-2):
# soft-NN with Adam 2e-3 reached 48.6 / 48.1 / 46.3% at T = 10 and 44.1 / 44.6 / 46.2% at the
# reference's T = 100 (Adam 1e-3: 38.0%); SupCon with SGD 0.05 sat on its plateau for 10 to 18 of
# the 30 epochs (95.4 / 82.7 / 94.1%) where Adam 2e-3 left it at once, so cpu keeps Adam for all.
PRESETS = {
    "cpu": {
        "*": {"epochs": 80, "batch_size": 128, "lr": 2e-3, "temperature": 0.2, "crop_min_scale": 0.8,
              "hflip_p": 0.0, "optimizer": "adam", "momentum": 0.9, "temperaturesn": 100.0},
        "softnn": {"temperaturesn": 10.0},
        "supcon": {"optimizer": "adam", "lr": 2e-3},
    },
    "paper": {
        "*": {"epochs": 200, "batch_size": 256, "lr": 3e-4, "temperature": 0.07, "crop_min_scale": 0.08,
              "hflip_p": 0.5, "optimizer": "adam", "momentum": 0.9, "temperaturesn": 100.0},
        "softnn": {"lr": 1e-3},
        "supcon": {"lr": 0.05, "optimizer": "sgd"},
    },
}


def presets_for(losstype: str) -> dict:
    """The by-scale defaults of a ``losstype`` victim: the scale's base, then the loss's overrides."""
    return {scale: {**table["*"], **table.get(losstype, {})} for scale, table in PRESETS.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=defaults_epilog(PRESETS))
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (by scale: cpu 80, paper 200)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None,
                   help="images per batch; each gives --n-views views (by scale: cpu 128, paper 256; "
                        "even for supcon)")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="peak learning rate of the cosine schedule (by scale and loss: infonce cpu 2e-3, "
                        "paper 3e-4; see the table at the end)")
    p.add_argument("--optimizer", default=None, choices=["adam", "sgd"],
                   help="adam, or sgd with --momentum (by scale and loss: sgd for supcon at paper scale as "
                        "the reference, else adam)")
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum, used whenever --optimizer is sgd and ignored by adam (default 0.9, "
                        "as the reference)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4,
                   help="weight decay (of Adam or SGD)")
    p.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warm-up before the cosine decay, in epochs")
    p.add_argument("--out_dim", type=int, default=128, help="output size of the projection head g")
    p.add_argument("--temperature", type=float, default=None,
                   help="InfoNCE and SupCon temperature tau (by scale: cpu 0.2, paper 0.07)")
    p.add_argument("--temperaturesn", type=float, default=None,
                   help="soft nearest-neighbour temperature T of --losstype softnn (by scale: cpu 10, "
                        "paper 100 as the reference)")
    p.add_argument("--n-views", dest="n_views", type=int, default=2,
                   help="augmented views per image (>= 2 for infonce; exactly 2 for softnn and supcon)")
    p.add_argument("--losstype", default="infonce", choices=VICTIM_LOSSES,
                   help="victim training loss: infonce (SimCLR), softnn (soft nearest neighbour, identity = "
                        "image), supcon (supervised contrastive with the true labels; needs a labelled dataset)")
    p.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest area fraction of the random resized crop (by scale: cpu 0.8, "
                        "paper 0.08 as SimCLR); on small digit images small crops keep mostly the background")
    p.add_argument("--hflip-p", type=float, default=None,
                   help="probability of a horizontal flip (by scale: cpu 0 because digits are not "
                        "mirror-symmetric, paper 0.5 as SimCLR)")
    add_training_run_args(p, logdir_default="runs/victim_<dataset>_<arch>_w<width>_s<seed>")
    g = p.add_argument_group("watermark (ownership verification; see README: Ownership)")
    g.add_argument("--watermark", type=str2bool, default=False,
                   help="train jointly with a private rotation task: each image gives a view rotated by an angle "
                        "in [0, 180) and one in [180, 360) degrees, and a two-layer MLP on the representation (the "
                        "augmentation predictor, trained with the encoder and saved in the checkpoint as the "
                        "owner's secret) says which; default run directory runs/victimwm_...")
    g.add_argument("--watermark-weight", type=float, default=1.0,
                   help="weight of the watermark cross-entropy added to the victim's loss")
    g.add_argument("--watermark-hidden", type=int, default=None,
                   help="hidden width of the augmentation predictor (default: the representation size)")
    add_reference_args(p, "entropy", "num_queries_unused")
    add_common_args(p)
    return p


def main(argv=None) -> Path:
    config = _resolve_config(build_parser().parse_args(argv))
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    if config["logdir"] is None:
        config["logdir"] = str(victim_run_dir(config["dataset"], config["seed"], config["arch"], config["width"],
                                              kind="victimwm" if config["watermark"] else "victim"))
    run_dir = prepare_run_dir(config["logdir"])
    ckpt_path = run_dir / "checkpoint.pt"
    start = _checkpoint_to_resume(run_dir, resume=config["resume"], clear=config["clear"])
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    logger.info(f"run directory {run_dir} on {device}")

    info = dataset_info(config["dataset"])
    train_set = _train_set(config, info)
    logger.info(f"{train_set!r}")
    encoder, model, head_kwargs, predictor = _build_model(config, info, start, ckpt_path, device)
    precision = Precision(device, enabled=config["amp"] == "on" or (config["amp"] == "auto" and device.type == "cuda"))
    trainable = list(model.parameters()) + (list(predictor.parameters()) if predictor is not None else [])
    optimizer = make_optimizer(config, trainable)
    augment = SimCLRAugment(config["image_size"], crop_scale=(config["crop_min_scale"], 1.0),
                            flip_p=config["hflip_p"])
    n_params = sum(p.numel() for p in encoder.parameters())
    logger.info(f"{config['arch']} width {config['width']} ({config['stem']} stem): {n_params / 1e6:.2f}M "
                f"encoder parameters, {encoder.out_dim}-d representation; amp {precision.enabled}")
    logger.info(f"loss {config['losstype']}; {config['optimizer']} lr {config['lr']:g}"
                + (f" momentum {config['momentum']:g}" if config["optimizer"] == "sgd" else ""))

    step = _train_step(config, model, augment, encoder, predictor, logger)
    fit(step=step,
        batches=epoch_batches(train_set, config["batch_size"], device, workers=config["workers"]),
        steps_per_epoch=len(train_set) // config["batch_size"],
        modules=[model] + ([predictor] if predictor is not None else []), optimizer=optimizer,
        epochs=config["epochs"], base_lr=config["lr"], warmup_epochs=config["warmup_epochs"],
        seed=config["seed"], precision=precision,
        save=_saver(ckpt_path, config, encoder, model.head, head_kwargs, predictor),
        run_dir=run_dir, logger=logger, start=start,
        desc="simclr" if config["losstype"] == "infonce" else config["losstype"],
        log_every_n_steps=config["log_every_n_steps"])
    logger.info(f"victim checkpoint: {ckpt_path}")
    return ckpt_path


def _resolve_config(args: argparse.Namespace) -> dict:
    """The run's settings: the flags with the scale's and the loss's defaults filled in, checked
    against each other (``args`` is left as parsed)."""
    config = resolve_scale(args, presets_for(args.losstype))
    if config["n_views"] < 2:
        raise UserError(f"SimCLR needs at least 2 views per image, got --n-views {config['n_views']}")
    if config["losstype"] != "infonce" and config["n_views"] != 2:
        raise UserError(f"--losstype {config['losstype']} compares exactly two views of each image; use "
                        f"--n-views 2 (got {config['n_views']})")
    if config["losstype"] == "supcon" and config["batch_size"] % 2:
        raise UserError(f"--losstype supcon needs an even -b/--batch-size (its two views are the loss's two "
                        f"blocks of rows); got {config['batch_size']}")
    if config["fp16_precision"]:
        config["amp"] = "on"
    return config


def _checkpoint_to_resume(run_dir: Path, *, resume: bool, clear: bool) -> dict | None:
    """The checkpoint in ``run_dir`` when ``resume`` asks for it, None for a fresh run; refuses to
    overwrite one unless ``clear``."""
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        return None
    if resume:
        return load_checkpoint(ckpt_path)
    if not clear:
        raise UserError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                        f"--clear to start over, or another --logdir")
    return None


def _train_set(config: dict, info):
    """The victim's training images (``info`` is the dataset's :func:`dataset_info`), checked to hold
    the labels a SupCon victim needs and at least one batch."""
    # STL10: self-supervised victims train on the 100k unlabeled split, as the reference's; SupCon needs labels
    split = info.train_split if victim_needs_labels(config["losstype"]) else info.query_split
    train_set = get_dataset(config["dataset"], split, root=config["data"],
                            image_size=config["image_size"], download=config["download"])
    if victim_needs_labels(config["losstype"]) and not info.num_classes:
        raise UserError(f"--losstype {config['losstype']} trains on the true class labels, but {config['dataset']} "
                        f"has none; use a labelled --dataset or another --losstype")
    if len(train_set) < config["batch_size"]:
        raise UserError(f"{config['dataset']} has {len(train_set)} training images, fewer than one batch "
                        f"of {config['batch_size']}; lower -b/--batch-size")
    return train_set


def _build_model(config: dict, info, start: dict | None, ckpt_path: Path, device):
    """``(encoder, model, head_kwargs, predictor)`` on ``device``: the encoder f, the model g(f(x)), the
    head's build arguments, and the watermark's augmentation predictor (None without --watermark); their
    weights come from ``start`` when resuming. Built in this order so that the initial weights draw
    from the seeded global RNG as they always have."""
    encoder = build_encoder(config["arch"], stem=config["stem"], width=config["width"],
                            mean=info.mean, std=info.std)
    head_kwargs = {"dims": simclr_head_dims(encoder.out_dim, config["out_dim"])}
    model = SimCLRModel(encoder, build_mlp(**head_kwargs))
    if start is not None:
        _check_resumable(start, encoder, config, ckpt_path)
        load_state_dict_strict(encoder, start["encoder"]["state_dict"], what="encoder")
        load_state_dict_strict(model.head, start["head"]["state_dict"], what="projection head")
    predictor = None
    if config["watermark"]:
        predictor = build_predictor(encoder.out_dim, config["watermark_hidden"])
        if start is not None:
            load_state_dict_strict(predictor, start["watermark"]["state_dict"], what="watermark predictor")
        predictor.to(device)
    model.to(device)
    return encoder, model, head_kwargs, predictor


def _check_resumable(start: dict, encoder, config: dict, ckpt_path: Path) -> None:
    """Refuse to resume the checkpoint ``start`` with flags that build another encoder or train differently."""
    if start.get("encoder", {}).get("kwargs") != encoder_kwargs(encoder):
        raise UserError(f"{ckpt_path} holds a different encoder ({start['encoder']['kwargs']}) than "
                        f"these flags build; resume with the original flags or use --clear")
    before = start.get("config") or {}
    for key, default in (("losstype", "infonce"), ("optimizer", "adam"), ("watermark", False)):
        if before.get(key, default) != config[key]:
            raise UserError(f"{ckpt_path} was trained with {key} {before.get(key, default)}, not "
                            f"{config[key]}; resume with the original flags or use --clear")


def _train_step(config: dict, model, augment, encoder, predictor, logger):
    """The victim's training step (``simclr.Step``), with the watermark's rotation task added when
    there is a ``predictor``."""
    step = victim_step(config["losstype"], model, augment, n_views=config["n_views"],
                       temperature=config["temperature"], temperaturesn=config["temperaturesn"])
    if predictor is None:
        return step
    step = with_watermark(step, encoder, predictor, config["watermark_weight"])
    logger.info(f"watermark: rotation task, weight {config['watermark_weight']:g}, predictor "
                f"{predictor_dims(encoder.out_dim, config['watermark_hidden'])}")
    return step


def _saver(ckpt_path: Path, config: dict, encoder, head, head_kwargs: dict, predictor):
    """``save(state)`` for :func:`simclr.fit`: the checkpoint at ``ckpt_path`` with the encoder, the
    projection head, the run's config, the watermark predictor (if any) and ``fit``'s state."""
    def save(state: dict) -> None:
        # the predictor's record is taken at each save: it holds the weights as they are now
        watermark = {} if predictor is None else {
            "watermark": watermark_record(predictor, encoder.out_dim, config["watermark_hidden"],
                                          config["watermark_weight"])}
        save_checkpoint(ckpt_path, encoder=encoder, head=head, head_kwargs=head_kwargs, kind="simclr",
                        dataset=config["dataset"], config=config, **state, **watermark)

    return save


if __name__ == "__main__":
    run_cli(main)
