"""The tests' side of the one-node SLURM cluster (tests/slurm/cluster.sh): is it up, submit, wait.

There is no accounting database on it (``sacct`` does not work), so a job's state is read from
``scontrol show job`` while slurmctld remembers the job (MinJobAge, 300 s after its end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
JOB_DEADLINE_S = 240  # a job that takes longer (all of them run side by side on 2 cores) has hung


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def cluster_up() -> bool:
    """Whether the cluster answers and its node is up."""
    try:
        return _run(str(CLUSTER_SH), "status").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_cluster() -> str | None:
    """Start the cluster (root only); None once it is up, or why it could not start."""
    if os.geteuid() != 0:
        return "no SLURM cluster answers, and tests/slurm/cluster.sh start needs root"
    try:
        started = _run(str(CLUSTER_SH), "start", timeout=600)  # may apt-get install first
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"tests/slurm/cluster.sh start failed: {e}"
    if started.returncode != 0:
        stop_cluster()  # whatever part of it did start
        lines = (started.stderr or started.stdout).strip().splitlines()
        return lines[-1] if lines else f"tests/slurm/cluster.sh start exited {started.returncode}"
    return None


def stop_cluster() -> None:
    _run(str(CLUSTER_SH), "stop", timeout=60)


def job_env(**extra: str) -> dict[str, str]:
    """This environment for a job (sbatch exports it): this checkout and this Python's scripts
    (elth, torchrun) first, one torch thread per process, none of an enclosing job's variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", ELTH_DIST_TIMEOUT="60", COLUMNS="200")
    env.update(extra)
    return env


def sbatch(script: Path, *args: str, options: tuple[str, ...] = (), cwd: Path, env: dict[str, str]) -> str:
    """Submit ``script ARGS`` from ``cwd``; returns the job id."""
    r = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"sbatch {script.name}: {r.stderr}"
    return r.stdout.strip().split(";")[0]


def records(job: str) -> list[dict[str, str]]:
    """``scontrol show job``'s records of a job (one per array task once the tasks are split)."""
    r = _run("scontrol", "show", "job", "--oneliner", job)
    assert r.returncode == 0, f"scontrol show job {job}: {r.stderr}"
    return [dict(field.partition("=")[::2] for field in line.split()) for line in r.stdout.splitlines() if line]


def wait_until(check: Callable[[], bool], what: str, log: Path | None = None, timeout: float = JOB_DEADLINE_S) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` with ``what`` and the job's log."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{read_log(log)}")
        time.sleep(0.2)


def ended(job: str) -> bool:
    return all(r["JobState"] in FINAL_STATES for r in records(job))


def wait_for_end(job: str, log: Path, tasks: int = 1) -> list[dict[str, str]]:
    """The records of ``job`` once it (each of its ``tasks`` array tasks) has ended."""
    done: list[dict[str, str]] = []

    def ended() -> bool:
        done[:] = records(job)
        return len(done) == tasks and all(r["JobState"] in FINAL_STATES for r in done)

    wait_until(ended, f"job {job} did not end", log)
    return done


def assert_completed(recs: list[dict[str, str]], log: Path) -> None:
    """Every record COMPLETED with exit code 0:0, or the states and the log in the failure."""
    states = [(r["JobId"], r["JobState"], r["ExitCode"]) for r in recs]
    assert all(s[1:] == ("COMPLETED", "0:0") for s in states), f"{states}\n{read_log(log)}"


def read_log(log: Path | None) -> str:
    if log is None or not log.exists():
        return f"(no log {log})" if log else ""
    return f"--- {log}\n{log.read_text(errors='replace')[-6000:]}"


def preempt(job: str, ready: Callable[[], bool], log: Path, batch: bool) -> None:
    """What a preemption does to ``job`` once ``ready()``: SIGUSR1 to its steps (or, ``batch``, to its
    script), which checkpoints and requeues it; then its restart is brought forward (a requeued
    job is otherwise held for about two minutes) and the job runs again."""
    def ready_or_ended() -> bool:  # a job that ended (or was cancelled) first fails at once
        assert not ended(job), f"job {job} ended before it could be preempted:\n{read_log(log)}"
        return ready()

    wait_until(ready_or_ended, f"job {job} never got ready to be preempted", log)
    r = _run("scancel", "--signal=USR1", *(["--batch"] if batch else []), job)
    assert r.returncode == 0, r.stderr

    def requeued() -> bool:
        (rec,) = records(job)
        assert rec["JobState"] not in FINAL_STATES, f"job {job} ended instead of requeueing:\n{read_log(log)}"
        return rec["Restarts"] != "0" and rec["JobState"] == "PENDING"

    wait_until(requeued, f"job {job} was not requeued", log)
    # slurmd refuses a job credential issued in the second its previous one was revoked (the kill
    # of the requeue): "Job credential revoked", and the job fails. Clusters wait ~2 minutes anyway.
    time.sleep(2)
    r = _run("scontrol", "update", f"jobid={job}", "StartTime=now")
    assert r.returncode == 0, r.stderr


def cancel(jobs: list[str]) -> None:
    """Teardown: cancel what is left of ``jobs`` (an ended job is no error)."""
    if jobs:
        _run("scancel", *jobs)
