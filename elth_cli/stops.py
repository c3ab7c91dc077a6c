"""Stop signals for a whole command, from its first line to its last write.

A batch system stops a job with SIGTERM or SIGUSR1 (``#SBATCH --signal=USR1@90``), a person with
Ctrl-C, at any moment: while Python starts, while data loads, in the middle of writing a file or
just after a training finished. The CLI's entry point calls :func:`install`, and from then on:

* before any training has begun, a stop ends the command at once (:class:`StopRequested`, or
  KeyboardInterrupt for Ctrl-C), with its one line and exit status 75 (130 for Ctrl-C): nothing is
  lost, and the ``finally`` blocks remove temporary files and release locks;
* inside :func:`held` (an atomic write, the final save of a training) it waits for the block's
  end, so no file is left half-written and no finished training unsaved;
* once a training loop has begun (:func:`polled`), the loop checks the stop itself (it writes its
  checkpoint and raises ``TrainingStopped``), and a stop after the loop waits for the command's end:
  the entry point then reports it (:func:`pending`), after the results are in place.

Without :func:`install` (elth used as a library, a worker process of the pool) nothing changes:
the process keeps its own handlers. This module imports nothing of elth and no torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1; re-running the same command continues
EXIT_INTERRUPTED = 130  # 128 + SIGINT

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None), signal.SIGINT)
                     if s is not None)


class StopRequested(BaseException):
    """SIGTERM or SIGUSR1 before any training began. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    """The process's stop state (one per process; only the main thread receives signals)."""

    def __init__(self) -> None:
        self.installed = False
        self.signum: int | None = None  # the first stop that was not acted on yet
        self.interrupted = False  # a Ctrl-C was seen (errors that follow it are reported as the interruption)
        self.depth = 0  # nesting of held() blocks
        self.polling = False  # a training loop began: stops are the loops' and the command end's to act on


_state = _State()


def _raise_for(signum: int) -> None:
    _state.signum = None
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise StopRequested(signum)


def _handler(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT:
        if _state.interrupted and _state.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C while the first waits: the user insists
        _state.interrupted = True
    if _state.signum is None:
        _state.signum = signum
    if _state.depth == 0 and not _state.polling:
        _raise_for(signum)


def install() -> Callable[[], None]:
    """Route SIGTERM, SIGUSR1 and SIGINT to this module for the rest of the command; return a function
    that restores the previous handlers (a no-op off the main thread, where handlers cannot be set)."""
    global _state
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        return lambda: None  # off the main thread, or already installed (the console script does it first)
    _state = _State()
    _state.installed = True
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.installed = False

    return restore


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A block that a stop must not cut in two (a file's write and rename, a ticket's save with the removal
    of its checkpoint): a stop that arrives inside waits for its end."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.signum is not None and not _state.polling and _state.installed:
        _raise_for(_state.signum)


def polled() -> None:
    """A training loop begins: from now on a stop is checked by the loops and reported at the command's end
    (after its results are saved), never raised where it lands."""
    _state.polling = True


def pending() -> int | None:
    """The stop that arrived after training began and was not acted on by a loop (None: none)."""
    return _state.signum if _state.installed else None


def acted_on() -> None:
    """A loop stopped for the pending signal (it wrote its checkpoint and reports it): nothing is pending."""
    _state.signum = None


def note_interrupt() -> None:
    """A Ctrl-C that someone else held back (torch's import) and now honours."""
    _state.interrupted = True


def interrupted() -> bool:
    """Whether a Ctrl-C was seen during this command."""
    return _state.interrupted


def exit_status(signum: int) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_STOPPED


def import_torch() -> None:
    """Import torch with every stop held back until it is done, then honour it.

    An interrupt that lands inside torch's C++ initialisation can abort the process (SIGABRT, a
    stack dump) instead of raising KeyboardInterrupt; held, it costs at most the import's seconds.
    """
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum)) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        with held():  # SIGTERM and SIGUSR1: raised at the end of the block
            import torch  # noqa: F401
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if caught:
        note_interrupt()
        raise KeyboardInterrupt
