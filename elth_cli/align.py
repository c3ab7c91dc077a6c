"""A ticket on another initialisation (``elth align``): its mask permuted onto the other network's units.

A ticket's mask fails on a new random initialisation partly because the two networks' units are
permuted relative to each other (Adnan et al., "Sparse Training from Random Initialization: Aligning
Lottery Ticket Masks using Weight Symmetry", ICML 2025). The permutation is found on two dense
networks of one architecture: ``source``, trained from the ticket's own initialisation (the IMP run's
round 0), and ``target``, trained from the new one; the ticket's mask, permuted, goes onto the
target's init weights. ``by``:

* ``weights``: weight matching of the two networks' weights (no data);
* ``activations``: activation matching on training images (the data set the networks were trained on);
* ``none``: the mask moved as it is (the naive transfer, the control the alignment is measured against).

``signs`` also gives each kept weight the sign of the ticket's own (permuted) init weight, with the
target's magnitude (Oh et al., "Find A Winning Sign", ICLR 2025). ``match_on="init"`` matches the two
networks' init weights instead of their trained ones: no training of the source is needed, but
random initialisations share little to match. The new ticket records the permutation's source,
and its cost is the ticket's plus the target's (and, if it is not the ticket's own round 0, the
source's) dense training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from elth_cli import archs
from elth_cli.archs import Units
from elth_cli.errors import UsageError
from elth_cli.find.runfolder import RunFolder, round_path
from elth_cli.symmetry import activation_matching, identity_maps, permute, weight_matching
from elth_cli.ticket import Ticket, add_costs, apply_masks, sha256_hex

BY = ("weights", "activations", "none")
MATCH_ON = ("trained", "init")


@dataclass(frozen=True)
class AlignOptions:
    """How the permutation is found (:data:`BY`, on :data:`MATCH_ON` weights), whether signs move too, and the
    seed of weight matching's order over the layers."""

    by: str = "weights"
    match_on: str = "trained"
    signs: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.by not in BY:
            raise UsageError(f"--by must be one of {', '.join(BY)}, not {self.by!r}")
        if self.match_on not in MATCH_ON:
            raise UsageError(f"--match-on must be one of {', '.join(MATCH_ON)}, not {self.match_on!r}")


def load_dense(path: str | Path, what: str) -> Ticket:
    """A dense ticket: a file, or an IMP run folder's round 0 (its dense training, from its rewind weights)."""
    p = Path(path)
    if p.is_dir():
        if not RunFolder(p).is_run():
            raise UsageError(f"{what} {p} is a folder but not an IMP run folder (no find.json); give a ticket file or "
                             "the folder of elth find --method imp")
        p = round_path(p, 0)
        if not p.is_file():
            raise UsageError(f"{what} {path} has no round 0 yet; let its IMP run train the dense network first")
    ticket = Ticket.load(str(p))
    if ticket.sparsity > 0:
        raise UsageError(f"{what} {p} is {ticket.sparsity:.1%} sparse; give a dense network (an IMP run's round 0)")
    return ticket


def own_round_zero(ticket_path: str | Path) -> Path | None:
    """The dense round 0 beside a ticket that is a round of an IMP run folder (its own source), or None."""
    p = Path(ticket_path)
    folder = RunFolder(p.parent)
    zero = round_path(p.parent, 0)
    return zero if p.name.startswith("round-") and folder.is_run() and zero.is_file() else None


def _check_same(ticket: Ticket, other: Ticket, what: str) -> None:
    if (other.arch, other.input_shape, other.num_classes) != (ticket.arch, ticket.input_shape, ticket.num_classes):
        raise UsageError(f"{what} is a {other.arch} for {other.num_classes} classes; it must be the ticket's "
                         f"{ticket.arch} for {ticket.num_classes} classes")


def find_permutation(units: Units, source: Ticket | None, target: Ticket, options: AlignOptions,
                     inputs: Iterable[Tensor] | None = None) -> dict[str, Tensor]:
    """The permutation of the source's units that matches the target's (every group: the identity for ``none``)."""
    if options.by == "none":
        return identity_maps(units)
    if source is None:
        raise UsageError(f"--by {options.by} needs --source: the dense network trained from the ticket's own "
                         "initialisation (its IMP run's round 0)")
    weights = options.match_on
    if options.by == "weights":
        return weight_matching(units, source.state(weights), target.state(weights), seed=options.seed)
    if inputs is None:
        raise UsageError("--by activations reads training images: pass --dataset")
    model_a, model_b = source.build_model(weights), target.build_model(weights)
    return activation_matching(units, model_a, model_b, inputs)


