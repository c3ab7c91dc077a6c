"""The SLURM job scripts of docs/slurm/ and ``srun``-started ranks, on a real one-node cluster.

tests/slurm/cluster.sh starts the cluster (CI does, before the tests; the ``slurm_cluster``
fixture tries once per session otherwise), and every test here skips when there is none. The
jobs run on the CPU: the scripts' GPU requests are zeroed on sbatch's command line and their
defaults (CIFAR-10, resnet20, 10 rounds, one process per GPU) overridden through the environment,
as docs/slurm/README.md ("On a CPU node") describes.

All jobs are submitted at once, with the local runs they are compared with, and run side by side
(two cores: tiny networks, a few epochs of ``digits``, one torch thread per process); each test
then waits for its own. Two of them are preempted as a cluster does it: SIGUSR1, a checkpoint,
``scontrol requeue`` from the script, and a restart that continues from the checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_ticket
from elth_cli.ticket import Ticket
from slurm import jobs
from test_distributed import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SCRIPTS = ROOT / "docs" / "slurm"
TARGETS = ("resnet20-w4", "resnet26-w4")
TRAIN_ARGS = ("--epochs", "4", "--device", "cpu", "--checkpoint-every", "0")  # a checkpoint at every epoch's end
IMP_ENV = dict(ELTH_NPROC="2", ELTH_DATASET="digits", ELTH_ARCH="resnet14-w4", ELTH_ROUNDS="1", ELTH_REWIND="5it",
               ELTH_ARGS="--epochs 3 --eval-every 0 --checkpoint-every 0")
# The IMP script's command with IMP_ENV (and its --seed 0), for the uninterrupted reference.
IMP_FIND = ("find", "--method", "imp", "--arch", "resnet14-w4", "--dataset", "digits", "--rounds", "1", "--rewind",
            "5it", "--seed", "0", "--out-dir", "imp", "--epochs", "3", "--eval-every", "0", "--checkpoint-every", "0")
SRUN_TRAIN = ("train", "t.safetensors", "--epochs", "1", "--device", "cpu", "--seed", "0")

_SRUN_SCRIPT = """#!/bin/bash
#SBATCH --job-name=elth-srun
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --output=logs/%x-%j.out
# Two ranks started by srun, as docs/slurm/README.md ("Without torchrun") does it.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$1
srun elth {train} -o srun.safetensors
"""


def _elth(*args: str, cwd: Path) -> None:
    """A local run, in the jobs' environment; fails with its stderr."""
    r = subprocess.run([sys.executable, "-m", "elth_cli", *args], cwd=cwd, env=jobs.job_env(), capture_output=True,
                       text=True, timeout=jobs.JOB_DEADLINE_S)
    assert r.returncode == 0, f"elth {' '.join(args)}: {r.stderr}"


