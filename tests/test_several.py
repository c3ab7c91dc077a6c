"""`elth train T1 T2 ... --out-dir DIR --jobs N`: side by side, per-ticket outputs and failures, re-runs, stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, assert_clean_error, make_ticket, run_in_process, signal_once
from elth_cli import data, train
from elth_cli.ticket import Ticket


@pytest.fixture
def tickets(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    make_ticket("resnet8-w4", sparsity=0.5, seed=0).save(paths[0])
    make_ticket("resnet8-w4", sparsity=0.8, seed=1).save(paths[1])
    return paths


def _alone(path: Path, threads: int, epochs: int) -> Ticket:
    """What `elth train` of one ticket gives in one process with ``threads`` CPU threads."""
    ticket = Ticket.load(path)
    bundle = data.load_dataset("digits", device="cpu")
    cfg = train.config_from_options(ticket.spec, bundle.info, epochs=epochs, device="cpu", precision="fp32")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train.train_ticket(ticket, bundle, cfg)
    finally:
        torch.set_num_threads(before)


def test_two_workers_give_each_ticket_its_training_alone_and_name_the_bad_one(capsys, tmp_path, tickets):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a ticket")
    out = tmp_path / "out"
    out.mkdir()
    r = run_in_process(capsys, "train", *tickets, bad, "--out-dir", out, "--jobs", "2", "--epochs", "2", "--json")
    assert r.code == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 3 trainings failed: bad.safetensors") and "Traceback" not in r.stderr
    assert "[bad.safetensors] failed: " in r.stderr and "is not a safetensors file" in r.stderr
    doc = json.loads(r.stdout)
    assert [x["status"] for x in doc["results"]] == ["done", "done", "failed"] and doc["jobs"] == 2
    for path in tickets:
        trained = Ticket.load(out / path.name)
        threads = trained.config["environment"]["cpu_threads"]
        assert threads == max(1, (len(os.sched_getaffinity(0)) // 2))  # cores / jobs
        alone = _alone(path, threads, epochs=2)
        assert all(torch.equal(trained.trained[k], alone.trained[k]) for k in alone.trained), path.name
        assert trained.metrics["test_acc"] == alone.metrics["test_acc"]
        # Its log and epoch records beside it; no checkpoint left.
        assert "epoch 2/2" in (out / f"{path.name}.log").read_text()
        assert len((out / f"{path.name}.jsonl").read_text().splitlines()) == 2
        assert not train.checkpoint_path_for(out / path.name).exists()
    assert not (out / "bad.safetensors").exists()


def test_rerun_reuses_its_outputs_and_refuses_another_training(capsys, tmp_path, tickets):
    out = tmp_path / "out"
    out.mkdir()
    args = ("train", tickets[0], "--out-dir", out, "--epochs", "1", "--json")
    first = run_in_process(capsys, *args)
    assert first.code == 0, first.stderr
    sha = Ticket.load(out / "a.safetensors").sha256
    again = run_in_process(capsys, *args)
    assert again.code == 0 and json.loads(again.stdout)["results"][0]["result"]["reused"] is True
    assert Ticket.load(out / "a.safetensors").sha256 == sha  # untouched
    other = run_in_process(capsys, "train", tickets[0], "--out-dir", out, "--epochs", "2")
    assert other.code == 1 and "differs in: epochs 1 -> 2" in other.stderr
    forced = run_in_process(capsys, "train", tickets[0], "--out-dir", out, "--epochs", "2", "--force")
    assert forced.code == 0 and Ticket.load(out / "a.safetensors").metrics["epochs"] == 2


@pytest.mark.parametrize("extra, message", [
    ((), "2 tickets need --out-dir"),
    (("--out-dir", "OUT", "-o", "x.safetensors"), "-o is for one ticket"),
    (("--out-dir", "OUT", "--log-jsonl", "x.jsonl"), "--log-jsonl is for one ticket"),
    (("--out-dir", "OUT", "--resume"), "--resume is for one ticket"),
    (("--out-dir", "AFILE"), "is a file, not a folder"),
    (("--out-dir", "NEW", "--jobs", "0"), "--jobs must be at least 1"),
    (("--out-dir", "NEW", "--resume"), "--resume is for one ticket"),
    (("--out-dir", "NEW", "--epochs", "0"), "--epochs must be at least 1"),  # checked once, not per ticket
    (("--out-dir", "NEW", "--dataset", "nope"), "unknown data set 'nope'"),
])
def test_bad_combinations_are_one_line(capsys, tmp_path, tickets, extra, message):
    (tmp_path / "OUT").mkdir()
    (tmp_path / "AFILE").write_text("")
    args = [str(tmp_path / a) if a in ("OUT", "AFILE", "NEW") else a for a in extra]
    assert_clean_error(run_in_process(capsys, "train", *tickets, *args), codes=(2,), contains=message)
    assert not (tmp_path / "NEW").exists()  # a refused command creates no folder


def test_names_that_collide_and_stdin_are_refused(capsys, tmp_path, tickets):
    (tmp_path / "sub").mkdir()
    twin = tmp_path / "sub" / "a.safetensors"
    twin.write_bytes(tickets[0].read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_error(run_in_process(capsys, "train", tickets[0], twin, "--out-dir", out), codes=(2,),
                       contains="same file name")
    assert_clean_error(run_in_process(capsys, "train", "-", "--out-dir", out), codes=(2,), contains="stdin")
    assert_clean_error(run_in_process(capsys, "train", tickets[0], "-o", tmp_path / "x.safetensors", "--jobs", "2"),
                       codes=(2,), contains="several tickets")


def test_sigterm_stops_every_worker_with_its_checkpoint_and_a_rerun_finishes(tmp_path, tickets):
    third = tmp_path / "c.safetensors"
    make_ticket("resnet8-w4", sparsity=0.6, seed=2).save(third)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "elth_cli", "train", *map(str, tickets), str(third), "--out-dir", str(out),
           "--jobs", "2", "--epochs", "40"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    records = [out / f"{p.name}.jsonl" for p in tickets]  # the two costliest-first jobs: a and b
    code, _, stderr = signal_once(cmd, lambda: all(r.exists() and r.read_text().strip() for r in records),
                                  what="the trainings never finished an epoch")
    err = stderr.decode()
    assert code == 75, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("elth train: stopped by SIGTERM: 2 of 3 trainings stopped")
    assert all(train.checkpoint_path_for(out / p.name).exists() for p in tickets)
    assert not list(out.glob("*.safetensors"))

    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    for p in (*tickets, third):
        trained = Ticket.load(out / p.name)
        assert trained.metrics["total_steps"] == 40 * 23 and not train.checkpoint_path_for(out / p.name).exists()
    assert all("(resumed)" in (out / f"{p.name}.log").read_text() for p in tickets)
