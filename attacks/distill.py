"""Classifier extraction by distillation: fine-tune a linear layer plus an encoder on a victim's answers.

The attacker has pre-trained an encoder of its own on its unlabeled pool (``pretrain.py``,
no queries), then queries a *classifier* victim (:class:`service.victim.ClassifierBackend` behind a
:class:`service.victim.VictimService`) on a fraction of that pool (:func:`query_fraction`) and trains
:class:`Distiller` (encoder + linear head) on the answers in the one training loop
(:func:`simclr.fit` with :func:`distill_step`), with separate learning rates for the head and
the encoder (:func:`distill_optimizer`). The loss depends on what the victim answers
(:func:`distillation_loss`): soft cross-entropy on scores, cross-entropy on labels.
:func:`fidelity_and_accuracy` measures the result on held-out data: top-1/top-5 accuracy on
the true labels and agreement with the victim.
"""
from __future__ import annotations

import json
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.client import QueryClient, check_budget
from attacks.connect import OpenVictim, VictimScores, open_victim
from attacks.pretrain import pretrain_run
from data_aug import ImageSet, SimCLRAugment, dataset_info, get_dataset, split_holdout, to_float
from loss import softce
from models import build_encoder, load_encoder, save_checkpoint
from models.probe import fidelity
from simclr import Precision, fit
from utils import UserError, accuracy, atomic_write_text, get_logger, prepare_run_dir, write_config

DISTILL_KINDS = ("probabilities", "top5", "logits", "labels")


def query_fraction(pool_size: int, fraction: float) -> int:
    """The number of queries for ``fraction`` of a pool of ``pool_size`` images (nearest, at least 1)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"the query fraction must be in (0, 1], got {fraction!r}")
    if pool_size < 1:
        raise ValueError(f"the pool must hold at least one image, got {pool_size}")
    return max(1, min(pool_size, int(math.floor(pool_size * fraction + 0.5))))


def distillation_loss(logits: torch.Tensor, answers: torch.Tensor, kind: str,
                      temperature: float = 1.0) -> torch.Tensor:
    """The loss of the student's ``logits`` (``B x C``) on the victim's ``answers`` (``B x C``).

    * ``probabilities``, ``top5``: soft cross-entropy ``-(t * log_softmax(logits / T)).sum(1).mean()``
      with ``t`` the answers renormalised to sum 1 per row (for ``top5``: the kept mass);
    * ``logits``: the same with ``t = softmax(answers / T)``;
    * ``labels``: cross-entropy with the argmax of the one-hot answers (``temperature`` unused).

    No ``T**2`` factor is applied. Computed in float32 (also under autocast).
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"unknown distillation kind {kind!r}; use one of {', '.join(DISTILL_KINDS)}")
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, got {temperature}")
    logits, answers = logits.float(), answers.float()
    if kind == "labels":
        return F.cross_entropy(logits, answers.argmax(1))
    if kind == "logits":  # loss.softce: the target is softmax(answers / T)
        return softce(logits / temperature, answers, temperature=temperature)
    target = answers / answers.sum(1, keepdim=True).clamp_min(1e-12)
    return -(target * (logits / temperature).log_softmax(1)).sum(1).mean()


