"""Self-supervised pre-training of the attacker's own encoder (the classifier-extraction study).

Before paying for a single query, an attacker can pre-train an encoder on its unlabeled pool;
each method here is one more ``step`` for the one training loop (``simclr.fit``):

* ``moco`` (MoCo v2, He et al. 2020; Chen et al. 2020): a query encoder and a momentum key
  encoder, ``theta_k <- m * theta_k + (1 - m) * theta_q`` before each step; a queue of the ``K``
  most recent keys serves as negatives; InfoNCE over the positive key and the queue:
  ``L = -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_i exp(q.n_i / tau))`` with ``q``, ``k`` and
  the queue L2-normalised.
* ``simsiam`` (Chen & He 2021): shared-weight encoder, projector and predictor; symmetric negative
  cosine with stop-gradient on the targets (``loss.symmetrized``).
* ``rotation`` (RotNet, Gidaris et al. 2018, the study's baseline): each image is seen at 0, 90,
  180 and 270 degrees (counter-clockwise) and a linear head predicts which.
* ``none``: no pre-training (the supervised baseline starts from random weights).

:data:`PRETRAIN` is the registry; ``build_pretrainer(name, encoder, augment, ...)`` returns the
modules to train and the step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.encoder import SimSiamStealer
from data_aug import NViews, SimCLRAugment, to_float
from loss import symmetrized
from models import build_mlp, load_checkpoint, load_state_dict_strict, save_checkpoint
from models.checkpoint import encoder_kwargs
from simclr import Precision, epoch_batches, fit
from utils import UserError, write_config

# ----------------------------------------------------------------------------- MoCo


class MoCoQueue:
    """A ring buffer of the ``size`` most recent keys (``size x dim``, L2-normalised rows).

    ``enqueue(keys)`` writes the batch at the pointer, wrapping around the end, and moves the
    pointer by the batch size; the oldest keys are overwritten first. It starts with random
    unit vectors, as MoCo's does.
    """

    def __init__(self, dim: int, size: int, *, generator: Optional[torch.Generator] = None,
                 device: torch.device | str = "cpu"):
        if size < 1 or dim < 1:
            raise ValueError(f"a MoCo queue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)
        self.ptr = 0

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = keys.detach().to(self.keys.device, self.keys.dtype)
        n = keys.shape[0]
        if n > self.size:  # only the newest ``size`` keys can stay
            keys, n = keys[-self.size:], self.size
        idx = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[idx] = keys
        self.ptr = (self.ptr + n) % self.size

    def state_dict(self) -> dict:
        return {"keys": self.keys.clone(), "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        self.keys.copy_(state["keys"])
        self.ptr = int(state["ptr"])


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """``theta_k <- m * theta_k + (1 - m) * theta_q`` for every parameter; buffers (BatchNorm
    statistics) are copied from the query model."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"the momentum must be in [0, 1], got {m}")
    for pk, pq in zip(key.parameters(), query.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
    for bk, bq in zip(key.buffers(), query.buffers()):
        bk.copy_(bq)


def moco_loss(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: row ``i`` of ``q`` against its positive key ``k_i`` and the ``negatives``
    (all L2-normalised here); the mean over rows of ``-log softmax([q.k+, q.n_1..K] / tau)[0]``."""
    q, k, negatives = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(negatives, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.t()], dim=1) / temperature
    return F.cross_entropy(logits.float(), torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCo(nn.Module):
    """Query encoder ``f_q`` with its projector, and a momentum copy ``f_k`` that gets no gradient."""

    def __init__(self, encoder: nn.Module, dim: int = 128, hidden: Optional[int] = None):
        super().__init__()
        d = encoder.out_dim
        self.query = nn.Sequential(encoder, build_mlp([d, hidden or d, dim]))  # MoCo v2's 2-layer head
        self.key = copy.deepcopy(self.query).requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        return self.query[0]


def moco_step(model: MoCo, augment: Callable, queue: MoCoQueue, *, momentum: float = 0.999,
              temperature: float = 0.2):
    """One MoCo v2 step: momentum update of the key encoder, two views, InfoNCE against the queue,
    then the new keys join the queue."""
    views_of = NViews(augment, 2)

    def step(batch, generator: torch.Generator):
        x1, x2 = views_of(batch[0], generator)
        momentum_update(model.key, model.query, momentum)
        q = model.query(x1)
        with torch.no_grad():
            k = F.normalize(model.key(x2).float(), dim=1)
        loss = moco_loss(q.float(), k, queue.keys, temperature)
        queue.enqueue(k)
        return loss, {}, 2 * x1.shape[0]

    return step


# ----------------------------------------------------------------------------- SimSiam


def simsiam_model(encoder: nn.Module) -> SimSiamStealer:
    """SimSiam's encoder, projector (BN after every layer, the last one affine-free) and bottleneck
    predictor (d -> d/4 -> d): the model the attacker already uses to steal with ``symmetrized``
    (``attacks.encoder.SimSiamStealer`` with its small heads)."""
    return SimSiamStealer(encoder, encoder.out_dim, "small")


def simsiam_step(model: SimSiamStealer, augment: Callable):
    """One SimSiam step: ``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2`` on two views."""
    views_of = NViews(augment, 2)

    def step(batch, generator: torch.Generator):
        x1, x2 = views_of(batch[0], generator)
        b = x1.shape[0]
        z = model.projector(model.encoder(torch.cat([x1, x2])))
        p = model.predictor(z)
        loss = symmetrized(p[:b].float(), p[b:].float(), z1=z[:b].float(), z2=z[b:].float())
        return loss, {}, 2 * b

    return step


# ----------------------------------------------------------------------------- rotation


ROTATIONS = (0, 90, 180, 270)


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at 0, 90, 180 and 270 degrees counter-clockwise (rotation-major: all images at
    0 degrees first) and the labels 0..3 naming the rotation."""
    out = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(len(ROTATIONS))])
    labels = torch.arange(len(ROTATIONS), device=images.device).repeat_interleave(images.shape[0])
    return out, labels


