"""Elastic ticket transformations (E-LTH): stretch a ticket to a deeper network, squeeze it to a shallower one.

A mapping (:mod:`elth_cli.mappings`) says, per stage, which source block fills each target block.
The mask and the init weights (BatchNorm statistics included) go through the same mapping; stem and
head are copied unchanged; block 0 of every stage (the one that changes shape) is kept 1:1; every
target block is filled; the mapping is written back into the output's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from elth_cli import archs
from elth_cli.archs import ArchSpec, BlockLayout
from elth_cli.archs.base import owns
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket

if TYPE_CHECKING:
    from torch import Tensor

from elth_cli.mappings import (SQUEEZE_STRATEGIES, STRETCH_STRATEGIES, Mapping, MappingError, as_reference_reading,
                               check_mapping, format_mapping, from_reference_mapping, parse_mapping, plan_mapping,
                               reference_hint, reference_mapping)

__all__ = ["MappingError", "TransformPlan", "apply_transform", "as_reference_reading", "format_mapping", "map_state",
           "plan_transform", "reference_mapping", "squeeze", "stretch"]


# ----- applying a mapping -------------------------------------------------------------------------
def map_state(
    state: dict[str, Tensor], src_layout: BlockLayout, tgt_layout: BlockLayout,
    mapping: Mapping, tgt_keys: list[str], tgt_shapes: dict[str, tuple[int, ...]],
) -> dict[str, Tensor]:
    """Map a state dict (or a mask dict) onto the target's keys; every target key is written."""
    out: dict[str, Tensor] = {}
    for key in tgt_keys:
        kind, s, j = tgt_layout.locate(key)
        if kind == "block":
            src_prefix = src_layout.stages[s][mapping[s][j]]
            src_key = src_prefix + key[len(tgt_layout.stages[s][j]):]
        else:
            # The stem and head are copied unchanged, prefix for prefix: their keys may shift with the
            # depth (an MLP's narrow layer is fc_layers.{n}), so they are matched by position.
            src_key = _same_part(key, kind, src_layout, tgt_layout)
        if src_key not in state:
            raise MappingError(
                f"target {key} would come from source {src_key}, which does not exist: "
                f"stage {s} block {mapping[s][j] if kind == 'block' else '-'} has another structure"
            )
        t = state[src_key]
        if tuple(t.shape) != tuple(tgt_shapes[key]):
            raise MappingError(
                f"stage {s}: source block {mapping[s][j]} and target block {j} have different shapes "
                f"({src_key} {list(t.shape)} vs {key} {list(tgt_shapes[key])}); the mapping mixes shapes"
            )
        # Torch copies are independent tensors: two target blocks never share storage. The numpy arrays of a
        # ticket read without torch are only written to a file: shared, so a big ticket is never held twice.
        out[key] = t if isinstance(t, np.ndarray) else t.clone()
    return out


def _same_part(key: str, kind: str, src_layout: BlockLayout, tgt_layout: BlockLayout) -> str:
    """The source key of a stem or head key: the same prefix position, the same rest."""
    src_parts, tgt_parts = (src_layout.stem, tgt_layout.stem) if kind == "stem" else (src_layout.head, tgt_layout.head)
    for i, prefix in enumerate(tgt_parts):
        if owns(prefix, key) and i < len(src_parts):
            return src_parts[i] + key[len(prefix):]
    return key


@dataclass(frozen=True)
class TransformPlan:
    """What a stretch or squeeze will do, before any tensor is touched."""

    kind: str
    strategy: str
    source: ArchSpec
    target: ArchSpec
    mapping: Mapping
    # What the user should know about how the target was read (a reference name's width, ...).
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        ref, why = reference_mapping(self.source, self.mapping)
        return {
            "reference_mapping": ref,  # ready for ElasticLTH's --block_mapping (None: it cannot take this one)
            **({"reference_mapping_note": why} if why else {}),
            "kind": self.kind,
            "strategy": self.strategy,
            "source_arch": self.source.name,
            "target_arch": self.target.name,
            "source_blocks_per_stage": list(self.source.depths),
            "target_blocks_per_stage": list(self.target.depths),
            "mapping": [list(s) for s in self.mapping],
            "mapping_string": format_mapping(self.mapping),
        }


def _refuse_single_block_stretch(source: ArchSpec, target: ArchSpec, free_first: tuple[bool, ...]) -> None:
    """A stage of one block cannot grow where its block 0 changes shape (it maps to block 0 only), so no
    mapping, whatever its strategy, can fill the extra blocks. Say so, and which sources can."""
    stuck = [s for s, (a, b) in enumerate(zip(source.depths, target.depths))
             if a == 1 and b > 1 and not (free_first and free_first[s])]
    if not stuck:
        return
    family = archs.family_of(source)
    candidates = [archs.resolve_target(source, n) for n in family.standard_names]
    able = [c.name for c in candidates if c != target and all(c.depths[s] >= 2 for s in stuck)
            and all(d <= t for d, t in zip(c.depths, target.depths))]
    stages = ", ".join(map(str, stuck))
    raise MappingError(
        f"{source.name} cannot be stretched to {target.name}: in stage{'s' if len(stuck) > 1 else ''} {stages} the "
        f"source has only its block 0, which changes shape and maps to block 0 alone, so no mapping can add blocks "
        f"there; stretch from a source with two or more blocks in {'those stages' if len(stuck) > 1 else 'that stage'}"
        + (f" ({', '.join(able)})" if able else ""))