def align_ticket(ticket: Ticket, source: Ticket | None, target: Ticket, options: AlignOptions = AlignOptions(),
                 inputs: Iterable[Tensor] | None = None, source_is_own: bool = True) -> Ticket:
    """``ticket``'s mask permuted onto ``target``'s units, on ``target``'s init weights (see the module)."""
    options.check()
    for other, what in ((source, "--source"), (target, "--to")):
        if other is not None:
            _check_same(ticket, other, what)
    t0 = time.perf_counter()
    units = archs.network_units(ticket.spec, {k: tuple(v.shape) for k, v in ticket.init.items()})
    perms = find_permutation(units, source, target, options, inputs)
    masks = permute(ticket.masks, units, perms)
    init = {k: v.clone() for k, v in target.init.items()}
    if options.signs:
        own = permute(ticket.init, units, perms)
        for key in masks:
            sign = torch.sign(own[key])
            init[key] = torch.where(sign != 0, init[key].abs() * sign, init[key])
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    matched = source if options.by != "none" else None
    transform: dict[str, Any] = {
        "kind": "align", "by": options.by, "match_on": options.match_on if matched is not None else None,
        "signs": options.signs, "seed": options.seed, "source": matched.parent_record() if matched else None,
        "to": target.parent_record(), "units_moved": moved, "units": sum(len(p) for p in perms.values()),
        "seconds": round(time.perf_counter() - t0, 6),
    }
    return Ticket(
        arch=ticket.arch, input_shape=ticket.input_shape, num_classes=ticket.num_classes, masks=masks,
        init=apply_masks(init, masks), method="align", rewind_step=target.rewind_step, dataset=ticket.dataset,
        parents=[t.parent_record() for t in (ticket, matched, target) if t is not None and t.sha256 is not None],
        transform=transform, hparams=ticket.hparams,
        cost=_cost(ticket, None if source_is_own else matched, target, options),
    )


def _training(t: Ticket) -> dict[str, float]:
    """What training a dense ticket cost (its metrics), as cost fields."""
    m = t.metrics or {}
    return {"train_steps": m.get("steps", 0) or 0, "train_seconds": m.get("wall_time_s", 0.0) or 0.0,
            "trainings": 1 if t.is_trained else 0, "train_flops": m.get("train_flops", 0.0) or 0.0,
            "dense_train_flops": m.get("dense_train_flops", 0.0) or 0.0}


def _cost(ticket: Ticket, source: Ticket | None, target: Ticket, options: AlignOptions) -> dict[str, Any]:
    """The ticket's cost, plus the target's weights (its rewind steps, and its whole training when trained weights
    were matched) and a source other than the ticket's own round 0 (that one is in the ticket's cost already)."""
    trained = options.by != "none" and options.match_on == "trained"
    parts = [target.cost, *([_training(target)] if trained else [])]
    if source is not None:
        parts += [source.cost, *([_training(source)] if trained else [])]
    return add_costs(ticket.cost, *parts)

def training_inputs(dataset: str, data_dir: str | None, batches: int, batch_size: int, seed: int) -> list[Tensor]:
    """``batches`` batches of training images (no augmentation, a seeded order) for matching by activations."""
    from elth_cli import data

    bundle = data.load_dataset(dataset, data_dir, device=torch.device("cpu"))
    out = []
    for x, _ in bundle.train_batches(batch_size, 0, seed, augment=False):
        out.append(x)
        if len(out) == batches:
            break
    return out


@dataclass(frozen=True)
class AlignRequest:
    """What ``elth align`` was asked: the ticket, the other initialisation, the source, where to write."""

    ticket: str
    to: str
    output: str
    source: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    batches: int = 10
    batch_size: int = 128


def align_job(request: AlignRequest, options: AlignOptions, force: bool = False) -> tuple[Ticket, Ticket, str]:
    """Load what ``request`` names, align, save: (the ticket, the aligned ticket, its sha256)."""
    from elth_cli.fileio import check_output_path

    options.check()
    check_output_path(request.output, force)
    ticket = Ticket.load(request.ticket)
    target = load_dense(request.to, "--to")
    own = own_round_zero(request.ticket)
    source_path = request.source if request.source is not None else own
    if options.by != "none" and source_path is None:
        raise UsageError(f"--by {options.by} needs --source: the dense network trained from the ticket's own "
                         f"initialisation ({request.ticket} is not a round of an IMP run folder, whose round 0 it is)")
    source = load_dense(source_path, "--source") if source_path is not None and options.by != "none" else None
    inputs = None
    if options.by == "activations":
        name = request.dataset or ticket.dataset
        if name is None:
            raise UsageError("--by activations reads training images: pass --dataset")
        inputs = training_inputs(name, request.data_dir, request.batches, request.batch_size, options.seed)
    # A source that is the ticket's own round 0 (given or found) is in the ticket's cost already.
    is_own = own is not None and source is not None and source.sha256 == sha256_hex(own.read_bytes())
    result = align_ticket(ticket, source, target, options, inputs, source_is_own=is_own)
    return ticket, result, result.save(request.output, force=force)
