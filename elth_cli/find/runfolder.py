"""An IMP run folder (``elth find --method imp --out-dir DIR``): the one place that names its files,
reads them back and describes a run (``elth info DIR``).

    DIR/find.json               the run's identity: IMP options, recipe, processes
    DIR/find.jsonl              one line per finished round (a RoundRecord)
    DIR/round-NN.safetensors    each round's ticket: the record that a round is finished
    DIR/round-NN.jsonl          each round's epoch records (loss, accuracy, lr, ...)
    DIR/round-NN.ckpt           the checkpoint of the round in progress
    DIR/find.lock               held while a process writes the folder

docs/find.md describes the layout and the rules for re-running a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from elth_cli import schema, stops
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import WriterLock, write_bytes_atomic
from elth_cli.train.identity import run_differences

_METRIC = schema.number(nan=True)
# find.json and find.jsonl, by type: what a re-run reads back from the folder.
RUN_FILE_RULES: dict[str, schema.Check] = {
    "method": schema.text, "imp": schema.obj(), "train": schema.obj(), "world_size": schema.integer(1)}
RECORD_RULES: dict[str, schema.Check] = {
    "round": schema.integer(0), "sparsity": schema.number(0, 1), "test_acc": _METRIC, "best_test_acc": _METRIC,
    "test_loss": _METRIC, "steps": schema.integer(0), "seconds": schema.number(0), "path": schema.text,
    "stopped_early": schema.integer(0, 1)}


@dataclass
class RoundRecord:
    """One finished IMP round, as find.jsonl and the summary table show it."""

    round: int
    sparsity: float
    test_acc: float
    best_test_acc: float
    test_loss: float
    steps: int
    seconds: float
    path: str
    stopped_early: int = 0  # 1: an early-bird round that stopped when its next mask had settled

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunFolder:
    """An IMP run folder: where each of its files is."""

    path: Path

    RUN_FILE = "find.json"  # the run's identity: arguments and recipe
    LOG_FILE = "find.jsonl"  # one line per finished round
    LOCK_FILE = "find.lock"  # held while a process writes the folder

    def lock(self) -> WriterLock:
        """The lock one process holds while it writes this folder."""
        return WriterLock(self.path / self.LOCK_FILE, f"the IMP run in {self.path}")

    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG_FILE

    def round_ticket(self, r: int) -> Path:
        return self.path / f"round-{r:02d}.safetensors"

    def round_checkpoint(self, r: int) -> Path:
        return self.path / f"round-{r:02d}.ckpt"

    def round_log(self, r: int) -> Path:
        """Round ``r``'s epoch records, one JSON line per epoch."""
        return self.path / f"round-{r:02d}.jsonl"

    def has_rounds(self) -> bool:
        return self.path.exists() and any(p.name.startswith("round-") for p in self.path.iterdir())

    def is_run(self) -> bool:
        return self.run_file.is_file()


def round_path(out_dir: str | Path, r: int) -> Path:
    """The ticket file of round ``r`` in an IMP run folder."""
    return RunFolder(Path(out_dir)).round_ticket(r)


def read_run_file(folder: RunFolder) -> dict[str, Any]:
    """The run's identity (find.json), checked; a damaged file is an ElthError saying what to do."""
    try:
        saved = json.loads(folder.run_file.read_text())
        if not isinstance(saved, dict):
            raise schema.Invalid("not a JSON object")
        return schema.check_fields(saved, RUN_FILE_RULES, lambda field, expected: schema.Invalid(field))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, schema.Invalid):
        raise ElthError(f"{folder.run_file} is unreadable or damaged; move the folder away or pick another "
                        "--out-dir") from None


def read_log(path: Path) -> dict[int, RoundRecord]:
    """The finished rounds find.jsonl records (a damaged or cut line is skipped: the round file is the authority)."""
    out: dict[int, RoundRecord] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                fields = json.loads(line)
                if not isinstance(fields, dict) or set(fields) != set(RECORD_RULES):
                    continue
                rec = RoundRecord(**schema.check_fields(fields, RECORD_RULES, lambda f, e: schema.Invalid(f)))
            except (json.JSONDecodeError, schema.Invalid):
                continue
            out[rec.round] = rec
    return out


def record_from_ticket(r: int, ticket: Any, path: Path) -> RoundRecord:
    """A round's record, from its ticket (where find.jsonl lacks it)."""
    m = ticket.metrics or {}
    early = m.get("early_bird") or {}
    return RoundRecord(r, ticket.sparsity, _nan_if_none(m.get("test_acc")), _nan_if_none(m.get("best_test_acc")),
                       _nan_if_none(m.get("test_loss")), int(m.get("steps", 0)), float(m.get("wall_time_s", 0.0)),
                       str(path), int(bool(early.get("stopped_early"))))


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def rounds_for_sparsity(sparsity: float, prune_rate: float) -> int:
    """Fewest rounds at ``prune_rate`` whose nominal sparsity reaches ``sparsity`` (the last round prunes to it exactly)."""
    if sparsity <= 0:
        return 0
    return max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - prune_rate) - 1e-9))


def planned_rounds(imp: dict[str, Any]) -> int:
    """The last round an IMP run's options ask for (``--rounds``, or the rounds ``--sparsity`` needs)."""
    if imp.get("rounds") is not None:
        return int(imp["rounds"])
    return rounds_for_sparsity(float(imp["sparsity"]), float(imp.get("prune_rate", 0.2)))


