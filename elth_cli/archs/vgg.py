"""CIFAR VGG-11/13/16/19 with open_lth's ``cifar_vgg_N`` state-dict keys.

Convolutions with batch norm, max-pools between five stages, global average pooling and a
single linear classifier. A "block" is one conv + BN module (``layers.<i>.conv``,
``layers.<i>.bn``); ``<i>`` counts the max-pool modules too, as in open_lth. Stage widths
are W, 2W, 4W, 8W, 8W with W = 64 by default (``vgg16-w16`` for a narrow one).
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
from elth_cli.archs.vgg_plan import CONVS_PER_STAGE, state_convs, tally_convs
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "cifar-vgg"
DEFAULT_WIDTH = 64
_NAME = re.compile(r"^vgg(\d+)(?:-w(\d+))?$")
_ALIAS = re.compile(r"^cifar_vgg_(\d+)(?:_(\d+))?$")


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


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    in_channels = input_shape[0]
    # Imported here: the modules need torch, and resolving names or counting parameters must not.
    from elth_cli.archs.nets.vgg_net import CifarVGG

    return CifarVGG(spec.depths, spec.width, in_channels, num_classes)


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The parameters and forward MACs of ``build(spec, ...)``: 3x3 convs (pad 1, with bias) + BN, a
    2x2 ceil-mode max-pool before every stage but the first, global average pooling, one fc."""
    tally = ParamTally()
    filters = tally_convs(tally, spec.depths, spec.width, input_shape)
    tally.linear(filters, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)`` (``layers.<i>.conv``/``bn``, max-pools numbered too; ``fc``)."""
    tally = StateTally()
    filters = state_convs(tally, spec.depths, spec.width, input_shape[0])
    tally.linear("fc", filters, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    stages, index = [], 0
    for stage, n in enumerate(spec.depths):
        if stage > 0:
            index += 1  # the max-pool module takes an index in nn.Sequential
        stages.append(tuple(f"layers.{index + b}." for b in range(n)))
        index += n
    return BlockLayout(stem=(), stages=tuple(stages), head=("fc.",))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """Channels: each convolution's outputs (with its BatchNorm), read by the next convolution or the classifier."""
    return chain_units(shapes, [(f"layers.{i}.conv.", f"layers.{i}.bn.") for i in numbered(shapes, "layers.", ".conv.weight")])


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("vgg11", "vgg13", "vgg16", "vgg19"),
    default_exclude=("fc.weight",),
    recipe="cifar",
    native_input=((3, 32, 32), 10),
    units=units,
    state=state,
)
