"""Iterative magnitude pruning with rewinding (IMP): one ticket per round in a run folder, resumable."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from elth_cli import archs, data
from elth_cli.runtime import distributed
from elth_cli.runtime.distributed import held_on_main, run_on_main
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO, check_output_path, check_writable_folder, write_bytes_atomic
from elth_cli.masks import kept_and_total, refuse_empty_layers
from elth_cli.find.methods import FindRequest
from elth_cli.find.runfolder import (RoundRecord, RunFolder, check_run_dir, clear_leftovers, is_finished, read_log,
                                     record_from_ticket, round_path, rounds_for_sparsity)
from elth_cli.prune import (
    check_sparsity, magnitude_scores, prune_lowest,
    prune_to_sparsity,
)
from elth_cli.steps import parse_steps
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.train.config import TrainConfig
from elth_cli.find.baselines import default_exclude
from elth_cli.find.tickets import NO_COST, Pretrained, fresh_ticket, pretrained_field, pretrained_source
from elth_cli.train.convergence import DEFAULT_EPSILON, DEFAULT_WINDOW, MaskConvergence, check_detection, never_settles
from elth_cli.train.convergence import STATE_KEY as EARLY_BIRD_KEY
from elth_cli.train.identity import run_differences
from elth_cli.train.provenance import run_config
from elth_cli.train.job import Setup
from elth_cli.train.options import RunOptions, run_options
from elth_cli.train.run import train_state
from elth_cli.train.session import save_result
from elth_cli.runtime.signals import StopFlag, stop_signals

# ----- iterative magnitude pruning with rewinding ---------------------------------------------------
@dataclass(frozen=True)
class ImpOptions:
    """What an IMP run does, apart from the training recipe (a TrainConfig)."""

    arch: str
    dataset: str
    rounds: int | None = None
    sparsity: float | None = None
    prune_rate: float = 0.2
    rewind: str = "0it"
    exclude: tuple[str, ...] | None = None  # None: the family's default (fc for VGG)
    # Early-bird rounds (You et al. 2020): train each round only until its next mask settles.
    early_bird: bool = False
    window: int = DEFAULT_WINDOW
    epsilon: float = DEFAULT_EPSILON
    pretrained: Pretrained | None = None  # find --pretrained FILE: round 0 starts from its weights

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude"] = None if self.exclude is None else list(self.exclude)
        pretrained_field(d, self.pretrained)
        if not self.early_bird:  # runs from before early-bird rounds existed recorded none of these
            for key in ("early_bird", "window", "epsilon"):
                del d[key]
        return d


def imp_sparsities(rounds: int, prune_rate: float) -> list[float]:
    """Nominal sparsity after each round r = 0..rounds: 1 - (1 - p)^r."""
    return [1 - (1 - prune_rate) ** r for r in range(rounds + 1)]


def check_imp_options(opts: ImpOptions) -> int:
    """Validate IMP options; return the index of the last round."""
    if not 0 < opts.prune_rate < 1:
        raise UsageError(f"--prune-rate must be in (0, 1) (the fraction of remaining weights pruned per round), got {opts.prune_rate}")
    if (opts.rounds is None) == (opts.sparsity is None):
        raise UsageError("give exactly one of --rounds and --sparsity")
    if opts.early_bird:
        check_detection(opts.window, opts.epsilon)
    if opts.rounds is not None:
        if opts.rounds < 0 or opts.rounds > 100:
            raise UsageError(f"--rounds must be between 0 and 100, got {opts.rounds}")
        return opts.rounds
    check_sparsity(opts.sparsity)
    return rounds_for_sparsity(opts.sparsity, opts.prune_rate)


def _run_identity(opts: ImpOptions, cfg: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    return {"method": "imp", "imp": opts.as_dict(), "train": cfg.as_dict(), "world_size": world_size}


def _next_pruned(masks: dict[str, Tensor], n_round: int, last: int, opts: ImpOptions, exclude: tuple[str, ...]) -> int:
    """How many weights round ``n_round``'s mask prunes in all, given the previous round's ``masks``."""
    if opts.sparsity is not None and n_round == last:
        return round(opts.sparsity * kept_and_total(masks)[1])
    kept, total = kept_and_total(masks)
    remaining = kept_and_total({k: m for k, m in masks.items() if k not in exclude})[0]
    return total - kept + round(opts.prune_rate * remaining)


def _imp_masks(prev: Ticket, n_round: int, last: int, opts: ImpOptions, exclude: tuple[str, ...]) -> dict[str, Tensor]:
    """Round ``n_round``'s mask: prune ``prune_rate`` of the surviving weights by |trained weight| of the previous round."""
    assert prev.trained is not None
    scores = magnitude_scores(prev.trained, prev.masks)
    if opts.sparsity is not None and n_round == last:
        return prune_to_sparsity(scores, prev.masks, opts.sparsity, exclude)
    remaining = kept_and_total({k: m for k, m in prev.masks.items() if k not in exclude})[0]
    return prune_lowest(scores, prev.masks, round(opts.prune_rate * remaining), exclude)


