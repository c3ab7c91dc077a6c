"""The worker pool: order, dependencies, per-job failures, threads per worker, stop signals."""

from __future__ import annotations

import os
import signal
import time

import pytest

from elth_cli.runtime import pool as jobs
from elth_cli.errors import ElthError, UsageError
from elth_cli.runtime.pool import run_jobs
from elth_cli.runtime import slots
from elth_cli.runtime.slots import plan_slots
from elth_cli.runtime.workers import Job
from elth_cli.runtime.signals import TrainingStopped, stopped_error

# ----- job functions (module level: workers import them by name) ------------------------------------



def square(worker, x):
    import torch

    worker.note(f"squaring {x}", 0.5)
    return {"x": x * x, "pid": os.getpid(), "threads": torch.get_num_threads(), "device": worker.device}


def fail(worker, message="bad input"):
    raise UsageError(message)


def crash(worker):
    raise ZeroDivisionError("division by zero\nsecond line")


def environment(worker, name):
    return {"value": os.environ.get(name), "parent": os.getppid()}


def die(worker):
    os._exit(3)


def wait_for_stop(worker, ask_main=None, seconds=60.0, mark=None, after_mark=None):
    """Spin until the worker's stop flag is set, as a training checks it between steps. ``mark``: a file
    it writes once running; ``after_mark``: a file it waits for before asking the main process (the
    pid ``ask_main``; a worker's parent is the fork server) to stop."""
    if mark is not None:
        open(mark, "w").close()
    if after_mark is not None:
        deadline = time.monotonic() + seconds
        while not os.path.exists(after_mark) and time.monotonic() < deadline:
            time.sleep(0.01)
    if ask_main is not None:
        os.kill(ask_main, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if worker.stop.requested:
            raise stopped_error(worker.stop.signum, "the spin", None, 0)
        time.sleep(0.01)
    return "never stopped"


# ----- tests --------------------------------------------------------------------------------------


def test_check_jobs_refuses_bad_graphs_and_puts_the_critical_path_first():
    a, b, c = Job("a", square, cost=1), Job("b", square, after=("a",), cost=5), Job("c", square, cost=2)
    assert jobs.check_jobs([a, b, c]) == {"a": 6, "b": 5, "c": 2}
    with pytest.raises(UsageError, match="two jobs are named 'a'"):
        jobs.check_jobs([a, a])
    with pytest.raises(UsageError, match="waits for 'z'"):
        jobs.check_jobs([Job("a", square, after=("z",))])
    with pytest.raises(UsageError, match="cycle"):
        jobs.check_jobs([Job("a", square, after=("b",)), Job("b", square, after=("a",))])


def test_plan_slots_share_the_cores():
    assert plan_slots(1, "cpu", cores=8) == [jobs.Slot(0, "cpu", None)]  # one job: this process, its threads
    assert [s.threads for s in plan_slots(4, "cpu", cores=8)] == [2, 2, 2, 2]
    assert [s.threads for s in plan_slots(3, "cpu", cores=2)] == [1, 1, 1]  # at least one each
    with pytest.raises(UsageError, match="at least 1"):
        plan_slots(0, "cpu")
    if not __import__("torch").cuda.is_available():
        assert [s.device for s in plan_slots(2, "auto", cores=2)] == ["cpu", "cpu"]
        with pytest.raises(UsageError, match="CUDA is not available"):
            plan_slots(2, "cuda")


def test_in_this_process_a_failure_stays_with_its_job():
    events = []
    result = run_jobs([Job("a", square, {"x": 3}), Job("b", square, {"x": 4}, after=("a",)),
                       Job("c", fail), Job("d", square, {"x": 5}, after=("c",)), Job("e", crash)],
                      plan_slots(1, "cpu"), events.append)
    out = result.outcomes
    assert list(out) == ["a", "b", "c", "d", "e"]
    assert out["a"].value["x"] == 9 and out["b"].value["x"] == 16 and out["a"].value["pid"] == os.getpid()
    assert out["c"].status == "failed" and out["c"].message == "bad input" and out["c"].exit_code == 2
    assert out["d"].status == "skipped" and "needs c" in out["d"].message
    assert out["e"].status == "failed" and out["e"].message == "ZeroDivisionError: division by zero"
    assert "Traceback" in out["e"].detail
    assert [(e.kind, e.job) for e in events if e.kind == "note"] == [("note", "a"), ("note", "b")]
    with pytest.raises(ElthError, match=r"3 of 5 jobs failed: c, d, e \(each one's error is above\); the other 2 are done"):
        result.check("jobs")
    with pytest.raises(ElthError, match=r"1 of 2 jobs failed: c \(each one's error is above\); the other one is done$"):
        run_jobs([Job("a", square, {"x": 1}), Job("c", fail)], plan_slots(1, "cpu")).check("jobs")
    with pytest.raises(ElthError, match=r"1 of 1 jobs failed: c \(each one's error is above\); none is done$"):
        run_jobs([Job("c", fail)], plan_slots(1, "cpu")).check("jobs")


def test_workers_run_side_by_side_with_their_threads_and_survive_a_dead_worker():
    result = run_jobs([Job("a", square, {"x": 2}), Job("b", square, {"x": 3}), Job("dies", die),
                       Job("c", square, {"x": 4}, after=("dies",)), Job("d", square, {"x": 5})],
                      plan_slots(2, "cpu", cores=2))
    out = result.outcomes
    done = [out[n].value for n in ("a", "b", "d")]
    assert [v["x"] for v in done] == [4, 9, 25]
    assert {v["threads"] for v in done} == {1} and all(v["pid"] != os.getpid() for v in done)
    assert out["dies"].status == "failed" and "worker process died (exit status 3)" in out["dies"].message
    assert out["c"].status == "skipped"
    assert result.stopped_by is None


def test_a_stop_signal_reaches_every_running_job_and_starts_no_other(tmp_path):
    # The first job asks the main process to stop (SIGTERM), as a scheduler would: it forwards the
    # signal to both workers, both running jobs stop, the third never starts. "trigger" waits until
    # "other" is running (a busy machine may start the second worker's job first).
    running = str(tmp_path / "other-is-running")
    result = run_jobs([Job("trigger", wait_for_stop, {"ask_main": os.getpid(), "after_mark": running}),
                       Job("other", wait_for_stop, {"mark": running}, cost=10),
                       Job("later", square, {"x": 1}, after=("other",))], plan_slots(2, "cpu", cores=2))
    out = result.outcomes
    assert out["trigger"].status == "stopped" and out["other"].status == "stopped"
    assert out["later"].status == "not started"
    assert result.stopped_by == "SIGTERM"
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM: 2 of 3 jobs stopped") as info:
        result.check("jobs")
    assert info.value.exit_code == 75


def test_plan_slots_on_a_gpu_node(monkeypatch):
    """One GPU per worker in turn, several per GPU past the count; cuda:N puts them all on N."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(slots, "_gpu_driver_present", lambda: True)
    assert [s.device for s in plan_slots(2, "auto", cores=16)] == ["cuda:0", "cuda:1"]
    assert [s.device for s in plan_slots(5, "cuda", cores=16)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert {s.device for s in plan_slots(3, "cuda:1", cores=16)} == {"cuda:1"}
    assert {s.threads for s in plan_slots(4, "cuda", cores=16)} == {4}  # the cores still shared for data work
    with pytest.raises(UsageError, match="does not exist"):
        plan_slots(2, "cuda:2")


def test_auto_is_the_cpu_without_importing_torch_where_no_gpu_driver_is(monkeypatch):
    """No NVIDIA or ROCm driver: ``auto`` plans CPU workers without importing torch (2 s a command)."""
    import subprocess
    import sys

    monkeypatch.setattr(slots, "_gpu_driver_present", lambda: False)
    assert [s.device for s in plan_slots(2, "auto", cores=2)] == ["cpu", "cpu"]
    if slots._gpu_driver_present():
        pytest.skip("this machine has a GPU driver")
    code = ("import sys; from elth_cli.runtime.slots import plan_slots; "
            "print(plan_slots(2, 'auto')[0].device, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cpu", "False"]


def test_a_worker_is_forked_from_a_server_that_imported_torch_and_has_the_main_process_environment(monkeypatch):
    """Workers come from one fork server, started ahead; each still sees this process's environment as
    it is when the jobs start, and the server ignores stop signals (they are this process's to forward)."""
    monkeypatch.setenv("ELTH_TEST_MARK", "after-the-server-started")
    jobs.prepare_workers()
    monkeypatch.setenv("ELTH_TEST_MARK", "when-the-jobs-start")
    result = run_jobs([Job(f"j{i}", environment, {"name": "ELTH_TEST_MARK"}) for i in range(2)],
                      plan_slots(2, "cpu", cores=2))
    values = [o.value for o in result.outcomes.values()]
    assert {v["value"] for v in values} == {"when-the-jobs-start"}
    server = values[0]["parent"]
    if server != os.getpid():  # forked from the server (platforms without one spawn from here)
        from elth_cli.runtime.forkserver_init import MARKER

        assert MARKER not in os.environ  # the server's marker never stays in this process
        os.kill(server, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(server, 0)  # still alive: it ignored the signal
        again = run_jobs([Job("k", environment, {"name": "ELTH_TEST_MARK"})], plan_slots(2, "cpu", cores=2))
        assert again.outcomes["k"].value["parent"] == server
