"""An experiment's folder and what it remembers of each job.

```
DIR/experiment.toml      the experiment as it last ran (what --status and --report read)
DIR/jobs/<job>.json      each job's record: its identity, state (running, done, failed, stopped), what it made
DIR/logs/<job>.log       a failed job's error (local), or the SLURM job's whole output
DIR/seed-S/...           the chains' run folders and the trained tickets
DIR/table.json, table.txt, figures/   the results (elth run --report)
```

A job is *done* when its record says done with the identity it has now and its outputs exist. A
record with another identity means the job's inputs changed: it runs again, its old outputs removed
first (they are this experiment's own: the record lists them), and so does every job that reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from elth_cli.errors import ElthError, UsageError
from elth_cli.experiment.graph import Node
from elth_cli.fileio import write_bytes_atomic

DONE, FAILED, STOPPED, RUNNING = "done", "failed", "stopped", "running"
# What a plan says of a job.
REUSE, NEW, CHANGED, AGAIN, FOLLOWS = "done", "new", "changed", "again", "follows"


def experiment_file(out: Path) -> Path:
    return out / "experiment.toml"


def record_path(out: Path, node: Node) -> Path:
    return out / "jobs" / f"{node.slug}.json"


def log_path(out: Path, node: Node) -> Path:
    return out / "logs" / f"{node.slug}.log"


def read_record(out: Path, node: Node) -> dict[str, Any] | None:
    """The job's record, or None (never written, or unreadable: then it is as if new)."""
    try:
        doc = json.loads(record_path(out, node).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_record(out: Path, node: Node, state: str, **fields: Any) -> dict[str, Any]:
    """Record ``state`` for the job (atomically), with its identity and ``fields``."""
    doc = {"job": node.name, "kind": node.kind, "state": state, "digest": node.digest, "identity": node.identity,
           "outputs": list(node.outputs), "host": socket.gethostname(), "pid": os.getpid(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    path = record_path(out, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode())
    return doc


def write_log(out: Path, node: Node, text: str) -> Path:
    """Append ``text`` to the job's log; its path."""
    path = log_path(out, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


@dataclass(frozen=True)
class Planned:
    """What a run does with one job: reuse it (``done``), run it for the first time (``new``: a finished
    output of the same training is still kept), run it again because its own settings changed
    (``changed``, ``why`` lists them), because a job it reads runs again (``follows``), or because it did not
    finish (``again``: failed, stopped, or still running when its run ended)."""

    node: Node
    action: str
    why: str = ""

    @property
    def runs(self) -> bool:
        return self.action != REUSE


def plan(out: Path, nodes: Sequence[Node]) -> list[Planned]:
    """What a run of ``nodes`` in ``out`` does with each (in the nodes' order: inputs first)."""
    from elth_cli.train.identity import run_differences

    planned: dict[str, Planned] = {}
    for node in nodes:
        rec = read_record(out, node)
        rerun_inputs = [a for a in node.after if planned[a].action in (CHANGED, FOLLOWS)]
        if rec is None:
            p = Planned(node, NEW)
        elif rec.get("digest") != node.digest:
            own = run_differences(_own(rec.get("identity", {})), _own(node.identity), config_key="recipe")
            p = Planned(node, CHANGED, "; ".join(own)) if own or not rerun_inputs else \
                Planned(node, FOLLOWS, f"{', '.join(rerun_inputs)} runs again")
        elif rec.get("state") != DONE:
            p = Planned(node, AGAIN, f"it was {rec.get('state')}")
        elif not all((out / o).exists() for o in node.outputs):
            p = Planned(node, AGAIN, "its output is gone")
        else:
            p = Planned(node, REUSE)
        planned[node.name] = p
    return list(planned.values())


def _own(identity: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k != "inputs"}


def clear_outputs(out: Path, planned: Planned) -> None:
    """Before a job runs again because it changed: remove what its record says it made (the trained ticket and
    its checkpoint and epoch log, or the chain's run folder), so that nothing of the old run is reused."""
    if planned.action not in (CHANGED, FOLLOWS):
        return
    rec = read_record(out, planned.node) or {}
    for rel in rec.get("outputs", planned.node.outputs):
        path = (out / rel)
        if not _inside(out, path):
            raise ElthError(f"the record {record_path(out, planned.node)} names {rel}, outside {out}; remove the "
                            "record to run the job anew")
        if path.is_dir():
            shutil.rmtree(path)
        for extra in (path, Path(f"{path}.ckpt"), path.with_suffix(".jsonl")):
            if extra.is_file():
                extra.unlink()


def _inside(out: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(out.resolve())
        return True
    except ValueError:
        return False


def check_folder(out: Path) -> None:
    """An experiment's folder is empty, new, or one an experiment wrote (it has experiment.toml)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not experiment_file(out).exists():
        raise UsageError(f"--out-dir {out} holds other files and no experiment.toml; give a new or empty folder, "
                         "or the folder of an earlier run of this experiment")
