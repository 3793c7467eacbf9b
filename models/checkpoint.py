"""Self-describing checkpoints.

A checkpoint is a plain dict of tensors and primitive values, so it loads with
``torch.load(..., weights_only=True)`` (a checkpoint is untrusted input: a pickle that
would run code is refused). Layout::

    {"format": "sslsteal/1",
     "encoder": {"kwargs": {"arch": ..., "stem": ..., "width": ...}, "state_dict": {...}},
     "head":    {"kwargs": {"dims": [...], ...}, "state_dict": {...}} or None,
     "epoch": completed epochs, "step": optimizer steps,
     "optimizer": ..., "scaler": ..., "config": {...}, ...extra keys}

``load_encoder(path)`` rebuilds the encoder from the file alone. Plain state dicts from
other code (torchvision, the reference's ``{"state_dict": ...}`` with ``backbone.*`` keys and
its CIFAR ResNet's ``shortcut`` modules, kuangliu's ``{"net": ...}``) are loaded too: the
architecture is read from the weights, prefixes are stripped, ``shortcut`` is renamed
``downsample``, and any missing or unexpected key is named in the error. A checkpoint of the
published SimSiam code (``module.encoder.*`` with its projector
``module.encoder.fc.*``, ``module.predictor.*``) gives its backbone without the projector, with
ImageNet's input normalisation (:func:`is_simsiam`); :func:`save_simsiam` writes one of our
encoders in that format.
"""
from __future__ import annotations

import os
import pickletools
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from data_aug import dataset_info
from utils import UserError, atomic_path

from .heads import build_mlp
from .resnet import ResNetEncoder

