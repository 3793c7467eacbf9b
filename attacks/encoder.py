"""The attack library: what a customer of an encoder API does to steal (or use) the encoder.

Everything here works through a connection to the victim (``answer(images)``, ``out_dim``,
``info``) wrapped in a :class:`attacks.client.QueryClient`; nothing here opens the victim's checkpoint.
What the attacker knows comes from its own flags and from what the service publishes
(``info``: output dimension, input size and format, dataset and architecture as a model card).

* query sets and views (:func:`query_set`, :class:`QueryViews`), the attacker's own
  augmentations (``--crop-min-scale``, ``--hflip-p``, ``--local-aug``);
* the per-scale, per-loss defaults (``STEAL_DEFAULTS``) and the loss table's needs
  (``loss.SPECS``);
* :func:`steal_encoder` (direct extraction, access head), :func:`steal_through_recreated_head`
  (Algorithm 2), :func:`legitimate_user` (a downstream customer of the same service).
The CLIs ``steal.py``, ``stealhead.py`` and ``legitimate.py`` parse flags, build the service
(the owner's side) and call these.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.client import QueryClient
from data_aug import ImageSet, SimCLRAugment, dataset_info, get_dataset, rotate, split_holdout, to_float
from engine.optim import make_optimizer
from loss import LOSSES, SPECS, info_nce_views, mse, softnn
from models import build_encoder, build_mlp, encoder_out_dim, save_checkpoint, simclr_head_dims
from simclr import Precision, fit, precision_from_flags
from utils import UserError, accuracy, atomic_path, prepare_run_dir

# Defaults that depend on the scale and on the loss, applied in this order: the scale's base,
# then the loss's overrides; a value typed on the command line always wins. "paper" follows
# the reference's steal.py (its per-loss overrides, with the two-view losses given the two
# views they need; SimCLR's crop and flip for augmented views); "cpu" was tuned on the offline
# mnistm5k victim (100-1,000 queries, 2 cores): attacker-side augmentation of the queried
# images (--local-aug, no extra queries) lifted MSE at 100 queries from 40.3% to 56.9% of a
# 61.2% victim, at 300 from 56.7% to 60.4%; crops of at least 80% of the area and no flips
# suit digits.
STEAL_DEFAULTS: dict[str, dict[str, dict]] = {
    "paper": {
        "*": {"epochs": 100, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "n_views": 1,
              "temperature": 0.07, "local_aug": "none", "crop_min_scale": 0.08, "hflip_p": 0.5,
              "num_queries": 9000, "simsiam_heads": "reference"},
        "infonce": {"batch_size": 256, "lr": 3e-4},
        "softnn": {"batch_size": 256, "lr": 1e-3},
        "supcon": {"batch_size": 256, "lr": 0.05, "optimizer": "sgd"},
        "barlow": {"batch_size": 256},
        "symmetrized": {"batch_size": 256, "lr": 0.05, "optimizer": "sgd"},
    },
    "cpu": {
        "*": {"epochs": 100, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "n_views": 1,
              "temperature": 0.2, "local_aug": "simclr", "crop_min_scale": 0.8, "hflip_p": 0.0,
              "num_queries": 500, "simsiam_heads": "small"},
    },
}


def loss_defaults(scale: str, losstype: str) -> dict:
    """The scale's defaults, the loss's overrides, and the views the loss table says it needs."""
    table = STEAL_DEFAULTS[scale]
    return {**table["*"], "n_views": SPECS[losstype].views, **table.get(losstype, {})}


def resolve_defaults(config: dict, scale: str) -> dict:
    """A copy of ``config`` with the by-scale / by-loss defaults that were not typed filled in."""
    config = dict(config, scale=scale)
    filled = []
    for key, value in loss_defaults(scale, config["losstype"]).items():
        if config.get(key) is None:
            config[key] = value
            filled.append(key)
    if config.get("stolenhead") is None:
        config["stolenhead"] = bool(config.get("victimhead"))
        filled.append("stolenhead")
    if config.get("query_aug") is None:
        config["query_aug"] = "standard" if config["n_views"] > 1 else "none"
        filled.append("query_aug")
    if config["query_aug"] == "none" and config["n_views"] > 1:
        raise UserError(f"--query-aug none sends the plain image, so its --n-views {config['n_views']} views would "
                        f"be identical; use --query-aug standard (or rotation) or --n-views 1")
    if "local_aug" in filled and config["query_aug"] != "none":
        config["local_aug"] = "none"  # the queries are augmented views already (each one a query)
    config["defaults_filled"] = filled
    return config


# --------------------------------------------------------------------------- query sets


def query_pool(dataset: str, image_size: Optional[int], *, datasetsteal: Optional[str] = None, force: bool = False,
               holdout: Optional[int] = None, data: Optional[str] = None,
               split: Optional[str] = None) -> tuple[ImageSet, Optional[int]]:
    """All images the attacker may query, and the holdout kept out of them (``None`` if none).

    As the reference: stealing with the victim's own dataset uses its test split without its
    last images (the linear probe's evaluation set) unless ``force``; another dataset uses
    its train split (for STL10 its 100k unlabeled split, ``DatasetInfo.query_split``).
    ``split`` (``"query"`` or ``"test"``) picks the split outright, holding nothing out (the
    ImageNet path: ``--useval``); ``image_size=None`` keeps the images at their native size.
    """
    steal_name = datasetsteal or dataset
    info = dataset_info(steal_name)
    if split is not None:
        chosen = info.test_split if split == "test" else info.query_split
        return get_dataset(steal_name, chosen, root=data, image_size=image_size), None
    if steal_name == dataset and not force:
        test = get_dataset(steal_name, info.test_split, root=data, image_size=image_size)
        pool, evaluation = split_holdout(test, holdout)
        return pool, len(evaluation)
    return get_dataset(steal_name, info.query_split, root=data, image_size=image_size), None


def query_set(pool: ImageSet, num_queries: int, n_views: int) -> ImageSet:
    """The ``num_queries / n_views`` images the attacker sends (the first of the pool)."""
    if n_views < 1:
        raise UserError(f"--n-views must be at least 1, got {n_views}")
    if num_queries > len(pool) * n_views:
        raise UserError(f"--num_queries {num_queries} is more than the query set offers ({len(pool)} images of "
                        f"{pool.name}/{pool.split} x {n_views} view(s)); lower it, or use --force True or another "
                        f"--datasetsteal")
    if num_queries // n_views < 1:
        raise UserError(f"--num_queries {num_queries} gives no whole image at {n_views} views each; raise it")
    return pool.subset(range(num_queries // n_views))


def attack_images(config: dict, info: dict) -> tuple[ImageSet, Optional[int]]:
    """The images of an attack configured by ``config`` against a service publishing ``info``."""
    pool, holdout = query_pool(info["dataset"], info["input_size"], datasetsteal=config.get("datasetsteal"),
                               force=bool(config.get("force")), holdout=config.get("holdout"), data=config.get("data"))
    return query_set(pool, config["num_queries"], config["n_views"]), holdout


@dataclass
class QueryViews:
    """The attacker's inputs: ``n_views`` views of each of ``n`` images, view-major.

    Row ``v * n + i`` is view ``v`` of image ``i``; its query key is ``(i, v)``. One view is
    the plain image; more are SimCLR augmentations, drawn once from ``seed`` (so a view is
    a fixed query whose answer can be cached). ``rows(idx)`` gives the view-major rows of a
    batch of image indices: ``n_views * len(idx)`` rows, as the two-view losses expect.
    """
    inputs: torch.Tensor
    labels: torch.Tensor
    n: int
    n_views: int

    @classmethod
    def build(cls, images: ImageSet, n_views: int, seed: int, device: torch.device,
              augment: SimCLRAugment | None = None, query_aug: str | None = None) -> "QueryViews":
        query_aug = query_aug or ("none" if n_views == 1 else "standard")
        if query_aug not in QUERY_AUGMENTATIONS:
            raise UserError(f"unknown --query-aug {query_aug!r}; choose from {', '.join(QUERY_AUGMENTATIONS)}")
        if query_aug == "none":
            inputs = to_float(images.images).repeat(n_views, 1, 1, 1)
        else:
            gen = torch.Generator().manual_seed(seed)
            augment = augment or SimCLRAugment(images.image_size)
            views = []
            for _ in range(n_views):
                view = augment(images.images, gen)
                if query_aug == "rotation":
                    view = rotate(view, 360.0 * torch.rand(len(view), generator=gen, dtype=torch.float64))
                views.append(view)
            inputs = torch.cat(views)
        return cls(inputs.to(device), images.labels.to(device), len(images), n_views)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor]:
        """(inputs, keys, labels per image) of the image indices ``idx``."""
        idx = idx.to(self.inputs.device)
        rows = torch.cat([idx + v * self.n for v in range(self.n_views)])
        keys = [(i, v) for v in range(self.n_views) for i in idx.tolist()]
        return self.inputs[rows], keys, self.labels[idx]


# what the attacker queries (--query-aug): the plain images, SimCLR views, or SimCLR views rotated at random
QUERY_AUGMENTATIONS = ("none", "standard", "rotation")

# attacker-side augmentations of --local-aug: SimCLRAugment overrides beside the crop and flip
LOCAL_AUGMENTATIONS = {"none": None, "crop": {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}, "simclr": {}}


def view_augment(config: dict, image_size: int) -> SimCLRAugment:
    """The augmentation of multi-view queries: SimCLR's, with the attacker's crop scale and flip."""
    return SimCLRAugment(image_size, crop_scale=(config["crop_min_scale"], 1.0), flip_p=config["hflip_p"])


def local_augment(config: dict, image_size: int) -> SimCLRAugment | None:
    """The --local-aug transform (``None`` for none), with the attacker's crop scale and flip."""
    over = LOCAL_AUGMENTATIONS[config["local_aug"]]
    if over is None:
        return None
    return SimCLRAugment(image_size, crop_scale=(config["crop_min_scale"], 1.0), flip_p=config["hflip_p"], **over)


def image_batches(n: int, batch_size: int):
    """Shuffled batches of image indices, the last incomplete one dropped; and the steps per epoch."""
    batch_size = min(batch_size, n)
    steps = n // batch_size

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n, generator=generator)
        for s in range(steps):
            yield order[s * batch_size:(s + 1) * batch_size]

    return batches, steps


