"""timm's vision transformers as the ``timm`` family, ``find --pretrained`` and ``export --format state-dict``.

Skipped where timm (the optional extra ``elth[timm]``) is not installed. Every model is built with
``pretrained=False``: nothing here reaches the network (one test shuts it off to make sure).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_clean_error, run_in_process

timm = pytest.importorskip("timm")

from elth_cli import archs, elastic  # noqa: E402
from elth_cli.archs import timm_family  # noqa: E402
from elth_cli.errors import UsageError  # noqa: E402
from elth_cli.find import random_ticket  # noqa: E402
from elth_cli.ticket import Ticket  # noqa: E402

VIT = "timm:vit_tiny_patch16_224"
SHAPE, CLASSES = (3, 32, 32), 10  # patch 16: 2x2 patches


@pytest.fixture(scope="module")
def vit2():
    return random_ticket(f"{VIT}-d2", SHAPE, CLASSES, 0.5, seed=0)


@pytest.fixture(scope="module")
def vit4():
    return random_ticket(f"{VIT}-d4", SHAPE, CLASSES, 0.5, seed=1)


def test_names_specs_and_layout():
    spec = archs.resolve_arch(f"{VIT}-d6")
    assert (spec.family, spec.depths, spec.width, spec.variant) == ("timm", (6,), 192, "vit_tiny_patch16_224")
    assert archs.resolve_arch(VIT).depths == (12,) and archs.resolve_arch(f"{VIT}-d12").name == VIT
    assert archs.resolve_arch("timm:deit_small_patch16_224-d4").width == 384
    for target in ("d8", "-d8", f"{VIT}-d8"):
        assert archs.resolve_target(spec, target).name == f"{VIT}-d8"
    layout = archs.block_layout(spec)
    assert layout.stem == ("cls_token", "pos_embed", "patch_embed.") and layout.head == ("norm.", "head.")
    assert layout.stages == (tuple(f"blocks.{i}." for i in range(6)),) and layout.first_is_free(0)
    reg = archs.block_layout(archs.resolve_arch("timm:vit_base_patch16_reg4_gap_256-d2"))
    assert "reg_token" in reg.stem and "fc_norm." in reg.head
    summary = archs.summarize(archs.resolve_arch(f"{VIT}-d2"), SHAPE, CLASSES)
    assert summary.parameters == sum(p.numel() for p in _timm_model(2).parameters())


def test_refusals():
    for name, words in (("timm:resnet18", "VisionTransformer"), ("timm:no_such_model", "no model"),
                        ("timm:vit x", "timm:<model>"), (f"{VIT}-d0", "1 to")):
        with pytest.raises(UsageError, match=words):
            archs.resolve_arch(name)
    with pytest.raises(UsageError, match="another timm model"):
        archs.resolve_target(archs.resolve_arch(f"{VIT}-d2"), "timm:deit_small_patch16_224-d4")


def test_other_names_never_import_timm():
    code = ("import sys; from elth_cli.archs import timm_family, resolve_arch; "
            "assert timm_family.parse('resnet20') is None; resolve_arch('resnet20'); "
            "assert 'timm' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    timm_family._probe.cache_clear()
    try:
        with pytest.raises(UsageError, match=r"timm is not installed: pip install 'elth\[timm\]'"):
            timm_family.parse("timm:vit_small_patch16_224")
    finally:
        timm_family._probe.cache_clear()


def test_builds_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    timm_family._probe.cache_clear()
    model = archs.build_model(archs.resolve_arch("timm:deit_tiny_patch16_224-d1"), SHAPE, CLASSES, seed=0)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, CLASSES)


def _timm_model(depth: int):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=depth, img_size=SHAPE[1:],
                             in_chans=SHAPE[0], num_classes=CLASSES)


def _check_mapped(source: Ticket, target: Ticket, mapping: list[list[int]]) -> None:
    """Every target block holds its source block's masks and weights; stem and head are copied."""
    keys = list(target.init)
    for key in keys:
        if key.startswith("blocks."):
            _, j, rest = key.split(".", 2)
            src = f"blocks.{mapping[0][int(j)]}.{rest}"
        else:
            src = key
        assert torch.equal(target.init[key], source.init[src]), key
        if key in target.masks:
            assert torch.equal(target.masks[key], source.masks[src]), key


