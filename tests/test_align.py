"""elth align: a ticket's mask permuted onto another initialisation's units, on its init weights."""

import dataclasses

import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli import archs
from elth_cli.align import AlignOptions, align_ticket
from elth_cli.errors import UsageError
from elth_cli.find.baselines import BaselineOptions, prune_baseline, random_ticket
from elth_cli.symmetry import inverse, permute, random_permutations
from elth_cli.ticket import Ticket, apply_masks


def _dense_trained(arch, shape, seed):
    """A dense 'trained' network: its init, and weights moved away from it (as a training would)."""
    t = random_ticket(arch, shape, 10, 0.0, seed=seed, dataset="digits")
    gen = torch.Generator().manual_seed(seed + 50)
    trained = {k: v + 0.5 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in t.init.items()}
    return dataclasses.replace(t, trained=trained, rewind_step=7, metrics={"steps": 40, "train_flops": 1e6,
                                                                           "wall_time_s": 2.0})


def _units(ticket):
    return archs.network_units(ticket.spec, {k: tuple(v.shape) for k, v in ticket.init.items()})


@pytest.mark.parametrize("arch,shape", [("resnet8-w4", (1, 8, 8)), ("mlp-30x2", (1, 8, 8)),
                                        ("vit-d2-w16-h2-p2", (1, 8, 8))])