FORMAT = "sslsteal/1"
KNOWN_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe or of the wrong architecture."""


def _unwrap(module: nn.Module) -> nn.Module:
    # torch.compile wraps in OptimizedModule (._orig_mod); DDP/DataParallel in .module
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            return module


def encoder_kwargs(encoder: nn.Module) -> dict:
    enc = _unwrap(encoder)
    if not isinstance(enc, ResNetEncoder):
        raise TypeError(f"cannot describe encoder of type {type(enc).__name__}")
    return {"arch": enc.arch, "stem": enc.stem, "width": enc.width,
            "in_channels": enc.conv1.in_channels, "mean": enc.mean, "std": enc.std}


def save_checkpoint(path: os.PathLike | str, *, encoder: nn.Module, head: Optional[nn.Module] = None,
                    head_kwargs: Optional[dict] = None, **state: Any) -> Path:
    """Write a self-describing checkpoint atomically (temp file, then rename).

    ``head_kwargs`` are the :func:`build_mlp` arguments that rebuild ``head``.
    ``state`` holds the rest: epoch, step, optimizer, scaler, config, ...
    """
    if head is not None and head_kwargs is None:
        raise ValueError("saving a head needs the head_kwargs that rebuild it")
    payload = {
        "format": FORMAT,
        "encoder": {"kwargs": encoder_kwargs(encoder), "state_dict": _unwrap(encoder).state_dict()},
        "head": None if head is None else {"kwargs": dict(head_kwargs),
                                           "state_dict": _unwrap(head).state_dict()},
    }
    payload.update(state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


# pickle opcodes that name or call a Python object: a plain pickle holding one of them would run code
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE",
                           "EXT1", "EXT2", "EXT4"})


def _pickle_names_objects(path: Path) -> bool:
    """Whether ``path`` is one whole pickle stream (read opcode by opcode, nothing run) that names or
    calls a Python object: a plain ``pickle.dump`` of anything but plain values. Random bytes are not a
    whole stream."""
    found = False
    try:
        with open(path, "rb") as f:
            for opcode, _, _ in pickletools.genops(f):
                found = found or opcode.name in _CODE_OPCODES
    except Exception:  # noqa: BLE001 - not a pickle stream (or a truncated one)
        return False
    return found


def read_torch_file(path: os.PathLike | str, *, what: str = "checkpoint", kind: str = "PyTorch checkpoint",
                    map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, the one place the project unpickles a torch file, with
    torch's warnings silenced and every failure one :class:`CheckpointError`: a file holding Python
    objects other than tensors and plain values (torch's refusal, or a plain pickle that names any) is
    refused because loading it could run code; anything else unreadable is corrupt or not a ``kind``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on a plain pickle's protocol
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        if "GLOBAL" in str(err) or _pickle_names_objects(path):
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects other than tensors and plain values, so "
                f"loading it could run code; load only {what}s you trust, saved as a plain state dict "
                f"(torch.save(model.state_dict(), PATH))") from None
        raise CheckpointError(f"cannot read {what} {path}: the file is corrupt or not a {kind} "
                              f"({type(err).__name__})") from None


def load_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely; every failure becomes one clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path "
                              f"(a run writes its checkpoint as <logdir>/checkpoint.pt)")
    obj = read_torch_file(path, map_location=map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def strip_prefixes(state_dict: dict, prefixes: Iterable[str] = KNOWN_PREFIXES) -> dict:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) wherever they lead a key."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def load_state_dict_strict(module: nn.Module, state_dict: dict, what: str = "model",
                           ignore_unexpected: Iterable[str] = (), every_key: bool = False) -> None:
    """Load strictly, naming missing/unexpected keys and shape mismatches in one sentence
    (the first four of each, or all of them with ``every_key``).

    Keys starting with any prefix in ``ignore_unexpected`` (e.g. ``fc.``) are dropped first.
    """
    n = None if every_key else 4
    drop = tuple(ignore_unexpected)
    sd = {k: v for k, v in strip_prefixes(state_dict).items() if not (drop and k.startswith(drop))}
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing, n)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected, n)}")
    if wrong:
        problems.append("shape mismatches " + _short(
            [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong], n))
    if problems:
        raise CheckpointError(f"the weights do not fit this {what}: " + "; ".join(problems)
                              + "; check --arch/--width/--stem against the checkpoint")
    module.load_state_dict(sd, strict=True)


def _short(items: list, n: Optional[int] = 4) -> str:
    if n is None or len(items) <= n:
        return f"[{', '.join(items)}]"
    return f"[{', '.join(items[:n])}, ... ({len(items) - n} more)]"


def build_head(kwargs: dict) -> nn.Sequential:
    return build_mlp(**kwargs)


def load_encoder(path: os.PathLike | str, *, arch: Optional[str] = None, stem: Optional[str] = None,
                 width: Optional[int] = None, with_head: bool = False, map_location: Any = "cpu"):
    """Rebuild the encoder (and optionally its head) from a checkpoint file.

    Returns ``(encoder, head_or_None, checkpoint_dict)``. When ``arch``/``stem``/``width`` are
    given they must agree with the file, or a :class:`CheckpointError` says which differs.
    A foreign state dict (no ``format`` key: the reference's CIFAR ResNets with ``shortcut``
    modules, kuangliu's ``{"net": ...}``, torchvision's) is read by :func:`_load_foreign`.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    expected = {k: v for k, v in {"arch": arch, "stem": stem, "width": width}.items() if v is not None}
    if ckpt.get("format") == FORMAT:
        kwargs = dict(ckpt["encoder"]["kwargs"])
        for key, value in expected.items():
            if kwargs.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {path} holds a {kwargs.get('arch')} encoder with {key}="
                    f"{kwargs.get(key)!r}, but {key}={value!r} was asked for; pass the "
                    f"checkpoint's {key} or a checkpoint of the requested architecture")
        encoder = ResNetEncoder(**kwargs)
        load_state_dict_strict(encoder, ckpt["encoder"]["state_dict"], what=f"{kwargs['arch']} encoder")
        head = None
        if with_head:
            if ckpt.get("head") is None:
                raise CheckpointError(f"checkpoint {path} has no projection head; "
                                      f"it cannot answer head queries")
            head = build_head(ckpt["head"]["kwargs"])
            load_state_dict_strict(head, ckpt["head"]["state_dict"], what="projection head")
        return encoder, head, ckpt

    if is_simsiam(ckpt):
        return _load_simsiam(path, ckpt, arch=arch, stem=stem, width=width)
    _refuse_headless_simsiam(path, ckpt)
    return _load_foreign(path, ckpt, arch=arch, stem=stem, width=width, with_head=with_head)


