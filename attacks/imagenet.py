"""The ImageNet-scale attack (paper Tables 3 and 8): steal a SimSiam ResNet50 at 224 px.

``stealsimsiam.py`` parses the reference's flags and calls :func:`steal`; it runs as one
process or as many under ``torchrun`` (:mod:`engine.distributed`). The pieces are the project's own:
the victim interface (``service.victim.VictimService`` behind a ``attacks.client.QueryClient``), the loss table
(``loss.LOSSES``), the one training loop (``simclr.fit``), the encoders and checkpoints.

How a run goes:

1. **Queries.** ``--num_queries`` images are drawn (seeded by ``--seed``) from the query set:
   ImageNet's ``train/`` ImageFolder (``val/`` with ``--useval True``), or the train split of
   CIFAR10, CIFAR100, SVHN, STL10 (its unlabeled split), or any other dataset of the project.
   A query is one image's plain view at ``--image-size`` (ImageNet: shorter side resized, centre
   crop; smaller images: resized on the device), in [0, 1]: the victim normalises it itself.
   Each process queries its own share (image ``i`` belongs to rank ``i mod world_size``),
   streamed from a DataLoader with workers for image folders, once; the answers are gathered
   by every process and kept in ``answers.pt``. So the budget is exact in total: every image
   is asked once, by one process, whatever the number of processes and epochs, and a resumed
   run asks nothing again. The victim may be in this process (``--pretrained``) or served over
   HTTP (``serve.py``, ``--victim-url``: each process opens its own connection; the job's total
   is checked against the account's ``/v1/usage`` before the first query, and the images travel
   as uint8, see :func:`query_victim`).
2. **Training.** Each epoch draws one order of the query images from ``(seed, epoch)``, the
   same in every process; global batch ``s`` is split among the ranks (row ``j`` to rank
   ``j mod world_size``), so a job of N processes sees the same global batches as one process
   with the same ``--batch-size``. The stolen encoder sees the plain view, or with
   ``--useaug True`` a SimCLR augmentation of it (crop, flip, colour jitter, grayscale, blur,
   made on the device, on the raw image: no wrap-around), and is pulled towards the victim's
   answer under ``--losstype``. SGD (LARS with ``--lars``), learning rate ``--lr x B / 256``,
   cosine per step. DDP averages the gradients; BatchNorm statistics are per process (as the
   reference), and contrastive losses take their negatives within each process's batch.
3. **Checkpoints.** The main process writes ``checkpoint.pt`` after every epoch (atomically);
   ``--resume`` continues from it, with the answers of ``answers.pt``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.client import QueryClient, service_remaining
from attacks.encoder import query_pool
from data_aug import ImageSet, SimCLRAugment, dataset_info, iterate_batches, to_float
from engine.distributed import Dist
from engine.optim import build_optimizer
from loss import LOSSES, SPECS
from models import build_encoder, encoder_out_dim, load_checkpoint, load_state_dict_strict, save_checkpoint
from simclr import Precision, fit, precision_from_flags
from utils import QueryBudgetExceeded, UserError, atomic_path, derive_seed

# the losses that compare one view's output with the victim's answer and need no labels
STEAL_LOSSES = tuple(name for name, spec in SPECS.items() if spec.views == 1 and not spec.labels)


def draw_queries(pool_size: int, num_queries: int, seed: int, what: str) -> torch.Tensor:
    """``num_queries`` distinct pool indices drawn from ``seed`` (the same in every process)."""
    if num_queries < 1:
        raise UserError(f"--num_queries must be at least 1, got {num_queries}")
    if num_queries > pool_size:
        raise UserError(f"--num_queries {num_queries} is more than the {pool_size} images of {what}; lower it or "
                        f"query a larger set")
    return torch.randperm(pool_size, generator=torch.Generator().manual_seed(derive_seed(seed, 7)))[:num_queries]


def view(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float images -> float in [0, 1] at ``size`` x ``size`` (bilinear, antialiased)."""
    x = to_float(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size).clamp_(0.0, 1.0)
    return x