class Distiller(nn.Module):
    """The attacker's classifier: its encoder and a linear head, ``head(encoder(x))``.

    When the encoder is frozen (no parameter requires gradient, see :func:`distill_optimizer`)
    it stays in eval mode, so its batch-norm statistics do not drift either.
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self


def distill_optimizer(model: Distiller, *, lr_head: float, lr_encoder: float,
                      weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the head's and the encoder's own learning rates under :func:`simclr.fit`.

    The groups carry ``lr_scale`` 1.0 (head) and ``lr_encoder / lr_head`` (encoder), so that
    ``fit(base_lr=lr_head)`` gives each its own rate (times the shared cosine schedule).
    ``lr_encoder=0`` freezes the encoder: its parameters stop requiring gradient and it has no group.
    """
    if lr_head <= 0:
        raise ValueError(f"the head's learning rate must be positive, got {lr_head}")
    if lr_encoder < 0:
        raise ValueError(f"the encoder's learning rate must be non-negative, got {lr_encoder}")
    groups = [{"params": list(model.head.parameters()), "lr": lr_head, "lr_scale": 1.0, "name": "head"}]
    if lr_encoder == 0:
        model.encoder.requires_grad_(False)
        model.encoder.eval()
    else:
        model.encoder.requires_grad_(True)
        groups.append({"params": list(model.encoder.parameters()), "lr": lr_encoder,
                       "lr_scale": lr_encoder / lr_head, "name": "encoder"})
    return torch.optim.Adam(groups, lr=lr_head, weight_decay=weight_decay)


def distill_step(model: nn.Module, client, images_fn: Callable[[torch.Tensor], torch.Tensor], kind: str,
                 temperature: float = 1.0,
                 augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None):
    """A :func:`simclr.fit` step over a fixed query set: ``step(idx, generator) -> (loss, metrics, n)``.

    ``idx`` are indices into the query set and ``images_fn(idx)`` its images (float); each index
    is the query's cache key in ``client`` (a :class:`attacks.client.QueryClient`), so the first epoch
    queries each image once and later epochs reuse the answers at no cost. ``augment(x, generator)``
    runs after the query (the victim never sees the augmented copies). Metrics: ``agreement``
    (% of the batch where the student's argmax equals the victim's).
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"unknown distillation kind {kind!r}; use one of {', '.join(DISTILL_KINDS)}")

    def step(idx: torch.Tensor, generator: torch.Generator):
        x = images_fn(idx)
        answers = client.query(x, keys=[int(i) for i in idx.tolist()])
        if augment is not None:
            x = augment(x, generator)
        logits = model(x)
        loss = distillation_loss(logits, answers, kind, temperature)
        return loss, {"agreement": fidelity(logits.detach(), answers)}, x.shape[0]

    return step


@torch.no_grad()
def fidelity_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          victim_answers: torch.Tensor, *, batch_size: int = 512) -> dict:
    """On held-out data: ``top1``/``top5`` accuracy on ``labels`` and ``agreement`` with the victim (percent).

    ``images`` are float inputs for ``model``; ``victim_answers`` the victim's answers on them
    (any output kind: its argmax is the victim's prediction). top-5 uses ``k = min(5, classes)``.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = torch.cat([model(images[i:i + batch_size].to(device)).float().cpu()
                            for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)
    top1, top5 = accuracy(logits, labels.cpu(), topk=(1, 5))  # k capped at the number of classes
    return {"top1": top1, "top5": top5, "agreement": fidelity(logits, victim_answers.cpu())}


# ----------------------------------------------------------------------------- the experiment


def distill_epochs(num_queries: int, pool_size: int, *, pool_epochs: int = 20, cap: int = 1000) -> int:
    """Epochs scaled with the query fraction: as many image-steps as ``pool_epochs`` passes over the
    whole pool, at least ``pool_epochs`` and at most ``cap`` epochs.

    With the defaults this is the study's schedule without pre-training: 20 epochs at 100% of the
    pool, 200 at 10%, 1,000 (capped from 2,000) at 1%.
    """
    if num_queries < 1 or pool_size < num_queries:
        raise ValueError(f"need 1 <= queries <= pool size, got {num_queries} queries of {pool_size}")
    if pool_epochs < 1 or cap < pool_epochs:
        raise ValueError(f"need 1 <= pool_epochs <= cap, got {pool_epochs} and {cap}")
    return int(min(cap, max(pool_epochs, round(pool_epochs * pool_size / num_queries))))


