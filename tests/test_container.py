"""The digest of tickets and checkpoints: damage anywhere in a file is noticed, old files still load."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import make_ticket, run_elth
from elth_cli import container, data, train
from elth_cli.errors import ElthError, TicketError
from elth_cli.ticket import Ticket


def _header(raw: bytes) -> dict:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def _flip_in(raw: bytes, tensor: str, offset: int = 0) -> bytes:
    """``raw`` with one byte of ``tensor``'s data flipped (header untouched)."""
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n + _header(raw)[tensor]["data_offsets"][0] + offset
    out = bytearray(raw)
    out[start] ^= 0x10
    return bytes(out)


def _rewrite(raw: bytes, edit_meta=None, rename: dict[str, str] | None = None) -> bytes:
    """``raw`` written again with its metadata edited and tensors renamed, keeping its digest as it was
    (what an edit by hand or a damaged header looks like)."""
    meta = dict(_header(raw)["__metadata__"])
    if edit_meta is not None:
        edit_meta(meta)
    tensors = st_load(raw)
    for old, new in (rename or {}).items():
        tensors[old], tensors[new] = tensors[new], tensors[old]
    return st_save(tensors, metadata=meta)


def _as_version_1(raw: bytes, with_digest: bool = True) -> bytes:
    """A ticket or checkpoint as format version 1 wrote it: the tensor bytes' digest or none."""
    def edit(meta: dict) -> None:
        meta["format_version"] = "1"
        del meta[container.FILE_DIGEST_KEY]
    old = _rewrite(raw, edit)
    if not with_digest:
        return old
    meta = dict(_header(old)["__metadata__"], **{container.PAYLOAD_DIGEST_KEY: container.payload_digest(old)})
    return st_save(st_load(old), metadata=meta)


def test_every_ticket_records_the_digest_of_the_whole_file_and_it_holds() -> None:
    raw = make_ticket("resnet8-w4").to_bytes()
    recorded = container.read_header(raw)[container.FILE_DIGEST_KEY]
    assert container.file_digest(raw, recorded) == recorded
    # By hand, as docs/ticket-format.md says: zero the digest's digits and hash every byte.
    import hashlib
    zeroed = raw.replace(f'"file_sha256":"{recorded}"'.encode(), b'"file_sha256":"' + b"0" * 64 + b'"')
    assert hashlib.sha256(zeroed).hexdigest() == recorded
    loaded = Ticket.from_bytes(raw)
    assert loaded.extra == {} and loaded.integrity == container.WHOLE_FILE and loaded.format_version == 2


def test_one_flipped_bit_anywhere_in_a_ticket_is_refused() -> None:
    """Header length, tensor names, dtypes, shapes, offsets, metadata, the digest's own key and digits, the
    payload: no single-bit flip loads (it used to when it hit the header or the key payload_sha256)."""
    raw = make_ticket("resnet8-w4").to_bytes()
    n = int.from_bytes(raw[:8], "little")
    rng = random.Random(0)
    key_at = raw.find(container.FILE_DIGEST_KEY.encode())
    positions = list(range(0, 8)) + list(range(key_at, key_at + 80)) + rng.sample(range(8, 8 + n), 300) \
        + rng.sample(range(8 + n, len(raw)), 60)
    for pos in positions:
        out = bytearray(raw)
        out[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(TicketError):
            Ticket.from_bytes(bytes(out), "t.safetensors")


def test_swapped_tensor_names_and_edited_metadata_are_refused() -> None:
    ticket = make_ticket("resnet8-w4")
    raw = ticket.to_bytes()
    # Two same-shaped tensors: the second conv of a block and the first of the next (used to load unnoticed).
    swapped = _rewrite(raw, rename={"init/blocks.0.conv1.weight": "init/blocks.0.conv2.weight"})
    with pytest.raises(TicketError, match="damaged: its bytes do not match its digest"):
        Ticket.from_bytes(swapped)
    for key, value in (("rewind_step", "3"), ("method", "imp"), ("dataset", "cifar10")):
        edited = _rewrite(raw, lambda meta: meta.__setitem__(key, value))
        with pytest.raises(TicketError, match="damaged"):
            Ticket.from_bytes(edited)
    # A version-2 file that lost its digest is not taken for an old file.
    stripped = _rewrite(raw, lambda meta: meta.pop(container.FILE_DIGEST_KEY))
    with pytest.raises(TicketError, match="lacks its digest"):
        Ticket.from_bytes(stripped)


def test_version_1_tickets_still_load_and_say_how_they_were_checked(tmp_path) -> None:
    ticket = make_ticket("resnet8-w4")
    raw = ticket.to_bytes()
    with_payload, bare = _as_version_1(raw), _as_version_1(raw, with_digest=False)
    a, b = Ticket.from_bytes(with_payload), Ticket.from_bytes(bare)
    assert (a.format_version, a.integrity) == (1, container.PAYLOAD_ONLY)
    assert (b.format_version, b.integrity) == (1, container.UNCHECKED)
    assert torch.equal(a.init["fc.weight"], ticket.init["fc.weight"])
    # Version 1's payload digest still catches damage to its tensors.
    kept = int(ticket.masks["fc.weight"].reshape(-1).nonzero()[0])
    with pytest.raises(TicketError, match="does not match its digest"):
        Ticket.from_bytes(_flip_in(with_payload, "init/fc.weight", 4 * kept + 2))
    (tmp_path / "old.safetensors").write_bytes(bare)
    (tmp_path / "new.safetensors").write_bytes(raw)
    old = run_elth("info", str(tmp_path / "old.safetensors"))
    assert old.code == 0 and "format 1" in old.stdout and "without a digest" in old.stdout
    new = run_elth("info", str(tmp_path / "new.safetensors"), "--json")
    (doc,) = json.loads(new.stdout)
    assert doc["format_version"] == 2 and doc["integrity"] == "file"


def test_nan_anywhere_in_a_ticket_is_refused_with_the_tensor_name() -> None:
    ticket = make_ticket("resnet8-w4")
    for key in ("bn.running_var", "bn.weight", "blocks.0.bn1.bias"):
        state = dict(ticket.init)
        state[key] = state[key].clone()
        state[key][0] = float("nan")
        damaged = Ticket(**{**ticket.__dict__, "init": state})
        with pytest.raises(TicketError, match=rf"init/{key} holds NaN"):
            damaged.to_bytes()


def _stopped_checkpoint(tmp_path):
    bundle = data.load_dataset("digits")
    ticket = make_ticket("resnet8-w4")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(train.TrainingStopped):
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, stop_at_step=5, handle_signals=False)
    return bundle, ticket, cfg, ckpt


