"""What every architecture family provides: a parsed name, a model builder and a block layout.

The block layout is the single description that stretching and squeezing read: the
state-dict key prefixes of the stem, of every block of every stage (in order), and of
the head. Every key of the model's state dict belongs to exactly one of them.

This module is free of torch: the torch helpers (init, prunable keys of a live model,
meta-device state) live in ``elth_cli.archs.nets.common``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple

if TYPE_CHECKING:
    from torch import nn

    from elth_cli.archs.units import Units


def owns(prefix: str, key: str) -> bool:
    """Whether a layout entry holds a state-dict key: a module prefix ending in '.' holds the keys under it, any
    other entry is one whole key (a parameter of the network itself, e.g. a transformer's ``cls_token``)."""
    return key.startswith(prefix) if prefix.endswith(".") else key == prefix


@dataclass(frozen=True)
class BlockLayout:
    """Per-stage ordered blocks of a network, as state-dict key prefixes (ending in '.'); the stem and head
    may also name whole keys (``cls_token``, ``pos_embed``)."""

    stem: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]
    # Per stage: whether its block 0 has the shape of the others and may be copied or dropped like
    # them (fully connected stacks). Empty: no stage's (a ResNet's block 0 changes the shape).
    free_first: tuple[bool, ...] = ()

    def first_is_free(self, stage: int) -> bool:
        return bool(self.free_first) and self.free_first[stage]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def locate(self, key: str) -> tuple[str, int, int]:
        """Return ``("stem"|"head", -1, -1)`` or ``("block", stage, block)`` for a state-dict key."""
        for s, blocks in enumerate(self.stages):
            for b, prefix in enumerate(blocks):
                if owns(prefix, key):
                    return ("block", s, b)
        if any(owns(p, key) for p in self.stem):
            return ("stem", -1, -1)
        if any(owns(p, key) for p in self.head):
            return ("head", -1, -1)
        raise KeyError(f"state-dict key {key!r} belongs to no stem, block or head of the layout")


@dataclass(frozen=True)
class ArchSpec:
    """A resolved architecture: canonical name, family, blocks per stage and width."""

    name: str
    family: str
    depths: tuple[int, ...]
    width: int
    # Family-specific detail (e.g. the ImageNet ResNet block type); part of identity.
    variant: str = ""

    @property
    def depth_label(self) -> str:
        return "/".join(str(d) for d in self.depths)


class ParamCount(NamedTuple):
    """What a model costs, worked out from its spec: its parameters, the prunable weights among them,
    and the multiply-accumulates of one forward pass of one input sample."""

    # Weights and biases, BatchNorm weight and bias included; running stats and counters excluded.
    parameters: int
    # Every conv and Linear weight: what a ticket masks.
    prunable: int
    # Forward multiply-accumulates per sample of every conv and Linear layer, and of attention's own products
    # (QK^T and the weighted sum of V), dense (bias adds, norms, softmax, activations and pooling not counted:
    # the convention of elth_cli.flops, which checks it on the model).
    macs: int


Size = tuple[int, int]


