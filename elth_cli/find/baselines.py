"""One-shot pruning baselines at a ticket's init (rewind) weights: random, magnitude, SNIP, GraSP, SynFlow."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from elth_cli import archs
from elth_cli.data import check_compatible
from elth_cli.errors import UsageError
from elth_cli.masks import kept_and_total, refuse_empty_layers, same_layout
from elth_cli.prune import (
    RANDOM_DISTRIBUTIONS, allocate_counts, check_sparsity, erk_layer_counts, grasp_scores, magnitude_scores,
    prune_lowest_per_layer, prune_to_sparsity, snip_scores, synflow_masks,
)
from elth_cli.ticket import Ticket, apply_masks


# ----- one-shot baselines at a ticket's init/rewind weights ------------------------------------------
BASELINE_METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
MATCH_MODES = ("overall", "layerwise")


@dataclass(frozen=True)
class BaselineOptions:
    """How a one-shot baseline prunes: the target sparsity, or another ticket's sparsity to match."""

    method: str
    sparsity: float | None = None
    like: Ticket | None = None
    match: str = "overall"
    distribution: str = "layerwise"  # random only: layerwise, global or erk
    exclude: tuple[str, ...] | None = None  # None: the family's default (fc for VGG)
    seed: int = 0
    batches: int = 10  # snip/grasp: training batches that feed the gradients
    batch_size: int = 128
    synflow_iterations: int = 100
    allow_empty_layers: bool = False  # write a mask that leaves a layer without any weight


def default_exclude(spec: archs.ArchSpec) -> tuple[str, ...]:
    """Prunable keys kept dense by default: the paper's setting (fc for VGG, nothing for ResNets)."""
    return archs.family_of(spec).default_exclude


def _layer_targets(like: Ticket, masks: dict[str, Tensor]) -> dict[str, int]:
    """Per-layer pruned counts of ``like``, checked against the ticket's layers."""
    if not same_layout(like.masks, masks):
        raise UsageError(f"--like ticket is a {like.arch}; layer-wise matching needs the same architecture")
    return {k: pruned for k, (pruned, _) in like.layer_sparsity().items()}


