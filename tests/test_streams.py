"""Streams: with '-o -' stdout carries the ticket and nothing else, a terminal never gets binary, a
closed pipe is exit 141, outputs are checked before any work, --quiet only quiets stderr."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Result, assert_clean_error, make_ticket, run_in_process
from elth_cli import cli, container
from elth_cli.ticket import Ticket


def _bytes_run(capsysbinary, *args) -> tuple[int, bytes, str]:
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsysbinary.readouterr()
    return info.value.code or 0, out, err.decode()


@pytest.fixture
def r8(tmp_path: Path) -> Path:
    path = tmp_path / "r8.safetensors"
    make_ticket("resnet8-w4").save(path)
    return path


@pytest.mark.parametrize("case", ["random", "stretch", "squeeze", "train", "rigl", "early-bird", "import"])
def test_stdout_is_the_ticket_and_nothing_else(capsysbinary, tmp_path, r8, case):
    r14 = tmp_path / "r14.safetensors"
    make_ticket("resnet14-w4").save(r14)
    if case == "import":
        code, _, err = _bytes_run(capsysbinary, "export", r8, tmp_path / "run", "--quiet")
        assert code == 0, err
    args = {
        "random": ["find", "--method", "random", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5"],
        "stretch": ["stretch", r14, "--target", "resnet20"],
        "squeeze": ["squeeze", r14, "--target", "resnet8"],
        "train": ["train", r8, "--epochs", "1"],
        "rigl": ["find", "--method", "rigl", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5",
                 "--epochs", "2", "--update-every", "5"],
        "early-bird": ["find", "--method", "early-bird", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity",
                       "0.5", "--epochs", "3", "--window", "1", "--epsilon", "1"],
        "import": ["import", tmp_path / "run", "--arch", "resnet8-w4", "--dataset", "digits"],
    }[case]
    code, out, err = _bytes_run(capsysbinary, *args, "-o", "-")
    assert code == 0, err
    ticket = Ticket.from_bytes(out)
    # Nothing before or after it: the file ends where its header says its tensors end.
    header = json.loads(out[8:8 + container.header_length(out, "stdout")])
    end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    assert len(out) == 8 + container.header_length(out, "stdout") + end
    assert ticket.arch.startswith("resnet")


def test_a_terminal_gets_no_ticket(tmp_path, r8):
    """'-o -' with stdout on a terminal is refused before any work, as '-' from a terminal is."""
    leader, follower = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "elth_cli", "squeeze", str(r8), "--target", "resnet8", "-o", "-"],
                              stdout=follower, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              timeout=120)
    finally:
        os.close(follower)
        os.close(leader)
    r = Result(proc.returncode, "", proc.stderr.decode())
    assert_clean_error(r, codes=(2,), contains="stdout is a terminal")


def test_a_reader_that_closes_the_pipe_gives_141(tmp_path):
    """The reader went away: no traceback, exit 141 (128 + SIGPIPE), as `yes | head` gets."""
    proc = subprocess.Popen([sys.executable, "-m", "elth_cli", "find", "--method", "random", "--arch", "resnet56",
                             "--dataset", "cifar10", "--sparsity", "0.5", "-o", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    proc.stdout.close()  # before it writes: its write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_an_unwritable_folder_is_found_before_any_work(capsys, tmp_path, r8, monkeypatch):
    import elth_cli.fileio as fileio

    out = tmp_path / "locked" / "x.safetensors"
    out.parent.mkdir()
    real = os.access
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: False if Path(p) == out.parent else real(p, mode))
    r = run_in_process(capsys, "train", r8, "-o", out, "--epochs", "1")
    assert_clean_error(r, codes=(2,), contains=f"folder {out.parent} is not writable")
    assert "epoch" not in r.stderr


def test_a_failed_write_names_the_users_path_not_the_temporary_file(tmp_path, monkeypatch):
    import elth_cli.fileio as fileio
    from elth_cli.errors import ElthError

    target = tmp_path / "x.safetensors"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.safetensors.abc.tmp"))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(ElthError) as info:
        fileio.write_bytes_atomic(target, b"data")
    assert str(info.value).startswith(f"cannot write {target}: Permission denied") and ".tmp" not in str(info.value)


def test_quiet_silences_stderr_only(capsys, tmp_path, r8):
    trained = tmp_path / "t.safetensors"
    assert run_in_process(capsys, "train", r8, "-o", trained, "--epochs", "1", "-q").code == 0
    r = run_in_process(capsys, "eval", trained, "-q")
    assert r.code == 0 and r.stderr == "" and "accuracy" in r.stdout  # the result is data: it stays


def test_log_jsonl_is_not_overwritten_by_a_new_run(capsys, tmp_path, r8):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n')
    r = run_in_process(capsys, "train", r8, "-o", tmp_path / "t.safetensors", "--epochs", "1", "--log-jsonl", log)
    assert_clean_error(r, codes=(2,), contains="--log-jsonl")
    assert log.read_text() == '{"epoch": 1}\n'
    r = run_in_process(capsys, "train", r8, "-o", tmp_path / "t.safetensors", "--epochs", "1", "--log-jsonl", log,
                       "--force")
    assert r.code == 0 and len(log.read_text().splitlines()) == 1 and '"test_acc"' in log.read_text()


def test_a_pth_file_where_a_ticket_is_expected_points_to_import(capsys, tmp_path):
    import torch

    pth = tmp_path / "model_ep0_it0.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pth)
    r = run_in_process(capsys, "info", pth)
    assert_clean_error(r, codes=(1,), contains="is a PyTorch file")
    assert "elth import" in r.stderr


def test_tables_off_a_terminal_are_not_wrapped(capsys, tmp_path):
    folder = tmp_path / ("x" * 120) / ("y" * 120)
    folder.mkdir(parents=True)
    long_name = folder / "r8.safetensors"
    make_ticket("resnet8-w4").save(long_name)
    r = run_in_process(capsys, "compare", long_name, long_name)
    assert r.code == 0, r.stderr
    assert any(str(long_name) in line for line in r.stdout.splitlines())  # the whole name on one line


def test_shell_completion_is_available_and_answers():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # typer detects the shell from the process tree, which a CI runner need not have: its own switch
    # for tests makes --show-completion take the shell's name instead.
    proc = subprocess.run([sys.executable, "-m", "elth_cli", "--show-completion", "bash"], capture_output=True,
                          env={**env, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}, timeout=120)
    assert proc.returncode == 0 and b"_ELTH_COMPLETE=complete_bash" in proc.stdout, proc.stderr
    # What the installed script asks for when the user types `elth train --ep<TAB>`.
    proc = subprocess.run([sys.executable, "-m", "elth_cli"], capture_output=True, timeout=120,
                          env={**env, "COMP_WORDS": "elth train --ep", "COMP_CWORD": "2", "_ELTH_COMPLETE": "complete_bash"})
    assert proc.returncode == 0 and proc.stdout.split() == [b"--epochs"], (proc.stdout, proc.stderr)


def test_installing_prints_no_setuptools_warnings():
    """The licence is an SPDX string (the TOML table form is deprecated and warned about on every
    install), and the editable install is a plain .pth (setuptools' finder warns on every install)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])
    assert meta["tool"]["setuptools"]["package-dir"] == {"": "."}
    assert "elth_cli.data_files" in meta["tool"]["setuptools"]["packages"]


def test_ctrl_c_during_an_interpolation_is_the_stop_line_and_130(tmp_path):
    """compare --interpolate stopped by Ctrl-C: exit 130 and one line in the form of every stop line."""
    import signal
    import time

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ticket = make_ticket("resnet8-w4")
    trained = dataclasses.replace(ticket, trained=dict(ticket.init))
    trained.save(a)
    trained.save(b)
    proc = subprocess.Popen([sys.executable, "-m", "elth_cli", "compare", str(a), str(b), "--interpolate",
                             "--dataset", "digits", "--points", "500"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seen = b""
    deadline = time.monotonic() + 120
    while b"alpha" not in seen and time.monotonic() < deadline:  # the interpolation is under way
        seen += proc.stderr.read1(4096)
    proc.send_signal(signal.SIGINT)
    err = (seen + proc.stderr.read()).decode()
    assert proc.wait(timeout=60) == 130, err
    assert err.strip().splitlines()[-1] == "elth compare: interrupted by Ctrl-C" and "Traceback" not in err


def test_help_names_the_recipe_defaults_the_cache_folder_and_requires_an_import_data_set(capsys, tmp_path):
    r = subprocess.run([sys.executable, "-m", "elth_cli", "train", "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"), timeout=60)
    text = " ".join(r.stdout.split())  # help wraps its lines
    assert "[default: 0.1 CIFAR, 0.4 ImageNet, 0.1 MNIST, 0.05 digits, 0.001 ViT, 0.005 ViT digits]" in text
    assert "[default: 0.9 CIFAR, 0.9 ImageNet, 0 MNIST, 0.9 digits]" in text  # momentum: the SGD recipes only
    assert "~/.cache/elth/data" in text
    r = run_in_process(capsys, "import", tmp_path, "--arch", "resnet20", "-o", tmp_path / "x.safetensors")
    assert_clean_error(r, codes=(2,), contains="Missing option '--dataset'")


def test_a_reader_that_stops_early_gives_141_even_when_all_fit_in_the_pipe(tmp_path, r8):
    """`info T | head -1` exited 1 (rich's own broken-pipe exit), `find -o - | head -c 100` and `stretch -o - |
    head -c 100` exited 0 saying "wrote stdout": the ticket fits in the pipe's buffer, so no write failed."""
    elth = f"{sys.executable} -m elth_cli"
    r14, r302 = tmp_path / "r14.safetensors", tmp_path / "r302.safetensors"
    make_ticket("resnet14-w4").save(r14)
    # A text longer than head's first read (23 KB, head reads 8 KB): a short one may be read whole before head
    # exits when the machine is busy, and that is no early close (seen with r8's 1.8 KB under load).
    make_ticket("resnet302-w4").save(r302)
    cases = {
        f"{elth} info {r302} | head -1": 141,
        # Larger than what head reads at once (a short document may be read whole, and that is no early close).
        f"{elth} find --method random --arch resnet110-w4 --dataset digits --sparsity 0.5 -o - | {elth} info - --json "
        "| head -1": 141,
        f"{elth} find --method random --arch resnet8-w4 --dataset digits --sparsity 0.5 -o - | head -c 100": 141,
        f"{elth} stretch {r14} --target resnet20 -o - | head -c 100": 141,
        f"{elth} info {r8} | cat": 0,
        f"{elth} stretch {r14} --target resnet20 -o - | {elth} info - | tail -1": 0,
    }
    for line, code in cases.items():
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{line} > /dev/null"], capture_output=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
        err = proc.stderr.decode()
        assert proc.returncode == code, (line, proc.returncode, err)
        assert "Traceback" not in err and "Exception ignored" not in err, line
        if code == 141 and line.count("|") == 1:  # the ticket's writer itself read by head: it never says it wrote
            assert "wrote stdout" not in err and "-> stdout" not in err, (line, err)


@pytest.fixture
def read_only(tmp_path):
    """A folder on a read-only mount (a real EROFS even for root), or skip where mounts are not allowed."""
    src, mnt = tmp_path / "ro-src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_every_output_path_is_checked_before_any_work_with_one_wording(capsys, tmp_path, r8, read_only):
    """An unwritable --checkpoint folder was found after the whole training (issue 28, item 6): every place a
    command writes is checked first, exit 2, one wording naming the user's path, never a lock or .tmp file."""
    ok = tmp_path / "ok"
    ok.mkdir()
    r14 = tmp_path / "r14.safetensors"
    make_ticket("resnet14-w4").save(r14)
    trained = tmp_path / "trained.safetensors"
    assert run_in_process(capsys, "train", r8, "-o", trained, "--epochs", "1", "-q").code == 0
    cases = [
        (["train", r8, "-o", read_only / "x.safetensors"], read_only / "x.safetensors"),
        (["train", r8, "-o", ok / "x.safetensors", "--checkpoint", read_only / "x.ckpt"], read_only / "x.ckpt"),
        (["train", r8, "-o", ok / "y.safetensors", "--log-jsonl", read_only / "x.jsonl"], read_only / "x.jsonl"),
        (["train", r8, "--out-dir", read_only / "several"], read_only / "several"),
        (["stretch", r14, "--target", "resnet20", "-o", read_only / "s.safetensors"], read_only / "s.safetensors"),
        (["find", "--method", "random", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5",
          "-o", read_only / "f.safetensors"], read_only / "f.safetensors"),
        (["find", "--method", "imp", "--arch", "resnet8-w4", "--dataset", "digits", "--rounds", "1",
          "--out-dir", read_only / "run"], read_only / "run"),
        (["compare", r8, trained, "--plot", read_only / "p.png"], read_only / "p.png"),
        (["export", trained, read_only / "exported"], read_only / "exported"),
    ]
    for args, named in cases:
        r = run_in_process(capsys, *args)
        assert_clean_error(r, codes=(2,), contains=f"folder {read_only}")
        assert str(named) in r.stderr and ".lock" not in r.stderr and ".tmp" not in r.stderr, r.stderr
        assert "is not writable; choose another path or fix its permissions" in r.stderr, r.stderr
        assert "epoch" not in r.stderr, args  # refused before any training
    assert list(read_only.iterdir()) == [] and not list(ok.iterdir())
