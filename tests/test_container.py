"""The payload digest of tickets and checkpoints: damage is noticed, old files without it still load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import make_ticket
from elth_cli import container, data, train
from elth_cli.errors import ElthError, TicketError
from elth_cli.ticket import Ticket


def _flip_in(raw: bytes, tensor: str, offset: int = 0) -> bytes:
    """``raw`` with one byte of ``tensor``'s data flipped (header untouched)."""
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n + json.loads(raw[8:8 + n])[tensor]["data_offsets"][0] + offset
    out = bytearray(raw)
    out[start] ^= 0x10
    return bytes(out)


def test_every_ticket_records_its_payload_digest_and_it_holds() -> None:
    raw = make_ticket("resnet8-w4").to_bytes()
    meta = container.read_header(raw)
    assert meta[container.DIGEST_KEY] == container.payload_digest(raw)
    assert Ticket.from_bytes(raw).extra == {}  # the digest is not carried as an unknown key


def test_a_bit_flip_in_unpruned_init_weights_is_noticed() -> None:
    ticket = make_ticket("resnet8-w4")
    kept = int(ticket.masks["fc.weight"].reshape(-1).nonzero()[0])  # a weight the mask keeps
    damaged = _flip_in(ticket.to_bytes(), "init/fc.weight", 4 * kept + 2)
    with pytest.raises(TicketError, match="damaged: its tensor data does not match its digest"):
        Ticket.from_bytes(damaged, "r8.safetensors")
    # Without the digest (a file written before it existed) the same damage would load unnoticed:
    n = int.from_bytes(damaged[:8], "little")
    meta = json.loads(damaged[8:8 + n])["__metadata__"]
    del meta[container.DIGEST_KEY]
    old_style = st_save(st_load(damaged), metadata=meta)
    assert not torch.equal(Ticket.from_bytes(old_style).init["fc.weight"], ticket.init["fc.weight"])


def test_a_changed_digest_is_noticed() -> None:
    raw = make_ticket("resnet8-w4").to_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    meta[container.DIGEST_KEY] = "0" * 64
    with pytest.raises(TicketError, match="damaged"):
        Ticket.from_bytes(st_save(st_load(raw), metadata=meta))


def test_a_damaged_checkpoint_is_never_resumed(tmp_path) -> None:
    bundle = data.load_dataset("digits")
    ticket = make_ticket("resnet8-w4")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(train.TrainingStopped):
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, stop_at_step=5, handle_signals=False)
    raw = ckpt.read_bytes()
    assert container.read_header(raw)[container.DIGEST_KEY] == container.payload_digest(raw)
    ckpt.write_bytes(_flip_in(raw, "model/fc.weight", 2))
    with pytest.raises(ElthError, match=r"cannot resume from .*damaged.*--restart"):
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, handle_signals=False)
    # --restart (resume="never") starts over and replaces it (at the first epoch's end, with
    # checkpoint_every_s=0; the last epoch writes none).
    out = train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, resume="never", handle_signals=False,
                             checkpoint_every_s=0)
    assert out.is_trained and train.read_checkpoint(ckpt).step == 23
