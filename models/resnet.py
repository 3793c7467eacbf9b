"""ResNet encoders that return the representation, one family for every pipeline.

The reference kept two incompatible ResNet families (a CIFAR one with ``shortcut`` keys
and a 3x3 stem, and torchvision's). Here there is one implementation whose module names
match torchvision's (``conv1``, ``bn1``, ``layerN.M.downsample``), so a torchvision or
SimSiam ResNet checkpoint loads into it unchanged, and two stems:

* ``stem="cifar"``: 3x3 stride-1 conv, no max-pool, for small images (16-96 px);
* ``stem="imagenet"``: torchvision's 7x7 stride-2 conv and 3x3 max-pool, for 224 px.

``width`` is the channel count of the first stage (64 in the paper); the stages use
width, 2w, 4w, 8w channels, so a narrow network (e.g. width 16) trains in minutes on a
CPU. Pooling is adaptive, so any input size gives the same ``(N, D)`` output with
``D = 8 * width * expansion`` (512 for ResNet18/34 and 2048 for ResNet50 at width 64).

Inputs are images in [0, 1]; the encoder normalises them itself with the per-channel
``mean``/``std`` it was built with (the training set's statistics). They are constructor
arguments, saved in the checkpoint's description, not in the state dict, so the state
dict keys stay exactly torchvision's and every consumer of an encoder (victim API,
probe, attacker) feeds the same [0, 1] images without knowing the victim's statistics.
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3, as torchvision (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]

# name -> (block, blocks per stage)
RESNET_SPECS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}

STEMS = ("cifar", "imagenet")


class ResNetEncoder(nn.Module):
    """A ResNet up to global average pooling: ``forward(x: N x 3 x H x W) -> N x D``."""

    def __init__(self, arch: str = "resnet18", stem: str = "cifar", width: int = 64,
                 in_channels: int = 3, zero_init_residual: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if arch not in RESNET_SPECS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(RESNET_SPECS)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        block, layers = RESNET_SPECS[arch]
        self.arch, self.stem, self.width = arch, stem, width
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(v) for v in std]
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None:
            if len(self.mean) != in_channels or len(self.std) != in_channels or min(self.std) <= 0:
                raise ValueError(f"mean/std need {in_channels} values and std > 0, got {mean}, {std}")
            # not persistent: the values live in the constructor arguments
            self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        stages = []
        for i, (n_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * 2**i
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(_conv1x1(cin, planes * block.expansion, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(cin, planes, stride, downsample)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
