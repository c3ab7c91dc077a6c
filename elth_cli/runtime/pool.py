"""Independent jobs side by side: a pool of worker processes (``--jobs N``), each with its share of
the CPU cores as torch threads, or its GPU.

A :class:`Job` is a module-level function ``fn(worker, **kwargs)`` with picklable arguments, a
name, the jobs that must finish before it (``after``) and a relative cost estimate. :func:`run_jobs`
runs a set of them on N workers and returns one :class:`Outcome` per job. With one worker the jobs
run in this process, one after the other, and no process is started.

The rules (docs/training.md, "Several trainings side by side"):

* a worker keeps its device and its CPU thread count (:class:`Slot`) for its whole life, so a job's
  result depends only on its arguments and those; on the CPU the result depends on the thread
  count, which every trained ticket records;
* a job that fails fails alone: the jobs that need it are skipped, every other one runs;
* a stop signal (SIGTERM, SIGUSR1, Ctrl-C) reaches every running job through its worker's
  :class:`~elth_cli.runtime.signals.StopFlag` (trainings write their checkpoint and stop) and no new
  job starts; re-running the command finishes what is left. Workers sit in their own process
  group, so a Ctrl-C at the terminal reaches this process only, which forwards it once; a worker
  whose parent dies gets SIGTERM (Linux) and stops the same way;
* only this process prints: workers send notes (:meth:`Worker.note`) that :func:`run_jobs` hands
  to ``on_event`` with the job's name.

Nothing here imports torch until a worker starts (or CUDA devices are counted).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from elth_cli.errors import ElthError, UsageError
from elth_cli.report import WARNED_ENV
from elth_cli.runtime.slots import Slot
from elth_cli.runtime.workers import (DONE, FAILED, NOT_STARTED, SKIPPED, STOPPED, Event, Job, Outcome, Worker,
                                      worker_main, execute)
from elth_cli.runtime.signals import EXIT_INTERRUPTED, EXIT_STOPPED, STOP_SIGNALS, StopFlag, TrainingStopped, stop_signals

# ---------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------


def check_jobs(jobs: Sequence[Job]) -> dict[str, float]:
    """Refuse duplicate names, unknown prerequisites and cycles; return each job's priority (its cost
    plus that of the costliest chain of jobs that wait for it: the critical path goes first)."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise UsageError(f"two jobs are named {next(n for n in names if names.count(n) > 1)!r}")
    by_name = {j.name: j for j in jobs}
    for j in jobs:
        unknown = [a for a in j.after if a not in by_name]
        if unknown:
            raise UsageError(f"job {j.name!r} waits for {unknown[0]!r}, which is not a job")
    waiting: dict[str, list[str]] = {n: [] for n in names}
    for j in jobs:
        for a in j.after:
            waiting[a].append(j.name)
    priority: dict[str, float] = {}

    def chain(name: str, seen: tuple[str, ...]) -> float:
        if name in seen:
            raise UsageError(f"jobs wait for each other in a cycle: {' -> '.join((*seen, name))}")
        if name not in priority:
            priority[name] = by_name[name].cost + max((chain(w, (*seen, name)) for w in waiting[name]), default=0.0)
        return priority[name]

    for n in names:
        chain(n, ())
    return priority


