import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import make_ticket
from elth_cli.errors import TicketError, UsageError
from elth_cli import container
from elth_cli.ticket import FORMAT, Ticket, read_header


def assert_same_ticket(a: Ticket, b: Ticket) -> None:
    assert a.arch == b.arch and a.input_shape == b.input_shape and a.num_classes == b.num_classes
    assert list(a.masks) == list(b.masks) and list(a.init) == list(b.init)
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k]), k
    for k in a.init:
        assert torch.equal(a.init[k], b.init[k]), k
        assert a.init[k].dtype == b.init[k].dtype
    assert (a.trained is None) == (b.trained is None)
    if a.trained is not None:
        for k in a.trained:
            assert torch.equal(a.trained[k], b.trained[k]), k
    for field in ("method", "rewind_step", "dataset", "parents", "transform", "hparams", "metrics", "cost", "created", "extra"):
        assert getattr(a, field) == getattr(b, field), field


def test_save_load_roundtrip(tmp_path, ticket):
    ticket.metrics = {"test_acc": 0.93}
    ticket.extra = {"note": "hello"}
    ticket.trained = {k: v.clone() for k, v in ticket.init.items()}
    path = tmp_path / "t.safetensors"
    sha = ticket.save(path)
    loaded = Ticket.load(path)
    assert loaded.sha256 == sha
    assert_same_ticket(ticket, loaded)
    assert loaded.sparsity == pytest.approx(0.5, abs=1e-12)


def test_metadata_fields(tmp_path, ticket):
    path = tmp_path / "t.safetensors"
    ticket.save(path)
    meta = read_header(path.read_bytes())
    assert meta["format"] == FORMAT and meta["format_version"] == "2"
    assert meta["arch"] == "resnet20-w4" and meta["family"] == "cifar-resnet"
    assert float(meta["sparsity"]) == pytest.approx(0.5)
    assert json.loads(meta["input_shape"]) == [1, 8, 8]
    assert meta["method"] == "random" and meta["rewind_step"] == "0"
    assert json.loads(meta["parents"]) == []
    for key in ("elth_version", "created", "cost", "hparams", "num_classes"):
        assert key in meta


def test_exact_sparsity_of_random_ticket():
    t = make_ticket(sparsity=0.8)
    total = sum(m.numel() for m in t.masks.values())
    pruned = sum(int((~m).sum()) for m in t.masks.values())
    assert pruned == round(0.8 * total)
    for key, (p, n) in t.layer_sparsity().items():
        assert abs(p - 0.8 * n) <= 1, key  # layer-wise: every tensor at the same rate


def test_readable_with_plain_safetensors_and_numpy(tmp_path, ticket):
    path = tmp_path / "t.safetensors"
    ticket.save(path)
    arrays = np_load_file(str(path))
    mask = arrays["mask/conv.weight"]
    assert mask.dtype == np.bool_ and mask.shape == (4, 1, 3, 3)
    init = arrays["init/conv.weight"]
    assert np.all(init[~mask] == 0)
    assert arrays["init/bn.num_batches_tracked"].dtype == np.int64


# ----- bad files ----------------------------------------------------------------------------------
def _bytes(ticket: Ticket) -> bytes:
    return ticket.to_bytes()


def test_not_safetensors():
    with pytest.raises(TicketError, match="not a safetensors file"):
        Ticket.from_bytes(b"hello world, this is text", "x.txt")
    with pytest.raises(TicketError, match="not a safetensors file"):
        Ticket.from_bytes(b"abc", "x")


