"""Encoders, heads and self-describing checkpoints.

``build_encoder(arch, stem=..., width=...)`` returns a module mapping images to the
representation ``(N, D)``; heads come from :func:`build_mlp`; checkpoints are written and
read by :mod:`models.checkpoint`.
"""
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


def build_encoder(arch: str, **kwargs) -> ResNetEncoder:
    """Build an encoder by name (``resnet18``, ``resnet34``, ``resnet50``)."""
    return ResNetEncoder(arch, **kwargs)


__all__ = ["ARCHS", "STEMS", "ResNetEncoder", "build_encoder", "EncoderWithHead", "build_mlp", "simclr_head_dims",
           "build_head", "save_checkpoint", "save_simsiam", "load_checkpoint", "load_encoder",
           "load_state_dict_strict", "strip_prefixes", "CheckpointError"]
