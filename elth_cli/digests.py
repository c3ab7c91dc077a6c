"""Digests of big files worked out beside the work: the sha256 of a buffer on a thread of its own, and a
ticket's two digests (its sha256 and its file digest) worked out while the command starts, from the
file itself, a mapped window at a time.

A command that only reads tickets (info, stretch, squeeze, compare) starts :func:`hash_ahead` on its
arguments before its command line is even parsed; hashing lets go of the interpreter, so it runs on
the other core beside the imports. :meth:`elth_cli.ticket.Ticket.load` then takes them
(:func:`digests_ahead`) when the file is still the one hashed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import struct
import threading
from typing import Any, BinaryIO, Iterable

from elth_cli.container import FILE_DIGEST_KEY, HEX64, MAX_HEADER, ZEROS, digest_field, file_digest, read_header
from elth_cli.errors import TicketError


def file_key(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """What identifies a file's bytes between two looks at it (device, inode, size, modification time in ns);
    None when it is not a regular file. elth replaces a file by a rename, which gives it a new inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def both_digests(data: bytes | memoryview | Any) -> tuple[str, str | None]:
    """The sha256 of ``data`` and its file digest (:func:`file_digest` of the digest its header records; None
    where it records none, or not once), side by side on two threads."""
    whole = Sha256Beside(data)
    try:
        recorded = read_header(data).get(FILE_DIGEST_KEY)
        zeroed = file_digest(data, recorded) if recorded is not None and HEX64.fullmatch(recorded) else None
    except TicketError:
        zeroed = None
    return whole.result(), zeroed


class Sha256Beside:
    """The sha256 of a buffer, worked out on a thread of its own (hashlib lets go of the interpreter)."""

    def __init__(self, data: bytes | bytearray | memoryview | Any) -> None:
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._hash.update, args=(memoryview(data),))
        self._thread.start()

    def result(self) -> str:
        self._thread.join()
        return self._hash.hexdigest()


_PIECE = 64 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY
_AHEAD: dict[tuple[int, int, int, int], "_DigestsAhead"] = {}
AHEAD_FROM = 16 << 20  # a file smaller than this is hashed by the command when it reads it


class _DigestsAhead:
    """:func:`both_digests` of a file, worked out on two threads of their own that read it in pieces (a few
    MiB of memory, however big the file: a comparison of several big tickets holds none of them twice)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._whole: str | None = None
        self._zeroed: str | None = None
        self._failed = False
        self._threads = [threading.Thread(target=self._guarded, args=(job,), daemon=True)
                         for job in (self._hash_whole, self._hash_zeroed)]
        for thread in self._threads:
            thread.start()

    def _guarded(self, job: Any) -> None:
        try:
            job()
        except Exception:  # noqa: BLE001 - only a head start: the command reads the file itself and says what is wrong
            self._failed = True

    def _pieces(self, f: BinaryIO, start: int = 0) -> Iterable[memoryview]:
        """The file from ``start`` to its end, mapped a window at a time (no copy; one window resident)."""
        size = os.fstat(f.fileno()).st_size
        for offset in range(start - start % _PIECE, size, _PIECE):
            with mmap.mmap(f.fileno(), min(_PIECE, size - offset), offset=offset, access=mmap.ACCESS_READ) as window:
                view = memoryview(window)
                piece = view[max(start - offset, 0):]
                try:
                    yield piece
                finally:
                    piece.release()
                    view.release()

    def _hash_whole(self) -> None:
        whole = hashlib.sha256()
        with open(self.path, "rb", buffering=0) as f:
            for piece in self._pieces(f):
                whole.update(piece)
        self._whole = whole.hexdigest()

    def _hash_zeroed(self) -> None:
        with open(self.path, "rb", buffering=0) as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            if not 0 < n <= MAX_HEADER:
                return
            header = head + f.read(n)
            meta = json.loads(header[8:].decode("utf-8"))
            meta = meta.get("__metadata__") if isinstance(meta, dict) else None
            recorded = meta.get(FILE_DIGEST_KEY) if isinstance(meta, dict) else None
            if not isinstance(recorded, str) or not HEX64.fullmatch(recorded):
                return
            field = digest_field(recorded)
            at = header.find(field, 8)
            if at < 0 or header.find(field, at + 1) >= 0:
                return
            zeroed = hashlib.sha256(header[:at])
            zeroed.update(digest_field(ZEROS))
            zeroed.update(header[at + len(field):])
            for piece in self._pieces(f, 8 + n):
                zeroed.update(piece)
        self._zeroed = zeroed.hexdigest()

    def result(self) -> tuple[str, str | None] | None:
        for thread in self._threads:
            thread.join()
        return None if self._failed or self._whole is None else (self._whole, self._zeroed)


def hash_ahead(paths: Iterable[str]) -> None:
    """Start working out the digests of the big files among ``paths`` (those that exist), each on a thread of
    its own, while the command starts: hashing lets go of the interpreter, so it runs beside the imports. A
    command that only reads tickets calls it with its arguments before it parses them."""
    for path in paths:
        key = file_key(path)
        if key is not None and key[2] >= AHEAD_FROM and key not in _AHEAD:
            _AHEAD[key] = _DigestsAhead(path)


def digests_ahead(key: tuple[int, int, int, int] | None) -> tuple[str, str | None] | None:
    """The digests :func:`hash_ahead` worked out for the file of this :func:`file_key`, if it did (once)."""
    ahead = _AHEAD.pop(key, None) if key is not None else None
    return ahead.result() if ahead is not None else None
