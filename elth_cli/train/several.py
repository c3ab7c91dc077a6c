"""Several tickets trained side by side: ``elth train T1 T2 ... --out-dir DIR --jobs N``.

Each ticket is one job on the worker pool (:mod:`elth_cli.runtime.pool`). It trains into
``DIR/<its file name>`` with its own checkpoint (``.ckpt``), progress log (``.log``) and epoch
records (``.jsonl``) beside the output, so outputs, logs and failures stay per ticket. Running the
same command again reuses every output that already is its ticket's finished training with these
options, resumes the checkpointed trainings and starts the rest.

A ticket trained here gets exactly the tensors ``elth train TICKET`` gives in one process with the
worker's thread count (on the CPU the result depends on it: the ticket records it).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO
from elth_cli.runtime.pool import Job, Worker
from elth_cli.train.checkpoint import checkpoint_path_for
from elth_cli.train.config import CHECKPOINT_EVERY_S


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


@dataclass(frozen=True)
class TrainRequest:
    """What every ticket of one command is trained with: the data set (None: the one each ticket
    records), the config overrides by field name, precision, data options, --force, --restart and
    --checkpoint-every."""

    dataset: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    data_dir: str | None = None
    download: bool = False
    loader_workers: int | None = None
    force: bool = False
    restart: bool = False
    checkpoint_every_s: float = CHECKPOINT_EVERY_S
    allow_empty_layers: bool = False
    new_head: bool = False  # a classifier for the data set's classes (elth_cli.transfer.new_head)


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


def check_request(request: TrainRequest) -> None:
    """Refuse, before any job starts, what would fail every ticket the same way: an unknown data set,
    or an option value no recipe makes right (``--epochs 0``)."""
    from elth_cli.data import canonical_name
    from elth_cli.train.config import check_given_options

    if request.dataset is not None:
        canonical_name(request.dataset)
    # The device and precision are resolved by each worker's session (``auto``), not checked here.
    check_given_options(**{k: v for k, v in request.overrides.items() if k not in ("device", "precision")})


def make_out_dir(out_dir: str | os.PathLike[str]) -> None:
    """Create ``--out-dir`` (and its parents) before the first job writes into it, as find does."""
    from elth_cli.fileio import check_writable_folder

    check_writable_folder(out_dir, f"--out-dir {out_dir}", create=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)


def train_jobs(items: Sequence[TrainItem], request: TrainRequest) -> list[Job]:
    """The pool's jobs: one :func:`train_item` per ticket, named by its file name."""
    return [Job(item.name, train_item, {"item": item, "request": request}) for item in items]


def _normalised(hparams: Mapping[str, Any]) -> dict[str, Any]:
    # The same training on another GPU of the node is the same run: compare the device's kind.
    d = {k: v for k, v in hparams.items() if k != "ticket_hparams"}
    if isinstance(d.get("device"), str):
        d["device"] = d["device"].split(":")[0]
    return d


def training_differences(existing: Any, source: Any, hparams: Mapping[str, Any]) -> list[str]:
    """How ``existing`` (a ticket file's content) differs from training ``source`` with ``hparams``;
    empty when it is exactly that training, finished."""
    import torch

    from elth_cli.train.identity import run_differences

    if not existing.is_trained:
        return ["it is not a trained ticket"]
    same_start = (existing.arch == source.arch and set(existing.masks) == set(source.masks)
                  and all(torch.equal(existing.masks[k], source.masks[k]) for k in source.masks)
                  and all(torch.equal(existing.init[k], source.init[k]) for k in source.init))
    diff = [] if same_start else ["the ticket (its masks or init weights)"]
    return diff + run_differences({"config": _normalised(existing.hparams or {})}, {"config": _normalised(hparams)})