def run_summary(path: str | Path) -> dict[str, Any]:
    """What ``elth info DIR`` shows of an IMP run: its options, every finished round (round, sparsity,
    test accuracy, steps, seconds, file) and the round in progress, if any (JSON-ready)."""
    from elth_cli.ticket import Ticket

    folder = RunFolder(Path(path))
    if not folder.is_run():
        raise UsageError(f"{path} is a folder but not an IMP run folder (no {folder.RUN_FILE}); give a ticket file "
                         "or the --out-dir of elth find --method imp")
    identity = read_run_file(folder)
    imp, records = identity["imp"], read_log(folder.log_file)
    last = planned_rounds(imp)
    rounds, in_progress = [], None
    for r in range(last + 1):
        ticket_file = folder.round_ticket(r)
        if ticket_file.exists():
            rec = records.get(r) or record_from_ticket(r, Ticket.load(ticket_file, arrays="numpy"), ticket_file)
            rounds.append({**rec.as_dict(), "path": str(ticket_file)})
        elif folder.round_checkpoint(r).exists() and in_progress is None:
            stops.import_torch()  # a checkpoint is read (and checked) with torch; info imports it only here
            from elth_cli.train.checkpoint import read_checkpoint

            ckpt = read_checkpoint(folder.round_checkpoint(r))
            in_progress = {"round": r, "step": ckpt.step, "checkpoint": str(folder.round_checkpoint(r))}
    return {"run": str(path), "method": identity.get("method", "imp"), "arch": imp.get("arch"),
            "dataset": imp.get("dataset"), "planned_rounds": last, "total_rounds": last + 1,
            "finished_rounds": len(rounds),
            "rounds": rounds, "in_progress": in_progress, "arguments": identity}


# ----- is this folder this run? ------------------------------------------------------------------------
def check_run_dir(folder: RunFolder, identity: dict[str, Any]) -> None:
    """Refuse an existing run folder made with other arguments; record the identity of a new one."""
    if folder.run_file.exists():
        saved = read_run_file(folder)
        if extends(saved, identity, folder):  # the same run with more rounds: it continues
            write_bytes_atomic(folder.run_file, (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode())
            return
        diffs = run_differences(saved, identity, config_key="train")
        if diffs:
            raise UsageError(
                f"{folder.path} holds an IMP run made with other arguments ({'; '.join(diffs)}); "
                f"{fewer_rounds_hint(saved, identity, folder) or 're-run with the original arguments to resume'}, "
                "or choose another --out-dir"
            )
        return
    if folder.has_rounds():
        raise UsageError(f"{folder.path} holds round files but no {folder.RUN_FILE}; choose an empty --out-dir")
    write_bytes_atomic(folder.run_file, (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode())


def rounds_change(saved: dict[str, Any], wanted: dict[str, Any]) -> tuple[int, int] | None:
    """(saved, wanted) ``--rounds`` when the two runs differ in that alone (both asked by rounds)."""
    old, new = saved.get("imp") or {}, wanted.get("imp") or {}
    if old.get("rounds") is None or new.get("rounds") is None or old["rounds"] == new["rounds"]:
        return None
    if run_differences({**saved, "imp": {**old, "rounds": new["rounds"]}}, wanted, config_key="train"):
        return None
    return int(old["rounds"]), int(new["rounds"])


def fewer_rounds_hint(saved: dict[str, Any], wanted: dict[str, Any], folder: RunFolder) -> str | None:
    """Where ``wanted`` is the saved run with a smaller ``--rounds`` and that round is finished: its file."""
    change = rounds_change(saved, wanted)
    if change is None or change[1] > change[0] or not folder.round_ticket(change[1]).exists():
        return None
    return f"its round {change[1]} is already {folder.round_ticket(change[1])} (elth info {folder.path} lists every round)"


def extends(saved: dict[str, Any], wanted: dict[str, Any], folder: RunFolder) -> bool:
    """Whether ``wanted`` is the saved run with a larger ``--rounds`` and nothing else changed: its
    finished rounds are the first rounds of the longer run (each prunes the same fraction of what is
    left), so it continues from the last of them. An early-bird run cannot be extended: its last
    round trained in full, where the longer run stops that round early."""
    change = rounds_change(saved, wanted)
    if change is None or change[1] < change[0]:
        return False
    if (saved.get("imp") or {}).get("early_bird"):
        raise UsageError(f"{folder.path} holds an early-bird IMP run of {change[0]} rounds: its last round "
                         f"trained in full, where a {change[1]}-round run stops it early, so it cannot be "
                         "extended; choose another --out-dir")
    return True


def is_finished(folder: RunFolder, identity: dict[str, Any], last: int) -> bool:
    """Whether ``folder`` holds this very run with every round written (each round is checked as it is read)."""
    if not (folder.run_file.is_file() and all(folder.round_ticket(r).is_file() for r in range(last + 1))):
        return False
    try:
        return not run_differences(read_run_file(folder), identity, config_key="train")
    except ElthError:
        return False  # a damaged find.json: the writing path says what is wrong


def clear_leftovers(folder: RunFolder, last: int) -> None:
    """In a finished run's folder, what a writer killed after its last save left: its lock (when no one holds
    it) and the checkpoints of rounds whose tickets are written. Nothing on a read-only mount."""
    import contextlib
    import os

    folder.lock().clear_stale()
    if not os.access(folder.path, os.W_OK | os.X_OK):
        return
    for r in range(last + 1):
        if folder.round_ticket(r).exists():
            with contextlib.suppress(FileNotFoundError):
                folder.round_checkpoint(r).unlink()