class _Progress:
    """Finished jobs and the estimate of the time left: cost per worker-second measured so far."""

    def __init__(self, jobs: Sequence[Job], workers: int) -> None:
        self.cost = {j.name: j.cost for j in jobs}
        self.after = {j.name: j.after for j in jobs}
        self.workers, self.total = workers, len(jobs)
        self.finished: dict[str, float] = {}  # name -> seconds
        self.partial: dict[str, tuple[float, float]] = {}  # running name -> (fraction, started at)

    def start(self, name: str) -> None:
        self.partial[name] = (0.0, time.perf_counter())

    def advance(self, name: str, fraction: float) -> None:
        if name in self.partial:
            self.partial[name] = (min(max(fraction, 0.0), 1.0), self.partial[name][1])

    def end(self, name: str, seconds: float, counted: bool) -> None:
        self.partial.pop(name, None)
        if counted:
            self.finished[name] = seconds

    def left_s(self, ended: set[str]) -> float | None:
        now = time.perf_counter()
        work = sum(self.cost[n] for n in self.finished) + sum(self.cost[n] * f for n, (f, _) in self.partial.items())
        busy = sum(self.finished.values()) + sum(now - t for f, t in self.partial.values() if f > 0)
        if work <= 0 or busy <= 0:
            return None
        rate = work / busy  # cost per worker-second
        remaining = {n: self.cost[n] * (1 - self.partial.get(n, (0.0, 0.0))[0]) for n in self.cost if n not in ended}
        memo: dict[str, float] = {}

        def chain(n: str) -> float:  # the remaining work that must happen one after the other, up to n
            if n not in memo:
                memo[n] = remaining.get(n, 0.0) + max((chain(a) for a in self.after[n]), default=0.0)
            return memo[n]

        critical = max((chain(n) for n in remaining), default=0.0)
        return max(sum(remaining.values()) / (rate * self.workers), critical / rate)


@dataclass
class JobsResult:
    """Every job's outcome by name (in the order the jobs were given), and the signal that stopped the
    run (None: it ran to the end)."""

    outcomes: dict[str, Outcome]
    stopped_by: str | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    def check(self, what: str) -> None:
        """Raise what a command reports when not every job is done: a stop (``TrainingStopped``, exit 75,
        or 130 for Ctrl-C) or failures (one line naming each failed job, exit 1)."""
        n = len(self.outcomes)
        if self.stopped_by is not None:
            code = EXIT_INTERRUPTED if self.stopped_by == "SIGINT" else EXIT_STOPPED
            raise TrainingStopped(
                f"stopped by {self.stopped_by}: {self.count(STOPPED)} of {n} {what} stopped with their checkpoint, "
                f"{self.count(NOT_STARTED) + self.count(SKIPPED)} not started, {self.count(DONE)} done; re-run the "
                "same command to finish them", code, 0, None)
        failed = [o.name for o in self.outcomes.values() if o.status in (FAILED, SKIPPED)]
        if failed:
            rest = n - len(failed)
            done = "none is done" if rest == 0 else "the other one is done" if rest == 1 else f"the other {rest} are done"
            raise ElthError(f"{len(failed)} of {n} {what} failed: {', '.join(failed)} (each one's error is above); {done}")


def run_jobs(jobs: Sequence[Job], slots: Sequence[Slot], on_event: Callable[[Event], None] | None = None
             ) -> JobsResult:
    """Run ``jobs`` on one worker per slot (:func:`plan_slots`) and return every job's outcome.

    One slot with ``threads`` None runs the jobs in this process. Otherwise each slot is a worker
    process: forked from a clean server process that imported torch once (see :func:`prepare_workers`),
    or spawned where the platform has no fork server; its threads are set before torch starts its
    thread pool. Signals are routed as the module's docstring says; the call returns once every
    running job has ended, whatever happened.
    """
    priority = check_jobs(jobs)
    pool = _Pool(list(jobs), priority, list(slots), on_event or (lambda event: None))
    if jobs and len(slots) == 1 and slots[0].threads is None:
        pool.run_here()
    elif jobs:
        workers = Workers()
        try:
            for slot in slots[:len(jobs)]:
                workers.start(slot)
            pool.run_workers(workers)
        finally:
            workers.close()
    signum = pool.flag.signum
    return JobsResult({j.name: pool.outcomes[j.name] for j in jobs},
                      signal.Signals(signum).name if signum is not None else None)


