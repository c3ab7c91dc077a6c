"""Elastic ticket transformations (E-LTH): stretch a ticket to a deeper network, squeeze it to a shallower one.

A mapping says, per stage, which source block fills each target block. The mask and the init
weights (BatchNorm statistics included) go through the same mapping; stem and head are copied
unchanged; block 0 of every stage (the one that changes shape) is kept 1:1; every target block
is filled. The reference implementation's mapping syntax ``src:dst,dst;src:dst`` (local block
ids within a stage, one string for all stages or one per stage joined by ``|``) is accepted
and written back into the output's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from elth_cli import archs
from elth_cli.archs import ArchSpec, BlockLayout
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket

STRETCH_STRATEGIES = ("append", "interpolate")
SQUEEZE_STRATEGIES = ("keep-first", "spaced")

# mapping[s][j] = the source block (local id within stage s) that fills target block j.
Mapping = tuple[tuple[int, ...], ...]


class MappingError(UsageError):
    """A mapping that cannot be applied (empty target block, block 0 moved, unknown block, shape mismatch)."""


# ----- planning: strategies -----------------------------------------------------------------------
def _stage_append(n_src: int, n_tgt: int) -> tuple[int, ...]:
    # The extra blocks cycle through the source's non-first blocks in order: 3->5 is 0 1 2 1 2. A stage
    # of one block (possible only where block 0 may be copied: fully connected stacks) repeats it.
    if n_src == 1:
        return (0,) * n_tgt
    return tuple(range(n_src)) + tuple(1 + (j % (n_src - 1)) for j in range(n_tgt - n_src))


def _stage_interpolate(n_src: int, n_tgt: int) -> tuple[int, ...]:
    # Each non-first block repeated in place, earlier blocks taking the extra copies: 3->5 is 0 1 1 2 2.
    if n_src == 1:
        return (0,) * n_tgt
    copies, extra = divmod(n_tgt - 1, n_src - 1)
    out = [0]
    for i in range(1, n_src):
        out += [i] * (copies + (1 if i - 1 < extra else 0))
    return tuple(out)


def _stage_keep_first(n_src: int, n_tgt: int) -> tuple[int, ...]:
    return tuple(range(n_tgt))


def _stage_spaced(n_src: int, n_tgt: int) -> tuple[int, ...]:
    # Evenly spaced source blocks, always block 0 (and the last when n_tgt > 1): 9->5 keeps 0 2 4 6 8.
    if n_tgt == 1:
        return (0,)
    return tuple(int(j * (n_src - 1) / (n_tgt - 1) + 0.5) for j in range(n_tgt))


_PLANNERS = {
    "append": _stage_append,
    "interpolate": _stage_interpolate,
    "keep-first": _stage_keep_first,
    "spaced": _stage_spaced,
}


def plan_mapping(src_depths: tuple[int, ...], tgt_depths: tuple[int, ...], strategy: str,
                 free_first: tuple[bool, ...] = ()) -> Mapping:
    """The per-stage mapping a named strategy gives for these blocks-per-stage (``free_first``: the
    stages whose block 0 may be copied, see :class:`~elth_cli.archs.BlockLayout`)."""
    if strategy not in _PLANNERS:
        raise UsageError(f"unknown strategy {strategy!r}; stretch: {', '.join(STRETCH_STRATEGIES)}; squeeze: {', '.join(SQUEEZE_STRATEGIES)}")
    if len(src_depths) != len(tgt_depths):
        raise MappingError(f"source has {len(src_depths)} stages and target {len(tgt_depths)}; the number of stages never changes")
    stretching = strategy in STRETCH_STRATEGIES
    stages = []
    for s, (n_src, n_tgt) in enumerate(zip(src_depths, tgt_depths)):
        if n_src == n_tgt:
            stages.append(tuple(range(n_src)))
        elif stretching and n_tgt > n_src and n_src == 1 and not (free_first and free_first[s]):
            raise MappingError(
                f"stage {s} of the source has only its block 0, which is never copied; nothing can fill the "
                f"{n_tgt - 1} extra block(s); pass an explicit --mapping or use a deeper source"
            )
        elif (n_tgt > n_src) != stretching:
            raise MappingError(f"strategy {strategy!r} cannot take stage {s} from {n_src} to {n_tgt} blocks")
        else:
            stages.append(_PLANNERS[strategy](n_src, n_tgt))
    return tuple(stages)


# ----- the reference syntax -----------------------------------------------------------------------
def parse_mapping(text: str, src_depths: tuple[int, ...], tgt_depths: tuple[int, ...],
                  free_first: tuple[bool, ...] = ()) -> Mapping:
    """Parse ``src:dst,dst;src:dst`` (one string for all stages, or one per stage joined by ``|``)."""
    parts = [p.strip() for p in text.strip().split("|")]
    n_stages = len(tgt_depths)
    if len(parts) == 1:
        parts = parts * n_stages
    elif len(parts) != n_stages:
        raise MappingError(f"mapping has {len(parts)} stage parts joined by '|' but the network has {n_stages} stages; give one string or {n_stages}")
    stages: list[tuple[int, ...]] = []
    for s, part in enumerate(parts):
        fill: dict[int, int] = {}
        for item in filter(None, (i.strip() for i in part.split(";"))):
            src_text, sep, dst_text = item.partition(":")
            try:
                src = int(src_text)
                dsts = [int(d) for d in dst_text.split(",") if d.strip()] if sep else []
            except ValueError:
                raise MappingError(f"mapping item {item!r} of stage {s} is not 'src:dst[,dst...]' with block numbers") from None
            if not dsts:
                raise MappingError(f"mapping item {item!r} of stage {s} names no target block")
            if not 0 <= src < src_depths[s]:
                raise MappingError(f"mapping names source block {src} of stage {s}, which does not exist (the source has blocks 0..{src_depths[s] - 1})")
            for d in dsts:
                if not 0 <= d < tgt_depths[s]:
                    raise MappingError(f"mapping names target block {d} of stage {s}, which does not exist (the target has blocks 0..{tgt_depths[s] - 1})")
                if d in fill:
                    raise MappingError(f"target block {d} of stage {s} is filled twice (from source blocks {fill[d]} and {src})")
                fill[d] = src
        empty = [j for j in range(tgt_depths[s]) if j not in fill]
        if empty:
            raise MappingError(f"target block {empty[0]} of stage {s} is left empty by the mapping; every target block must be filled")
        stages.append(tuple(fill[j] for j in range(tgt_depths[s])))
    mapping = tuple(stages)
    check_mapping(mapping, src_depths, tgt_depths, free_first)
    return mapping


def format_mapping(mapping: Mapping) -> str:
    """The reference syntax for a mapping: one string if every stage is the same, else joined by ``|``."""
    def stage_text(stage: tuple[int, ...]) -> str:
        dsts: dict[int, list[int]] = {}
        for j, src in enumerate(stage):
            dsts.setdefault(src, []).append(j)
        return ";".join(f"{src}:{','.join(map(str, d))}" for src, d in sorted(dsts.items()))

    texts = [stage_text(s) for s in mapping]
    return texts[0] if len(set(texts)) == 1 else "|".join(texts)


def reference_mapping(spec: ArchSpec, mapping: Mapping) -> tuple[str | None, str | None]:
    """The mapping in the reference code's own syntax for ``--block_mapping`` (ElasticLTH's
    change_depth branch), and why there is none: it applies one string to every stage of a CIFAR ResNet,
    and takes one string per stage, joined by ``|``, for ImageNet ResNets and VGGs."""
    per_stage = [format_mapping((stage,)) for stage in mapping]
    form = archs.family_of(spec).reference_mapping
    if form == "fc_layers":
        # open_lth's LeNet: one string over every fc_layers index, the narrow layer after the stage included.
        return f"{per_stage[0]};{spec.depths[0]}:{len(mapping[0])}", None
    if form == "classifier":
        # ElasticLTH's cifar_vggnfc: one string over the classifier's Sequential places, 2j for hidden layer j.
        def places(stage: tuple[int, ...]) -> str:
            dsts: dict[int, list[int]] = {}
            for j, src in enumerate(stage):
                dsts.setdefault(2 * src, []).append(2 * j)
            return ";".join(f"{src}:{','.join(map(str, d))}" for src, d in sorted(dsts.items()))

        return places(mapping[0]), None
    if form == "one":
        if len(set(per_stage)) > 1:
            return None, ("the reference applies one --block_mapping string to every stage of a CIFAR ResNet; this "
                          "mapping differs between stages")
        return per_stage[0], None
    return "|".join(per_stage), None


def _reference_items(text: str) -> list[tuple[int, list[int]]]:
    """``src:dst,dst;...`` as (src, [dst, ...]) pairs (one string: these families have one stage)."""
    items = []
    for item in filter(None, (i.strip() for i in text.strip().split(";"))):
        src_text, sep, dst_text = item.partition(":")
        try:
            items.append((int(src_text), [int(d) for d in dst_text.split(",") if d.strip()] if sep else []))
        except ValueError:
            raise MappingError(f"reference mapping item {item!r} is not 'src:dst[,dst...]' with layer numbers") from None
    return items


def from_reference_mapping(text: str, source: ArchSpec, target: ArchSpec) -> str:
    """A mapping in the reference's own ``--block_mapping`` numbering for the source's family, in elth's
    (what ``--mapping`` takes): the two differ for MLPs (open_lth's ``fc_layers`` positions, the narrow
    layer after the hidden ones named too) and VGGs with an FC stack (``classifier`` Sequential places,
    2j for hidden layer j); for the other families they are the same string."""
    form = archs.family_of(source).reference_mapping
    if "|" in text and form in ("fc_layers", "classifier"):
        raise MappingError(f"the reference takes one --block_mapping string for {source.name}, without '|'")
    if form == "fc_layers":
        narrow, narrow_to = source.depths[0], target.depths[0]
        items = _reference_items(text)
        if (narrow, [narrow_to]) not in items:
            raise MappingError(f"the reference's mapping for {source.name} -> {target.name} names the narrow layer "
                               f"after the hidden ones too ({narrow}:{narrow_to}); without it the reference leaves "
                               "that layer untransferred")
        rest = [(s, d) for s, d in items if s != narrow]
        return ";".join(f"{s}:{','.join(map(str, d))}" for s, d in rest)
    if form == "classifier":
        items = _reference_items(text)
        odd = [n for s, d in items for n in (s, *d) if n % 2]
        if odd:
            raise MappingError(f"the reference numbers {source.name}'s FC layers by their place in its classifier "
                               f"(Linear, ReLU, ...): hidden layer j is {2}j, so {odd[0]} names no layer")
        return ";".join(f"{s // 2}:{','.join(str(x // 2) for x in d)}" for s, d in items)
    return text


def check_mapping(mapping: Mapping, src_depths: tuple[int, ...], tgt_depths: tuple[int, ...],
                  free_first: tuple[bool, ...] = ()) -> None:
    """Refuse a mapping that moves block 0 (where it changes the shape), leaves a block empty or names
    blocks that do not exist."""
    if len(mapping) != len(tgt_depths) or len(src_depths) != len(tgt_depths):
        raise MappingError("the number of stages never changes; the mapping must have one entry per stage")
    for s, stage in enumerate(mapping):
        if len(stage) != tgt_depths[s]:
            raise MappingError(f"stage {s}: the mapping fills {len(stage)} target blocks but the target has {tgt_depths[s]}")
        for j, src in enumerate(stage):
            if not 0 <= src < src_depths[s]:
                raise MappingError(f"stage {s}: source block {src} does not exist (the source has blocks 0..{src_depths[s] - 1})")
            if (j == 0) != (src == 0) and not (free_first and free_first[s]):
                raise MappingError(
                    f"stage {s}: block 0 (the one that changes shape) must map to block 0 and only there; "
                    f"the mapping fills target block {j} from source block {src}"
                )


def inverse_mapping(mapping: Mapping, src_depths: tuple[int, ...]) -> Mapping:
    """The mapping that undoes a stretch: each source block taken back from its first copy."""
    out = []
    for s, stage in enumerate(mapping):
        out.append(tuple(stage.index(i) for i in range(src_depths[s])))
    return tuple(out)


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
        # Copies are independent tensors: two target blocks never share storage.
        out[key] = t.clone()
    return out


def _same_part(key: str, kind: str, src_layout: BlockLayout, tgt_layout: BlockLayout) -> str:
    """The source key of a stem or head key: the same prefix position, the same rest."""
    src_parts, tgt_parts = (src_layout.stem, tgt_layout.stem) if kind == "stem" else (src_layout.head, tgt_layout.head)
    for i, prefix in enumerate(tgt_parts):
        if key.startswith(prefix) and i < len(src_parts):
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
            raise MappingError(f"{e}{_reference_hint(mapping, source, target, reference_mapping)}") from None
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


def as_reference_reading(mapping: str, source: ArchSpec, target: ArchSpec) -> str | None:
    """What ``mapping`` means read in the reference's numbering, in elth's, where that is a valid mapping
    that differs from elth's own reading (None: the numberings agree, or it means nothing there)."""
    if archs.family_of(source).reference_mapping not in ("fc_layers", "classifier"):
        return None
    try:
        converted = from_reference_mapping(mapping, source, target)
        parsed = parse_mapping(converted, source.depths, target.depths, archs.block_layout(source).free_first)
    except UsageError:
        return None
    try:
        if parse_mapping(mapping, source.depths, target.depths, archs.block_layout(source).free_first) == parsed:
            return None
    except UsageError:
        pass
    return converted