SIMSIAM_ENCODER, SIMSIAM_PREDICTOR = "module.encoder.", "module.predictor."


def is_simsiam(ckpt: dict) -> bool:
    """A checkpoint of the published SimSiam code (facebookresearch/simsiam): ``{"state_dict": ...}``
    with the backbone and projector under ``module.encoder.`` (projector ``module.encoder.fc.*``)
    and the predictor under ``module.predictor.``."""
    sd = ckpt.get("state_dict")
    return (isinstance(sd, dict) and any(k.startswith(SIMSIAM_ENCODER) for k in sd)
            and any(k.startswith(SIMSIAM_PREDICTOR) for k in sd))


def _refuse_headless_simsiam(path, ckpt: dict) -> None:
    """A SimSiam-like file (a ``module.predictor.*``) whose backbone is not under ``module.encoder.``:
    one sentence naming the prefixes it has instead."""
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not any(str(k).startswith(SIMSIAM_PREDICTOR) for k in sd):
        return
    prefixes = sorted({".".join(str(k).split(".")[:2]) + "." for k in sd if not str(k).startswith(SIMSIAM_PREDICTOR)})
    raise CheckpointError(f"{path} looks like a SimSiam checkpoint (it has {SIMSIAM_PREDICTOR}* keys) but holds no "
                          f"backbone under {SIMSIAM_ENCODER}; its other keys start with {_short(prefixes, 6)}; save "
                          f"the backbone as {SIMSIAM_ENCODER}<torchvision key> (e.g. {SIMSIAM_ENCODER}conv1.weight)")


def _load_simsiam(path, ckpt: dict, *, arch, stem, width):
    """The encoder of a SimSiam checkpoint without its projector (2048-d for ResNet50), with the
    ImageNet stem read from the weights and ImageNet's input normalisation (SimSiam trained on
    normalised ImageNet images; our encoders normalise inside). Every missing or unexpected
    key is named in the error. The checkpoint gets ``kind: simsiam`` and ``dataset: imagenet``."""
    sd = {k[len(SIMSIAM_ENCODER):]: v for k, v in ckpt["state_dict"].items()
          if k.startswith(SIMSIAM_ENCODER) and not k.startswith(SIMSIAM_ENCODER + "fc.")}
    found = _architecture(path, sd, {"arch": arch, "stem": stem, "width": width},
                          "looks like a SimSiam checkpoint but its encoder is not a ResNet")
    info = dataset_info("imagenet")
    encoder = ResNetEncoder(found["arch"], stem=found["stem"], width=found["width"], mean=info.mean, std=info.std)
    load_state_dict_strict(encoder, sd, what=f"SimSiam {found['arch']} encoder (keys under {SIMSIAM_ENCODER}, "
                           f"projector fc.* dropped) of {path}", every_key=True)
    return encoder, None, dict(ckpt, kind="simsiam", dataset="imagenet")


