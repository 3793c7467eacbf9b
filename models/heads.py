"""One MLP builder for every head (SimCLR projection head, SimSiam projector/predictor,
watermark classifier, recreated heads). Heads are kept separate from encoders."""
from __future__ import annotations

from typing import Sequence

from torch import nn


def build_mlp(dims: Sequence[int], *, batchnorm: bool = False, last_bn: bool = False,
              last_bn_affine: bool = True, bias: bool = True) -> nn.Sequential:
    """An MLP through ``dims`` (e.g. ``[512, 512, 128]``): Linear, [BN], ReLU between layers.

    ``batchnorm`` puts BatchNorm1d after every hidden Linear (the SimSiam/"symmetrized"
    head); ``last_bn`` adds one after the output layer (SimSiam's projector, where it is
    affine-free). Linear layers followed by BN drop their bias, which BN would cancel.
    """
    dims = list(dims)
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        with_bn = (batchnorm and not last) or (last and last_bn)
        layers.append(nn.Linear(d_in, d_out, bias=bias and not with_bn))
        if with_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if last else True))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def simclr_head_dims(in_dim: int, out_dim: int) -> list[int]:
    """SimCLR's projection head g: Linear(d, d) - ReLU - Linear(d, out_dim)."""
    return [in_dim, in_dim, out_dim]


class EncoderWithHead(nn.Module):
    """An encoder f and a head g kept as separate modules; ``forward`` is g(f(x)).

    The SimCLR model (projection head) and a classifier (linear or MLP head) are both this.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x):
        return self.head(self.encoder(x))
