"""The step notation: ``1000it``, ``2ep``, ``2ep100it`` or a bare number of iterations.

One parser serves training (``--warmup``, ``--milestones``, ``--rewind``) and the open_lth
interop (``--init-step``, ``--trained-step``). Epochs become iterations only once the run's
steps per epoch are known, so a config keeps the text and :func:`parse_steps` converts it.
Importing this module costs nothing (no torch).
"""

from __future__ import annotations

import re

from elth_cli.errors import UsageError

_STEP_RE = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$", re.ASCII)
STEP_HELP = "write iterations as '1000it' or '1000', epochs as '2ep'"


def split_steps(text: str) -> tuple[int | None, int] | None:
    """``'2ep100it'`` -> ``(2, 100)``, ``'160ep'`` -> ``(160, 0)``, ``'1000it'`` or ``'1000'`` -> ``(None, 1000)``.

    The epoch part is None when the text names iterations only; None for text that is not a step.
    """
    s = str(text).strip().lower()
    if s.isascii() and s.isdigit():  # '¹'.isdigit() is True, but int('¹') fails
        return None, int(s)
    m = _STEP_RE.match(s)
    if not s or m is None or (m.group(1) is None and m.group(2) is None):
        return None
    epochs = None if m.group(1) is None else int(m.group(1))
    return epochs, int(m.group(2) or 0)


def parse_steps(text: str | int, steps_per_epoch: int) -> int:
    """A step count in iterations from ``1000it``, ``2ep``, ``2ep100it`` or a bare integer (iterations)."""
    if isinstance(text, bool):
        raise UsageError(f"{text!r} is not a step count")
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"step count {text} is negative; steps are 0 or more")
        return text
    parts = split_steps(text)
    if parts is None:
        raise UsageError(f"{text!r} is not a step count; {STEP_HELP}")
    epochs, iterations = parts
    return (epochs or 0) * steps_per_epoch + iterations


def normalise_steps(text: str | int) -> str:
    """The canonical spelling of a step count (a bare integer becomes ``<n>it``); checks the syntax."""
    parse_steps(text, 1)
    s = str(text).strip().lower()
    return f"{int(s)}it" if s.isascii() and s.isdigit() else s


def parse_step_list(text: str) -> tuple[str, ...]:
    """``'80ep,120ep'`` -> ``('80ep', '120ep')``; ``''`` or ``'none'`` -> no milestones."""
    s = text.strip().lower()
    if s in ("", "none"):
        return ()
    return tuple(normalise_steps(part) for part in s.split(","))


def scale_steps(text: str, factor: int) -> str:
    """``'80ep'`` x 5 -> ``'400ep'``; ``'2ep100it'`` x 2 -> ``'4ep200it'`` (a recipe run ``factor`` times longer)."""
    parts = split_steps(text)
    if parts is None:
        raise UsageError(f"{text!r} is not a step count; {STEP_HELP}")
    epochs, iterations = parts
    out = f"{epochs * factor}ep" if epochs is not None else ""
    return out + (f"{iterations * factor}it" if iterations or epochs is None else "")
