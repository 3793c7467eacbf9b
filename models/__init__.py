"""Encoders, heads and self-describing checkpoints.

``build_encoder(arch, stem=..., width=...)`` returns a module mapping images to the
representation ``(N, D)``; heads come from :func:`build_mlp`; checkpoints are written and
read by :mod:`models.checkpoint`.
"""
from utils import UserError

from .checkpoint import (
    CheckpointError,
    build_head,
    load_checkpoint,
    load_encoder,
    load_state_dict_strict,
    save_checkpoint,
    save_simsiam,
    strip_prefixes,
)
from .heads import EncoderWithHead, build_mlp, simclr_head_dims
from .resnet import RESNET_SPECS, STEMS, ResNetEncoder

ARCHS = tuple(RESNET_SPECS)


def encoder_out_dim(arch: str, width: int, *, what: str = "-a/--arch", flag: str = "-a/--arch") -> int:
    """The representation size of ``build_encoder(arch, width=width)``, without building it (no
    random draw), so an attack can check its stolen encoder before its first query; an architecture
    this project cannot build is one :class:`utils.UserError` naming ``what`` (the flag, or where the
    name came from) and the ``flag`` that picks another."""
    if arch not in RESNET_SPECS:
        raise UserError(f"{what} {arch!r} is not an architecture this project builds; pick one of "
                        f"{', '.join(ARCHS)} with {flag}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"the width of {arch} must be a positive integer, got {width!r}; pass it with --width")
    block, _ = RESNET_SPECS[arch]
    return width * 8 * block.expansion


def build_encoder(arch: str, **kwargs) -> ResNetEncoder:
    """Build an encoder by name (``resnet18``, ``resnet34``, ``resnet50``)."""
    return ResNetEncoder(arch, **kwargs)


__all__ = ["ARCHS", "STEMS", "encoder_out_dim",
           "ResNetEncoder", "build_encoder", "EncoderWithHead", "build_mlp", "simclr_head_dims",
           "build_head", "save_checkpoint", "save_simsiam", "load_checkpoint", "load_encoder",
           "load_state_dict_strict", "strip_prefixes", "CheckpointError"]