def query_victim(connection, pool, indices: torch.Tensor, *, image_size: int, batch_size: int, dist: Dist,
                 workers: int = 0, logger: Optional[logging.Logger] = None) -> tuple[torch.Tensor, list[int]]:
    """The victim's answers to the query images ``pool[indices]``, each asked once in the whole job.

    Rank ``r`` asks the images at positions ``r, r + W, r + 2W, ...`` through its own
    :class:`QueryClient` (budget: its share), then every rank gathers all answers. Returns the
    answers ``len(indices) x D`` (float32, CPU, in the order of ``indices``) and each rank's count.

    A victim served over HTTP (``attacks.client.HTTPConnection``: every rank opens its own, with the same
    key) is asked first, by every rank, how many queries the account has left (``/v1/usage``):
    fewer than ``len(indices)`` is one :class:`utils.QueryBudgetExceeded`, before any query; the
    server's ledger then counts exactly ``len(indices)`` for the job. Queries travel as uint8
    (``attacks.client.wire_images``): exact for images read at ``image_size`` (an ImageFolder such as
    ImageNet's), rounded to the nearest of 256 levels for images resized here (a query set at
    another resolution), so the victim answers the rounded view.
    """
    n, world = len(indices), dist.world_size
    mine = torch.arange(dist.rank, n, world)
    # a served victim (serve.py, a connection with remaining(): /v1/usage) sells the account(s) a
    # limited number of queries; every rank shares them, so the whole job's queries are checked
    # against it here, by every rank before any rank asks one (the barrier), rather than each
    # rank's share alone: a job the account cannot pay for stops before its first query
    left = service_remaining(connection)
    if left is not None:
        if left < n:
            raise QueryBudgetExceeded(
                f"the victim service has {left} queries left on the account(s) of --api-key, fewer than the "
                f"{n} of --num_queries; lower --num_queries or use an account with a larger budget (serve.py "
                f"accounts create NAME --budget N)")
        dist.barrier()
    client = QueryClient(connection, budget=len(mine))
    parts = []
    batches = iterate_batches(pool, batch_size, indices=indices[mine], device=dist.device, workers=workers)
    for k, (images, _, _) in enumerate(batches):
        keys = mine[k * batch_size:k * batch_size + len(images)].tolist()
        parts.append(client.query(view(images, image_size), keys=keys).float().cpu())
    local = torch.cat(parts) if parts else torch.zeros(0, client.out_dim)
    if len(local) != len(mine) or client.queries_used != len(mine):
        raise RuntimeError(f"rank {dist.rank} asked {client.queries_used} queries for {len(mine)} images")
    gathered = dist.all_gather_rows(local)
    answers = torch.empty(n, local.shape[1])
    for rank, rows in enumerate(gathered):
        answers[rank::world] = rows
    per_rank = [len(rows) for rows in gathered]
    if logger is not None:
        logger.info(f"queried the victim: {sum(per_rank)} images in total ({' + '.join(map(str, per_rank))} over "
                    f"{world} process{'es' if world > 1 else ''}), {client.requests} requests on rank {dist.rank}")
    return answers, per_rank


def _load_answers(path: Path, indices: torch.Tensor, what: str) -> Optional[dict]:
    if not path.is_file():
        return None
    saved = load_checkpoint(path)
    if not torch.equal(saved.get("indices", torch.empty(0)), indices):
        raise UserError(f"{path} holds the answers to other query images than {what} asks for (another --seed, "
                        f"--num_queries or query set); resume with the original flags or start again with --clear")
    return saved


def _query_images(config: dict) -> tuple[ImageSet, str, torch.Tensor]:
    """The query set of the flags, its name (``set/split``) and the drawn query indices."""
    size = int(config["image_size"])
    # ImageNet's train (val with --useval) folder at --image-size; another set's query split (its
    # test split with --useval) at native size, resized on the device per batch
    folder = not dataset_info(config["datasetsteal"]).offline and config["datasetsteal"] == "imagenet"
    pool, _ = query_pool(config["datasetsteal"], size if folder else None, data=config.get("data"),
                         split="test" if config.get("useval") else "query")
    what = f"{pool.name}/{pool.split}"
    indices = draw_queries(len(pool), config["num_queries"], config["seed"], what)
    return pool, what, indices


def _steps_per_epoch(batch_size: int, n: int) -> int:
    """Whole global batches of ``batch_size`` in ``n`` query images (at least one)."""
    steps = n // batch_size
    if steps == 0:
        raise UserError(f"--batch-size {batch_size} is larger than the {n} query images; lower it or "
                        f"raise --num_queries")
    return steps


