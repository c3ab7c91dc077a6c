"""One-shot pruning baselines at a ticket's init (rewind) weights: random, magnitude, SNIP, GraSP, SynFlow; and the
random reinitialisation control, a ticket's mask with new init weights (``reinit``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from elth_cli import archs
from elth_cli.data import check_compatible
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.find.methods import FindRequest
from elth_cli.find.tickets import dense_ticket, fresh_ticket, pretrained_source
from elth_cli.masks import kept_and_total, refuse_empty_layers, same_layout
from elth_cli.prune import (
    RANDOM_DISTRIBUTIONS, allocate_counts, check_sparsity, erk_layer_counts, grasp_scores, magnitude_scores,
    prune_lowest_per_layer, prune_to_sparsity, snip_scores, synflow_masks,
)
from elth_cli.ticket import Ticket, apply_masks, apply_masks_, sha256_hex
from elth_cli.train.job import Setup


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


def random_ticket(
    arch: str, input_shape: tuple[int, int, int], num_classes: int, sparsity: float, seed: int = 0,
    distribution: str = "layerwise", dataset: str | None = None,
) -> Ticket:
    """A randomly initialised network (open_lth init, seeded) with a random mask at exactly ``sparsity``."""
    check_sparsity(sparsity)
    dense = fresh_ticket(arch, input_shape, num_classes, seed, dataset)
    if sparsity == 0:
        return dense
    return prune_baseline(dense, BaselineOptions("random", sparsity=sparsity, distribution=distribution, seed=seed),
                          consume=True)


def default_exclude(spec: archs.ArchSpec) -> tuple[str, ...]:
    """Prunable keys kept dense by default: the paper's setting (fc for VGG, nothing for ResNets)."""
    return archs.family_of(spec).default_exclude


def _layer_targets(like: Ticket, masks: dict[str, Tensor]) -> dict[str, int]:
    """Per-layer pruned counts of ``like``, checked against the ticket's layers."""
    if not same_layout(like.masks, masks):
        raise UsageError(f"--like ticket is a {like.arch}; layer-wise matching needs the same architecture")
    return {k: pruned for k, (pruned, _) in like.layer_sparsity().items()}


def prune_baseline(source: Ticket, options: BaselineOptions, bundle=None, consume: bool = False) -> Ticket:
    """Prune ``source`` once at its init (rewind) weights with a baseline criterion.

    ``random`` shuffles masks (layer-wise at the same rate, or globally), ``magnitude`` keeps the
    largest |w| globally, ``snip`` and ``grasp`` score with gradients of a few batches of
    ``bundle``, ``synflow`` is iterative and data-free (``bundle`` is never touched). Already
    pruned weights of ``source`` stay pruned; give a dense ticket (e.g. IMP's round 0, which
    holds the dense rewind weights) to prune from scratch. ``consume``: ``source`` is not used again (a
    fresh network made for this), so its init weights are pruned in place rather than copied.
    """
    _check_options(options)
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
    if options.method == "synflow":  # data-free and iterative: it prunes by itself
        if layer_targets is not None:
            raise UsageError("synflow prunes globally and iteratively; --match layerwise is not available for it")
        new_masks = synflow_masks(source.build_model("init"), masks, sparsity, source.input_shape,
                                  options.synflow_iterations, exclude)
    else:
        if options.method == "random" and layer_targets is None and options.distribution != "global":
            layer_targets = layer_distribution(masks, sparsity, exclude, options.distribution)
        scores = _scores(source, options, bundle, per_layer=layer_targets is not None)
        new_masks = _prune_by_scores(scores, masks, sparsity, exclude, layer_targets)
    new_masks = {k: m.to("cpu") for k, m in new_masks.items()}
    refuse_empty_layers(new_masks, f"sparsity {sparsity:g}", "lower --sparsity", allow=options.allow_empty_layers)
    init = apply_masks_(source.init, new_masks) if consume else apply_masks(source.init, new_masks)
    return _baseline_ticket(source, options, new_masks, init, sparsity, exclude, time.perf_counter() - t0)