def save_simsiam(path: os.PathLike | str, encoder: nn.Module, *, projector_dim: Optional[int] = None,
                 pred_dim: Optional[int] = None, seed: int = 0) -> Path:
    """Write ``encoder`` (a :class:`ResNetEncoder` of any arch, width and stem) as a checkpoint of
    the published SimSiam code, atomically (temp file, then rename); returns ``path``.

    The file is what facebookresearch/simsiam's ``main_simsiam.py`` saves, ``{"epoch": 0, "arch":
    encoder.arch, "state_dict": ..., "optimizer": {"state": {}, "param_groups": []}}``, with the
    backbone under ``module.encoder.<torchvision key>``, SimSiam's 3-layer projector as
    ``module.encoder.fc.*`` (Linear(d, d, no bias), BN, ReLU, Linear(d, d, no bias), BN, ReLU,
    Linear(d, dim) -- torchvision's own ``fc``, so it keeps its bias as in SimSiam's builder --,
    BN(dim, affine=False)) and the predictor as ``module.predictor.*`` (Linear(dim, pred, no bias),
    BN, ReLU, Linear(pred, dim)); ``d = encoder.out_dim``, ``dim = projector_dim or d`` and
    ``pred = pred_dim or max(dim // 4, 1)``. Only tensors, ints and strings: it loads with
    ``torch.load(weights_only=True)``, and :func:`is_simsiam` recognises it.

    Our encoders have no SimSiam heads, so the projector and predictor are freshly initialised
    from ``seed`` (the caller's random state is left untouched); they only make the file
    format-exact, :func:`load_encoder` drops them.

    The SimSiam format carries no input normalisation (SimSiam normalised its inputs with
    ImageNet's statistics in the data loader), so the encoder's own ``mean``/``std`` are not
    saved and :func:`load_encoder` applies ImageNet's, mean (0.485, 0.456, 0.406) and std
    (0.229, 0.224, 0.225): the loaded encoder gives the original's outputs exactly when the
    original was built with those.
    """
    enc = _unwrap(encoder)
    if not isinstance(enc, ResNetEncoder):
        raise TypeError(f"save_simsiam needs a ResNetEncoder, got {type(enc).__name__}")
    if enc.conv1.in_channels != 3:
        raise ValueError(f"the SimSiam format is for RGB encoders; this one takes {enc.conv1.in_channels} channels")
    d = enc.out_dim
    dim = int(projector_dim or d)
    pred = int(pred_dim or max(dim // 4, 1))
    if dim < 1 or pred < 1:
        raise ValueError(f"projector_dim and pred_dim must be positive, got {projector_dim}, {pred_dim}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                  nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                  nn.Linear(d, dim), nn.BatchNorm1d(dim, affine=False))
        predictor = nn.Sequential(nn.Linear(dim, pred, bias=False), nn.BatchNorm1d(pred), nn.ReLU(inplace=True),
                                  nn.Linear(pred, dim))
    sd = {f"{SIMSIAM_ENCODER}{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"{SIMSIAM_ENCODER}fc.{k}": v for k, v in projector.state_dict().items()})
    sd.update({f"{SIMSIAM_PREDICTOR}{k}": v for k, v in predictor.state_dict().items()})
    sd = {k: v.detach().to("cpu").clone() for k, v in sd.items()}
    payload = {"epoch": 0, "arch": enc.arch, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


# block counts per stage and block type of each architecture (for foreign state dicts)
_LAYOUTS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
            (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}


def foreign_state_dict(ckpt: dict) -> dict:
    """The encoder weights of a checkpoint written by other code, under our module names.

    Accepts a bare state dict, the reference's ``{"state_dict": ...}`` and kuangliu-style
    ``{"net": ...}``; strips ``module.``/``_orig_mod.``/``encoder.``/``backbone.`` prefixes and
    renames the CIFAR ResNet's ``shortcut`` modules to torchvision's ``downsample`` (the networks
    are otherwise identical: same convolutions, BatchNorms and order).
    """
    sd = ckpt.get("state_dict", ckpt.get("net", ckpt))
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("the file holds no state dict of tensors")
    sd = strip_prefixes(sd, KNOWN_PREFIXES + ("encoder.", "backbone."))
    return {k.replace(".shortcut.", ".downsample."): v for k, v in sd.items()}


def infer_architecture(sd: dict) -> dict:
    """``{"arch", "stem", "width"}`` of a ResNet state dict from its key names and shapes."""
    if "conv1.weight" not in sd:
        raise CheckpointError("no conv1.weight: this is not a ResNet encoder")
    conv1 = sd["conv1.weight"]
    counts = []
    for stage in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith(f"layer{stage}.")}
        counts.append(max(blocks) + 1 if blocks else 0)
    bottleneck = any(k.endswith("conv3.weight") for k in sd if k.startswith("layer1."))
    arch = _LAYOUTS.get((*counts, bottleneck))
    if arch is None:
        raise CheckpointError(f"unknown ResNet layout: blocks per stage {counts}, "
                              f"{'bottleneck' if bottleneck else 'basic'} blocks")
    return {"arch": arch, "stem": "cifar" if conv1.shape[-1] == 3 else "imagenet", "width": int(conv1.shape[0])}


def _foreign_head(sd: dict) -> tuple[Optional[nn.Module], dict]:
    """The head of a foreign checkpoint, if it has one we know: the reference's SimCLR head
    ``fc = Linear - ReLU - Linear`` (keys fc.0, fc.2), or kuangliu's classifier ``linear``."""
    if {"fc.0.weight", "fc.2.weight"} <= set(sd) and not any(k.startswith("fc.1.") for k in sd):
        prefix, dims = "fc.", [sd["fc.0.weight"].shape[1], sd["fc.0.weight"].shape[0], sd["fc.2.weight"].shape[0]]
    elif "linear.weight" in sd:
        prefix, dims = "linear.", list(sd["linear.weight"].shape[::-1])
        sd = {f"linear.0.{k[len('linear.'):]}": v for k, v in sd.items() if k.startswith("linear.")}
    else:
        return None, {}
    kwargs = {"dims": [int(d) for d in dims]}
    head = build_head(kwargs)
    load_state_dict_strict(head, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, what="head")
    return head, kwargs


def _architecture(path, sd: dict, expected: dict, failure: str) -> dict:
    """The architecture of a foreign state dict, checked against the flags that name it;
    ``failure`` completes the sentence "<path> ..." when it is no ResNet."""
    try:
        found = infer_architecture(sd)
    except CheckpointError as err:
        raise CheckpointError(f"{path} {failure} ({err})") from None
    for key, value in expected.items():
        if value is not None and found[key] != value:
            raise CheckpointError(f"{path} holds a {found['arch']} (stem {found['stem']}, width {found['width']}), "
                                  f"but {key}={value!r} was asked for; drop the flag or pass another checkpoint")
    return found


def _load_foreign(path, ckpt: dict, *, arch, stem, width, with_head: bool):
    """A checkpoint of other code (the reference's, kuangliu's, torchvision's): the architecture
    is read from the weights (and checked against ``arch``/``stem``/``width`` when given); the
    encoder carries no input normalisation (the reference used none). With ``with_head`` the
    reference's SimCLR head is rebuilt when the file has one (``kind`` simclr), or kuangliu's
    classifier (``kind`` supervised); else the head is ``None``."""
    try:
        sd = foreign_state_dict(ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"{path} is neither an sslsteal checkpoint nor a ResNet state dict ({err})") from None
    found = _architecture(path, sd, {"arch": arch, "stem": stem, "width": width},
                          "is neither an sslsteal checkpoint nor a ResNet state dict")
    encoder = ResNetEncoder(found["arch"], stem=found["stem"], width=found["width"])
    load_state_dict_strict(encoder, sd, what=f"{found['arch']} encoder", ignore_unexpected=("fc.", "linear."))
    head = None
    if with_head:
        head, kwargs = _foreign_head(sd)
        if head is not None:  # a kuangliu classifier ("linear") makes it a supervised victim
            ckpt = dict(ckpt, head={"kwargs": kwargs}, kind="supervised" if len(kwargs["dims"]) == 2 else "simclr")
    return encoder, head, ckpt