def conv_size(size: Size, kernel: int, stride: int = 1, padding: int = 0) -> Size:
    """The (height, width) a square Conv2d (dilation 1) makes of a (height, width) input."""
    return ((size[0] + 2 * padding - kernel) // stride + 1, (size[1] + 2 * padding - kernel) // stride + 1)


def pool_size(size: Size, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Size:
    """The (height, width) a square MaxPool2d makes of a (height, width) input, as torch computes it."""

    def one(n: int) -> int:
        span = n + 2 * padding - kernel
        out = (-(-span // stride) if ceil_mode else span // stride) + 1
        # torch: with ceil_mode, the last window must start inside the input or its left padding.
        if ceil_mode and (out - 1) * stride >= n + padding:
            out -= 1
        return out

    return (one(size[0]), one(size[1]))


class ParamTally:
    """Adds up a model's parameters layer by layer, as torch counts them, and its forward MACs per sample,
    without building it. Each conv takes the (height, width) of its input and returns that of its output."""

    def __init__(self) -> None:
        self.parameters = 0
        self.prunable = 0
        self.macs = 0

    def conv(self, f_in: int, f_out: int, kernel: int, size: Size, stride: int = 1, padding: int = 0,
             bias: bool = False, groups: int = 1) -> Size:
        """A square ``kernel`` x ``kernel`` Conv2d on a ``size`` input (``groups``: f_in a depthwise conv's);
        returns the output size."""
        weight = f_in // groups * f_out * kernel * kernel
        self.parameters += weight + (f_out if bias else 0)
        self.prunable += weight
        out = conv_size(size, kernel, stride, padding)
        self.macs += weight * out[0] * out[1]  # every output element is f_in * kernel^2 multiply-adds
        return out

    def bn(self, features: int) -> None:
        """A BatchNorm2d: weight and bias (its running stats are buffers, not parameters)."""
        self.parameters += 2 * features

    def linear(self, f_in: int, f_out: int, tokens: int = 1) -> None:
        """A Linear layer with bias, on ``tokens`` vectors per sample (one: a classifier; a transformer's
        layers see every token)."""
        self.parameters += f_in * f_out + f_out
        self.prunable += f_in * f_out
        self.macs += f_in * f_out * tokens

    def norm(self, features: int) -> None:
        """A LayerNorm (or any affine norm): weight and bias."""
        self.parameters += 2 * features

    def tensor(self, numel: int) -> None:
        """A parameter of the network itself, never masked (a transformer's class token, position embedding)."""
        self.parameters += numel

    def attention(self, tokens: int, features: int) -> None:
        """Multi-head attention's own products over ``tokens`` tokens (heads x head_dim = ``features``): Q K^T
        and the weighted sum of V, tokens^2 x features multiply-adds each (its Linear layers are counted apart)."""
        self.macs += 2 * tokens * tokens * features

    def total(self) -> ParamCount:
        return ParamCount(self.parameters, self.prunable, self.macs)


class StateEntry(NamedTuple):
    """One tensor of a model's state dict, worked out from its spec: its key, shape, dtype (numpy's name:
    ``"float32"``, ``"int64"``) and whether a ticket masks it (every conv and Linear weight)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    prunable: bool


@dataclass(frozen=True)
class StateShapes:
    """A model's state dict without the model: every key's shape and dtype name in ``state_dict()`` order, and
    the keys a ticket masks (every conv and Linear weight, in the model's order)."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    prunable: tuple[str, ...]

    @classmethod
    def of(cls, entries: list[StateEntry]) -> StateShapes:
        return cls({e.key: tuple(e.shape) for e in entries}, {e.key: e.dtype for e in entries},
                   tuple(e.key for e in entries if e.prunable))


class StateTally:
    """Writes down a model's state dict layer by layer, as torch's modules name and shape it, without building it.

    Each method takes the layer's module name (``"layer1.0.conv1"``; ``""`` for the model itself) and appends
    its tensors in the order ``state_dict()`` gives them; :meth:`done` returns the list.
    """

    def __init__(self) -> None:
        self.entries: list[StateEntry] = []

    def add(self, key: str, shape: tuple[int, ...], dtype: str = "float32", prunable: bool = False) -> None:
        """One tensor (a parameter or a buffer) under its full key."""
        self.entries.append(StateEntry(key, tuple(shape), dtype, prunable))

    def _param(self, module: str, name: str, shape: tuple[int, ...], dtype: str = "float32",
               prunable: bool = False) -> None:
        self.add(f"{module}.{name}" if module else name, shape, dtype, prunable)

    def conv(self, module: str, f_in: int, f_out: int, kernel: int, bias: bool = False, groups: int = 1) -> None:
        """A square Conv2d: its weight (masked), then its bias if it has one."""
        self._param(module, "weight", (f_out, f_in // groups, kernel, kernel), prunable=True)
        if bias:
            self._param(module, "bias", (f_out,))

    def bn(self, module: str, features: int) -> None:
        """A BatchNorm2d: weight, bias, running_mean, running_var and the int64 num_batches_tracked counter."""
        for name in ("weight", "bias", "running_mean", "running_var"):
            self._param(module, name, (features,))
        self._param(module, "num_batches_tracked", (), "int64")

    def linear(self, module: str, f_in: int, f_out: int, bias: bool = True) -> None:
        """A Linear layer: its weight (masked), then its bias."""
        self._param(module, "weight", (f_out, f_in), prunable=True)
        if bias:
            self._param(module, "bias", (f_out,))

    def norm(self, module: str, features: int) -> None:
        """A LayerNorm (or any affine norm without running statistics): weight and bias."""
        self._param(module, "weight", (features,))
        self._param(module, "bias", (features,))

    def tensor(self, key: str, shape: tuple[int, ...]) -> None:
        """A parameter of the network itself, never masked (a transformer's class token, position embedding)."""
        self.add(key, shape)

    def done(self) -> list[StateEntry]:
        return list(self.entries)


@dataclass(frozen=True)
class Family:
    """One architecture family: how names parse, how models are built, how blocks are laid out.

    This record is the public family API (docs/families.md): the six built-in families, the vision
    transformer and any family registered from outside elth (``elth_cli.archs.register_family``, the
    ``elth.families`` entry points, ``--family-module``) are described by it and nothing else.

    ``parse`` returns None for a name that is not of this family, and raises UsageError for a
    name that is of this family but invalid (e.g. resnet21). ``build`` imports torch when
    called; every other field works without torch (``count`` and ``state`` describe the built
    model from its spec).
    """

    name: str
    parse: Callable[[str], ArchSpec | None]
    # The model for a (channels, height, width) input: ``build(spec, input_shape, num_classes)``.
    build: Callable[[ArchSpec, tuple[int, int, int], int], nn.Module]
    layout: Callable[[ArchSpec], BlockLayout]
    # The parameter counts and forward MACs of ``build(spec, input_shape, num_classes)`` on a
    # (channels, height, width) input, worked out from the spec alone. None: counted on the model,
    # built on the meta device (exact, but it needs torch).
    count: Callable[[ArchSpec, tuple[int, int, int], int], ParamCount] | None = None
    # Resolve a target name relative to a source (keeps the source's width where unspecified). None:
    # ``parse(name)``, a name of the same family spelled in full.
    resolve_target: Callable[[ArchSpec, str], ArchSpec | None] | None = None
    standard_names: tuple[str, ...] = ()
    # Prunable keys left dense by default (the paper's setting: fc excluded for VGG).
    default_exclude: tuple[str, ...] = ()
    # Which training recipe applies by default (a name of ``elth_cli.train.config.RECIPES``).
    recipe: str = "cifar"
    # The data set whose shape the family is normally used with (for listings).
    native_input: tuple[tuple[int, int, int], int] = ((3, 32, 32), 10)
    # How a fresh model's weights are drawn: "open_lth" (Kaiming-normal conv and linear weights,
    # BatchNorm gamma ~ U[0, 1); the reference code's, every built-in CNN and MLP) or "model" (what the
    # module's constructor did: a transformer's truncated normal, a plugin's own scheme).
    init: str = "open_lth"
    # The reference code (open_lth / ElasticLTH): the prefix of its state-dict and mask keys (its ImageNet
    # ResNet wraps torchvision's as ``model``), and how its --block_mapping takes a mapping: "one" string
    # applied to every stage (CIFAR ResNets), or "per-stage" strings joined by "|" (ImageNet ResNets, VGGs);
    # "none": the reference has no such family (the vision transformer), so a ticket records no reference mapping.
    reference_prefix: str = ""
    reference_mapping: str = "per-stage"
    # Who provides the family: the module that registered it and that module's distribution version
    # (filled in by the registry; a ticket records them so that its family can be found again).
    provider: str = "elth_cli"
    provider_version: str = ""
    # The network's units (elth_cli.archs.units): which axes of which state-dict tensors move together when
    # its units are permuted (``elth align``) or widened and narrowed (``elth widen``, ``elth narrow``);
    # ``units(spec, shapes)`` with every state-dict key's shape. None: the family offers neither.
    units: Callable[[ArchSpec, Mapping[str, tuple[int, ...]]], Units] | None = None
    # The state dict of ``build(spec, input_shape, num_classes)`` without building it: every key in
    # ``state_dict()`` order with its shape, dtype name and whether a ticket masks it (``StateTally`` writes
    # it layer by layer). None: read off the model, built on the meta device (exact, but it needs torch).
    state: Callable[[ArchSpec, tuple[int, int, int], int], list[StateEntry]] | None = None
