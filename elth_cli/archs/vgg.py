"""CIFAR VGG-11/13/16/19 with open_lth's ``cifar_vgg_N`` state-dict keys.

Convolutions with batch norm, max-pools between five stages, global average pooling and a
single linear classifier. A "block" is one conv + BN module (``layers.<i>.conv``,
``layers.<i>.bn``); ``<i>`` counts the max-pool modules too, as in open_lth. Stage widths
are W, 2W, 4W, 8W, 8W with W = 64 by default (``vgg16-w16`` for a narrow one).
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from elth_cli.archs.base import ArchSpec, BlockLayout, Family
from elth_cli.errors import UsageError

FAMILY_NAME = "cifar-vgg"
DEFAULT_WIDTH = 64
_NAME = re.compile(r"^vgg(\d+)(?:-w(\d+))?$")
_ALIAS = re.compile(r"^cifar_vgg_(\d+)(?:_(\d+))?$")
CONVS_PER_STAGE: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_STAGE_SCALE = (1, 2, 4, 8, 8)


class ConvModule(nn.Module):
    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """open_lth's CIFAR VGG; max-pools use ceil_mode so inputs smaller than 32x32 (digits) still fit."""

    def __init__(self, depths: tuple[int, ...], width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        filters = in_channels
        for stage, n in enumerate(depths):
            if stage > 0:
                # ceil_mode keeps a 1x1 map at 1x1; on even sizes it equals open_lth's pooling.
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            for _ in range(n):
                layers.append(ConvModule(filters, width * _STAGE_SCALE[stage]))
                filters = width * _STAGE_SCALE[stage]
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _spec(depth: int, width: int) -> ArchSpec:
    if depth not in CONVS_PER_STAGE:
        raise UsageError(f"vgg{depth} is not a known VGG; known: vgg11, vgg13, vgg16, vgg19")
    if width < 1:
        raise UsageError("width must be a positive number of filters, e.g. vgg16-w32")
    name = f"vgg{depth}" if width == DEFAULT_WIDTH else f"vgg{depth}-w{width}"
    return ArchSpec(name=name, family=FAMILY_NAME, depths=CONVS_PER_STAGE[depth], width=width)


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    if not m:
        return None
    return _spec(int(m.group(1)), int(m.group(2)) if m.group(2) else DEFAULT_WIDTH)


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    if not m:
        return None
    return _spec(int(m.group(1)), int(m.group(2)) if m.group(2) else source.width)


def build(spec: ArchSpec, in_channels: int, num_classes: int) -> nn.Module:
    return CifarVGG(spec.depths, spec.width, in_channels, num_classes)


def layout(spec: ArchSpec) -> BlockLayout:
    stages, index = [], 0
    for stage, n in enumerate(spec.depths):
        if stage > 0:
            index += 1  # the max-pool module takes an index in nn.Sequential
        stages.append(tuple(f"layers.{index + b}." for b in range(n)))
        index += n
    return BlockLayout(stem=(), stages=tuple(stages), head=("fc.",))


FAMILY = Family(
    name=FAMILY_NAME,
    description="CIFAR VGG (open_lth cifar_vgg_N): vgg11/13/16/19[-wW], 5 stages split by max-pools",
    parse=parse,
    build=build,
    layout=layout,
    resolve_target=resolve_target,
    standard_names=("vgg11", "vgg13", "vgg16", "vgg19"),
    default_exclude=("fc.weight",),
    recipe="cifar",
    native_input=((3, 32, 32), 10),
)