class _DrawnInOrder(Mapping[str, Tensor]):
    """Uniform random scores, drawn from ``gen`` layer after layer in key order when each layer is asked for
    (the same numbers as drawing them all at once); a layer skipped is drawn and dropped, one asked for twice
    or out of order is an error."""

    def __init__(self, shapes: dict[str, torch.Size], gen: torch.Generator) -> None:
        self._shapes, self._gen, self._next = shapes, gen, 0

    def __getitem__(self, key: str) -> Tensor:
        keys = list(self._shapes)
        if keys.index(key) < self._next:
            raise RuntimeError(f"random scores of {key} were drawn already: they are drawn once, in order")
        while True:
            k = keys[self._next]
            self._next += 1
            scores = torch.rand(self._shapes[k], generator=self._gen)
            if k == key:
                return scores

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def _check_options(options: BaselineOptions) -> None:
    if options.method not in BASELINE_METHODS:
        raise UsageError(f"unknown baseline {options.method!r}; choose one of {', '.join(BASELINE_METHODS)}")
    if options.match not in MATCH_MODES:
        raise UsageError(f"--match must be {' or '.join(MATCH_MODES)}, not {options.match!r}")
    if (options.sparsity is None) == (options.like is None):
        raise UsageError("give exactly one of --sparsity and --like")
    if options.method == "random" and options.distribution not in RANDOM_DISTRIBUTIONS:
        raise UsageError(f"unknown random distribution {options.distribution!r}; choose one of "
                         f"{', '.join(RANDOM_DISTRIBUTIONS)}")


def _scores(source: Ticket, options: BaselineOptions, bundle: Any, per_layer: bool) -> Mapping[str, Tensor]:
    """Every prunable weight's score (random, magnitude, snip, grasp): the lowest are pruned. ``per_layer``: each
    layer's are asked for once, in order (random ones are then drawn a layer at a time)."""
    keys = list(source.masks)
    if options.method == "random":
        gen = torch.Generator().manual_seed(options.seed + 7_000_003)
        shapes = {k: source.masks[k].shape for k in keys}
        if not per_layer:  # one threshold over every layer: all the scores at once
            return {k: torch.rand(shape, generator=gen) for k, shape in shapes.items()}
        return _DrawnInOrder(shapes, gen)  # a threshold per layer: one layer's scores at a time
    if options.method == "magnitude":
        return magnitude_scores(source.init, keys)
    if bundle is None:
        raise UsageError(f"{options.method} needs a data set (--dataset)")
    check_compatible(bundle.info, source.input_shape, source.num_classes)
    model = source.build_model("init", bundle.device)
    fn = snip_scores if options.method == "snip" else grasp_scores
    return fn(model, keys, bundle, n_batches=options.batches, batch_size=options.batch_size, seed=options.seed)


def _prune_by_scores(scores: dict[str, Tensor], masks: dict[str, Tensor], sparsity: float, exclude: tuple[str, ...],
                     layer_targets: dict[str, int] | None) -> dict[str, Tensor]:
    """The lowest scores pruned: to ``sparsity`` overall, or to each layer's target count."""
    if layer_targets is None:
        return prune_to_sparsity(scores, masks, sparsity, exclude)
    counts = {k: layer_targets[k] - int((~masks[k]).sum()) for k in masks}
    if any(c < 0 for c in counts.values()):
        raise UsageError("the source ticket is already sparser than the target in some layer; start from a denser ticket")
    return prune_lowest_per_layer(scores, masks, counts)


