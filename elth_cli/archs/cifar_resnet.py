"""CIFAR ResNets (He et al. 2016, section 4.2) with open_lth's ``cifar_resnet_N[_W]`` state-dict keys.

resnet{6n+2}: a 3x3 stem conv, three stages of n basic blocks with W, 2W, 4W filters
(W = 16 by default), a 1x1 conv + BN shortcut only where the shape changes, global
average pooling and a linear classifier. Keys: ``conv``, ``bn``, ``blocks.<i>.conv1``,
``blocks.<i>.bn1``, ``blocks.<i>.conv2``, ``blocks.<i>.bn2``, ``blocks.<i>.shortcut.{0,1}``, ``fc``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from elth_cli.archs.base import (
    ArchSpec,
    BlockLayout,
    Family,
    ParamCount,
    ParamTally,
    StateEntry,
    StateTally,
)
from elth_cli.archs.units import Shape, Units, residual_units
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "cifar-resnet"
DEFAULT_WIDTH = 16
_NAME = re.compile(r"^resnet(\d+)(?:-w(\d+))?$")
_ALIAS = re.compile(r"^cifar_resnet_(\d+)(?:_(\d+))?$")


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


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    in_channels = input_shape[0]
    # Imported here: the modules need torch, and resolving names or counting parameters must not.
    from elth_cli.archs.nets.cifar_resnet_net import CifarResNet

    return CifarResNet(spec.depths[0], spec.width, in_channels, num_classes)


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The parameters and forward MACs of ``build(spec, ...)``, layer by layer as ``nets.cifar_resnet_net`` has them."""
    tally = ParamTally()
    current = spec.width
    size = tally.conv(input_shape[0], current, 3, input_shape[1:], padding=1)
    tally.bn(current)
    # Like CifarResNet: three stages of depths[0] blocks with W, 2W, 4W filters; the first block of
    # stages 1 and 2 downsamples (stride 2 in conv1 and in the shortcut).
    for stage, filters in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
        for b in range(spec.depths[0]):
            stride = 2 if stage > 0 and b == 0 else 1
            out = tally.conv(current, filters, 3, size, stride=stride, padding=1)
            tally.bn(filters)
            tally.conv(filters, filters, 3, out, padding=1)
            tally.bn(filters)
            if stride != 1 or current != filters:  # the 1x1 conv + BN shortcut
                tally.conv(current, filters, 1, size, stride=stride)
                tally.bn(filters)
            current, size = filters, out
    tally.linear(current, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)`` in ``nets.cifar_resnet_net``'s order, without building it."""
    tally = StateTally()
    current = spec.width
    tally.conv("conv", input_shape[0], current, 3)
    tally.bn("bn", current)
    i = 0
    for stage, filters in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
        for b in range(spec.depths[0]):
            p = f"blocks.{i}."
            tally.conv(p + "conv1", current, filters, 3)
            tally.bn(p + "bn1", filters)
            tally.conv(p + "conv2", filters, filters, 3)
            tally.bn(p + "bn2", filters)
            if (stage > 0 and b == 0) or current != filters:  # the 1x1 conv + BN shortcut
                tally.conv(p + "shortcut.0", current, filters, 1)
                tally.bn(p + "shortcut.1", filters)
            current, i = filters, i + 1
    tally.linear("fc", current, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    stages, i = [], 0
    for n in spec.depths:
        stages.append(tuple(f"blocks.{i + b}." for b in range(n)))
        i += n
    return BlockLayout(stem=("conv.", "bn."), stages=tuple(stages), head=("fc.",))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """Channels: the stem's and each stage's (shared by every block's second conv, through the additions; a new
    group where a 1x1 shortcut changes the shape), and each block's first conv's."""
    blocks = [(f"blocks.{i}.", ["1", "2"]) for i in range(sum(spec.depths))]
    return residual_units(shapes, ("conv.", "bn."), blocks, ("shortcut.0.", "shortcut.1."))


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    default_exclude=(),
    recipe="cifar",
    native_input=((3, 32, 32), 10),
    reference_mapping="one",
    units=units,
    state=state,
)
