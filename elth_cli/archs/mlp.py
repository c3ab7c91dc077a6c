"""Fully connected networks (the paper's MLP-n, open_lth's ``mnist_lenet_*``) with open_lth's keys.

``mlp-300x2`` is ``mnist_lenet_300_300_100``: n hidden layers of width h (``fc_layers.0`` to
``fc_layers.{n-1}``), a narrower layer of width m (``fc_layers.{n}``, 100 by default:
``mlp-300x2-50`` for another) and the classifier ``fc``; ``mlp-300-200-100`` has hidden layers of
different widths (it trains and prunes, but does not stretch). The input is flattened, so any data set
fits. The n hidden layers are the one stage that stretches and squeezes; its block 0 is the input
layer (its input size differs), kept 1:1 like a ResNet's downsampling block. The narrower layer
and the classifier are the head: copied unchanged, their keys shift with the depth.
"""

from __future__ import annotations

import math
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

FAMILY_NAME = "mlp"
DEFAULT_NARROW = 100
_NAME = re.compile(r"^mlp-(\d+)x(\d+)(?:-(\d+))?$")
_PLAN = re.compile(r"^mlp((?:-\d+){2,})$")  # mlp-300-200-100: hidden widths, then the narrow layer
_ALIAS = re.compile(r"^mnist_lenet((?:_\d+)+)$")


def _spec(hidden: int, n: int, narrow: int) -> ArchSpec:
    if hidden < 1 or narrow < 1:
        raise UsageError("MLP widths must be positive numbers of units, e.g. mlp-300x2")
    if not 1 <= n <= 64:
        raise UsageError(f"an MLP has 1 to 64 hidden layers, got {n}")
    name = f"mlp-{hidden}x{n}" + ("" if narrow == DEFAULT_NARROW else f"-{narrow}")
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(n,), width=hidden, variant=str(narrow))


def _from_plan(plan: list[int]) -> ArchSpec:
    """Hidden layers of any widths, then the narrow layer: ``mlp-300x2`` when the hidden widths are equal,
    else ``mlp-300-200-100`` (open_lth's ``mnist_lenet_300_200_100``), which imports, trains and prunes but
    cannot stretch: its blocks are not interchangeable."""
    if len(plan) < 2 or min(plan) < 1:
        raise UsageError("an MLP needs at least one hidden layer and the narrow layer, each of positive width, "
                         "e.g. mnist_lenet_300_300_100 (= mlp-300x2)")
    hidden = plan[:-1]
    if len(set(hidden)) == 1:
        return _spec(hidden[0], len(hidden), plan[-1])
    if len(hidden) > 64:
        raise UsageError(f"an MLP has 1 to 64 hidden layers, got {len(hidden)}")
    name = "mlp-" + "-".join(map(str, plan))
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(len(hidden),), width=hidden[0],
                    variant=",".join(map(str, plan)))


def sizes(spec: ArchSpec) -> list[int]:
    """The output widths of the ``fc_layers``: every hidden layer, then the narrow one."""
    if "," in spec.variant:
        return [int(v) for v in spec.variant.split(",")]
    return [spec.width] * spec.depths[0] + [int(spec.variant)]


def uniform(spec: ArchSpec) -> bool:
    """Whether the hidden layers share one width (the MLPs that stretch and squeeze)."""
    return "," not in spec.variant


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name)
    if m:
        return _spec(int(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else DEFAULT_NARROW)
    m = _PLAN.match(name) or _ALIAS.match(name)
    return _from_plan([int(p) for p in m.group(1).strip("-_").replace("_", "-").split("-")]) if m else None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """``mlp-300x4`` or ``mnist_lenet_300_300_300_300_100``; ``mlp-x4`` keeps the source's widths."""
    if not uniform(source):
        widths = ", ".join(map(str, sizes(source)[:-1]))
        raise UsageError(f"{source.name} has hidden layers of different widths ({widths}): its layers are not "
                         "interchangeable blocks, so it cannot be stretched or squeezed; elth transforms MLPs whose "
                         "hidden layers share one width (mlp-300x2)")
    m = re.match(r"^mlp-x(\d+)$", name)
    if m:
        return _spec(source.width, int(m.group(1)), int(source.variant))
    return parse(name)


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    from elth_cli.archs.nets.mlp_net import MLP

    return MLP(math.prod(input_shape), sizes(spec), num_classes)


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    tally = ParamTally()
    current = math.prod(input_shape)
    for size in sizes(spec):
        tally.linear(current, size)
        current = size
    tally.linear(current, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)``: ``fc_layers.<i>`` on the flattened input, then ``fc``."""
    tally = StateTally()
    current = math.prod(input_shape)
    for i, size in enumerate(sizes(spec)):
        tally.linear(f"fc_layers.{i}", current, size)
        current = size
    tally.linear("fc", current, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    n = spec.depths[0]
    return BlockLayout(stem=(), stages=(tuple(f"fc_layers.{i}." for i in range(n)),),
                       head=(f"fc_layers.{n}.", "fc."))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """The neurons of each hidden layer (the input's pixels and the classes are not units)."""
    return chain_units(shapes, [(f"fc_layers.{i}.", None) for i in numbered(shapes, "fc_layers.", ".weight")])


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("mlp-300x2", "mlp-300x3", "mlp-300x4"),
    default_exclude=("fc.weight",),  # open_lth's mnist_lenet leaves the classifier dense
    recipe="mnist",
    native_input=((1, 28, 28), 10),
    reference_mapping="fc_layers",
    units=units,
    state=state,
)
