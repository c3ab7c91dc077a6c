"""Width transfer: a ticket of one width carried to a wider network of its family (``widen``) or a narrower
one (``narrow``), unit by unit (docs/elastic.md, "Width").

A unit is what the family's units description (elth_cli.archs.units) says: a channel, a neuron, a
whole attention head. Every group of units keeps its order; a group k times wider takes each source
unit k times, tiled (target unit ``j`` is source unit ``j mod n``), on every axis the group owns, so
the masks of a widened layer are its source's masks repeated block by block along both its input and
output units. A group k times narrower keeps k-th of the units: the first ones (``first``, what undoes a
widening) or the units with the most kept weights (``densest``). Axes that are not units (kernels,
the input's channels, the classes) are copied.

The weights: ``fresh`` (default) draws the target network anew with the family's init and a seed,
as the reinitialisation control does; ``from`` takes another ticket's init weights of the target
architecture (e.g. its dense IMP round's rewind weights); ``carry`` moves the source's weights with
the masks and divides each duplicated input's weights by its number of copies (narrowing multiplies
them back), so a widened network computes exactly what its source did. Duplicated units then get the
same gradients and stay copies under training: ``carry`` is for inspection, not for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from elth_cli import archs
from elth_cli.archs import ArchSpec, Units
from elth_cli.archs.units import same_shape_but_units
from elth_cli.errors import UsageError
from elth_cli.symmetry import take_units
from elth_cli.ticket import Ticket, add_costs, apply_masks

INITS = ("fresh", "from", "carry")
SELECTIONS = ("first", "densest")


@dataclass(frozen=True)
class WidthOptions:
    """Where the target's weights come from (:data:`INITS`; ``init_from`` with ``from``), the seed of ``fresh``,
    and which units narrowing keeps (:data:`SELECTIONS`)."""

    init: str = "fresh"
    seed: int = 1
    init_from: Ticket | None = None
    select: str = "first"


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def unit_maps(source: Units, target: Units, masks: dict[str, Tensor], select: str = "first") -> dict[str, Tensor]:
    """Each group's map from the target's units to the source's: tiled where the target is a whole multiple
    wider, the ``select``-ed units where it is a whole fraction, the identity where the size is the same."""
    maps = {}
    for name, g in source.groups.items():
        n, m = g.size, target.groups[name].size
        if target.groups[name].unit_dims != g.unit_dims:
            raise UsageError(f"a unit of {name} spans {g.unit_dims} elements in the source and "
                             f"{target.groups[name].unit_dims} in the target; width transfer moves whole units "
                             "(for a ViT: keep the head size, change the number of heads with the width)")
        if m % n == 0:
            maps[name] = torch.arange(m) % n
        elif n % m == 0:
            maps[name] = torch.arange(m) if select == "first" else _densest(source, name, masks, m)
        else:
            raise UsageError(f"the units of {name} are {n} in the source and {m} in the target; width transfer "
                             "needs every layer a whole multiple or a whole fraction as wide")
    return maps


def _densest(units: Units, group: str, masks: dict[str, Tensor], keep: int) -> Tensor:
    """The ``keep`` units of ``group`` with the most kept weights over every mask axis it owns (ties: the
    lower index), in their order."""
    g = units.groups[group]
    kept = torch.zeros(g.size, dtype=torch.float64)
    for key, axis in units.entries(group):
        if key in masks:
            m = masks[key].movedim(axis, 0)
            per = m.reshape(units.copies(key, axis, m.shape[0]), g.size, -1).sum(dim=(0, 2)).double()
            kept += per
    order = sorted(range(g.size), key=lambda u: (-float(kept[u]), u))[:keep]
    return torch.tensor(sorted(order), dtype=torch.long)


def plan_width(ticket: Ticket, target: str | ArchSpec) -> tuple[ArchSpec, Units, Units]:
    """The target's spec and both networks' units, after checking that only widths differ."""
    spec = archs.resolve_arch(target) if isinstance(target, str) else target
    if spec.family != ticket.family:
        raise UsageError(f"{spec.name} is a {spec.family} and the ticket a {ticket.family}; width transfer stays "
                         "in one family")
    if spec.depths != ticket.spec.depths:
        raise UsageError(f"{spec.name} has {spec.depth_label} blocks per stage and {ticket.arch} "
                         f"{ticket.spec.depth_label}; width transfer keeps the depth (stretch or squeeze first)")
    tgt_shapes = {k: tuple(v[0]) for k, v in archs.expected_state(spec, ticket.input_shape, ticket.num_classes).items()}
    src_units = archs.network_units(ticket.spec, _shapes(ticket.init))
    tgt_units = archs.network_units(spec, tgt_shapes)
    same_shape_but_units(src_units, tgt_units, _shapes(ticket.init), tgt_shapes)
    return spec, src_units, tgt_units


def transfer_width(ticket: Ticket, target: str | ArchSpec, options: WidthOptions = WidthOptions(),
                   direction: str | None = None) -> Ticket:
    """``ticket`` carried to ``target``, a wider or narrower network of its family (``direction``: "widen" or
    "narrow" refuses the other way)."""
    for flag, value, choices in (("--init", options.init, INITS), ("--select", options.select, SELECTIONS)):
        if value not in choices:
            raise UsageError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    spec, src_units, tgt_units = plan_width(ticket, target)
    if spec.name == ticket.arch:
        raise UsageError(f"{spec.name} is the ticket's own architecture; name a wider or narrower one")
    ratios = {g: tgt_units.groups[g].size / src_units.groups[g].size for g in src_units.groups}
    kind = "widen" if max(ratios.values()) > 1 else "narrow"
    if min(ratios.values()) < 1 < max(ratios.values()):
        kind = "rewidth"
    if direction is not None and kind != direction:
        raise UsageError(f"{spec.name} is not {'wider' if direction == 'widen' else 'narrower'} than {ticket.arch} in "
                         f"every layer; use elth {'narrow' if direction == 'widen' else 'widen'}")
    maps = unit_maps(src_units, tgt_units, ticket.masks, options.select)
    masks = take_units(ticket.masks, src_units, maps)
    init, rewind = _target_weights(ticket, spec, src_units, maps, options)
    transform: dict[str, Any] = {
        "kind": kind, "source_arch": ticket.arch, "target_arch": spec.name, "init": options.init,
        "seed": options.seed if options.init == "fresh" else None, "select": options.select,
        "units": {g: [src_units.groups[g].size, tgt_units.groups[g].size] for g in src_units.groups},
        "init_from": options.init_from.parent_record() if options.init == "from" else None,
    }
    parents = [ticket.parent_record()] + ([options.init_from.parent_record()] if options.init == "from" else [])
    return Ticket(
        arch=spec.name, input_shape=ticket.input_shape, num_classes=ticket.num_classes, masks=masks,
        init=apply_masks(init, masks), method=kind, rewind_step=rewind, dataset=ticket.dataset, parents=parents,
        transform=transform, hparams=ticket.hparams, cost=_cost(ticket, options),
    )


def _target_weights(ticket: Ticket, spec: ArchSpec, units: Units, maps: dict[str, Tensor],
                    options: WidthOptions) -> tuple[dict[str, Tensor], int]:
    """The target's init weights and the step they belong to (see the module's docstring)."""
    if options.init == "carry":
        return take_units(ticket.init, units, maps, scale_fan_in=True), ticket.rewind_step
    if options.init == "from":
        other = options.init_from
        if other is None:
            raise UsageError("--init from needs --init-from TICKET")
        if (other.arch, other.input_shape, other.num_classes) != (spec.name, ticket.input_shape, ticket.num_classes):
            raise UsageError(f"--init-from is a {other.arch} for {other.num_classes} classes; it must be the target "
                             f"{spec.name} for {ticket.num_classes}")
        return {k: v.clone() for k, v in other.init.items()}, other.rewind_step
    model = archs.build_model(spec, ticket.input_shape, ticket.num_classes, seed=options.seed)
    # A fresh draw trains from the ticket's own rewind step, as the reinitialisation control does.
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, ticket.rewind_step


def _cost(ticket: Ticket, options: WidthOptions) -> dict[str, Any]:
    """The ticket's cost, plus what made ``--init-from``'s weights (its rewind steps) when those are used."""
    taken = options.init_from.cost if options.init == "from" and options.init_from is not None else {}
    return add_costs(ticket.cost, taken)

def widen(ticket: Ticket, target: str | ArchSpec, options: WidthOptions = WidthOptions()) -> Ticket:
    """``ticket`` on a wider network of its family (every layer a whole multiple as wide)."""
    return transfer_width(ticket, target, options, direction="widen")


def narrow(ticket: Ticket, target: str | ArchSpec, options: WidthOptions = WidthOptions()) -> Ticket:
    """``ticket`` on a narrower network of its family (every layer a whole fraction as wide)."""
    return transfer_width(ticket, target, options, direction="narrow")