def _start_method() -> str:
    """Workers are forked from a server where the platform has one (Linux, macOS), else spawned."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


# What every worker imports before its first job (more with prepare_workers).
_PRELOAD = ("torch", "elth_cli.runtime.workers")


def prepare_workers(preload: Sequence[str] = ()) -> None:
    """Start, now and in the background, the server process that worker processes are forked from:
    it imports torch and ``preload`` once while this process goes on (reading and checking its
    inputs), so that the workers :func:`run_jobs` starts later are ready in milliseconds instead of
    each importing torch (2 s or more of CPU) after this process has. The server has never run a
    torch operation, so its children start with no thread pool and set their own (forking a process
    that had would not be safe). Where there is no fork server (Windows), workers are spawned and this
    does nothing. The first call in a process decides what the server imports."""
    if _start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    from elth_cli.runtime import forkserver_init

    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["elth_cli.runtime.forkserver_init", *dict.fromkeys((*_PRELOAD, *preload))])
    os.environ[forkserver_init.MARKER] = "1"  # the server starts with this environment: its signals, not ours
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(forkserver_init.MARKER, None)


@dataclass
class _Process:
    slot: Slot
    process: Any
    conn: Connection
    ready: bool = False
    job: str | None = None


class Workers:
    """The worker processes of one :func:`run_jobs` call by slot index (a dead one is replaced)."""

    def __init__(self) -> None:
        prepare_workers()  # a no-op where it ran already
        self.context = mp.get_context(_start_method())
        self.processes: dict[int, _Process] = {}
        self._marks = tempfile.TemporaryDirectory(prefix="elth-warned-")
        os.environ[WARNED_ENV] = self._marks.name  # the workers inherit it: a warning they share prints once

    def start(self, slot: Slot) -> None:
        parent_conn, child_conn = self.context.Pipe()
        # The environment goes along: a forked worker would otherwise have the server's, from its start.
        process = self.context.Process(target=worker_main, args=(slot, child_conn, os.getpid(), dict(os.environ)),
                                       daemon=True, name=f"elth-worker-{slot.index}")
        process.start()
        child_conn.close()
        self.processes[slot.index] = _Process(slot, process, parent_conn)

    def close(self) -> None:
        """Tell every worker to exit and wait for it; one that never got ready (nothing of its own to lose) is killed."""
        for p in self.processes.values():
            with contextlib.suppress(OSError, BrokenPipeError):
                p.conn.send(("exit",))
        deadline = time.monotonic() + 30
        for p in self.processes.values():
            p.process.join(timeout=max(0.1, deadline - time.monotonic()) if p.ready else 0.0)
            if p.process.is_alive():
                p.process.kill()
                p.process.join(timeout=5)
        self.processes.clear()
        os.environ.pop(WARNED_ENV, None)
        self._marks.cleanup()


class _Pool:
    """The bookkeeping of one :func:`run_jobs` call: what waits, what runs where, what ended."""

    def __init__(self, jobs: list[Job], priority: dict[str, float], slots: list[Slot],
                 on_event: Callable[[Event], None]) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.priority, self.slots, self.on_event = priority, slots, on_event
        self.pending = sorted(self.jobs, key=lambda n: -priority[n])
        self.outcomes: dict[str, Outcome] = {}
        self.progress = _Progress(jobs, len(slots))
        self.flag = StopFlag()
        self.started: Workers | None = None  # set by run_workers
        self.start_failure: str | None = None

    # ----- shared ----------------------------------------------------------------------------
    def _emit(self, kind: str, job: str, slot: Slot | None, text: str = "", outcome: Outcome | None = None) -> None:
        self.on_event(Event(kind, job, slot, text, outcome, len(self.outcomes), len(self.jobs),
                            self.progress.left_s(set(self.outcomes))))

    def _finish(self, outcome: Outcome, slot: Slot | None) -> None:
        self.outcomes[outcome.name] = outcome
        self.progress.end(outcome.name, outcome.seconds, counted=outcome.ok)
        self._emit("end", outcome.name, slot, outcome=outcome)

    def _next_ready(self) -> str | None:
        """The waiting job with the highest priority whose prerequisites are done; jobs whose
        prerequisites failed are marked skipped on the way."""
        for name in list(self.pending):
            blocked = [a for a in self.jobs[name].after if a in self.outcomes and not self.outcomes[a].ok]
            if blocked:
                self.pending.remove(name)
                why = self.outcomes[blocked[0]]
                self._finish(Outcome(name, SKIPPED, message=f"skipped: it needs {blocked[0]}, which {why.status}"
                                     if why.status != NOT_STARTED else f"skipped: it needs {blocked[0]}, not started"),
                             None)
                return self._next_ready()
        for name in self.pending:
            if all(a in self.outcomes for a in self.jobs[name].after):
                self.pending.remove(name)
                return name
        return None

    def _not_started(self) -> None:
        code = EXIT_INTERRUPTED if self.flag.signum == signal.SIGINT else EXIT_STOPPED
        for name in self.pending:
            self._finish(Outcome(name, NOT_STARTED, message="not started: a stop was requested", exit_code=code), None)
        self.pending = []

    # ----- in this process ------------------------------------------------------------------
    def run_here(self) -> None:
        slot = self.slots[0]
        with stop_signals(self.flag):
            while self.pending and not self.flag.requested:
                name = self._next_ready()
                if name is None:
                    break
                self.progress.start(name)
                self._emit("start", name, slot)
                worker = Worker(slot, self.flag, lambda text, progress, name=name: self._note(name, slot, text, progress))
                self._finish(execute(self.jobs[name], worker), slot)
            self._not_started()

    def _note(self, name: str, slot: Slot, text: str, progress: float | None) -> None:
        if progress is not None:
            self.progress.advance(name, progress)
        if text:
            self._emit("note", name, slot, text)

    # ----- in worker processes ---------------------------------------------------------------
    @property
    def workers(self) -> dict[int, _Process]:
        """The worker processes by slot index (none when the jobs run in this process)."""
        return self.started.processes if self.started is not None else {}

    def run_workers(self, workers: Workers) -> None:
        self.started = workers
        previous = {s: signal.signal(s, self._forward) for s in STOP_SIGNALS}
        try:
            while self.workers:
                self._dispatch()
                if not any(p.job for p in self.workers.values()) and not self.pending:
                    break
                self._wait_once()
            self._not_started()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _forward(self, signum: int, frame: Any) -> None:
        """A stop signal: no new job starts, and every worker gets the signal once."""
        self.flag.request(signum)
        for p in self.workers.values():  # a worker still starting has no job; it is told to exit
            if not p.ready:
                continue
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(p.process.pid, signum)

    def _dispatch(self) -> None:
        if self.flag.requested:
            self._not_started()
            return
        for p in self.workers.values():
            if p.ready and p.job is None:
                name = self._next_ready()
                if name is None:
                    return
                p.job = name
                self.progress.start(name)
                p.conn.send(("job", self.jobs[name]))
                self._emit("start", name, p.slot)

    def _wait_once(self) -> None:
        by_conn = {p.conn: p for p in self.workers.values()}
        by_sentinel = {p.process.sentinel: p for p in self.workers.values()}
        for ready in wait([*by_conn, *by_sentinel], timeout=1.0):
            p = by_conn.get(ready) or by_sentinel[ready]
            if self.workers.get(p.slot.index) is not p:
                continue  # already found lost through its other handle
            if ready in by_conn:
                self._receive(p)
            else:
                self._lost(p)

    def _receive(self, p: _Process) -> None:
        try:
            message = p.conn.recv()
        except (EOFError, OSError):
            self._lost(p)
            return
        if message[0] == "ready":
            p.ready = True
        elif message[0] == "note":
            self._note(message[1], p.slot, message[2], message[3])
        elif message[0] == "result":
            p.job = None
            self._finish(message[1], p.slot)

    def _lost(self, p: _Process) -> None:
        """A worker process ended by itself (a crash, the OOM killer): its job failed; a new worker takes its place."""
        p.process.join(timeout=5)
        del self.workers[p.slot.index]
        code = p.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        if p.job is not None:
            self._finish(Outcome(p.job, FAILED, message=f"its worker process died ({how})", exit_code=1,
                                 slot=p.slot.index), p.slot)
        if not p.ready:  # it never started: starting another would fail the same way
            self.start_failure = f"no worker process could start ({how}); run with --jobs 1 to see why"
        elif self.pending and not self.flag.requested:
            assert self.started is not None  # lost: it was one of them
            self.started.start(p.slot)
        if not self.workers:
            for name in self.pending:
                self._finish(Outcome(name, FAILED, message=self.start_failure or f"its worker process died ({how})",
                                     exit_code=1), None)
            self.pending = []
