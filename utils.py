"""Small shared helpers: user-facing errors, the CLI wrapper, seeding, device choice,
atomic file writes, run directories and config files.

Everything here is device-agnostic library code; scripts decide the device once in
``main()`` and pass it on.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

# --------------------------------------------------------------------------- errors
# Errors shared by every module: utils imports no project module, so anything can use them.

class UserError(Exception):
    """A problem with the user's input (flags, paths, files).

    The CLI wrapper prints its message as one sentence and exits with status 2,
    without a traceback unless ``--debug`` is given.
    """


class QueryBudgetExceeded(UserError):
    """A query would take an account past its budget."""


class ProofRequired(Exception):
    """The service wants a proof of work for this batch before answering it.

    ``puzzle`` (a :class:`defenses.pow.Puzzle`) is bound to the account and to the batch;
    the client solves it and sends the batch again with ``proof={"challenge", "nonce"}``.
    Raised by the ``pow`` defense, caught by the client's connection.
    """

    def __init__(self, puzzle):
        super().__init__(f"proof of work required: {puzzle.bits} bits")
        self.puzzle = puzzle


# --------------------------------------------------------------------------- CLI


def str2bool(value: Any) -> bool:
    """Parse the reference's string booleans (``True``/``False``) and the usual spellings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "y", "on"}:
        return True
    if text in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in ``--help`` (except ``None``: those flags say where their default
    comes from) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class Numeric:
    """An argparse ``type`` that parses a number and checks its range, with one sentence on error.

    ``Numeric(int, low=1)`` is a positive integer; ``Numeric(float, low=0, low_open=True)`` a
    positive number; NaN and infinities are refused unless ``finite=False``.
    """

    def __init__(self, kind: type, low: Optional[float] = None, high: Optional[float] = None, *,
                 low_open: bool = False, high_open: bool = False, finite: bool = True):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.finite = finite
        self.__name__ = self.describe()  # argparse names the type in some messages

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        kind = "integer" if self.kind is int else "number"
        if self.low == 0:
            return f"a positive {kind}" if self.low_open else f"a non-negative {kind} (0 or more)"
        if self.low == 1 and self.kind is int and not self.low_open:
            return "a positive integer (1 or more)"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return "a finite number" if self.kind is float else noun

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expects {self.describe()}, got {text!r}") from None
        if self.kind is float and self.finite and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expects {self.describe()}, got {text!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expects {self.describe()}, got {text!r}")
        return value


_POS_INT, _NONNEG_INT = Numeric(int, 1), Numeric(int, 0)
_POS, _NONNEG, _FINITE = Numeric(float, 0, low_open=True), Numeric(float, 0), Numeric(float)
# The one table of what every numeric flag of every script accepts (by argparse dest).
NUMERIC_RULES: dict[str, Numeric] = {
    **dict.fromkeys(["batch", "batch_size", "draws", "epochs", "epochs_head", "epochstrain", "image_size",
                     "log_every_n_steps", "n", "n_views", "num_queries", "out_dim", "queries", "width",
                     "widthstolen", "holdout", "puzzles", "num_labeled", "probe_epochs", "num_queries_unused",
                     "num_labeled_unused", "out_dim_unused",
                     "watermark_hidden", "print_freq", "epochssteal", "nproc", "pretrain_epochs",
                     "pretrain_batch_size", "moco_dim", "moco_k", "pool_epochs", "max_epochs", "max_batch",
                     "accounts"], _POS_INT),
    **dict.fromkeys(["gpu_index", "seed", "seeds", "workers", "start_epoch", "gpu", "budget"], _NONNEG_INT),
    **dict.fromkeys(["world_size", "rank"], Numeric(int, -1)),
    **dict.fromkeys(["pow_bits_min", "pow_bits_max"], Numeric(int, 0, 32)),
    **dict.fromkeys(["lr", "lrhead", "temperature", "temperaturesn", "probe_lr", "tempsn", "lr_unused",
                     "temperature_unused", "pretrain_lr", "moco_t", "lr_head", "distill_temperature", "max_body_mb",
                     "rate_limit", "expires_days", "idempotency_hours"], _POS),
    **dict.fromkeys(["weight_decay", "sigma", "poison_strength", "warmup_epochs", "fgsm_eps", "probe_wd",
                     "sigma_unused", "watermark_weight", "pretrain_wd", "lr_encoder", "batch_wait_ms"], _NONNEG),
    **dict.fromkeys(["mu", "detect_mu", "detect_threshold", "mu_unused"], _FINITE),
    **dict.fromkeys(["crop_min_scale", "distill_crop_min_scale", "query_fraction"],
                    Numeric(float, 0, 1, low_open=True)),
    "moco_m": Numeric(float, 0, 1),
    "port": Numeric(int, 1, 65535),
    "hflip_p": Numeric(float, 0, 1),
    "pow_threshold": Numeric(float, -1, 1),
    "momentum": Numeric(float, 0, 1, high_open=True),
    "alpha": Numeric(float, 0, 1, low_open=True, high_open=True),
}


def apply_numeric_rules(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every int/float flag of ``parser`` its checked type from ``NUMERIC_RULES``.

    A numeric flag without a rule is a programming error (a test parses every script's flags).
    """
    for action in parser._actions:
        if action.type in (int, float) or isinstance(action.type, Numeric):
            if action.dest not in NUMERIC_RULES:
                raise KeyError(f"no rule in utils.NUMERIC_RULES for the numeric flag {action.option_strings}")
            action.type = NUMERIC_RULES[action.dest]
    return parser


def add_training_run_args(parser: argparse.ArgumentParser, *, logdir_default: str) -> None:
    """The run-directory and precision flags of the training scripts (run.py, simclrsup.py)."""
    parser.add_argument("--fp16-precision", action="store_true",
                        help="mixed precision (float16 autocast + GradScaler); CUDA only, ignored on CPU")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                        help="mixed precision: auto = on for CUDA, off on CPU; --fp16-precision means on")
    parser.add_argument("--logdir", default=None, help=f"run directory (default: {logdir_default})")
    parser.add_argument("--resume", nargs="?", const=True, default=False, type=str2bool,
                        help="continue from <logdir>/checkpoint.pt if it exists (from its last completed epoch)")
    parser.add_argument("--clear", nargs="?", const=True, default=False, type=str2bool,
                        help="start over even if <logdir> already holds a checkpoint (it is replaced)")
    parser.add_argument("--log-every-n-steps", type=int, default=50, help="TensorBoard scalar interval in steps")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every script shares; defined once here. Call it last: it also gives every numeric
    flag of the parser its checked type (``apply_numeric_rules``)."""
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for every random generator; on CPU the same seed gives the same run")
    parser.add_argument("--device", default="auto",
                        help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--gpu-index", type=int, default=None,
                        help="reference spelling: CUDA device index (same as --device cuda:N)")
    parser.add_argument("-j", "--workers", type=int, default=0,
                        help="DataLoader worker processes for on-disk image folders "
                             "(in-memory datasets are batched directly and need none)")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line error messages")
    apply_numeric_rules(parser)


# ----------------------------------------------------------------- reference compatibility

class OnlyFalse:
    """An argparse ``type`` for a reference string boolean whose ``True`` cannot apply here:
    ``False`` parses, ``True`` is refused with ``reason`` (one sentence)."""

    def __init__(self, reason: str):
        self.reason = reason
        self.__name__ = "False"

    def __call__(self, text: str) -> bool:
        if str2bool(text):
            raise argparse.ArgumentTypeError(self.reason)
        return False


_ENTROPY = ("the reference's ENTROPY victims come from dead code that never trains one, so there is no such "
            "victim to load; drop --entropy")
# Flags the reference parses that have no effect (there or here): dest -> (option strings, kwargs,
# why it has no effect). ``add_reference_args(parser, *dests)`` adds them, so that a command line
# copied from the reference parses; ``--help`` lists them in their own group with the reason.
REFERENCE_ONLY: dict[str, tuple[tuple[str, ...], dict, str]] = {
    "folder_name": (("-folder-name",), {"default": "test"}, "the reference never reads it either"),
    "entropy": (("--entropy",), {"default": False, "type": OnlyFalse(_ENTROPY)},
                "only False is accepted: " + _ENTROPY),
    "epochstrain": (("--epochstrain",), {"type": int, "default": 200},
                    "the reference builds the victim's checkpoint path from it; here a victim is named by "
                    "--victim-checkpoint or its run directory"),
    "logdir_unused": (("--logdir",), {"dest": "logdir_unused", "default": None},
                      "the reference sets a TensorBoard directory it never writes"),
    "log_every_n_steps": (("--log-every-n-steps",), {"type": int, "default": 200},
                          "the reference parses it and never reads it"),
    "tempsn": (("--tempsn",), {"type": float, "default": 100.0}, "the reference parses it and never reads it"),
    "losshead": (("--losshead",), {"default": "infonce"}, "the reference parses it and never reads it"),
    "lr_unused": (("--lr", "--learning-rate"), {"dest": "lr_unused", "type": float, "default": 3e-4},
                  "the reference parses it and never reads it"),
    "resume_unused": (("--resume",), {"dest": "resume_unused", "default": False, "type": str2bool},
                      "the reference parses it and never reads it"),
    "num_queries_unused": (("--num_queries",), {"dest": "num_queries_unused", "type": int, "default": 9000},
                           "the reference parses it and never reads it"),
    "victimhead_unused": (("--victimhead",), {"dest": "victimhead_unused", "default": False, "type": str2bool},
                          "the reference only puts it in a log-directory name"),
    "num_labeled_unused": (("-n", "--num-labeled"), {"dest": "num_labeled_unused", "type": int, "default": 500},
                           "the reference parses it and never reads it"),
    "dataset_unused": (("-dataset",), {"dest": "dataset_unused", "default": "cifar10"},
                       "the reference's extract.py parses it and never reads it"),
    "out_dim_unused": (("--out_dim",), {"dest": "out_dim_unused", "type": int, "default": 128},
                       "the reference parses it and never reads it"),
    "temperature_unused": (("--temperature",), {"dest": "temperature_unused", "type": float, "default": 0.07},
                           "the reference parses it and never reads it"),
    "arch_unused": (("-a", "--arch"), {"dest": "arch_unused", "default": "resnet34"},
                    "the reference builds its defence's head model from it; here the defenses watch the "
                    "victim's own head"),
    "mu_unused": (("--mu",), {"dest": "mu_unused", "type": float, "default": 5.0},
                  "the reference parses it and never reads it"),
    "sigma_unused": (("--sigma",), {"dest": "sigma_unused", "type": float, "default": 0.5},
                     "the reference parses it and never reads it"),
    "epochstrain_unused": (("--epochstrain",), {"dest": "epochstrain", "type": int, "default": 200},
                           "the reference's ImageNet scripts parse it and never read it"),
    "epochssteal": (("--epochssteal",), {"type": int, "default": 100},
                    "the reference's ImageNet scripts parse it and never read it"),
}


def add_reference_args(parser: argparse.ArgumentParser, *dests: str) -> argparse._ArgumentGroup:
    """Add the reference's no-effect flags named by ``dests`` (keys of ``REFERENCE_ONLY``); returns their
    group, where a script adds the no-effect flags whose reason is its own."""
    group = parser.add_argument_group("reference flags with no effect here (accepted so that the reference's "
                                      "command lines run)")
    for dest in dests:
        options, kwargs, why = REFERENCE_ONLY[dest]
        kwargs = dict(kwargs)
        kwargs.setdefault("dest", dest)
        group.add_argument(*options, help=f"no effect: {why}", **kwargs)
    return group


def parse_tags(tags: Iterable[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` flags as a dict (extra fields of a result record)."""
    out = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UserError(f"--tag {tag!r} is not KEY=VALUE")
        out[key] = value
    return out


def run_cli(main: Callable[[Optional[list]], Any], argv: Optional[list] = None) -> None:
    """Run ``main`` and turn a :class:`UserError` into one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        main(argv)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is kept (use --resume)", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------- randomness, device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch once, from ``--seed``."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # numpy is a requirement, but seeding should not depend on it
        pass
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (e.g. run seed and epoch)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def pick_device(spec: str = "auto", gpu_index: Optional[int] = None) -> torch.device:
    """Choose the device once. ``auto`` means CUDA when available."""
    if gpu_index is not None and spec == "auto":
        spec = f"cuda:{gpu_index}"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise UserError(f"--device {spec!r} is not a device name; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return device


def setup_threads() -> None:
    """Use every core for intra-op parallelism on CPU (torch may default to fewer)."""
    n = os.cpu_count() or 1
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(n)


def setup_run(config: dict) -> torch.device:
    """The first thing a run does: pick the device (recorded in ``config["device"]``), set the
    threads and seed everything from ``config["seed"]``."""
    device = pick_device(config["device"], config.get("gpu_index"))
    config["device"] = str(device)
    setup_threads()
    seed_everything(config["seed"])
    return device


# -------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str):
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success.

    A crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def append_jsonl(path: os.PathLike | str, record: dict) -> None:
    """Append one JSON line atomically: the file is rewritten to a temporary file with the new
    line and renamed over the old one, so a crash leaves the old file or the new one, never a
    half-written line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: os.PathLike | str) -> list[dict]:
    """The records of a JSON-lines file ([] if it does not exist); a corrupt line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {n} is not valid JSON ({err.msg}); fix or delete that line") from None
    return records


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


# ------------------------------------------------------------------- run directory


def prepare_run_dir(path: os.PathLike | str) -> Path:
    """Create the run directory and check that it is writable, with a clear error if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"cannot write to the run directory {path} ({err.strerror or err}); "
            f"pass a writable directory with --logdir"
        ) from err
    return path


def check_writable(path: os.PathLike | str, *, what: str = "the output file",
                   fix: str = "choose a path on a writable file system") -> Path:
    """Before any compute or query: can ``path`` be written (atomically: a temporary file beside it,
    then a rename)? One :class:`UserError` (naming ``what`` and the ``fix``) when it is a folder, when
    its nearest existing folder cannot take a new file (read-only file system, immutable folder, no
    permission) or when an existing file cannot be replaced. Leaves nothing behind; returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; {fix}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders a write would create
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {what} {path}: {folder} is a file, not a folder; {fix}")
    reason = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = "the file is read-only"
    if reason is not None:
        raise UserError(f"cannot write {what} {path} ({reason}); {fix}")
    return path


def redact_key(key: str) -> str:
    """What a record keeps of an API key: ``...`` and its last 4 characters."""
    key = str(key)
    return key if key.startswith("...") else f"...{key[-4:]}"


def redacted(config: dict) -> dict:
    """A copy of a config fit for a file or record: paths as strings, API keys (``api_key``) cut to
    their last 4 characters."""
    clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in config.items()}
    if clean.get("api_key"):
        keys = clean["api_key"]
        clean["api_key"] = [redact_key(k) for k in keys] if isinstance(keys, (list, tuple)) else redact_key(keys)
    return clean


def write_config(run_dir: os.PathLike | str, config: dict) -> Path:
    """Write ``config.yaml`` into the run directory (atomically); API keys (``api_key``) are
    redacted to their last 4 characters whatever the caller passes."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(redacted(config), sort_keys=True))
    return path


def read_run_config(checkpoint: os.PathLike | str, fallback: Optional[dict] = None) -> dict:
    """The training config of the run that wrote ``checkpoint``: its run directory's ``config.yaml``
    (what the run was given and resolved), else ``fallback`` (the checkpoint's own copy), redacted."""
    import yaml

    path = Path(checkpoint).parent / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # unreadable: the checkpoint's own copy instead
        config = None
    return redacted(config if isinstance(config, dict) else dict(fallback or {}))


def get_logger(run_dir: Optional[os.PathLike | str], name: str = "sslsteal",
               filename: str = "train.log") -> logging.Logger:
    """A logger printing to stdout and, when ``run_dir`` is given, appending to a file there.

    Handlers are replaced on every call, so several runs in one process each log to
    their own file (the reference configured logging only once per process).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if run_dir is not None:
        fh = logging.FileHandler(Path(run_dir) / filename)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1,)) -> list[float]:
    """Top-k accuracy in percent over all samples (not a mean of per-batch means)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target.view(-1, 1))
    return [correct[:, : min(k, maxk)].any(dim=1).float().mean().item() * 100.0 for k in topk]
