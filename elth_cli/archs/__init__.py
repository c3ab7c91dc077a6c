"""The architecture registry: every family, name resolution, model building and block layouts.

Importing the registry does not import torch: names, layouts, parameter counts and forward MACs
are worked out from the spec. ``build_model``, ``expected_state``, ``prunable_keys`` and the
torch helpers (``prunable_keys_of``, ``open_lth_init``, ``meta_state``) import torch when first
used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from elth_cli.archs import cifar_resnet, imagenet_resnet, mlp, mobilenet, vgg, vgg_fc
from elth_cli.archs.base import ArchSpec, BlockLayout, Family, ParamCount
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from elth_cli.archs.nets.common import meta_state, open_lth_init, prunable_keys_of

FAMILIES: dict[str, Family] = {f.name: f for f in (cifar_resnet.FAMILY, imagenet_resnet.FAMILY, vgg.FAMILY,
                                                    vgg_fc.FAMILY, mobilenet.FAMILY, mlp.FAMILY)}

__all__ = [
    "ArchSpec",
    "BlockLayout",
    "Family",
    "FAMILIES",
    "ArchSummary",
    "ParamCount",
    "resolve_arch",
    "resolve_target",
    "family_of",
    "build_model",
    "block_layout",
    "expected_state",
    "prunable_keys",
    "prunable_keys_of",
    "open_lth_init",
    "meta_state",
    "summarize",
    "standard_archs",
]

# The torch helpers, loaded from elth_cli.archs.nets.common on first access (PEP 562).
_TORCH_HELPERS = ("prunable_keys_of", "open_lth_init", "meta_state")


def __getattr__(name: str) -> Any:
    if name in _TORCH_HELPERS:
        from elth_cli.archs.nets import common

        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _normalise(name: str) -> str:
    return name.strip().lower()


def resolve_arch(name: str) -> ArchSpec:
    """Resolve an architecture name or alias (``resnet20``, ``cifar_resnet_20_32``, ``vgg16``) to its spec."""
    key = _normalise(name)
    for family in FAMILIES.values():
        spec = family.parse(key)
        if spec is not None:
            return spec
    examples = ", ".join(n for f in FAMILIES.values() for n in f.standard_names[:3])
    raise UsageError(f"unknown architecture {name!r}; try one of {examples}, ... (elth archs lists them)")


def family_of(spec: ArchSpec) -> Family:
    """The family record of a resolved spec."""
    return FAMILIES[spec.family]


def resolve_target(source: ArchSpec, name: str) -> ArchSpec:
    """Resolve a stretch/squeeze target within the source's family, keeping the source's width."""
    family = family_of(source)
    target = family.resolve_target(source, _normalise(name))
    if target is None:
        try:
            other = resolve_arch(name)
        except UsageError:
            raise UsageError(
                f"unknown target {name!r} for a ticket of the {family.name} family; try e.g. "
                f"{', '.join(family.standard_names[:4])}"
            ) from None
        raise UsageError(
            f"target {other.name} is of the {other.family} family but the ticket ({source.name}) is of the "
            f"{family.name} family; tickets only stretch or squeeze within their family"
        )
    if target.width != source.width:
        raise UsageError(
            f"target {target.name} has width {target.width} but the source {source.name} has width {source.width}; "
            "elastic transformations change depth, not width"
        )
    return target


def block_layout(spec: ArchSpec) -> BlockLayout:
    """Per-stage ordered blocks and their state-dict prefixes: what stretch and squeeze read."""
    return family_of(spec).layout(spec)


def build_model(
    spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build a freshly initialised model (open_lth's init, seeded when ``seed`` is given) on the CPU."""
    import torch

    from elth_cli.archs.nets.common import open_lth_init

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = family_of(spec).build(spec, tuple(input_shape), num_classes)
        model.apply(open_lth_init)
    return model


@functools.lru_cache(maxsize=64)
def _expected(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int):
    from elth_cli.archs.nets.common import meta_state

    state, prunable = meta_state(lambda: family_of(spec).build(spec, tuple(input_shape), num_classes))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    return shapes, tuple(prunable)


def expected_state(
    spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every state-dict key of the model with its shape and dtype (computed on the meta device)."""
    return dict(_expected(spec, tuple(input_shape), num_classes)[0])


def prunable_keys(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[str]:
    """Keys a ticket masks: every Conv2d and Linear weight (stem, shortcuts and fc included)."""
    return list(_expected(spec, tuple(input_shape), num_classes)[1])


@dataclass(frozen=True)
class ArchSummary:
    """One row of ``elth archs``: an architecture's shape, its parameter counts and its dense forward
    multiply-accumulates per sample (conv and linear layers; see ``elth_cli.flops``) for an input."""

    name: str
    family: str
    blocks_per_stage: tuple[int, ...]
    width: int
    input_shape: tuple[int, int, int]
    num_classes: int
    parameters: int
    prunable: int
    macs: int

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "blocks_per_stage": list(self.blocks_per_stage),
            "width": self.width,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "parameters": self.parameters,
            "prunable": self.prunable,
            "macs": self.macs,
        }


def summarize(
    spec: ArchSpec, input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None
) -> ArchSummary:
    """Parameter counts and forward MACs of an architecture for a given input (the family's native one by default).

    Worked out from the spec (``Family.count``), so listing even imagenet-resnet152 builds nothing.
    """
    family = family_of(spec)
    shape = tuple(input_shape) if input_shape else family.native_input[0]
    classes = num_classes or family.native_input[1]
    params, prunable, macs = family.count(spec, shape, classes)
    return ArchSummary(spec.name, spec.family, spec.depths, spec.width, shape, classes, params, prunable, macs)


def standard_archs() -> list[ArchSpec]:
    """The named architectures that ``elth archs`` lists, family by family."""
    return [resolve_arch(n) for f in FAMILIES.values() for n in f.standard_names]