def test_truncated(ticket):
    data = _bytes(ticket)
    for cut in (len(data) - 1, len(data) // 2, 20):
        with pytest.raises(TicketError, match="truncated|not a safetensors"):
            Ticket.from_bytes(data[:cut], "cut")


def test_other_format():
    data = st_save({"w": torch.zeros(3)}, metadata={"format": "pt"})
    with pytest.raises(TicketError, match="not an elth ticket"):
        Ticket.from_bytes(data, "model.safetensors")
    data = st_save({"w": torch.zeros(3)})
    with pytest.raises(TicketError, match="not an elth ticket"):
        Ticket.from_bytes(data, "model.safetensors")


def _rewrite(ticket: Ticket, tensors_edit=None, meta_edit=None) -> bytes:
    tensors = {}
    for prefix, state in (("mask/", ticket.masks), ("init/", ticket.init)):
        for k, v in state.items():
            tensors[prefix + k] = v.clone()
    meta = ticket.metadata()
    if tensors_edit:
        tensors_edit(tensors)
    if meta_edit:
        meta_edit(meta)
    # With a valid digest: what the loader's other checks see (a file that another writer got wrong).
    return container.save_with_digest(tensors, meta)


def test_newer_version(ticket):
    data = _rewrite(ticket, meta_edit=lambda m: m.update(format_version="3"))
    with pytest.raises(TicketError, match="newer"):
        Ticket.from_bytes(data)


def test_unknown_arch(ticket):
    data = _rewrite(ticket, meta_edit=lambda m: m.update(arch="resnet21"))
    with pytest.raises(TicketError, match="resnet21"):
        Ticket.from_bytes(data)


def test_mask_for_another_arch(ticket):
    # resnet20 masks declared as resnet32: masks of blocks 9.. are missing.
    data = _rewrite(ticket, meta_edit=lambda m: m.update(arch="resnet32-w4"))
    with pytest.raises(TicketError, match="another architecture"):
        Ticket.from_bytes(data)
    # same keys, other width: shapes differ
    data = _rewrite(ticket, meta_edit=lambda m: m.update(arch="resnet20-w8"))
    with pytest.raises(TicketError, match="shape"):
        Ticket.from_bytes(data)


def test_mask_not_bool_or_not_binary(ticket):
    data = _rewrite(ticket, tensors_edit=lambda t: t.update({"mask/conv.weight": t["mask/conv.weight"].float()}))
    with pytest.raises(TicketError, match="bool"):
        Ticket.from_bytes(data)
    raw = bytearray(_rewrite(ticket))
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n + header["mask/conv.weight"]["data_offsets"][0]
    raw[start] = 7
    with pytest.raises(TicketError, match="do not match its digest"):
        Ticket.from_bytes(bytes(raw))
    # Written so by another tool, with a valid digest: the mask check refuses it.
    redigested = container.save_with_digest(st_load(bytes(raw)), header["__metadata__"])
    with pytest.raises(TicketError, match="other than 0 and 1"):
        Ticket.from_bytes(redigested)


def test_missing_init_key(ticket):
    data = _rewrite(ticket, tensors_edit=lambda t: t.pop("init/fc.bias"))
    with pytest.raises(TicketError, match="init/fc.bias is missing"):
        Ticket.from_bytes(data)


def test_init_shape_mismatch(ticket):
    data = _rewrite(ticket, tensors_edit=lambda t: t.update({"init/fc.bias": torch.zeros(11)}))
    with pytest.raises(TicketError, match="shape"):
        Ticket.from_bytes(data)


def test_nonzero_where_pruned(ticket):
    def edit(t):
        t["init/conv.weight"] = torch.ones_like(t["init/conv.weight"])
    with pytest.raises(TicketError, match="nonzero where its mask is 0"):
        Ticket.from_bytes(_rewrite(ticket, tensors_edit=edit))


def test_sparsity_metadata_must_match(ticket):
    data = _rewrite(ticket, meta_edit=lambda m: m.update(sparsity="0.9"))
    with pytest.raises(TicketError, match="inconsistent"):
        Ticket.from_bytes(data)


def test_stray_tensor(ticket):
    data = _rewrite(ticket, tensors_edit=lambda t: t.update({"extra": torch.zeros(1)}))
    with pytest.raises(TicketError, match="unexpected tensor"):
        Ticket.from_bytes(data)


def test_save_refuses_existing_without_force(tmp_path, ticket):
    path = tmp_path / "t.safetensors"
    ticket.save(path)
    before = path.read_bytes()
    with pytest.raises(UsageError, match="--force"):
        ticket.save(path)
    assert path.read_bytes() == before
    ticket.save(path, force=True)


def test_invalid_ticket_never_written(tmp_path, ticket):
    ticket.init["conv.weight"] = torch.ones_like(ticket.init["conv.weight"])
    path = tmp_path / "bad.safetensors"
    with pytest.raises(TicketError):
        ticket.save(path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_trained_weights_need_trained(ticket):
    with pytest.raises(UsageError, match="train it first"):
        ticket.build_model("trained")
    model = ticket.build_model("init")
    assert torch.equal(model.state_dict()["conv.weight"], ticket.init["conv.weight"])
