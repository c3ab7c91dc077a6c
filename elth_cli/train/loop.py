"""The training loop: steps through the epochs and tells its hooks what happens.

Events, in order (each hook's method is a no-op unless it overrides it):

* ``on_run_start(loop)``: before the first step of this segment (a resumed run starts mid-way);
* ``on_step_end(loop)``: after every optimizer step (``loop.step`` already counts it);
* ``on_epoch_end(loop, record)``: the epoch's training statistics are in ``record``; hooks that
  measure add fields to it (evaluation, mask distances), check the weights, change masks, or end
  the run after this epoch (:meth:`TrainLoop.end_early`);
* ``on_epoch_recorded(loop, record)``: the record is final and in the history; hooks that persist
  or report act (checkpoint, JSON lines, progress line);
* ``on_stop(loop)``: a stop was requested (signal, or ``stop_at_step``); the loop then raises
  :class:`~elth_cli.runtime.signals.TrainingStopped`;
* ``on_run_end(loop)``: always, also after a failure (``loop.finished`` tells which).

A hook may change the masks during training through :meth:`TrainLoop.set_masks` (dynamic sparse
training rewires them every few hundred steps); the rewired weights start from zero with no
optimizer state (:meth:`~elth_cli.train.parts.MaskSet.update`), and checkpoints record the masks
in force, so a stopped run resumes with them. Hooks draw any randomness from the step number or
torch's generator, which checkpoints restore.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from elth_cli.runtime import distributed
from elth_cli.data import DataBundle
from elth_cli.runtime.device import synchronize
from elth_cli.train.checkpoint import EpochStats, RunState
from elth_cli.train.config import TrainConfig
from elth_cli.train.schedule import Schedule
from elth_cli.runtime.signals import StopFlag, stopped_error
from elth_cli.train.parts import TrainParts


class Hook:
    """Something that acts on the loop's events; subclass and override the events you need."""

    def on_run_start(self, loop: TrainLoop) -> None:
        """Before the segment's first step."""

    def on_step_end(self, loop: TrainLoop) -> None:
        """After every optimizer step (the hot path: keep it free of host syncs)."""

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        """At the end of an epoch: measure, add fields to ``record``, change masks."""

    def on_epoch_recorded(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        """After the epoch's record is final and in ``loop.state.history``: persist, report."""

    def on_stop(self, loop: TrainLoop) -> None:
        """A stop was requested; the loop raises TrainingStopped after every hook has run."""

    def on_run_end(self, loop: TrainLoop) -> None:
        """Always last, after success or failure."""


class StopCheck:
    """Whether to stop before a step: the local flag for one process, an agreement among several.

    With several processes the ranks all-reduce (MAX) their signal numbers at the segment's first
    step, every ``distributed.STOP_CHECK_EVERY`` steps after it and at every epoch end, so they stop
    at the same step; a stop is therefore noticed within that many steps. One process looks at its
    flag before every step (no collective, no sync).
    """

    def __init__(self, flag: StopFlag, world_size: int, device: torch.device, first_step: int) -> None:
        self.flag, self.world_size, self.device, self.first = flag, world_size, device, first_step
        self.agreed_at: int | None = None
        self.agreed = 0

    def before_step(self, step: int) -> bool:
        if self.world_size == 1:
            return self.flag.requested
        if (step - self.first) % distributed.STOP_CHECK_EVERY:
            return False
        return self._agree(step)

    def at_epoch_end(self, step: int) -> bool:
        return self.flag.requested if self.world_size == 1 else self._agree(step)

    def _agree(self, step: int) -> bool:
        if self.agreed_at != step:  # once per step: the epoch end and the next epoch's start share one
            self.agreed_at, self.agreed = step, distributed.agree_on_stop(self.flag.signum, self.device)
            if self.agreed:
                # Every rank names the same signal (the largest number), so all exit with one status.
                self.flag.request(self.agreed)
        return self.agreed != 0


def _overrides(hook: Hook, event: str) -> bool:
    return getattr(type(hook), event) is not getattr(Hook, event)


class TrainLoop:
    """Runs a run's remaining steps with its :class:`TrainParts` on ``bundle``, calling ``hooks``.

    ``state`` is the resumable state (step, history, timings, snapshots); a checkpoint restores
    it. With ``world_size`` > 1 every rank runs the same loop on its shard of each global batch.
    """

    def __init__(self, parts: TrainParts, bundle: DataBundle, cfg: TrainConfig, state: RunState,
                 hooks: Iterable[Hook], flag: StopFlag, *, stop_at_step: int | None = None, rank: int = 0,
                 world_size: int = 1, title: str = "training", resumed_from: int | None = None) -> None:
        self.parts, self.bundle, self.cfg, self.state = parts, bundle, cfg, state
        self.hooks = list(hooks)
        self.rank, self.world_size, self.title = rank, world_size, title
        self.steps_per_epoch = bundle.steps_per_epoch(cfg.batch_size, world_size)
        self.total = cfg.total_steps(self.steps_per_epoch)
        self.schedule = Schedule.of(cfg, self.steps_per_epoch)
        self.flag, self.stop_at_step, self.resumed_from = flag, stop_at_step, resumed_from
        self.stop_check = StopCheck(flag, world_size, bundle.device, state.step)
        self.checkpoint_path: Path | None = None  # set by the checkpoint hook: where a stop leaves its state
        self.finished = False
        self.ended_early = False  # a hook ended the run before the recipe's last step (end_early)
        self.step_images = 0  # images of the last step, over every rank (FLOPs accounting reads it)
        self._step_hooks = [h for h in self.hooks if _overrides(h, "on_step_end")]
        self._warm_shapes: set[tuple[int, ...]] = set()
        self._wall_base, self._segment_start = state.wall_seconds, time.perf_counter()

    # ----- what hooks read and change ---------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.parts.model

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def device(self) -> torch.device:
        return self.bundle.device

    def masks(self) -> dict[str, Tensor]:
        """The masks in force (CPU bool tensors)."""
        return self.parts.masks.masks

    def set_masks(self, masks: Mapping[str, Tensor]) -> int:
        """Rewire masks mid-training (see :meth:`MaskSet.update`); every rank must pass the same masks."""
        return self.parts.masks.update(masks, self.parts.optimizer)

    def end_early(self) -> None:
        """End the run, successfully, after the current epoch (a hook has what it trained for: early-bird).

        Called in ``on_run_start`` it ends the run before any step (a resumed run that had finished).
        """
        self.ended_early = True

    def wall(self) -> float:
        """Seconds of this run so far, over every segment of a resumed run."""
        return self._wall_base + time.perf_counter() - self._segment_start

    def epoch_stats(self) -> EpochStats:
        """The epoch's running statistics so far, summed over the ranks (one all-reduce with several)."""
        stats = self.parts.step.stats
        if self.world_size == 1:
            return stats
        sums = torch.stack([stats.loss_sum, stats.correct.double(),
                            torch.tensor(float(stats.seen), dtype=torch.float64, device=self.device)])
        distributed.all_reduce_sum_(sums)
        return EpochStats(sums[0], sums[1].long(), int(sums[2].item()))

    # ----- running --------------------------------------------------------------------------
    def run(self) -> RunState:
        """Train to the recipe's last step; raises TrainingStopped when a stop is requested."""
        self._wall_base, self._segment_start = self.state.wall_seconds, time.perf_counter()
        self.model.train()
        try:
            self._emit("on_run_start")
            while self.state.step < self.total and not self.ended_early:
                self._run_epoch()
            self.state.wall_seconds = self.wall()
            self.finished = True
        finally:
            self._emit("on_run_end")
        return self.state

    def _emit(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def _stop(self) -> None:
        self._emit("on_stop")
        where = (f"step {self.step}/{self.total} (epoch {self.step // self.steps_per_epoch + 1}/"
                 f"{self.cfg.epochs})")
        raise stopped_error(self.flag.signum, where, self.checkpoint_path, self.step, self.stop_at_step)

    def _run_epoch(self) -> None:
        epoch, batch = divmod(self.state.step, self.steps_per_epoch)
        if batch == 0:
            self.parts.step.reset_stats()
        epoch_start = time.perf_counter()
        train_time, timed_images, mark = self._train_batches(epoch, batch)
        stats = self.epoch_stats()
        if self.world_size > 1:
            distributed.sync_buffers(self.model)
        loss, acc = _means(stats)  # the epoch's one read from the device: it waits for the last steps
        train_time += time.perf_counter() - mark
        done = self.state.step == self.total
        if done:
            self.parts.masks.clean()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step, "lr": self.schedule(self.state.step - 1),
                                  "train_loss": loss, "train_acc": acc, "test_loss": None, "test_acc": None}
        self._emit("on_epoch_end", record)
        if self.ended_early and not done:
            self.parts.masks.clean()
        images = timed_images * self.world_size  # every rank trained as many images as this one
        record["images_per_s"] = round(images / train_time, 1) if train_time > 0 and timed_images else None
        record["seconds"] = round(time.perf_counter() - epoch_start, 3)
        self.state.train_seconds += train_time if timed_images else 0.0
        self.state.train_images += timed_images
        self.state.history.append(record)
        self._emit("on_epoch_recorded", record)
        if not done and not self.ended_early and self.stop_check.at_epoch_end(self.state.step):
            self._stop()

    def _train_batches(self, epoch: int, batch: int) -> tuple[float, int, float]:
        """The epoch's steps from ``batch`` on; returns (timed seconds, timed images, start of the
        segment still being timed: the caller closes it after reading the epoch's statistics).

        The first step at each batch shape of a segment (compilation, cuDNN autotuning) is
        warm-up: left out of images/s, and bracketed by syncs, the only ones inside an epoch.
        """
        cfg, state, step_fn, device = self.cfg, self.state, self.parts.step, self.device
        train_time, timed_images, mark = 0.0, 0, time.perf_counter()
        for index, (x, y) in enumerate(self.bundle.train_batches(
                cfg.batch_size, epoch, cfg.seed, start_batch=batch, rank=self.rank, world_size=self.world_size,
                augment=cfg.augment), start=batch):
            if state.step == self.stop_at_step or self.stop_check.before_step(state.step):
                self._stop()
            warmup = tuple(x.shape) not in self._warm_shapes
            if warmup:
                synchronize(device)
                train_time += time.perf_counter() - mark
            step_fn(x, y, self.schedule(state.step))
            state.step += 1
            self.step_images = self.bundle.step_images(cfg.batch_size, index, self.world_size)
            if warmup:
                synchronize(device)
                self._warm_shapes.add(tuple(x.shape))
                mark = time.perf_counter()
            else:
                timed_images += y.shape[0]
            for hook in self._step_hooks:
                hook.on_step_end(self)
        return train_time, timed_images, mark


def _means(stats: EpochStats) -> tuple[float, float]:
    """(mean loss, accuracy) from running sums: the one host read of an epoch."""
    if stats.seen == 0:
        return float("nan"), float("nan")
    loss_sum, correct = torch.stack([stats.loss_sum, stats.correct.double()]).tolist()
    return loss_sum / stats.seen, correct / stats.seen
