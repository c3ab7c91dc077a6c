"""Everything elth prints: logs on stderr, tables and JSON documents on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

# rich is imported where it draws, not here: `elth --help` never needs it.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


NO_WRAP_WIDTH = 100_000


def _console(stream) -> Console:
    from rich.console import Console

    # Not a terminal (pipe, file, SLURM log): plain text, and so wide that a table's lines are never
    # wrapped (a table is only as wide as its cells).
    tty = stream.isatty()

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits 1 here; the entry point gives a closed pipe the status a shell gives it (141).
            raise BrokenPipeError

    return _Console(file=stream, highlight=False, soft_wrap=True, width=None if tty else NO_WRAP_WIDTH)


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


# Set by the worker pool for its workers: a folder where each warning leaves a mark, so that N workers
# that meet the same problem (a recipe's warm-up longer than a short run) print it once, not N times.
WARNED_ENV = "ELTH_WARNED_DIR"


def warn_once(message: str) -> None:
    """``warning: message`` on stderr, once per pool of workers (every time outside one)."""
    import hashlib
    import os

    folder = os.environ.get(WARNED_ENV)
    if folder:
        mark = os.path.join(folder, hashlib.sha256(message.encode()).hexdigest()[:20])
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return  # another worker said it
        except OSError:
            pass  # no mark can be left: say it anyway
    print(f"warning: {message}", file=sys.stderr)


def print_json(doc: Any) -> None:
    """One JSON document on stdout (sorted keys, so output is stable and diffable)."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def make_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
               right: Sequence[str] = ()) -> BoxTable:
    """A table as rich draws its default one (heavy head, bold header, a title centred above it)."""
    return BoxTable(list(columns), [[str(v) for v in row] for row in rows], title, set(right))


