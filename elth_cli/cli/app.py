"""The ``elth`` app and its entry point: every error as one line with its exit status, Ctrl-C and stop
signals, a closed pipe (141), torch imported only by the commands that need it.

The commands live in the ``cmd_*`` modules beside this one; importing :mod:`elth_cli.cli` registers
them all. Only what ``--help`` and ``--version`` need is imported here: no torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from elth_cli import __version__, stops
from elth_cli.cli import typer_fixes
from elth_cli.cli.examples import SUMMARIES, epilog
from elth_cli.cli.family_option import FAMILY_MODULE, take_family_modules
from elth_cli.errors import ElthError
from elth_cli.cli.preflight import NO_TRAINING, TORCH_FREE, check_files
from elth_cli.fileio import stdout_left_unread
from elth_cli.runtime.memory import map_large_blocks

# typer >= 0.20 vendors click and derives its errors from TyperException; older typer uses click itself.
_PARSE_ERRORS: tuple[type[BaseException], ...] = ()
try:
    from typer.exceptions import TyperException

    _PARSE_ERRORS += (TyperException,)
except ImportError:  # pragma: no cover - depends on the installed typer
    pass
try:
    import click

    _PARSE_ERRORS += (click.ClickException,)
except ImportError:  # pragma: no cover
    pass

typer_fixes.apply()
_HELP_OPTIONS = ("-h", "--help")
_CONTEXT_SETTINGS = {"help_option_names": list(_HELP_OPTIONS)}
app = typer.Typer(
    name="elth",
    help="Find, stretch, squeeze and train lottery tickets (Elastic Lottery Ticket Hypothesis, Chen et al. 2021).\n\n"
    "Tickets are safetensors files (mask + init weights + provenance); commands chain through them, "
    "and '-' reads a ticket from stdin or writes it to stdout.",
    epilog=epilog(None),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Markdown re-flows docstring paragraphs (wrapped in the source) to the terminal width.
    rich_markup_mode=None,
    context_settings=_CONTEXT_SETTINGS,
)


# The --help panels of every command, in the order a user reads them (params.py gives each option its panel).
PANELS = ("Method", "Training", "Data", "Devices", "Output")


class PanelledCommand(typer.core.TyperCommand):
    """A command whose ``--help`` lists its options in panels (Method, Training, Data, Devices, Output), as plain
    text: a terminal, a pipe and a SLURM log read it alike. Once its command line is parsed it imports torch
    (:func:`elth_cli.stops.import_torch`), after its ``before_torch`` hook (see :func:`command`)."""

    before_torch: Callable[[dict[str, Any]], None] | None = None

    def invoke(self, ctx: Any) -> Any:
        if self.name in NO_TRAINING:
            map_large_blocks()
        if self.name not in TORCH_FREE:
            check_files(ctx.params)
            if self.before_torch is not None:
                self.before_torch(ctx.params)
            stops.import_torch()
        return super().invoke(ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS] TICKET...`` (typer writes a required argument as ``{TICKET}``, which reads like a set)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = getattr(param, "display_name_raw", None) or param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, sections = [], {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Other", []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for panel in (*PANELS, *sorted(set(sections) - set(PANELS))):
            if panel in sections:
                with formatter.section(panel):
                    formatter.write_dl(sections[panel])


def command(name: str, before_torch: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Register a command on the app: its worked examples as the epilog, its options in panels, and its whole
    first sentence as its line in ``elth --help`` (click cuts it at 45 characters with "...").

    ``before_torch(params)`` runs once the command line is parsed, before this process imports torch
    (2 s): what should start meanwhile, such as the server that worker processes are forked from."""
    cls = PanelledCommand if before_torch is None else \
        type(f"{name.title()}Command", (PanelledCommand,), {"before_torch": staticmethod(before_torch)})

    def register(fn: Any) -> Any:
        return app.command(name, epilog=epilog(name), cls=cls, short_help=SUMMARIES[name])(fn)
    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"elth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    family_module: Annotated[
        Optional[list[str]], typer.Option(
            FAMILY_MODULE, metavar="MODULE|FILE.py",
            help="Register the architecture families of a module or .py file for this command (repeatable; also "
                 "accepted after the command's name, and from ELTH_FAMILIES). See docs/families.md.")
    ] = None,
) -> None:
    """elth: lottery tickets from the command line."""


