"""User-facing errors: the CLI prints their message on one line and exits with their code."""

from __future__ import annotations


class ElthError(Exception):
    """A problem with the user's input or environment, not a bug in elth.

    The CLI prints ``error: <message>`` on stderr, with no traceback, and exits with
    ``exit_code`` (1: the work failed; 2: the command line was wrong).
    """

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ElthError):
    """Bad command-line input: an unknown name, a value out of range, a wrong combination."""

    exit_code = 2


class TicketError(ElthError):
    """A ticket file that cannot be read or does not validate."""

    exit_code = 1


# An optional extra (pyproject.toml) that an option needs: said in one place, by the option's check
# (train/options.py, before any work) and by the hook that imports it (train/hooks.py).
TENSORBOARD_MISSING = "--log-dir needs tensorboard: pip install 'elth[tensorboard]'"
