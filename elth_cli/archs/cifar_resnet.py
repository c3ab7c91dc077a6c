"""CIFAR ResNets (He et al. 2016, section 4.2) with open_lth's ``cifar_resnet_N[_W]`` state-dict keys.

resnet{6n+2}: a 3x3 stem conv, three stages of n basic blocks with W, 2W, 4W filters
(W = 16 by default), a 1x1 conv + BN shortcut only where the shape changes, global
average pooling and a linear classifier. Keys: ``conv``, ``bn``, ``blocks.<i>.conv1``,
``blocks.<i>.bn1``, ``blocks.<i>.conv2``, ``blocks.<i>.bn2``, ``blocks.<i>.shortcut.{0,1}``, ``fc``.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from elth_cli.archs.base import ArchSpec, BlockLayout, Family
from elth_cli.errors import UsageError

FAMILY_NAME = "cifar-resnet"
DEFAULT_WIDTH = 16
_NAME = re.compile(r"^resnet(\d+)(?:-w(\d+))?$")
_ALIAS = re.compile(r"^cifar_resnet_(\d+)(?:_(\d+))?$")


class Block(nn.Module):
    """A basic residual block; the 1x1 shortcut exists only where the shape changes."""

    def __init__(self, f_in: int, f_out: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(f_out)
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of open_lth, with the input channels and class count as parameters."""

    def __init__(self, blocks_per_stage: int, width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        plan = [(width, blocks_per_stage), (2 * width, blocks_per_stage), (4 * width, blocks_per_stage)]
        current = plan[0][0]
        self.conv = nn.Conv2d(in_channels, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(current)
        blocks = []
        for stage, (filters, n) in enumerate(plan):
            for b in range(n):
                blocks.append(Block(current, filters, downsample=stage > 0 and b == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _spec(depth: int, width: int) -> ArchSpec:
    if depth < 8 or (depth - 2) % 6 != 0:
        raise UsageError(
            f"resnet{depth} is not a CIFAR ResNet depth; CIFAR ResNets have depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)"
        )
    if width < 1:
        raise UsageError("width must be a positive number of filters, e.g. resnet20-w32")
    n = (depth - 2) // 6
    name = f"resnet{depth}" if width == DEFAULT_WIDTH else f"resnet{depth}-w{width}"
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(n, n, n), width=width)


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    if not m:
        return None
    return _spec(int(m.group(1)), int(m.group(2)) if m.group(2) else DEFAULT_WIDTH)


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """``resnet56`` for a ``resnet20-w4`` source means ``resnet56-w4``."""
    m = _NAME.match(name) or _ALIAS.match(name)
    if not m:
        return None
    width = int(m.group(2)) if m.group(2) else source.width
    return _spec(int(m.group(1)), width)


def build(spec: ArchSpec, in_channels: int, num_classes: int) -> nn.Module:
    return CifarResNet(spec.depths[0], spec.width, in_channels, num_classes)


def layout(spec: ArchSpec) -> BlockLayout:
    stages, i = [], 0
    for n in spec.depths:
        stages.append(tuple(f"blocks.{i + b}." for b in range(n)))
        i += n
    return BlockLayout(stem=("conv.", "bn."), stages=tuple(stages), head=("fc.",))


FAMILY = Family(
    name=FAMILY_NAME,
    description="CIFAR ResNet (open_lth cifar_resnet_N): resnet{6n+2}[-wW], 3 stages of n basic blocks",
    parse=parse,
    build=build,
    layout=layout,
    resolve_target=resolve_target,
    standard_names=("resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    default_exclude=(),
    recipe="cifar",
    native_input=((3, 32, 32), 10),
)
