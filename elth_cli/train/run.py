"""Training a masked network or a ticket: set up the parts, resume, run the loop with its hooks, report.

With several processes (``torchrun``, ``srun``; see :mod:`elth_cli.runtime.distributed`) the same code
runs data-parallel: DistributedDataParallel around the (compiled) model, each rank on its shard of
every global batch, metrics summed over ranks, stop signals agreed on, and rank 0 alone writing
checkpoints and logs. With one process none of that machinery is touched.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from elth_cli import archs
from elth_cli.runtime import distributed
from elth_cli.archs import ArchSpec
from elth_cli.data import DataBundle, check_compatible
from elth_cli.runtime.device import DeviceSetup, device_name, same_device
from elth_cli.errors import ElthError, UsageError
from elth_cli.flops import FLOPS_PER_MAC, TRAINING_PASSES, forward_macs, module_macs
from elth_cli.masks import refuse_empty_layers, same_layout
from elth_cli.ticket import Ticket
from elth_cli.train.checkpoint import Checkpoint, RunState, cpu_state, read_checkpoint, restore_checkpoint, \
    state_fingerprint
from elth_cli.train.config import TrainConfig, check_run_length, validate_config
from elth_cli.train.hooks import standard_hooks
from elth_cli.train.identity import run_differences
from elth_cli.train.loop import TrainLoop
from elth_cli.train.options import RunOptions, run_options
from elth_cli.train.provenance import run_config, trained_ticket
from elth_cli.runtime.signals import StopFlag, stop_signals
from elth_cli.train.parts import TrainParts, build_parts



@dataclass
class TrainResult:
    """What :func:`train_state` returns: final CPU state (pruned weights +0.0), the masks in force at the
    end, metrics, snapshots and history."""

    state: dict[str, Tensor]
    metrics: dict[str, Any]
    snapshots: dict[int, dict[str, Tensor]]
    history: list[dict[str, Any]]
    resumed_from: int | None = None
    masks: dict[str, Tensor] | None = None
    setup: DeviceSetup | None = None  # the device choices it ran with
    extra: dict[str, Any] = field(default_factory=dict)  # what hooks kept in the run state (e.g. mask updates)


def _as_model(model_or_state: nn.Module | Mapping[str, Tensor], arch: str | ArchSpec | None,
              bundle: DataBundle) -> nn.Module:
    if isinstance(model_or_state, nn.Module):
        return model_or_state
    if arch is None:
        raise UsageError("training from a state dict needs arch= (the architecture name)")
    spec = archs.resolve_arch(arch) if isinstance(arch, str) else arch
    model = archs.build_model(spec, bundle.info.input_shape, bundle.info.num_classes)
    model.load_state_dict(dict(model_or_state), strict=True)
    return model


def _check_run(bundle: DataBundle, cfg: TrainConfig, start_step: int, snapshot_steps: set[int],
               world_size: int) -> None:
    """Refuse a run that cannot be: data on another device, a start past the end, stray snapshots."""
    validate_config(cfg)
    if not same_device(bundle.device, torch.device(cfg.device)):
        raise UsageError(f"the data is on {bundle.device} but the config trains on {cfg.device}; "
                         f"load it with device={cfg.device}")
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    check_run_length(cfg, spe)
    total = cfg.total_steps(spe)
    if not 0 <= start_step < total:
        raise UsageError(f"start step {start_step} (the ticket's rewind step) is not before the recipe's last step "
                         f"{total} ({cfg.epochs} epochs x {spe} steps); train for more --epochs")
    bad = [s for s in snapshot_steps if not start_step <= s <= total]
    if bad:
        raise UsageError(f"snapshot step {min(bad)} is outside the run's steps {start_step}..{total}")


def run_identity(cfg: TrainConfig, start_step: int, steps_per_epoch: int, world_size: int,
                 state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """What makes a checkpoint this run's: the config, where it starts, and the weights and masks it starts from."""
    return {"config": cfg.as_dict(), "start_step": start_step, "steps_per_epoch": steps_per_epoch,
            "world_size": world_size, "source": state_fingerprint(state, masks)}


