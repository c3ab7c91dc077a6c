"""The demo: the shipped demo.toml run by the experiment engine, on a tiny schedule: every row present, the
same rows as the release before's demo code gave, costs along the provenance chain, resume."""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli.demo import DemoOptions, demo_experiment
from elth_cli.experiment import engine
from elth_cli.experiment.results import render_summary, render_table, summarize
from elth_cli.report import Log
from elth_cli.ticket import Ticket

FIXTURES = Path(__file__).parent / "fixtures" / "experiments"


def test_tiny_demo_gives_the_rows_of_the_release_before(tmp_path):
    """tiny-demo.toml is the demo's graph on tiny networks (what tests/test_demo.py ran through DemoConfig before
    the demo became a file): the same rows, in the same order, as the release before's demo code gave on this
    machine (tiny-demo-rows-0b2a1d7.json; every field but the file digest, which records the folder, and the
    seconds)."""
    opened = engine.load(str(FIXTURES / "tiny-demo.toml"), tmp_path)
    res = engine.run_local(opened, 2, Log(quiet=True))  # the chains and trainings on two workers
    before = json.loads((FIXTURES / "tiny-demo-rows-0b2a1d7.json").read_text())["rows"]
    now = [{k: v for k, v in vars(r).items() if k not in ("path", "cost_seconds")} for r in res.rows]
    assert [(r["target"], r["kind"], r["source"]) for r in now] == [(r["target"], r["kind"], r["source"]) for r in before]
    assert now == before
    assert res.missing == []
    _check_costs_and_controls(tmp_path, {(r.target, r.kind): r for r in res.rows})
    doc = json.loads((tmp_path / "table.json").read_text())
    assert len(doc["rows"]) == 6 * 9 and doc["jobs"] == 2 and doc["threads_per_job"] >= 1
    assert (tmp_path / "table.txt").read_text() == render_table(res.rows)
    assert {Path(p).name for p in doc["figures"]} >= {"accuracy.png", "accuracy.svg", "cost.pdf"}
    # Run again: everything is reused, the table is the same (in this process this time).
    again = engine.run_local(engine.load(str(FIXTURES / "tiny-demo.toml"), tmp_path), 1, Log(quiet=True))
    assert [(r.kind, r.test_acc) for r in again.rows] == [(r.kind, r.test_acc) for r in res.rows]


def _check_costs_and_controls(out: Path, by: dict) -> None:
    seed = out / "seed-0"
    # A stretched ticket costs its source's IMP (two trainings of resnet14), once; baselines only the rewind.
    assert by[("resnet20-w4", "stretch append")].extra["trainings"] == 2
    assert by[("resnet20-w4", "stretch append")].cost_steps == by[("resnet14-w4", "IMP (own)")].cost_steps
    assert by[("resnet20-w4", "random")].extra["trainings"] == 0
    assert by[("resnet20-w4", "rigl")].sparsity == pytest.approx(by[("resnet20-w4", "IMP (own)")].sparsity, abs=1e-6)
    # The transformer trains with its own recipe (AdamW), the CNNs with digits' SGD.
    vit = Ticket.load(seed / "vit-d2-w16-h2-p2-l02-stretch-append-from-vit-d1-w16-h2-p2.safetensors")
    stretched = Ticket.load(seed / "resnet20-w4-l02-stretch-append-from-resnet14-w4.safetensors")
    assert vit.hparams["optimizer"] == "adamw" and stretched.hparams["optimizer"] == "sgd"
    assert stretched.is_trained and stretched.transform["source_arch"] == "resnet14-w4"
    # The layer-wise control keeps the IMP ticket's sparsity layer by layer; reinit keeps its mask exactly.
    own = Ticket.load(seed / "imp-resnet20-w4" / "round-02.safetensors")
    control = Ticket.load(seed / "resnet20-w4-l02-random-layer-wise.safetensors")
    assert own.layer_sparsity() == control.layer_sparsity()
    reinit = Ticket.load(seed / "resnet20-w4-l02-reinit.safetensors")
    assert all(torch.equal(reinit.masks[k], own.masks[k]) for k in own.masks) and reinit.method == "reinit"
    assert reinit.hparams["ticket_hparams"]["seed"] not in (None, 0)
    assert (seed / "imp-eb-resnet20-w4" / "find.jsonl").exists()


def test_the_demo_options_change_the_shipped_file():
    """elth demo is demo.toml: --quick, --full, --no-vit, --seeds and --epochs change its fields, nothing else."""
    plain = demo_experiment()
    assert plain.networks[:2] == ("resnet20-w4", "resnet32-w4") and plain.levels == (10, 13) and plain.rounds == 13
    assert plain.recipe == {"epochs": 15, "eval_every": 0} and plain.seeds == (0,) and plain.device == "cpu"
    assert len(engine.open_experiment(plain, "x").nodes) == 78  # the release before's 78 jobs
    quick = demo_experiment(DemoOptions(quick=True, full=True, vit=False, seeds=2, seed=3))
    assert (quick.rounds, quick.levels, quick.recipe["epochs"], quick.seeds) == (4, (3, 4), 8, (3, 4))
    assert quick.early_bird and quick.dst == ("rigl",) and not any("vit" in n for n in quick.networks)
    assert all("vit" not in t.source for t in quick.transforms) and len(quick.transforms) == 4
    assert demo_experiment(DemoOptions(epochs=30)).recipe["epochs"] == 30


def test_demo_over_seeds_reports_mean_and_std(tmp_path):
    """Two seeds of a tiny experiment, side by side: each seed in its own folder, one summary row per ticket
    kind with n = 2 and the seeds' mean and standard deviation."""
    import statistics

    exp = engine.load(str(FIXTURES / "tiny-demo.toml"), tmp_path).exp.replace(
        networks=("mlp-300x2", "mlp-300x3"), seeds=(0, 1), rounds=1, levels=(1,), early_bird=False, dst=(),
        transforms=engine.load(str(FIXTURES / "tiny-demo.toml"), tmp_path).exp.transforms[2:4],
        baselines=("random",), baseline_networks=("mlp-300x3",))
    res = engine.run_local(engine.open_experiment(exp, tmp_path), 2, Log(quiet=True))
    rows = res.rows
    assert {r.seed for r in rows} == {0, 1}
    assert (tmp_path / "seed-1" / "mlp-300x3-l01-random.safetensors").exists()
    summary = summarize(rows)
    assert len(summary) == len(rows) // 2 and all(s.n == 2 for s in summary)
    own = next(s for s in summary if s.target == "mlp-300x3" and s.kind == "IMP (own)")
    accs = [r.test_acc for r in rows if r.target == "mlp-300x3" and r.kind == "IMP (own)"]
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
