"""What every architecture family provides: a parsed name, a model builder and a block layout.

The block layout is the single description that stretching and squeezing read: the
state-dict key prefixes of the stem, of every block of every stage (in order), and of
the head. Every key of the model's state dict belongs to exactly one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
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
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def depth_label(self) -> str:
        return "/".join(str(d) for d in self.depths)


@dataclass(frozen=True)
class Family:
    """One architecture family: how names parse, how models are built, how blocks are laid out.

    ``parse`` returns None for a name that is not of this family, and raises UsageError for a
    name that is of this family but invalid (e.g. resnet21).
    """

    name: str
    description: str
    parse: Callable[[str], ArchSpec | None]
    build: Callable[[ArchSpec, int, int], nn.Module]
    layout: Callable[[ArchSpec], BlockLayout]
    # Resolve a target name relative to a source (keeps the source's width where unspecified).
    resolve_target: Callable[[ArchSpec, str], ArchSpec | None]
    standard_names: tuple[str, ...]
    # Prunable keys left dense by default (the paper's setting: fc excluded for VGG).
    default_exclude: tuple[str, ...] = ()
    # Which training recipe applies by default ("cifar" or "imagenet").
    recipe: str = "cifar"
    # The data set whose shape the family is normally used with (for listings).
    native_input: tuple[tuple[int, int, int], int] = ((3, 32, 32), 10)


def open_lth_init(module: nn.Module) -> None:
    """open_lth's default initialisation: Kaiming-normal conv/linear weights, BN gamma~U[0,1), beta=0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.0, 1.0)
        nn.init.zeros_(module.bias)


def prunable_keys_of(model: nn.Module) -> list[str]:
    """State-dict keys of every Conv2d and Linear weight: what a ticket masks."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            keys.append(f"{name}.weight" if name else "weight")
    return keys


def meta_state(build: Callable[[], nn.Module]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build a model on the meta device (no memory, no init cost) and return its state and prunable keys."""
    with torch.device("meta"):
        model = build()
    return dict(model.state_dict()), prunable_keys_of(model)