def even_batches(n: int, batch_size: int):
    """``batches(epoch, generator)`` over indices ``0..n-1``, shuffled, in ``ceil(n / batch_size)``
    batches of near-equal size (no image is dropped, so epoch 1 buys every answer), and that count."""
    steps = max(1, math.ceil(n / batch_size))

    def batches(epoch: int, generator: torch.Generator):
        yield from torch.tensor_split(torch.randperm(n, generator=generator), steps)

    return batches, steps


def image_source(images, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images_fn(idx)``: float images ``idx`` of an image set on ``device``; an in-memory set is
    moved to the device once, an image folder (ImageNet) is decoded per batch."""
    if isinstance(images, ImageSet):
        x = to_float(images.images).to(device)
        return lambda idx: x[idx.to(device)]
    return lambda idx: to_float(torch.stack([images.load(int(i))[0] for i in idx])).to(device)


def query_indices(pool_size: int, num_queries: int, seed: int) -> torch.Tensor:
    """Which ``num_queries`` images of the pool the attacker pays for: a random subset drawn from
    ``seed`` (sorted), so a fraction of the pool is a sample of it rather than its first images."""
    order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))
    return order[:num_queries].sort().values


# the owner's flags of sslextract.py: with --victim-url the classifier and how it was built are serve.py's
SERVED_OWNER_FLAGS = {"victim_checkpoint": "--victim-checkpoint", "victimtype": "--victimtype"}


def open_classifier(config: dict, device: torch.device) -> OpenVictim:
    """The victim classifier of ``sslextract.py``, answering ``config["victim_output"]``: the owner's
    classifier in this process (``--victimtype``, default supervised), or one served at
    ``--victim-url`` (its task and input size come from its card).

    ``--arch``, ``--width`` and ``--stem`` name the attacker's encoder here, so they are not
    compared with the victim's; ``--dataset`` and ``--image-size`` must be the victim's task and
    input size. One :class:`utils.UserError` for an owner's flag over HTTP (``--victim-checkpoint``,
    ``--victimtype``), a service that answers an encoder, or a flag the card contradicts.
    """
    victim = open_victim(config, output=config["victim_output"], kind="classifier", device=device,
                         owner_flags=SERVED_OWNER_FLAGS, card_flags={})
    card, where = victim.card, victim.description
    if "task" not in card:
        raise UserError(f"the service {where} answers an encoder, not a classifier; serve one with "
                        f"`serve.py --victimtype supervised` (or `serve.py --outputs probabilities ...`)")
    if config.get("dataset") not in (None, card["task"]):
        raise UserError(f"--dataset {config['dataset']} differs from the task of the classifier {where} "
                        f"({card['task']}); drop --dataset")
    if config.get("image_size") not in (None, int(card["input_size"])):
        raise UserError(f"--image-size {config['image_size']} differs from the input size of the classifier {where} "
                        f"({card['input_size']}); drop --image-size (the attacker queries at the victim's size)")
    return victim


def attacker_encoder(config: dict, pool, pinfo, device: torch.device, logger) -> nn.Module:
    """The attacker's encoder: pre-trained on the whole unlabeled pool (no queries), or fresh."""
    encoder = build_encoder(config["arch"], stem=config["stem"], width=config["width"], mean=pinfo.mean,
                            std=pinfo.std)
    if config["pretrain"] == "none":
        return encoder
    path = pretrain_run(config, encoder, pool, ckpt_path=config["pretrained"], device=device, logger=logger)
    encoder, _, ckpt = load_encoder(path, arch=config["arch"], width=config["width"], stem=config["stem"])
    if ckpt.get("kind") != "pretrained" or ckpt.get("method") != config["pretrain"]:
        raise UserError(f"{path} is not a {config['pretrain']} pre-training checkpoint (it holds "
                        f"{ckpt.get('kind', 'unknown')} {ckpt.get('method', '')}); pass the right --pretrained")
    if ckpt.get("epoch") != (ckpt.get("config") or {}).get("pretrain_epochs"):
        raise UserError(f"{path} stopped at epoch {ckpt.get('epoch')}; finish it first "
                        f"(sslextract.py --pretrain {config['pretrain']} --pretrain-only)")
    return encoder