class RotationNet(nn.Module):
    """Encoder and a linear head over the four rotations."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, len(ROTATIONS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def rotation_step(model: RotationNet, augment: Optional[Callable] = None):
    """One rotation-prediction step: (optionally augmented) images at the four rotations, cross-entropy;
    reports the batch's rotation accuracy (%) as ``rotation_top1``."""
    def step(batch, generator: torch.Generator):
        x = augment(batch[0], generator) if augment is not None else to_float(batch[0])
        rotated, labels = rotations(x)
        logits = model(rotated).float()
        loss = F.cross_entropy(logits, labels)
        top1 = (logits.detach().argmax(1) == labels).float().mean().item() * 100.0
        return loss, {"rotation_top1": top1}, rotated.shape[0]

    return step


# ----------------------------------------------------------------------------- the registry


@dataclass
class Pretrainer:
    """What ``simclr.fit`` needs for one method: the modules to train (put on the device and in train
    mode) and the step; ``state()`` returns what a checkpoint keeps beyond the modules (the MoCo
    queue) and ``load(state)`` puts it back."""
    name: str
    model: Optional[nn.Module]
    step: Optional[Callable]
    state: Callable[[], dict]
    load: Callable[[dict], None] = lambda state: None


PRETRAIN = ("moco", "simsiam", "rotation", "none")


def build_pretrainer(name: str, encoder: nn.Module, augment: Callable, *, device: torch.device | str = "cpu",
                     seed: int = 0, moco_dim: int = 128, moco_queue: int = 4096, moco_momentum: float = 0.999,
                     temperature: float = 0.2) -> Pretrainer:
    """The pre-training method ``name`` (one of :data:`PRETRAIN`) around ``encoder``."""
    if name == "moco":
        model = MoCo(encoder, dim=moco_dim).to(device)
        queue = MoCoQueue(moco_dim, moco_queue, generator=torch.Generator().manual_seed(seed), device=device)
        return Pretrainer(name, model, moco_step(model, augment, queue, momentum=moco_momentum,
                                                 temperature=temperature),
                          lambda: {"moco_queue": queue.state_dict()},
                          lambda state: queue.load_state_dict(state["moco_queue"]))
    if name == "simsiam":
        model = simsiam_model(encoder).to(device)
        return Pretrainer(name, model, simsiam_step(model, augment), dict)
    if name == "rotation":
        model = RotationNet(encoder).to(device)
        return Pretrainer(name, model, rotation_step(model, augment), dict)
    if name == "none":
        return Pretrainer(name, None, None, dict)
    raise ValueError(f"unknown pre-training method {name!r}; choose one of {', '.join(PRETRAIN)}")


# ----------------------------------------------------------------------------- a pre-training run


