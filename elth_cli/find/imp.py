"""Iterative magnitude pruning with rewinding (IMP): one ticket per round in a run folder, resumable."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from elth_cli import archs, data
from elth_cli.runtime.distributed import held_on_main, run_on_main
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import check_writable_folder, write_bytes_atomic
from elth_cli.masks import kept_and_total, refuse_empty_layers
from elth_cli.find.runfolder import RoundRecord, RunFolder, read_log, read_run_file, record_from_ticket, rounds_for_sparsity
from elth_cli.prune import (
    check_sparsity, magnitude_scores, prune_lowest,
    prune_to_sparsity,
)
from elth_cli.steps import parse_steps
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.train.config import CHECKPOINT_EVERY_S, TrainConfig
from elth_cli.find.baselines import default_exclude
from elth_cli.find.tickets import NO_COST, fresh_ticket
from elth_cli.train.convergence import DEFAULT_EPSILON, DEFAULT_WINDOW, MaskConvergence, check_detection
from elth_cli.train.convergence import STATE_KEY as EARLY_BIRD_KEY
from elth_cli.train.identity import run_differences
from elth_cli.train.provenance import run_config
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

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude"] = None if self.exclude is None else list(self.exclude)
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


def _check_run_dir(folder: RunFolder, identity: dict[str, Any]) -> None:
    """Refuse an existing run folder made with other arguments; record the identity of a new one."""
    if folder.run_file.exists():
        saved = read_run_file(folder)
        if _extends(saved, identity, folder):  # the same run with more rounds: it continues
            write_bytes_atomic(folder.run_file, (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode())
            return
        diffs = run_differences(saved, identity, config_key="train")
        if diffs:
            raise UsageError(
                f"{folder.path} holds an IMP run made with other arguments ({'; '.join(diffs)}); "
                f"{_fewer_rounds_hint(saved, identity, folder) or 're-run with the original arguments to resume'}, "
                "or choose another --out-dir"
            )
        return
    if folder.has_rounds():
        raise UsageError(f"{folder.path} holds round files but no {folder.RUN_FILE}; choose an empty --out-dir")
    write_bytes_atomic(folder.run_file, (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode())


def _rounds_change(saved: dict[str, Any], wanted: dict[str, Any]) -> tuple[int, int] | None:
    """(saved, wanted) ``--rounds`` when the two runs differ in that alone (both asked by rounds)."""
    old, new = saved.get("imp") or {}, wanted.get("imp") or {}
    if old.get("rounds") is None or new.get("rounds") is None or old["rounds"] == new["rounds"]:
        return None
    if run_differences({**saved, "imp": {**old, "rounds": new["rounds"]}}, wanted, config_key="train"):
        return None
    return int(old["rounds"]), int(new["rounds"])


def _fewer_rounds_hint(saved: dict[str, Any], wanted: dict[str, Any], folder: RunFolder) -> str | None:
    """Where ``wanted`` is the saved run with a smaller ``--rounds`` and that round is finished: its file."""
    change = _rounds_change(saved, wanted)
    if change is None or change[1] > change[0] or not folder.round_ticket(change[1]).exists():
        return None
    return f"its round {change[1]} is already {folder.round_ticket(change[1])} (elth info {folder.path} lists every round)"


def _extends(saved: dict[str, Any], wanted: dict[str, Any], folder: RunFolder) -> bool:
    """Whether ``wanted`` is the saved run with a larger ``--rounds`` and nothing else changed: its
    finished rounds are the first rounds of the longer run (each prunes the same fraction of what is
    left), so it continues from the last of them. An early-bird run cannot be extended: its last
    round trained in full, where the longer run stops that round early."""
    change = _rounds_change(saved, wanted)
    if change is None or change[1] < change[0]:
        return False
    if (saved.get("imp") or {}).get("early_bird"):
        raise UsageError(f"{folder.path} holds an early-bird IMP run of {change[0]} rounds: its last round "
                         f"trained in full, where a {change[1]}-round run stops it early, so it cannot be "
                         "extended; choose another --out-dir")
    return True


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
    flag: StopFlag
    log: Any = None
    stop_at: tuple[int, int] | None = None
    rank: int = 0
    world_size: int = 1
    checkpoint_every_s: float = CHECKPOINT_EVERY_S
    allow_empty_layers: bool = False


def find_imp(
    opts: ImpOptions, cfg: TrainConfig, bundle: data.DataBundle, out_dir: str | Path, log: Any = None,
    on_round: Callable[[RoundRecord], None] | None = None, handle_signals: bool = True,
    stop_at: tuple[int, int] | None = None, rank: int = 0, world_size: int = 1, stop: StopFlag | None = None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S, allow_empty_layers: bool = False,
) -> tuple[list[RoundRecord], Ticket]:
    """Iterative magnitude pruning with rewinding; one ticket per round in ``out_dir``.

    Round 0 trains the dense network from step 0 and keeps the weights at the rewind step.
    Each later round prunes ``prune_rate`` of the remaining weights by global magnitude of the
    previous round's trained weights (``exclude`` kept dense), rewinds the survivors to the
    rewind-step weights and trains again from the rewind step. Re-running with the same
    arguments skips finished rounds and resumes the current one from its checkpoint.
    ``stop_at=(round, step)`` stops that round at that step as a signal would (for tests); ``stop``
    is a flag that someone else's signal handlers set (a worker of :mod:`elth_cli.runtime.pool`: pass
    ``handle_signals=False``). Each round checkpoints as :func:`~elth_cli.train.run.train_state` does
    (``checkpoint_every_s``).

    With ``world_size`` > 1 every rank calls this with the same arguments and trains every round
    data-parallel (see :func:`elth_cli.train.train_state`). Rank 0 alone reads and writes the
    folder: it decides which rounds are done, computes each round's mask and hands the mask and
    the rewind weights to every rank, so all ranks train with identical tensors.
    """
    plan = _plan_imp(opts, cfg, bundle, world_size)
    folder = RunFolder(Path(out_dir))
    identity = _run_identity(opts, cfg, world_size)
    # A finished run is only read: no lock, no write (a requeued job, a run folder on a read-only mount).
    finished = run_on_main(lambda: _is_finished(folder, identity, plan.last))
    if not finished:
        run_on_main(lambda: check_writable_folder(folder.path, f"the IMP run in {folder.path}", create=True))
        run_on_main(lambda: folder.path.mkdir(parents=True, exist_ok=True))
    with contextlib.nullcontext() if finished else held_on_main(folder.lock()):  # one writer per folder
        if not finished:
            run_on_main(lambda: _check_run_dir(folder, identity))
        done = run_on_main(lambda: read_log(folder.log_file))
        run = _ImpRun(opts, cfg, bundle, plan, folder, stop or StopFlag(), log, stop_at, rank, world_size,
                      checkpoint_every_s, allow_empty_layers)
        return _imp_rounds(run, done, on_round, handle_signals)


def _is_finished(folder: RunFolder, identity: dict[str, Any], last: int) -> bool:
    """Whether ``folder`` holds this very run with every round written (each round is checked as it is read)."""
    if not (folder.run_file.is_file() and all(folder.round_ticket(r).is_file() for r in range(last + 1))):
        return False
    try:
        return not run_differences(read_run_file(folder), identity, config_key="train")
    except ElthError:
        return False  # a damaged find.json: the writing path says what is wrong


def _imp_rounds(run: _ImpRun, done: dict[int, RoundRecord], on_round: Callable[[RoundRecord], None] | None,
                handle_signals: bool) -> tuple[list[RoundRecord], Ticket]:
    """Every round of the run, in order: finished ones read back, the rest trained and saved."""
    records: list[RoundRecord] = []
    prev: Ticket | None = None
    rewind_state: dict[str, Tensor] | None = None
    cost = dict(NO_COST)
    # One handler for the whole run: a signal between rounds stops the next round at its first step.
    grace = 2.0 if run.world_size > 1 else 0.0
    signals = stop_signals(run.flag, grace) if handle_signals else contextlib.nullcontext()
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
                            allow=run.allow_empty_layers)
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
    options = {**run.opts.as_dict(), "exclude": list(run.plan.exclude)}
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
        dense = fresh_ticket(plan.spec.name, shape, classes, seed=cfg.seed)
        masks = dense.masks
    assert masks is not None
    detector = _round_detector(run, r, masks)
    common = dict(checkpoint_path=run.folder.round_checkpoint(r), jsonl_path=run.folder.round_log(r), log=run.log,
                  stop=run.flag, handle_signals=False,
                  stop_at_step=stop_step, rank=run.rank, world_size=run.world_size,
                  checkpoint_every_s=run.checkpoint_every_s, allow_empty_layers=run.allow_empty_layers,
                  title=f"IMP round {r}/{plan.last} {plan.spec.name}", hooks=[detector] if detector else [])
    if r == 0:
        result = train_state(dense.build_model("init"), masks, bundle, cfg, 0,
                             snapshot_steps={rewind_step} if rewind_step > 0 else (), **common)
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
        result = train_state(rewind, masks, bundle, cfg, rewind_step, arch=plan.spec, **common)
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
