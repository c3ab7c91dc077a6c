"""Every find method, and train in each precision, on families the paper never had: a family from outside elth
(tests/plugins/resmlp_family.py) and the built-in vision transformer. Tiny widths, a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_in_process
from elth_cli import archs
from elth_cli.ticket import Ticket

PLUGIN = Path(__file__).resolve().parent / "plugins" / "resmlp_family.py"
# family -> (architecture, a deeper one of the same family)
FAMILIES = {"plugin": ("testmlp2-w16", "testmlp3-w16"), "vit": ("vit-d2-w16-h2-p2", "vit-d3-w16-h2-p2")}
SHORT = ("--dataset", "digits", "--epochs", "2", "--batch-size", "128")
METHODS = {
    "imp": ("--rounds", "1", "--out-dir", "run"),
    "early-bird": ("--sparsity", "0.5", "--window", "1", "--epsilon", "1"),
    "rigl": ("--sparsity", "0.5", "--update-every", "5"),
    "set": ("--sparsity", "0.5", "--update-every", "5"),
    "dpf": ("--sparsity", "0.5"),
    "random": ("--sparsity", "0.5"),
    "magnitude": ("--sparsity", "0.5"),
    "snip": ("--sparsity", "0.5", "--batches", "2"),
    "grasp": ("--sparsity", "0.5", "--batches", "2"),
    "synflow": ("--sparsity", "0.5", "--iterations", "5"),
}


@pytest.fixture
def family_registered(monkeypatch):
    """The plugin family registered for the test (and nothing left registered after it)."""
    families, loaded = dict(archs.FAMILIES), set(archs._loaded)
    monkeypatch.setenv(archs.ENV_VAR, str(PLUGIN))
    yield
    archs.FAMILIES.clear()
    archs.FAMILIES.update(families)
    archs._loaded.clear()
    archs._loaded.update(loaded)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_find_method_on_a_new_family(family, method, tmp_path, capsys, monkeypatch, family_registered):
    if family == "vit" and "vit" not in archs.families():
        pytest.skip("no vit family in this build")
    monkeypatch.chdir(tmp_path)
    arch, deeper = FAMILIES[family]
    short = SHORT if method in ("imp", "early-bird", "rigl", "set", "dpf") else ("--dataset", "digits")
    r = run_in_process(capsys, "find", "-m", method, "--arch", arch, *short, *METHODS[method], "-o", "t.safetensors")
    assert r.code == 0, r.stderr
    ticket = Ticket.load(tmp_path / "t.safetensors")
    assert ticket.arch == arch and ticket.method.startswith(method.split("-")[0])
    assert 0.1 < ticket.sparsity < 0.9
    r = run_in_process(capsys, "stretch", "t.safetensors", "-t", deeper, "-o", "s.safetensors")
    assert r.code == 0, r.stderr
    r = run_in_process(capsys, "squeeze", "s.safetensors", "-t", arch, "--strategy", "keep-first", "-o",
                       "q.safetensors")
    assert r.code == 0, r.stderr
    back = Ticket.load(tmp_path / "q.safetensors")
    assert all((back.masks[k] == ticket.masks[k]).all() for k in ticket.masks)


def _random_ticket_here(family, tmp_path, capsys, monkeypatch):
    """In ``tmp_path``: r.safetensors, a random 50 % ticket of the family's small network; its arch."""
    if family == "vit" and "vit" not in archs.families():
        pytest.skip("no vit family in this build")
    monkeypatch.chdir(tmp_path)
    arch, _ = FAMILIES[family]
    assert run_in_process(capsys, "find", "-m", "random", "--arch", arch, "--dataset", "digits", "--sparsity", "0.5",
                          "-o", "r.safetensors").code == 0
    return arch


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_reinit_control_on_a_new_family(family, tmp_path, capsys, monkeypatch, family_registered):
    """reinit, the one find method that needs a ticket: a random ticket's mask with weights drawn by the family's
    own init from another seed."""
    _random_ticket_here(family, tmp_path, capsys, monkeypatch)
    r = run_in_process(capsys, "find", "-m", "reinit", "--like", "r.safetensors", "--seed", "1", "-o", "t.safetensors")
    assert r.code == 0, r.stderr
    like, ticket = Ticket.load(tmp_path / "r.safetensors"), Ticket.load(tmp_path / "t.safetensors")
    assert ticket.method == "reinit" and all((ticket.masks[k] == m).all() for k, m in like.masks.items())
    assert all(not (ticket.init[k][m] == like.init[k][m]).any() for k, m in like.masks.items())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_eval_compare_info_in_each_precision(family, tmp_path, capsys, monkeypatch, family_registered):
    arch = _random_ticket_here(family, tmp_path, capsys, monkeypatch)
    for precision in ("fp32", "bf16", "fp16"):
        r = run_in_process(capsys, "train", "r.safetensors", "--epochs", "1", "--precision", precision,
                           "-o", f"{precision}.safetensors")
        assert r.code == 0, (precision, r.stderr)
    r = run_in_process(capsys, "eval", "fp32.safetensors", "--json")
    assert r.code == 0 and 0 <= json.loads(r.stdout)["accuracy"] <= 1
    r = run_in_process(capsys, "compare", "r.safetensors", "fp32.safetensors", "bf16.safetensors", "--json")
    assert r.code == 0, r.stderr
    r = run_in_process(capsys, "compare", "fp32.safetensors", "bf16.safetensors", "--interpolate", "--dataset",
                       "digits", "--points", "3", "--json")
    assert r.code == 0, r.stderr
    r = run_in_process(capsys, "info", "fp16.safetensors", "--json")
    assert r.code == 0 and json.loads(r.stdout)[0]["arch"] == arch
