"""One set-up for every command that trains (``train``, ``find --method imp``, ``demo``).

:func:`training_session` detects the launch (one process, torchrun or srun), resolves the device
and precision, and joins the other ranks; the :class:`Session` it yields then resolves the recipe
and loads the data (:meth:`Session.prepare`), trains, and saves results the one safe way
(:func:`save_result`: write the ticket atomically, then drop the checkpoint that led to it).
With several processes, rank 0 makes every decision that touches files and hands the outcome to
the others (:meth:`Session.on_main`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch

from elth_cli import data, stops
from elth_cli.runtime import distributed
from elth_cli.runtime.device import device_setup, resolve_device, resolve_precision
from elth_cli.errors import UsageError
from elth_cli.report import warn_once
from elth_cli.fileio import STDIO, WriterLock
from elth_cli.ticket import Ticket
from elth_cli.train.checkpoint import remove_checkpoint
from elth_cli.train.config import TrainConfig, check_run_length, config_from_options, schedule_problems

if TYPE_CHECKING:
    from elth_cli.archs import ArchSpec

T = TypeVar("T")


def save_result(ticket: Ticket, path: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None,
                force: bool = False) -> str:
    """Write a finished run's ticket (atomically), then delete its checkpoint; return the file's sha256.

    In this order a crash at any moment leaves either the checkpoint (re-running resumes) or the
    finished ticket, never neither; a stop signal waits for both (:func:`elth_cli.stops.held`).
    """
    with stops.held():
        sha = ticket.save(path, force=force)
        remove_checkpoint(checkpoint)
    return sha


class Session:
    """A training command's processes (``runtime``: rank, world size, whether this is rank 0) and device,
    set up once; :meth:`prepare` adds recipe and data."""

    def __init__(self, runtime: distributed.Runtime, precision: str) -> None:
        self.runtime = runtime
        self.device: torch.device = runtime.device
        self.precision = precision

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only (checks of files, writes); every rank gets its result or its error."""
        return distributed.run_on_main(fn)

    def _config_device(self) -> str:
        # With several processes each rank is on its own cuda:LOCAL_RANK, and the ranks' configs must
        # be equal: record the device's kind.
        return self.device.type if self.runtime.world_size > 1 else str(self.device)

    def _fetch_once(self, name: str, data_dir: str | None, download: bool) -> bool:
        """With several processes rank 0 downloads a missing data set first; the others then only read it."""
        if not download or self.runtime.world_size == 1:
            return download
        self.on_main(lambda: data.load_dataset(name, data_dir, download=True) and None)
        return False

    def prepare(self, spec: ArchSpec, dataset: str, *, data_dir: str | os.PathLike[str] | None = None,
                download: bool = False, workers: int | None = None, ticket: Ticket | None = None,
                **overrides: Any) -> tuple[TrainConfig, data.DataBundle]:
        """The resolved recipe (the family's, with ``overrides`` by field name) and the data, on every rank.

        ``ticket``: check that its input shape and classes fit the data set first. A failure on
        any rank stops every rank with the same error.
        """
        data_dir = str(data_dir) if data_dir is not None else None
        fetch = self._fetch_once(data.canonical_name(dataset), data_dir, download)
        with distributed.agree_on_errors():  # local work on every rank; one failure stops them all
            info = data.get_dataset_info(dataset, data_dir)
            overrides.update(device=self._config_device(), precision=self.precision)
            cfg = config_from_options(spec, info, **overrides)
            if ticket is not None:  # as the network sees the data: resized where --resize asks
                data.check_compatible(data.resized(info, cfg.resize), ticket.input_shape, ticket.num_classes)
            if cfg.sync_bn and self.runtime.world_size > 1 and self.device.type != "cuda":
                raise UsageError("--sync-bn needs CUDA GPUs: SyncBatchNorm does not run on the CPU (gloo); "
                                 "drop --sync-bn")
            # The data carries the device's choices; training reads them from it.
            setup = device_setup(self.device, cfg.precision, cfg.deterministic)
            bundle = data.load_dataset(info.name, data_dir, download=fetch, device=setup, num_workers=workers)
            bundle.set_resize(cfg.resize)
            spe = bundle.steps_per_epoch(cfg.batch_size, self.runtime.world_size)  # the global batch fits the world size and data
            self._check_schedule(cfg, spe, overrides)
        return cfg, bundle

    def _check_schedule(self, cfg: TrainConfig, steps_per_epoch: int, overrides: dict[str, Any]) -> None:
        """A run too long to be meant, milestones out of order, and a warm-up or milestone that would never
        take effect: an error when the command line asked for it, a warning when it is the recipe's (a
        short run of a long recipe)."""
        check_run_length(cfg, steps_per_epoch)
        for name, problem in schedule_problems(cfg, steps_per_epoch, given=overrides).items():
            if name in overrides:
                raise UsageError(problem)
            if self.runtime.is_main:
                warn_once(problem)

    def exclusive(self, target: str | os.PathLike[str] | None, what: str) -> contextlib.AbstractContextManager:
        """Hold the one-writer lock of ``target`` (the file a run writes; ``TARGET.lock`` beside it) on rank 0
        for the block: a second job writing the same target is refused. ``None``: nothing to lock."""
        if target is None or str(target) == STDIO:
            return contextlib.nullcontext()
        target = Path(target)
        return distributed.held_on_main(WriterLock(target.with_name(target.name + ".lock"), what))

    def save(self, ticket: Ticket, path: str | os.PathLike[str], checkpoint: Path | None, force: bool = False) -> str:
        """:func:`save_result` on rank 0; every rank gets the sha256 (or the error)."""
        return self.on_main(lambda: save_result(ticket, path, checkpoint, force))


@contextlib.contextmanager
def training_session(device: str = "auto", precision: str = "auto", dist_timeout: float = distributed.DEFAULT_TIMEOUT_S,
                     launch: distributed.Launch | None = None) -> Iterator[Session]:
    """Resolve the device and precision of this process (its own GPU among several) and join the other
    ranks for the duration of a command; leave the process group afterwards, whatever happens."""
    launch = launch if launch is not None else distributed.detect_launch()
    dev = resolve_device(device, launch)
    prec = resolve_precision(precision, dev)
    with distributed.session(launch, dev, dist_timeout) as runtime:
        yield Session(runtime, prec)