def test_weight_matching_carries_the_mask_onto_a_permuted_network(arch, shape):
    """The other network is this one with its units permuted: aligning finds that permutation, so the mask
    lands on the same weights, in their new places."""
    own = _dense_trained(arch, shape, 0)
    ticket = prune_baseline(own, BaselineOptions("magnitude", sparsity=0.8))
    units = _units(own)
    perms = random_permutations(units, torch.Generator().manual_seed(9))
    other = dataclasses.replace(own, init=permute(own.init, units, perms), trained=permute(own.trained, units, perms))
    aligned = align_ticket(ticket, own, other, AlignOptions(by="weights"))
    expected = permute(ticket.masks, units, perms)
    assert all(torch.equal(aligned.masks[k], expected[k]) for k in expected)
    assert all(torch.equal(aligned.init[k], apply_masks(other.init, aligned.masks)[k]) for k in other.init)
    # Undoing the permutation gives the ticket back: mask and (here, since the init moved too) its weights.
    back = permute(aligned.masks, units, inverse(perms))
    assert all(torch.equal(back[k], ticket.masks[k]) for k in back)
    naive = align_ticket(ticket, None, other, AlignOptions(by="none"))
    assert all(torch.equal(naive.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert naive.transform["units_moved"] == 0 < aligned.transform["units_moved"]


def test_activation_matching_and_signs():
    own = _dense_trained("mlp-30x2", (1, 8, 8), 0)
    ticket = prune_baseline(own, BaselineOptions("magnitude", sparsity=0.7))
    units = _units(own)
    perms = random_permutations(units, torch.Generator().manual_seed(2))
    fresh = random_ticket("mlp-30x2", (1, 8, 8), 10, 0.0, seed=11)
    other = dataclasses.replace(own, init=fresh.init, trained=permute(own.trained, units, perms))
    inputs = [torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    aligned = align_ticket(ticket, own, other, AlignOptions(by="activations", signs=True), inputs)
    expected = permute(ticket.masks, units, perms)
    assert all(torch.equal(aligned.masks[k], expected[k]) for k in expected)
    own_init = permute(ticket.init, units, perms)
    for k, m in aligned.masks.items():  # kept weights: the new network's magnitude, the ticket's own sign
        assert torch.equal(aligned.init[k][m].abs(), fresh.init[k][m].abs())
        assert torch.equal(torch.sign(aligned.init[k][m]), torch.sign(own_init[k][m]))
        assert not bool(aligned.init[k][~m].any())


def test_provenance_and_cost():
    own, new = _dense_trained("resnet8-w4", (1, 8, 8), 0), _dense_trained("resnet8-w4", (1, 8, 8), 1)
    for t, name in ((own, "own"), (new, "new")):
        t.sha256 = name * 8
    ticket = prune_baseline(own, BaselineOptions("random", sparsity=0.5))
    ticket.sha256, ticket.cost = "t" * 16, {"trainings": 3, "train_steps": 100}
    aligned = align_ticket(ticket, own, new, AlignOptions(by="weights"), source_is_own=True)
    assert aligned.method == "align" and aligned.rewind_step == new.rewind_step == 7
    assert [p["sha256"] for p in aligned.parents] == ["t" * 16, "own" * 8, "new" * 8]
    assert aligned.transform["by"] == "weights" and aligned.transform["to"]["sha256"] == "new" * 8
    # The ticket's cost, and the other network's dense training (the own round 0 is in the ticket's already).
    assert aligned.cost["trainings"] == 4 and aligned.cost["train_steps"] == 140
    elsewhere = align_ticket(ticket, own, new, AlignOptions(by="weights"), source_is_own=False)
    assert elsewhere.cost["trainings"] == 5
    assert align_ticket(ticket, own, new, AlignOptions(by="none")).cost["trainings"] == 3


def test_refusals():
    own = _dense_trained("resnet8-w4", (1, 8, 8), 0)
    ticket = prune_baseline(own, BaselineOptions("random", sparsity=0.5))
    with pytest.raises(UsageError, match="needs --source"):
        align_ticket(ticket, None, own, AlignOptions(by="weights"))
    with pytest.raises(UsageError, match="must be the ticket's resnet8-w4"):
        align_ticket(ticket, own, _dense_trained("resnet8-w8", (1, 8, 8), 1), AlignOptions())
    with pytest.raises(UsageError, match="--by must be"):
        align_ticket(ticket, own, own, AlignOptions(by="magic"))


def test_cli_on_imp_run_folders(tmp_path, capsys):
    """The ticket's own round 0 is the source by default; --to takes the other run's folder."""
    for seed in (0, 1):
        r = run_in_process(capsys, "find", "--method", "imp", "--arch", "resnet8-w4", "--dataset", "digits", "--rounds",
                           str(1 - seed), "--rewind", "5it", "--epochs", "1", "--warmup", "0", "--seed", str(seed), "--out-dir",
                           str(tmp_path / f"s{seed}"), "-q")
        assert r.code == 0, r.stderr
    out = tmp_path / "a.safetensors"
    r = run_in_process(capsys, "align", str(tmp_path / "s0" / "round-01.safetensors"), "--to", str(tmp_path / "s1"),
                       "-o", str(out))
    assert r.code == 0, r.stderr
    assert "units moved" in r.stderr
    aligned, other = Ticket.load(out), Ticket.load(tmp_path / "s1" / "round-00.safetensors")
    assert aligned.transform["to"]["sha256"] == other.sha256
    assert aligned.transform["source"]["sha256"] == Ticket.load(tmp_path / "s0" / "round-00.safetensors").sha256
    assert assert_masked_init(aligned, other)
    r = run_in_process(capsys, "info", str(out))
    assert "transform   align by weights (trained weights)" in r.stdout and other.sha256[:16] in r.stdout
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((tmp_path / "s0" / "round-01.safetensors").read_bytes())
    assert_clean_error(run_in_process(capsys, "align", str(lone), "--to", str(tmp_path / "s1"), "-o",
                                      str(tmp_path / "x")), contains="needs --source")
    assert_clean_error(run_in_process(capsys, "align", str(lone), "--to", str(lone), "--by", "none", "-o",
                                      str(tmp_path / "x")), contains="give a dense network")
    assert not (tmp_path / "x").exists()


def assert_masked_init(aligned, other):
    return all(torch.equal(aligned.init[k], apply_masks(other.init, aligned.masks)[k]) for k in other.init)


def test_docs_units_runs_as_written(tmp_path, capsys, monkeypatch):
    """docs/units.md: its commands in order in one folder (trainings shortened to 2 epochs), then its Python."""
    import shlex
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "units.md").read_text()
    commands = [line for block in page.split("```bash\n")[1:] for line in block.split("```")[0].splitlines()
                if line.startswith("elth ")]
    assert len(commands) == 6
    monkeypatch.chdir(tmp_path)
    for command in commands:
        short = ["--epochs", "2", "--warmup", "0"] if command.split()[1] in ("find", "train") else []
        r = run_in_process(capsys, *shlex.split(command)[1:], *short)
        assert r.code == 0, (command, r.stderr)
    narrowed, ticket = Ticket.load("r20-w4.safetensors"), Ticket.load("runs/s0/round-04.safetensors")
    assert all(torch.equal(narrowed.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert Ticket.load("aligned-trained.safetensors").metrics["steps"] == 23  # from its rewind step (1ep) to 2ep
    python = page.split("```python\n")[1].split("```")[0]
    exec(compile(python, "docs/units.md", "exec"), {})