def _local_torchrun(*args: str, cwd: Path) -> None:
    """Two local processes under torchrun, as tests/test_distributed.py starts them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "elth_cli", *args]
    r = subprocess.run(cmd, cwd=cwd, env=jobs.job_env(), capture_output=True, text=True, timeout=jobs.JOB_DEADLINE_S)
    assert r.returncode == 0, r.stderr


def _reference_training(base: Path) -> None:
    """What the preempted array task trains, stretched and trained here without interruption."""
    ref = base / "ref"
    ref.mkdir()
    _elth("stretch", str(base / "src.safetensors"), "--target", TARGETS[1], "-o", "s.safetensors", cwd=ref)
    _elth("train", "s.safetensors", "--dataset", "digits", "--seed", "0", "-o", "trained.safetensors", *TRAIN_ARGS,
          cwd=ref)


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """Every job submitted, every local reference and preemption under way; cancelled at the end."""
    base = tmp_path_factory.mktemp("slurm")
    (base / "logs").mkdir()
    make_ticket("resnet14-w4").save(base / "src.safetensors")
    make_ticket("resnet14-w4", seed=1).save(base / "t.safetensors")
    (base / "srun.sbatch").write_text(_SRUN_SCRIPT.format(train=" ".join(SRUN_TRAIN)))
    (base / "local").mkdir()
    (base / "local-imp").mkdir()
    (base / "local" / "t.safetensors").write_bytes((base / "t.safetensors").read_bytes())
    submitted: list[str] = []

    def submit(script: Path, *args: str, options: tuple[str, ...], **env: str) -> str:
        submitted.append(jobs.sbatch(script, *args, options=options, cwd=base, env=jobs.job_env(**env)))
        return submitted[-1]

    array = submit(SCRIPTS / "stretch-array.sbatch", "src.safetensors", "stretched",
                   options=("--gpus=0", "--cpus-per-task=1", f"--array=0-{len(TARGETS) - 1}"),
                   ELTH_DATASET="digits", ELTH_TARGETS=" ".join(TARGETS), ELTH_ARGS=" ".join(TRAIN_ARGS))
    imp = submit(SCRIPTS / "imp-multigpu.sbatch", "imp", options=("--gpus-per-node=0", "--cpus-per-task=2"),
                 **IMP_ENV)
    srun = submit(base / "srun.sbatch", str(free_port()), options=())
    logs = {"array": [base / "logs" / f"elth-stretch-{array}_{i}.out" for i in range(len(TARGETS))],
            "imp": base / "logs" / f"elth-imp-{imp}.out", "srun": base / "logs" / f"elth-srun-{srun}.out"}
    pool = ThreadPoolExecutor(max_workers=5)
    # Array task 1 is stopped through its job step (the script's --signal=USR1@90), the IMP job
    # through its batch script (--signal=B:USR1@90), each once its first checkpoint is written.
    task1_ckpt = base / "stretched" / f"{TARGETS[1]}-trained.safetensors.ckpt"
    futures: dict[str, Future] = {
        "array_preempted": pool.submit(jobs.preempt, f"{array}_1", task1_ckpt.exists, logs["array"][1], batch=False),
        "imp_preempted": pool.submit(jobs.preempt, imp, (base / "imp" / "round-00.ckpt").exists, logs["imp"],
                                     batch=True),
        "reference": pool.submit(_reference_training, base),
        "local_two": pool.submit(_local_torchrun, *SRUN_TRAIN, "-o", "two.safetensors", cwd=base / "local"),
        "imp_reference": pool.submit(_local_torchrun, *IMP_FIND, cwd=base / "local-imp"),
    }
    yield {"base": base, "array": array, "imp": imp, "srun": srun, "logs": logs, "futures": futures}
    jobs.cancel(submitted)
    pool.shutdown(wait=True, cancel_futures=True)


def _info(*tickets: Path) -> list[dict]:
    """``elth info --json``: the tickets read back and validated by the CLI."""
    r = subprocess.run([sys.executable, "-m", "elth_cli", "info", "--json", *map(str, tickets)], env=jobs.job_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _assert_equal_weights(a: Path, b: Path) -> None:
    ta, tb = Ticket.load(a), Ticket.load(b)
    assert ta.trained.keys() == tb.trained.keys()
    for k in tb.trained:
        assert torch.equal(ta.trained[k], tb.trained[k]), k  # gloo / one process on the CPU: bit for bit


def test_job_array_trains_every_target(cluster_runs) -> None:
    """stretch-array.sbatch: each array task stretches the source to its target and trains it."""
    base, logs = cluster_runs["base"], cluster_runs["logs"]["array"]
    recs = jobs.wait_for_end(cluster_runs["array"], logs[0], tasks=len(TARGETS))
    jobs.assert_completed(recs, logs[0])
    # Task 1's preemption requeued task 1 alone: task 0 ran once.
    assert [r["Restarts"] for r in sorted(recs, key=lambda r: r["ArrayTaskId"])] == ["0", "1"], recs
    assert sorted(r["ArrayTaskId"] for r in recs) == [str(i) for i in range(len(TARGETS))]
    out = base / "stretched"
    docs = _info(*(out / f"{t}-trained.safetensors" for t in TARGETS))
    for target, doc in zip(TARGETS, docs):
        assert doc["arch"] == target and doc["metrics"]["total_steps"] == 4 * 23, doc["metrics"]
        assert (out / f"{target}.safetensors").exists() and (out / f"{target}-trained.jsonl").exists()
        assert not (out / f"{target}-trained.safetensors.ckpt").exists()  # a finished run removes it


def test_preempted_array_task_resumes_to_the_uninterrupted_weights(cluster_runs) -> None:
    """SIGUSR1 to array task 1's step: elth checkpoints and exits 75, the script requeues the task,
    and the restarted task continues from the checkpoint to the weights of a run never stopped."""
    base, log = cluster_runs["base"], cluster_runs["logs"]["array"][1]
    cluster_runs["futures"]["array_preempted"].result(timeout=jobs.JOB_DEADLINE_S)
    (rec,) = jobs.wait_for_end(f"{cluster_runs['array']}_1", log)
    jobs.assert_completed([rec], log)
    assert rec["Restarts"] == "1", rec  # SLURM_RESTART_COUNT=1 in the restarted task
    text = log.read_text()
    assert f"stopped with a checkpoint (exit 75): requeueing {cluster_runs['array']}_1" in text, text
    assert "(resumed)" in text, text
    cluster_runs["futures"]["reference"].result(timeout=jobs.JOB_DEADLINE_S)
    _assert_equal_weights(base / "stretched" / f"{TARGETS[1]}-trained.safetensors", base / "ref" / "trained.safetensors")


def test_imp_script_on_two_cpu_processes_survives_a_preemption(cluster_runs) -> None:
    """imp-multigpu.sbatch with torchrun's two processes on the CPU (gloo): SIGUSR1 to the batch
    script goes through srun and torchrun to both ranks, the script requeues, the round resumes
    and every round ends as in a run never stopped."""
    base, log = cluster_runs["base"], cluster_runs["logs"]["imp"]
    cluster_runs["futures"]["imp_preempted"].result(timeout=jobs.JOB_DEADLINE_S)
    (rec,) = jobs.wait_for_end(cluster_runs["imp"], log)
    jobs.assert_completed([rec], log)
    assert rec["Restarts"] == "1", rec
    text = log.read_text()
    assert "SIGUSR1: asking the ranks to checkpoint and stop" in text and "requeueing job" in text, text
    assert text.count("elth find: stopped by SIGUSR1") == 1 and "(resumed)" in text, text
    run = base / "imp"
    assert {p.name for p in run.iterdir()} == {"find.json", "find.jsonl", "final.safetensors", "round-00.safetensors",
                                               "round-01.safetensors", "round-00.jsonl", "round-01.jsonl"}
    docs = _info(run / "round-00.safetensors", run / "round-01.safetensors")
    assert [d["arch"] for d in docs] == ["resnet14-w4"] * 2
    assert docs[1]["config"]["environment"]["world_size"] == 2
    assert (run / "final.safetensors").read_bytes() == (run / "round-01.safetensors").read_bytes()
    cluster_runs["futures"]["imp_reference"].result(timeout=jobs.JOB_DEADLINE_S)
    for name in ("round-00.safetensors", "round-01.safetensors"):  # as if never stopped
        _assert_equal_weights(run / name, base / "local-imp" / "imp" / name)


def test_srun_starts_two_ranks_that_train_as_torchrun_does(cluster_runs) -> None:
    """``srun elth train`` in a two-task job: both ranks from SLURM's variables, one data-parallel
    training, the same weights as two local processes under torchrun."""
    base, log = cluster_runs["base"], cluster_runs["logs"]["srun"]
    (rec,) = jobs.wait_for_end(cluster_runs["srun"], log)
    jobs.assert_completed([rec], log)
    cluster_runs["futures"]["local_two"].result(timeout=jobs.JOB_DEADLINE_S)
    (doc,) = _info(base / "srun.safetensors")
    env = doc["config"]["environment"]
    assert (env["world_size"], env["launcher"], env["backend"]) == (2, "srun", "gloo"), env
    _assert_equal_weights(base / "srun.safetensors", base / "local" / "two.safetensors")
