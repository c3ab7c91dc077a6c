"""One training job: a ticket trained into an output file, the one path of ``elth train``, of every
ticket of ``elth train --out-dir`` and of the demo's trainings.

:func:`train_file` does, in this order, what each of them needs: check every path it will write
(before any lock or work), take the one-writer locks of the output and the checkpoint, read the
ticket and decide its data set (:func:`dataset_for`; a new classifier with ``new_head``), resolve
the recipe and load the data, keep an output that already is this training (a re-run of a finished
command), else train (resuming a checkpoint of the same run) and save the ticket, then drop the
checkpoint. The data-set rule and ``--new-head`` live here, once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import STDIO, check_distinct, check_output_path, check_side_file, is_epoch_log
from elth_cli.ticket import Ticket
from elth_cli.train.config import TrainConfig
from elth_cli.train.options import RunOptions, check_log_dir

DEFAULT_DIST_TIMEOUT_S = 300.0  # several processes: seconds a rank waits for the others


@dataclass(frozen=True)
class DataOptions:
    """Where a job's data comes from: the data set (None: the one the ticket records), its folder, whether
    to download it, and the loader workers of folder data sets."""

    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    workers: int | None = None


@dataclass(frozen=True)
class Setup:
    """Where and with what a command trains: its data, the recipe's overrides (TrainConfig fields by name),
    the device and precision (``auto``: CUDA and bf16 where available), and how long ranks wait for each
    other. Every command that trains (train, find's training methods, the demo) opens its session from it."""

    data: DataOptions = DataOptions()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    dist_timeout: float = DEFAULT_DIST_TIMEOUT_S

    def session(self) -> Any:
        """The training session (:func:`~elth_cli.train.session.training_session`) of this set-up."""
        from elth_cli.train.session import training_session

        return training_session(self.device, self.precision, self.dist_timeout)

    def prepare(self, session: Any, spec: Any, dataset: str, ticket: Ticket | None = None) -> tuple[TrainConfig, Any]:
        """The resolved recipe and the loaded data, on every rank (:meth:`Session.prepare`)."""
        return session.prepare(spec, dataset, data_dir=self.data.data_dir, download=self.data.download,
                               workers=self.data.workers, ticket=ticket, **self.overrides)

    def replace(self, **changes: Any) -> "Setup":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainJob:
    """A ticket (a file, ``-`` for stdin, or one in memory) to train into ``output`` (``-``: stdout).

    ``checkpoint`` and ``jsonl`` are its resumable checkpoint and epoch log (None: none); ``setup``
    its data, recipe overrides and device; ``new_head`` gives the ticket a classifier for the data
    set's classes; ``run`` says how the training runs (:class:`~elth_cli.train.options.RunOptions`:
    checkpoint interval, resume, log, stops, hooks); ``force`` overwrites an output that is
    something else.
    """

    source: str | Ticket
    output: str
    checkpoint: Path | None = None
    jsonl: Path | None = None
    setup: Setup = Setup()
    new_head: bool = False
    run: RunOptions = RunOptions()
    force: bool = False

    def replace(self, **changes: Any) -> "TrainJob":
        return dataclasses.replace(self, **changes)


@dataclass
class JobResult:
    """What a job made: the trained ticket, its file's sha256, whether it was already there (``reused``),
    and the recipe it trained with."""

    ticket: Ticket
    sha256: str | None
    reused: bool
    cfg: TrainConfig


def check_job_paths(job: TrainJob) -> None:
    """Before any lock or work: every file has one role (``-o X --checkpoint X`` would delete the result with
    the checkpoint; a checkpoint or log must not be the ticket), and every folder it writes is writable."""
    source = job.source if isinstance(job.source, str) else None
    check_distinct({"-o": job.output, "--checkpoint": job.checkpoint, "--log-jsonl": job.jsonl})
    for role, path in (("--checkpoint", job.checkpoint), ("--log-jsonl", job.jsonl)):
        check_distinct({"the ticket": source, role: path})
    check_output_path(job.output, force=True)
    for role, path in (("checkpoint", job.checkpoint), ("--log-jsonl", job.jsonl)):
        if path is not None:
            check_side_file(path, role)
    if job.run.log_dir is not None:
        check_log_dir(job.run.log_dir)


def dataset_for(ticket: Ticket, dataset: str | None, where: str = "the ticket") -> str:
    """The data set a ticket trains on: the one asked for, else the one it records."""
    name = dataset or ticket.dataset
    if not name:
        raise UsageError(f"{where} records no data set; pass --dataset")
    return name


def train_file(job: TrainJob) -> JobResult:
    """Run ``job`` (see the module's docstring); with several processes every rank calls it and rank 0
    alone reads the ticket's file and writes. A stop raises
    :class:`~elth_cli.runtime.signals.TrainingStopped` with the checkpoint written."""
    from elth_cli.train.run import train_ticket

    check_job_paths(job)
    setup = job.setup
    with setup.session() as session, session.exclusive(job.output, f"the training of {job.output}"), \
            session.exclusive(job.checkpoint, f"the checkpoint {job.checkpoint}"):
        ticket = session.on_main(lambda: _read_inputs(job))
        dataset = dataset_for(ticket, setup.data.dataset, _source_name(job))
        if job.new_head:
            from elth_cli.transfer import new_head_for

            ticket = new_head_for(ticket, dataset, setup.data.data_dir, int(setup.overrides.get("seed", 0)))
        cfg, bundle = setup.prepare(session, ticket.spec, dataset, ticket)
        ws = session.runtime.world_size
        hparams = cfg.resolved(bundle.steps_per_epoch(cfg.batch_size, ws), ticket.rewind_step, ws)
        finished = session.on_main(lambda: _finished_output(job, ticket, hparams))
        if finished is not None:  # a re-run of a finished command (a requeued job): nothing to do but
            session.on_main(lambda: _drop_own_checkpoint(job.checkpoint, cfg, ticket.rewind_step))  # tidy up
            return JobResult(finished, finished.sha256, True, cfg)
        run = job.run.replace(checkpoint_path=job.checkpoint, jsonl_path=job.jsonl)
        trained = train_ticket(ticket, bundle, cfg, run=run)
        sha = session.save(trained, job.output, job.checkpoint, force=True)
    return JobResult(trained, sha, False, cfg)


def _source_name(job: TrainJob) -> str:
    return "stdin" if job.source == STDIO else str(job.source) if isinstance(job.source, str) else "the ticket"


def _read_inputs(job: TrainJob) -> Ticket:
    """What rank 0 checks before any work: the checkpoint path, the epoch log, ``--resume``, an output that is
    not a ticket; then the ticket."""
    from elth_cli.container import peek_format
    from elth_cli.ticket import FORMAT as TICKET_FORMAT
    from elth_cli.train.checkpoint import check_checkpoint_path

    out, ckpt, log = job.output, job.checkpoint, job.jsonl
    if out != STDIO and Path(out).exists() and not job.force and peek_format(out) != TICKET_FORMAT:
        raise UsageError(f"output {out} already exists and is not an elth ticket; pass --force to overwrite it "
                         "or choose another path")
    check_checkpoint_path(ckpt)
    if job.run.resume == "require" and (ckpt is None or not Path(ckpt).exists()):
        raise UsageError(f"--resume given but there is no checkpoint {ckpt}; drop --resume to start a new run")
    resuming = ckpt is not None and Path(ckpt).exists() and job.run.resume != "never"
    if log is not None and Path(log).exists() and not (job.force or resuming or is_epoch_log(log)):
        # A new run rewrites its own epoch log from the start (a requeue after a kill before the first
        # checkpoint); anything else there would be lost.
        raise UsageError(f"--log-jsonl {log} already exists and is not an elth epoch log; pass --force to "
                         "overwrite it or choose another file")
    return job.source if isinstance(job.source, Ticket) else Ticket.load(job.source)


def _drop_own_checkpoint(path: Path | None, cfg: TrainConfig, start_step: int) -> None:
    """A checkpoint left beside a finished output (a kill between the save and its removal) is removed when it
    is this run's (its recipe and start); another run's checkpoint is never touched."""
    from elth_cli.train.checkpoint import read_checkpoint, remove_checkpoint
    from elth_cli.train.identity import run_differences

    if path is None or not Path(path).exists():
        return
    try:
        identity = read_checkpoint(Path(path)).identity
    except ElthError:
        return  # damaged or foreign: not ours to judge
    if identity.get("start_step") == start_step and not run_differences({"config": identity.get("config", {})},
                                                                       {"config": cfg.as_dict()}):
        remove_checkpoint(path)


def _finished_output(job: TrainJob, ticket: Ticket, hparams: dict[str, Any]) -> Ticket | None:
    """The existing output when it already is this training; one that is something else is refused unless
    ``force``."""
    if job.output == STDIO or job.force or not Path(job.output).exists():
        return None
    return reusable_output(job.output, ticket, hparams, "pass --force to overwrite it or choose another path")


def reusable_output(output: str | os.PathLike[str], ticket: Ticket, hparams: Mapping[str, Any], advice: str) -> Ticket:
    """The existing ``output``, read, when it is exactly the training of ``ticket`` with ``hparams``; anything
    else there (another training, a file that is no ticket) is refused with ``advice``."""
    try:
        existing = Ticket.load(output)
    except ElthError as e:
        raise UsageError(f"{output} exists and is not a readable ticket ({e}); {advice}") from None
    diff = training_differences(existing, ticket, hparams)
    if not diff:
        return existing
    raise UsageError(f"{output} exists and is not this training (differs in: {'; '.join(diff)}); {advice}")


def _normalised(hparams: Mapping[str, Any]) -> dict[str, Any]:
    # The same training on another GPU of the node is the same run: compare the device's kind.
    d = {k: v for k, v in hparams.items() if k != "ticket_hparams"}
    if isinstance(d.get("device"), str):
        d["device"] = d["device"].split(":")[0]
    return d


def training_differences(existing: Ticket, source: Ticket, hparams: Mapping[str, Any]) -> list[str]:
    """How ``existing`` (a ticket file's content) differs from training ``source`` with ``hparams``; empty
    when it is exactly that training, finished."""
    import torch

    from elth_cli.train.identity import run_differences

    if not existing.is_trained:
        return ["it is not a trained ticket"]
    same_start = (existing.arch == source.arch and set(existing.masks) == set(source.masks)
                  and all(torch.equal(existing.masks[k], source.masks[k]) for k in source.masks)
                  and all(torch.equal(existing.init[k], source.init[k]) for k in source.init))
    diff = [] if same_start else ["the ticket (its masks or init weights)"]
    return diff + run_differences({"config": _normalised(existing.hparams or {})}, {"config": _normalised(hparams)})