def _buy_answers(config: dict, connection, pool: ImageSet, indices: torch.Tensor, what: str, *, per_rank_batch: int,
                 dist: Dist, run_dir: Path, logger: logging.Logger) -> tuple[torch.Tensor, list[int]]:
    """The victim's answers to ``pool[indices]``: those of ``answers.pt`` if it holds them (no
    query), else asked once (:func:`query_victim`) and saved there by the main process."""
    size = int(config["image_size"])
    answers_path = run_dir / "answers.pt"
    saved = _load_answers(answers_path, indices, what)
    if saved is None:
        answers, per_rank = query_victim(connection, pool, indices, image_size=size, batch_size=per_rank_batch,
                                         dist=dist, workers=config.get("workers") or 0, logger=logger)
        if dist.is_main:
            with atomic_path(answers_path) as tmp:
                torch.save({"indices": indices, "answers": answers, "per_rank": per_rank,
                            "query_set": what, "image_size": size}, tmp)
        dist.barrier()
    else:
        answers, per_rank = saved["answers"], list(saved["per_rank"])
        logger.info(f"answers of {answers_path} reused: no new query ({sum(per_rank)} asked before)")
    return answers, per_rank


def use_channels_last(config: dict, device: torch.device) -> bool:
    """``--channels-last`` (auto: on CUDA, where convolutions run faster in NHWC; never on CPU)."""
    return device.type == "cuda" and (config.get("channels_last") or "auto") != "off"


def _dim_error(config: dict, stolen_dim: int, out_dim: int) -> UserError:
    return UserError(f"the stolen {config['arch']} (width {config['width']}) outputs {stolen_dim}-d "
                     f"representations but the victim answers {out_dim}-d; pick a matching -a/--arch "
                     f"and --width")


def check_stolen(config: dict, out_dim: int, resume: Optional[dict]) -> None:
    """Before the first query, every check :func:`_stolen_model` makes after it: the stolen encoder's
    architecture and output size against the victim's ``out_dim``-d answers, and a resumed
    checkpoint's weights against that encoder (built on a forked RNG: the run's initial weights are
    the ones it always had)."""
    stolen_dim = encoder_out_dim(config["arch"], config["width"], what="the stolen architecture")
    if stolen_dim != out_dim:
        raise _dim_error(config, stolen_dim, out_dim)
    if resume is not None:
        with torch.random.fork_rng(devices=[]):
            stolen = build_encoder(config["arch"], stem=config["stem"], width=config["width"])
        load_state_dict_strict(stolen, resume["encoder"]["state_dict"], what="stolen encoder of the checkpoint")


def _stolen_model(config: dict, out_dim: int, dist: Dist,
                  resume: Optional[dict]) -> tuple[nn.Module, nn.Module, Precision, bool]:
    """The fresh (or resumed) stolen encoder, on the device; the model that trains it (DDP-wrapped
    in a job of several processes), the mixed precision, and whether inputs go channels-last."""
    device = dist.device
    qinfo = dataset_info(config["datasetsteal"])
    stolen = build_encoder(config["arch"], stem=config["stem"], width=config["width"], mean=qinfo.mean, std=qinfo.std)
    if stolen.out_dim != out_dim:
        raise _dim_error(config, stolen.out_dim, out_dim)
    if resume is not None:
        load_state_dict_strict(stolen, resume["encoder"]["state_dict"], what="stolen encoder of the checkpoint")
    precision = precision_from_flags(config, device)
    channels_last = use_channels_last(config, device)
    stolen.to(device)
    if channels_last:
        stolen.to(memory_format=torch.channels_last)
    return stolen, dist.wrap(stolen), precision, channels_last


def _batch_fn(config: dict, pool: ImageSet, indices: torch.Tensor, *, steps: int, per_rank_batch: int, dist: Dist):
    """``batches(epoch, generator)`` for :func:`simclr.fit`: this rank's share of each global batch
    of one order of the query images, as (images, positions in ``indices``, augmentation generator)."""
    n = len(indices)

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n, generator=generator)[:steps * config["batch_size"]]
        mine = order.view(steps, config["batch_size"])[:, dist.rank::dist.world_size].reshape(-1)
        aug_gen = torch.Generator().manual_seed(derive_seed(config["seed"], epoch, 1 + dist.rank))
        loader = iterate_batches(pool, per_rank_batch, indices=indices[mine], device=dist.device,
                                 workers=config.get("workers") or 0)
        for k, (images, _, _) in enumerate(loader):
            yield images, mine[k * per_rank_batch:(k + 1) * per_rank_batch], aug_gen

    return batches