@dataclass(frozen=True)
class _ImpPlan:
    """An IMP run's fixed quantities, checked before any training."""

    spec: archs.ArchSpec
    last: int
    exclude: tuple[str, ...]
    rewind_step: int


def _plan_imp(opts: ImpOptions, cfg: TrainConfig, bundle: data.DataBundle, world_size: int) -> _ImpPlan:
    last = check_imp_options(opts)
    spec = archs.resolve_arch(opts.arch)
    exclude = default_exclude(spec) if opts.exclude is None else tuple(opts.exclude)
    prunable = archs.prunable_keys(spec, bundle.info.input_shape, bundle.info.num_classes)
    unknown = [k for k in exclude if k not in prunable]
    if unknown:
        raise UsageError(f"--exclude {unknown[0]} is not a prunable weight of {spec.name}; prunable: {', '.join(prunable[:4])}, ...")
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    total = cfg.total_steps(spe)
    rewind_step = parse_steps(opts.rewind, spe)
    if rewind_step >= total:
        raise UsageError(f"--rewind {opts.rewind} ({rewind_step} steps) is not before the end of training ({total} steps)")
    problem = never_settles(cfg.epochs - rewind_step // spe, opts.window, "each early-bird round after round 0")
    if opts.early_bird and problem and distributed.ranks()[0] == 0:  # said now, not found after every round
        print(f"warning: {problem}", file=sys.stderr)
    if opts.sparsity is not None:
        # Check reachability before any training: the last round must be able to prune that far.
        dense = archs.expected_state(spec, bundle.info.input_shape, bundle.info.num_classes)
        sizes = {k: math.prod(dense[k][0]) for k in prunable}
        reachable = sum(v for k, v in sizes.items() if k not in exclude) / sum(sizes.values())
        if opts.sparsity > reachable:
            raise UsageError(f"sparsity {opts.sparsity} is impossible with {', '.join(exclude)} kept dense: at most "
                             f"{reachable:.4f} is reachable; lower --sparsity or change --exclude")
    return _ImpPlan(spec, last, exclude, rewind_step)


@dataclass
class _ImpRun:
    """What the rounds of one IMP run share while it goes (see :func:`find_imp`)."""

    opts: ImpOptions
    cfg: TrainConfig
    bundle: data.DataBundle
    plan: _ImpPlan
    folder: RunFolder
    run: RunOptions  # every round's: its log, the run's stop flag, checkpoint interval, empty layers
    stop_at: tuple[int, int] | None = None

    @property
    def world_size(self) -> int:
        return distributed.ranks()[1]


def find_imp(
    opts: ImpOptions, cfg: TrainConfig, bundle: data.DataBundle, out_dir: str | Path, run: RunOptions | None = None, *,
    on_round: Callable[[RoundRecord], None] | None = None, stop_at: tuple[int, int] | None = None, **options: Any,
) -> tuple[list[RoundRecord], Ticket]:
    """Iterative magnitude pruning with rewinding; one ticket per round in ``out_dir``.

    Round 0 trains the dense network from step 0 and keeps the weights at the rewind step.
    Each later round prunes ``prune_rate`` of the remaining weights by global magnitude of the
    previous round's trained weights (``exclude`` kept dense), rewinds the survivors to the
    rewind-step weights and trains again from the rewind step. Re-running with the same
    arguments skips finished rounds and resumes the current one from its checkpoint.

    ``run`` (or ``options``, :class:`~elth_cli.train.options.RunOptions` fields by name) is every
    round's: its ``log``, ``checkpoint_every_s``, ``allow_empty_layers``; ``stop`` is a flag that
    someone else's signal handlers set (a worker of :mod:`elth_cli.runtime.pool`: then
    ``handle_signals=False``), else the run installs its own for all its rounds.
    ``stop_at=(round, step)`` stops that round at that step as a signal would (for tests).

    Inside a process group every rank calls this with the same arguments and trains every round
    data-parallel (see :func:`elth_cli.train.train_state`). Rank 0 alone reads and writes the
    folder: it decides which rounds are done, computes each round's mask and hands the mask and
    the rewind weights to every rank, so all ranks train with identical tensors.
    """
    run = run_options(run, **options)
    world_size = distributed.ranks()[1]
    plan = _plan_imp(opts, cfg, bundle, world_size)
    folder = RunFolder(Path(out_dir))
    identity = _run_identity(opts, cfg, world_size)
    # A finished run is only read: no lock, no write (a requeued job, a run folder on a read-only mount).
    finished = run_on_main(lambda: is_finished(folder, identity, plan.last))
    if finished:  # what a writer killed after its last round left: its lock and finished rounds' checkpoints
        run_on_main(lambda: clear_leftovers(folder, plan.last))
    else:
        run_on_main(lambda: check_writable_folder(folder.path, f"the IMP run in {folder.path}", create=True))
        run_on_main(lambda: folder.path.mkdir(parents=True, exist_ok=True))
    with contextlib.nullcontext() if finished else held_on_main(folder.lock()):  # one writer per folder
        if not finished:
            run_on_main(lambda: check_run_dir(folder, identity))
        done = run_on_main(lambda: read_log(folder.log_file))
        rounds_run = run.replace(stop=run.stop or StopFlag(), handle_signals=False)
        return _imp_rounds(_ImpRun(opts, cfg, bundle, plan, folder, rounds_run, stop_at), done, on_round,
                           run.handle_signals)


def _imp_rounds(run: _ImpRun, done: dict[int, RoundRecord], on_round: Callable[[RoundRecord], None] | None,
                handle_signals: bool) -> tuple[list[RoundRecord], Ticket]:
    """Every round of the run, in order: finished ones read back, the rest trained and saved."""
    records: list[RoundRecord] = []
    prev: Ticket | None = None
    rewind_state: dict[str, Tensor] | None = None
    cost = dict(NO_COST)
    # One handler for the whole run: a signal between rounds stops the next round at its first step.
    grace = 2.0 if run.world_size > 1 else 0.0
    signals = stop_signals(run.run.stop, grace) if handle_signals else contextlib.nullcontext()
    with signals:
        for r in range(run.plan.last + 1):
            ticket, record = _round(run, r, done, prev, rewind_state, cost)
            records.append(record)
            if on_round is not None:
                on_round(record)
            if r == 0:
                # The rewind weights every later round starts from: rank 0's, on every rank.
                rewind_state = run_on_main(lambda: dict(ticket.init))
            cost = _plus_round(cost, record, ticket)
            prev = ticket
    assert prev is not None
    return records, prev


def _plus_round(cost: dict[str, Any], record: RoundRecord, ticket: Ticket) -> dict[str, Any]:
    """What the tickets after a round cost: everything before it, plus its whole training."""
    metrics = ticket.metrics or {}
    return {"train_steps": cost["train_steps"] + record.steps,
            "train_seconds": round(cost["train_seconds"] + record.seconds, 3),
            "trainings": cost["trainings"] + 1,
            "train_flops": cost["train_flops"] + float(metrics.get("train_flops", 0.0)),
            "dense_train_flops": cost["dense_train_flops"] + float(metrics.get("dense_train_flops", 0.0))}


def _round(run: _ImpRun, r: int, done: dict[int, RoundRecord], prev: Ticket | None,
           rewind_state: dict[str, Tensor] | None, cost: dict[str, Any]) -> tuple[Ticket, RoundRecord]:
    """Round ``r``: its ticket read back when it is finished, else pruned (rank 0), trained and saved."""
    path = run.folder.round_ticket(r)
    # A finished round (its file is the record) is read by rank 0 and handed to every rank.
    finished = run_on_main(lambda: _read_round(run, r, path, prev))
    if finished is not None:
        return finished, done.get(r) or record_from_ticket(r, finished, path)
    masks = None
    if r > 0:
        assert prev is not None
        # Pruned once, on rank 0; every rank trains with exactly these masks.
        masks = run_on_main(lambda: _imp_masks(prev, r, run.plan.last, run.opts, run.plan.exclude))
        refuse_empty_layers(masks, f"round {r}'s mask", "lower --sparsity or run fewer --rounds",
                            allow=run.run.allow_empty_layers)
    ticket = _train_round(run, r, masks, prev, rewind_state, cost)
    ticket.sha256 = run_on_main(lambda: _save_round(ticket, path, r, run.folder))
    return ticket, record_from_ticket(r, ticket, path)


def _read_round(run: _ImpRun, r: int, path: Path, prev: Ticket | None) -> Ticket | None:
    """Round ``r``'s ticket when it is finished (None when it is not), checked to be this run's: its round,
    network, IMP options and recipe, and (after round 0) pruned from the previous round's file. A round
    copied in from another run would otherwise continue this one."""
    if not path.exists():
        return None
    ticket = Ticket.load(path)
    hp = ticket.hparams or {}
    imp = hp.get("imp") if isinstance(hp.get("imp"), dict) else {}
    spe = run.bundle.steps_per_epoch(run.cfg.batch_size, run.world_size)
    start = 0 if r == 0 else run.plan.rewind_step
    # pretrained always compared (None: a fresh init), so that a round started from a file is not taken for a fresh one.
    options = {"pretrained": None, **run.opts.as_dict(), "exclude": list(run.plan.exclude)}
    # As JSON (tuples as lists), as the file holds them; --rounds and --sparsity may grow (a run extended).
    wanted = json.loads(json.dumps({"imp": {k: v for k, v in options.items() if k not in ("rounds", "sparsity")},
                                    "config": run.cfg.resolved(spe, start, run.world_size)}))
    saved = {"imp": {k: imp.get(k) for k in wanted["imp"]},
             "config": {k: v for k, v in hp.items() if k != "imp"}}
    diffs = [] if ticket.method == "imp" and imp.get("round") == r else [f"it is not round {r} of an IMP run"]
    diffs += run_differences(saved, wanted)
    if r > 0 and prev is not None and (not ticket.parents or ticket.parents[0].get("sha256") != prev.sha256):
        diffs.append(f"its parent is not this run's round {r - 1} ({run.folder.round_ticket(r - 1).name})")
    if diffs:
        raise UsageError(f"{path} is not round {r} of this run (differs in: {'; '.join(diffs)}); it was made by "
                         "another run: move it away to train this round again, or choose another --out-dir")
    return ticket


def _save_round(ticket: Ticket, path: Path, r: int, folder: RunFolder) -> str:
    """Write a finished round (rank 0): the ticket, then drop its checkpoint, then its find.jsonl line."""
    sha = save_result(ticket, path, folder.round_checkpoint(r), force=True)
    with open(folder.log_file, "a") as f:
        f.write(json.dumps(record_from_ticket(r, ticket, path).as_dict(), sort_keys=True) + "\n")
    return sha


def _train_round(run: _ImpRun, r: int, masks: dict[str, Tensor] | None, prev: Ticket | None,
                 rewind_state: dict[str, Tensor] | None, cost: dict[str, Any]) -> Ticket:
    """Train round ``r`` (``masks``: its mask, None for the dense round 0); return its ticket, unsaved."""
    cfg, bundle, plan = run.cfg, run.bundle, run.plan
    shape, classes, rewind_step = bundle.info.input_shape, bundle.info.num_classes, plan.rewind_step
    stop_step = run.stop_at[1] if run.stop_at is not None and run.stop_at[0] == r else None
    if r == 0:
        # Seeded: every rank builds the same initialisation.
        dense = fresh_ticket(plan.spec.name, shape, classes, seed=cfg.seed, pretrained=run.opts.pretrained)
        masks = dense.masks
    assert masks is not None
    detector = _round_detector(run, r, masks)
    # Each round is a run of its own (steps from the rewind step again): its own TensorBoard folder, round-NN.
    log_dir = run.run.log_dir / f"round-{r:02d}" if run.run.log_dir is not None else None
    round_run = run.run.replace(checkpoint_path=run.folder.round_checkpoint(r), jsonl_path=run.folder.round_log(r),
                                log_dir=log_dir, stop_at_step=stop_step,
                                title=f"IMP round {r}/{plan.last} {plan.spec.name}",
                                hooks=(*run.run.hooks, *([detector] if detector else [])))
    if r == 0:
        result = train_state(dense.build_model("init"), masks, bundle, cfg, 0, run=round_run,
                             snapshot_steps={rewind_step} if rewind_step > 0 else ())
        rewind = result.snapshots[rewind_step] if rewind_step > 0 else dense.init
        # The dense ticket costs the training up to the rewind point (the weights it starts from).
        fraction = rewind_step / result.metrics["steps"]  # the steps it trained (fewer for an early-bird round)
        ticket_cost = {"train_steps": rewind_step, "trainings": 0,
                       "train_seconds": round(result.metrics["wall_time_s"] * fraction, 3),
                       "train_flops": result.metrics["train_flops"] * fraction,
                       "dense_train_flops": result.metrics["dense_train_flops"] * fraction}
        parents: list[dict[str, Any]] = []
        start = 0
    else:
        assert prev is not None and rewind_state is not None and masks is not None
        rewind = apply_masks(rewind_state, masks)
        result = train_state(rewind, masks, bundle, cfg, rewind_step, run=round_run, arch=plan.spec)
        ticket_cost, parents, start = dict(cost), [prev.parent_record()], rewind_step
    spe = bundle.steps_per_epoch(cfg.batch_size, run.world_size)
    hparams = {"imp": run.opts.as_dict() | {"round": r, "rounds": plan.last, "exclude": list(plan.exclude)},
               **cfg.resolved(spe, start, run.world_size)}
    metrics = {**result.metrics, "round": r}
    if detector is not None:
        metrics["early_bird"] = _round_search(result.extra.get(EARLY_BIRD_KEY, {}), result.metrics)
    return Ticket(
        arch=plan.spec.name, input_shape=shape, num_classes=classes, masks=masks, init=apply_masks(rewind, masks),
        trained=apply_masks(result.state, masks), method="imp", rewind_step=rewind_step, dataset=bundle.info.name,
        parents=parents, hparams=hparams, metrics=metrics, cost=ticket_cost,
        config=run_config("find", hparams, bundle.device, result.setup),
    )


def _round_detector(run: _ImpRun, r: int, masks: dict[str, Tensor]) -> MaskConvergence | None:
    """With ``--early-bird``, the hook that ends round ``r`` once its next mask has settled (None for the
    last round, which has no next mask, and without ``--early-bird``)."""
    opts, plan = run.opts, run.plan
    if not opts.early_bird or r >= plan.last:
        return None
    keys = [k for k in masks if k not in plan.exclude]
    return MaskConvergence(keys, _next_pruned(masks, r + 1, plan.last, opts, plan.exclude), opts.window,
                           opts.epsilon, stop=True, not_before=plan.rewind_step if r == 0 else 0)


def _round_search(state: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """An early-bird round's record: whether it stopped early, when, and the steps it saved."""
    return {"detected_epoch": state.get("detected_epoch"), "distances": state.get("distances", []),
            "stopped_early": metrics["steps"] + metrics["start_step"] < metrics["total_steps"],
            "steps_saved": metrics["total_steps"] - metrics["start_step"] - metrics["steps"]}


# ----- the IMP job of ``find`` and the demo -----------------------------------------------------------
def options_from(request: FindRequest, arch: str, dataset: str) -> ImpOptions:
    """IMP's options from what ``find`` was asked (``request``), checked."""
    from elth_cli.steps import normalise_steps

    if not request.early_bird and request.detection():
        raise UsageError("--window and --epsilon are for early-bird rounds (--early-bird); imp does not use them")
    opts = ImpOptions(arch, dataset, rounds=request.rounds, sparsity=request.sparsity, prune_rate=request.prune_rate,
                      rewind=normalise_steps(request.rewind), exclude=request.exclude,
                      early_bird=request.early_bird, pretrained=pretrained_source(request.pretrained),
                      **request.detection())
    check_imp_options(opts)
    return opts


@dataclass
class ImpResult:
    """An IMP run's rounds, its final ticket, and whether ``-o`` was already that ticket (nothing written)."""

    records: list[RoundRecord]
    final: Ticket
    dataset: str
    kept_output: bool = False


def imp_job(opts: ImpOptions, out_dir: str | Path, setup: Setup, run: RunOptions | None = None, *,
            output: str | None = None, force: bool = False,
            on_round: Callable[[RoundRecord], None] | None = None) -> ImpResult:
    """Run IMP (:func:`find_imp`) in a training session of ``setup``, and copy the final round to ``output``
    (``-``: stdout). An output that already holds the final round's bytes is kept (a re-run of a finished
    command); anything else there needs ``force``, and is refused before any training."""
    last = check_imp_options(opts)
    final_round = round_path(out_dir, last)
    with setup.session() as session:
        if output is not None:
            session.on_main(lambda: None if same_bytes(output, final_round) else check_output_path(output, force))
        cfg, bundle = setup.prepare(session, archs.resolve_arch(opts.arch), opts.dataset)
        records, final = find_imp(opts, cfg, bundle, out_dir, run, on_round=on_round)
        # Rank 0 decides for every rank: another rank that looked itself could find the copy rank 0 is
        # writing, skip the exchange below and leave rank 0 waiting for it.
        kept = output is not None and session.on_main(lambda: same_bytes(output, records[-1].path))
        if output is not None and not kept:  # a byte-for-byte copy of the final round's file
            session.on_main(lambda: write_bytes_atomic(output, Path(records[-1].path).read_bytes()))
    return ImpResult(records, final, bundle.info.name, kept)


def same_bytes(a: str | Path, b: str | Path) -> bool:
    """Whether two files hold the same bytes (``-`` never does: stdout is always written)."""
    if str(a) == STDIO or not Path(a).is_file() or not Path(b).is_file():
        return False
    return Path(a).stat().st_size == Path(b).stat().st_size and Path(a).read_bytes() == Path(b).read_bytes()