def _reference_hint(mapping: str, source: ArchSpec, target: ArchSpec, given_as_reference: str | None) -> str:
    """Where a refused ``--mapping`` reads as a valid mapping in the reference's numbering: say so."""
    converted = None if given_as_reference is not None else as_reference_reading(mapping, source, target)
    if converted is None:
        return ""
    return (f"; --mapping counts {source.name}'s hidden layers 0..{source.depths[0] - 1}, and this string reads as the "
            f"reference's numbering ({converted} in elth's): pass it as --reference-mapping")


def apply_transform(ticket: Ticket, plan: TransformPlan) -> Ticket:
    """Build the transformed ticket: masks and init weights through the plan's mapping, provenance recorded."""
    if ticket.spec != plan.source:
        raise UsageError(f"the plan is for {plan.source.name} but the ticket is {ticket.arch}")
    src_layout, tgt_layout = archs.block_layout(plan.source), archs.block_layout(plan.target)
    expected = archs.expected_state(plan.target, ticket.input_shape, ticket.num_classes)
    shapes = {k: v[0] for k, v in expected.items()}
    mask_keys = archs.prunable_keys(plan.target, ticket.input_shape, ticket.num_classes)
    masks = map_state(ticket.masks, src_layout, tgt_layout, plan.mapping, mask_keys, shapes)
    init = map_state(ticket.init, src_layout, tgt_layout, plan.mapping, list(expected), shapes)
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
