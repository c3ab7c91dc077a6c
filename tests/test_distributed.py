"""Data-parallel runs: two processes on the CPU (gloo), launched by the tests themselves.

Launches go through ``torchrun`` (``python -m torch.distributed.run``, each test on a free
``--master-port``) or, where the test needs each rank's own exit status or wants to signal one
rank, as ``srun`` would start them (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_STEP_ID
plus MASTER_ADDR / MASTER_PORT). Every launch has a deadline, so a hang fails the test instead of
blocking the suite, and every rank runs one torch thread (the machine has two cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ROOT, Result, assert_clean_error, make_ticket
from elth_cli import cli, train
from elth_cli.runtime import distributed
from elth_cli.runtime.device import resolve_device
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket

# One and two processes, same global batch (64), resnet14-w4 at 50% sparsity on digits, seed 0.
# Measured on 2 CPU cores (seeds 0-3): two processes end within 2.8 points of one process after
# 15 epochs (within 1.9 after 30); a single process varies by about 3 points from seed to seed.
EPOCHS = "15"
ACCURACY_TOLERANCE = 0.04
LAUNCH_DEADLINE_S = 240  # a launch that takes longer has hung: fail
DIST_TIMEOUT_S = "60"  # --dist-timeout of the launched ranks

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment without any launcher's variables, one torch thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200", ELTH_DIST_TIMEOUT=DIST_TIMEOUT_S)
    env.update(extra)
    return env


def _result(proc: subprocess.CompletedProcess | subprocess.Popen, out: bytes, err: bytes) -> Result:
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def torchrun(*args: str, cwd: Path, **env: str) -> Result:
    """``torchrun --nproc-per-node 2 --master-port <free> -m elth_cli ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "elth_cli", *args]
    proc = subprocess.run(cmd, capture_output=True, cwd=cwd, env=_env(**env), timeout=LAUNCH_DEADLINE_S)
    return _result(proc, proc.stdout, proc.stderr)


def one_process(*args: str, cwd: Path, **env: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "elth_cli", *args], capture_output=True, cwd=cwd, env=_env(**env),
                          timeout=LAUNCH_DEADLINE_S)
    return _result(proc, proc.stdout, proc.stderr)


