"""The SLURM executor: each job of the graph that has to run is one SLURM job, submitted with
``sbatch`` and started by SLURM once the jobs it reads have ended well (``--dependency=afterok``;
``--kill-on-invalid-dep=yes`` cancels it when one of them failed). A last job writes the results
once every other has ended (``afterany``).

Each job's script (``DIR/slurm/<job>.sbatch``, kept for reading and resubmitting) runs
``elth run DIR/experiment.toml --out-dir DIR --job <job>`` in the background and passes SIGUSR1 or
SIGTERM on to it: SLURM sends SIGUSR1 ``signal_seconds`` before the time limit
(``--signal=B:USR1@N``) and SIGTERM on preemption; elth writes its checkpoint and exits 75, and the
script requeues the job, which then resumes from the checkpoint. The scripts are plain text rather
than a library's pickled functions (submitit): a job is a command line anyone can read and rerun,
and requeue and resume are elth's own (docs/experiments.md).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from elth_cli.errors import ElthError, UsageError
from elth_cli.experiment import engine
from elth_cli.experiment.graph import Node, slugify
from elth_cli.experiment.jobstate import DONE, FAILED, Planned, write_record
from elth_cli.experiment.spec import SlurmOptions
from elth_cli.fileio import WriterLock, write_bytes_atomic
from elth_cli.report import Log

QUEUED = "queued"
POLL_S = 2.0


def jobs_file(out: Path) -> Path:
    return out / "slurm" / "jobs.json"


def read_job_ids(out: Path) -> dict[str, str]:
    """The SLURM job id of each job submitted from this folder (by the job's id), and ``results``'s."""
    try:
        doc = json.loads(jobs_file(out).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UsageError(f"--executor slurm needs SLURM's {name}, which is not on PATH; run on a cluster's login node "
                         "or use --executor local")
    return path


def queue(ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """SLURM's state and reason of each of ``ids`` still known to the controller (PENDING, RUNNING, ...)."""
    if not ids or shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(ids)], capture_output=True, text=True)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def script(opened: engine.Opened, node: Node | None, opts: SlurmOptions) -> str:
    """The batch script of ``node`` (None: the job that writes the results)."""
    out = opened.out.resolve()
    slug = node.slug if node is not None else "results"
    name = slugify(f"elth-{opened.exp.name}-{slug}")[:120]
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={out}/logs/{slug}.log",
             "#SBATCH --open-mode=append", "#SBATCH --ntasks=1"]
    if node is not None:
        lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{opts.signal_seconds}"]
        lines += [f"#SBATCH --{flag}={value}" for flag, value in (
            ("partition", opts.partition), ("account", opts.account), ("time", opts.time),
            ("gpus", opts.gpus or None), ("cpus-per-task", opts.cpus)) if value is not None]
        lines += [f"#SBATCH {extra}" for extra in opts.extra]
        command = [sys.executable, "-m", "elth_cli", "run", str(out / "experiment.toml"), "--out-dir", str(out),
                   "--job", node.slug]
    else:
        lines += [f"#SBATCH --partition={opts.partition}"] if opts.partition else []
        lines += [f"#SBATCH --account={opts.account}"] if opts.account else []
        command = [sys.executable, "-m", "elth_cli", "run", "--report", str(out)]
    return "\n".join(lines) + "\n\n" + _BODY.format(cwd=shlex.quote(os.getcwd()), command=shlex.join(command))


# Run elth in the background so that the trap can pass the signal on; `wait` returns early when a trap runs,
# so wait again until elth has ended. Exit 75: stopped with its checkpoint, so requeue (the job starts again
# and resumes). SLURM_RESTART_COUNT says how often it was requeued.
_BODY = """set -u
cd {cwd}
echo "$(date '+%F %T') job $SLURM_JOB_ID on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}"
child=
trap '[ -n "$child" ] && kill -USR1 "$child"' USR1 TERM
{command} &
child=$!
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
done
if [ "$status" -eq 75 ]; then
    echo "stopped with a checkpoint: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
"""