def check_loss_inputs(losstype: str, n_views: int, labels: torch.Tensor) -> None:
    """One-sentence errors for a loss that cannot run on these queries (from the loss table)."""
    spec = SPECS[losstype]
    if spec.views > 1 and n_views != spec.views:
        raise UserError(f"--losstype {losstype} compares {spec.views} augmented views of each image; use "
                        f"--n-views {spec.views} (got {n_views})")
    if spec.labels and (labels < 0).any():
        raise UserError(f"--losstype {losstype} needs the true labels of the query images, but the query set "
                        f"is unlabeled; use a labeled --datasetsteal or another loss")


# the SimSiam stealer's heads (``--simsiam-heads``): reference = the reference's 3-layer projector
# and 512-512-512 predictor (SimSiam's own recipe has a 4x bottleneck); small = a 2-layer
# projector and a d -> d/4 -> d predictor, the cpu-scale default (fewer parameters to fit from
# a few hundred queries)
SIMSIAM_HEADS = {"reference": {"projector_layers": 3, "bottleneck": 1},
                 "small": {"projector_layers": 2, "bottleneck": 4}}


class SimSiamStealer(nn.Module):
    """The attacker's model for ``symmetrized``: encoder f, projector and predictor (SimSiam).

    The stolen encoder's ``p = predictor(projector(f(x)))`` is pulled towards
    ``z = projector(victim answer)`` of the other view, under stop-gradient (loss.symmetrized).
    ``heads`` names the sizes (``SIMSIAM_HEADS``).
    """

    def __init__(self, encoder: nn.Module, dim: int, heads: str = "reference"):
        super().__init__()
        sizes = SIMSIAM_HEADS[heads]
        self.encoder = encoder
        self.projector = build_mlp([dim] * (sizes["projector_layers"] + 1), batchnorm=True, last_bn=True,
                                   last_bn_affine=False)
        self.predictor = build_mlp([dim, max(dim // sizes["bottleneck"], 1), dim], batchnorm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)))


def stolen_out_dim(config: dict, info: dict) -> int:
    """The output size of :func:`stolen_encoder`, checked without building it (before any query): an
    architecture this project cannot build, typed or published, is one :class:`utils.UserError`."""
    what = "--archstolen" if config.get("archstolen") else "the victim's published architecture"
    return encoder_out_dim(config.get("archstolen") or info["arch"], config.get("widthstolen") or info["width"],
                           what=what, flag="--archstolen (stealhead.py: -a/--arch)")


def stolen_encoder(config: dict, info: dict, query_dataset: str) -> nn.Module:
    """The attacker's fresh encoder: ``--archstolen``/``--widthstolen``, else the published
    architecture; normalised with the attacker's own query data's statistics."""
    stolen_out_dim(config, info)
    qinfo = dataset_info(query_dataset)
    return build_encoder(config["archstolen"] or info["arch"], stem=info.get("stem", "cifar"),
                         width=config["widthstolen"] or info["width"], mean=qinfo.mean, std=qinfo.std)


# --------------------------------------------------------------------------- attacks


def steal_encoder(config: dict, connection, run_dir: Path, logger: logging.Logger, device: torch.device) -> dict:
    """Direct extraction (or access head): train a stolen encoder on the victim's answers.

    ``config`` holds the attack's flags with defaults resolved (:func:`resolve_defaults`);
    returns ``{"checkpoint", "queries_used", "requests"}`` and writes checkpoint.pt and
    queries.jsonl in ``run_dir``.
    """
    info = connection.info
    images, holdout = attack_images(config, info)
    check_loss_inputs(config["losstype"], config["n_views"], images.labels)
    client = QueryClient(connection, budget=config["num_queries"], log_path=run_dir / "queries.jsonl")
    ckpt_path = run_dir / "checkpoint.pt"
    stolen = stolen_encoder(config, info, images.name)
    out_dim = client.out_dim
    head, head_kwargs = None, None
    spec = SPECS[config["losstype"]]
    if config["losstype"] == "symmetrized":
        if info["answers"] != "representation" or stolen.out_dim != out_dim:
            raise UserError(f"--losstype symmetrized sends the victim's {out_dim}-d answers through the "
                            f"attacker's projector, so the stolen encoder must output {out_dim}-d "
                            f"representations (got {stolen.out_dim}-d); match --archstolen/--widthstolen and "
                            f"use --victimhead False")
        model: nn.Module = SimSiamStealer(stolen, stolen.out_dim, config.get("simsiam_heads") or "reference")
    elif config["stolenhead"]:
        head_kwargs = {"dims": simclr_head_dims(stolen.out_dim, out_dim)}
        head = build_mlp(**head_kwargs)
        model = nn.Sequential(stolen, head)
    elif stolen.out_dim != out_dim:
        raise UserError(f"the stolen encoder outputs {stolen.out_dim}-d but the victim answers {out_dim}-d; "
                        f"pick a matching --archstolen/--widthstolen or pass --stolenhead True")
    else:
        model = stolen
    model.to(device)

    views = QueryViews.build(images, config["n_views"], config["seed"], device,
                             view_augment(config, info["input_size"]), config.get("query_aug"))
    batches, steps_per_epoch = image_batches(views.n, config["batch_size"])
    loss_fn, hparams = LOSSES[config["losstype"]], spec.hparams(config)
    local = local_augment(config, info["input_size"])

    def step(idx: torch.Tensor, generator: torch.Generator):
        x, keys, labels = views.rows(idx)
        answers = client.query(x, keys=keys)
        if local is not None:  # after the query: the victim never sees these copies
            x = local(x, generator)
        if config["losstype"] == "symmetrized":
            answers = model.projector(answers)
        loss = loss_fn(model(x), answers, **hparams, **spec.batch_kwargs(views.n_views, labels))
        return loss, {}, x.shape[0]

    logger.info(f"stealing a {info['arch']} victim ({out_dim}-d {info['answers']} answers) with "
                f"{config['losstype']}: {config['num_queries']} queries = {len(images)} images of "
                f"{images.name}/{images.split} x {config['n_views']} view(s); stolen {stolen.arch} width "
                f"{stolen.width}; {config['optimizer']} lr {config['lr']:g}, batch {config['batch_size']}, "
                f"{config['epochs']} epochs")

    def save(state: dict) -> None:
        client.end_epoch(state["epoch"])
        save_checkpoint(ckpt_path, encoder=stolen, head=head, head_kwargs=head_kwargs, kind="stolen",
                        dataset=info["dataset"], config=config, queries_used=client.queries_used,
                        victim_forward_calls=client.requests, **state)

    fit(step=step, batches=batches, steps_per_epoch=steps_per_epoch, modules=[model],
        optimizer=make_optimizer(config, model.parameters()), epochs=config["epochs"], base_lr=config["lr"],
        seed=config["seed"], precision=precision_from_flags(config, device), save=save, run_dir=run_dir, logger=logger,
        desc="steal", log_every_n_steps=config.get("log_every_n_steps") or 50)
    logger.info(f"{client.queries_used} queries used of {config['num_queries']}; requests to the victim: "
                f"{client.requests}; stolen checkpoint: {ckpt_path}")
    return {"checkpoint": ckpt_path, "queries_used": client.queries_used, "requests": client.requests,
            "holdout": holdout}


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


HEAD_LOSSES = ("infonce", "softnn", "mse", "msewithhead")


# ``batches(epoch, generator)`` for simclr.fit: one epoch's batches of image indices (:func:`image_batches`)
Batches = Callable[[int, torch.Generator], Iterable[torch.Tensor]]


def _head_answers(client: QueryClient, views: QueryViews, d: int, with_head: bool):
    """``answers(idx)`` -> (inputs, representations h, true head outputs g(h) or ``None``, labels)
    of the image indices ``idx``, asked through ``client`` (each view billed once)."""

    def answers(idx: torch.Tensor):
        x, keys, labels = views.rows(idx)
        out = client.query(x, keys=keys)
        return x, out[:, :d], (out[:, d:] if with_head else None), labels

    return answers


def _recreate_head(config: dict, answers, *, d: int, n_images: int, n_views: int, batches: Batches, steps: int,
                   precision: Precision, client: QueryClient, run_dir: Path, logger: logging.Logger,
                   device: torch.device, saved_head: Optional[dict]) -> tuple[nn.Module, dict]:
    """Phase 1 of Algorithm 2: the recreated head g' (frozen) and its ``build_mlp`` keywords.

    g' is fitted to ``answers`` under ``--losshead`` and saved to ``run_dir/head/head.pt``, or
    loaded from ``saved_head`` (``--resume True``).
    """
    head_kwargs = {"dims": simclr_head_dims(d, config["out_dim"])}
    head = build_mlp(**head_kwargs).to(device)
    head_path = prepare_run_dir(run_dir / "head") / "head.pt"

    def head_step(idx: torch.Tensor, generator: torch.Generator):
        _, h, target, _ = answers(idx)
        return head_loss(config["losshead"], head(h), n_views, target, config), {}, h.shape[0]

    if saved_head is not None:
        if saved_head.get("kwargs") != head_kwargs:
            raise UserError(f"the saved head is {saved_head.get('kwargs')}, not the {head_kwargs} these flags ask "
                            f"for; use --resume False or the original --out_dim")
        head.load_state_dict(saved_head["state_dict"])
        logger.info("recreated head loaded from an earlier run (--resume True)")
    else:
        logger.info(f"recreating the victim's head ({d} -> {config['out_dim']}) with {config['losshead']} on "
                    f"{n_images} images x {n_views} views ({config['num_queries']} queries), "
                    f"{config['epochs_head']} epochs")
        fit(step=head_step, batches=batches, steps_per_epoch=steps, modules=[head],
            optimizer=torch.optim.Adam(head.parameters(), lr=config["lrhead"], weight_decay=config["weight_decay"]),
            epochs=config["epochs_head"], base_lr=config["lrhead"], seed=config["seed"], precision=precision,
            save=lambda state: client.end_epoch(state["epoch"]), run_dir=head_path.parent,
            logger=logger, desc="head", tensorboard=False)
        with atomic_path(head_path) as tmp:
            torch.save({"kwargs": head_kwargs, "state_dict": head.state_dict(), "losshead": config["losshead"]}, tmp)
    head.eval().requires_grad_(False)
    return head, head_kwargs


def _steal_through_head(config: dict, info: dict, answers, head: nn.Module, head_kwargs: dict, *, query_dataset: str,
                        n_views: int, batches: Batches, steps: int, precision: Precision, client: QueryClient,
                        ckpt_path: Path, run_dir: Path, logger: logging.Logger, device: torch.device) -> None:
    """Phase 2 of Algorithm 2: train a stolen encoder and head towards g' of the victim's answers,
    writing ``ckpt_path`` (with g') after every epoch."""
    stolen = stolen_encoder(config, info, query_dataset)
    stolen_head_kwargs = {"dims": simclr_head_dims(stolen.out_dim, config["out_dim"])}
    stolen_head = build_mlp(**stolen_head_kwargs)
    model = nn.Sequential(stolen, stolen_head).to(device)
    spec = SPECS[config["losstype"]]
    loss_fn, hparams = LOSSES[config["losstype"]], spec.hparams(config)

    def steal_step(idx: torch.Tensor, generator: torch.Generator):
        x, h, _, labels = answers(idx)
        with torch.no_grad():
            q = head(h)
        return loss_fn(model(x), q, **hparams, **spec.batch_kwargs(n_views, labels)), {}, x.shape[0]

    def save(state: dict) -> None:
        client.end_epoch(config["epochs_head"] + state["epoch"])
        save_checkpoint(ckpt_path, encoder=stolen, head=stolen_head, head_kwargs=stolen_head_kwargs, kind="stolen",
                        attack="recreate-head", dataset=info["dataset"], config=config,
                        queries_used=client.queries_used, victim_forward_calls=client.requests,
                        recreated_head={"kwargs": head_kwargs, "state_dict": head.state_dict()}, **state)

    logger.info(f"stealing through g' with {config['losstype']}: stolen {stolen.arch} width {stolen.width}, "
                f"{config['optimizer']} lr {config['lr']:g}, {config['epochs']} epochs")
    fit(step=steal_step, batches=batches, steps_per_epoch=steps, modules=[model],
        optimizer=make_optimizer(config, model.parameters()), epochs=config["epochs"], base_lr=config["lr"],
        seed=config["seed"], precision=precision, save=save, run_dir=run_dir, logger=logger, desc="steal",
        log_every_n_steps=config.get("log_every_n_steps") or 50)


def steal_through_recreated_head(config: dict, connection, run_dir: Path, logger: logging.Logger,
                                 device: torch.device, saved_head: Optional[dict] = None) -> dict:
    """Algorithm 2: recreate the victim's head g' from two views' answers, then steal through it.

    With ``--losshead msewithhead`` the connection answers ``cat[h, g(h)]`` for each view
    (one query, both outputs), and g' is fitted to the true head outputs. ``saved_head`` (the
    contents of an earlier run's ``head/head.pt``, read by the CLI for ``--resume True``) skips
    phase 1. Either way g' is saved to ``run_dir/head/head.pt``.
    """
    info = connection.info
    images, holdout = attack_images(config, info)
    check_loss_inputs(config["losstype"], config["n_views"], images.labels)
    stolen_out_dim(config, info)  # phase 2's encoder, checked before phase 1's queries
    client = QueryClient(connection, budget=config["num_queries"], log_path=run_dir / "queries.jsonl")
    with_head = config["losshead"] == "msewithhead"
    d = info["parts"]["representation"] if with_head else client.out_dim
    ckpt_path = run_dir / "checkpoint.pt"
    views = QueryViews.build(images, config["n_views"], config["seed"], device,
                             view_augment(config, info["input_size"]), config.get("query_aug"))
    batches, steps = image_batches(views.n, config["batch_size"])
    precision = precision_from_flags(config, device)
    answers = _head_answers(client, views, d, with_head)
    # phase 1: recreate the head g' on the answers (or load it: --resume True)
    head, head_kwargs = _recreate_head(config, answers, d=d, n_images=len(images), n_views=views.n_views,
                                       batches=batches, steps=steps, precision=precision, client=client,
                                       run_dir=run_dir, logger=logger, device=device, saved_head=saved_head)
    # phase 2: steal through g'
    _steal_through_head(config, info, answers, head, head_kwargs, query_dataset=images.name, n_views=views.n_views,
                        batches=batches, steps=steps, precision=precision, client=client, ckpt_path=ckpt_path,
                        run_dir=run_dir, logger=logger, device=device)
    logger.info(f"{client.queries_used} queries used of {config['num_queries']}; requests to the victim: "
                f"{client.requests}; stolen checkpoint: {ckpt_path}")
    return {"checkpoint": ckpt_path, "queries_used": client.queries_used, "requests": client.requests,
            "holdout": holdout}


# --------------------------------------------------------------------------- a legitimate user


def legitimate_user(config: dict, connection, run_dir: Path, logger: logging.Logger, device: torch.device) -> dict:
    """A legitimate customer: a two-layer network trained on the service's (defended) answers.

    It queries the query pool's images (the victim's test split without its holdout, as the
    reference's legitimate.py) once each, standardises the answers with the mean and std of
    its training answers (as the adversary's linear probe standardises its features; the
    reference fed raw answers), trains ``Linear(D, D) - ReLU - Linear(D, classes)`` with Adam
    and cross-entropy on the true labels, and tests on the holdout, whose answers also come
    through the service (and its defenses). Returns accuracies in % and the costs.
    """
    info = connection.info
    pool, holdout = query_pool(info["dataset"], info["input_size"], holdout=config.get("holdout"),
                               data=config.get("data"))
    test_set = split_holdout(get_dataset(info["dataset"], dataset_info(info["dataset"]).test_split,
                                         root=config.get("data"), image_size=info["input_size"]), holdout)[1]
    num_classes = dataset_info(info["dataset"]).num_classes
    if not num_classes:
        raise UserError(f"{info['dataset']} has no labels: a legitimate user needs a labelled downstream task")
    n_train = min(config["num_queries"], len(pool))
    client = QueryClient(connection, budget=n_train + len(test_set))

    def answers_for(images: ImageSet, prefix: str) -> torch.Tensor:
        x = to_float(images.images)
        return torch.cat([client.query(x[i:i + 256], keys=[(prefix, j) for j in range(i, min(i + 256, len(x)))])
                          for i in range(0, len(x), 256)]).float()

    train_images = pool.subset(range(n_train))
    xtr, ytr = answers_for(train_images, "train").to(device), train_images.labels.to(device)
    xte, yte = answers_for(test_set, "test").to(device), test_set.labels.to(device)
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    torch.manual_seed(config["seed"])
    d = xtr.shape[1]
    net = build_mlp(simclr_head_dims(d, num_classes)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["lrhead"], weight_decay=config["weight_decay"])
    batches, steps = image_batches(len(xtr), config["batch_size"])

    def step(idx: torch.Tensor, generator: torch.Generator):
        idx = idx.to(device)
        return F.cross_entropy(net(xtr[idx]), ytr[idx]), {}, len(idx)

    fit(step=step, batches=batches, steps_per_epoch=steps, modules=[net], optimizer=optimizer,
        epochs=config["epochs"], base_lr=config["lrhead"], seed=config["seed"],
        precision=precision_from_flags(config, device), save=lambda state: None, run_dir=run_dir, logger=logger,
        desc="legitimate", tensorboard=False)
    net.eval()
    with torch.no_grad():
        top1, top5 = accuracy(net(xte), yte, topk=(1, min(5, num_classes)))
        train_top1 = accuracy(net(xtr), ytr)[0]
    result = {"top1": top1, "top5": top5, "train_top1": train_top1, "n_train": len(xtr), "n_test": len(xte),
              "queries_used": client.queries_used}
    costs = getattr(connection, "costs", None)
    if costs is not None:
        result.update(costs())
    return result