def train_item(worker: Worker, item: TrainItem, request: TrainRequest) -> dict[str, Any]:
    """A job: train ``item.source`` into ``item.output`` on the worker's device (its checkpoint,
    log and JSON lines beside the output); reuse an output that already is this training."""
    from elth_cli.report import TrainProgress
    from elth_cli.ticket import Ticket
    from elth_cli.train.session import training_session

    from elth_cli.train.checkpoint import check_checkpoint_path

    with training_session(worker.device, request.precision) as session, \
            session.exclusive(item.output, f"the training of {item.output}"):
        check_checkpoint_path(item.checkpoint)  # never overwrite or delete a file that is not its checkpoint
        ticket = Ticket.load(item.source)
        dataset = request.dataset or ticket.dataset
        if not dataset:
            raise UsageError(f"{item.source} records no data set; pass --dataset")
        if request.new_head:
            from elth_cli.transfer import new_head_for

            ticket = new_head_for(ticket, dataset, request.data_dir, int(request.overrides.get("seed", 0)))
        cfg, bundle = session.prepare(ticket.spec, dataset, data_dir=request.data_dir, download=request.download,
                                      workers=request.loader_workers, ticket=ticket, **request.overrides)
        reused = _reusable(item, ticket, cfg.resolved(bundle.steps_per_epoch(cfg.batch_size), ticket.rewind_step),
                           request.force)
        if reused is not None:
            return _summary(item, reused, reused.sha256, worker, reused=True)
        with open(item.log, "a") as log:
            log.write(f"elth train {item.source} -> {item.output} on {worker.device}"
                      f"{f', {worker.slot.threads} threads' if worker.slot.threads else ''}, "
                      f"{_dt.datetime.now().isoformat(timespec='seconds')}\n")
            log.flush()
            try:
                trained = session.train_ticket(
                    ticket, bundle, cfg, checkpoint_path=item.checkpoint, resume="never" if request.restart else "auto",
                    log=TrainProgress(stream=log), jsonl_path=item.jsonl, checkpoint_every_s=request.checkpoint_every_s,
                    allow_empty_layers=request.allow_empty_layers, **worker.train_options())
            except Exception as e:  # the log says how its training ended, too
                log.write(f"error: {e}\n")
                raise
        sha = session.save(trained, item.output, item.checkpoint, force=True)
    return _summary(item, trained, sha, worker, reused=False)


def _reusable(item: TrainItem, ticket: Any, hparams: dict[str, Any], force: bool) -> Any:
    """The output, when it already is this training (and --force is not given); an output that is
    something else is refused unless --force."""
    if force or not Path(item.output).exists():
        return None
    return reusable_output(item.output, ticket, hparams, "pass --force to train it again, or choose another --out-dir")


def reusable_output(output: str, ticket: Any, hparams: dict[str, Any], advice: str) -> Any:
    """The existing ``output``, read, when it is exactly the training of ``ticket`` with ``hparams``; anything
    else there (another training, a file that is no ticket) is refused with ``advice``."""
    from elth_cli.errors import ElthError
    from elth_cli.ticket import Ticket

    try:
        existing = Ticket.load(output)
    except ElthError as e:
        raise UsageError(f"{output} exists and is not a readable ticket ({e}); {advice}") from None
    diff = training_differences(existing, ticket, hparams)
    if not diff:
        return existing
    raise UsageError(f"{output} exists and is not this training (differs in: {'; '.join(diff)}); {advice}")


def _summary(item: TrainItem, trained: Any, sha: str | None, worker: Worker, reused: bool) -> dict[str, Any]:
    m = trained.metrics or {}
    env = (trained.config or {}).get("environment", {})
    return {"ticket": item.source, "output": item.output, "sha256": sha, "arch": trained.arch,
            "sparsity": trained.sparsity, "test_acc": m.get("test_acc"), "steps": m.get("steps"),
            "wall_time_s": m.get("wall_time_s"), "device": m.get("device"), "cpu_threads": env.get("cpu_threads"),
            "reused": reused, "log": str(item.log)}
