"""Stopping a run on request: SIGTERM, SIGUSR1 and Ctrl-C set a flag that the loop checks between steps."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from elth_cli import stops
from elth_cli.errors import ElthError
from elth_cli.stops import EXIT_INTERRUPTED, EXIT_STOPPED, STOP_SIGNALS

__all__ = ["EXIT_INTERRUPTED", "EXIT_STOPPED", "STOP_SIGNALS", "StopFlag", "TrainingStopped", "stop_signals",
           "stopped_error"]


class StopFlag:
    """Set by a signal handler (or by hand); the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum


@contextlib.contextmanager
def stop_signals(flag: StopFlag, repeat_grace_s: float = 0.0) -> Iterator[StopFlag]:
    """Route SIGTERM, SIGUSR1 and SIGINT to ``flag`` while the block runs; restore the old handlers after.

    A second Ctrl-C while the first is being handled aborts at once (KeyboardInterrupt), unless it
    comes within ``repeat_grace_s`` seconds of the first: under torchrun one Ctrl-C reaches a
    worker twice (from the terminal and forwarded by torchrun). Handlers can only be installed
    from the main thread; elsewhere the flag is left to the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    # The command's own handlers (elth_cli.stops) give way to the loop's: from here on a stop is checked
    # between steps and, after the loop, at the command's end, so a finished training is always saved.
    stops.polled()
    if stops.pending() is not None:  # one that came while this training was set up
        flag.request(stops.pending())
        stops.acted_on()
    first = [0.0]

    def handler(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            if time.monotonic() - first[0] >= repeat_grace_s:
                raise KeyboardInterrupt
            return
        first[0] = time.monotonic()
        flag.request(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class TrainingStopped(ElthError):
    """A run stopped on request; ``exit_code`` is 75 (resumable) or 130 (Ctrl-C)."""

    def __init__(self, message: str, exit_code: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message, exit_code)
        self.step = step
        self.checkpoint = checkpoint


def stopped_error(signum: int | None, where: str, checkpoint: Path | None, step: int,
                  stop_at_step: int | None = None) -> TrainingStopped:
    """The error a stopped run raises: which signal, where, and whether re-running resumes it."""
    name = signal.Signals(signum).name if signum is not None else f"stop_at_step {stop_at_step}"
    interrupted = signum == signal.SIGINT
    if checkpoint is None:
        return TrainingStopped(f"stopped by {name} at {where}; no checkpoint (no checkpoint path given), so the "
                               "run cannot be resumed", EXIT_INTERRUPTED if interrupted else 1, step, None)
    return TrainingStopped(f"stopped by {name} at {where}; checkpoint {checkpoint} written; re-run the same command "
                           "to resume", EXIT_INTERRUPTED if interrupted else EXIT_STOPPED, step, checkpoint)