@contextlib.contextmanager
def report_stop(command: str) -> Iterator[None]:
    """A training stopped by a signal: its one line (rank 0 alone of several) and its exit status (75 resumable,
    130 Ctrl-C)."""
    from elth_cli.runtime.signals import TrainingStopped

    try:
        yield
    except TrainingStopped as e:
        if _rank_for_errors() == 0:
            print(f"elth {command}: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None


# ----- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user errors become one line on stderr and a non-zero exit status, never a traceback.

    The command is invoked directly rather than through typer's ``main``, so that a Ctrl-C at any
    moment reaches the handler below (typer turns it into a silent exit, click into a bare newline).
    """
    global _command
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    _command = f"elth {args[0]}" if args and args[0].isalpha() else "elth"
    code: Any = 0
    restore_handlers = stops.install()
    try:
        _run(args)
    except stops.StopRequested as e:
        _fail(f"stopped by {e} before its result was written; re-run the same command", stops.EXIT_STOPPED,
              prefix=f"{_command}:")
    except ElthError as e:
        _fail(str(e), e.exit_code, local=getattr(e, "local", False))
    except typer.Exit as e:
        code = e.exit_code
    except _PARSE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `elth` alone: the help, as click shows it
            e.show()
            _exit(2)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "elth"
        _fail(f"{e.format_message()} (see {where} --help)".replace("\n", " "), getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        _fail(INTERRUPTED, 130)
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): stop quietly with the status a process killed
        # by SIGPIPE has in a shell (128 + 13), as `yes | head` does, so that `set -o pipefail` sees a
        # ticket or document that was not read in full. stdout goes to /dev/null first: Python's own
        # flush at exit would fail again and print a traceback-like warning.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit(EXIT_BROKEN_PIPE)
    except OSError as e:
        # A folder that is a file, no permission, a full disk: the system's reason, on one line.
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _fail(f"{e.strerror or e}{where}; check the path and its permissions", 1)
    except Exception as e:  # (after typer's Exit and Abort, which are RuntimeErrors too)
        distributed = sys.modules.get("elth_cli.runtime.distributed")
        if stops.interrupted():  # whatever a Ctrl-C broke on its way (a half-imported library, ...)
            _fail(INTERRUPTED, 130)
        if distributed is None or not isinstance(e, RuntimeError) or not distributed.is_comm_failure(e):
            raise
        # A rank lost its peers (gloo, NCCL): one line, not a traceback.
        _fail(distributed.comm_failure_message(e), 1, local=True)
    finally:
        restore_handlers()
    _exit(code if isinstance(code, int) else 0)


def _run(args: list[str]) -> None:
    """Parse and run the command; then report a stop that came after its work, or a reader that went away."""
    args = take_family_modules(args)
    command = typer.main.get_command(app)
    if COMPLETE_VAR in os.environ:  # the shell asks for completions: click's own main answers and exits
        command.main(args=args, prog_name="elth", complete_var=COMPLETE_VAR)
    if len(args) == 2 and args[1] in _HELP_OPTIONS and args[0] in getattr(command, "commands", {}):
        # `elth CMD --help` straight from the command: parsing the group's options first would
        # import pydantic (typer's coercion) for nothing, a fifth of the start-up.
        sub = command.commands[args[0]]
        with sub.make_context(f"elth {args[0]}", args[1:], **_CONTEXT_SETTINGS):
            pass
    with command.make_context("elth", args) as ctx:
        command.invoke(ctx)
    _report_late_stop()
    if stdout_left_unread():
        raise BrokenPipeError


def _report_late_stop() -> None:
    """A stop that came after the training (while its result was saved): the outputs are complete, and the
    exit status says the command was stopped, so a requeued job runs it again and finds them finished."""
    signum = stops.pending()
    if signum is None:
        return
    name = signal.Signals(signum).name
    print(f"{_command}: stopped by {name} after its outputs were written; re-running the same command finds "
          "them finished", file=sys.stderr)
    _exit(stops.exit_status(signum))


_command = "elth"  # "elth train" once the command is known: the prefix of every stop line
INTERRUPTED = "interrupted by Ctrl-C"
COMPLETE_VAR = "_ELTH_COMPLETE"  # what the script of `elth --show-completion` sets
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed the pipe before the end
def _fail(message: str, code: int, local: bool = False, prefix: str = "error:") -> None:
    """Print the error and exit. With several processes every rank fails alike and rank 0 alone reports it,
    except for a failure only this rank saw (``local``), which it reports under its rank."""
    if stops.interrupted():
        message, code, local = INTERRUPTED, 130, False
    rank = _rank_for_errors()
    # A stop is not an error of the work: its one line starts as every stop line does ("elth train: stopped
    # by SIGINT at ...", printed by _report_stop), with the command.
    if message == INTERRUPTED:
        prefix = f"{_command}:"
    if rank == 0:
        print(f"{prefix} {message}", file=sys.stderr)
    elif local:
        print(f"error: rank {rank}: {message}", file=sys.stderr)
    _exit(code)


def _exit(code: int) -> None:
    # The exit status is decided: a stop from now on is noted, never raised (it must not turn the status into a
    # traceback or another code while the process unwinds).
    stops.polled()
    # Only a command that trained imported the process-group code (and torch); the rest exits plainly.
    distributed = sys.modules.get("elth_cli.runtime.distributed")
    if distributed is None:
        sys.exit(code)
    distributed.exit_process(code)


def _rank_for_errors() -> int:
    distributed = sys.modules.get("elth_cli.runtime.distributed")
    if distributed is not None:
        return distributed.reporting_rank()
    from elth_cli.runtime.launch import detect_launch

    try:
        return detect_launch().rank
    except ElthError:
        return 0
