"""The demo's wiring on a tiny schedule: every row present, costs along the provenance chain, resume."""

import json

import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli.demo import DemoConfig, render_table, run_demo
from elth_cli.report import Log
from elth_cli.ticket import Ticket


def test_tiny_demo(tmp_path):
    config = DemoConfig(small="resnet14-w4", large="resnet20-w4", mlp=("mlp-300x2", "mlp-300x3"),
                        vit=("vit-d1-w16-h2-p2", "vit-d2-w16-h2-p2"), rounds=2, levels=(2,), epochs=2, full=True)
    rows = run_demo(tmp_path, config, Log(quiet=True), jobs=2)  # the chains and trainings on two workers
    kinds = {(r.target, r.kind) for r in rows}
    common = {"IMP (own)", "IMP early-bird", "rigl", "random", "random layer-wise", "magnitude", "reinit"}
    assert kinds == {
        *{(t, k) for t in ("resnet14-w4", "resnet20-w4", "mlp-300x2", "mlp-300x3", "vit-d1-w16-h2-p2",
                           "vit-d2-w16-h2-p2") for k in common},
        ("resnet14-w4", "squeeze keep-first"), ("resnet14-w4", "squeeze spaced"),
        ("resnet20-w4", "stretch append"), ("resnet20-w4", "stretch interpolate"),
        ("mlp-300x2", "squeeze keep-first"), ("mlp-300x2", "squeeze spaced"),
        ("mlp-300x3", "stretch append"), ("mlp-300x3", "stretch interpolate"),
        ("vit-d1-w16-h2-p2", "squeeze keep-first"), ("vit-d1-w16-h2-p2", "squeeze spaced"),
        ("vit-d2-w16-h2-p2", "stretch append"), ("vit-d2-w16-h2-p2", "stretch interpolate"),
    }
    by = {(r.target, r.kind): r for r in rows}
    # A stretched ticket costs its source's IMP (two trainings of resnet14), once; baselines only the rewind.
    assert by[("resnet20-w4", "stretch append")].extra["trainings"] == 2
    assert by[("resnet20-w4", "stretch append")].cost_steps == by[("resnet14-w4", "IMP (own)")].cost_steps
    assert by[("resnet20-w4", "random")].extra["trainings"] == 0
    # Baselines and RigL match the target's IMP sparsity exactly.
    assert by[("resnet20-w4", "random")].sparsity == by[("resnet20-w4", "IMP (own)")].sparsity
    assert by[("resnet20-w4", "rigl")].sparsity == pytest.approx(by[("resnet20-w4", "IMP (own)")].sparsity, abs=1e-6)
    # FLOPs: the stretched ticket costs its source's IMP plus one training; RigL one (sparse) training.
    stretch_row, rigl_row = by[("resnet20-w4", "stretch append")], by[("resnet20-w4", "rigl")]
    assert rigl_row.extra["trainings"] == 1 and 0 < rigl_row.flops_vs_dense < 1
    assert stretch_row.flops > by[("resnet14-w4", "IMP (own)")].flops * 0.5 and stretch_row.flops_vs_dense > 1
    for r in rows:
        assert 0.0 <= r.test_acc <= 1.0
    doc = json.loads((tmp_path / "table.json").read_text())
    assert len(doc["rows"]) == 6 * 9
    # The transformer trains with its own recipe (AdamW), the CNNs and MLPs with digits' SGD.
    vit_ticket = Ticket.load(tmp_path / "vit-d2-w16-h2-p2-l02-stretch-append.safetensors")
    assert vit_ticket.hparams["optimizer"] == "adamw" and stretched_sgd(tmp_path)
    # The layer-wise control keeps the IMP ticket's sparsity layer by layer; the uniform one only overall.
    own, control = (Ticket.load(tmp_path / f) for f in ("imp-resnet20-w4/round-02.safetensors",
                                                        "resnet20-w4-l02-random-layer-wise.safetensors"))
    assert own.layer_sparsity() == control.layer_sparsity()
    # The reinit control: the IMP ticket's mask exactly with weights drawn from another seed, trained for the
    # steps the IMP ticket trained; it costs what the mask cost.
    reinit = Ticket.load(tmp_path / "resnet20-w4-l02-reinit.safetensors")
    assert all(torch.equal(reinit.masks[k], own.masks[k]) for k in own.masks) and reinit.method == "reinit"
    assert reinit.hparams["ticket_hparams"]["seed"] not in (None, config.seed)
    assert reinit.metrics["steps"] == own.metrics["steps"]
    assert by[("resnet20-w4", "reinit")].extra["trainings"] == by[("resnet20-w4", "IMP (own)")].extra["trainings"] == 2
    # The early-bird row: the early-bird chain's round ticket, trained anew in full with the recipe.
    early = by[("resnet20-w4", "IMP early-bird")]
    assert early.sparsity == by[("resnet20-w4", "IMP (own)")].sparsity and early.extra["trainings"] == 2
    assert (tmp_path / "imp-eb-resnet20-w4" / "find.jsonl").exists()
    assert (tmp_path / "table.txt").read_text() == render_table(rows)
    stretched = Ticket.load(tmp_path / "resnet20-w4-l02-stretch-append.safetensors")
    assert stretched.is_trained and stretched.transform["source_arch"] == "resnet14-w4"
    assert doc["jobs"] == 2 and doc["threads_per_job"] >= 1
    # Run again: everything is reused, the table is the same (in this process this time).
    again = run_demo(tmp_path, config, Log(quiet=True), jobs=1)
    assert [(r.kind, r.test_acc) for r in again] == [(r.kind, r.test_acc) for r in rows]


