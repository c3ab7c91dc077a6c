"""Everything elth prints: logs on stderr, tables and JSON documents on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table


def _console(stream) -> Console:
    # Not a terminal (pipe, file, SLURM log): plain text, and wide enough that tables are never cut.
    tty = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=True, width=None if tty else 200)


def stdout_console() -> Console:
    return _console(sys.stdout)


def stderr_console() -> Console:
    return _console(sys.stderr)


class Log:
    """Human-readable progress and summaries, always on stderr (stdout carries data)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = stderr_console()

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", markup=False)

    def table(self, table: Table) -> None:
        if not self.quiet:
            self.console.print(table)


def print_json(doc: Any) -> None:
    """One JSON document on stdout (sorted keys, so output is stable and diffable)."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def make_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
               right: Sequence[str] = ()) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def fmt_int(n: int) -> str:
    return f"{n:,}"
