"""A worker of the pool and the jobs it runs: :class:`Job` (a module-level function with picklable
arguments), what a running job sees of its worker (:class:`Worker`), how a job ends (:class:`Outcome`,
whatever it raises), and the worker process's life (its own process group, threads and device, then
jobs until told to exit). :mod:`.pool` starts the workers and hands them the jobs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Mapping

from elth_cli.errors import ElthError
from elth_cli.fileio import pid_alive
from elth_cli.runtime.signals import EXIT_INTERRUPTED, STOP_SIGNALS, StopFlag, TrainingStopped, stop_signals
from elth_cli.runtime.slots import Slot

DONE, FAILED, STOPPED, SKIPPED, NOT_STARTED = "done", "failed", "stopped", "skipped", "not started"


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(worker, **kwargs)``, run once every job named in ``after`` is done.

    ``fn`` must be a module-level function and ``kwargs`` picklable (they travel to a worker
    process). ``cost`` is a relative estimate (e.g. training steps x forward MACs): the pool starts
    the jobs on the longest remaining chain first, and estimates the time left from it.
    """

    name: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    cost: float = 1.0


@dataclass
class Outcome:
    """What became of a job. ``status``: done, failed, stopped (a signal; checkpoint written), skipped
    (a job it needs did not finish) or not started (a stop came first)."""

    name: str
    status: str
    value: Any = None
    message: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    slot: int | None = None
    detail: str = ""  # the traceback of an unexpected error, for the job's log

    @property
    def ok(self) -> bool:
        return self.status == DONE


@dataclass(frozen=True)
class Event:
    """What :func:`run_jobs` tells ``on_event``: a job started, sent a note, or ended (``outcome``).

    ``done``/``total`` count finished jobs; ``left_s`` estimates the seconds left (None until a
    job has reported progress)."""

    kind: str  # "start", "note", "end"
    job: str
    slot: Slot | None  # None: a job that never ran (skipped, not started)
    text: str = ""
    outcome: Outcome | None = None
    done: int = 0
    total: int = 0
    left_s: float | None = None


class Worker:
    """What a running job sees of its worker: the slot, the stop flag, a way to report progress."""

    def __init__(self, slot: Slot, stop: StopFlag, send: Callable[[str, float | None], None]) -> None:
        self.slot, self.stop, self._send = slot, stop, send

    @property
    def device(self) -> str:
        return self.slot.device

    def note(self, text: str, progress: float | None = None) -> None:
        """A line for the main process to print under the job's name; ``progress`` (0..1) of the job
        so far feeds the estimate of the time left."""
        self._send(text, progress)

    def train_options(self) -> dict[str, Any]:
        """What a job hands ``train_state``/``find_imp``: the worker's stop flag, which the worker's own
        signal handlers set (a training must not install others)."""
        return {"stop": self.stop, "handle_signals": False}


# ---------------------------------------------------------------------------------------------
# Running one job (in a worker, or in this process)
# ---------------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def execute(job: Job, worker: Worker) -> Outcome:
    """Run ``job`` on ``worker``; every way it can end becomes an :class:`Outcome` (nothing escapes)."""
    if worker.stop.requested:
        return Outcome(job.name, NOT_STARTED, message="not started: a stop was requested", slot=worker.slot.index)
    start = time.perf_counter()

    def ended(status: str, message: str = "", code: int = 0, value: Any = None, detail: str = "") -> Outcome:
        return Outcome(job.name, status, value, message, code, round(time.perf_counter() - start, 3),
                       worker.slot.index, detail)

    try:
        value = job.fn(worker, **job.kwargs)
    except TrainingStopped as e:
        return ended(STOPPED, str(e), e.exit_code)
    except KeyboardInterrupt:
        return ended(STOPPED, "interrupted", EXIT_INTERRUPTED)
    except ElthError as e:
        return ended(FAILED, str(e), e.exit_code)
    except Exception as e:  # a job's unexpected error is its own: the others go on
        return ended(FAILED, _one_line(e), 1, detail=traceback.format_exc())
    return ended(DONE, value=value)


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the process that started this one dies (Linux): the worker then checkpoints and
    stops. That is the main process, or the fork server, which exits when the main process does."""
    starter = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != starter or not pid_alive(parent):  # it died before the request took effect
        os._exit(1)


def worker_main(slot: Slot, conn: Connection, parent: int, environ: Mapping[str, str]) -> None:
    """A worker's life: the main process's environment, its own process group, its threads and device,
    then jobs until told to exit."""
    os.environ.clear()
    os.environ.update(environ)
    for signum in STOP_SIGNALS:  # what a fresh process has (the fork server ignores them)
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a Ctrl-C at the terminal is the main process's to forward
    _die_with_parent(parent)
    flag = StopFlag()
    try:
        with stop_signals(flag):
            _set_up_worker(slot)
            conn.send(("ready",))
            while True:
                message = conn.recv()
                if message[0] == "exit":
                    _exit_now()
                job: Job = message[1]
                worker = Worker(slot, flag, lambda text, progress, name=job.name: conn.send(
                    ("note", name, text, progress)))
                outcome = execute(job, worker)
                try:
                    conn.send(("result", outcome))
                except Exception as e:  # a value that does not pickle
                    conn.send(("result", Outcome(job.name, FAILED, None, f"its result cannot be sent back: {_one_line(e)}",
                                                 1, outcome.seconds, slot.index)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # interrupted while idle, or the main process went away: nothing is running


def _exit_now() -> None:
    """Leave at once when told to: every result is sent and every file closed, and tearing torch's
    interpreter down would add half a second or more to the command's end."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _set_up_worker(slot: Slot) -> None:
    if slot.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(slot.threads)
    import torch

    if slot.threads is not None:
        torch.set_num_threads(slot.threads)
    if slot.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(slot.device))