def prune_baseline(source: Ticket, options: BaselineOptions, bundle=None) -> Ticket:
    """Prune ``source`` once at its init (rewind) weights with a baseline criterion.

    ``random`` shuffles masks (layer-wise at the same rate, or globally), ``magnitude`` keeps the
    largest |w| globally, ``snip`` and ``grasp`` score with gradients of a few batches of
    ``bundle``, ``synflow`` is iterative and data-free (``bundle`` is never touched). Already
    pruned weights of ``source`` stay pruned; give a dense ticket (e.g. IMP's round 0, which
    holds the dense rewind weights) to prune from scratch.
    """
    method = options.method
    if method not in BASELINE_METHODS:
        raise UsageError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINE_METHODS)}")
    if options.match not in MATCH_MODES:
        raise UsageError(f"--match must be {' or '.join(MATCH_MODES)}, not {options.match!r}")
    if (options.sparsity is None) == (options.like is None):
        raise UsageError("give exactly one of --sparsity and --like")
    spec = source.spec
    exclude = default_exclude(spec) if options.exclude is None else tuple(options.exclude)
    unknown = [k for k in exclude if k not in source.masks]
    if unknown:
        raise UsageError(f"--exclude {unknown[0]} is not a prunable weight of {spec.name} (elth info lists them)")
    masks = source.masks
    layer_targets = None
    if options.like is not None:
        if options.match == "layerwise":
            layer_targets = _layer_targets(options.like, masks)
        sparsity = options.like.sparsity
    else:
        sparsity = check_sparsity(options.sparsity)
    t0 = time.perf_counter()
    keys = list(masks)
    if method == "random":
        gen = torch.Generator().manual_seed(options.seed + 7_000_003)
        scores = {k: torch.rand(masks[k].shape, generator=gen) for k in keys}
        if options.distribution not in RANDOM_DISTRIBUTIONS:
            raise UsageError(f"unknown random distribution {options.distribution!r}; choose one of "
                             f"{', '.join(RANDOM_DISTRIBUTIONS)}")
        if layer_targets is None and options.distribution != "global":
            layer_targets = layer_distribution(masks, sparsity, exclude, options.distribution)
    elif method == "magnitude":
        scores = magnitude_scores(source.init, keys)
    elif method in ("snip", "grasp"):
        if bundle is None:
            raise UsageError(f"{method} needs a data set (--dataset)")
        check_compatible(bundle.info, source.input_shape, source.num_classes)
        model = source.build_model("init", bundle.device)
        fn = snip_scores if method == "snip" else grasp_scores
        scores = fn(model, keys, bundle, n_batches=options.batches, batch_size=options.batch_size, seed=options.seed)
    else:  # synflow: data-free by design
        if layer_targets is not None:
            raise UsageError("synflow prunes globally and iteratively; --match layerwise is not available for it")
        model = source.build_model("init")
        new_masks = synflow_masks(model, masks, sparsity, source.input_shape, options.synflow_iterations, exclude)
        scores = None
    if scores is not None:
        if layer_targets is not None:
            current = {k: int((~masks[k]).sum()) for k in keys}
            counts = {k: layer_targets[k] - current[k] for k in keys}
            if any(c < 0 for c in counts.values()):
                raise UsageError("the source ticket is already sparser than the target in some layer; start from a denser ticket")
            new_masks = prune_lowest_per_layer(scores, masks, counts)
        else:
            new_masks = prune_to_sparsity(scores, masks, sparsity, exclude)
    new_masks = {k: m.to("cpu") for k, m in new_masks.items()}
    refuse_empty_layers(new_masks, f"sparsity {sparsity:g}", "lower --sparsity", allow=options.allow_empty_layers)
    seconds = time.perf_counter() - t0
    cost = dict(source.cost)
    cost["prune_seconds"] = round(cost.get("prune_seconds", 0.0) + seconds, 6)
    return Ticket(
        arch=source.arch,
        input_shape=source.input_shape,
        num_classes=source.num_classes,
        masks=new_masks,
        init=apply_masks(source.init, new_masks),
        method=method,
        rewind_step=source.rewind_step,
        dataset=source.dataset,
        # A source that was never a file (a fresh network) is not a parent.
        parents=[t.parent_record() for t in (source, options.like) if t is not None and t.sha256 is not None],
        hparams={
            "baseline": method, "sparsity": sparsity, "match": options.match if options.like is not None else None,
            "distribution": options.distribution if method == "random" else None, "exclude": list(exclude),
            "seed": options.seed, "batches": options.batches if method in ("snip", "grasp") else None,
            "synflow_iterations": options.synflow_iterations if method == "synflow" else None,
            "source_hparams": source.hparams,
        },
        cost=cost,
    )


def layer_distribution(masks: Mapping[str, Tensor], sparsity: float, exclude: tuple[str, ...],
                       distribution: str = "layerwise") -> dict[str, int]:
    """Pruned counts per layer at exactly ``sparsity`` overall, ``exclude`` dense: ``layerwise`` (every
    layer at the same rate) or ``erk`` (Erdos-Renyi-Kernel, RigL's default)."""
    if distribution == "erk":
        return erk_layer_counts({k: tuple(m.shape) for k, m in masks.items()}, sparsity, exclude)
    return _uniform_layer_targets(masks, sparsity, exclude)


def _uniform_layer_targets(masks: Mapping[str, Tensor], sparsity: float, exclude: tuple[str, ...]) -> dict[str, int]:
    """Pruned counts per layer for a layer-wise uniform mask at ``sparsity`` overall (excluded layers dense)."""
    keys = [k for k in masks if k not in exclude]
    sizes = [masks[k].numel() for k in keys]
    target = round(sparsity * kept_and_total(masks)[1])
    if target > sum(sizes):
        raise UsageError(f"sparsity {sparsity} is impossible with {', '.join(exclude)} kept dense")
    # Rate over the layers that may be pruned, so the overall sparsity is exact.
    counts = allocate_counts(sizes, target / sum(sizes)) if sizes else []
    out = {k: 0 for k in masks}
    out.update(dict(zip(keys, counts)))
    return out


