"""The ``elth`` console script and ``python -m elth_cli``.

The CLI module is imported inside ``main`` so that a Ctrl-C while it loads is one line and exit
status 130 too, like a Ctrl-C at any later moment (handled in :func:`elth_cli.cli.main`).
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130
# Commands that only read tickets: the big files among their arguments are hashed while the CLI loads (a few
# tenths of a second of imports, on the other core).
_HASH_AHEAD = ("info", "stretch", "squeeze", "compare")


def _exit_interrupted() -> None:
    # CPython remembers a KeyboardInterrupt that passed through some of its C paths, even when it
    # was handled, and then kills itself with SIGINT at exit (status -2, not 130): leave at once.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)


def _interrupted_while_loading(command: str) -> None:
    """The one stop line, as elth_cli.cli prints it once it is loaded."""
    sys.stderr.write(f"elth{' ' + command if command else ''}: interrupted by Ctrl-C\n")
    _exit_interrupted()


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].isalpha() else ""
    try:
        from elth_cli import stops

        # First of all (the module is a few lines, no torch): a SIGTERM while the CLI loads gets its one line
        # and exit status 75 too, not a silent 143.
        stops.install()
    except KeyboardInterrupt:  # a Ctrl-C even before that (a busy machine makes the moment long)
        _interrupted_while_loading(command)
    if command in _HASH_AHEAD:
        from elth_cli import digests  # (no numpy, no torch)

        digests.hash_ahead(a for i, a in enumerate(sys.argv) if i > 1 and sys.argv[i - 1] not in ("-o", "--output"))
    try:
        from elth_cli.cli import main as run
    except KeyboardInterrupt:
        _interrupted_while_loading(command)
    except stops.StopRequested as e:
        sys.stderr.write(f"elth{' ' + command if command else ''}: stopped by {e} before its result was written; "
                         "re-run the same command\n")
        sys.stderr.flush()
        os._exit(stops.EXIT_STOPPED)
    try:
        run()
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            _exit_interrupted()
        raise
    finally:
        # The exit status is decided: a stop during the interpreter's shutdown (torch tearing down, after the
        # last line) must not change it to 130, 143 or 138.
        for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


if __name__ == "__main__":
    main()
