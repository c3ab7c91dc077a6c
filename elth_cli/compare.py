"""Comparing tickets: provenance and cost side by side, mask overlap, aligned sparsity profiles, interpolation.

* :func:`compare_tickets` builds the ``elth compare --json`` document (docs/compare.md is its
  specification): one row per ticket, mask overlap for every pair of the same architecture
  (Jaccard next to what two independent random masks of the same per-layer densities would give,
  and the Hamming distance), and the layer-wise sparsity profile aligned by stage and block
  position, so a stretched ticket can be read against its source.
* :func:`interpolate` evaluates the straight line between two trained tickets with one mask
  (linear mode connectivity, Frankle et al. 2020; section 4 of the E-LTH paper), BatchNorm
  statistics recomputed at every point by default, and reports the error barrier.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from elth_cli import archs
from elth_cli.data import DataBundle, check_compatible
from elth_cli.errors import ElthError, UsageError
# jaccard and expected_random_jaccard are re-exported: compare is where callers have always found them.
from elth_cli.masks import (  # noqa: F401
    Overlap, expected_random_jaccard, hamming, jaccard, kept_and_total, layer_counts, layer_overlaps, pooled,
    same_layout,
)
from elth_cli.ticket import Ticket, apply_masks

SCHEMA = "elth.compare"
SCHEMA_VERSION = 1

# Metric names, most specific first: training records test_acc/test_loss (of the final step);
# the others are what hand-written or older tickets use.
ACCURACY_KEYS = ("test_acc", "final_test_acc", "test_accuracy", "accuracy")
LOSS_KEYS = ("test_loss", "final_test_loss", "loss")
COST_KEYS = ("train_steps", "train_seconds", "trainings", "train_flops", "dense_train_flops")


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


# ----- linear interpolation -----------------------------------------------------------------------
def check_interpolable(a: Ticket, b: Ticket, names: tuple[str, str] = ("A", "B")) -> None:
    """Refuse what cannot be interpolated: untrained tickets, other architectures or masks."""
    for t, n in zip((a, b), names):
        if not t.is_trained:
            raise UsageError(f"{n} has no trained weights; --interpolate needs two trained tickets (elth train)")
    if a.spec != b.spec or tuple(a.input_shape) != tuple(b.input_shape) or a.num_classes != b.num_classes:
        raise UsageError(f"{names[0]} is {a.arch} and {names[1]} is {b.arch} "
                         f"({a.num_classes} vs {b.num_classes} classes); --interpolate needs one architecture")
    if not comparable_masks(a, b) or any(not torch.equal(a.masks[k], b.masks[k]) for k in a.masks):
        n_diff = hamming(a.masks, b.masks) if comparable_masks(a, b) else None
        what = f" ({n_diff} weights differ)" if n_diff is not None else ""
        raise UsageError(f"{names[0]} and {names[1]} have different masks{what}; --interpolate needs two trainings of one ticket")


def interpolate_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float,
                      masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """(1 - alpha) a + alpha b for every float tensor (BN buffers too); exact at alpha 0 and 1.

    torch.lerp returns ``a`` bit for bit at weight 0 and ``b`` at weight 1, so the end points are
    the tickets' own weights. Integer buffers (num_batches_tracked) come from the nearer end.
    Pruned weights are zero in both ends and stay zero.
    """
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.is_floating_point():
            out[key] = torch.lerp(ta, tb, float(alpha))
        else:
            out[key] = (ta if alpha < 0.5 else tb).clone()
    return apply_masks(out, masks)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, bundle: DataBundle, batches: int | None = None,
                       batch_size: int = 128, seed: int = 0) -> int:
    """Replace every BatchNorm's running statistics by their average over training batches.

    Running stats are reset, momentum set to None (a cumulative average, every batch weighted
    equally), then ``batches`` unaugmented training batches (None: one whole epoch) go forward in
    train mode without gradients, in the fixed order of epoch 0 of ``seed``: the same batches at
    every interpolation point. Weights are not touched. Returns the number of batches used.
    """
    bns = _batch_norms(model)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    used = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        it = bundle.train_batches(batch_size, 0, seed, augment=False)
        for x, _ in itertools.islice(it, batches):
            model(x)
            used += 1
        close = getattr(it, "close", None)
        if close is not None:
            close()
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ElthError(f"{bundle.info.name} gave no training batch of size {batch_size} to recompute BatchNorm "
                        "statistics; lower --batch-size")
    return used


def error_barriers(alphas: list[float], errors: list[float]) -> tuple[float, float]:
    """(barrier against the line between the end errors, barrier against their mean).

    The first is max over alpha of e(alpha) - ((1 - alpha) e(0) + alpha e(1)); the second is
    Frankle et al.'s (2020) error barrier height, max e(alpha) - (e(0) + e(1)) / 2. Both are
    taken over the evaluated points only.
    """
    e0, e1 = errors[0], errors[-1]
    linear = max(e - ((1 - a) * e0 + a * e1) for a, e in zip(alphas, errors))
    mean = max(errors) - (e0 + e1) / 2
    return linear, mean


def interpolate(
    a: Ticket, b: Ticket, bundle: DataBundle, points: int = 11, *, recompute_bn: bool = True,
    bn_batches: int | None = None, batch_size: int = 128, eval_batch_size: int = 1000, seed: int = 0,
    split: str = "test", names: tuple[str, str] = ("A", "B"),
    progress: Callable[[float, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Accuracy along the straight line between two trained tickets with one mask.

    ``points`` alphas evenly spaced in [0, 1] (0: ``a``'s trained weights, 1: ``b``'s). With
    ``recompute_bn`` (the default) each point's BatchNorm statistics are recomputed by
    :func:`recompute_bn_stats` before evaluation; without it the interpolated running statistics
    are used as they are, so alpha 0 is exactly ``evaluate`` of ``a``. Evaluation is
    :func:`elth_cli.train.evaluate` (top-1, BN in eval mode, fp32: reduced precision would blur
    small barriers) on ``split``. Returns the ``interpolation`` entry of the ``compare`` document.
    """
    from elth_cli.train.parts import evaluate  # training code is heavy; only interpolation needs it

    check_interpolable(a, b, names)
    check_compatible(bundle.info, a.input_shape, a.num_classes)
    if points < 2:
        raise UsageError(f"--points must be at least 2 (the two end points), got {points}")
    if bn_batches is not None and bn_batches < 1:
        raise UsageError(f"--bn-batches must be at least 1, got {bn_batches}")
    if batch_size < 1 or eval_batch_size < 1:
        raise UsageError("batch sizes must be at least 1")
    alphas = [i / (points - 1) for i in range(points)]
    # On the device, in the memory format the data's batches come in (the device's choice).
    model = bundle.setup.prepare_model(archs.build_model(a.spec, a.input_shape, a.num_classes))
    results = []
    used = 0
    for alpha in alphas:
        state = interpolate_state(a.trained, b.trained, alpha, a.masks)
        model.load_state_dict(state, strict=True)
        if recompute_bn:
            used = recompute_bn_stats(model, bundle, bn_batches, batch_size, seed)
        r = evaluate(model, bundle, split, eval_batch_size)
        point = {"alpha": alpha, "accuracy": r["accuracy"], "loss": r["loss"], "error": 1 - r["accuracy"]}
        results.append(point)
        if progress is not None:
            progress(alpha, point)
    barrier, barrier_mean = error_barriers(alphas, [p["error"] for p in results])
    return {
        "dataset": bundle.info.name,
        "split": split,
        "examples": r["examples"],
        "points": results,
        "recompute_bn": recompute_bn,
        "bn_batches": used if recompute_bn else None,
        "bn_batch_size": batch_size if recompute_bn else None,
        "bn_seed": seed if recompute_bn else None,
        "error_barrier": barrier,
        "error_barrier_vs_mean": barrier_mean,
    }
