"""`elth train` and `elth eval` as a user meets them: exit statuses, streams, files, signals.

Most commands run in-process through ``cli.main`` (the same code path as the console script,
without a second torch import); the signal test runs a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Result, assert_clean_error, make_ticket, run_in_process, signal_once
from elth_cli import cli, data, train
from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket


def elth(capsys, *args: str) -> Result:
    """Run the CLI in-process; return its exit status and captured streams."""
    return run_in_process(capsys, *args)


@pytest.fixture
def r8_file(tmp_path: Path) -> Path:
    path = tmp_path / "r8.safetensors"
    make_ticket("resnet8-w4").save(path)
    return path


def test_train_then_eval_reproduces_the_recorded_accuracy(capsys, tmp_path, r8_file) -> None:
    out, log = tmp_path / "trained.safetensors", tmp_path / "log.jsonl"
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--log-jsonl", log, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    m = summary["metrics"]
    assert summary["output"] == str(out) and summary["sha256"] == Ticket.load(out).sha256
    assert (m["epochs"], m["steps"], m["precision"]) == (2, 46, "fp32")
    assert summary["hparams"]["dataset"] == "digits" and summary["hparams"]["epochs"] == 2
    # Logs went to stderr as plain lines (stderr is not a terminal), one per epoch.
    epoch_lines = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert "step 46/46" in epoch_lines[-1] and "img/s" in epoch_lines[-1]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [rec["epoch"] for rec in records] == [1, 2]
    assert set(records[0]) == {"epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                               "images_per_s", "seconds"}
    assert records[-1]["test_acc"] == m["test_acc"]
    assert not train.checkpoint_path_for(out).exists()

    r = elth(capsys, "eval", out, "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["accuracy"] == m["test_acc"] and doc["loss"] == m["test_loss"]
    assert (doc["split"], doc["weights"], doc["examples"], doc["dataset"]) == ("test", "trained", 360, "digits")
    assert "top5" not in doc  # 10 classes

    r = elth(capsys, "eval", out, "--split", "train", "--weights", "init", "--batch-size", "100")
    assert r.code == 0, r.stderr
    assert "init weights" in r.stdout and "1,437 images" in r.stdout


def test_fp16_on_the_cpu(capsys, tmp_path, r8_file) -> None:
    """fp16 with its grad scaler is not CUDA-only: torch trains it on the CPU, so elth does too."""
    out = tmp_path / "fp16.safetensors"
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "1", "--precision", "fp16", "--device", "cpu", "--json")
    assert r.code == 0, r.stderr
    ticket = Ticket.load(out)
    assert ticket.metrics["precision"] == "fp16" and ticket.config["environment"]["device_setup"]["grad_scaler"]


def test_train_to_stdout(capsysbinary, tmp_path, r8_file) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", str(r8_file), "-o", "-", "--epochs", "3", "--quiet"])  # the recipe's warm-up fits
    out, err = capsysbinary.readouterr()
    assert exit_info.value.code == 0, err
    assert err == b""
    ticket = Ticket.from_bytes(out)
    assert ticket.is_trained and ticket.metrics["steps"] == 3 * 23
    assert not list(tmp_path.glob("*.ckpt"))  # no checkpoint without a path for it


def test_sigterm_stops_resumably_and_rerun_finishes(tmp_path, r8_file) -> None:
    out, log = tmp_path / "out.safetensors", tmp_path / "log.jsonl"
    ckpt = train.checkpoint_path_for(out)
    cmd = [sys.executable, "-m", "elth_cli", "train", str(r8_file), "-o", str(out), "--epochs", "12",
           "--log-jsonl", str(log)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Once the first epoch is done, the next has started.
    code, stdout, stderr = signal_once(cmd, lambda: log.exists() and bool(log.read_text().strip()),
                                       what="training never finished an epoch")
    err = stderr.decode()
    assert code == 75, err
    assert "Traceback" not in err
    stop_line = err.strip().splitlines()[-1]
    assert stop_line.startswith("elth train: stopped by SIGTERM at step ") and "re-run the same command" in stop_line
    assert ckpt.exists() and not out.exists() and stdout == b""
    stopped_at = train.read_checkpoint(ckpt).step
    assert 23 <= stopped_at < 12 * 23

    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"from step {stopped_at} (resumed)" in proc.stderr.decode()
    ticket = Ticket.load(out)
    assert ticket.is_trained and ticket.metrics["total_steps"] == 12 * 23
    assert not ckpt.exists()
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(range(1, 13))


def test_changed_options_refuse_the_checkpoint(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "out.safetensors"
    ckpt = train.checkpoint_path_for(out)
    ticket = Ticket.load(r8_file)
    info = data.get_dataset_info("digits")
    cfg = train.config_from_options(ticket.spec, info, epochs=2, device="cpu", precision="fp32", seed=0)
    with pytest.raises(train.TrainingStopped):
        train.train_ticket(ticket, data.load_dataset("digits"), cfg, checkpoint_path=ckpt, stop_at_step=30)

    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--lr", "0.01", "--seed", "1")
    assert_clean_error(r, codes=(2,), contains="differs in: lr 0.05 -> 0.01; seed 0 -> 1")
    assert "--restart" in r.stderr and ckpt.exists() and not out.exists()
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--resume", "--restart")
    assert_clean_error(r, codes=(2,), contains="contradict")
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--resume")
    assert r.code == 0, r.stderr
    assert "from step 30 (resumed)" in r.stderr
    assert Ticket.load(out).metrics["steps"] == 46 and not ckpt.exists()
    r = elth(capsys, "train", r8_file, "-o", tmp_path / "other.safetensors", "--epochs", "2", "--resume")
    assert_clean_error(r, codes=(2,), contains="no checkpoint")


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line on stderr, non-zero status, no traceback, no output
# ---------------------------------------------------------------------------------------------


def test_eval_of_an_untrained_ticket(capsys, r8_file) -> None:
    r = elth(capsys, "eval", r8_file)
    assert_clean_error(r, codes=(2,), contains="train it first (elth train) or use --weights init")
    assert r.stdout == ""


def test_wrong_channel_count(capsys, tmp_path) -> None:
    path = tmp_path / "cifar.safetensors"
    random_ticket("resnet8-w4", (3, 32, 32), 10, 0.5, dataset="cifar10").save(path)
    r = elth(capsys, "eval", path, "--dataset", "digits", "--weights", "init")
    assert_clean_error(r, codes=(1,), contains="expects 3x32x32 inputs")
    out = tmp_path / "out.safetensors"
    r = elth(capsys, "train", path, "--dataset", "digits", "-o", out)
    assert_clean_error(r, codes=(1,), contains="expects 3x32x32 inputs")
    assert not out.exists() and not train.checkpoint_path_for(out).exists()


def test_missing_data_set(capsys, tmp_path) -> None:
    path = tmp_path / "cifar.safetensors"
    random_ticket("resnet8-w4", (3, 32, 32), 10, 0.5, dataset="cifar10").save(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.safetensors"
    r = elth(capsys, "train", path, "-o", out, "--data-dir", empty)
    assert_clean_error(r, codes=(1,), contains="cifar10 not found")
    assert "--download" in r.stderr and not out.exists()
    r = elth(capsys, "eval", path, "--weights", "init", "--data-dir", empty)
    assert_clean_error(r, codes=(1,), contains="cifar10 not found")


def test_unknown_data_set(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "out.safetensors"
    r = elth(capsys, "train", r8_file, "-o", out, "--dataset", "mnist-9000")
    assert_clean_error(r, codes=(2,), contains="unknown data set")
    assert not out.exists()
    r = elth(capsys, "eval", r8_file, "--weights", "init", "--dataset", "mnist-9000")
    assert_clean_error(r, codes=(2,), contains="unknown data set")


def test_existing_output_is_refused_before_training(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    log = tmp_path / "log.jsonl"
    r = elth(capsys, "train", r8_file, "-o", out, "--log-jsonl", log)
    assert_clean_error(r, codes=(2,), contains="already exists and is not an elth ticket; pass --force")
    assert out.read_bytes() == b"keep me"
    assert not log.exists() and not train.checkpoint_path_for(out).exists()  # refused before training


@pytest.mark.parametrize("args, contains", [
    (["-o", "-", "--json"], "both want stdout"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--warmup", "2 epochs"], "is not a step count"),
    (["--milestones", "10ep"], "--milestones only apply to --schedule step"),
    (["--precision", "fp8", "--device", "cpu"], "unknown precision"),
    (["--device", "tpu"], "unknown device"),
    (["--schedule", "linear"], "unknown --schedule"),
    # Bounds (issue 28): these trained until killed, or crashed torch.manual_seed.
    (["--epochs", "99999999999999999999"], "--epochs must be at most 100,000"),
    (["--epochs", "99999", "--batch-size", "1"], "steps, more than 100,000,000; lower --epochs"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2^63-1"),
    (["--seed", str(2**63)], "--seed must be a whole number from 0 to 2^63-1"),
    (["--schedule", "step", "--milestones", "120ep,80ep"], "--milestones must be in increasing order, got 120ep,80ep"),
    (["--schedule", "step", "--epochs", "30", "--milestones", "2ep,20it"], "--milestones must be in increasing order"),
])
def test_bad_training_options(capsys, tmp_path, r8_file, args, contains) -> None:
    out = tmp_path / "out.safetensors"
    out_args = [] if "-o" in args else ["-o", out]
    r = elth(capsys, "train", r8_file, *out_args, *args)
    assert_clean_error(r, codes=(2,), contains=contains)
    assert not out.exists()


def test_bad_eval_options(capsys, r8_file) -> None:
    assert_clean_error(elth(capsys, "eval", r8_file, "--split", "val"), codes=(2,), contains="unknown split")
    assert_clean_error(elth(capsys, "eval", r8_file, "--weights", "final"), codes=(2,), contains="weights must be")
    assert_clean_error(elth(capsys, "eval", r8_file, "--weights", "init", "--batch-size", "0"), codes=(2,),
                       contains="--batch-size must be at least 1")


def test_eval_refuses_a_distributed_launch(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT, Result, assert_clean_error, make_ticket

    path = tmp_path / "t.safetensors"
    make_ticket().save(path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run([sys.executable, "-m", "elth_cli", "eval", str(path), "--weights", "init"],
                          capture_output=True, env=env, timeout=120)
    assert_clean_error(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), (2,), "one process")


def test_checkpoint_every_is_checked_and_only_for_trainings(capsys, tmp_path, r8_file) -> None:
    r = elth(capsys, "train", r8_file, "-o", tmp_path / "x.safetensors", "--checkpoint-every", "-1")
    assert_clean_error(r, codes=(2,), contains="--checkpoint-every must be 0 or more")
    r = elth(capsys, "find", "--method", "random", "--from", r8_file, "--sparsity", "0.9", "-o",
             tmp_path / "y.safetensors", "--checkpoint-every", "5")
    assert_clean_error(r, codes=(2,), contains="--checkpoint-every is for training methods")


def test_a_warmup_or_milestone_past_the_end_is_refused_or_warned(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "x.safetensors"
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--warmup", "2ep")
    assert_clean_error(r, codes=(2,), contains="--warmup 2ep (46 steps) is not shorter than the run")
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "2", "--schedule", "step", "--milestones", "1ep,2ep")
    assert_clean_error(r, codes=(2,), contains="--milestones 2ep at or past the end")
    assert not out.exists()
    # The recipe's own 2-epoch warm-up in a 1-epoch run: the run goes on, with a warning that says so.
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "1", "-q")
    assert r.code == 0 and r.stderr.startswith("warning: the recipe's warm-up 2ep (46 steps) is not shorter")


def test_a_ticket_with_an_empty_layer_is_refused_by_find_and_train(capsys, tmp_path) -> None:
    sparse = tmp_path / "s.safetensors"
    r = elth(capsys, "find", "--method", "random", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity",
             "0.999", "-o", sparse)
    assert_clean_error(r, codes=(2,), contains="leaves no weight in")
    assert not sparse.exists()
    r = elth(capsys, "find", "--method", "random", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity",
             "0.999", "-o", sparse, "--allow-empty-layers")
    assert r.code == 0 and "warning: " in r.stderr and "keep no weight (conv.weight" in r.stderr
    r = elth(capsys, "train", sparse, "-o", tmp_path / "t.safetensors", "--epochs", "3")
    assert_clean_error(r, codes=(2,), contains="the ticket leaves no weight in")
    r = elth(capsys, "train", sparse, "-o", tmp_path / "t.safetensors", "--epochs", "3", "--allow-empty-layers", "-q")
    assert r.code == 0 and "keep no weight" in r.stderr


# ----- elth never deletes what it did not make (issue 27) ---------------------------------------------
def test_an_output_that_is_its_own_checkpoint_is_refused_before_any_work(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "out.safetensors"
    r = elth(capsys, "train", r8_file, "--checkpoint", out, "-o", out, "--epochs", "1")
    assert_clean_error(r, codes=(2,), contains="-o and --checkpoint are the same file")
    assert not out.exists()  # (it used to train, save, then delete the result as its checkpoint: exit 0)
    r = elth(capsys, "train", r8_file, "--checkpoint", r8_file, "-o", out, "--epochs", "1")
    assert_clean_error(r, codes=(2,), contains="the ticket and --checkpoint are the same file")
    log = tmp_path / "log.jsonl"
    r = elth(capsys, "train", r8_file, "--checkpoint", log, "-o", out, "--log-jsonl", log)
    assert_clean_error(r, codes=(2,), contains="--checkpoint and --log-jsonl are the same file")


@pytest.mark.parametrize("restart", [False, True])
def test_a_checkpoint_path_holding_another_file_is_never_overwritten(capsys, tmp_path, r8_file, restart) -> None:
    keep = tmp_path / "precious.safetensors"
    make_ticket("resnet8-w4", seed=3).save(keep)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = keep.read_bytes()
    out = tmp_path / "out.safetensors"
    for path, kind in ((keep, "an elth ticket file, not a checkpoint"), (notes, "not an elth checkpoint")):
        r = elth(capsys, "train", r8_file, "--checkpoint", path, "-o", out, "--epochs", "1",
                 *(["--restart"] if restart else []))
        assert_clean_error(r, codes=(2,), contains=kind)
        assert "choose another --checkpoint path" in r.stderr and not out.exists()
    assert keep.read_bytes() == before and notes.read_text() == "my notes"


def test_a_rerun_of_a_finished_training_succeeds_without_work(capsys, tmp_path, r8_file) -> None:
    out = tmp_path / "out.safetensors"
    args = ["train", r8_file, "-o", out, "--epochs", "1", "--json"]
    assert elth(capsys, *args).code == 0
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    r = elth(capsys, *args)  # a requeued job running its command again
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["reused"] is True and doc["sha256"] == Ticket.load(out).sha256
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    assert "epoch 1/1" not in r.stderr  # nothing trained
    # Another training at that path is not taken for this one.
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "1", "--lr", "0.01")
    assert_clean_error(r, codes=(2,), contains="is not this training (differs in: lr 0.05 -> 0.01")
    assert out.read_bytes() == before


def test_a_stop_while_the_result_is_saved_keeps_it_and_exits_75(capsys, tmp_path, r8_file, monkeypatch) -> None:
    """SIGTERM after the training, during the final save: the save finishes (no .tmp), the checkpoint goes
    only after the output is in place, and the exit status says it was stopped."""
    import signal

    out = tmp_path / "out.safetensors"
    real_save = Ticket.save

    def save_with_a_stop(self, path, force=False):
        os.kill(os.getpid(), signal.SIGTERM)  # lands in the middle of the save
        return real_save(self, path, force)

    monkeypatch.setattr(Ticket, "save", save_with_a_stop)
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "1", "--checkpoint-every", "0")
    assert r.code == 75, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("elth train: stopped by SIGTERM after its outputs were written; "
                                                 "re-running the same command finds them finished")
    assert Ticket.load(out).is_trained and not train.checkpoint_path_for(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))] == []
    monkeypatch.setattr(Ticket, "save", real_save)
    r = elth(capsys, "train", r8_file, "-o", out, "--epochs", "1")
    assert r.code == 0 and "already trained" in r.stderr


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 3.5])
def test_a_stop_during_start_up_exits_75_with_its_line(tmp_path, r8_file, delay) -> None:
    """SIGTERM while Python, the CLI, torch or the data load (it used to exit 143 with no message)."""
    import signal
    import time

    out = tmp_path / "out.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "elth_cli", "train", str(r8_file), "-o", str(out), "--epochs", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    err = stderr.decode()
    assert proc.returncode == 75, (proc.returncode, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("elth train: stopped by SIGTERM"), err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))] == []


def test_a_requeue_after_a_kill_before_the_first_checkpoint_runs_again(tmp_path, r8_file) -> None:
    """The SLURM array script passes --log-jsonl and re-runs the same command: a node failure before the first
    checkpoint left the log and stopped every requeue with "--log-jsonl already exists" (issue 28, item 4)."""
    import signal
    import time

    out, log = tmp_path / "out.safetensors", tmp_path / "log.jsonl"
    cmd = [sys.executable, "-m", "elth_cli", "train", str(r8_file), "-o", str(out), "--epochs", "4",
           "--log-jsonl", str(log), "--checkpoint-every", "3600"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().strip()):  # an epoch logged, no checkpoint yet
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not train.checkpoint_path_for(out).exists() and not out.exists()
    again = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))] == []
