"""IMP run folders as a user meets them: `elth info RUN_DIR`, several tickets in one table, a run
extended with more rounds, each round's epoch records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, assert_clean_error, run_in_process
from elth_cli.find.runfolder import RunFolder, run_summary
from elth_cli.ticket import Ticket

IMP = ["find", "--method", "imp", "--arch", "resnet8-w4", "--dataset", "digits", "--epochs", "3", "--rewind", "1ep",
       "--eval-every", "0", "-q"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A 1-round IMP run on digits (3 epochs per round)."""
    from elth_cli import cli

    out = tmp_path_factory.mktemp("imp") / "run"
    with pytest.raises(SystemExit) as info:
        cli.main([*IMP, "--rounds", "1", "--out-dir", str(out)])
    assert info.value.code == 0
    return out


def test_info_of_a_run_folder_lists_its_rounds(capsys, short_run):
    r = run_in_process(capsys, "info", short_run, "--json")
    assert r.code == 0, r.stderr
    (doc,) = json.loads(r.stdout)
    assert doc["kind"] == "run" and doc["total_rounds"] == 2
    assert (doc["arch"], doc["planned_rounds"], doc["finished_rounds"], doc["in_progress"]) == ("resnet8-w4", 1, 2, None)
    assert [x["round"] for x in doc["rounds"]] == [0, 1]
    assert doc["rounds"][1]["path"] == str(RunFolder(short_run).round_ticket(1))
    assert doc["rounds"][1]["sparsity"] == pytest.approx(0.2, abs=1e-3) and doc["rounds"][1]["steps"] == 3 * 23 - 23
    text = run_in_process(capsys, "info", short_run)
    assert text.code == 0 and "2 of its 2 rounds 0..1 finished" in text.stdout and "round-01.safetensors" in text.stdout


def test_each_round_keeps_its_epoch_records(short_run):
    for r, epochs in ((0, 3), (1, 2)):  # round 1 starts at the rewind step, after epoch 1
        lines = RunFolder(short_run).round_log(r).read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(4 - epochs, 4))


def test_info_of_several_tickets_is_one_table(capsys, short_run, tmp_path):
    """--json is a list with one document per argument whatever their number (it was an object for one ticket
    and a list of short rows for two)."""
    r = run_in_process(capsys, "info", short_run, RunFolder(short_run).round_ticket(1), "--json")
    assert r.code == 0, r.stderr
    run, ticket = json.loads(r.stdout)
    assert (run["kind"], run["path"], len(run["rounds"])) == ("run", str(short_run), 2)
    one = json.loads(run_in_process(capsys, "info", RunFolder(short_run).round_ticket(1), "--json").stdout)
    assert one == [ticket] and ticket["kind"] == "ticket" and ticket["trained"] and ticket["method"] == "imp"
    assert ticket["path"] == str(RunFolder(short_run).round_ticket(1)) and "layers" in ticket
    text = run_in_process(capsys, "info", RunFolder(short_run).round_ticket(0), RunFolder(short_run).round_ticket(1))
    assert text.code == 0 and text.stdout.count("resnet8-w4") == 2


