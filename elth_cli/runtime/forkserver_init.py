"""Imported by the fork server only (:func:`elth_cli.runtime.pool.prepare_workers` names it, with a
marker in the server's environment): the server ignores the stop signals.

A stop (SIGTERM, SIGUSR1, Ctrl-C) is the main process's to forward to its workers. A scheduler that
signals every process of a job (SLURM's ``scancel``) would otherwise kill the server, and the main
process, which learns of its workers' ends through the server, would count every worker as dead while
each is writing its checkpoint. The server still exits when the main process does.
"""

from __future__ import annotations

import os
import signal

MARKER = "ELTH_FORK_SERVER"

if os.environ.pop(MARKER, None) == "1":  # anywhere else importing this module changes nothing
    for _signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(_signum, signal.SIG_IGN)
    # When the main process exits, so does the server; tearing down its torch would take half a second
    # more, during which the server still holds the command's stderr (a pipe's reader waits for it).
    import atexit

    atexit.register(os._exit, 0)
