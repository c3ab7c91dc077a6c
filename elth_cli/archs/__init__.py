"""The architecture registry: every family, name resolution, model building and block layouts.

This is the public family API (docs/families.md): :class:`Family`, :class:`ArchSpec`,
:class:`BlockLayout`, :class:`ParamCount` and :class:`StateEntry` (written with :class:`StateTally`)
describe a family; :func:`register_family` adds one from Python; installed distributions register
theirs under the entry-point group ``elth.families`` and :func:`use_family_module` (``--family-module``,
``ELTH_FAMILIES``) adds a module's for one command.

Importing the registry does not import torch: names, layouts, parameter counts, forward MACs and the
state dict's keys, shapes and dtypes (:func:`state_shapes`) are worked out from the spec (a family without
an analytic count or state is read off its model). ``build_model``, ``expected_state`` (torch's dtype
objects) and the torch helpers (``prunable_keys_of``, ``open_lth_init``, ``meta_state``) import torch when
first used; ``prunable_keys`` does not where the family has a ``state``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from elth_cli.archs import cifar_resnet, imagenet_resnet, mlp, mobilenet, plugins, timm_family, vgg, vgg_fc, vit
from elth_cli.archs.base import ArchSpec, BlockLayout, Family, ParamCount, StateEntry, StateShapes, StateTally
from elth_cli.archs.plugins import ENTRY_POINT_GROUP, ENV_VAR, FamilyError
from elth_cli.archs.units import Probe, UnitGroup, Units, UnitsBuilder, check_units
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from elth_cli.archs.nets.common import meta_state, open_lth_init, prunable_keys_of

BUILTIN_PROVIDER = "elth_cli"  # the provider of the families elth itself defines (its version is the ticket's)
BUILTIN: tuple[Family, ...] = (cifar_resnet.FAMILY, imagenet_resnet.FAMILY, vgg.FAMILY, vgg_fc.FAMILY,
                                mobilenet.FAMILY, mlp.FAMILY, vit.FAMILY, timm_family.FAMILY)
# Every family this process knows: the built-in ones, then those registered (entry points, modules, Python).
FAMILIES: dict[str, Family] = {f.name: f for f in BUILTIN}
_loaded: set[str] = set()  # the providers already read: "entry points" and each ELTH_FAMILIES module

__all__ = [
    "ArchSpec",
    "BlockLayout",
    "Family",
    "FAMILIES",
    "ArchSummary",
    "BUILTIN",
    "BUILTIN_PROVIDER",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "FamilyError",
    "families",
    "register_family",
    "use_family_module",
    "name_family_module",
    "load_plugins",
    "ParamCount",
    "StateEntry",
    "StateShapes",
    "StateTally",
    "state_shapes",
    "resolve_arch",
    "resolve_target",
    "family_of",
    "build_model",
    "block_layout",
    "network_units",
    "Probe",
    "UnitGroup",
    "Units",
    "UnitsBuilder",
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


def register_family(family: Family, provider: str | None = None, version: str = "") -> Family:
    """Add a family to this process's registry (checked, its functions guarded; see docs/families.md).

    ``provider`` is the module a ticket will name so that its family can be found again (by default the
    module that defines ``family.parse``). A built-in family's name, or one another provider registered,
    is refused. Returns the registered record.
    """
    provider = provider or getattr(family.parse, "__module__", "") or "__main__"
    record = plugins.checked(family, provider, version or plugins.distribution_version(provider))
    _add(record)
    return record


def load_plugins() -> None:
    """Register the families of installed distributions (entry points) and of ``ELTH_FAMILIES``, once each."""
    if "entry points" not in _loaded:
        _loaded.add("entry points")
        for family in plugins.entry_point_families():
            _add(family)
    for ref in plugins.env_modules():
        if ref not in _loaded:
            _loaded.add(ref)
            for family in plugins.module_families(ref):
                _add(family)


def _add(family: Family) -> None:
    existing = FAMILIES.get(family.name)
    if existing is not None and existing.provider != family.provider:
        raise FamilyError(f"family {family.name} from {family.provider}: the name is taken by the family from "
                          f"{existing.provider}; give the family another name")
    FAMILIES[family.name] = family


def name_family_module(ref: str) -> None:
    """Add a module or ``.py`` file to ``ELTH_FAMILIES`` (``--family-module``): the registry reads it when a name
    is first resolved, and every process the command starts inherits it. A file that does not exist is refused."""
    if (ref.endswith(".py") or "/" in ref or os.sep in ref) and not os.path.isfile(os.path.expanduser(ref)):
        raise FamilyError(f"family module {ref}: no such file; name a .py file or an importable module")
    parts = plugins.env_modules()
    if ref not in parts:
        os.environ[ENV_VAR] = os.pathsep.join([*parts, ref])


def use_family_module(ref: str) -> list[Family]:
    """Register the families of a module or ``.py`` file for this command (``--family-module``).

    The module is added to ``ELTH_FAMILIES`` as well, so that every process the command starts (its
    workers, torchrun's ranks) registers it too. Returns the families it registered.
    """
    name_family_module(ref)
    load_plugins()
    return [f for f in FAMILIES.values() if f.provider in (ref, os.path.abspath(os.path.expanduser(ref)))]


def families() -> dict[str, Family]:
    """Every family this process knows, by name: the built-in ones, then the registered ones."""
    load_plugins()
    return FAMILIES


def _normalise(name: str) -> str:
    return name.strip().lower()


def resolve_arch(name: str) -> ArchSpec:
    """Resolve an architecture name or alias (``resnet20``, ``cifar_resnet_20_32``, ``vgg16``) to its spec."""
    key = _normalise(name)
    for family in families().values():
        spec = family.parse(key)
        if spec is not None:
            return spec
    examples = ", ".join(n for f in FAMILIES.values() for n in f.standard_names[:3])
    raise UsageError(f"unknown architecture {name!r}; try one of {examples}, ... (elth archs lists them; a "
                     "family of your own registers with --family-module, see docs/families.md)")


def family_of(spec: ArchSpec) -> Family:
    """The family record of a resolved spec."""
    found = families().get(spec.family)
    if found is None:
        raise UsageError(f"the family {spec.family!r} of {spec.name} is not registered in this process; name its "
                         f"module with --family-module or {ENV_VAR}")
    return found


def _default_target(family: Family, source: ArchSpec, name: str) -> ArchSpec | None:
    spec = family.parse(name)
    return spec if spec is not None and spec.family == family.name else None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec:
    """Resolve a stretch/squeeze target within the source's family, keeping the source's width."""
    family = family_of(source)
    if family.resolve_target is not None:
        target = family.resolve_target(source, _normalise(name))
    else:
        target = _default_target(family, source, _normalise(name))
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


def network_units(spec: ArchSpec, shapes: dict[str, tuple[int, ...]]) -> Units:
    """The units of ``spec``'s network (``shapes``: its state-dict keys' shapes), checked against the shapes; a
    family without a units description is refused in one line."""
    family = family_of(spec)
    if family.units is None:
        raise UsageError(f"the {family.name} family does not describe its units (Family.units), which aligning and "
                         "changing the width need; docs/families.md, \"Units\", says how a family gives them")
    found = family.units(spec, shapes)
    check_units(found, shapes, where=f"{spec.name}: ")
    return found


def block_layout(spec: ArchSpec) -> BlockLayout:
    """Per-stage ordered blocks and their state-dict prefixes: what stretch and squeeze read."""
    return family_of(spec).layout(spec)


def build_model(
    spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int, seed: int | None = None,
    initialise: bool = True,
) -> nn.Module:
    """Build a freshly initialised model (seeded when ``seed`` is given) on the current default device.

    The family's ``init`` says how: open_lth's (Kaiming-normal conv and linear weights, BatchNorm
    gamma ~ U[0, 1)) or the model's own. ``initialise=False`` skips open_lth's pass (shapes only: the meta
    device). The caller's random state is left as it was.
    """
    import torch

    from elth_cli.archs.nets.common import open_lth_init

    family = family_of(spec)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = family.build(spec, tuple(input_shape), num_classes)
        if initialise and family.init == "open_lth":
            model.apply(open_lth_init)
    return model


def state_shapes(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> StateShapes:
    """Every state-dict key of the model, in ``state_dict()`` order, with its shape and dtype name, and the keys a
    ticket masks (every conv and Linear weight), for a (channels, height, width) input and ``num_classes``.

    Worked out from the spec (``Family.state``) where the family describes its state, without torch; otherwise
    read off the model built on the meta device (torch imported then). The answer is cached and shared: read it,
    do not change its dicts.
    """
    return _state_shapes(spec, tuple(input_shape), int(num_classes))


@functools.lru_cache(maxsize=64)
def _state_shapes(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> StateShapes:
    family = family_of(spec)
    if family.state is not None:
        return StateShapes.of(family.state(spec, input_shape, num_classes))
    return _meta_state_shapes(spec, input_shape, num_classes)


def _meta_state_shapes(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> StateShapes:
    """The state of a family without ``Family.state``, read off its model built on the meta device."""
    from elth_cli.archs.nets.common import meta_state

    state, prunable = meta_state(lambda: build_model(spec, input_shape, num_classes, initialise=False))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}
    return StateShapes(shapes, dtypes, tuple(prunable))


def expected_state(
    spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every state-dict key of the model with its shape and torch dtype (:func:`state_shapes`; imports torch for
    the dtype objects)."""
    import torch

    found = state_shapes(spec, tuple(input_shape), num_classes)
    return {k: (shape, getattr(torch, found.dtypes[k])) for k, shape in found.shapes.items()}


def prunable_keys(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[str]:
    """Keys a ticket masks: every conv and Linear weight (stem, shortcuts and fc included)."""
    return list(state_shapes(spec, tuple(input_shape), num_classes).prunable)


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
    params, prunable, macs = family.count(spec, shape, classes) if family.count else _model_count(spec, shape, classes)
    return ArchSummary(spec.name, spec.family, spec.depths, spec.width, shape, classes, params, prunable, macs)


@functools.lru_cache(maxsize=64)
def _model_count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The counts of a family without an analytic one, read off its model (built on the meta device)."""
    import torch

    from elth_cli.archs.nets.common import count_macs, prunable_keys_of

    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes, initialise=False)
    params = dict(model.named_parameters())
    prunable = sum(params[k].numel() for k in prunable_keys_of(model) if k in params)
    return ParamCount(sum(p.numel() for p in params.values()), prunable, sum(count_macs(model, input_shape).values()))


def standard_archs() -> list[ArchSpec]:
    """The named architectures that ``elth archs`` lists, family by family."""
    return [resolve_arch(n) for f in families().values() for n in f.standard_names]


