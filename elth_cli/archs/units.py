"""The units of a network: which axes of which tensors move together when its units are permuted,
widened or narrowed (docs/families.md, "Units").

A *unit* is what a layer's output holds one of and the next layer reads as one input: a channel of
a convolution, a neuron of a Linear layer, a head of an attention layer. Units that must move
together form a *group*: a convolution's output channels with its BatchNorm's parameters and the
next convolution's input channels; in a residual network every block of a stage adds into the same
channels, so the stem (or the stage's shortcut), every block's last convolution and the next
block's first one share one group. Permuting a group's units on every axis it owns leaves the
network's function unchanged, which is what alignment (``elth align``) searches over and what width
transfer (``elth widen``, ``elth narrow``) duplicates or selects.

A family describes its units with ``Family.units(spec, shapes)`` (``shapes``: every state-dict key's
shape) and :class:`UnitsBuilder`; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from elth_cli.errors import UsageError

Shape = tuple[int, ...]
# The running statistics of a norm layer: they follow the units but are not weights to match.
STATISTICS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Probe:
    """Where a group's units are seen as activations (for matching by activations): the output (or, with
    ``where="in"``, the first input) of the module called ``module``, units on ``axis`` (1: a batch of
    feature maps or vectors; -1: tokens)."""

    module: str
    where: str = "out"
    axis: int = 1


@dataclass(frozen=True)
class UnitGroup:
    """``size`` units that move together; each unit spans ``unit_dims`` consecutive elements of an axis (a head
    spans its head dimension); ``probes``: where they are seen as activations."""

    name: str
    size: int
    unit_dims: int = 1
    probes: tuple[Probe, ...] = ()

    @property
    def span(self) -> int:
        """Elements of one copy of the group on an axis."""
        return self.size * self.unit_dims


@dataclass(frozen=True)
class Units:
    """A network's unit groups and, for every state-dict key, the group of each axis (None: an axis that is
    not units, e.g. a kernel's height or the input's pixels). An axis may hold several copies of a group
    (a ViT's ``qkv`` weight holds queries, keys and values: three copies of the heads). ``fan_in``: the
    weights that sum over a group's units, and the axis they sum over (what keeps a widened network's
    function: the duplicated inputs' weights are divided by the number of copies)."""

    groups: dict[str, UnitGroup]
    axes: dict[str, tuple[str | None, ...]]
    fan_in: dict[str, int] = field(default_factory=dict)

    def copies(self, key: str, axis: int, length: int) -> int:
        """How many copies of its group the ``axis`` of ``key`` holds when it is ``length`` long."""
        return length // self.groups[self.axes[key][axis]].span

    def entries(self, group: str) -> list[tuple[str, int]]:
        """Every (key, axis) that holds ``group``'s units."""
        return [(k, a) for k, axes in self.axes.items() for a, g in enumerate(axes) if g == group]


class UnitsBuilder:
    """Builds a family's :class:`Units` from its state-dict shapes, layer by layer:

        b = UnitsBuilder(shapes)
        g = b.group("stem", size_of="conv.weight", probes=(Probe("bn"),))
        b.conv("conv.", None, g); b.norm("bn.", g)
        ...
        return b.done()
    """

    def __init__(self, shapes: Mapping[str, Shape]) -> None:
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.groups: dict[str, UnitGroup] = {}
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.fan_in: dict[str, int] = {}

    def group(self, name: str, size: int | None = None, size_of: str | None = None, unit_dims: int = 1,
              probes: tuple[Probe, ...] = ()) -> str:
        """A new group of ``size`` units (or as many as ``size_of``'s first axis has); returns its name."""
        if size is None:
            size = self.shapes[size_of or ""][0] // unit_dims
        self.groups[name] = UnitGroup(name, size, unit_dims, probes)
        return name

    def probe(self, name: str, *probes: Probe) -> None:
        """More places where group ``name``'s units are seen."""
        g = self.groups[name]
        self.groups[name] = UnitGroup(g.name, g.size, g.unit_dims, g.probes + probes)

    def tensor(self, key: str, axes: tuple[str | None, ...], fan_in: int | None = None) -> None:
        """``key``'s axes as given (a class token, a position embedding, a weight of an unusual shape)."""
        self.axes[key] = axes
        if fan_in is not None:
            self.fan_in[key] = fan_in

    def conv(self, prefix: str, g_in: str | None, g_out: str | None, depthwise: bool = False) -> None:
        """A convolution or Linear layer ``prefix``: weight (out, in, kernel...) and its bias if it has one
        (None: not units, e.g. the input's channels or the classes). A depthwise convolution's one input
        channel per output is its output's unit: it sums over none."""
        weight = self.shapes[prefix + "weight"]
        rest = (None,) * (len(weight) - 2)
        if depthwise:
            self.tensor(prefix + "weight", (g_out, None, *rest))
        else:
            self.tensor(prefix + "weight", (g_out, g_in, *rest), fan_in=1 if g_in is not None else None)
        if prefix + "bias" in self.shapes:
            self.tensor(prefix + "bias", (g_out,))

    linear = conv

    def norm(self, prefix: str, g: str) -> None:
        """A BatchNorm or LayerNorm ``prefix`` over ``g``: its affine parameters and running statistics."""
        for name in ("weight", "bias", *STATISTICS):
            if prefix + name in self.shapes:
                self.tensor(prefix + name, (g,))
        if prefix + "num_batches_tracked" in self.shapes:
            self.tensor(prefix + "num_batches_tracked", ())

    def done(self) -> Units:
        """The units, checked: every key described, every unit axis a whole number of copies of its group."""
        units = Units(dict(self.groups), dict(self.axes), dict(self.fan_in))
        check_units(units, self.shapes)
        return units


def check_units(units: Units, shapes: Mapping[str, Shape], where: str = "") -> None:
    """Refuse a units description that does not fit ``shapes``: a key left out or unknown, an axis count
    or length that is not whole copies of its group."""
    for key in shapes:
        if key not in units.axes:
            raise UsageError(f"{where}the units say nothing of {key}; describe every state-dict key")
    for key, axes in units.axes.items():
        shape = tuple(shapes.get(key, ()))
        if key not in shapes or len(axes) != len(shape):
            raise UsageError(f"{where}the units describe {key} with {len(axes)} axes but it has shape {list(shape)}")
        for axis, (g, n) in enumerate(zip(axes, shape)):
            if g is None:
                continue
            if g not in units.groups:
                raise UsageError(f"{where}{key} axis {axis} names group {g!r}, which the units do not define")
            span = units.groups[g].span
            if span < 1 or n % span:
                raise UsageError(f"{where}{key} axis {axis} has {n} elements, not a whole number of group {g}'s "
                                 f"{span}")


def same_shape_but_units(source: Units, target: Units, shapes_a: Mapping[str, Shape],
                         shapes_b: Mapping[str, Shape]) -> None:
    """Two networks that differ only in their groups' sizes: the same keys, groups and axes, and equal lengths
    on every axis that is not units (what width transfer needs)."""
    if source.axes.keys() != target.axes.keys() or source.groups.keys() != target.groups.keys():
        raise UsageError("the two networks do not have the same layers; width transfer keeps the depth")
    for key, axes in source.axes.items():
        if axes != target.axes[key]:
            raise UsageError(f"{key} holds other units in the two networks")
        for axis, g in enumerate(axes):
            if g is None and shapes_a[key][axis] != shapes_b[key][axis]:
                raise UsageError(f"{key} axis {axis} is {shapes_a[key][axis]} long in one network and "
                                 f"{shapes_b[key][axis]} in the other, and it is not units")


def residual_units(shapes: Mapping[str, Shape], stem: tuple[str, str], blocks: list[tuple[str, list[str]]],
                   shortcut: tuple[str, str], head: str = "fc.") -> Units:
    """The units of a residual network of convolutions with norms: ``stem`` (conv and norm prefixes), then each
    block (its prefix and the names of its conv/norm pairs in order, ``conv1``/``bn1`` as ``"1"``), a shortcut
    (``shortcut`` conv and norm names inside a block) where the block has one, and a Linear ``head``.

    A block adds into its input's units, so it keeps its input's group, unless it has a shortcut
    convolution: then its output is a new group (the stage's). Each conv inside a block has a group of
    its own. Groups are probed at their norms' outputs (before ReLU, so no unit is constant)."""
    b = UnitsBuilder(shapes)
    conv, norm = stem
    current = b.group(conv.rstrip("."), size_of=conv + "weight", probes=(Probe(norm.rstrip(".")),))
    b.conv(conv, None, current)
    b.norm(norm, current)
    for prefix, pairs in blocks:
        sc_conv, sc_norm = prefix + shortcut[0], prefix + shortcut[1]
        out = current
        if sc_conv + "weight" in shapes:
            out = b.group(sc_conv.rstrip("."), size_of=sc_conv + "weight", probes=(Probe(sc_norm.rstrip(".")),))
            b.conv(sc_conv, current, out)
            b.norm(sc_norm, out)
        g_in = current
        for i, n in enumerate(pairs):
            c, bn = f"{prefix}conv{n}.", f"{prefix}bn{n}."
            last = i == len(pairs) - 1
            g = out if last else b.group(c.rstrip("."), size_of=c + "weight", probes=(Probe(bn.rstrip(".")),))
            b.conv(c, g_in, g)
            b.norm(bn, g)
            if last:
                b.probe(out, Probe(bn.rstrip(".")))
            g_in = g
        current = out
    b.linear(head, current, None)
    return b.done()


def chain_units(shapes: Mapping[str, Shape], layers: list[tuple[str, str | None]], head: str = "fc.",
                depthwise: tuple[str, ...] = ()) -> Units:
    """The units of a plain chain of layers: each (conv or Linear prefix, norm prefix or None), then a Linear
    ``head``. Each layer's outputs are a group, probed at its norm (or, without one, at the layer itself);
    a ``depthwise`` convolution keeps its input's units."""
    b = UnitsBuilder(shapes)
    g_in: str | None = None
    for conv, norm in layers:
        probe = Probe((norm or conv).rstrip("."))
        if conv in depthwise and g_in is not None:
            g = g_in
            b.conv(conv, g_in, g, depthwise=True)
            b.probe(g, probe)
        else:
            g = b.group(conv.rstrip("."), size_of=conv + "weight", probes=(probe,))
            b.conv(conv, g_in, g)
        if norm is not None:
            b.norm(norm, g)
        g_in = g
    b.linear(head, g_in, None)
    return b.done()


def numbered(shapes: Mapping[str, Shape], head: str, tail: str) -> list[int]:
    """The numbers ``i`` of the keys ``{head}{i}{tail}`` in ``shapes``, in order (a ModuleList's layers)."""
    found = (k[len(head):-len(tail)] for k in shapes if k.startswith(head) and k.endswith(tail))
    return sorted(int(i) for i in found if i.isdigit())