@dataclass
class Ranks:
    """Processes started the way ``srun`` starts tasks: each knows its rank from SLURM's variables."""

    procs: list[subprocess.Popen]

    @classmethod
    def start(cls, *args: str, cwd: Path, ranks: tuple[int, ...] = (0, 1), world_size: int = 2,
              master: bool = True, **env: str) -> "Ranks":
        port = str(free_port())
        procs = []
        for r in ranks:
            rank_env = dict(SLURM_PROCID=str(r), SLURM_NTASKS=str(world_size), SLURM_LOCALID=str(r), SLURM_STEP_ID="0",
                            **env)
            if master:
                rank_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([sys.executable, "-m", "elth_cli", *args], cwd=cwd, env=_env(**rank_env),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return cls(procs)

    def wait(self) -> list[Result]:
        deadline = time.monotonic() + LAUNCH_DEADLINE_S
        results = []
        try:
            for p in self.procs:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                results.append(_result(p, out, err))
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return results


def srun(*args: str, cwd: Path, **kw) -> list[Result]:
    return Ranks.start(*args, cwd=cwd, **kw).wait()


def assert_failed_together(results: list[Result], code: int, contains: str) -> None:
    """Every rank exits with ``code``; rank 0 prints one clean error line, the others print nothing."""
    assert [r.code for r in results] == [code] * len(results), [(r.code, r.stderr) for r in results]
    assert_clean_error(results[0], codes=(code,), contains=contains)
    for r in results[1:]:
        assert r.stderr == "" and r.stdout == "", r.stderr


def digests(folder: Path) -> dict[str, dict[int, dict]]:
    """The ELTH_DEBUG_DIGESTS files: {run name: {rank: {"masks": sha, "state": sha}}}."""
    out: dict[str, dict[int, dict]] = {}
    for f in folder.glob("*.json"):
        doc = json.loads(f.read_text())
        out.setdefault(doc["name"], {})[doc["rank"]] = doc
    return out


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


TRAIN_ARGS = ("--epochs", EPOCHS, "--seed", "0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same training with one process and with two (torchrun): the references of several tests."""
    base = tmp_path_factory.mktemp("ddp-train")
    make_ticket("resnet14-w4").save(base / "t.safetensors")
    one = one_process("train", "t.safetensors", "-o", "one.safetensors", *TRAIN_ARGS, "--json", cwd=base)
    assert one.code == 0, one.stderr
    two_dir = base / "two"
    two_dir.mkdir()
    (two_dir / "t.safetensors").write_bytes((base / "t.safetensors").read_bytes())
    two = torchrun("train", "t.safetensors", "-o", "two.safetensors", *TRAIN_ARGS, "--log-jsonl", "log.jsonl",
                   "--json", cwd=two_dir, ELTH_DEBUG_DIGESTS=str(base / "digests"))
    assert two.code == 0, two.stderr
    return {"base": base, "one": one, "two": two, "two_dir": two_dir,
            "one_ticket": Ticket.load(base / "one.safetensors"), "two_ticket": Ticket.load(two_dir / "two.safetensors")}


# ---------------------------------------------------------------------------------------------
# Training with two processes
# ---------------------------------------------------------------------------------------------


def test_two_processes_reach_the_accuracy_of_one(runs) -> None:
    a, b = runs["one_ticket"].metrics, runs["two_ticket"].metrics
    # Same global batch; two ranks drop the last partial batch (22 steps per epoch instead of 23)
    # and normalise BatchNorm over 32 images each, so the runs differ, but not by more than seeds do.
    assert a["test_acc"] > 0.85 and b["test_acc"] > 0.85, (a, b)
    assert abs(a["test_acc"] - b["test_acc"]) <= ACCURACY_TOLERANCE, (a["test_acc"], b["test_acc"])
    assert (a["total_steps"], b["total_steps"]) == (15 * 23, 15 * 22)
    assert b["world_size"] == 2 and "world_size" not in a


def test_two_processes_write_once_and_agree(runs) -> None:
    two, folder = runs["two"], runs["two_dir"]
    # One output, no checkpoint left, no per-rank or temporary files.
    assert files(folder) == {"t.safetensors", "two.safetensors", "log.jsonl"}
    summary = json.loads(two.stdout)  # exactly one JSON document: rank 1 printed nothing on stdout
    assert summary["metrics"]["test_acc"] == runs["two_ticket"].metrics["test_acc"]
    epoch_lines = [line for line in two.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 15  # rank 0's progress only
    assert [json.loads(x)["epoch"] for x in (folder / "log.jsonl").read_text().splitlines()] == list(range(1, 16))
    # Both ranks started from the same weights and masks and ended with the same weights.
    d = digests(runs["base"] / "digests")
    assert {name: sorted(v) for name, v in d.items()} == {"resnet14-w4 on digits start": [0, 1],
                                                          "resnet14-w4 on digits end": [0, 1]}
    for name, by_rank in d.items():
        assert by_rank[0]["masks"] == by_rank[1]["masks"] and by_rank[0]["state"] == by_rank[1]["state"], name
    trained = runs["two_ticket"]
    assert d["resnet14-w4 on digits end"][0]["state"] == distributed.tensors_digest(trained.trained)
    # The recorded configuration names the run's processes.
    env = trained.config["environment"]
    assert (env["world_size"], env["launcher"], env["backend"]) == (2, "torchrun", "gloo")
    assert trained.config["command"] == "train" and trained.config["hparams"]["steps_per_epoch"] == 22
    assert trained.hparams["world_size"] == 2 and trained.hparams["device"] == "cpu"
    one_env = runs["one_ticket"].config["environment"]
    assert (one_env["world_size"], one_env["launcher"], one_env["backend"]) == (1, "single", None)


def test_stop_one_rank_and_rerun_matches_the_uninterrupted_run(runs, tmp_path) -> None:
    """SIGTERM to rank 1 alone: both ranks checkpoint once and exit 75; changed arguments and another
    world size are refused; the same command then finishes with the uninterrupted run's weights."""
    (tmp_path / "t.safetensors").write_bytes((runs["base"] / "t.safetensors").read_bytes())
    args = ("train", "t.safetensors", "-o", "out.safetensors", *TRAIN_ARGS, "--log-jsonl", "log.jsonl")
    ranks = Ranks.start(*args, cwd=tmp_path)
    log = tmp_path / "log.jsonl"
    deadline = time.monotonic() + LAUNCH_DEADLINE_S
    while not (log.exists() and log.read_text().strip()):  # epoch 1 done: the run is in epoch 2
        assert all(p.poll() is None for p in ranks.procs), "a rank ended before the first epoch did"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    ranks.procs[1].send_signal(signal.SIGTERM)
    stopped = ranks.wait()
    assert [r.code for r in stopped] == [75, 75], [r.stderr for r in stopped]
    last = stopped[0].stderr.strip().splitlines()[-1]
    assert last.startswith("elth train: stopped by SIGTERM at step ") and "re-run the same command" in last
    assert stopped[1].stderr == ""  # rank 1 got the signal but stays quiet
    assert files(tmp_path) == {"t.safetensors", "log.jsonl", "out.safetensors.ckpt"}
    ckpt = train.read_checkpoint(tmp_path / "out.safetensors.ckpt")
    # The ranks agree every STOP_CHECK_EVERY steps from the start and at every epoch end (22 steps).
    assert 22 <= ckpt.step < 15 * 22 and (ckpt.step % distributed.STOP_CHECK_EVERY == 0 or ckpt.step % 22 == 0)
    assert ckpt.identity["world_size"] == 2

    changed = srun(*args, "--lr", "0.01", cwd=tmp_path)
    assert_failed_together(changed, 2, "differs in: lr 0.05 -> 0.01")
    alone = one_process(*args, cwd=tmp_path)
    assert_clean_error(alone, codes=(2,), contains="steps_per_epoch 22 -> 23; world_size 2 -> 1")
    assert files(tmp_path) == {"t.safetensors", "log.jsonl", "out.safetensors.ckpt"}

    resumed = srun(*args, cwd=tmp_path)
    assert [r.code for r in resumed] == [0, 0], [r.stderr for r in resumed]
    assert f"from step {ckpt.step} (resumed)" in resumed[0].stderr
    assert files(tmp_path) == {"t.safetensors", "log.jsonl", "out.safetensors"}
    a, b = Ticket.load(tmp_path / "out.safetensors"), runs["two_ticket"]
    for k in b.trained:
        assert torch.equal(a.trained[k], b.trained[k]), k  # gloo on the CPU: bit for bit
    assert a.metrics["test_acc"] == b.metrics["test_acc"] and a.metrics["test_loss"] == b.metrics["test_loss"]
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == list(range(1, 16))
    assert a.config["environment"]["launcher"] == "srun"


def test_sigterm_to_torchrun_checkpoints_every_rank(tmp_path) -> None:
    """torchrun forwards SIGTERM to its workers: they agree on a step, rank 0 writes one checkpoint.

    (Resuming from such a checkpoint is the test above.)"""
    make_ticket("resnet8-w4").save(tmp_path / "t.safetensors")
    args = ["train", "t.safetensors", "-o", "out.safetensors", "--epochs", "8", "--log-jsonl", "log.jsonl"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "elth_cli", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + LAUNCH_DEADLINE_S
        while not ((tmp_path / "log.jsonl").exists() and (tmp_path / "log.jsonl").read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=LAUNCH_DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # torchrun itself exits 1 whatever its workers' statuses (docs/slurm/README.md); rank 0 said why it stopped.
    text = err.decode()
    assert proc.returncode != 0
    assert text.count("elth train: stopped by SIGTERM at step ") == 1, text
    assert "Traceback" not in text.split("elth train: stopped")[0]  # the workers stopped cleanly
    assert files(tmp_path) == {"t.safetensors", "log.jsonl", "out.safetensors.ckpt"}
    ckpt = train.read_checkpoint(tmp_path / "out.safetensors.ckpt")
    assert 22 <= ckpt.step < 8 * 22 and ckpt.identity["world_size"] == 2


# ---------------------------------------------------------------------------------------------
# IMP with two processes
# ---------------------------------------------------------------------------------------------


def test_imp_ranks_train_with_identical_masks(tmp_path) -> None:
    args = ["find", "--method", "imp", "--arch", "resnet14-w4", "--dataset", "digits", "--rounds", "2", "--rewind",
            "5it", "--epochs", "2", "--eval-every", "0", "--out-dir", "run"]
    r = torchrun(*args, "-o", "final.safetensors", "--json", cwd=tmp_path, ELTH_DEBUG_DIGESTS=str(tmp_path / "d"))
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["round"] for x in doc["rounds"]] == [0, 1, 2]
    run = tmp_path / "run"
    # Rank 0 alone wrote the folder: the rounds, their epoch records, the run's files; no checkpoint left.
    assert files(run) == {"find.json", "find.jsonl", "round-00.safetensors", "round-01.safetensors",
                          "round-02.safetensors", "round-00.jsonl", "round-01.jsonl", "round-02.jsonl"}
    assert [json.loads(x)["round"] for x in (run / "find.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert (tmp_path / "final.safetensors").read_bytes() == (run / "round-02.safetensors").read_bytes()
    d = digests(tmp_path / "d")
    for r_ in range(3):
        for when in ("start", "end"):
            by_rank = d[f"IMP round {r_}/2 resnet14-w4 {when}"]
            assert by_rank[0]["masks"] == by_rank[1]["masks"], (r_, when)  # what each rank trained with
            assert by_rank[0]["state"] == by_rank[1]["state"], (r_, when)
        saved = Ticket.load(run / f"round-{r_:02d}.safetensors")
        assert d[f"IMP round {r_}/2 resnet14-w4 start"][1]["masks"] == distributed.tensors_digest(saved.masks)
        assert saved.config["environment"]["world_size"] == 2 and saved.hparams["world_size"] == 2
    pruned = Ticket.load(run / "round-02.safetensors")
    assert abs(pruned.sparsity - 0.36) < 1e-3
    # The folder belongs to a two-process run: one process may not continue it.
    alone = one_process(*args, cwd=tmp_path)
    assert_clean_error(alone, codes=(2,), contains="world_size 2 -> 1")


# ---------------------------------------------------------------------------------------------
# Bad input: one line on rank 0, every rank non-zero, nothing written
# ---------------------------------------------------------------------------------------------


def test_batch_not_divisible_and_sync_bn_on_cpu_are_refused(tmp_path) -> None:
    make_ticket("resnet8-w4").save(tmp_path / "t.safetensors")
    results = srun("train", "t.safetensors", "-o", "out.safetensors", "--batch-size", "63", cwd=tmp_path)
    assert_failed_together(results, 2, "batch size 63 is the global batch and must be divisible by the world size 2")
    results = srun("train", "t.safetensors", "-o", "out.safetensors", "--sync-bn", cwd=tmp_path)
    assert_failed_together(results, 2, "--sync-bn needs CUDA GPUs")
    results = srun("find", "--method", "imp", "--arch", "resnet8-w4", "--dataset", "digits", "--rounds", "1",
                   "--batch-size", "33", "--out-dir", "run", cwd=tmp_path)
    assert_failed_together(results, 2, "divisible by the world size 2")
    assert files(tmp_path) == {"t.safetensors"}


def test_a_rank_that_cannot_reach_the_others(tmp_path) -> None:
    make_ticket("resnet8-w4").save(tmp_path / "t.safetensors")
    started = time.monotonic()
    (alone,) = srun("train", "t.safetensors", "-o", "out.safetensors", "--dist-timeout", "3", cwd=tmp_path,
                    ranks=(0,))
    assert_clean_error(alone, codes=(1,), contains="could not reach the other ranks within 3 s")
    assert time.monotonic() - started < 60
    results = srun("train", "t.safetensors", "-o", "out.safetensors", cwd=tmp_path, master=False)
    assert_failed_together(results, 2, "MASTER_ADDR and MASTER_PORT are not set")
    assert files(tmp_path) == {"t.safetensors"}
    # A rank that dies mid-run: the survivor says so in one line and fails; the last epoch's checkpoint stays.
    ranks = Ranks.start("train", "t.safetensors", "-o", "out.safetensors", "--epochs", "8", "--log-jsonl", "log.jsonl",
                        "--dist-timeout", "20", cwd=tmp_path)
    deadline = time.monotonic() + LAUNCH_DEADLINE_S
    while not ((tmp_path / "log.jsonl").exists() and (tmp_path / "log.jsonl").read_text().strip()):
        assert all(p.poll() is None for p in ranks.procs) and time.monotonic() < deadline
        time.sleep(0.02)
    ranks.procs[1].kill()
    survivor, killed = ranks.wait()
    assert killed.code == -signal.SIGKILL
    lines = [line for line in survivor.stderr.splitlines() if line.startswith("error: ")]
    assert survivor.code == 1 and "Traceback" not in survivor.stderr, survivor.stderr
    assert len(lines) == 1 and "lost contact with the other ranks" in lines[0], survivor.stderr
    assert files(tmp_path) == {"t.safetensors", "log.jsonl", "out.safetensors.ckpt"}


_HELPERS_SCRIPT = """
import json, sys
import torch
from elth_cli import data, train
from elth_cli.runtime import distributed
from elth_cli.errors import ElthError
from elth_cli.find import random_ticket

launch = distributed.detect_launch()
out = {}
with distributed.session(launch, torch.device("cpu"), 30) as rt:
    r = rt.rank
    out["broadcast"] = distributed.broadcast_object({"from": r})
    try:
        distributed.run_on_main(lambda: (_ for _ in ()).throw(ElthError("rank 0 says no", 3)))
    except ElthError as e:
        out["run_on_main"] = [str(e), e.exit_code]
    try:
        with distributed.agree_on_errors():
            if r == 1:
                raise ElthError("only rank 1 fails", 4)
    except ElthError as e:
        out["agree"] = [str(e), e.exit_code]
    out["stop"] = distributed.agree_on_stop(15 if r == 1 else None, rt.device)
    out["no_stop"] = distributed.agree_on_stop(None, rt.device)
    bundle = data.load_dataset("digits")
    model = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=0).build_model()
    # Different running statistics on each rank until rank 0's are copied over.
    model.bn.running_mean.fill_(float(r))
    distributed.sync_buffers(model)
    out["bn"] = model.bn.running_mean.tolist()[:2]
    out["eval"] = train.evaluate(model, bundle, "test", 100, rank=r, world_size=2)
json.dump(out, open(sys.argv[1] + f"/rank{r}.json", "w"))
"""


def test_collective_helpers(tmp_path) -> None:
    script = tmp_path / "helpers.py"
    script.write_text(textwrap.dedent(_HELPERS_SCRIPT))
    procs = Ranks([])
    port = str(free_port())
    for r in (0, 1):
        env = _env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r), SLURM_STEP_ID="0",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = procs.wait()
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    docs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for doc in docs:
        assert doc["broadcast"] == {"from": 0}
        assert doc["run_on_main"] == ["rank 0 says no", 3]  # rank 0's error on every rank
        assert doc["agree"] == ["rank 1: only rank 1 fails", 4]  # one rank's failure stops both
        assert (doc["stop"], doc["no_stop"]) == (15, 0)
        assert doc["bn"] == [0.0, 0.0]
    # Each rank evaluated half of the test split; the all-reduced metrics are those of the whole split.
    model = make_ticket("resnet8-w4").build_model()
    from elth_cli import data

    whole = train.evaluate(model, data.load_dataset("digits"), "test", 100)
    for doc in docs:
        assert doc["eval"]["examples"] == whole["examples"] == 360
        assert doc["eval"]["accuracy"] == pytest.approx(whole["accuracy"], abs=1e-12)
        assert doc["eval"]["loss"] == pytest.approx(whole["loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# In one process: launcher detection, devices, signals, recorded configuration
# ---------------------------------------------------------------------------------------------


def test_detect_launch() -> None:
    assert distributed.detect_launch({}) == distributed.Launch()
    torchrun_env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "2"}
    assert distributed.detect_launch(torchrun_env) == distributed.Launch(3, 4, 1, "torchrun")
    srun_env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert distributed.detect_launch(srun_env) == distributed.Launch(5, 8, 1, "srun")
    # The job script itself (no job step) is one process, whatever SLURM_NTASKS says.
    assert distributed.detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == distributed.Launch()
    assert not distributed.detect_launch({"RANK": "0", "WORLD_SIZE": "1"}).distributed
    with pytest.raises(UsageError, match="not a whole number"):
        distributed.detect_launch({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="not a valid rank"):
        distributed.detect_launch({"RANK": "2", "WORLD_SIZE": "2"})


def test_local_device() -> None:
    two = distributed.Launch(1, 2, 1, "torchrun")
    assert resolve_device("cpu", two) == torch.device("cpu")
    with pytest.raises(UsageError, match="all 2 processes on one GPU"):
        resolve_device("cuda:0", two)
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu", two)
    if not torch.cuda.is_available():
        assert resolve_device("auto", two) == torch.device("cpu")
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda", two)
    assert resolve_device("cpu", distributed.Launch()) == torch.device("cpu")


def test_repeated_ctrl_c_within_the_grace_is_one_stop() -> None:
    flag = train.StopFlag()
    with train.stop_signals(flag, repeat_grace_s=30.0):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun forwarding the same Ctrl-C: no abort
    assert flag.signum == signal.SIGINT
    flag = train.StopFlag()
    with pytest.raises(KeyboardInterrupt):
        with train.stop_signals(flag):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_fields_added_later_take_their_default_when_resuming() -> None:
    cfg = train.TrainConfig(dataset="digits", recipe="digits", epochs=1, batch_size=64, lr=0.05, momentum=0.9,
                            weight_decay=5e-4, schedule="cosine", milestones=(), gamma=0.1, warmup="0it")
    old = {"config": {k: v for k, v in cfg.as_dict().items() if k != "sync_bn"}, "world_size": 1}
    assert train.run_differences(old, {"config": cfg.as_dict(), "world_size": 1}) == []
    assert train.run_differences(old, {"config": cfg.replace(sync_bn=True).as_dict(), "world_size": 1}) == \
        ["sync_bn False -> True"]


def test_config_metadata_round_trips_and_info_shows_it(capsys, runs) -> None:
    path = runs["two_dir"] / "two.safetensors"
    ticket = Ticket.load(path)
    again = Ticket.from_bytes(ticket.to_bytes())
    assert again.config == ticket.config and "config" not in again.extra
    env = ticket.config["environment"]
    for key in ("elth", "python", "torch", "cuda", "cudnn", "device", "platform", "hostname"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["device"].startswith("cpu")
    with pytest.raises(SystemExit):
        cli.main(["info", str(path)])
    text = capsys.readouterr().out
    assert "config      elth train on cpu" in text and "2 processes (torchrun, gloo)" in text
    assert f"torch {torch.__version__}" in text and "hparams     " in text and "world_size 2" in text
    with pytest.raises(SystemExit):
        cli.main(["info", str(path), "--json"])
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["config"] == ticket.config


def test_a_family_from_outside_elth_trains_on_two_ranks_and_on_two_workers(tmp_path) -> None:
    """--family-module reaches every rank (each parses its command line) and every --jobs worker (ELTH_FAMILIES)."""
    plugin = str(Path(__file__).resolve().parent / "plugins" / "resmlp_family.py")
    fm = ("--family-module", plugin)
    for seed in ("0", "1"):
        r = one_process(*fm, "find", "-m", "random", "--arch", "testmlp2-w16", "--dataset", "digits", "--sparsity",
                        "0.5", "--seed", seed, "-o", f"r{seed}.safetensors", cwd=tmp_path)
        assert r.code == 0, r.stderr
    r = torchrun(*fm, "train", "r0.safetensors", "-o", "ddp.safetensors", "--epochs", "1", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["world_size"] == 2
    r = one_process("train", "r0.safetensors", "r1.safetensors", "--out-dir", "out", "--jobs", "2", "--epochs", "1",
                    "--json", *fm, cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert [x["status"] for x in json.loads(r.stdout)["results"]] == ["done", "done"]
