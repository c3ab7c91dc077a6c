"""CIFAR MobileNet-V1 with ElasticLTH's ``cifar_mobilenetv1[_N]`` layout and keys.

A 3x3 conv of 32 filters (``conv``, ``bn``), six depthwise-separable blocks up to 512 channels
(``layers_part1``), N blocks of 512 channels at stride 1 (``layers_part2``, 5 by default), two
blocks up to 1024 (``layers_part3``), global average pooling and ``fc``. A block is a depthwise 3x3
conv (``conv1``, groups = its channels) and a pointwise 1x1 conv (``conv2``), each with BN; both are
masked like any conv. The N blocks of ``layers_part2`` are the one stage that stretches and
squeezes; they all have one shape, so its block 0 may be copied too. Everything before is the
stem, ``layers_part3`` and ``fc`` the head, copied unchanged.
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
from elth_cli.archs.units import Shape, Units, chain_units, numbered
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "cifar-mobilenetv1"
DEFAULT_BLOCKS = 5
_NAME = re.compile(r"^mobilenetv1(?:-(\d+))?$")
_ALIAS = re.compile(r"^cifar_mobilenetv1(?:_(\d+))?$")
# (output channels, stride) of each block before and after the 512-channel run, as the reference's plan.
PART1: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
PART3: tuple[tuple[int, int], ...] = ((1024, 2), (1024, 1))


def _spec(blocks: int) -> ArchSpec:
    if not 1 <= blocks <= 64:
        raise UsageError(f"a MobileNet-V1 has 1 to 64 blocks of 512 channels at stride 1, got {blocks}")
    name = "mobilenetv1" if blocks == DEFAULT_BLOCKS else f"mobilenetv1-{blocks}"
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(blocks,), width=32)


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    return _spec(int(m.group(1)) if m.group(1) else DEFAULT_BLOCKS) if m else None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    return parse(name)


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    from elth_cli.archs.nets.mobilenet_net import CifarMobileNetV1

    return CifarMobileNetV1(input_shape[0], num_classes, spec.depths[0], PART1, PART3)


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    tally = ParamTally()
    size = tally.conv(input_shape[0], 32, 3, input_shape[1:], padding=1)
    tally.bn(32)
    channels = 32
    for out, stride in (*PART1, *((512, 1),) * spec.depths[0], *PART3):
        size = tally.conv(channels, channels, 3, size, stride=stride, padding=1, groups=channels)
        tally.bn(channels)
        size = tally.conv(channels, out, 1, size)
        tally.bn(out)
        channels = out
    tally.linear(channels, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)``: ``conv``, ``bn``, each part's blocks (a depthwise ``conv1`` and a
    pointwise ``conv2``, each with BN), ``fc``."""
    tally = StateTally()
    tally.conv("conv", input_shape[0], 32, 3)
    tally.bn("bn", 32)
    channels = 32
    parts = (("layers_part1", PART1), ("layers_part2", ((512, 1),) * spec.depths[0]), ("layers_part3", PART3))
    for part, plan in parts:
        for i, (out, _) in enumerate(plan):
            p = f"{part}.{i}."
            tally.conv(p + "conv1", channels, channels, 3, groups=channels)
            tally.bn(p + "bn1", channels)
            tally.conv(p + "conv2", channels, out, 1)
            tally.bn(p + "bn2", out)
            channels = out
    tally.linear("fc", channels, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    blocks = tuple(f"layers_part2.{i}." for i in range(spec.depths[0]))
    return BlockLayout(stem=("conv.", "bn.", "layers_part1."), stages=(blocks,), head=("layers_part3.", "fc."),
                       free_first=(True,))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """Channels: the stem's, then each block's pointwise conv's; a depthwise conv keeps its input's channels."""
    layers: list[tuple[str, str | None]] = [("conv.", "bn.")]
    depthwise = []
    for part in ("layers_part1.", "layers_part2.", "layers_part3."):
        for i in numbered(shapes, part, ".conv1.weight"):
            layers += [(f"{part}{i}.conv1.", f"{part}{i}.bn1."), (f"{part}{i}.conv2.", f"{part}{i}.bn2.")]
            depthwise.append(f"{part}{i}.conv1.")
    return chain_units(shapes, layers, depthwise=tuple(depthwise))


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("mobilenetv1-3", "mobilenetv1", "mobilenetv1-7"),
    default_exclude=(),
    recipe="cifar",
    native_input=((3, 32, 32), 10),
    reference_mapping="one",
    units=units,
    state=state,
)
