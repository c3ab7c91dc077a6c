"""What a command checks before it imports torch (2 s), and which commands never do.

A typo in a file name, a missing folder or stdout on a terminal then costs a fraction of a second.
The command makes the same checks again where it uses the files; whether an existing output may be
replaced is left to it (``train`` and ``find`` keep an output that already is their result).
"""

from __future__ import annotations

from typing import Any

from elth_cli.fileio import check_input_path, check_output_path
from elth_cli.train.options import check_log_dir

# Commands that answer without torch (and every --help): they read, check, transform and write tickets with
# numpy (compare imports torch only for --interpolate).
TORCH_FREE = ("archs", "info", "stretch", "squeeze", "compare")
# Commands that never train: the big blocks they free go back to the system (find does the same for its
# methods that do not train).
NO_TRAINING = (*TORCH_FREE, "import", "export", "align", "widen", "narrow")
# The parameters that name input tickets (True: a run folder is one too).
TICKET_PARAMS = {"source": False, "ticket": False, "ticket_path": False, "ticket_paths": True, "init_from": False,
                 "from_ticket": False, "like": False, "to": True}


def check_files(params: dict[str, Any]) -> None:
    """A command's input tickets exist, and its output (``-o``) can be written: not a folder, in a folder that
    exists and is writable, or stdout that is not a terminal; ``--log-dir`` has tensorboard and a folder."""
    for name, folder_ok in TICKET_PARAMS.items():
        given = params.get(name)
        for path in given if isinstance(given, (list, tuple)) else [given]:
            if isinstance(path, str):
                check_input_path(path, folder_ok)
    if isinstance(params.get("output"), str):
        check_output_path(params["output"], force=True)  # whether it may be replaced: the command's to say
    if params.get("log_dir") is not None:
        check_log_dir(params["log_dir"])
