"""CIFAR VGGs with a stack of fully connected layers (the paper's VGG-13-n; ElasticLTH's
``cifar_vggnfc_D_W_n``), with the reference's state-dict keys.

``vgg13-fc3`` is ``cifar_vggnfc_13_64_3``: VGG-13's convolutions (``layers.*``, as ``vgg13``), then
n - 1 hidden linear layers of 8W units (``classifier.0``, ``classifier.2``, ...: ReLUs take the odd
places in the Sequential, as in the reference) and the classifier ``fc``: n fully connected layers
in all. The hidden layers are the one stage that stretches and squeezes; they all have one shape,
so its block 0 may be copied too (VGG-13-2 to VGG-13-5 replicates a single hidden layer). The
convolutions are the stem and ``fc`` the head, both copied unchanged: as the reference's
change_depth for this family, the convolutional depth does not change.
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

FAMILY_NAME = "cifar-vgg-fc"
DEFAULT_WIDTH = 64
_NAME = re.compile(r"^vgg(\d+)(?:-w(\d+))?-fc(\d+)$")
_ALIAS = re.compile(r"^cifar_vggnfc_(\d+)(?:_(\d+))?(?:_(\d+))?$")


def _spec(depth: int, width: int, num_fc: int) -> ArchSpec:
    if depth not in CONVS_PER_STAGE:
        raise UsageError(f"vgg{depth} is not a known VGG; known: vgg11, vgg13, vgg16, vgg19")
    if width < 1:
        raise UsageError("width must be a positive number of filters, e.g. vgg13-w16-fc3")
    if num_fc < 2:
        plain = f"vgg{depth}" + ("" if width == DEFAULT_WIDTH else f"-w{width}")
        raise UsageError(f"a VGG with {num_fc} fully connected layer has no hidden one to stretch: it is "
                         f"{plain} (the cifar-vgg family); give two or more, e.g. {plain}-fc3")
    name = f"vgg{depth}" + ("" if width == DEFAULT_WIDTH else f"-w{width}") + f"-fc{num_fc}"
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(num_fc - 1,), width=width, variant=str(depth))


def _groups(m: re.Match) -> tuple[int, int | None, int | None]:
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name)
    if m:
        depth, width, num_fc = _groups(m)
        return _spec(depth, width or DEFAULT_WIDTH, num_fc)
    m = _ALIAS.match(name)
    if m:
        depth, width, num_fc = _groups(m)
        return _spec(depth, width or DEFAULT_WIDTH, num_fc or 1)
    return None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """``vgg13-fc5`` (the source's width kept), ``fc5``, or the reference's name; the convolutions stay."""
    m = re.match(r"^fc(\d+)$", name)
    if m:
        return _spec(int(source.variant), source.width, int(m.group(1)))
    m = _NAME.match(name) or _ALIAS.match(name)
    if not m:
        return None
    depth, width, num_fc = _groups(m)
    if depth != int(source.variant):
        own = source.depths[0] + 1  # the source's FC count: an example must name another
        example = num_fc if num_fc and num_fc != own else own + 2
        raise UsageError(f"{source.name} stretches and squeezes its fully connected layers only (the reference's "
                         f"change_depth keeps the convolutions); keep vgg{source.variant}, e.g. "
                         f"{_spec(int(source.variant), source.width, example).name}")
    return _spec(depth, width or source.width, num_fc or 1)


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    from elth_cli.archs.nets.vgg_net import CifarVGGFC

    return CifarVGGFC(CONVS_PER_STAGE[int(spec.variant)], spec.width, input_shape[0], num_classes, spec.depths[0])


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """VGG's convolutions (as ``vgg.count``), the hidden 8W x 8W linear layers, the classifier."""
    tally = ParamTally()
    filters = tally_convs(tally, CONVS_PER_STAGE[int(spec.variant)], spec.width, input_shape)
    for _ in range(spec.depths[0]):
        tally.linear(filters, filters)
    tally.linear(filters, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)``: VGG's convolutions, ``classifier.0``, ``classifier.2``, ..., ``fc``."""
    tally = StateTally()
    filters = state_convs(tally, CONVS_PER_STAGE[int(spec.variant)], spec.width, input_shape[0])
    for i in range(spec.depths[0]):
        tally.linear(f"classifier.{2 * i}", filters, filters)
    tally.linear("fc", filters, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    hidden = tuple(f"classifier.{2 * i}." for i in range(spec.depths[0]))
    return BlockLayout(stem=("layers.",), stages=(hidden,), head=("fc.",), free_first=(True,))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """Channels of each convolution, then the neurons of each hidden Linear layer of the classifier."""
    convs = [(f"layers.{i}.conv.", f"layers.{i}.bn.") for i in numbered(shapes, "layers.", ".conv.weight")]
    hidden = [(f"classifier.{i}.", None) for i in numbered(shapes, "classifier.", ".weight")]
    return chain_units(shapes, convs + hidden)


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("vgg13-fc2", "vgg13-fc3", "vgg13-fc5"),
    default_exclude=("fc.weight",),  # as the reference's cifar_vggnfc
    recipe="cifar",
    native_input=((3, 32, 32), 10),
    reference_mapping="classifier",
    units=units,
    state=state,
)