def _step_fn(config: dict, model: nn.Module, answers: torch.Tensor, *, augment: Optional[SimCLRAugment],
             channels_last: bool, device: torch.device):
    """``step(batch, generator)`` for :func:`simclr.fit`: the ``--losstype`` loss between the stolen
    encoder's output on (an augmentation of) the plain view and the victim's answers."""
    size = int(config["image_size"])
    spec, loss_fn = SPECS[config["losstype"]], LOSSES[config["losstype"]]
    hparams = {**spec.hparams(config), **spec.batch_kwargs(1)}

    def step(batch, generator: torch.Generator):
        images, positions, aug_gen = batch
        x = view(images, size)
        if augment is not None:
            x = augment(x, aug_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = answers[positions].to(device, non_blocking=True)
        return loss_fn(model(x).float(), target, **hparams), {}, x.shape[0]

    return step


def _save_fn(config: dict, ckpt_path: Path, stolen: nn.Module, *, info: dict, queries_used: int, per_rank: list[int],
             dist: Dist):
    """``save(state)`` for :func:`simclr.fit`: the main process writes the stolen checkpoint; all wait."""

    def save(state: dict) -> None:
        if dist.is_main:
            save_checkpoint(ckpt_path, encoder=stolen, kind="stolen", attack="stealsimsiam",
                            dataset=info.get("dataset"), config=config, queries_used=queries_used,
                            queries_per_rank=per_rank, **state)
        dist.barrier()

    return save


def steal(config: dict, connection, dist: Dist, run_dir: Path, logger: logging.Logger,
          resume: Optional[dict] = None) -> dict:
    """Query the victim behind ``connection`` once, then train a stolen encoder on its answers.

    ``config`` holds stealsimsiam.py's flags with its defaults resolved; ``resume`` is the
    loaded ``checkpoint.pt`` to continue from. Every process calls this; the main one writes.
    Returns ``{"checkpoint", "queries_used", "per_rank", "history"}``.
    """
    info = connection.info
    size = int(config["image_size"])
    pool, what, indices = _query_images(config)
    per_rank_batch = dist.per_rank(config["batch_size"], "global batch", "--batch-size")
    steps = _steps_per_epoch(config["batch_size"], len(indices))
    check_stolen(config, connection.out_dim, resume)  # every check before the first query
    answers, per_rank = _buy_answers(config, connection, pool, indices, what, per_rank_batch=per_rank_batch,
                                     dist=dist, run_dir=run_dir, logger=logger)
    queries_used = int(sum(per_rank))

    stolen, model, precision, channels_last = _stolen_model(config, answers.shape[1], dist, resume)
    init_lr = config["lr"] * config["batch_size"] / 256
    optimizer = build_optimizer("lars" if config["lars"] else "sgd", model.parameters(), lr=init_lr,
                                momentum=config["momentum"], weight_decay=config["weight_decay"])
    augment = SimCLRAugment(size, crop_scale=(config.get("crop_min_scale") or 0.08, 1.0)) if config["useaug"] else None
    step = _step_fn(config, model, answers, augment=augment, channels_last=channels_last, device=dist.device)
    batches = _batch_fn(config, pool, indices, steps=steps, per_rank_batch=per_rank_batch, dist=dist)
    ckpt_path = run_dir / "checkpoint.pt"
    save = _save_fn(config, ckpt_path, stolen, info=info, queries_used=queries_used,
                    per_rank=per_rank, dist=dist)

    logger.info(f"stealing a {info.get('arch')} victim ({answers.shape[1]}-d answers) with {config['losstype']}: "
                f"{queries_used} queries of {what} at {size} px; stolen {config['arch']} width {config['width']}; "
                f"{'LARS' if config['lars'] else 'SGD'} lr {config['lr']:g} x {config['batch_size']}/256 = "
                f"{init_lr:g}, global batch {config['batch_size']} ({per_rank_batch} per process), {steps} steps "
                f"per epoch, {config['epochs']} epochs, augmentation {'on' if augment else 'off'}; {dist.describe()}")
    result = fit(step=step, batches=batches, steps_per_epoch=steps, modules=[model], optimizer=optimizer,
                 epochs=config["epochs"], base_lr=init_lr, seed=config["seed"], precision=precision, save=save,
                 run_dir=run_dir, logger=logger, start=resume, desc="steal",
                 log_every_n_steps=config.get("print_freq") or 50, dist=dist)
    logger.info(f"{queries_used} queries used in total of --num_queries {config['num_queries']}; stolen checkpoint: "
                f"{ckpt_path}")
    return {"checkpoint": ckpt_path, "queries_used": queries_used, "per_rank": per_rank, "history": result.history}