def test_a_damaged_checkpoint_is_never_resumed(tmp_path) -> None:
    bundle, ticket, cfg, ckpt = _stopped_checkpoint(tmp_path)
    raw = ckpt.read_bytes()
    recorded = container.read_header(raw)[container.FILE_DIGEST_KEY]
    assert container.file_digest(raw, recorded) == recorded
    momentum = sorted(k for k in _header(raw) if k.startswith("optim/") and "momentum" in k)
    damages = {
        "payload": _flip_in(raw, "model/fc.weight", 2),
        "step": _rewrite(raw, lambda m: m.__setitem__("step", "3")),
        "momentum": _rewrite(raw, lambda m: m.__setitem__("param_groups", m["param_groups"].replace('"momentum": 0.9', '"momentum": 0.5'))),
        "swapped momentum buffers": _rewrite(raw, rename={momentum[1]: momentum[2]}),
        "no digest, version 1": _as_version_1(raw, with_digest=False),
    }
    for what, damaged in damages.items():
        assert damaged != raw, what
        ckpt.write_bytes(damaged)
        with pytest.raises(ElthError, match=r"cannot resume from .*--restart"):
            train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, handle_signals=False)
    # --restart (resume="never") starts over and replaces it (at the first epoch's end, with
    # checkpoint_every_s=0; the last epoch writes none).
    out = train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, resume="never", handle_signals=False,
                             checkpoint_every_s=0)
    assert out.is_trained and train.read_checkpoint(ckpt).step == 23


def test_a_version_1_checkpoint_with_its_payload_digest_still_resumes(tmp_path) -> None:
    bundle, ticket, cfg, ckpt = _stopped_checkpoint(tmp_path)
    ckpt.write_bytes(_as_version_1(ckpt.read_bytes()))
    resumed = train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, handle_signals=False)
    whole = train.train_ticket(ticket, bundle, cfg, handle_signals=False)
    assert all(torch.equal(resumed.trained[k], whole.trained[k]) for k in whole.trained)  # bit-identical


def test_a_checkpoint_holding_nan_is_refused_with_the_tensor_name(tmp_path) -> None:
    bundle, ticket, cfg, ckpt = _stopped_checkpoint(tmp_path)
    raw = ckpt.read_bytes()
    tensors = st_load(raw)
    tensors["model/bn.running_var"][0] = float("nan")
    meta = _header(raw)["__metadata__"]
    ckpt.write_bytes(container.save_with_digest(tensors, meta))  # a valid digest over bad values
    with pytest.raises(ElthError, match=r"model/bn.running_var holds NaN"):
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, handle_signals=False)


def test_a_nan_statistic_or_a_wrongly_typed_hparam_is_one_line_through_the_cli(tmp_path) -> None:
    """A NaN BatchNorm running_var used to train at chance and exit 0; a text eval_batch_size crashed eval."""
    from conftest import assert_clean_error

    raw = make_ticket("resnet8-w4").to_bytes()
    tensors = st_load(raw)
    tensors["init/bn.running_var"][0] = float("nan")
    nan_file = tmp_path / "nan.safetensors"
    nan_file.write_bytes(container.save_with_digest(tensors, _header(raw)["__metadata__"]))
    r = run_elth("train", str(nan_file), "-o", str(tmp_path / "out.safetensors"), "--epochs", "1")
    assert_clean_error(r, (1,), "init/bn.running_var holds NaN or infinite values")
    assert not (tmp_path / "out.safetensors").exists()
    meta = dict(_header(raw)["__metadata__"], hparams=json.dumps({"eval_batch_size": "x"}))
    typed = tmp_path / "typed.safetensors"
    typed.write_bytes(container.save_with_digest(st_load(raw), meta))
    r = run_elth("eval", str(typed), "--weights", "init")
    assert_clean_error(r, (1,), "metadata 'hparams.eval_batch_size' must be a whole number")


def test_a_header_whose_length_reads_as_a_pickle_mark_is_still_safetensors():
    """Header lengths 0x280, 0x380, 0x480 and 0x580 begin with the bytes of pickle protocols 2 to 5."""
    import json as _json
    import struct

    from elth_cli.container import header_length

    for n in (0x280, 0x380, 0x480, 0x580):
        header = _json.dumps({"__metadata__": {"pad": ""}}).encode()
        header = header[:-2] + b" " * (n - len(header)) + header[-2:]
        data = struct.pack("<Q", n) + header
        assert data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
        assert header_length(data, "x") == n
