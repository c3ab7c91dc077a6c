"""Comparing tickets: provenance and cost side by side, mask overlap, aligned sparsity profiles, replicates.

:func:`compare_tickets` builds the ``elth compare --json`` document (docs/compare.md is its
specification): one row per ticket, mask overlap for every pair of the same architecture
(Jaccard next to what two independent random masks of the same per-layer densities would give,
and the Hamming distance), the layer-wise sparsity profile aligned by stage and block position,
so a stretched ticket can be read against its source, and the groups of seed replicates.
Its ``interpolation`` entry (linear mode connectivity) is :func:`elth_cli.interpolation.interpolate`'s.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from elth_cli import archs
from elth_cli.errors import UsageError
# jaccard, expected_random_jaccard and hamming are re-exported: compare is where callers have always found them.
from elth_cli.masks import (  # noqa: F401
    Overlap, expected_random_jaccard, hamming, jaccard, kept_and_total, layer_counts, layer_overlaps, pooled,
    same_layout,
)
from elth_cli.ticket import COST_KEYS, Ticket

SCHEMA = "elth.compare"
SCHEMA_VERSION = 1

# Metric names, most specific first: training records test_acc/test_loss (of the final step);
# the others are what hand-written or older tickets use.
ACCURACY_KEYS = ("test_acc", "final_test_acc", "test_accuracy", "accuracy")
LOSS_KEYS = ("test_loss", "final_test_loss", "loss")


# ----- masks: overlap and distance ----------------------------------------------------------------
# The counting (jaccard, expected_random_jaccard, hamming) lives in elth_cli.masks; this section
# only shapes it into the JSON document.
def _ratio(x: float, y: float) -> float | None:
    return x / y if y else None


def _overlap_fields(o: Overlap) -> dict[str, Any]:
    """The counts and indices that the pooled entry and each layer entry of a pair share."""
    return {
        "weights": o.weights,
        "intersection": o.intersection,
        "union": o.union,
        "jaccard": o.jaccard,
        "expected_random_jaccard": o.expected_random_jaccard,
        "hamming": o.hamming,
        "hamming_fraction": o.hamming / o.weights if o.weights else 0.0,
    }


def mask_overlap(a: Ticket, b: Ticket) -> dict[str, Any]:
    """Overlap of two masks of one architecture, pooled and per layer (the ``pairs`` entry of the JSON)."""
    per_layer = layer_overlaps(a.masks, b.masks)
    layers = [{
        "key": key,
        "sparsity_a": 1 - o.kept_a / o.weights if o.weights else 0.0,
        "sparsity_b": 1 - o.kept_b / o.weights if o.weights else 0.0,
        **_overlap_fields(o),
    } for key, o in per_layer.items()]
    total = pooled(per_layer.values())
    return {
        **_overlap_fields(total),
        "jaccard_over_random": _ratio(total.jaccard, total.expected_random_jaccard),
        "identical_masks": total.hamming == 0,
        "layers": layers,
    }


# ----- per-ticket rows --------------------------------------------------------------------------
def metric_value(metrics: Mapping[str, Any] | None, keys: tuple[str, ...]) -> float | None:
    """The first of ``keys`` present in ``metrics`` as a finite number, else None."""
    for key in keys:
        value = (metrics or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def ticket_row(ticket: Ticket, name: str) -> dict[str, Any]:
    """What ``compare`` reports about one ticket: identity, sparsity, provenance, metrics and cost."""
    kept, total = kept_and_total(ticket.masks)
    cost = {key: ticket.cost.get(key) for key in COST_KEYS}
    cost.update({k: v for k, v in ticket.cost.items() if k not in cost})
    return {
        "name": name,
        **ticket.identity(),
        "prunable_weights": total,
        "kept_weights": kept,
        "parents": [
            {"sha256": p.get("sha256"), "arch": p.get("arch"), "method": p.get("method"), "sparsity": p.get("sparsity")}
            for p in ticket.parents
        ],
        "transform": {k: ticket.transform.get(k) for k in ("kind", "strategy", "source_arch", "target_arch")}
        if ticket.transform else None,
        "test_acc": metric_value(ticket.metrics, ACCURACY_KEYS),
        "test_loss": metric_value(ticket.metrics, LOSS_KEYS),
        "cost": cost,
        "flops": flops_summary(ticket),
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def flops_summary(ticket: Ticket) -> dict[str, float | None]:
    """A ticket's FLOPs as the paper's Table 2 counts them: to obtain it, to train it, the total, and the
    total relative to one dense training of its architecture with its recipe (None where unknown).

    A ticket straight from dynamic sparse training (``find --method rigl|set|dpf``) was trained by
    the run that found it: that run is its cost, counted once. Likewise IMP's dense round 0, whose
    cost (the training up to its rewind step) is the start of its own training.
    """
    metrics = ticket.metrics or {}
    obtain = _number(ticket.cost.get("train_flops"))
    training = _number(metrics.get("train_flops"))
    from_find = (ticket.config or {}).get("command") == "find"
    if not ticket.is_trained:
        training = 0.0  # nothing trained yet: the total is what obtaining it cost
    elif from_find and "dst" in (ticket.hparams or {}):
        training = 0.0  # the run that found it trained it: counted once, in its cost
    elif from_find and ticket.method == "imp" and metrics.get("round") == 0 and training is not None and obtain:
        training -= obtain  # IMP's dense round: its cost (training up to the rewind step) is part of its training
    total = None if obtain is None or training is None else obtain + training
    dense = _number(metrics.get("dense_run_flops"))
    return {"obtain": obtain, "training": training, "total": total, "dense_training": dense,
            "relative": total / dense if total is not None and dense else None}


# ----- aligned sparsity profiles ------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """Where a prunable weight sits: the stem, block ``block`` of stage ``stage``, or the head.

    ``param`` is the key inside its block (``conv1.weight``, ``shortcut.0.weight``); for the stem
    and the head it is the whole key. Tickets of one family at different depths share positions.
    """

    section: str
    stage: int | None
    block: int | None
    param: str

    @property
    def label(self) -> str:
        """The row label of the aligned profile: ``s0.b1.conv1.weight``, ``stem.conv.weight``, ``head.fc.weight``."""
        if self.section == "block":
            return f"s{self.stage}.b{self.block}.{self.param}"
        return f"{self.section}.{self.param}"


def positions(ticket: Ticket) -> dict[Position, str]:
    """Every prunable key of a ticket by its aligned position."""
    layout = archs.block_layout(ticket.spec)
    out: dict[Position, str] = {}
    for key in ticket.masks:
        kind, s, j = layout.locate(key)
        if kind == "block":
            out[Position("block", s, j, key[len(layout.stages[s][j]):])] = key
        else:
            out[Position(kind, None, None, key)] = key
    return out


def _copied_from(ticket: Ticket, pos: Position) -> str | None:
    """For a stretched or squeezed ticket: the source block that filled this block (its transform mapping)."""
    t = ticket.transform or {}
    mapping = t.get("mapping")
    if pos.section != "block" or not isinstance(mapping, list) or t.get("target_arch") != ticket.arch:
        return None
    try:
        return f"s{pos.stage}.b{int(mapping[pos.stage][pos.block])}"
    except (IndexError, TypeError, ValueError):
        return None


def aligned_profile(tickets: list[Ticket]) -> list[dict[str, Any]]:
    """Layer-wise sparsity of tickets of one family, one row per aligned position (None: no such layer).

    Rows: the stem, then stage by stage each block position up to the deepest ticket's, then the head.
    """
    per_ticket = [positions(t) for t in tickets]
    order: list[Position] = []
    seen: set[Position] = set()
    for pos_map in per_ticket:
        for pos in pos_map:
            if pos not in seen:
                seen.add(pos)
                order.append(pos)
    # Within a block keep the order the params first appeared in (conv1, conv2, shortcut).
    first = {pos: i for i, pos in enumerate(order)}
    section_rank = {"stem": 0, "block": 1, "head": 2}
    param_rank: dict[str, int] = {}
    for pos in order:
        param_rank.setdefault(pos.param, len(param_rank))
    order.sort(key=lambda p: (section_rank[p.section], p.stage if p.stage is not None else -1,
                              p.block if p.block is not None else -1,
                              param_rank[p.param] if p.section == "block" else first[p]))
    counts = [layer_counts(t.masks) for t in tickets]
    rows = []
    for pos in order:
        keys = [pm.get(pos) for pm in per_ticket]
        weights, sparsity = [], []
        for per_key, key in zip(counts, keys):
            if key is None:
                weights.append(None)
                sparsity.append(None)
            else:
                kept, n = per_key[key]
                weights.append(n)
                sparsity.append(1 - kept / n if n else 0.0)
        rows.append({
            "label": pos.label,
            "section": pos.section,
            "stage": pos.stage,
            "block": pos.block,
            "param": pos.param,
            "keys": keys,
            "weights": weights,
            "sparsity": sparsity,
            "copied_from": [_copied_from(t, pos) if key is not None else None for t, key in zip(tickets, keys)],
        })
    return rows


# ----- replicates: tickets that differ only by seed -----------------------------------------------
def _seeds(value: Any) -> list[Any]:
    """Every ``seed`` in a ticket's hparams, nested ones (its source's, its training's) included."""
    if isinstance(value, dict):
        return [v for k, v in sorted(value.items()) for v in ([v] if k == "seed" else _seeds(v))]
    if isinstance(value, list):
        return [s for v in value for s in _seeds(v)]
    return []


