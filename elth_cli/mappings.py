"""Block mappings of the elastic transformations: which source block fills each target block.

``mapping[s][j]`` is the source block (local id within stage ``s``) that fills target block ``j``.
The strategies plan one (append, interpolate, keep-first, spaced); an explicit one reads the
reference implementation's syntax ``src:dst,dst;src:dst`` (local block ids within a stage, one string
for all stages or one per stage joined by ``|``) in elth's numbering, or in the reference's own
numbering of the family (:func:`from_reference_mapping`), and is written back in both.
"""

from __future__ import annotations

from elth_cli import archs
from elth_cli.archs import ArchSpec
from elth_cli.errors import UsageError

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
    if form == "none":
        return None, f"the reference has no {spec.family} family; elth's mapping is the only one"
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
    if form == "none":
        raise MappingError(f"the reference has no {source.family} family, so no numbering of its own; give the "
                           "mapping to --mapping")
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


def reference_hint(mapping: str, source: ArchSpec, target: ArchSpec, given_as_reference: str | None) -> str:
    """Where a refused ``--mapping`` reads as a valid mapping in the reference's numbering: say so."""
    converted = None if given_as_reference is not None else as_reference_reading(mapping, source, target)
    if converted is None:
        return ""
    return (f"; --mapping counts {source.name}'s hidden layers 0..{source.depths[0] - 1}, and this string reads as the "
            f"reference's numbering ({converted} in elth's): pass it as --reference-mapping")