def _baseline_ticket(source: Ticket, options: BaselineOptions, masks: dict[str, Tensor], init: dict[str, Tensor],
                     sparsity: float, exclude: tuple[str, ...], seconds: float) -> Ticket:
    """The pruned ticket, with what made it: the baseline's options, its source and like, and its cost."""
    method = options.method
    cost = dict(source.cost)
    cost["prune_seconds"] = round(cost.get("prune_seconds", 0.0) + seconds, 6)
    return Ticket(
        arch=source.arch, input_shape=source.input_shape, num_classes=source.num_classes, masks=masks,
        init=init, method=method, rewind_step=source.rewind_step, dataset=source.dataset,
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




# ----- the random reinitialisation control -------------------------------------------------------------
def init_seed(hparams: Mapping[str, Any] | None) -> int | None:
    """The seed a ticket's init weights were drawn with, as its ``hparams`` record it; None where they record
    none, or the weights came from a file (``--pretrained``) or an import."""
    hp = hparams or {}
    if hp.get("baseline") == "reinit":  # its own draw
        return _whole(hp.get("seed"))
    for inner in ("ticket_hparams", "source_hparams"):  # a trained ticket: the ticket's; a baseline: its source's
        if isinstance(hp.get(inner), dict):
            return init_seed(hp[inner])
    searches = [hp[k] for k in ("imp", "early_bird", "dst") if isinstance(hp.get(k), dict)]
    if hp.get("init") == "pretrained" or any(s.get("pretrained") for s in searches):
        return None
    if not searches and "total_steps" in hp:  # elth train's record of a ticket that recorded nothing: its seed
        return None  # is the data order's, not the init's
    return _whole(hp.get("seed"))


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reinit_ticket(like: Ticket, seed: int, name: str = "the ticket") -> Ticket:
    """The random reinitialisation control of ``like`` (open_lth's ``randomly_reinitialize`` branch): its mask
    exactly, with the init weights of a fresh network of its architecture, input shape and classes drawn by its
    family's init from ``seed``, masked. It rewinds to ``like``'s own rewind step, so it trains for the same
    steps as ``like``; it costs what ``like``'s mask cost. A ``seed`` that ``like``'s own init was drawn with
    is refused (``name``: the ticket, as the refusal names it)."""
    if init_seed(like.hparams) == seed:
        raise UsageError(f"--seed {seed} is the seed {name} was initialised with; give another seed")
    fresh = fresh_ticket(like.arch, like.input_shape, like.num_classes, seed, like.dataset)
    if not same_layout(fresh.masks, like.masks):
        raise UsageError(f"{name}'s masks are not the prunable weights of {like.arch}; it cannot be reinitialised")
    masks = {k: m.detach().clone().to("cpu") for k, m in like.masks.items()}
    return Ticket(
        arch=like.arch, input_shape=like.input_shape, num_classes=like.num_classes, masks=masks,
        init=apply_masks(fresh.init, masks), method="reinit", rewind_step=like.rewind_step, dataset=like.dataset,
        parents=[like.parent_record()],
        hparams={"baseline": "reinit", "seed": seed, "init": fresh.hparams["init"], "source_hparams": like.hparams},
        cost=dict(like.cost),
    )


def _reinit_job(request: FindRequest, setup: Setup) -> Ticket:
    """``find --method reinit``: the control of ``--like``, its architecture and data set the ticket's own."""
    if request.like is None:
        raise UsageError("reinit needs --like TICKET: the ticket whose mask gets new init weights")
    like = Ticket.load(request.like)
    if request.arch is not None and archs.resolve_arch(request.arch).name != like.arch:
        raise UsageError(f"--arch disagrees with the --like ticket's architecture ({like.arch}); drop --arch")
    if setup.data.dataset is not None and like.dataset is not None and setup.data.dataset != like.dataset:
        raise UsageError(f"--dataset disagrees with the --like ticket's data set ({like.dataset}); drop --dataset")
    return reinit_ticket(like, request.seed, "the --like ticket (stdin)" if request.like == STDIO else request.like)


# ----- the baseline job of ``find`` ---------------------------------------------------------------------
@dataclass
class BaselineResult:
    ticket: Ticket
    sha256: str | None
    reused: bool


def baseline_job(request: FindRequest, output: str, setup: Setup, allow_empty_layers: bool = False,
                 force: bool = False) -> BaselineResult:
    """Prune once (``request.method``) at ``--from``'s init weights, or a fresh seeded network of ``--arch``, to
    ``--sparsity`` or ``--like``'s, and save it to ``output``; ``reinit``: ``--like``'s mask with new weights
    (:func:`reinit_ticket`). An output that already is exactly this ticket is kept (a re-run of a finished
    command); anything else there needs ``force``."""
    if request.method == "reinit":
        _refuse_other(output, force)
        return _saved(_reinit_job(request, setup), output, force)
    if (request.sparsity is None) == (request.like is None):
        raise UsageError(f"{request.method} needs exactly one of --sparsity and --like")
    _refuse_other(output, force)
    like = Ticket.load(request.like) if request.like is not None else None
    pretrained = pretrained_source(request.pretrained)
    if request.from_ticket is not None and pretrained is not None:
        raise UsageError("--from prunes a ticket's own init weights; --pretrained starts a fresh --arch network from "
                         "a file: give one of them")
    if request.from_ticket is not None:
        source = Ticket.load(request.from_ticket)
        if request.arch is not None and archs.resolve_arch(request.arch).name != source.arch:
            raise UsageError("--arch disagrees with the --from ticket's architecture; drop --arch")
    elif request.arch is None or setup.data.dataset is None:
        raise UsageError(f"{request.method} needs --from TICKET, or --arch and --dataset for a fresh seeded network")
    else:
        source = dense_ticket(request.arch, setup.data.dataset, seed=request.seed, data_dir=setup.data.data_dir,
                              pretrained=pretrained)
    options = BaselineOptions(
        method=request.method, sparsity=request.sparsity, like=like, match=request.match,
        distribution=request.distribution or "layerwise", exclude=request.exclude, seed=request.seed,
        batches=request.batches, batch_size=request.batch_size or 128, synflow_iterations=request.iterations,
        allow_empty_layers=allow_empty_layers)
    # A fresh network is made for this alone: pruned in place.
    ticket = prune_baseline(source, options, _batches_for(request, setup, source), consume=request.from_ticket is None)
    return _saved(ticket, output, force)


def _saved(ticket: Ticket, output: str, force: bool) -> BaselineResult:
    """``ticket`` written to ``output``, or the output kept when it already is exactly this ticket."""
    if output != STDIO and Path(output).exists() and not force and _same_ticket(Ticket.load(output), ticket, output):
        return BaselineResult(ticket, sha256_hex(Path(output).read_bytes()), True)
    return BaselineResult(ticket, ticket.save(output, force=True), False)


def _batches_for(request: FindRequest, setup: Setup, source: Ticket) -> Any:
    """The data snip and grasp score with (None for the others, which read none)."""
    if request.method not in ("snip", "grasp"):
        return None
    from elth_cli import data
    from elth_cli.runtime.device import resolve_device

    name = setup.data.dataset or source.dataset
    if not name:
        raise UsageError(f"{request.method} reads training batches: pass --dataset")
    return data.load_dataset(name, setup.data.data_dir, download=setup.data.download, device=resolve_device(setup.device),
                             num_workers=setup.data.workers)


def _refuse_other(output: str, force: bool) -> None:
    """Before any work: an existing output that is not an elth ticket is refused unless ``force``."""
    from elth_cli.container import peek_format
    from elth_cli.ticket import FORMAT

    check_output_path(output, force=True)
    if output != STDIO and Path(output).exists() and not force and peek_format(output) != FORMAT:
        raise UsageError(f"output {output} already exists; pass --force to overwrite it or choose another path")


def _same_ticket(existing: Ticket, made: Ticket, output: str) -> bool:
    """Whether ``existing`` is ``made`` (masks, weights, provenance); another ticket is refused."""
    same = (existing.arch == made.arch and existing.method == made.method and existing.hparams == made.hparams
            and existing.parents == made.parents and set(existing.masks) == set(made.masks)
            and all(torch.equal(existing.masks[k], made.masks[k]) for k in made.masks)
            and all(torch.equal(existing.init[k], made.init[k]) for k in made.init))
    if not same:
        raise UsageError(f"output {output} already exists; pass --force to overwrite it or choose another path")
    return True
