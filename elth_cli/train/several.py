"""Several tickets trained side by side: ``elth train T1 T2 ... --out-dir DIR --jobs N``.

Each ticket is one job on the worker pool (:mod:`elth_cli.runtime.pool`). It trains into
``DIR/<its file name>`` with its own checkpoint (``.ckpt``), progress log (``.log``) and epoch
records (``.jsonl``) beside the output, and its TensorBoard event files in ``--log-dir``'s sub-folder of
its file name, so outputs, logs and failures stay per ticket. Running the
same command again reuses every output that already is its ticket's finished training with these
options, resumes the checkpointed trainings and starts the rest.

Every ticket goes through :func:`elth_cli.train.job.train_file`, the path of ``elth train TICKET``, so
it gets exactly the tensors that command gives in one process with the worker's thread count (on
the CPU the result depends on it: the ticket records it).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO
from elth_cli.report import plural
from elth_cli.runtime.workers import Job, Worker
from elth_cli.train.checkpoint import checkpoint_path_for
from elth_cli.train.job import TrainJob, train_file


@dataclass(frozen=True)
class TrainItem:
    """One ticket file and where its training goes: the output, and beside it the checkpoint, the
    progress log and the JSON lines of its epochs."""

    source: str
    output: str

    @property
    def name(self) -> str:
        return Path(self.output).name

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path_for(self.output)

    @property
    def log(self) -> Path:
        return Path(self.output).with_name(self.name + ".log")

    @property
    def jsonl(self) -> Path:
        return Path(self.output).with_name(self.name + ".jsonl")

    def log_dir(self, root: Path | None) -> Path | None:
        """Its TensorBoard event files: ``--log-dir``'s sub-folder of its name (one run per folder, as
        TensorBoard lists runs), or none."""
        return None if root is None else Path(root) / self.name


def plan_items(sources: Sequence[str], out_dir: str | os.PathLike[str]) -> list[TrainItem]:
    """One item per ticket file, its output ``out_dir/<file name>``; refuse stdin, a missing folder,
    two tickets of one file name, and an output that is its own source."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file, not a folder; choose another path")
    items, seen = [], {}
    for source in sources:
        if source == STDIO:
            raise UsageError("'-' (stdin) has no file name to train into --out-dir; save the ticket to a file first")
        name = Path(source).name
        if name in seen:
            raise UsageError(f"{seen[name]} and {source} have the same file name; their outputs would collide in "
                             f"{out}: rename one")
        seen[name] = source
        output = out / name
        if output.exists() and Path(source).exists() and output.resolve() == Path(source).resolve():
            raise UsageError(f"{source} is in --out-dir {out}: its training would overwrite it; choose another "
                             "--out-dir")
        items.append(TrainItem(source, str(output)))
    return items


def check_request(job: TrainJob) -> None:
    """Refuse, before any job starts, what would fail every ticket the same way: an unknown data set,
    or an option value no recipe makes right (``--epochs 0``)."""
    from elth_cli.data import canonical_name
    from elth_cli.train.config import check_given_options

    if job.setup.data.dataset is not None:
        canonical_name(job.setup.data.dataset)
    # The device and precision are resolved by each worker's session (``auto``), not checked here.
    check_given_options(**{k: v for k, v in job.setup.overrides.items() if k not in ("device", "precision")})


def check_sources(items: Sequence[TrainItem]) -> None:
    """Before any worker starts: every ticket file is there (a missing one would fail only in its worker)."""
    for item in items:
        p = Path(item.source)
        if not p.exists():
            raise UsageError(f"input {p} does not exist")
        if p.is_dir():
            raise UsageError(f"input {p} is a folder, not a ticket file")


def make_out_dir(out_dir: str | os.PathLike[str]) -> None:
    """Create ``--out-dir`` (and its parents) before the first job writes into it, as find does."""
    from elth_cli.fileio import check_writable_folder

    check_writable_folder(out_dir, f"--out-dir {out_dir}", create=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)


def train_jobs(items: Sequence[TrainItem], job: TrainJob) -> list[Job]:
    """The pool's jobs: one :func:`train_item` per ticket, named by its file name; ``job`` holds what every
    ticket is trained with (its source, output and files are each item's)."""
    return [Job(item.name, train_item, {"item": item, "job": job}) for item in items]


def train_item(worker: Worker, item: TrainItem, job: TrainJob) -> dict[str, Any]:
    """A job: train ``item.source`` into ``item.output`` on the worker's device (its checkpoint, log and JSON
    lines beside the output), through :func:`~elth_cli.train.job.train_file`; an output that already is this
    training is reused."""
    from elth_cli.report import TrainProgress

    with open(item.log, "a") as log:
        log.write(f"elth train {item.source} -> {item.output} on {worker.device}"
                  f"{', ' + plural(worker.slot.threads, 'thread') if worker.slot.threads else ''}, "
                  f"{_dt.datetime.now().isoformat(timespec='seconds')}\n")
        log.flush()
        # The worker's own signal handlers set its stop flag: the training must not install others.
        run = job.run.replace(log=TrainProgress(stream=log), stop=worker.stop, handle_signals=False,
                              log_dir=item.log_dir(job.run.log_dir))
        mine = job.replace(source=item.source, output=item.output, checkpoint=item.checkpoint, jsonl=item.jsonl,
                           setup=job.setup.replace(device=worker.device), run=run)
        try:
            result = train_file(mine)
        except Exception as e:  # the log says how its training ended, too
            log.write(f"error: {e}\n")
            raise
    return _summary(item, result.ticket, result.sha256, worker, reused=result.reused)


def _summary(item: TrainItem, trained: Any, sha: str | None, worker: Worker, reused: bool) -> dict[str, Any]:
    m = trained.metrics or {}
    env = (trained.config or {}).get("environment", {})
    return {"ticket": item.source, "output": item.output, "sha256": sha, "arch": trained.arch,
            "sparsity": trained.sparsity, "test_acc": m.get("test_acc"), "steps": m.get("steps"),
            "wall_time_s": m.get("wall_time_s"), "device": m.get("device"), "cpu_threads": env.get("cpu_threads"),
            "reused": reused, "log": str(item.log)}
