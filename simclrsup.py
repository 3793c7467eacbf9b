"""Train a SUPERVISED victim: a ResNet encoder and a linear classifier, cross-entropy on the true labels.

The encoder is built exactly as run.py builds a SimCLR victim's (same -a/--arch, --width,
--stem flags); the classifier is one linear layer on the representation. Training uses
light augmentation only (random resized crops of at least --crop-min-scale of the area and
horizontal flips with --hflip-p; no colour jitter, grayscale or blur) and the one training
loop of the project (``simclr.fit``). After every epoch the classifier's top-1 accuracy on
the evaluation set (the last images of the test split, which no attack queries) is logged.

The checkpoint has ``kind: supervised`` and holds the classifier as its head, so every
script reads it like any victim: ``steal.py --victim-checkpoint <logdir>/checkpoint.pt``
steals its representation unchanged, ``linear_eval.py`` probes it, and
``steallabels.py --victimtype supervised`` / ``extract.py`` steal its own classifier.

The reference's simclrsup.py was a copy of its stealing engine specialised to supervised
victims (nothing imported it); its supervised victim itself was a CIFAR ResNet18 trained
elsewhere with SGD. Here this script TRAINS the supervised victim, and stealing one is plain
steal.py: the service answers the representation whatever trained the encoder.

Examples:
  python simclrsup.py --dataset mnistm5k                    # cpu scale, under a minute
  python simclrsup.py -data DATA --dataset cifar10 -a resnet18   # paper scale (GPU): SGD 0.1, 200 epochs
  python steal.py --victim-checkpoint runs/supervised_mnistm5k_resnet18_w8_s0/checkpoint.pt --losstype mse
  python steallabels.py --victimtype supervised --dataset mnistm5k

The run directory (--logdir, default runs/supervised_<dataset>_<arch>_w<width>_s<seed>) receives
config.yaml, train.log, metrics.jsonl (one line per epoch, with train_top1 and test_top1), tb/
and checkpoint.pt (atomically, after every epoch; --resume continues it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data_aug import SimCLRAugment, dataset_info, get_dataset, split_holdout
from engine.presets import add_data_args, add_model_args, resolve_scale, victim_run_dir
from models import EncoderWithHead, build_encoder, build_mlp, load_checkpoint, load_state_dict_strict, save_checkpoint
from models.checkpoint import encoder_kwargs
from simclr import Precision, classifier_accuracy, epoch_batches, fit, supervised_step
from utils import (
    HelpFormatter,
    UserError,
    add_common_args,
    add_training_run_args,
    get_logger,
    pick_device,
    prepare_run_dir,
    run_cli,
    seed_everything,
    setup_threads,
    write_config,
)

# simclrsup.py's own scale-dependent defaults (see utils.SCALE_PRESETS for the shared ones).
# paper: the recipe of the reference's supervised victim (kuangliu's CIFAR training: SGD lr 0.1,
# momentum 0.9, weight decay 5e-4, batch 128, 200 epochs, cosine). cpu: the same optimizer for 15
# epochs, measured on mnistm5k (28 px, width 8; test top-1 on the 1,000 held-out images, seeds 0-2):
# SGD 0.1 reached 94.4 / 93.8 / 95.5%, Adam 2e-3 92.8 / 91.6 / 92.2%; under a minute on 2 cores.
PRESETS = {
    "cpu": {"epochs": 15, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
            "weight_decay": 1e-4, "crop_min_scale": 0.8, "hflip_p": 0.0},
    "paper": {"epochs": 200, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 5e-4, "crop_min_scale": 0.8, "hflip_p": 0.5},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (by scale: cpu 15, paper 200)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=None,
                   help="images per batch (by scale: 128)")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="peak learning rate of the cosine schedule (by scale: 0.1, for SGD)")
    p.add_argument("--optimizer", default=None, choices=["adam", "sgd"],
                   help="sgd with --momentum (the default, as the reference's supervised victim), or adam")
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum, used when --optimizer is sgd (by scale: 0.9)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None,
                   help="weight decay (by scale: cpu 1e-4, paper 5e-4)")
    p.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warm-up before the cosine decay, in epochs")
    p.add_argument("--crop-min-scale", type=float, default=None,
                   help="smallest area fraction of the random resized crop (by scale: 0.8; light "
                        "augmentation, as a supervised recipe)")
    p.add_argument("--hflip-p", type=float, default=None,
                   help="probability of a horizontal flip (by scale: cpu 0 because digits are not "
                        "mirror-symmetric, paper 0.5)")
    p.add_argument("--holdout", type=int, default=None,
                   help="evaluation images at the end of the test split for the per-epoch test accuracy "
                        "(default: the dataset's evaluation set: 1000, or 200 for digits/digitsm)")
    add_training_run_args(p, logdir_default="runs/supervised_<dataset>_<arch>_w<width>_s<seed>")
    add_common_args(p)
    return p


def main(argv=None) -> Path:
    config = _resolve_config(build_parser().parse_args(argv))
    device = pick_device(config["device"], config["gpu_index"])
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    info = dataset_info(config["dataset"])
    if not info.num_classes:
        raise UserError(f"a supervised victim needs class labels, but {config['dataset']} has none; "
                        f"pick a labelled --dataset")
    if config["logdir"] is None:
        config["logdir"] = str(victim_run_dir(config["dataset"], config["seed"], config["arch"], config["width"],
                                              kind="supervised"))
    run_dir = prepare_run_dir(config["logdir"])
    ckpt_path = run_dir / "checkpoint.pt"
    start = _checkpoint_to_resume(run_dir, resume=config["resume"], clear=config["clear"])
    write_config(run_dir, config)
    logger = get_logger(run_dir)
    logger.info(f"run directory {run_dir} on {device}")

    train_set, evaluation = _datasets(config, info)
    logger.info(f"{train_set!r}; per-epoch test accuracy on {evaluation!r}")
    encoder, model, head_kwargs = _build_model(config, info, start, ckpt_path)
    model.to(device)
    precision = Precision(device, enabled=config["amp"] == "on" or (config["amp"] == "auto" and device.type == "cuda"))
    optimizer = _optimizer(config, model.parameters())
    augment = SimCLRAugment(config["image_size"], crop_scale=(config["crop_min_scale"], 1.0), flip_p=config["hflip_p"],
                            jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    n_params = sum(p.numel() for p in encoder.parameters())
    logger.info(f"supervised {config['arch']} width {config['width']} ({config['stem']} stem): "
                f"{n_params / 1e6:.2f}M encoder parameters + a {encoder.out_dim}x{info.num_classes} linear "
                f"classifier; {config['optimizer']} lr {config['lr']:g}; amp {precision.enabled}")

    def save(state: dict) -> None:
        save_checkpoint(ckpt_path, encoder=encoder, head=model.head, head_kwargs=head_kwargs,
                        kind="supervised", dataset=config["dataset"], num_classes=info.num_classes,
                        config=config, **state)

    fit(step=supervised_step(model, augment),
        batches=epoch_batches(train_set, config["batch_size"], device, workers=config["workers"]),
        steps_per_epoch=len(train_set) // config["batch_size"], modules=[model], optimizer=optimizer,
        epochs=config["epochs"], base_lr=config["lr"], warmup_epochs=config["warmup_epochs"],
        seed=config["seed"], precision=precision, save=save, run_dir=run_dir, logger=logger, start=start,
        desc="supervised", log_every_n_steps=config["log_every_n_steps"],
        evaluate=lambda epoch: {"test_top1": classifier_accuracy(model, evaluation, device)})
    logger.info(f"supervised victim checkpoint: {ckpt_path}")
    return ckpt_path


def _resolve_config(args: argparse.Namespace) -> dict:
    """The run's settings: the flags with the scale's defaults filled in (``args`` is left as parsed)."""
    config = resolve_scale(args, PRESETS)
    config["losstype"] = "ce"  # what load_victim checks --lossvictim against
    if config["fp16_precision"]:
        config["amp"] = "on"
    return config


def _checkpoint_to_resume(run_dir: Path, *, resume: bool, clear: bool) -> dict | None:
    """The supervised victim's checkpoint in ``run_dir`` when ``resume`` asks for it, None for a fresh
    run; refuses to overwrite one unless ``clear``, and to resume any other kind of checkpoint."""
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        return None
    if not resume:
        if not clear:
            raise UserError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                            f"--clear to start over, or another --logdir")
        return None
    start = load_checkpoint(ckpt_path)
    if start.get("kind") != "supervised":
        raise UserError(f"{ckpt_path} holds a {start.get('kind', 'unknown')} checkpoint, not a supervised "
                        f"victim; use --clear or another --logdir")
    return start


def _datasets(config: dict, info):
    """``(training set, evaluation set)``: the labelled training split, and the last --holdout images of
    the test split (which no attack queries) for the per-epoch test accuracy."""
    size = config["image_size"]
    train_set = get_dataset(config["dataset"], info.train_split, root=config["data"], image_size=size,
                            download=config["download"])
    evaluation = split_holdout(get_dataset(config["dataset"], info.test_split, root=config["data"],
                                           image_size=size, download=config["download"]), config["holdout"])[1]
    if len(train_set) < config["batch_size"]:
        raise UserError(f"{config['dataset']} has {len(train_set)} training images, fewer than one batch "
                        f"of {config['batch_size']}; lower -b/--batch-size")
    return train_set, evaluation


def _build_model(config: dict, info, start: dict | None, ckpt_path: Path):
    """``(encoder, model, head_kwargs)``: the encoder f and the model f + a linear classifier on its
    representation (on the CPU), with the weights of ``start`` when resuming."""
    encoder = build_encoder(config["arch"], stem=config["stem"], width=config["width"],
                            mean=info.mean, std=info.std)
    head_kwargs = {"dims": [encoder.out_dim, info.num_classes]}
    model = EncoderWithHead(encoder, build_mlp(**head_kwargs))
    if start is not None:
        if start.get("encoder", {}).get("kwargs") != encoder_kwargs(encoder):
            raise UserError(f"{ckpt_path} holds a different encoder ({start['encoder']['kwargs']}) than "
                            f"these flags build; resume with the original flags or use --clear")
        load_state_dict_strict(encoder, start["encoder"]["state_dict"], what="encoder")
        load_state_dict_strict(model.head, start["head"]["state_dict"], what="classifier")
    return encoder, model, head_kwargs


def _optimizer(config: dict, params) -> torch.optim.Optimizer:
    """SGD with momentum (the supervised recipe) or Adam, at the schedule's peak lr."""
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"])
    return torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])


if __name__ == "__main__":
    run_cli(main)
