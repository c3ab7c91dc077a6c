"""The safetensors container every elth file is written in (tickets, checkpoints): framing checks,
and a digest of the whole file so that damage anywhere in it is noticed.

A safetensors file is 8 bytes of little-endian header length, a JSON header (tensor entries and a
``__metadata__`` map of strings), then the tensors' bytes. Safetensors has no checksum of its
own. elth records in the metadata, as ``file_sha256``, the sha256 of the whole file as written
with that value's 64 hex digits replaced by 64 zeros: header length, tensor names, dtypes,
shapes, offsets, every metadata value and every tensor byte are covered, the digest's own digits
excepted. A file of a format version that carries this digest is refused without it.

Files of the first format versions carried ``payload_sha256`` instead (the tensor bytes only):
they still load, with that weaker check (or none, when they predate it too), and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from typing import TYPE_CHECKING, Any

from elth_cli.errors import TicketError

if TYPE_CHECKING:
    from torch import Tensor

FILE_DIGEST_KEY = "file_sha256"
# The digest of format version 1 (tickets and checkpoints): the tensor bytes only.
PAYLOAD_DIGEST_KEY = "payload_sha256"
DIGEST_KEYS = (FILE_DIGEST_KEY, PAYLOAD_DIGEST_KEY)
_ZEROS = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A header larger than this is not an elth header (safetensors itself caps it at 100 MB).
MAX_HEADER = 100_000_000

# How well a file read back was checked (Ticket.integrity, `elth info`).
WHOLE_FILE = "file"  # the file digest covers every byte
PAYLOAD_ONLY = "payload"  # format 1: the tensor bytes only; the header is unchecked
UNCHECKED = "none"  # format 1, written before any digest
INTEGRITY_NOTES = {
    WHOLE_FILE: "the whole file matches its digest (file_sha256)",
    PAYLOAD_ONLY: "an older format: its tensor bytes match their digest (payload_sha256), its header is not covered",
    UNCHECKED: "an older format without a digest: damage cannot be detected",
}


# What torch.save writes: a zip archive (torch >= 1.6) or a bare pickle (older, or _use_new_zipfile_serialization=False).
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def header_length(data: bytes, source: str) -> int:
    """The JSON header's length, checked against the file's size."""
    # A safetensors header is JSON right after its 8-byte length: a length of 640, 896, 1152 or 1408 bytes starts
    # with the bytes of a pickle's protocol mark, so only a file without that "{" is taken for torch.save's.
    if data.startswith(_TORCH_SAVE_MAGIC) and data[8:9] != b"{":
        raise TicketError(f"{source} is a PyTorch file (torch.save: a .pth or .pt), not an elth ticket; turn an "
                          "open_lth / ElasticLTH run folder (mask.pth, model_ep*_it*.pth) into one with elth import "
                          "RUN_DIR --arch ARCH --dataset DATASET -o TICKET")
    if len(data) < 8:
        raise TicketError(f"{source} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > MAX_HEADER:
        raise TicketError(f"{source} is not a safetensors file (header length {n} is implausible)")
    if 8 + n > len(data):
        raise TicketError(f"{source} is truncated: its header needs {8 + n} bytes but the file has {len(data)}")
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with a repeated key, readers disagree on which value counts."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def read_header(data: bytes, source: str = "<bytes>") -> dict[str, str]:
    """Check the safetensors framing (8-byte length + JSON header, tensors within the file) and return
    ``__metadata__``."""
    n = header_length(data, source)
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TicketError(f"{source} is not a safetensors file (its header is not JSON)") from None
    except ValueError as e:
        raise TicketError(f"{source} is damaged: {e} in its header") from None
    if not isinstance(header, dict):
        raise TicketError(f"{source} is not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise TicketError(f"{source}: tensor entry {name!r} in the header is malformed") from None
    if 8 + n + end > len(data):
        raise TicketError(
            f"{source} is truncated: its tensors need {8 + n + end} bytes but the file has {len(data)}; re-create or re-copy it"
        )
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TicketError(f"{source}: __metadata__ must be a map of strings")
    return meta


def peek_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` an elth file declares, read from its header alone (``""``: a safetensors file of
    someone else; None: not a safetensors file at all, or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER:
                return None
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else ""


def payload_digest(data: bytes) -> str:
    """sha256 of a safetensors file's tensor bytes (everything after the header): format 1's digest."""
    return hashlib.sha256(memoryview(data)[8 + header_length(data, "data"):]).hexdigest()


def _digest_field(digest: str) -> bytes:
    # How safetensors writes the pair in its compact JSON header; the key is unique in the header, and
    # inside a metadata value its quotes would be escaped, so these bytes occur once.
    return f'"{FILE_DIGEST_KEY}":"{digest}"'.encode()


def file_digest(data: bytes, recorded: str) -> str | None:
    """sha256 of ``data`` with the recorded ``file_sha256`` digits zeroed (None when they are not in the
    header exactly once, as written)."""
    n = header_length(data, "data")
    field = _digest_field(recorded)
    at = data.find(field, 8, 8 + n)
    if at < 0 or data.find(field, at + 1, 8 + n) >= 0:
        return None
    h = hashlib.sha256(memoryview(data)[:at])
    h.update(_digest_field(_ZEROS))
    h.update(memoryview(data)[at + len(field):])
    return h.hexdigest()


def save_with_digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes of ``tensors`` whose metadata records the digest of the whole file."""
    from safetensors.torch import save as st_save

    meta = {k: v for k, v in metadata.items() if k not in DIGEST_KEYS}
    meta[FILE_DIGEST_KEY] = _ZEROS
    data = st_save(tensors, metadata=meta)
    n = header_length(data, "data")
    at = data.find(_digest_field(_ZEROS), 8, 8 + n)
    assert at >= 0, "safetensors wrote the header in an unexpected form"
    digest = hashlib.sha256(data).hexdigest()
    # Same length, so no offset moves.
    return data[:at] + _digest_field(digest) + data[at + len(_digest_field(digest)):]


def check_integrity(data: bytes, meta: dict[str, str], source: str, whole_file: bool) -> str:
    """Refuse data that does not match its digest; return how it was checked (:data:`WHOLE_FILE`,
    :data:`PAYLOAD_ONLY` or :data:`UNCHECKED`).

    ``whole_file``: the file's format version carries the file digest, so it must have one. A file
    that has one is checked by it whatever its version says. Older versions are checked by their
    tensor digest where they have one.
    """
    # A file that carries the file digest is checked by it whatever its version says: an edited
    # format_version ("2" -> "1") must not turn the check off (the digest covers the version too).
    if whole_file or FILE_DIGEST_KEY in meta:
        recorded = meta.get(FILE_DIGEST_KEY)
        if recorded is None:
            raise TicketError(f"{source} is damaged: it lacks its digest ({FILE_DIGEST_KEY}), which every file of "
                              "its format version has; re-create it or copy it again")
        if not _HEX64.fullmatch(recorded) or file_digest(data, recorded) != recorded:
            raise TicketError(f"{source} is damaged: its bytes do not match its digest ({FILE_DIGEST_KEY}); "
                              "re-create it or copy it again")
        return WHOLE_FILE
    recorded = meta.get(PAYLOAD_DIGEST_KEY)
    if recorded is None:
        return UNCHECKED
    if recorded != payload_digest(data):
        raise TicketError(f"{source} is damaged: its tensor data does not match its digest ({PAYLOAD_DIGEST_KEY}); "
                          "re-create it or copy it again")
    return PAYLOAD_ONLY