def pretrain_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    """Adam, or SGD with ``momentum``, over the parameters that train (not MoCo's key encoder)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def pretrain_run(config: dict, encoder: nn.Module, pool, *, ckpt_path, device: torch.device, logger) -> Path:
    """Pre-train ``encoder`` in place with ``config["pretrain"]`` on the unlabeled ``pool`` (no query
    is spent) and write the checkpoint ``ckpt_path`` (``kind: pretrained``; its folder is the run
    directory, with config.yaml and metrics.jsonl) after every epoch.

    A finished checkpoint with the same method and encoder is loaded and returned as is; an
    unfinished one is resumed. ``config`` holds the ``pretrain_*`` flags of ``sslextract.py``
    (epochs, batch size, lr, optimizer, weight decay), ``crop_min_scale``, ``hflip_p``, the
    MoCo flags (``moco_dim``, ``moco_k``, ``moco_m``, ``moco_t``), ``seed``, ``workers``, ``amp``.
    """
    method, ckpt_path = config["pretrain"], Path(ckpt_path)
    run_dir = ckpt_path.parent
    if method == "none":
        raise ValueError("pre-training 'none' has nothing to train")
    augment = SimCLRAugment(config["image_size"], crop_scale=(config["crop_min_scale"], 1.0),
                            flip_p=config["hflip_p"])
    pre = build_pretrainer(method, encoder, augment, device=device, seed=config["seed"],
                           moco_dim=config["moco_dim"], moco_queue=config["moco_k"],
                           moco_momentum=config["moco_m"], temperature=config["moco_t"])
    keys = ("pretrain", "arch", "width", "stem", "image_size", "crop_min_scale", "hflip_p", "seed", "moco_dim",
            "moco_k", "moco_m", "moco_t", "pretrain_batch_size", "pretrain_lr", "pretrain_optimizer", "pretrain_wd")
    run_config = {"pool": config.get("datasetsteal") or config["dataset"], **{k: config.get(k) for k in keys},
                  "pretrain_epochs": config["pretrain_epochs"]}
    start = None
    if ckpt_path.exists():
        start = load_checkpoint(ckpt_path)
        if start.get("kind") != "pretrained" or start.get("method") != method:
            raise UserError(f"{ckpt_path} holds a {start.get('kind', 'unknown')} checkpoint "
                            f"({start.get('method', 'no method')}), not {method} pre-training; "
                            f"pass another --pretrained path or remove the file")
        if start["encoder"]["kwargs"] != encoder_kwargs(encoder):
            raise UserError(f"{ckpt_path} holds a different encoder ({start['encoder']['kwargs']}) than these "
                            f"flags build; use the flags it was made with or another --pretrained path")
        made_with = start.get("config") or {}
        differ = [k for k in run_config if k != "pretrain_epochs" and made_with.get(k) != run_config[k]]
        if differ:
            raise UserError(f"{ckpt_path} was pre-trained with other settings ("
                            + ", ".join(f"{k} {made_with.get(k)!r} here {run_config[k]!r}" for k in differ)
                            + "); pass those flags, or another --pretrained path for these")
        load_state_dict_strict(pre.model, start["pretrainer"], what=f"{method} pre-training model")
        pre.load(start.get("extra", {}))
        if start.get("epoch") == config["pretrain_epochs"]:
            logger.info(f"{method} pre-training already finished: {ckpt_path}")
            return ckpt_path
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, run_config)
    if len(pool) < config["pretrain_batch_size"]:
        raise UserError(f"the pool has {len(pool)} images, fewer than one pre-training batch of "
                        f"{config['pretrain_batch_size']}; lower --pretrain-batch-size")
    if method == "moco" and config["moco_k"] >= len(pool):
        logger.warning(f"the MoCo queue ({config['moco_k']} keys) is not smaller than the pool ({len(pool)} "
                       f"images): the queue then holds stale keys of the very images it must tell apart")
    optimizer = pretrain_optimizer(pre.model, config["pretrain_optimizer"], config["pretrain_lr"],
                                   config["pretrain_wd"])
    precision = Precision(device, enabled=config["amp"] == "on" or (config["amp"] == "auto" and device.type == "cuda"))
    logger.info(f"{method} pre-training of {config['arch']} width {config['width']} on {len(pool)} unlabeled images, "
                f"{config['pretrain_epochs']} epochs, {config['pretrain_optimizer']} lr {config['pretrain_lr']:g}")

    def save(state: dict) -> None:
        save_checkpoint(ckpt_path, encoder=encoder, kind="pretrained", method=method, dataset=config["dataset"],
                        config=run_config, pretrainer=pre.model.state_dict(), extra=pre.state(), **state)

    batch = config["pretrain_batch_size"]
    fit(step=pre.step, batches=epoch_batches(pool, batch, device, workers=config["workers"]),
        steps_per_epoch=len(pool) // batch, modules=[pre.model], optimizer=optimizer,
        epochs=config["pretrain_epochs"], base_lr=config["pretrain_lr"], seed=config["seed"], precision=precision,
        save=save, run_dir=run_dir, logger=logger, start=start, desc=f"pretrain {method}", tensorboard=False)
    return ckpt_path