def stretched_sgd(out) -> bool:
    return Ticket.load(out / "resnet20-w4-l02-stretch-append.safetensors").hparams["optimizer"] == "sgd"


def test_demo_over_seeds_reports_mean_and_std(tmp_path):
    """Two seeds of a tiny demo, side by side: each seed in its own folder, one summary row per ticket
    kind with n = 2 and the seeds' mean and standard deviation."""
    import statistics

    from elth_cli.demo import render_summary, summarize

    config = DemoConfig(small="resnet14-w4", large="resnet20-w4", rounds=1, levels=(1,), epochs=2, seeds=2, vit=None)
    rows = run_demo(tmp_path, config, Log(quiet=True), jobs=2)
    assert {r.seed for r in rows} == {0, 1}
    assert (tmp_path / "seed-0" / "imp-resnet14-w4" / "round-01.safetensors").exists()
    assert (tmp_path / "seed-1" / "resnet20-w4-l01-random.safetensors").exists()
    summary = summarize(rows)
    assert len(summary) == len(rows) // 2 and all(s.n == 2 for s in summary)
    own = next(s for s in summary if s.target == "resnet20-w4" and s.kind == "IMP (own)")
    accs = [r.test_acc for r in rows if r.target == "resnet20-w4" and r.kind == "IMP (own)"]
    assert own.test_acc == pytest.approx(statistics.fmean(accs)) and own.test_acc_std == pytest.approx(statistics.stdev(accs))
    doc = json.loads((tmp_path / "table.json").read_text())
    assert len(doc["summary"]) == len(summary) and (tmp_path / "table.txt").read_text() == render_summary(summary)


@pytest.mark.parametrize("epochs", ["0", "100001"])
def test_a_bad_epoch_count_is_refused_before_the_folder_is_made(tmp_path, capsys, epochs):
    out = tmp_path / "demo-out"
    assert_clean_error(run_in_process(capsys, "demo", "--epochs", epochs, "--out-dir", out), codes=(2,),
                       contains="--epochs")
    assert not out.exists()


def test_a_missing_accuracy_prints_as_a_dash():
    """An early-bird round that settled before its test pass has no accuracy: '-', not 'nan%'."""
    from elth_cli.report import fmt_pct

    assert [fmt_pct(x) for x in (0.9722, None, float("nan"))] == ["97.22%", "-", "-"]