def _without_seeds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seeds(v) for v in value]
    return value


def replicate_key(ticket: Ticket) -> str:
    """What a ticket is apart from its seeds: architecture, method, data set, rewind step, how it was
    transformed, and every hyperparameter but the seeds. Tickets with the same key are replicates."""
    t = ticket.transform or {}
    key = {"arch": ticket.arch, "method": ticket.method, "dataset": ticket.dataset, "rewind_step": ticket.rewind_step,
           "trained": ticket.is_trained, "hparams": _without_seeds(ticket.hparams or {}),
           "transform": {k: t.get(k) for k in ("kind", "strategy", "source_arch", "target_arch", "mapping_string",
                                              "source_method")} if t else None}
    return json.dumps(key, sort_keys=True, default=str)


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation over the replicates (n - 1 in the denominator, as the paper's error bars)
    and n; None where fewer than two values exist."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    return {"mean": mean, "std": statistics.stdev(values) if n >= 2 else None, "n": n}


def duplicate_pairs(tickets: list[Ticket]) -> list[list[int]]:
    """``[first, other]`` for every ticket that is the same run as an earlier one: the same key and the same
    seeds (or the same file). A duplicate is not a replicate: it would count one run twice (std 0)."""
    seen: dict[str, int] = {}
    pairs = []
    for i, t in enumerate(tickets):
        key = replicate_key(t) + json.dumps(_seeds(t.hparams or {}), default=str)
        first = seen.setdefault(key, i)
        if first != i:
            pairs.append([first, i])
    return pairs


def replicate_groups(tickets: list[Ticket], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups of two or more tickets that differ only by seed: their members, seeds, and the mean and
    standard deviation of their sparsity, test accuracy and FLOPs. A duplicate (:func:`duplicate_pairs`)
    counts once."""
    dropped = {later for _, later in duplicate_pairs(tickets)}
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tickets):
        if i not in dropped:
            groups.setdefault(replicate_key(t), []).append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first = tickets[members[0]]

        def values(field: Callable[[dict[str, Any]], Any]) -> list[float]:
            return [float(v) for v in (field(rows[i]) for i in members) if v is not None]

        out.append({"members": members, "method": first.method, "arch": first.arch,
                    "seeds": [_seeds(tickets[i].hparams or {}) for i in members],
                    "sparsity": spread(values(lambda r: r["sparsity"])),
                    "test_acc": spread(values(lambda r: r["test_acc"])),
                    "flops_total": spread(values(lambda r: r["flops"]["total"]))})
    return out


# ----- the comparison document ---------------------------------------------------------------------
def check_one_family(tickets: list[Ticket], names: list[str]) -> None:
    """Refuse tickets of different families: their layers do not correspond."""
    families = {t.family for t in tickets}
    if len(families) > 1:
        parts = ", ".join(f"{n} is {t.arch} ({t.family})" for n, t in zip(names, tickets))
        raise UsageError(f"tickets of different families cannot be compared layer by layer: {parts}")


def comparable_masks(a: Ticket, b: Ticket) -> bool:
    """Same architecture and identical mask shapes: the masks can be overlaid weight by weight."""
    return a.spec == b.spec and same_layout(a.masks, b.masks)


def compare_tickets(tickets: list[Ticket], names: list[str]) -> dict[str, Any]:
    """The ``elth compare`` document for two or more tickets of one family (see docs/compare.md)."""
    if len(tickets) < 2:
        raise UsageError("compare needs at least two tickets")
    if len(names) != len(tickets):
        raise UsageError(f"{len(tickets)} tickets but {len(names)} names")
    check_one_family(tickets, names)
    pairs = []
    for i, j in itertools.combinations(range(len(tickets)), 2):
        if comparable_masks(tickets[i], tickets[j]):
            pairs.append({"a": i, "b": j, **mask_overlap(tickets[i], tickets[j])})
    rows = [ticket_row(t, n) for t, n in zip(tickets, names)]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "family": tickets[0].family,
        "same_arch": all(comparable_masks(tickets[0], t) for t in tickets[1:]),
        "tickets": rows,
        "replicates": replicate_groups(tickets, rows),
        "duplicates": duplicate_pairs(tickets),
        "pairs": pairs,
        "profile": aligned_profile(tickets),
        "interpolation": None,
    }
