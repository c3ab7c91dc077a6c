"""Shared fixtures: small tickets built without any data set, and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket

ROOT = Path(__file__).resolve().parents[1]
DIGITS_SHAPE = (1, 8, 8)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def make_ticket(arch: str = "resnet20-w4", sparsity: float = 0.5, seed: int = 0,
                input_shape=DIGITS_SHAPE, num_classes: int = 10) -> Ticket:
    """A random ticket for a digits-shaped input (no data set is read)."""
    return random_ticket(arch, input_shape, num_classes, sparsity, seed=seed, dataset="digits")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node SLURM cluster of tests/slurm/cluster.sh, started here once per session if it is
    down and this is root (and then stopped at the end); the tests that use it skip, with the
    reason, when there is none."""
    from slurm import jobs

    was_up = jobs.cluster_up()
    problem = None if was_up else jobs.start_cluster()
    if problem:
        pytest.skip(f"no SLURM cluster: {problem}")
    yield
    if not was_up:
        jobs.stop_cluster()


@pytest.fixture
def ticket() -> Ticket:
    return make_ticket()


@pytest.fixture
def ticket_file(tmp_path: Path, ticket: Ticket) -> Path:
    path = tmp_path / "r20.safetensors"
    ticket.save(path)
    return path


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_elth(*args: str, stdin: bytes | None = None, cwd: Path | None = None, timeout: float = 300) -> Result:
    """Run the real CLI in a subprocess (exit status, streams and pipes exactly as a user sees them)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "elth_cli", *args], input=stdin, capture_output=True,
                          cwd=cwd, env=env, timeout=timeout)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def run_doc_commands(capsys, block: str, expected: int) -> list[str]:
    """Run the ``elth ...`` lines of a docs code block in this process, in order, trainings (train, IMP)
    shortened to 2 epochs; each must exit 0. Their command lines."""
    import shlex

    commands = [line.strip() for line in block.splitlines() if line.strip().startswith("elth ")]
    assert len(commands) == expected
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train" or "imp" in args:
            args += ["--epochs", "2"]
        r = run_in_process(capsys, *args)
        assert r.code == 0, (command, r.stderr)
    return commands


def run_in_process(capsys, *args: str) -> Result:
    """Run the CLI in this process (``cli.main``, the console script's code path, no second torch import)."""
    from elth_cli import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return Result(code if isinstance(code, int) else 0, out, err)


def signal_once(cmd: list[str], ready: Callable[[], bool], sig: int = signal.SIGTERM,
                what: str = "the run never got ready", wait_s: float = 240) -> tuple[int, bytes, bytes]:
    """Start ``cmd`` (with this checkout on PYTHONPATH), send ``sig`` once ``ready()`` holds, and return
    its exit status, stdout and stderr. Fails if it exits first or ``ready`` takes over ``wait_s``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=wait_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


def run_elth_bytes(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "elth_cli", *args], input=stdin, capture_output=True, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def assert_clean_error(result: Result, codes=(1, 2), contains: str | None = None) -> None:
    """A one-line error on stderr, an expected non-zero status, and no traceback (warnings that came
    before it, such as a recipe's warm-up longer than a short test run, are their own lines)."""
    assert result.code in codes, (result.code, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    if contains:
        assert contains.lower() in lines[0].lower(), lines[0]
