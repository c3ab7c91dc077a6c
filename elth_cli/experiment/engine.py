"""Running an experiment: open it (file, graph, folder), plan what runs, run it on this machine's worker
pool (:func:`run_local`) or one job of it (:func:`run_job`, what each SLURM job runs), and the state of a
run (:func:`job_states`). The SLURM executor (:mod:`.slurm`) submits the same jobs.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from elth_cli.errors import ElthError, UsageError
from elth_cli.experiment.graph import Node, build_graph
from elth_cli.experiment.jobstate import (CHANGED, DONE, FAILED, FOLLOWS, NEW, REUSE, RUNNING, STOPPED, Planned,
                                         check_folder, clear_outputs, experiment_file, plan, read_record,
                                         write_log, write_record)
from elth_cli.experiment.spec import Experiment, dump_experiment, load_experiment, parse_experiment
from elth_cli.fileio import WriterLock, write_bytes_atomic
from elth_cli.report import JobProgress, Log
from elth_cli.runtime.workers import Job, Worker

# More workers than this gain nothing on one machine's cores for these small jobs.
MAX_JOBS = 8


@dataclass
class Opened:
    """An experiment, its jobs and its folder."""

    exp: Experiment
    nodes: list[Node]
    out: Path

    def node(self, name_or_slug: str) -> Node:
        for n in self.nodes:
            if name_or_slug in (n.name, n.slug):
                return n
        raise UsageError(f"the experiment has no job {name_or_slug!r}; elth run --plan lists them")


def open_experiment(exp: Experiment, out: str | Path) -> Opened:
    """``exp`` with its job graph, to run in ``out``."""
    return Opened(exp, build_graph(exp), Path(out))


def open_folder(out: str | Path) -> Opened:
    """The experiment an earlier run wrote into ``out`` (its experiment.toml)."""
    path = experiment_file(Path(out))
    if not path.is_file():
        raise UsageError(f"{out} is not an experiment's folder (no experiment.toml); give the --out-dir of an "
                         "elth run")
    exp = parse_experiment(path.read_text(encoding="utf-8"), str(path))
    return open_experiment(exp, out)


def load(name: str, out: str | Path) -> Opened:
    return open_experiment(load_experiment(name), out)


def describe(planned: Sequence[Planned]) -> list[str]:
    """One line per job: what a run does with it, and after which jobs."""
    words = {REUSE: "done", NEW: "run", CHANGED: "re-run", FOLLOWS: "re-run", "again": "run"}
    lines = []
    for p in planned:
        why = f" ({p.why})" if p.why else ""
        after = f"  after: {', '.join(p.node.after)}" if p.node.after else ""
        lines.append(f"{words[p.action]:6s} {p.node.name}{why}{after}")
    return lines


def prepare(opened: Opened, log: Log) -> list[Planned]:
    """Plan, say which jobs run again and why, remove what those left, and write the experiment as it runs
    now into the folder (made by :func:`make_folder`)."""
    out = opened.out
    planned = plan(out, opened.nodes)
    changed = [p for p in planned if p.action == CHANGED]
    follows = [p for p in planned if p.action == FOLLOWS]
    for p in changed:
        log.info(f"[{p.node.name}] runs again: its settings changed ({p.why})")
    if follows:
        log.info(f"{len(follows)} job{'s' if len(follows) != 1 else ''} that read{'s' if len(follows) == 1 else ''} "
                 f"them run{'s' if len(follows) == 1 else ''} again too: {', '.join(p.node.name for p in follows)}")
    for p in planned:
        clear_outputs(out, p)
    write_bytes_atomic(experiment_file(out), dump_experiment(opened.exp).encode())
    return planned


def make_folder(out: Path) -> None:
    """The experiment's folder: new, empty, or an earlier run's."""
    check_folder(out)
    out.mkdir(parents=True, exist_ok=True)


def run_recorded(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """Run one job and keep its record: running, then done (with what it made), failed (with its log) or
    stopped (its checkpoint written)."""
    from elth_cli.experiment.tasks import run_node
    from elth_cli.runtime.signals import TrainingStopped

    started = time.time()
    write_record(out, node, RUNNING, started=started)
    try:
        summary = run_node(worker, node, exp, out)
    except TrainingStopped:
        write_record(out, node, STOPPED, started=started)
        raise
    except BaseException as e:
        detail = str(e) if isinstance(e, ElthError) else traceback.format_exc()
        path = write_log(out, node, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {node.name} failed: {detail}")
        write_record(out, node, FAILED, started=started, error=str(e) or type(e).__name__, log=str(path))
        raise
    write_record(out, node, DONE, started=started, seconds=round(time.time() - started, 1), summary=summary)
    return summary


def pool_jobs(opened: Opened, planned: Sequence[Planned]) -> list[Job]:
    """The jobs that run, as the worker pool's jobs (each after those of its inputs that run too)."""
    running = {p.node.name for p in planned if p.runs}
    return [Job(p.node.name, run_recorded, {"node": p.node, "exp": opened.exp, "out": opened.out},
                tuple(a for a in p.node.after if a in running), p.node.cost) for p in planned if p.runs]


