"""Output files: nothing half-written is ever left where the user expects a result, and one process
at a time writes a run.

* :func:`write_bytes_atomic` writes through a temporary file and a rename: a crash, a kill or a
  full disk leaves the previous file (or none), never a partial one;
* :class:`WriterLock` is an advisory lock (``flock``) that a command holds for as long as it
  writes a run's files, so a second job given the same output gets one line naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import mmap
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

from elth_cli import stops
from elth_cli.errors import ElthError, UsageError

STDIO = "-"
T = TypeVar("T")


def check_output_path(path: str | os.PathLike[str], force: bool = False) -> None:
    """Before any work: refuse to overwrite an existing output unless ``force``, a missing or
    unwritable folder, and a binary ticket for stdout when stdout is a terminal."""
    if str(path) == STDIO:
        if sys.stdout.isatty():
            raise UsageError("output '-' means stdout, but stdout is a terminal and a ticket is binary; redirect it "
                             "(> FILE) or pipe it (| elth info -)")
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"output {p} is a folder; give a file name")
    if p.exists() and not force:
        raise UsageError(f"output {p} already exists; pass --force to overwrite it or choose another path")
    check_writable_folder(p.parent, p)


def check_side_file(path: str | os.PathLike[str], what: str) -> None:
    """Before any work: a file the command writes besides its output (checkpoint, log, plot) can be
    written: not a folder, in a folder that exists and is writable."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a file name")
    check_writable_folder(p.parent, p)


def check_writable_folder(folder: str | os.PathLike[str], target: str | os.PathLike[str],
                          create: bool = False) -> None:
    """Before any work, the one check (and wording) of every place a command writes: ``folder`` exists (or,
    with ``create``, its nearest existing parent) and is a writable folder. The message names the user's
    ``target`` (an output, a checkpoint, a run folder), never a temporary or lock file."""
    folder = Path(folder)
    existing = folder
    while create and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.exists():
        raise UsageError(f"cannot write {target}: folder {folder} does not exist; create it first")
    if not existing.is_dir():
        raise UsageError(f"cannot write {target}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {target}: folder {existing} is not writable; choose another path or fix its "
                         "permissions")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (links and ``..`` resolved; the file need not exist)."""
    if STDIO in (str(a), str(b)):
        return False
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def check_distinct(paths: dict[str, str | os.PathLike[str] | None]) -> None:
    """Before any work: each file a command reads or writes in a role of its own is a different file
    (``-o X --checkpoint X`` would delete the result with the checkpoint)."""
    named = [(role, p) for role, p in paths.items() if p is not None and str(p) != STDIO]
    for i, (role_a, a) in enumerate(named):
        for role_b, b in named[i + 1:]:
            if same_file(a, b):
                raise UsageError(f"{role_a} and {role_b} are the same file ({a}); give each its own path")


def is_epoch_log(path: str | os.PathLike[str], limit: int = 64 << 20) -> bool:
    """Whether ``path`` holds an epoch log as ``--log-jsonl`` writes it (JSON objects with ``epoch`` and
    ``step``, one per line; empty counts): what a new run of the same command may rewrite."""
    import json

    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > limit:
            return False
        lines = p.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return all(isinstance(r, dict) and "epoch" in r and "step" in r for r in records)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    with stops.held():  # a stop waits for the rename (or the clean-up), never leaves a temporary file
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            # mkstemp makes the file private (0600); give it the permissions a plain open() would.
            os.chmod(tmp_path, 0o666 & ~current_umask())
            yield tmp_path
            os.replace(tmp_path, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise


# A temporary file names its writer: ".r20.safetensors.<host>.<pid>.<random>.tmp".
_STALE_AFTER_S = 3600.0  # a temporary of another host unchanged this long is no write in progress


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{_host_tag()}.{os.getpid()}."


def _host_tag() -> str:
    return "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())[:40] or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this host (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporary files of ``target`` that a killed writer left (SIGKILL, a node failure): those of
    this host whose process is gone, and those of other hosts untouched for an hour. Return them."""
    removed = []
    prefix = f".{target.name}."
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            name = p.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            parts = name[len(prefix):-len(".tmp")].split(".")
            if len(parts) < 3 or not parts[-2].isdigit():
                continue  # not one of ours (another name that happens to start alike)
            host, pid = ".".join(parts[:-2]), int(parts[-2])
            try:
                stale = (not pid_alive(pid)) if host == _host_tag() else \
                    time.time() - p.stat().st_mtime > _STALE_AFTER_S
                if stale:
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue
    return removed


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (or stdout for ``-``) through a temporary file and a rename.

    A write that fails (a full disk, a file-size limit, a quota) leaves ``path`` as it was and
    says so in one line.
    """
    write_atomic(path, lambda f: f.write(data), len(data))


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], T], size: int | None = None) -> T:
    """Call ``write(stream)`` on a temporary file beside ``path`` (or on stdout for ``-``), flush it to the disk,
    rename it onto ``path``, and return what ``write`` returned: a file is whole or not there. ``size`` (bytes)
    is only for the message of a full disk."""
    if str(path) == STDIO:
        result = write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        if stdout_left_unread():  # before anyone says "wrote stdout"
            raise BrokenPipeError
        return result
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                result = write(f)
                f.flush()
                os.fsync(f.fileno())
        return result
    except OSError as e:
        # The error names the temporary file beside the output: say it with the user's path.
        was = "left as it was" if Path(path).exists() else "not created"
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ElthError(f"cannot write {path}: {e.strerror}{f' ({size:,} bytes)' if size else ''}; the file was "
                            f"{was}; free some space (or raise the limit) and run the command again") from None
        raise ElthError(f"cannot write {path}: {e.strerror or e}; the file was {was}; check the folder "
                        f"{Path(path).parent} and its permissions") from None


def stdout_left_unread(wait_s: float = 1.0) -> bool:
    """Whether the reader of a stdout pipe went away before reading all that was written (``| head``).

    A ticket or document that fits in the pipe's buffer is written without error even when the reader
    closes early, so a closed pipe would go unnoticed; this waits (up to ``wait_s``, for a reader
    that is still reading) until the pipe is drained or its reader is gone with bytes unread.
    """
    import fcntl
    import select
    import stat
    import struct
    import termios
    import time

    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR (the read end closed) is always reported
        deadline = time.monotonic() + wait_s
        while True:
            unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if unread == 0:
                return False
            if poller.poll(5):
                return True
            if time.monotonic() > deadline:
                return False  # a reader that reads later (after we exit) gets the rest
    except (OSError, ValueError, AttributeError):
        return False


def check_input_path(path: str | os.PathLike[str], folder_ok: bool = False) -> None:
    """Before any work: an input file exists and is a file, or a folder where ``folder_ok`` (``-``: stdin is
    not a terminal)."""
    if str(path) == STDIO:
        if sys.stdin.isatty():
            raise UsageError("input '-' means stdin, but stdin is a terminal; pipe a ticket in")
        return
    p = Path(path)
    if not p.exists():
        raise UsageError(f"input {p} does not exist")
    if p.is_dir() and not folder_ok:
        raise UsageError(f"input {p} is a folder, not a ticket file")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a whole input file, or stdin for ``-``."""
    check_input_path(path)
    return sys.stdin.buffer.read() if str(path) == STDIO else Path(path).read_bytes()