def plan_transform(
    source: ArchSpec, target_name: str | ArchSpec, kind: str, strategy: str | None = None, mapping: str | None = None,
    reference_mapping: str | None = None,
) -> TransformPlan:
    """Resolve the target within the source's family, check the direction, and fix the mapping: a strategy,
    ``mapping`` in elth's numbering, or ``reference_mapping`` in the reference's (:func:`from_reference_mapping`)."""
    target = target_name if isinstance(target_name, ArchSpec) else archs.resolve_target(source, target_name)
    notes = _width_note(source, target_name, target)
    if reference_mapping is not None:
        if mapping is not None:
            raise UsageError("give either --mapping (elth's numbering) or --reference-mapping (the reference's), not both")
        mapping = from_reference_mapping(reference_mapping, source, target)
    src_d, tgt_d = source.depths, target.depths
    other = {"stretch": "squeeze", "squeeze": "stretch"}[kind]
    if tgt_d == src_d:
        raise UsageError(f"target {target.name} has the same blocks per stage as the source ({source.name}); nothing to {kind}")
    free = archs.block_layout(source).free_first
    _refuse_single_block_stretch(source, target, free)
    deeper = all(t >= s for s, t in zip(src_d, tgt_d))
    shallower = all(t <= s for s, t in zip(src_d, tgt_d))
    wrong_way = (kind == "stretch" and shallower) or (kind == "squeeze" and deeper)
    mixed = not deeper and not shallower
    if wrong_way or (mixed and mapping is None):
        relation = "deeper" if kind == "stretch" else "shallower"
        hint = f"use elth {other}" if wrong_way else "give an explicit --mapping for a target deeper in some stages and shallower in others"
        raise UsageError(f"target {target.name} ({target.depth_label} blocks) is not {relation} than {source.name} ({source.depth_label}); {hint}")
    if mapping is not None:
        if strategy is not None:
            raise UsageError("give either --strategy or a mapping, not both")
        try:
            return TransformPlan(kind, "mapping", source, target, parse_mapping(mapping, src_d, tgt_d, free), notes)
        except MappingError as e:
            raise MappingError(f"{e}{reference_hint(mapping, source, target, reference_mapping)}") from None
    strategy = strategy or ("append" if kind == "stretch" else "keep-first")
    allowed = STRETCH_STRATEGIES if kind == "stretch" else SQUEEZE_STRATEGIES
    if strategy not in allowed:
        raise UsageError(f"{kind} strategies are {', '.join(allowed)}; got {strategy!r}")
    plan = plan_mapping(src_d, tgt_d, strategy, free)
    check_mapping(plan, src_d, tgt_d, free)
    return TransformPlan(kind, strategy, source, target, plan, notes)


def _width_note(source: ArchSpec, name: str | ArchSpec, target: ArchSpec) -> tuple[str, ...]:
    """A target given by a reference name (``imagenet_resnet_34``) keeps the source's width, where the
    reference's name means its own default width: say so when the two differ."""
    if isinstance(name, ArchSpec) or "_" not in name:
        return ()
    try:
        meant = archs.resolve_arch(name)
    except UsageError:
        return ()
    if meant.width == target.width:
        return ()
    return (f"--target {name} is width {meant.width} in the reference; the target keeps the source's width "
            f"{source.width}: {target.name}",)


def apply_transform(ticket: Ticket, plan: TransformPlan) -> Ticket:
    """Build the transformed ticket: masks and init weights through the plan's mapping, provenance recorded."""
    if ticket.spec != plan.source:
        raise UsageError(f"the plan is for {plan.source.name} but the ticket is {ticket.arch}")
    src_layout, tgt_layout = archs.block_layout(plan.source), archs.block_layout(plan.target)
    expected = archs.state_shapes(plan.target, tuple(ticket.input_shape), ticket.num_classes)
    shapes = expected.shapes
    masks = map_state(ticket.masks, src_layout, tgt_layout, plan.mapping, list(expected.prunable), shapes)
    init = map_state(ticket.init, src_layout, tgt_layout, plan.mapping, list(shapes), shapes)
    transform = plan.describe()
    transform["source_method"] = ticket.method
    transform["source_sparsity"] = ticket.sparsity
    if ticket.metrics:
        transform["source_metrics"] = ticket.metrics
    return Ticket(
        arch=plan.target.name,
        input_shape=ticket.input_shape,
        num_classes=ticket.num_classes,
        masks=masks,
        init=init,
        trained=None,
        method=plan.kind,
        rewind_step=ticket.rewind_step,
        dataset=ticket.dataset,
        parents=[ticket.parent_record()],
        transform=transform,
        hparams=ticket.hparams,
        metrics=None,
        # A transformation is a file copy: the ticket costs what its source cost, once.
        cost=dict(ticket.cost),
    )


def stretch(ticket: Ticket, target: str | ArchSpec, strategy: str | None = None, mapping: str | None = None,
            reference_mapping: str | None = None) -> Ticket:
    """Stretch a ticket to a deeper network of its family (``append`` by default, or ``interpolate``)."""
    return apply_transform(ticket, plan_transform(ticket.spec, target, "stretch", strategy, mapping, reference_mapping))


def squeeze(ticket: Ticket, target: str | ArchSpec, strategy: str | None = None, mapping: str | None = None,
            reference_mapping: str | None = None) -> Ticket:
    """Squeeze a ticket to a shallower network of its family (``keep-first`` by default, or ``spaced``)."""
    return apply_transform(ticket, plan_transform(ticket.spec, target, "squeeze", strategy, mapping, reference_mapping))