def default_jobs() -> int:
    """One worker per core (one thread each), at most :data:`MAX_JOBS`."""
    from elth_cli.runtime.slots import available_cores

    return min(available_cores(), MAX_JOBS)


def run_local(opened: Opened, jobs: int | None = None, log: Log | None = None) -> Any:
    """Run every job that is not done on this machine's worker pool (``jobs`` workers), then write the
    results; a stop or a failure is raised after them (the finished jobs' rows are in the table)."""
    from elth_cli.experiment.results import write_results
    from elth_cli.runtime.pool import prepare_workers, run_jobs
    from elth_cli.runtime.slots import plan_slots

    log = log or Log()
    slots = plan_slots(jobs or default_jobs(), opened.exp.device)
    started = time.perf_counter()
    make_folder(opened.out)
    with WriterLock(opened.out / "experiment.lock", f"the experiment in {opened.out}"):
        planned = prepare(opened, log)
        work = pool_jobs(opened, planned)
        reused = len(planned) - len(work)
        log.info(f"{opened.exp.name}: {len(planned)} jobs, {len(work)} to run"
                 + (f", {reused} done before" if reused else "") + f"; {len(slots)} worker{'s' if len(slots) != 1 else ''}"
                 + (f", {slots[0].threads} thread{'s' if slots[0].threads != 1 else ''} each" if slots[0].threads else ""))
        if work and slots[0].threads is not None:
            prepare_workers(("elth_cli.experiment.tasks",))  # the workers share one import of the jobs' code
        result = run_jobs(work, slots, JobProgress(log, lambda outcome: outcome.value))
        res, _ = write_results(opened.exp, opened.nodes, opened.out, extra={
            "jobs": len(slots), "threads_per_job": slots[0].threads,
            "seconds": round(time.perf_counter() - started, 1)})
    result.check("experiment jobs")
    return res


def run_job(opened: Opened, name: str) -> str:
    """Run one job of the experiment in this process (what a SLURM job runs): its inputs must be done; a
    job already done with the same identity is not run again."""
    from elth_cli.runtime.pool import run_jobs
    from elth_cli.runtime.slots import plan_slots

    node = opened.node(name)
    states = {p.node.name: p for p in plan(opened.out, opened.nodes)}
    missing = [a for a in node.after if states[a].runs]
    if missing:
        raise ElthError(f"job {node.name} reads {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        "not done; run those first")
    if not states[node.name].runs:
        return "done before"
    clear_outputs(opened.out, states[node.name])
    slot = plan_slots(1, opened.exp.device)
    result = run_jobs([Job(node.name, run_recorded, {"node": node, "exp": opened.exp, "out": opened.out})], slot)
    result.check("job")
    return str(result.outcomes[node.name].value)


def job_states(opened: Opened) -> list[tuple[Node, str, str]]:
    """Each job's state from its record: done, failed (with its log), stopped, running, queued, changed, not
    run, or blocked (a job it reads failed)."""
    out: list[tuple[Node, str, str]] = []
    seen: dict[str, str] = {}
    for p in plan(opened.out, opened.nodes):
        rec = read_record(opened.out, p.node) or {}
        state, detail = rec.get("state", "not run"), p.why
        broken = [a for a in p.node.after if seen.get(a) in (FAILED, "blocked")]
        if p.action in (CHANGED, FOLLOWS):
            state = "changed"
        elif state == FAILED:
            detail = f"{rec.get('error', '')} (log: {rec.get('log', '')})"
        elif state == DONE and p.action == REUSE:
            detail = str(rec.get("summary", ""))
        elif broken:
            state, detail = "blocked", f"needs {', '.join(broken)}, which failed"
        seen[p.node.name] = state
        out.append((p.node, state, detail))
    return out