class BoxTable:
    """What :func:`make_table` makes: drawn line by line here when it fits the console's width (rich's own
    table lays out every cell as a renderable: 0.2 s for the 156 layers of a ResNet-152), by rich otherwise
    (narrower columns, wrapped cells). The two drawings are the same, character for character
    (tests/test_report.py)."""

    def __init__(self, columns: list[str], rows: list[list[str]], title: str | None, right: set[str]) -> None:
        self.columns, self.rows, self.title, self.right = columns, rows, title, right

    def rich_table(self) -> Table:
        from rich.table import Table

        table = Table(title=self.title, show_lines=False, header_style="bold")
        for c in self.columns:
            table.add_column(c, justify="right" if c in self.right else "left")
        for row in self.rows:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Any, options: Any) -> Iterable[Any]:
        from rich.cells import cell_len
        from rich.text import Text

        widths = [max([cell_len(c)] + [cell_len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        width = sum(widths) + 3 * len(widths) + 1
        plain = all("\n" not in cell and "[" not in cell for row in [self.columns, *self.rows] for cell in row)
        if width > options.max_width or not plain or (self.title and cell_len(self.title) > width):
            yield self.rich_table()
            return

        def line(left: str, fill: str, mid: str, end: str) -> Text:
            return Text(left + mid.join(fill * (w + 2) for w in widths) + end)

        def cells(row: list[str], bar: str, style: str | None = None) -> Text:
            text = Text(bar)
            for i, cell in enumerate(row):
                pad = " " * (widths[i] - cell_len(cell))
                for piece in (" ", pad + cell if self.columns[i] in self.right else cell + pad, " "):
                    text.append(piece, style=style)  # three pieces, styled one by one, as rich draws a cell
                text.append(bar)
            return text

        if self.title:
            excess = width - cell_len(self.title)
            yield Text(" " * (excess // 2) + self.title + " " * (excess - excess // 2), style="table.title")
        yield line("┏", "━", "┳", "┓")
        yield cells(self.columns, "┃", "bold")
        yield line("┡", "━", "╇", "┩")
        yield from (cells(row, "│") for row in self.rows)
        yield line("└", "─", "┴", "┘")


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs`` (``many``: an irregular plural)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    """``0.9722`` as ``97.22%``; "-" where there is no value (None, or NaN: a run that ended before its test pass)."""
    return "-" if x is None or x != x else f"{100 * x:.{digits}f}%"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_si(x: float | None, digits: int = 3) -> str:
    """A count with an SI prefix and ``digits`` significant figures: 40.8M, 1.82G, 3.07T ('-' for None)."""
    if x is None:
        return "-"
    value = float(x)
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < 1000 or prefix == "P":
            return f"{value:.{digits}g}{prefix}"
        value /= 1000
    return f"{value:.{digits}g}P"


def fmt_flops(x: float | None) -> str:
    """FLOPs with an SI prefix: ``4.21T``."""
    return fmt_si(x)


class TrainProgress:
    """Training progress on stderr: a live rich bar on a terminal, one plain line per epoch elsewhere.

    SLURM logs and pipes get the plain lines only, so they stay readable; ``quiet`` prints nothing.
    Live loss/accuracy on the bar are read from the device at most once per ``refresh_s`` seconds
    (each read is a host-device sync).
    """

    def __init__(self, quiet: bool = False, stream=None, refresh_s: float = 1.0) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.console = _console(self.stream)
        self.refresh_s = refresh_s
        self._progress = None
        self._task = None
        self._last_read = 0.0
        self._start_step = 0
        self._t0 = 0.0
        self._batch = 0

    def start(self, title: str, step: int, total: int, steps_per_epoch: int, batch_size: int,
              resumed: bool = False) -> None:
        if self.quiet:
            return
        self._start_step, self._batch, self._t0 = step, batch_size, time.perf_counter()
        where = f"from step {step}" + (" (resumed)" if resumed else "")
        self.console.print(f"{title}: {total} steps ({plural(total // steps_per_epoch, 'epoch')} of {steps_per_epoch}), "
                           f"batch {batch_size}, {where}", markup=False)
        if not self.tty:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=step, stats="")

    def step(self, step: int, live) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        fields = {}
        if now - self._last_read >= self.refresh_s:
            self._last_read = now
            loss, acc = live()
            ips = (step - self._start_step) * self._batch / max(now - self._t0, 1e-9)
            fields["stats"] = f"loss {loss:.4f} acc {fmt_pct(acc)} {ips:,.0f} img/s"
        self._progress.update(self._task, completed=step, **fields)

    def epoch(self, record: dict[str, Any], epochs: int, total: int) -> None:
        if self.quiet:
            return
        self.console.print(format_epoch(record, epochs, total), markup=False)
        if self._progress is not None:
            self._progress.update(self._task, stats=f"loss {record['train_loss']:.4f} acc {fmt_pct(record['train_acc'])}"
                                  + (f" {record['images_per_s']:,.0f} img/s" if record.get("images_per_s") else ""))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_epoch(record: dict[str, Any], epochs: int, total: int) -> str:
    """One plain line per epoch: what SLURM logs show."""
    test = (f"test loss {record['test_loss']:.4f} acc {fmt_pct(record['test_acc'])}"
            if record.get("test_acc") is not None else "test -")
    ips = record.get("images_per_s")
    return (f"epoch {record['epoch']}/{epochs} step {record['step']}/{total} lr {record['lr']:.4g} "
            f"train loss {record['train_loss']:.4f} acc {fmt_pct(record['train_acc'])} {test} "
            f"{'-' if ips is None else f'{ips:,.0f}'} img/s {record['seconds']:.1f} s"
            # An early-bird search's epochs: how far the mask moved (it settles below --epsilon).
            + (f" mask distance {record['mask_distance']:.4f}" if record.get("mask_distance") is not None else ""))


def fmt_duration(seconds: float) -> str:
    """A duration for people: 45 s, 3 min 05 s, 1 h 02 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class JobProgress:
    """The lines a pool of jobs prints on stderr (``elth_cli.runtime.pool.Event``s): each job's start, notes and
    end under its name, with the count finished and the time left. Failures print even when quiet."""

    def __init__(self, log: Log, describe: Any = None) -> None:
        self.log = log
        self.describe = describe  # outcome -> text after "done": what the job made

    def __call__(self, event: Any) -> None:
        slot = event.slot
        if event.kind == "start":
            where = f"{slot.device}, {slot.threads} thread{'s' if slot.threads != 1 else ''}" \
                if slot.threads is not None else slot.device
            self.log.info(f"[{event.job}] started (worker {slot.index}: {where})")
        elif event.kind == "note":
            self.log.info(f"[{event.job}] {event.text}")
        else:
            self._end(event)

    def _end(self, event: Any) -> None:
        o = event.outcome
        left = f", about {fmt_duration(event.left_s)} left" if event.left_s is not None and event.left_s >= 1 \
            and event.done < event.total else ""
        count = f" ({event.done} of {event.total} ended{left})"
        if o.status == "done":
            what = self.describe(o) if self.describe is not None else ""
            self.log.info(f"[{event.job}] done in {o.seconds:.1f} s{': ' + what if what else ''}{count}")
        elif o.status == "failed":
            self.log.console.print(f"[{event.job}] failed: {o.message}{count}", markup=False)
        else:
            self.log.info(f"[{event.job}] {o.message}{count}")
