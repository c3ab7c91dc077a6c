"""The safetensors container every elth file is written in (tickets, checkpoints): framing checks,
and a digest of the tensor payload so that silent corruption is noticed.

A safetensors file is 8 bytes of little-endian header length, a JSON header (tensor entries and a
``__metadata__`` map of strings), then the tensors' bytes. Safetensors has no checksum of its
own: elth records the sha256 of those bytes in the metadata as ``payload_sha256`` and checks it
on every load. Files written before the digest existed have none and load as before.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import TYPE_CHECKING

from elth_cli.errors import TicketError

if TYPE_CHECKING:
    from torch import Tensor

DIGEST_KEY = "payload_sha256"
# A header larger than this is not an elth header (safetensors itself caps it at 100 MB).
MAX_HEADER = 100_000_000


# What torch.save writes: a zip archive (torch >= 1.6) or a bare pickle (older, or _use_new_zipfile_serialization=False).
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def header_length(data: bytes, source: str) -> int:
    """The JSON header's length, checked against the file's size."""
    if data.startswith(_TORCH_SAVE_MAGIC):
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


def read_header(data: bytes, source: str = "<bytes>") -> dict[str, str]:
    """Check the safetensors framing (8-byte length + JSON header, tensors within the file) and return
    ``__metadata__``."""
    n = header_length(data, source)
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TicketError(f"{source} is not a safetensors file (its header is not JSON)") from None
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


def payload_digest(data: bytes) -> str:
    """sha256 of a safetensors file's tensor bytes (everything after the header)."""
    return hashlib.sha256(memoryview(data)[8 + header_length(data, "data"):]).hexdigest()


def save_with_digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes of ``tensors`` whose metadata records the payload's digest."""
    from safetensors.torch import save as st_save

    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    first = st_save(tensors, metadata=meta)
    # The payload does not depend on the header, so the second pass only grows the header.
    meta[DIGEST_KEY] = payload_digest(first)
    return st_save(tensors, metadata=meta)


def check_digest(data: bytes, meta: dict[str, str], source: str) -> None:
    """Refuse data whose tensor bytes do not match the digest its metadata records (none: nothing to check)."""
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        return
    if recorded != payload_digest(data):
        raise TicketError(f"{source} is damaged: its tensor data does not match its digest ({DIGEST_KEY}); "
                          "re-create it or copy it again")