def test_a_larger_rounds_continues_the_run_and_nothing_else_may_change(capsys, tmp_path, short_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    before = {r: Ticket.load(RunFolder(run).round_ticket(r)).sha256 for r in (0, 1)}
    r = run_in_process(capsys, *IMP, "--rounds", "2", "--out-dir", run, "--lr", "0.01")
    assert_clean_error(r, codes=(2,), contains="made with other arguments")
    r = run_in_process(capsys, *IMP, "--rounds", "2", "--out-dir", run)
    assert r.code == 0, r.stderr
    assert {i: Ticket.load(RunFolder(run).round_ticket(i)).sha256 for i in (0, 1)} == before  # reused, not retrained
    third = Ticket.load(RunFolder(run).round_ticket(2))
    assert third.sparsity == pytest.approx(1 - 0.8 ** 2, abs=1e-3)
    assert third.parents[0]["sha256"] == before[1]
    assert run_summary(run)["planned_rounds"] == 2 and json.loads((run / "find.json").read_text())["imp"]["rounds"] == 2
    # Fewer rounds than the run holds: refused, pointing to the round that is already there.
    r = run_in_process(capsys, *IMP, "--rounds", "1", "--out-dir", run)
    assert_clean_error(r, codes=(2,), contains=f"its round 1 is already {RunFolder(run).round_ticket(1)}")


def test_an_early_bird_run_cannot_be_extended(capsys, tmp_path):
    run = tmp_path / "eb"
    args = [*IMP, "--early-bird", "--window", "1", "--epsilon", "1", "--out-dir", run]
    assert run_in_process(capsys, *args, "--rounds", "1").code == 0
    r = run_in_process(capsys, *args, "--rounds", "2")
    assert_clean_error(r, codes=(2,), contains="cannot be extended")


def test_a_folder_that_is_not_a_run(capsys, tmp_path):
    r = run_in_process(capsys, "info", tmp_path)
    assert_clean_error(r, codes=(2,), contains="not an IMP run folder")


# ----- re-runs, requeues and damaged rounds (issue 27) --------------------------------------------------
def _copy_run(short_run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(short_run, to)
    return to


def test_a_rerun_of_a_finished_find_with_its_output_succeeds_without_work(capsys, tmp_path, short_run) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    out = tmp_path / "final.safetensors"
    args = [*IMP, "--rounds", "1", "--out-dir", run, "-o", out]
    assert run_in_process(capsys, *args).code == 0
    assert out.read_bytes() == RunFolder(run).round_ticket(1).read_bytes()
    stamp = out.stat().st_mtime_ns
    r = run_in_process(capsys, *args)  # a requeued job: used to exit 2, "already exists"
    assert r.code == 0, r.stderr
    assert out.stat().st_mtime_ns == stamp
    out.write_bytes(b"something else")
    r = run_in_process(capsys, *args)
    assert_clean_error(r, codes=(2,), contains="already exists; pass --force")


def test_a_finished_run_on_a_read_only_mount_is_read(capsys, tmp_path, short_run) -> None:
    import subprocess

    src = _copy_run(short_run, tmp_path / "src")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        before = sorted(p.name for p in mnt.iterdir())
        r = run_in_process(capsys, *IMP, "--rounds", "1", "--out-dir", mnt, "-o", tmp_path / "final.safetensors")
        assert r.code == 0, r.stderr  # used to fail taking the folder's lock
        assert sorted(p.name for p in mnt.iterdir()) == before
        assert (tmp_path / "final.safetensors").read_bytes() == (mnt / "round-01.safetensors").read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_round_copied_in_from_another_run_is_refused(capsys, tmp_path, short_run) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    other = tmp_path / "other"
    assert run_in_process(capsys, *IMP, "--rounds", "1", "--out-dir", other, "--seed", "1").code == 0
    (run / "round-01.safetensors").write_bytes((other / "round-01.safetensors").read_bytes())
    r = run_in_process(capsys, *IMP, "--rounds", "2", "--out-dir", run)
    assert_clean_error(r, codes=(2,), contains=f"{run / 'round-01.safetensors'} is not round 1 of this run")
    assert "seed 1 -> 0" in r.stderr and not (run / "round-02.safetensors").exists()
    # Its own round 0 with another run's round 1 of the same options: the parent does not match.
    (run / "round-00.safetensors").write_bytes((other / "round-00.safetensors").read_bytes())
    (run / "round-01.safetensors").write_bytes((short_run / "round-01.safetensors").read_bytes())
    r = run_in_process(capsys, *IMP, "--rounds", "2", "--out-dir", run)
    assert_clean_error(r, codes=(2,), contains="is not round 0 of this run")


def test_a_round_with_a_wrongly_typed_metric_is_one_line(capsys, tmp_path, short_run) -> None:
    """find re-run on a round whose metrics.train_flops is a list: a traceback before the schema typed it."""
    from safetensors.torch import load as st_load

    from elth_cli.container import read_header, save_with_digest

    run = _copy_run(short_run, tmp_path / "run")
    path = run / "round-00.safetensors"
    raw = path.read_bytes()
    meta = read_header(raw)
    meta["metrics"] = json.dumps({**json.loads(meta["metrics"]), "train_flops": [1]})
    path.write_bytes(save_with_digest(st_load(raw), meta))
    r = run_in_process(capsys, *IMP, "--rounds", "2", "--out-dir", run)
    assert_clean_error(r, codes=(1,), contains="metadata 'metrics.train_flops' must be a number")


def test_info_of_a_run_folder_never_imports_torch(short_run):
    script = ("import contextlib, io, sys\nfrom elth_cli import cli\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    try:\n        cli.main(['info', sys.argv[1]])\n    except SystemExit as e:\n        assert not e.code\n"
              "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script, str(short_run)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
