"""Atomic output files: nothing half-written is ever left where the user expects a result."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from elth_cli.errors import UsageError

STDIO = "-"


def check_output_path(path: str | os.PathLike[str], force: bool = False) -> None:
    """Refuse to overwrite an existing output unless ``force``; check its folder exists."""
    if str(path) == STDIO:
        return
    p = Path(path)
    if p.exists() and not force:
        raise UsageError(f"output {p} already exists; pass --force to overwrite it or choose another path")
    if not p.parent.exists():
        raise UsageError(f"folder {p.parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (or stdout for ``-``) through a temporary file and a rename."""
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


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
