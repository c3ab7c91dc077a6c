"""Start-up: help, version and the architecture list answer without importing torch, and Ctrl-C at any
moment of a command is one line on stderr and exit status 130, never a traceback.

(Wall times live in benchmarks/startup.py, not here: the machine is shared and noisy.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_ticket
from elth_cli.cli import app

COMMANDS = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]


def test_help_version_and_archs_do_not_import_torch() -> None:
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from elth_cli import cli
        heavy = ("torch", "torchvision", "numpy", "safetensors", "tensorboard")
        seen = {{}}
        for args in ([["--version"], ["--help"], ["archs", "--json"]]
                     + [[c, "--help"] for c in {COMMANDS!r}] + [[c, "-h"] for c in {COMMANDS!r}]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    cli.main(args)
                except SystemExit as e:
                    assert e.code in (0, None), (args, e.code)
            assert out.getvalue(), args
            seen[" ".join(args)] = sorted(m for m in heavy if m in sys.modules)
        print(json.dumps(seen))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert len(seen) == 3 + 2 * len(COMMANDS)
    assert all(imported == [] for imported in seen.values()), seen


def _interrupt(args: list[str], delay: float, cwd) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # SIGINT as a terminal gives it: a test run started in the background (`cmd &`, nohup, some CI
    # runners) hands its children SIGINT ignored, and Python keeps an ignored SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "elth_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Count the delay from the exec: a signal that reaches the child between fork and exec is lost
    # with the old program image (seen on a loaded CI machine: the training then ran to the end).
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while cmdline.exists() and b"elth_cli" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(errors="replace")


def _before_elth(code: int, err: str) -> bool:
    """Interrupted while the interpreter itself was starting, before any code of elth ran: Python dies by
    the signal (the shell shows 130), silently or with a traceback through runpy's search for the module
    that names no file of elth, or reports that it could not finish initialising."""
    if err.startswith(("Fatal Python error: init_", "Could not import runpy module")):
        return True
    return code == -signal.SIGINT and (err == "" or ("<frozen runpy>" in err and f"elth_cli{os.sep}" not in err))


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3, 0.6, 1.0, 2.0, 4.0])
def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path, delay) -> None:
    """SIGINT to `elth train` at moments that fall in the interpreter's start, the CLI's imports, torch's
    import, the data loading and the training itself (which checkpoints first)."""
    ticket = tmp_path / "t.safetensors"
    make_ticket("resnet8-w4").save(ticket)
    # Enough epochs that the last moment (4 s) still falls in the training, even on a fast machine.
    code, err = _interrupt(["train", str(ticket), "-o", str(tmp_path / "out.safetensors"), "--epochs", "30"],
                           delay, tmp_path)
    if _before_elth(code, err):
        return
    assert "Traceback" not in err, err
    assert code == 130, (code, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("epoch ")
             and " steps (" not in line]
    assert len(lines) == 1, err
    # One line, the stop lines' form: "elth train: interrupted by Ctrl-C" or "elth train: stopped by SIGINT ...".
    assert lines[0] == "elth train: interrupted by Ctrl-C" or lines[0].startswith("elth train: stopped by SIGINT"), err


def test_ctrl_c_during_archs(tmp_path) -> None:
    for delay in (0.1, 0.2, 0.3):
        code, err = _interrupt(["archs"], delay, tmp_path)
        if _before_elth(code, err):
            continue
        assert code in (0, 130), (code, err)
        assert err == ("elth archs: interrupted by Ctrl-C\n" if code == 130 else ""), err