def _read_resume(path: Path | None, resume: str, identity: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint to resume from (None: start over), checked against the run's identity."""
    if path is not None and path.exists() and resume != "never":
        ckpt = read_checkpoint(path)
        diff = run_differences(ckpt.identity, identity)
        if diff:
            raise UsageError(f"checkpoint {path} belongs to a different run (differs in: {'; '.join(diff)}); "
                             "re-run with the original options, or pass --restart to discard it")
        return ckpt
    if resume == "require":
        raise UsageError(f"--resume given but there is no checkpoint {path}; drop --resume to start a new run")
    return None


def _resume(parts: TrainParts, path: Path | None, resume: str, identity: dict[str, Any], start_step: int,
            rank: int) -> tuple[RunState, int | None]:
    """The run state to start from: a fresh one, or the checkpoint's (which every rank loads)."""
    # Rank 0 reads the checkpoint and checks that it belongs to this run; every rank gets it (or the error).
    ckpt = distributed.run_on_main(lambda: _read_resume(path, resume, identity))
    if ckpt is None:
        return RunState(step=start_step), None
    _warn_other_threads(ckpt, parts, rank)
    # Rank 0 carries the epoch's running statistics (their sums over the ranks); the others start at 0.
    state = restore_checkpoint(ckpt, parts.model, parts.optimizer, parts.scaler,
                               parts.step.stats if rank == 0 else None)
    if rank != 0:
        parts.step.reset_stats()
    masks = ckpt.masks()
    if masks is not None:
        if not same_layout(masks, parts.masks.masks):
            raise ElthError(f"cannot resume from {ckpt.path}: its masks do not fit this run; delete it (or pass "
                            "--restart) to start over")
        parts.masks.load(masks)  # the masks in force when it stopped (hooks may have rewired them)
        parts.masks.load_extra(state.extra_tensors)  # DPF's dense weights (the model holds the masked ones)
    return state, state.step


def _warn_other_threads(ckpt: Checkpoint, parts: TrainParts, rank: int) -> None:
    """On the CPU a result depends on the thread count (kernels split their sums by it): say so when a run
    resumes with another count than the one it stopped with, as the checkpoint records it."""
    threads = torch.get_num_threads()
    device = next(parts.model.parameters()).device
    if rank == 0 and device.type == "cpu" and ckpt.cpu_threads is not None and ckpt.cpu_threads != threads:
        print(f"warning: {ckpt.path} was written by a run with {ckpt.cpu_threads} CPU thread"
              f"{'s' if ckpt.cpu_threads != 1 else ''}; resuming with {threads} gives a result that differs "
              f"slightly from an uninterrupted run (set OMP_NUM_THREADS={ckpt.cpu_threads}, or torch's "
              "set_num_threads, to match it)", file=sys.stderr)


def _metrics(loop: TrainLoop, start_step: int, macs: dict[str, int]) -> dict[str, Any]:
    state, last, ws = loop.state, loop.state.history[-1], loop.world_size
    images = loop.cfg.epochs // loop.cfg.train_scale * loop.bundle.num_examples("train")
    dense_run_flops = FLOPS_PER_MAC * TRAINING_PASSES * forward_macs(macs) * images
    metrics: dict[str, Any] = {
        "test_acc": last["test_acc"], "best_test_acc": state.best_test_acc, "test_loss": last["test_loss"],
        "train_loss": last["train_loss"], "train_acc": last["train_acc"], "epochs": loop.cfg.epochs,
        "start_step": start_step, "steps": state.step - start_step, "total_steps": loop.total,
        "wall_time_s": round(state.wall_seconds, 3),
        # All ranks step together: the run's throughput is world_size times one rank's.
        "images_per_s": round(state.train_images * ws / state.train_seconds, 1) if state.train_seconds > 0 else None,
        "device": device_name(loop.device), "precision": loop.cfg.precision,
        # This training's FLOPs at the masks' densities, and what a dense network would have cost.
        "train_flops": state.flops, "dense_train_flops": state.dense_flops,
        # The yardstick costs are compared against: one dense training of this network with the recipe
        # (at --train-scale 1), from step 0 (the paper's Table 2 normalises by it).
        "dense_run_flops": dense_run_flops,
    }
    if ws > 1:
        metrics["world_size"] = ws
    if "test_top5" in last:
        metrics["test_top5"] = last["test_top5"]
    return metrics


def train_state(
    model_or_state: nn.Module | Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    bundle: DataBundle,
    cfg: TrainConfig,
    start_step: int = 0,
    *,
    run: RunOptions | None = None,
    arch: str | ArchSpec | None = None,
    snapshot_steps: Iterable[int] = (),
    feedback: bool = False,
    search: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a masked network from ``start_step`` to the recipe's last step; return its final state.

    ``model_or_state`` is a model (moved to ``cfg.device`` in place) or a state dict (then ``arch``
    names the architecture). Pruned weights are zeroed after every optimizer step. ``run``
    (:class:`~elth_cli.train.options.RunOptions`) says how the run goes: its checkpoint (written at
    an epoch's end every ``checkpoint_every_s`` seconds and when a stop is requested: a signal while
    ``handle_signals``, ``stop.request()``, or ``stop_at_step``; the run then raises
    :class:`TrainingStopped`), whether it resumes, its logs and extra hooks. The state after ``s``
    steps is kept for every ``s`` in ``snapshot_steps`` (IMP's rewind point). ``feedback`` keeps
    dense weights beside the masked ones (DPF, :class:`~elth_cli.train.parts.FeedbackMaskSet`);
    ``search`` (the options of a search the hooks carry out: DST, early-bird) joins the run's
    identity, so a checkpoint of another search is refused. The checkpoint is left in place: remove
    it (:func:`remove_checkpoint`) once the result is saved.

    Inside a process group (:mod:`elth_cli.runtime.distributed`) every rank calls this with the same
    arguments: the model trains under DistributedDataParallel on the rank's shard of each global
    batch, rank 0 alone reads and writes the checkpoint, the JSON lines and the TensorBoard event
    files and reports progress, a stop requested on any rank stops every rank at the same step, and
    every rank returns the same state and metrics (timings aside).
    """
    run = run or RunOptions()
    rank, world_size = distributed.ranks()
    snapshot_steps = {int(s) for s in snapshot_steps}
    _check_run(bundle, cfg, start_step, snapshot_steps, world_size)
    # A layer with no weight passes nothing: the run would train to chance.
    refuse_empty_layers(masks, "the ticket", "use a less sparse one", allow=run.allow_empty_layers)
    model = _as_model(model_or_state, arch, bundle)
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    identity = run_identity(cfg, start_step, spe, world_size, model.state_dict(), masks)
    if search is not None:
        identity["search"] = dict(search)
    distributed.record_digests(f"{run.title} start", rank, masks=masks, state=model.state_dict())
    setup = run.setup or bundle.setup.for_run(cfg.precision, cfg.deterministic)
    macs = module_macs(model, bundle.info.input_shape)  # before build_parts: the model is still the plain module
    parts = build_parts(model, masks, cfg, setup, world_size, feedback=feedback)
    state, resumed_from = _resume(parts, run.checkpoint_path, run.resume, identity, start_step, rank)
    loop = _loop(parts, bundle, cfg, state, run, identity, snapshot_steps, macs, resumed_from)
    # One Ctrl-C reaches a torchrun worker twice (terminal and torchrun): only a later one aborts.
    signals = stop_signals(loop.flag, 2.0 if world_size > 1 else 0.0) if run.handle_signals else contextlib.nullcontext()
    with signals:
        loop.run()
    final = cpu_state(parts.model)
    distributed.record_digests(f"{run.title} end", rank, masks=parts.masks.masks, state=final)
    return TrainResult(final, _metrics(loop, start_step, macs), state.snapshots, state.history, resumed_from,
                       dict(parts.masks.masks), setup, state.extra)


def _loop(parts: TrainParts, bundle: DataBundle, cfg: TrainConfig, state: RunState, run: RunOptions,
          identity: dict[str, Any], snapshot_steps: set[int], macs: dict[str, int],
          resumed_from: int | None) -> TrainLoop:
    """The loop with its hooks: the standard ones (rank 0 alone writes and reports) and the run's own."""
    rank, world_size = distributed.ranks()
    main = rank == 0
    ckpt = run.checkpoint_path
    hooks = standard_hooks(
        snapshot_steps=snapshot_steps, checkpoint=(ckpt, identity) if ckpt is not None else None,
        jsonl=run.jsonl_path if main else None, reporter=run.log if main else None,
        extra=run.hooks, macs=macs, checkpoint_every_s=run.checkpoint_every_s, log_dir=run.log_dir if main else None)
    return TrainLoop(parts, bundle, cfg, state, hooks, run.stop or StopFlag(), stop_at_step=run.stop_at_step,
                     rank=rank, world_size=world_size, title=run.title, resumed_from=resumed_from)


def train_ticket(
    ticket: Ticket,
    bundle: DataBundle,
    cfg: TrainConfig,
    run: RunOptions | None = None,
    **options: Any,
) -> Ticket:
    """Train a ticket's subnetwork from its ``init`` weights at its ``rewind_step``; return the trained ticket.

    ``run`` (or ``options``, :class:`~elth_cli.train.options.RunOptions` fields by name) says how the
    run goes (checkpoint, resume, logs, hooks, stops). The result keeps every field of ``ticket``
    (masks, init, method, parents, transform, cost, ...) and adds ``trained``, ``hparams`` (the
    resolved config), ``metrics`` and ``config`` (the hyperparameters with the versions, device,
    processes and host of the run). It is not saved: save it, then :func:`remove_checkpoint`
    (:func:`~elth_cli.train.session.save_result` does both). Inside a process group every rank calls
    this and gets the same trained weights; rank 0 saves it.
    """
    check_compatible(bundle.info, ticket.input_shape, ticket.num_classes)
    run = run_options(run, **options)
    if run.title == RunOptions.title:
        run = run.replace(title=f"{ticket.arch} on {bundle.info.name}")
    world_size = distributed.ranks()[1]
    result = train_state(ticket.build_model("init"), ticket.masks, bundle, cfg, ticket.rewind_step, run=run)
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    hparams = cfg.resolved(spe, ticket.rewind_step, world_size)
    config = run_config("train", hparams, bundle.device, result.setup)
    return trained_ticket(ticket, result.state, result.masks, hparams, result.metrics, config, bundle.info.name)
