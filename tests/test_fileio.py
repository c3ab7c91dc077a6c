"""Output files: one writer per run (advisory locks), and failed writes that leave the old file.

Fault injection: a file-size limit on the process (RLIMIT_FSIZE, with SIGXFSZ ignored) makes a
write fail as a full disk does (EFBIG rather than ENOSPC); a second process holds a run's lock.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, Result, assert_clean_error, make_ticket, signal_once
from elth_cli import data, fileio, train
from elth_cli.errors import ElthError
from elth_cli.find import ImpOptions, find_imp


def _holder(lock_path, seconds: float = 60) -> subprocess.Popen:
    """Another process that takes the lock and keeps it."""
    code = textwrap.dedent(f"""
        import sys, time
        from elth_cli.fileio import WriterLock
        WriterLock({str(lock_path)!r}, "the run").acquire()
        print("held", flush=True)
        time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path) -> None:
    lock = tmp_path / "out.safetensors.lock"
    holder = _holder(lock)
    try:
        with pytest.raises(ElthError, match=rf"is being written by pid {holder.pid} on \S+ since .*; wait for it"):
            fileio.WriterLock(lock, "the training of out.safetensors").acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the OS released its lock, and the file it left never blocks.
    assert lock.exists()
    with fileio.WriterLock(lock, "the run"):
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    assert not lock.exists()


def test_without_lock_support_it_warns_and_goes_on(tmp_path, monkeypatch, capsys) -> None:
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with fileio.WriterLock(tmp_path / "x.lock", "the run"):
        pass
    err = capsys.readouterr().err
    assert err.startswith("warning: file locks do not work in") and "nothing stops a second job" in err


def test_imp_refuses_a_folder_another_process_writes(tmp_path) -> None:
    bundle = data.load_dataset("digits")
    cfg = train.default_recipe(make_ticket("resnet8-w4").spec, bundle.info).replace(epochs=1)
    (tmp_path / "run").mkdir()
    holder = _holder(tmp_path / "run" / "find.lock")
    try:
        with pytest.raises(ElthError, match=f"the IMP run in .* is being written by pid {holder.pid}"):
            find_imp(ImpOptions("resnet8-w4", "digits", rounds=1), cfg, bundle, tmp_path / "run", handle_signals=False)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["find.lock"]  # nothing else written


def test_a_second_train_of_the_same_output_is_one_line(tmp_path) -> None:
    ticket = tmp_path / "t.safetensors"
    make_ticket("resnet8-w4").save(ticket)
    out = tmp_path / "out.safetensors"
    holder = _holder(tmp_path / "out.safetensors.lock")
    try:
        proc = subprocess.run([sys.executable, "-m", "elth_cli", "train", str(ticket), "-o", str(out)],
                              capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert_clean_error(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), (1,),
                       f"the training of {out} is being written by pid {holder.pid}")
    assert not out.exists() and not train.checkpoint_path_for(out).exists()


def test_a_train_of_another_output_with_the_same_checkpoint_is_refused(tmp_path) -> None:
    """The lock covers --checkpoint too: two jobs with different outputs but one checkpoint file would
    overwrite each other's state."""
    ticket = tmp_path / "t.safetensors"
    make_ticket("resnet8-w4").save(ticket)
    shared = tmp_path / "shared.ckpt"
    holder = _holder(tmp_path / "shared.ckpt.lock")
    try:
        proc = subprocess.run([sys.executable, "-m", "elth_cli", "train", str(ticket), "-o", str(tmp_path / "b.safetensors"),
                               "--checkpoint", str(shared)],
                              capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert_clean_error(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), (1,),
                       f"is being written by pid {holder.pid}")
    assert not (tmp_path / "b.safetensors").exists() and not shared.exists()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_leaves_the_previous_file_and_says_why(tmp_path) -> None:
    source = tmp_path / "r20.safetensors"
    make_ticket("resnet20-w4").save(source)
    out = tmp_path / "r32.safetensors"
    out.write_bytes(b"the previous result")
    proc = subprocess.run([sys.executable, "-m", "elth_cli", "stretch", str(source), "--target", "resnet32",
                           "-o", str(out), "--force"], capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          preexec_fn=_limit_file_size(20_000), timeout=120)
    result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert_clean_error(result, (1,), f"cannot write {out}: File too large")
    assert "the file was left as it was" in result.stderr
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.safetensors", "r32.safetensors"]  # no temporary file


def test_a_failed_checkpoint_write_keeps_the_last_checkpoint(tmp_path) -> None:
    """A resumed training whose next checkpoint does not fit stops with the reason; the last good
    checkpoint stays, and the run resumes from it once there is room again."""
    path, out, log = tmp_path / "t.safetensors", tmp_path / "out.safetensors", tmp_path / "log.jsonl"
    make_ticket("resnet8-w4").save(path)
    ckpt = train.checkpoint_path_for(out)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "elth_cli", "train", str(path), "-o", str(out), "--epochs", "6", "--log-jsonl", str(log),
           "--checkpoint-every", "0"]  # every epoch: the resumed run's next one does not fit
    # Once the first epoch's record is out, its checkpoint is written.
    code, _, _ = signal_once(cmd, lambda: log.exists() and bool(log.read_text().strip()))
    assert code == 75
    good = train.read_checkpoint(ckpt).step
    limited = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, timeout=300,
                             preexec_fn=_limit_file_size(ckpt.stat().st_size // 2))
    result = Result(limited.returncode, limited.stdout.decode(), limited.stderr.decode())
    assert_clean_error(result, (1,), f"cannot write {ckpt}: File too large")
    assert train.read_checkpoint(ckpt).step == good and not out.exists()
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert f"from step {good} (resumed)" in again.stderr.decode() and out.exists() and not ckpt.exists()


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path) -> None:
    """A writer killed with SIGKILL leaves its temporary file; the next write of that file removes it, and
    never one of a writer that is alive or a file that is not elth's."""
    import os
    import subprocess
    import sys

    from elth_cli import fileio

    target = tmp_path / "r20.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = fileio._host_tag()
    stale = tmp_path / f".r20.safetensors.{host}.{dead.pid}.abc123.tmp"
    alive = tmp_path / f".r20.safetensors.{host}.{os.getpid()}.def456.tmp"
    foreign = tmp_path / ".r20.safetensors.notes.tmp"
    for p in (stale, alive, foreign):
        p.write_bytes(b"partial")
    fileio.write_bytes_atomic(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and alive.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted([alive.name, foreign.name])


def test_export_onto_a_full_disk_is_one_line(tmp_path) -> None:
    """torch.save onto a full disk printed a 30-line traceback (issue 28, item 1)."""
    ticket = tmp_path / "t.safetensors"
    make_ticket("resnet8-w4").save(ticket)
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "elth_cli", "export", str(ticket), str(out)], capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120, preexec_fn=_limit_file_size(4096))
    assert_clean_error(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), (1,),
                       f"cannot write {out}: File too large; the folder was not created; free some space")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