_READ_PIECE = 64 << 20


def read_buffer(path: str | os.PathLike[str], writable: bool = False) -> bytes | memoryview:
    """Read a whole input file (or stdin for ``-``) into one buffer that numpy and torch arrays can share.

    Read-only: the file mapped (no copy; 302 MB mapped and hashed in 0.30 s where a read alone took 0.30 s and
    its hash 0.29 s more, on the 2-core machine). ``writable``: an anonymous mapping filled in 64 MiB pieces,
    memory of its own that arrays may write to and that a later change of the file cannot touch (a numpy
    array's memory is slower: for a big one numpy asks for huge pages, whose faults can stall; 1.5 GB took
    4.8 s that way, 1.3 s so).
    """
    check_input_path(path)
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        return memoryview(bytearray(data)) if writable else data
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if not writable:
            # A read-only mapping: no copy at all, the page cache's own pages (a command that only reads maps its
            # tickets for the few seconds it runs; elth replaces files by rename, which leaves a mapping intact).
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if size == 0:
            return memoryview(bytearray())
        buffer = mmap.mmap(-1, size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = f.readinto(view[got:got + _READ_PIECE])
            if not n:  # the file shrank while it was read: what is there
                return view[:got]
            got += n
        rest = f.read()  # it grew: keep all of it
    return memoryview(bytearray(view) + rest) if rest else view


# Where flock cannot work: no lock support on the file system (some network file systems).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WriterLock:
    """An advisory lock on ``path`` that one process holds while it writes ``what``.

    The lock is ``flock`` on a small file naming the holder (pid, host, since when). The operating
    system releases it when the holder exits, however it exits, so a lock left by a dead or killed
    process never blocks. On a file system without lock support (``flock`` fails with ENOLCK or
    EOPNOTSUPP) elth warns once and goes on without the lock.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ElthError naming the process that holds it."""
        import fcntl

        check_writable_folder(self.path.parent, self.what)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ElthError(f"{self.what} is being written by {holder} (lock {self.path}); wait for it to "
                                "finish or stop it, then run the command again") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_LOCKS:
                    raise
                print(f"warning: file locks do not work in {self.path.parent} ({e.strerror}); nothing stops a "
                      f"second job from writing {self.what} at the same time", file=sys.stderr)
                return
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file as we opened it: lock the new one
                os.close(fd)
        note = f"pid {os.getpid()} on {socket.gethostname()} since {_dt.datetime.now().isoformat(timespec='seconds')}"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, note.encode() + b"\n", 0)

    def release(self) -> None:
        """Remove the lock file, then let go (a no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def clear_stale(self) -> bool:
        """Remove the lock file a dead writer left (a command that only reads the run takes no lock): only when
        no one holds it and the folder can be written; return whether it was removed."""
        import fcntl

        if not self.path.exists() or not os.access(self.path.parent, os.W_OK | os.X_OK):
            return False
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # a live holder (or no lock support): leave it
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(fd)
        return True

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
