"""What every architecture family provides: a parsed name, a model builder and a block layout.

The block layout is the single description that stretching and squeezing read: the
state-dict key prefixes of the stem, of every block of every stage (in order), and of
the head. Every key of the model's state dict belongs to exactly one of them.

This module is free of torch: the torch helpers (init, prunable keys of a live model,
meta-device state) live in ``elth_cli.archs.nets.common``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class BlockLayout:
    """Per-stage ordered blocks of a network, as state-dict key prefixes (ending in '.')."""

    stem: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def locate(self, key: str) -> tuple[str, int, int]:
        """Return ``("stem"|"head", -1, -1)`` or ``("block", stage, block)`` for a state-dict key."""
        for s, blocks in enumerate(self.stages):
            for b, prefix in enumerate(blocks):
                if key.startswith(prefix):
                    return ("block", s, b)
        if any(key.startswith(p) for p in self.stem):
            return ("stem", -1, -1)
        if any(key.startswith(p) for p in self.head):
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
    """Parameter counts of a model: all floating-point parameters, and the prunable weights among them."""

    # Weights and biases, BatchNorm weight and bias included; running stats and counters excluded.
    parameters: int
    # Every Conv2d and Linear weight: what a ticket masks.
    prunable: int


class ParamTally:
    """Adds up the parameters of a model layer by layer, as torch counts them, without building it."""

    def __init__(self) -> None:
        self.parameters = 0
        self.prunable = 0

    def conv(self, f_in: int, f_out: int, kernel: int, bias: bool = False) -> None:
        """A square ``kernel`` x ``kernel`` Conv2d (groups=1)."""
        weight = f_in * f_out * kernel * kernel
        self.parameters += weight + (f_out if bias else 0)
        self.prunable += weight

    def bn(self, features: int) -> None:
        """A BatchNorm2d: weight and bias (its running stats are buffers, not parameters)."""
        self.parameters += 2 * features

    def linear(self, f_in: int, f_out: int) -> None:
        """A Linear layer with bias."""
        self.parameters += f_in * f_out + f_out
        self.prunable += f_in * f_out

    def total(self) -> ParamCount:
        return ParamCount(self.parameters, self.prunable)


@dataclass(frozen=True)
class Family:
    """One architecture family: how names parse, how models are built, how blocks are laid out.

    ``parse`` returns None for a name that is not of this family, and raises UsageError for a
    name that is of this family but invalid (e.g. resnet21). ``build`` imports torch when
    called; every other field works without torch.
    """

    name: str
    parse: Callable[[str], ArchSpec | None]
    build: Callable[[ArchSpec, int, int], nn.Module]
    layout: Callable[[ArchSpec], BlockLayout]
    # The parameter counts of ``build(spec, in_channels, num_classes)``, worked out from the spec alone.
    count: Callable[[ArchSpec, int, int], ParamCount]
    # Resolve a target name relative to a source (keeps the source's width where unspecified).
    resolve_target: Callable[[ArchSpec, str], ArchSpec | None]
    standard_names: tuple[str, ...]
    # Prunable keys left dense by default (the paper's setting: fc excluded for VGG).
    default_exclude: tuple[str, ...] = ()
    # Which training recipe applies by default ("cifar" or "imagenet").
    recipe: str = "cifar"
    # The data set whose shape the family is normally used with (for listings).
    native_input: tuple[tuple[int, int, int], int] = ((3, 32, 32), 10)
