"""Tickets without torch, and big tickets in bounded memory: the numpy reader and writer agree with
safetensors and torch, the commands that only read and write tickets never import torch, every other
command's file errors come before torch, and the exact selections that replace copies give the same
thresholds and masks as before. (Wall times and memory figures live in benchmarks/scale.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load_torch

from conftest import ROOT, make_ticket
from elth_cli import container, digests, elastic
from elth_cli.errors import TicketError
from elth_cli.find.baselines import BaselineOptions, layer_distribution, prune_baseline
from elth_cli.find.tickets import fresh_ticket
from elth_cli.prune import kth_smallest, prune_lowest, prune_lowest_per_layer
from elth_cli.ticket import Ticket


# ----- the container, without torch -----------------------------------------------------------------
def test_written_tensors_read_back_by_safetensors_and_by_elth() -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.array(7, dtype=np.int64),
               "m": np.array([True, False, True]), "empty": np.zeros((0, 4), np.float16),
               "t": torch.linspace(-1, 1, 5, dtype=torch.bfloat16)}
    out = io.BytesIO()
    sha = container.write_tensors(out, tensors, {"format": "x"})
    data = out.getvalue()
    assert sha == hashlib.sha256(data).hexdigest()
    assert container.check_integrity(data, container.read_header(data), "x", True) == container.WHOLE_FILE
    theirs = st_load_torch(data)  # (numpy has no bfloat16: safetensors' own reader, torch's flavour)
    assert theirs["scalar"].shape == () and torch.equal(theirs["t"], tensors["t"])
    mine = container.read_tensors(bytearray(data), "x")
    assert mine.bf16 == {"t"} and mine.arrays["scalar"].shape == ()
    for name in ("a", "scalar", "m", "empty"):
        assert np.array_equal(mine.arrays[name], tensors[name]) and mine.arrays[name].dtype == tensors[name].dtype
        assert np.array_equal(theirs[name].numpy(), tensors[name])


def _raw(entries: dict, payload: bytes) -> bytearray:
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    return bytearray(len(header).to_bytes(8, "little") + header + payload)


@pytest.mark.parametrize("entries, payload, message", [
    ({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), "need 8"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "not a list of sizes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(6), "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(12), "8 bytes after"),
])
def test_malformed_files_are_refused_as_safetensors_refuses_them(entries, payload, message) -> None:
    with pytest.raises(TicketError, match=message):
        container.read_tensors(_raw(entries, payload), "f")


# ----- tickets as numpy arrays ------------------------------------------------------------------------
def test_numpy_and_torch_loads_hold_the_same_ticket(tmp_path) -> None:
    path = tmp_path / "t.safetensors"
    make_ticket("resnet20-w4", 0.7).save(path)
    a, b = Ticket.load(path, arrays="numpy"), Ticket.load(path)
    assert isinstance(a.init["fc.weight"], np.ndarray) and isinstance(b.init["fc.weight"], torch.Tensor)
    assert a.sha256 == b.sha256 and list(a.init) == list(b.init) and list(a.masks) == list(b.masks)
    assert a.sparsity == b.sparsity and a.layer_sparsity() == b.layer_sparsity()
    for k in b.init:
        assert np.array_equal(a.init[k], b.init[k].numpy())
    # Written back from numpy arrays: the same tensors, a file that loads as torch tensors.
    a.save(tmp_path / "again.safetensors")
    again = Ticket.load(tmp_path / "again.safetensors")
    assert all(torch.equal(again.init[k], b.init[k]) for k in b.init)


@pytest.mark.parametrize("arrays", ["numpy", "torch"])
@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"mask/conv.weight": t["mask/conv.weight"].to(torch.uint8)}), "masks must be bool"),
    (lambda t: t["init/bn.running_var"].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    (lambda t: t["init/fc.weight"].view(-1).__setitem__(0, float("inf")), "NaN or infinite"),
    (lambda t: t.update({"init/conv.weight": torch.ones_like(t["init/conv.weight"])}), "nonzero where its mask is 0"),
    (lambda t: t.update({"init/bn.num_batches_tracked": torch.zeros((), dtype=torch.float32)}), "integer dtype"),
    (lambda t: t.pop("init/fc.bias"), "init/fc.bias is missing"),
])
def test_a_damaged_ticket_is_refused_alike_with_numpy_and_torch(arrays, edit, message) -> None:
    ticket = make_ticket("resnet20-w4", 0.5)
    tensors = {f"{p}{k}": v.clone() for p, s in (("mask/", ticket.masks), ("init/", ticket.init)) for k, v in s.items()}
    edit(tensors)
    # Written with a valid digest (another writer that got it wrong): the checks behind the digest see it.
    data = container.save_with_digest({k: v.contiguous() for k, v in tensors.items()}, ticket.metadata())
    with pytest.raises(TicketError, match=message):
        Ticket.from_bytes(bytearray(data), "t", arrays)


def test_stretch_of_numpy_ticket_equals_the_torch_one(tmp_path) -> None:
    path = tmp_path / "t.safetensors"
    make_ticket("resnet20-w4", 0.6).save(path)
    by_numpy = elastic.stretch(Ticket.load(path, arrays="numpy"), "resnet32-w4")
    by_torch = elastic.stretch(Ticket.load(path), "resnet32-w4")
    by_numpy.save(tmp_path / "n.safetensors")
    written = Ticket.load(tmp_path / "n.safetensors")
    assert list(written.init) == list(by_torch.init) and written.transform == by_torch.transform
    for state in ("masks", "init"):
        assert all(torch.equal(getattr(written, state)[k], v) for k, v in getattr(by_torch, state).items())


# ----- which commands import torch ------------------------------------------------------------------
def _imports_torch(tmp_path, *argvs: list[str]) -> list[tuple[int, bool, str]]:
    """(exit status, torch imported, stderr's last line) of each command, run in one fresh interpreter each."""
    out = []
    for argv in argvs:
        script = textwrap.dedent(f"""
            import contextlib, io, json, sys
            from elth_cli import cli
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    cli.main({argv!r})
                    code = 0
                except SystemExit as e:
                    code = e.code or 0
            print(json.dumps([code, "torch" in sys.modules, (err.getvalue().strip().splitlines() or [""])[-1]]))
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
        assert proc.returncode == 0, proc.stderr
        out.append(tuple(json.loads(proc.stdout.strip().splitlines()[-1])))
    return out


def test_ticket_commands_never_import_torch(tmp_path) -> None:
    make_ticket("resnet20-w4", 0.5).save(tmp_path / "a.safetensors")
    make_ticket("resnet20-w4", 0.5, seed=1).save(tmp_path / "b.safetensors")
    results = _imports_torch(
        tmp_path, ["info", "a.safetensors"], ["info", "--json", "a.safetensors", "b.safetensors"],
        ["stretch", "a.safetensors", "--target", "resnet32-w4", "-o", "s.safetensors"],
        ["squeeze", "s.safetensors", "--target", "resnet14-w4", "-o", "q.safetensors"],
        ["compare", "a.safetensors", "b.safetensors", "s.safetensors"], ["info", "missing.safetensors"])
    assert [r[:2] for r in results] == [(0, False)] * 5 + [(2, False)], results
    assert Ticket.load(tmp_path / "q.safetensors").arch == "resnet14-w4"


def test_file_errors_come_before_torch(tmp_path) -> None:
    make_ticket("resnet20-w4", 0.5).save(tmp_path / "a.safetensors")
    missing = [["train", "nope.safetensors", "--dataset", "digits", "-o", "o.safetensors"],
               ["eval", "nope.safetensors", "--dataset", "digits"], ["export", "nope.safetensors", "out"],
               ["align", "nope.safetensors", "--to", "a.safetensors", "-o", "o.safetensors"],
               ["widen", "nope.safetensors", "--target", "resnet20-w8", "-o", "o.safetensors"],
               ["find", "--method", "magnitude", "--from", "nope.safetensors", "--sparsity", "0.5", "-o", "o.safetensors"]]
    no_folder = [["widen", "a.safetensors", "--target", "resnet20-w8", "-o", "nodir/o.safetensors"],
                 ["find", "--method", "random", "--arch", "resnet20-w4", "--dataset", "digits", "--sparsity", "0.5",
                  "-o", "nodir/o.safetensors"], ["train", "a.safetensors", "--dataset", "digits", "-o", "nodir/x"]]
    results = _imports_torch(tmp_path, *missing, *no_folder)
    for (code, torch_seen, last), argv in zip(results, missing + no_folder):
        assert code == 2 and not torch_seen, (argv, code, last)
        assert ("nope.safetensors does not exist" in last) if argv in missing else \
            ("folder nodir does not exist" in last), (argv, last)


# ----- exact selections without copies ----------------------------------------------------------------
def test_radix_selection_is_kthvalue() -> None:
    gen = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, float("inf"), -float("inf"), 3.0, -3.0])
    for trial in range(200):
        n = int(torch.randint(1, 300, (1,), generator=gen))
        kinds = [torch.randn(n, generator=gen), torch.rand(n, generator=gen), torch.randint(-3, 3, (n,), generator=gen).float(),
                 torch.randn(n, generator=gen).abs() * 1e-30, special.repeat(n // 8 + 1)[:n][torch.randperm(n, generator=gen)]]
        values = kinds[trial % len(kinds)]
        parts = list(values.split(max(1, n // 3)))
        for k in {1, n, max(1, n // 2), max(1, n // 7)}:
            threshold, below = kth_smallest(lambda: iter(parts), k)
            expected = torch.kthvalue(values, k).values
            assert threshold.item() == expected.item() and below == int((values < expected).sum()), (trial, k)


def test_pruning_layer_by_layer_gives_the_masks_of_all_scores_at_once() -> None:
    """Random scores drawn a layer at a time and magnitude scores computed when asked: the same masks as the
    scores of every layer made first (how elth made them before)."""
    dense = fresh_ticket("resnet20-w4", (1, 8, 8), 10, seed=3)
    gen = torch.Generator().manual_seed(5 + 7_000_003)
    scores = {k: torch.rand(m.shape, generator=gen) for k, m in dense.masks.items()}
    counts = layer_distribution(dense.masks, 0.6, (), "layerwise")
    expected = prune_lowest_per_layer(scores, dense.masks, counts)
    got = prune_baseline(dense, BaselineOptions("random", sparsity=0.6, seed=5)).masks
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    magnitudes = {k: dense.init[k].abs() for k in dense.masks}
    n = round(0.8 * sum(m.numel() for m in dense.masks.values()))
    flat = torch.cat([magnitudes[k].reshape(-1) for k in dense.masks])
    by_magnitude = prune_baseline(dense, BaselineOptions("magnitude", sparsity=0.8)).masks
    assert all(torch.equal(by_magnitude[k], prune_lowest(magnitudes, dense.masks, n)[k]) for k in dense.masks)
    kept = torch.cat([by_magnitude[k].reshape(-1) for k in dense.masks])
    assert int((~kept).sum()) == n and flat[kept].min() >= flat[~kept].max()


# ----- digests worked out ahead -------------------------------------------------------------------
def test_digests_worked_out_ahead_are_those_of_the_bytes_read(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(digests, "AHEAD_FROM", 0)
    path = tmp_path / "t.safetensors"
    make_ticket("resnet20-w4", 0.5).save(path)
    data = path.read_bytes()
    meta = container.read_header(data)
    assert digests.both_digests(data) == (hashlib.sha256(data).hexdigest(),
                                            container.file_digest(data, meta[container.FILE_DIGEST_KEY]))
    digests.hash_ahead([str(path), str(tmp_path / "missing"), "--json"])
    assert Ticket.load(path, arrays="numpy").sha256 == hashlib.sha256(data).hexdigest()
    # Replaced after its digests were worked out (a new file, as elth writes): they are not used.
    digests.hash_ahead([str(path)])
    damaged = bytearray(data)
    damaged[-1] ^= 1
    (tmp_path / "new").write_bytes(bytes(damaged))
    os.replace(tmp_path / "new", path)
    with pytest.raises(TicketError, match="do not match its digest"):
        Ticket.load(path, arrays="numpy")


def test_a_damaged_file_hashed_ahead_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(digests, "AHEAD_FROM", 0)
    path = tmp_path / "t.safetensors"
    make_ticket("resnet20-w4", 0.5).save(path)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 4
    path.write_bytes(bytes(damaged))
    digests.hash_ahead([str(path)])
    with pytest.raises(TicketError, match="do not match its digest"):
        Ticket.load(path, arrays="numpy")
