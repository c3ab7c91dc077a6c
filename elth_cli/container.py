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
import io
import json
import os
import math
import re
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping

from elth_cli.errors import TicketError

if TYPE_CHECKING:
    import numpy as np

FILE_DIGEST_KEY = "file_sha256"
# The digest of format version 1 (tickets and checkpoints): the tensor bytes only.
PAYLOAD_DIGEST_KEY = "payload_sha256"
DIGEST_KEYS = (FILE_DIGEST_KEY, PAYLOAD_DIGEST_KEY)
ZEROS = "0" * 64
HEX64 = re.compile(r"[0-9a-f]{64}")
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
    if bytes(data[:8]).startswith(_TORCH_SAVE_MAGIC) and bytes(data[8:9]) != b"{":
        raise TicketError(f"{source} is a PyTorch file (torch.save: a .pth or .pt), not an elth ticket; turn an "
                          "open_lth / ElasticLTH run folder (mask.pth, model_ep*_it*.pth) into one with elth import "
                          "RUN_DIR --arch ARCH --dataset DATASET -o TICKET")
    if len(data) < 8:
        raise TicketError(f"{source} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
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


def _parse_header(data: bytes | bytearray | memoryview, source: str) -> tuple[int, dict[str, Any]]:
    """The header's length and its JSON object, with the framing checked (tensors within the file)."""
    n = header_length(data, source)
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
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
    return n, header


def read_header(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> dict[str, str]:
    """Check the safetensors framing (8-byte length + JSON header, tensors within the file) and return
    ``__metadata__``."""
    return _parse_header(data, source)[1].get("__metadata__") or {}


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


def digest_field(digest: str) -> bytes:
    """The bytes that record ``digest`` in a header."""
    # How safetensors writes the pair in its compact JSON header; the key is unique in the header, and
    # inside a metadata value its quotes would be escaped, so these bytes occur once.
    return f'"{FILE_DIGEST_KEY}":"{digest}"'.encode()


def file_digest(data: bytes, recorded: str) -> str | None:
    """sha256 of ``data`` with the recorded ``file_sha256`` digits zeroed (None when they are not in the
    header exactly once, as written)."""
    n = header_length(data, "data")
    field = digest_field(recorded)
    header = bytes(data[: 8 + n])
    at = header.find(field, 8)
    if at < 0 or header.find(field, at + 1) >= 0:
        return None
    h = hashlib.sha256(memoryview(data)[:at])
    h.update(digest_field(ZEROS))
    h.update(memoryview(data)[at + len(field):])
    return h.hexdigest()


def save_with_digest(tensors: Mapping[str, Any], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes of ``tensors`` whose metadata records the digest of the whole file (what
    :func:`write_tensors` writes, as bytes)."""
    buffer = io.BytesIO()
    write_tensors(buffer, tensors, metadata)
    return buffer.getvalue()


def check_integrity(data: bytes, meta: dict[str, str], source: str, whole_file: bool,
                    digest: str | None = None) -> str:
    """Refuse data that does not match its digest; return how it was checked (:data:`WHOLE_FILE`,
    :data:`PAYLOAD_ONLY` or :data:`UNCHECKED`).

    ``whole_file``: the file's format version carries the file digest, so it must have one. A file
    that has one is checked by it whatever its version says. Older versions are checked by their
    tensor digest where they have one. ``digest``: the file digest of ``data`` worked out already
    (:func:`elth_cli.digests.both_digests`).
    """
    # A file that carries the file digest is checked by it whatever its version says: an edited
    # format_version ("2" -> "1") must not turn the check off (the digest covers the version too).
    if whole_file or FILE_DIGEST_KEY in meta:
        recorded = meta.get(FILE_DIGEST_KEY)
        if recorded is None:
            raise TicketError(f"{source} is damaged: it lacks its digest ({FILE_DIGEST_KEY}), which every file of "
                              "its format version has; re-create it or copy it again")
        if not HEX64.fullmatch(recorded) or (digest or file_digest(data, recorded)) != recorded:
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


# ----- tensors, without torch ----------------------------------------------------------------------
# safetensors' dtype names and the numpy dtypes elth reads them as (little-endian, as the format is). bfloat16
# has no numpy dtype: its tensors are read as their uint16 bits, and TensorFile.bf16 names them.
NUMPY_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "<u2", "I16": "<i2", "F16": "<f2", "BF16": "<u2",
    "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
}
_SAFETENSORS_DTYPES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "float16": "F16",
                       "uint32": "U32", "int32": "I32", "float32": "F32", "uint64": "U64", "int64": "I64",
                       "float64": "F64"}


@dataclass
class TensorFile:
    """A safetensors file read without torch: its metadata and its tensors as numpy arrays.

    The arrays are views of the buffer the file was read into (no copy; a tensor whose offset does not
    suit its dtype's alignment is the exception, copied): a ticket of 300 MB takes 300 MB, once.
    """

    meta: dict[str, str]
    arrays: dict[str, np.ndarray]
    # The tensors stored as bfloat16 (their arrays hold the uint16 bits).
    bf16: frozenset[str] = frozenset()


def _entry_array(data: Any, start: int, name: str, entry: Any, source: str) -> tuple[np.ndarray, bool, int, int]:
    """One header entry's tensor as an array over ``data`` (payload ``start``), checked as safetensors
    checks it: a known dtype, a shape of whole numbers, offsets that hold exactly its bytes."""
    import numpy as np

    bad = f"{source} is not a readable safetensors file (tensor {name!r}: {{}}); the file may be truncated"
    if not isinstance(entry, dict) or entry.get("dtype") not in NUMPY_DTYPES:
        raise TicketError(bad.format(f"unknown dtype {entry.get('dtype') if isinstance(entry, dict) else entry!r}"))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise TicketError(bad.format(f"shape {shape!r} is not a list of sizes"))
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise TicketError(bad.format(f"data_offsets {offsets!r} are not two offsets"))
    dtype = np.dtype(NUMPY_DTYPES[entry["dtype"]])
    count = math.prod(shape)
    begin, end = offsets
    if end - begin != count * dtype.itemsize:
        raise TicketError(bad.format(f"its offsets hold {end - begin} bytes but its shape and dtype need "
                                     f"{count * dtype.itemsize}"))
    array = np.frombuffer(data, dtype, count, start + begin)
    if (start + begin) % dtype.itemsize:  # misaligned for its dtype: torch cannot share it, so copy once
        array = array.copy()
    return array.reshape(shape), entry["dtype"] == "BF16", begin, end


def read_tensors(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> TensorFile:
    """The metadata and tensors of safetensors bytes, as numpy arrays over ``data`` (no torch).

    Like safetensors, it refuses what is not a well-formed file: unknown dtypes, a shape that does not
    match its bytes, tensors that overlap or leave holes between them, bytes after the last one. Pass a
    ``bytearray`` for arrays that can be written to (and handed to torch without a copy).
    """
    n, header = _parse_header(data, source)
    arrays, bf16, spans = {}, set(), []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        arrays[name], is_bf16, begin, end = _entry_array(data, 8 + n, name, entry, source)
        spans.append((begin, end, name))
        if is_bf16:
            bf16.add(name)
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            what = "overlaps another" if begin < at else "leaves a gap before it"
            raise TicketError(f"{source} is not a readable safetensors file (tensor {name!r} {what}); the file may "
                              "be damaged")
        at = end
    if 8 + n + at != len(data):
        raise TicketError(f"{source} is not a readable safetensors file ({len(data) - 8 - n - at} bytes after its "
                          "last tensor); the file may be damaged")
    return TensorFile(header.get("__metadata__") or {}, arrays, frozenset(bf16))


def as_numpy(tensor: Any) -> tuple[np.ndarray, str]:
    """A tensor (numpy, or torch on any device) as a C-contiguous numpy array of its bytes and its safetensors
    dtype name; a CPU torch tensor is shared, not copied (bfloat16: its uint16 bits)."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        array = tensor if tensor.flags.c_contiguous else tensor.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        return array, _SAFETENSORS_DTYPES[array.dtype.name]
    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "BF16"
    array = t.numpy()
    return array, _SAFETENSORS_DTYPES[array.dtype.name]


def _bytes_of(array: np.ndarray) -> memoryview:
    import numpy as np

    return array.reshape(-1).view(np.uint8).data


def _header_bytes(entries: list[tuple[str, np.ndarray, str]], meta: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 as safetensors pads it."""
    header: dict[str, Any] = {"__metadata__": meta}
    at = 0
    for name, array, dtype in entries:
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [at, at + array.nbytes]}
        at += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_tensors(out: BinaryIO, tensors: Mapping[str, Any], metadata: dict[str, str]) -> str:
    """Write ``tensors`` (numpy arrays or torch tensors) as a safetensors file whose metadata records the digest
    of the whole file (``file_sha256``) to the stream ``out``; return the sha256 of the bytes written.

    No copy of the tensors is made (each one's bytes go to ``out`` from where they are): the digest is one
    pass over them, then the write and the file's own sha256 run side by side.
    """
    entries = [(name, *as_numpy(t)) for name, t in tensors.items()]
    # safetensors' order: wider dtypes first, then by name; every tensor then starts aligned for its dtype.
    entries.sort(key=lambda e: (-e[1].dtype.itemsize, e[0]))
    meta = {k: v for k, v in metadata.items() if k not in DIGEST_KEYS}
    meta[FILE_DIGEST_KEY] = ZEROS
    zeroed = _header_bytes(entries, meta)
    digest = hashlib.sha256(zeroed)
    for _, array, _ in entries:
        digest.update(_bytes_of(array))
    head = zeroed.replace(digest_field(ZEROS), digest_field(digest.hexdigest()), 1)
    whole = hashlib.sha256(head)
    hasher = threading.Thread(target=lambda: [whole.update(_bytes_of(a)) for _, a, _ in entries])
    hasher.start()  # hashlib and file writes let go of the GIL: both cores work
    try:
        out.write(head)
        for _, array, _ in entries:
            out.write(_bytes_of(array))
    finally:
        hasher.join()
    return whole.hexdigest()