def test_stretch_and_squeeze_map_blocks(vit2, vit4):
    longer = elastic.stretch(vit2, "d4")
    assert longer.arch == f"{VIT}-d4" and longer.transform["mapping"][0][:2] == [0, 1]
    _check_mapped(vit2, longer, longer.transform["mapping"])
    shorter = elastic.squeeze(vit4, f"{VIT}-d2")
    assert shorter.arch == f"{VIT}-d2"
    _check_mapped(vit4, shorter, shorter.transform["mapping"])
    back = elastic.squeeze(longer, "d2")
    assert all(torch.equal(back.init[k], vit2.init[k]) for k in vit2.init)
    assert all(torch.equal(back.masks[k], vit2.masks[k]) for k in vit2.masks)


def test_state_dict_export_loads_into_timm(vit2, tmp_path):
    ticket_path = tmp_path / "vit.safetensors"
    vit2.save(ticket_path)
    out = tmp_path / "w.safetensors"
    r = run_in_process(_capsys(), "export", ticket_path, out, "--format", "state-dict", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["weights"] == "init" and doc["model"].startswith("timm.create_model('vit_tiny_patch16_224'")
    from safetensors.torch import load_file

    state, masks = load_file(out), load_file(tmp_path / "w.masks.safetensors")
    model = _timm_model(2)
    model.load_state_dict(state, strict=True)
    assert set(masks) == set(vit2.masks) and all(m.dtype == torch.bool for m in masks.values())
    for key, m in masks.items():
        assert torch.equal(m, vit2.masks[key]) and not bool(state[key][~m].any())
    r = run_in_process(_capsys(), "export", ticket_path, out, "--format", "state-dict")
    assert_clean_error(r, (2,), "already exists")


def test_state_dict_export_loads_into_torchvision_resnet18(tmp_path):
    import torchvision
    from safetensors.torch import load_file

    from elth_cli.interop import export_state_dict

    ticket = random_ticket("imagenet-resnet18", SHAPE, CLASSES, 0.8, seed=0)
    result = export_state_dict(ticket, tmp_path / "r18.safetensors")
    assert result.model == "torchvision.models.resnet18(num_classes=10)"
    state, masks = load_file(tmp_path / "r18.safetensors"), load_file(tmp_path / "r18.masks.safetensors")
    torchvision.models.resnet18(num_classes=CLASSES).load_state_dict(state, strict=True)
    assert all(not bool(state[k][~m].any()) for k, m in masks.items())
    assert set(masks) == set(ticket.masks)


def test_pretrained_timm_ticket_holds_the_file(tmp_path):
    from safetensors.torch import save_file

    from elth_cli.find.tickets import fresh_ticket, pretrained_source

    state = {k: v.contiguous() for k, v in _timm_model(2).state_dict().items()}
    save_file(state, tmp_path / "vit.safetensors")
    ticket = fresh_ticket(f"{VIT}-d2", SHAPE, CLASSES, seed=3, pretrained=pretrained_source(tmp_path / "vit.safetensors"))
    assert all(torch.equal(ticket.init[k], state[k]) for k in state)
    assert ticket.hparams["pretrained"]["file"] == "vit.safetensors"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A built mlp-32x2 for digits, saved as .safetensors, as a .pth ({'state_dict': ...}) and with a wrong key."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("pretrained")
    state = {k: v.contiguous() for k, v in archs.build_model(archs.resolve_arch("mlp-32x2"), (1, 8, 8), 10,
                                                                seed=5).state_dict().items()}
    save_file(state, folder / "w.safetensors")
    torch.save({"state_dict": state}, folder / "w.pth")
    save_file({**state, "extra.weight": torch.zeros(2)}, folder / "bad.safetensors")
    save_file({**state, "fc.weight": torch.full_like(state["fc.weight"], float("nan"))}, folder / "nan.safetensors")
    return folder, state


FIND = ["find", "--method", "random", "--arch", "mlp-32x2", "--dataset", "digits", "--sparsity", "0.5"]


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_find_pretrained(weights, name, tmp_path):
    folder, state = weights
    out = tmp_path / "t.safetensors"
    r = run_in_process(_capsys(), *FIND, "--pretrained", folder / name, "-o", out)
    assert r.code == 0, r.stderr
    ticket = Ticket.load(out)
    record = ticket.hparams["source_hparams"]["pretrained"]
    import hashlib

    assert record == {"file": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
    for key, t in state.items():
        want = torch.where(ticket.masks[key], t, torch.zeros(())) if key in ticket.masks else t
        assert torch.equal(ticket.init[key], want), key


@pytest.mark.parametrize("name, words", [("bad.safetensors", "extra.weight is not a key"),
                                         ("nan.safetensors", "NaN"), ("none.safetensors", "no such file")])
def test_find_pretrained_refusals(weights, name, words, tmp_path):
    folder, _ = weights
    r = run_in_process(_capsys(), *FIND, "--pretrained", folder / name, "-o", tmp_path / "t.safetensors")
    assert_clean_error(r, (1, 2), words)
    assert not (tmp_path / "t.safetensors").exists()


def test_export_then_pretrained_round_trip(weights, tmp_path):
    """What export --format state-dict writes is what --pretrained reads."""
    folder, _ = weights
    first, out = tmp_path / "a.safetensors", tmp_path / "sd.safetensors"
    assert run_in_process(_capsys(), *FIND, "-o", first).code == 0
    assert run_in_process(_capsys(), "export", first, out, "--format", "state-dict").code == 0
    second = tmp_path / "b.safetensors"
    r = run_in_process(_capsys(), *FIND, "--sparsity", "0", "--pretrained", out, "-o", second)
    assert r.code == 0, r.stderr
    a, b = Ticket.load(first), Ticket.load(second)
    assert all(torch.equal(a.init[k], b.init[k]) for k in a.init)


def test_info_on_a_timm_ticket(vit2, tmp_path):
    path = tmp_path / "vit.safetensors"
    vit2.save(path)
    r = run_in_process(_capsys(), "info", path, "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)[0]  # one document per ticket
    assert doc["arch"] == f"{VIT}-d2" and doc["family"] == "timm" and doc["blocks_per_stage"] == [2]
    r = run_in_process(_capsys(), "info", path)
    assert r.code == 0 and f"{VIT}-d2" in r.stdout


_CAPSYS = []


@pytest.fixture(autouse=True)
def _keep_capsys(capsys):
    _CAPSYS[:] = [capsys]
    yield


def _capsys():
    return _CAPSYS[0]


def test_imp_from_a_pretrained_file_resumes_only_with_it(weights, tmp_path):
    """IMP's round 0 starts from the file; the run folder then refuses to continue without it."""
    folder, state = weights
    imp = ["find", "--method", "imp", "--arch", "mlp-32x2", "--dataset", "digits", "--rounds", "1", "--epochs", "1",
           "--eval-every", "0", "--out-dir", tmp_path / "run"]
    r = run_in_process(_capsys(), *imp, "--pretrained", folder / "w.pth")
    assert r.code == 0, r.stderr
    round0 = Ticket.load(tmp_path / "run" / "round-00.safetensors")
    assert round0.hparams["imp"]["pretrained"]["file"] == "w.pth"
    assert torch.equal(round0.init["fc.weight"], state["fc.weight"])  # rewind 0: the file's weights
    r = run_in_process(_capsys(), *imp)
    assert_clean_error(r, (2,), "pretrained")


def test_find_pretrained_refuses_a_ticket_and_says_what_to_do(tmp_path):
    from conftest import make_ticket

    make_ticket("mlp-16x2-8").save(tmp_path / "ticket.safetensors")
    r = run_in_process(_capsys(), *FIND, "--pretrained", tmp_path / "ticket.safetensors", "-o", tmp_path / "t.safetensors")
    assert_clean_error(r, (1, 2), "is an elth ticket, not a state dict")
    assert "--from ticket.safetensors" in r.stderr and not (tmp_path / "t.safetensors").exists()
