"""IMP with rewinding on digits with a narrow network (a few epochs per round, on the CPU)."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elth_cli import archs, data, train
from elth_cli.errors import ElthError, UsageError
from elth_cli.find import ImpOptions, find_imp, imp_sparsities, rounds_for_sparsity
from elth_cli.find.runfolder import round_path
from elth_cli.ticket import Ticket
from elth_cli.train import TrainingStopped

ARCH = "resnet14-w4"


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def short_config(bundle, epochs=2):
    spec = archs.resolve_arch(ARCH)
    return train.default_recipe(spec, bundle.info).replace(epochs=epochs, warmup="1ep", eval_every=0)


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("imp")
    opts = ImpOptions(ARCH, "digits", rounds=3, rewind="10it")
    records, final = find_imp(opts, short_config(digits), digits, out, handle_signals=False)
    return out, records, final


def test_rounds_and_nominal_sparsities():
    assert [round(100 * s, 2) for s in imp_sparsities(10, 0.2)][6] == 73.79
    assert round(100 * imp_sparsities(10, 0.2)[10], 2) == 89.26
    assert rounds_for_sparsity(0.8926, 0.2) == 10
    assert rounds_for_sparsity(0.945, 0.2) == 13
    assert rounds_for_sparsity(0.2, 0.2) == 1


def test_masks_nested_and_sparsity_schedule(imp_run):
    out, records, final = imp_run
    tickets = [Ticket.load(round_path(out, r)) for r in range(4)]
    nominal = imp_sparsities(3, 0.2)
    for r, t in enumerate(tickets):
        total = sum(m.numel() for m in t.masks.values())
        assert abs(t.sparsity - nominal[r]) * total <= len(t.masks), (r, t.sparsity)
        assert records[r].sparsity == t.sparsity
    for a, b in zip(tickets, tickets[1:]):
        for k in a.masks:
            assert not (b.masks[k] & ~a.masks[k]).any(), k  # nested: nothing revived
    assert final.sparsity == tickets[-1].sparsity


def test_surviving_init_equals_rewind_weights_and_pruned_are_zero(imp_run):
    out, _, _ = imp_run
    dense = Ticket.load(round_path(out, 0))
    assert all(m.all() for m in dense.masks.values())
    assert dense.rewind_step == 10
    for r in range(1, 4):
        t = Ticket.load(round_path(out, r))
        assert t.rewind_step == 10
        for k, v in t.init.items():
            if k in t.masks:
                assert torch.equal(v[t.masks[k]], dense.init[k][t.masks[k]]), k
                assert (v[~t.masks[k]] == 0).all()
                assert (t.trained[k][~t.masks[k]] == 0).all()
            else:
                assert torch.equal(v, dense.init[k]), k
        assert t.parents[0]["sha256"] == Ticket.load(round_path(out, r - 1)).sha256
        assert t.cost["trainings"] == r


def test_rewind_weights_differ_from_initialisation(imp_run):
    out, _, _ = imp_run
    dense = Ticket.load(round_path(out, 0))
    fresh = archs.build_model(archs.resolve_arch(ARCH), (1, 8, 8), 10, seed=0).state_dict()
    assert not torch.equal(fresh["conv.weight"], dense.init["conv.weight"])  # 10 steps of training happened


def test_log_and_run_file(imp_run):
    out, records, _ = imp_run
    lines = [json.loads(line) for line in (out / "find.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2, 3]
    assert json.loads((out / "find.json").read_text())["imp"]["rounds"] == 3
    assert not list(out.glob("*.ckpt"))


def test_changed_arguments_refused(imp_run, digits):
    out, _, _ = imp_run
    opts = ImpOptions(ARCH, "digits", rounds=3, rewind="20it")
    with pytest.raises(UsageError, match="rewind"):
        find_imp(opts, short_config(digits), digits, out, handle_signals=False)
    with pytest.raises(UsageError, match="lr"):
        find_imp(ImpOptions(ARCH, "digits", rounds=3, rewind="10it"), short_config(digits).replace(lr=0.01), digits, out,
                 handle_signals=False)


def test_sparsity_target_is_exact(tmp_path, digits):
    opts = ImpOptions(ARCH, "digits", sparsity=0.3, rewind="0")
    records, final = find_imp(opts, short_config(digits, epochs=1), digits, tmp_path, handle_signals=False)
    assert len(records) == 3  # 20 %, then the last round prunes to exactly 30 %
    total = sum(m.numel() for m in final.masks.values())
    assert round(final.sparsity * total) == round(0.3 * total)


def test_killed_mid_round_resumes_to_the_same_tickets(tmp_path, digits):
    opts = ImpOptions(ARCH, "digits", rounds=2, rewind="5it")
    cfg = short_config(digits)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    _, ref = find_imp(opts, cfg, digits, ref_dir, handle_signals=False)
    with pytest.raises(TrainingStopped):
        find_imp(opts, cfg, digits, cut_dir, handle_signals=False, stop_at=(1, 30))
    assert round_path(cut_dir, 0).exists() and not round_path(cut_dir, 1).exists()
    assert (cut_dir / "round-01.ckpt").exists()
    _, resumed = find_imp(opts, cfg, digits, cut_dir, handle_signals=False)
    for r in range(3):
        a, b = Ticket.load(round_path(ref_dir, r)), Ticket.load(round_path(cut_dir, r))
        for name in ("masks", "init", "trained"):
            sa, sb = getattr(a, name), getattr(b, name)
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (r, name)
        assert a.metrics["test_acc"] == b.metrics["test_acc"]


def test_bad_options(tmp_path, digits):
    cfg = short_config(digits)
    with pytest.raises(UsageError, match="exactly one"):
        find_imp(ImpOptions(ARCH, "digits"), cfg, digits, tmp_path / "a")
    with pytest.raises(UsageError, match="prune-rate"):
        find_imp(ImpOptions(ARCH, "digits", rounds=1, prune_rate=1.5), cfg, digits, tmp_path / "b")
    with pytest.raises(UsageError, match="not before the end"):
        find_imp(ImpOptions(ARCH, "digits", rounds=1, rewind="50ep"), cfg, digits, tmp_path / "c")
    with pytest.raises(UsageError, match="impossible"):
        find_imp(ImpOptions("vgg11-w4", "digits", sparsity=0.999), cfg, digits, tmp_path / "d")
    with pytest.raises(UsageError, match="not a prunable"):
        find_imp(ImpOptions(ARCH, "digits", rounds=1, exclude=("fc.bias",)), cfg, digits, tmp_path / "e")
    assert not any((tmp_path / n).exists() for n in "abcde")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_file=st.none() | st.text(max_size=40) | st.sampled_from(
           ['[]', '{"method": 3}', '{"imp": []}', '{"train": {"lr": "x"}}', '{"world_size": "two"}', '"imp"']),
       log_lines=st.lists(st.text(max_size=60) | st.sampled_from(
           ['{"round": "x"}', '{"round": 1, "sparsity": 2}', '[1, 2]', 'NaN', '{"round": -1}']), max_size=4))
def test_damaged_run_state_reuses_or_refuses(imp_run, digits, tmp_path_factory, run_file, log_lines):
    """Whatever happened to find.json or find.jsonl, re-running IMP reuses the finished rounds or stops
    with elth's own error; the round files are the authority."""
    import shutil

    out, records, _ = imp_run
    copy = tmp_path_factory.mktemp("state") / "run"
    shutil.copytree(out, copy)
    if run_file is not None:
        (copy / "find.json").write_text(run_file)
    with open(copy / "find.jsonl", "a") as f:
        f.writelines(line.replace("\n", " ") + "\n" for line in log_lines)
    opts = ImpOptions(ARCH, "digits", rounds=3, rewind="10it")
    try:
        again, _ = find_imp(opts, short_config(digits), digits, copy, handle_signals=False)
    except ElthError:
        return
    assert [r.round for r in again] == [0, 1, 2, 3]
    assert [r.sparsity for r in again] == [r.sparsity for r in records]