def _sbatch(path: Path, after: Sequence[str], kind: str = "afterok") -> str:
    args = [_slurm_tool("sbatch"), "--parsable"]
    if after:
        args += [f"--dependency={kind}:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ElthError(f"sbatch refused {path}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def submit(opened: engine.Opened, log: Log, wait: bool = False) -> Any:
    """Submit every job that is not done, each after the jobs it reads, and the job that writes the results;
    with ``wait``, stay until they have ended and print the table."""
    out = opened.out
    engine.make_folder(out)
    with WriterLock(out / "experiment.lock", f"the experiment in {out}"):
        _refuse_if_queued(out)
        planned = engine.prepare(opened, log)
        ids = _submit_jobs(opened, [p for p in planned if p.runs], log)
    if not ids:
        log.info(f"{opened.exp.name}: every job is done; nothing to submit")
    if wait:
        return _wait_and_report(opened, ids, log)
    log.info(f"elth run --status {out} shows their state; the table is written when the last ends")
    return {"experiment": opened.exp.name, "submitted": ids}


def _refuse_if_queued(out: Path) -> None:
    ids = read_job_ids(out)
    alive = queue(list(ids.values()))
    if alive:
        raise UsageError(f"{len(alive)} SLURM job{'s' if len(alive) != 1 else ''} of {out} {'are' if len(alive) != 1 else 'is'} "
                         f"still queued or running ({', '.join(sorted(alive))}); wait for them (elth run --status {out}) "
                         "or scancel them first")


def _submit_jobs(opened: engine.Opened, to_run: list[Planned], log: Log) -> dict[str, str]:
    out, opts = opened.out, opened.exp.slurm
    (out / "slurm").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    ids: dict[str, str] = {}
    names = {p.node.name: p.node.slug for p in to_run}
    for p in to_run:
        path = out / "slurm" / f"{p.node.slug}.sbatch"
        write_bytes_atomic(path, script(opened, p.node, opts).encode())
        ids[p.node.slug] = _sbatch(path, [ids[names[a]] for a in p.node.after if a in names])
        write_record(out, p.node, QUEUED, slurm_job=ids[p.node.slug])
        write_bytes_atomic(jobs_file(out), json.dumps(ids, indent=1).encode())
        log.info(f"[{p.node.name}] submitted: SLURM job {ids[p.node.slug]}")
    if ids:
        path = out / "slurm" / "results.sbatch"
        write_bytes_atomic(path, script(opened, None, opts).encode())
        ids["results"] = _sbatch(path, list(ids.values()), "afterany")
        write_bytes_atomic(jobs_file(out), json.dumps(ids, indent=1).encode())
        log.info(f"{len(ids) - 1} jobs submitted, and SLURM job {ids['results']} writes the results after them")
    return ids


def _wait_and_report(opened: engine.Opened, ids: dict[str, str], log: Log) -> Any:
    from elth_cli.experiment.results import print_results, write_results

    while queue(list(ids.values())):
        time.sleep(POLL_S)
    res, doc = write_results(opened.exp, opened.nodes, opened.out)
    print_results(opened.exp, res.rows)
    failed = [f"{n.name} (log: {d})" for n, s, d in with_queue(opened, engine.job_states(opened)) if s == FAILED]
    if failed:
        raise ElthError(f"{len(failed)} job{'s' if len(failed) != 1 else ''} failed: {'; '.join(failed)}")
    return None


def with_queue(opened: engine.Opened, states: list[tuple[Node, str, str]]) -> list[tuple[Node, str, str]]:
    """``states`` with SLURM's word on the jobs submitted from the folder: queued (and why), running, or
    cancelled because a job it reads failed."""
    ids = read_job_ids(opened.out)
    alive = queue([ids[n.slug] for n, _, _ in states if n.slug in ids])
    by_name = {n.name: s for n, s, _ in states}
    out = []
    for node, state, detail in states:
        job_id = ids.get(node.slug)
        if job_id in alive and state not in (DONE, FAILED):
            slurm_state, reason = alive[job_id]
            state = "running" if slurm_state == "RUNNING" else QUEUED
            detail = f"SLURM job {job_id} {slurm_state.lower()}" + (f" ({reason})" if reason not in ("None", "") else "")
        elif state == QUEUED:
            failed = [a for a in node.after if by_name.get(a) in (FAILED, "cancelled")]
            state, detail = ("cancelled", f"needs {', '.join(failed)}, which failed") if failed else \
                ("lost", f"SLURM job {job_id} ended without a record (log: {opened.out / 'logs' / node.slug}.log)")
        out.append((node, state, detail))
        by_name[node.name] = state
    return out