def distill(config: dict, model: Distiller, client: QueryClient, queried, *, num_classes: int, run_dir,
            logger, device: torch.device) -> None:
    """Distil the victim's answers on the ``queried`` images into ``model`` in the one training loop,
    checkpointing about 20 times in ``run_dir``."""
    epochs, size, n = config["epochs"], config["image_size"], config["num_queries"]
    optimizer = distill_optimizer(model, lr_head=config["lr_head"], lr_encoder=config["lr_encoder"],
                                  weight_decay=config["weight_decay"])
    augment = None
    if config["distill_crop_min_scale"] < 1.0:
        augment = SimCLRAugment(size, crop_scale=(config["distill_crop_min_scale"], 1.0), flip_p=config["hflip_p"],
                                jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    step = distill_step(model, client, image_source(queried, device), config["victim_output"],
                        config["distill_temperature"], augment=augment)
    batches, steps = even_batches(n, config["batch_size"])
    every = max(1, epochs // 20)  # the short runs of many epochs (1% of the pool) keep ~20 checkpoints

    def save(state: dict) -> None:
        client.end_epoch(state["epoch"])
        if state["epoch"] % every and state["epoch"] != epochs:
            return
        save_checkpoint(run_dir / "checkpoint.pt", encoder=model.encoder, head=model.head,
                        head_kwargs={"dims": [model.encoder.out_dim, num_classes]}, kind="stolen-classifier",
                        dataset=config["dataset"], config=config, queries_used=client.queries_used, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps, modules=[model], optimizer=optimizer, epochs=epochs,
        base_lr=config["lr_head"], seed=config["seed"], precision=Precision(device), save=save, run_dir=run_dir,
        logger=logger, desc=f"distill {config['pretrain']}", tensorboard=False)


def measure_victim(scores: VictimScores, x_eval: torch.Tensor, y_eval: torch.Tensor, output: str) -> tuple:
    """The victim's answers on the held-out images and its top-1 and top-5 (``None`` when only its
    bought labels are known: one-hot answers rank only the predicted class)."""
    answers = torch.cat([scores(x_eval[i:i + 512]).float().cpu() for i in range(0, len(x_eval), 512)])
    if scores.bought and output == "labels":
        return answers, accuracy(answers, y_eval, topk=(1,))[0], None
    top1, top5 = accuracy(answers, y_eval, topk=(1, 5))
    return answers, top1, top5


def run(config: dict, victim: OpenVictim, device: torch.device, *, logger=None) -> dict:
    """The whole study cell from ``sslextract.py``'s resolved flags, on an open victim classifier
    (:func:`open_classifier`): the attacker's pre-trained (or fresh) encoder, distillation on
    ``query_fraction`` of the pool through a budgeted :class:`attacks.client.QueryClient`, and the metrics
    on the held-out images. Returns the result record (also written to ``results.json``).

    The victim's side of the metrics is the owner's own classifier in this process; over HTTP it is
    bought: its answers (``victim_output``) on each distinct held-out image, once, after the
    distillation (``evaluation_queries`` in the record); the run needs ``round(fraction x pool)``
    plus that many queries, and stops before its first query when the account's ``/v1/usage``
    cannot cover them. The victim's top-1, its top-5 and the agreement come from those answers
    (identical to the owner's logits for every output but ``labels``, whose top-5 is not
    measurable and is recorded as ``None``)."""
    card = victim.card
    task, size = card["task"], int(card["input_size"])
    config.update(victim_checkpoint=victim.record["victim_checkpoint"], victimtype=victim.record.get("victimtype"),
                  dataset=task, image_size=size, **victim.served_entries)
    info = dataset_info(task)
    if not info.num_classes:
        raise UserError(f"{task} has no labels, so its victim has no classifier to extract; use a labelled dataset")
    if int(card.get("classes") or info.num_classes) != info.num_classes:
        raise UserError(f"the classifier {victim.description} answers {card['classes']} classes, but "
                        f"its task {task} has {info.num_classes}")
    train = get_dataset(task, info.train_split, root=config["data"], image_size=size)
    evaluation = split_holdout(get_dataset(task, info.test_split, root=config["data"], image_size=size),
                               config["holdout"])[1]
    pool_name = config["datasetsteal"] or task
    pinfo = dataset_info(pool_name)
    pool = train if pool_name == task else get_dataset(pool_name, pinfo.query_split, root=config["data"],
                                                       image_size=size)
    n = query_fraction(len(pool), config["query_fraction"])
    if not config["epochs"] and config["pool_epochs"] > config["max_epochs"]:
        raise UserError(f"--pool-epochs {config['pool_epochs']} is more than --max-epochs {config['max_epochs']}, the "
                        f"cap of the epoch schedule; raise --max-epochs, lower --pool-epochs or pass --epochs")
    epochs = config["epochs"] or distill_epochs(n, len(pool), pool_epochs=config["pool_epochs"],
                                                cap=config["max_epochs"])
    config.update(num_queries=n, epochs=epochs)
    x_eval, y_eval = to_float(evaluation.images).to(device), evaluation.labels
    scores = VictimScores(victim)
    n_eval = scores.cost(evaluation.images)
    check_budget(victim.connection, n + n_eval,
                 f"{n} for the distillation, round(--query-fraction x {len(pool)}), and {n_eval} to measure the "
                 f"victim on the {len(evaluation)} held-out images",
                 "lower --query-fraction or --holdout, or use an account with a larger budget "
                 "(serve.py accounts create NAME --budget N)")
    run_dir = prepare_run_dir(config["logdir"])
    if (run_dir / "results.json").exists() and not config["clear"]:
        raise UserError(f"{run_dir} already holds results; pass --clear or another --logdir")
    write_config(run_dir, config)
    logger = logger or get_logger(run_dir)
    client = QueryClient(victim.connection, budget=n, log_path=run_dir / "queries.jsonl")
    logger.info(f"victim classifier: {victim.description} ({task}, {card.get('classes')} classes); "
                f"it answers {config['victim_output']}")
    model = Distiller(attacker_encoder(config, pool, pinfo, device, logger), info.num_classes).to(device)
    queried = pool.subset(query_indices(len(pool), n, config["seed"]).tolist())
    logger.info(f"distillation: {config['pretrain']} encoder + linear head on {n} queries "
                f"({100 * config['query_fraction']:g}% of {len(pool)} {pool_name} images), {epochs} epochs, "
                f"lr head {config['lr_head']:g} encoder {config['lr_encoder']:g}")
    distill(config, model, client, queried, num_classes=info.num_classes, run_dir=run_dir, logger=logger,
            device=device)
    victim_answers, victim_top1, victim_top5 = measure_victim(scores, x_eval, y_eval, config["victim_output"])
    logger.info(f"victim classifier ({victim.description}, {task}): top-1 {victim_top1:.2f}%"
                + ("" if victim_top5 is None else f" top-5 {victim_top5:.2f}%")
                + f" on {len(y_eval)} held-out images, measured with {scores.queries_used} queries")
    metrics = fidelity_and_accuracy(model, x_eval, y_eval, victim_answers)
    record = {"pretrain": config["pretrain"], "query_fraction": config["query_fraction"],
              "queries": client.queries_used,
              "pool": len(pool), "victim_output": config["victim_output"], "epochs": epochs,
              "metrics": metrics, "victim": {"top1": victim_top1, "top5": victim_top5}, "n_test": len(y_eval),
              "seed": config["seed"], "run_dir": str(run_dir)}
    if scores.bought:
        record["evaluation_queries"] = scores.queries_used
    atomic_write_text(run_dir / "results.json", json.dumps(record, indent=2))
    return record