def test_a_mask_that_empties_a_layer_is_refused_unless_asked_for() -> None:
    """0.999 of resnet8-w4 by layer-wise random pruning leaves some layers (those under 1,000 weights) empty."""
    from elth_cli.find import BaselineOptions, fresh_ticket, prune_baseline
    from elth_cli.masks import empty_layers

    dense = fresh_ticket("resnet8-w4", (1, 8, 8), 10)
    with pytest.raises(UsageError, match=r"sparsity 0.999 leaves no weight in \d+ layers \(conv.weight"):
        prune_baseline(dense, BaselineOptions("random", sparsity=0.999))
    allowed = prune_baseline(dense, BaselineOptions("random", sparsity=0.999, allow_empty_layers=True))
    assert empty_layers(allowed.masks)[0] == "conv.weight"
    # Every weight pruned: refused whatever is asked (a ticket keeps at least one weight).
    with pytest.raises(UsageError, match="prunes every one of the network's"):
        prune_baseline(dense, BaselineOptions("random", sparsity=0.999999, allow_empty_layers=True))


def test_reinit_ticket_keeps_the_mask_and_redraws_the_weights() -> None:
    """A fresh random ticket's control: the same mask, new weights under it, zeros elsewhere; its own seed refused."""
    from elth_cli.find.baselines import random_ticket, reinit_ticket

    like = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.7, seed=0, dataset="digits")
    t = reinit_ticket(like, 3)
    assert all(torch.equal(t.masks[k], like.masks[k]) for k in like.masks) and set(t.masks) == set(like.masks)
    assert all((t.init[k][m] != like.init[k][m]).all() and not t.init[k][~m].any() for k, m in like.masks.items())
    assert (t.method, t.rewind_step, t.hparams["seed"], t.cost) == ("reinit", 0, 3, like.cost)
    again = reinit_ticket(like, 3)
    assert all(torch.equal(again.init[k], t.init[k]) for k in t.init)  # the seed decides the weights
    with pytest.raises(UsageError, match="--seed 0 is the seed the ticket was initialised with; give another seed"):
        reinit_ticket(like, 0)
    with pytest.raises(UsageError, match="--seed 3 is the seed"):
        reinit_ticket(t, 3)  # a control's own draw counts too


def test_init_seed_follows_where_the_init_came_from() -> None:
    """The seed a ticket's init was drawn with, through baselines' sources and trainings' tickets."""
    from elth_cli.find.baselines import init_seed

    assert init_seed({"imp": {"round": 2}, "seed": 3, "total_steps": 10}) == 3  # IMP: the recipe's seed draws it
    assert init_seed({"imp": {"pretrained": {"file": "w.pth"}}, "seed": 3}) is None
    assert init_seed({"dst": {"method": "rigl"}, "seed": 4, "total_steps": 10}) == 4
    assert init_seed({"baseline": "magnitude", "seed": 5, "source_hparams": {"seed": 2, "init": "x"}}) == 2
    assert init_seed({"baseline": "reinit", "seed": 5, "source_hparams": {"seed": 2}}) == 5
    assert init_seed({"seed": 9, "total_steps": 10, "ticket_hparams": {"baseline": "reinit", "seed": 4}}) == 4
    assert init_seed({"seed": 9, "total_steps": 10}) is None  # elth train's seed orders the data
    assert init_seed({"init": "pretrained", "seed": 0}) is None and init_seed(None) is None
