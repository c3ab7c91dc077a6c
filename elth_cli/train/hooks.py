"""The standard hooks of a training run: divergence check, evaluation, snapshots, checkpoints, JSON lines,
TensorBoard event files, progress. :func:`standard_hooks` puts them in the order the loop needs (see :mod:`.loop`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch

from elth_cli.runtime import distributed
from elth_cli.errors import TENSORBOARD_MISSING, ElthError, UsageError
from elth_cli.flops import FLOPS_PER_MAC, forward_macs
from elth_cli.masks import kept_and_total
from elth_cli.train.checkpoint import cpu_state, save_checkpoint
from elth_cli.train.config import CHECKPOINT_EVERY_S
from elth_cli.train.loop import Hook, TrainLoop
from elth_cli.train.parts import evaluate


class Reporter(Protocol):
    """What the loop tells about its progress (report.TrainProgress implements it)."""

    def start(self, title: str, step: int, total: int, steps_per_epoch: int, batch_size: int,
              resumed: bool) -> None: ...

    def step(self, step: int, live: Callable[[], tuple[float, float]]) -> None: ...

    def epoch(self, record: dict[str, Any], epochs: int, total: int) -> None: ...

    def close(self) -> None: ...


class DivergenceCheck(Hook):
    """Stop with a clear error when the weights became NaN or infinite (one host read per epoch)."""

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        # The weights are the same on every rank (DDP), so every rank reaches the same verdict.
        if not bool(torch.stack([torch.isfinite(p).all() for p in loop.model.parameters()]).all()):
            raise ElthError(f"training diverged in epoch {record['epoch']} (weights became NaN or infinite; last lr "
                            f"{record['lr']:.4g}); lower --lr or lengthen --warmup")


class Evaluation(Hook):
    """Test accuracy and loss every ``cfg.eval_every`` epochs and after the last; tracks the best."""

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        cfg, ws = loop.cfg, loop.world_size
        if not (loop.step == loop.total or (cfg.eval_every and record["epoch"] % cfg.eval_every == 0)):
            return
        # Each rank evaluates eval_batch_size // world_size images at a time (the data needs a multiple).
        batch = max(ws, cfg.eval_batch_size // ws * ws)
        result = evaluate(loop.model, loop.bundle, "test", batch, cfg.precision, loop.rank, ws)
        record["test_loss"], record["test_acc"] = result["loss"], result["accuracy"]
        if "top5" in result:
            record["test_top5"] = result["top5"]
        if loop.state.best_test_acc is None or result["accuracy"] > loop.state.best_test_acc:
            loop.state.best_test_acc = result["accuracy"]


class Snapshots(Hook):
    """Keep the state after ``s`` steps for every ``s`` in ``steps`` (IMP's rewind point)."""

    def __init__(self, steps: Iterable[int]) -> None:
        self.steps = set(steps)

    def _take(self, loop: TrainLoop) -> None:
        if loop.step in self.steps and loop.step not in loop.state.snapshots:
            distributed.sync_buffers(loop.model)  # rank 0's running statistics, so every rank keeps the same
            loop.state.snapshots[loop.step] = cpu_state(loop.model)

    def on_run_start(self, loop: TrainLoop) -> None:
        self._take(loop)

    def on_step_end(self, loop: TrainLoop) -> None:
        self._take(loop)


class Checkpointing(Hook):
    """Write a checkpoint at the end of an epoch (with one process at most every ``every_s`` seconds;
    several ranks write one every epoch, since their clocks differ and every rank takes part in each
    write) and when a stop is requested (rank 0 writes). The last epoch writes none: the finished
    run's ticket is saved next, and its checkpoint deleted."""

    def __init__(self, path: Path, identity: dict[str, Any], every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.path, self.identity, self.every_s = Path(path), identity, every_s
        self.saved_at = -1
        self.last_save = 0.0

    def on_run_start(self, loop: TrainLoop) -> None:
        loop.checkpoint_path = self.path
        self.last_save = time.perf_counter()

    def save(self, loop: TrainLoop) -> None:
        if self.saved_at == loop.step:
            return
        loop.state.wall_seconds = loop.wall()
        stats = loop.epoch_stats()
        parts = loop.parts
        loop.state.extra_tensors.update(parts.masks.extra_state())  # beside what hooks keep there
        # Rank 0 writes; the others wait for it, and fail with it if the write fails.
        distributed.run_on_main(lambda: save_checkpoint(
            self.path, self.identity, parts.model, parts.optimizer, parts.scaler, stats, loop.state,
            loop.masks(), cuda_rng=loop.world_size == 1))
        self.saved_at, self.last_save = loop.step, time.perf_counter()

    def on_epoch_recorded(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        if loop.step >= loop.total or loop.ended_early:
            return
        if loop.world_size == 1 and time.perf_counter() - self.last_save < self.every_s:
            return
        self.save(loop)

    def on_stop(self, loop: TrainLoop) -> None:
        self.save(loop)


class FlopCount(Hook):
    """Training FLOPs, step by step, at the masks in force (``loop.state.flops``) and for a dense
    network (``loop.state.dense_flops``); see :mod:`elth_cli.flops` for the convention.

    A step costs its images x (forward + backward): backward is twice the forward at the layers'
    densities, or, where the mask set needs the weight gradient at every weight (DPF), the
    forward's sparse input gradient plus a dense weight gradient. Hooks that compute more (RigL's
    dense gradient at its updates) add their part to ``loop.state.flops`` themselves.
    """

    def __init__(self, macs: dict[str, int]) -> None:
        self.macs = macs
        self.dense_forward = FLOPS_PER_MAC * forward_macs(macs)
        self._version: int | None = None
        self.per_image = 0.0

    def _refresh(self, loop: TrainLoop) -> None:
        masks = loop.parts.masks
        sparse = FLOPS_PER_MAC * forward_macs(self.macs, masks.masks)
        grad = self.dense_forward if masks.dense_weight_grad else sparse
        self.per_image, self._version = 2 * sparse + grad, masks.version

    def on_step_end(self, loop: TrainLoop) -> None:
        if loop.parts.masks.version != self._version:
            self._refresh(loop)
        loop.state.flops += loop.step_images * self.per_image
        loop.state.dense_flops += loop.step_images * 3 * self.dense_forward


class JsonLines(Hook):
    """One JSON line per epoch; on a resumed run the file is rewritten from the checkpoint's history first."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_run_start(self, loop: TrainLoop) -> None:
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in loop.state.history)

    def on_epoch_recorded(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


class TensorBoard(Hook):
    """TensorBoard event files in ``log_dir``: each epoch record's numbers as scalars at ``global_step`` = the
    record's step (the optimizer steps of the whole run, so a ticket rewound to step r starts at r), tagged
    ``train/loss``, ``test/acc`` (a ``train_``/``test_`` prefix becomes a ``/`` group), ``lr``, ``epoch``,
    ``seconds``, ...; besides them ``sparsity`` (of the masks in force: DPF's moves) and ``train/flops`` (the run's
    training FLOPs so far). The run's resolved hyperparameters go once, as a text table (tag ``hparams``), at
    its start step.

    A resumed run opens its writer with ``purge_step`` = the checkpoint's step + 1: TensorBoard then hides what
    the stopped run wrote after its checkpoint (epochs a SIGKILL lost), so a stopped and resumed run reads the
    same scalars at the same steps as an uninterrupted one. A new run purges from its start step: an earlier
    try of it in the folder is hidden. Pass it on the process that writes (rank 0) only.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self._version: int | None = None
        self._sparsity = 0.0

    def on_run_start(self, loop: TrainLoop) -> None:
        try:  # imported here: the extra is optional, and a command's start-up must not pay for it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # RunOptions checked it is there; a broken installation still ends in one line
            raise UsageError(f"{TENSORBOARD_MISSING} ({e})") from None
        resumed = loop.resumed_from is not None
        # The checkpoint's own step is in the history (a stop at an epoch's end): keep it, purge what follows.
        purge = loop.step + 1 if resumed else loop.step
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        if not resumed:  # the first segment wrote them, at a step no purge reaches
            self.writer.add_text("hparams", _hparams_table(loop), global_step=loop.step)
        self.writer.flush()

    def _scalars(self, loop: TrainLoop, record: dict[str, Any]) -> dict[str, float]:
        if loop.parts.masks.version != self._version:  # counted once per mask change, not every epoch
            kept, total = kept_and_total(loop.masks())
            self._sparsity, self._version = (total - kept) / total if total else 0.0, loop.parts.masks.version
        values = {**record, "sparsity": self._sparsity, "train_flops": loop.state.flops}
        return {_tag(k): float(v) for k, v in values.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def on_epoch_recorded(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        for tag, value in self._scalars(loop, record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])
        self.writer.flush()  # once an epoch: a live TensorBoard sees it, and a kill loses nothing recorded

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes
            self.writer = None

    def on_stop(self, loop: TrainLoop) -> None:
        self._close()

    def on_run_end(self, loop: TrainLoop) -> None:
        self._close()


def _tag(key: str) -> str:
    """``train_loss`` -> ``train/loss`` (TensorBoard groups a tag's charts by what comes before its ``/``)."""
    for group in ("train", "test"):
        if key.startswith(group + "_"):
            return f"{group}/{key[len(group) + 1:]}"
    return key


def _hparams_table(loop: TrainLoop) -> str:
    """The run's resolved hyperparameters (what a trained ticket records) as a markdown table."""
    hparams = loop.cfg.resolved(loop.steps_per_epoch, loop.step, loop.world_size)
    rows = [f"| {k} | {json.dumps(v)} |" for k, v in sorted(hparams.items())]
    return "\n".join([f"**{loop.title}**", "", "| hyperparameter | value |", "|---|---|", *rows])


class Progress(Hook):
    """Hands the loop's progress to a :class:`Reporter` (a bar on a terminal, plain lines elsewhere)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_run_start(self, loop: TrainLoop) -> None:
        self.reporter.start(loop.title, loop.step, loop.total, loop.steps_per_epoch, loop.cfg.batch_size,
                            loop.resumed_from is not None)

    def on_step_end(self, loop: TrainLoop) -> None:
        self.reporter.step(loop.step, loop.parts.step.read_stats)

    def on_epoch_recorded(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        self.reporter.epoch(record, loop.cfg.epochs, loop.total)

    def on_run_end(self, loop: TrainLoop) -> None:
        self.reporter.close()


def standard_hooks(*, snapshot_steps: Iterable[int] = (), checkpoint: tuple[Path, dict[str, Any]] | None = None,
                   jsonl: Path | None = None, reporter: Reporter | None = None, extra: Iterable[Hook] = (),
                   macs: dict[str, int] | None = None, checkpoint_every_s: float = CHECKPOINT_EVERY_S,
                   log_dir: Path | None = None) -> list[Hook]:
    """The hooks of a run, in the order their events need: count FLOPs (with ``macs``, the layers'
    forward MACs), measure (divergence, evaluation, then the caller's ``extra`` hooks), then keep
    and report (snapshots, checkpoint, JSON lines, TensorBoard event files in ``log_dir``, progress).

    Pass ``jsonl``, ``log_dir`` and ``reporter`` on the process that writes (rank 0) only.
    """
    hooks: list[Hook] = [FlopCount(macs)] if macs is not None else []
    hooks += [DivergenceCheck(), Evaluation(), *extra]
    if snapshot_steps:
        hooks.append(Snapshots(snapshot_steps))
    if checkpoint is not None:
        hooks.append(Checkpointing(*checkpoint, every_s=checkpoint_every_s))
    if jsonl is not None:
        hooks.append(JsonLines(jsonl))
    if log_dir is not None:
        hooks.append(TensorBoard(log_dir))
    if reporter is not None:
        hooks.append(Progress(reporter))
    return hooks
