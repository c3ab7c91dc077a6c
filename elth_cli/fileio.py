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
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from elth_cli.errors import ElthError, UsageError

STDIO = "-"


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
    if not p.parent.exists():
        raise UsageError(f"folder {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise UsageError(f"folder {p.parent} is not writable; choose another output path or fix its permissions")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        # The error names the temporary file beside the output: say it with the user's path.
        was = "left as it was" if Path(path).exists() else "not created"
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ElthError(f"cannot write {path}: {e.strerror} ({len(data):,} bytes); the file was {was}; free "
                            "some space (or raise the limit) and run the command again") from None
        raise ElthError(f"cannot write {path}: {e.strerror or e}; the file was {was}; check the folder "
                        f"{Path(path).parent} and its permissions") from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a whole input file, or stdin for ``-``."""
    if str(path) == STDIO:
        if sys.stdin.isatty():
            raise UsageError("input '-' means stdin, but stdin is a terminal; pipe a ticket in")
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise UsageError(f"input {p} does not exist")
    if p.is_dir():
        raise UsageError(f"input {p} is a folder, not a ticket file")
    return p.read_bytes()


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

        if not self.path.parent.is_dir():
            raise UsageError(f"folder {self.path.parent} does not exist; create it first")
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
