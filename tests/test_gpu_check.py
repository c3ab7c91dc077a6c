"""benchmarks/gpu_check.py, the GPU check, on the CPU: its dry run checks and lists every command a real
run runs, a broken command fails the dry run with its reason, and the real run's machinery (time
limits, the accuracy gate, failures recorded and the next step run) works without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up by name
_spec.loader.exec_module(gpu_check)

STEPS = ["cuda_tests", "throughput_eager", "throughput_compiled", "throughput_jobs2", "training", "ddp"]


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[dict, list[str], Path]:
    """One dry run of the whole check (collecting the cuda tests is most of its 15 s)."""
    out = tmp_path_factory.mktemp("gpu-results")
    lines: list[str] = []
    summary = gpu_check.run_check(gpu_check.Options(out=out), dry_run=True, echo=lines.append)
    return summary, lines, out


def test_the_dry_run_checks_every_step_and_writes_the_summary(dry) -> None:
    summary, lines, out = dry
    assert summary["ok"] and summary["dry_run"] and summary["failed"] == []
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "dry-run" for s in summary["steps"]), summary["steps"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    for name in STEPS:
        assert json.loads((out / f"{name}.json").read_text())["status"] == "dry-run"
    env = summary["environment"]
    assert env["torch"] and "gpu_count" in env and "cuda" in env
    steps = {s["step"]: s for s in summary["steps"]}
    assert any("tests selected" in c for c in steps["cuda_tests"]["checks"])
    assert steps["ddp"]["would_skip"].startswith("needs 2 GPUs")  # no GPU here
    assert lines[-1].startswith("dry run passed")


def test_the_dry_run_shows_the_commands_a_real_run_runs(dry) -> None:
    summary, lines, out = dry
    real = gpu_check.plan(gpu_check.Options(out=out))
    assert [s["commands"] for s in summary["steps"]] == [[c.argv for c in step.commands] for step in real]
    py, tput = sys.executable, str(ROOT / "benchmarks" / "train_throughput.py")
    cmds = {s["step"]: s["commands"] for s in summary["steps"]}
    assert cmds["cuda_tests"] == [[py, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                                   str(ROOT / "tests")]]
    assert cmds["throughput_eager"] == [[py, tput, "--device", "cuda", "--json"]]
    assert cmds["throughput_compiled"] == [[py, tput, "--device", "cuda", "--json", "--compile"]]
    assert cmds["throughput_jobs2"] == [[py, tput, "--device", "cuda", "--json", "--jobs", "2", "--jobs-start-s", "40"]]
    ticket = str(out / "training" / "ticket.safetensors")
    find, *trains = cmds["training"]
    assert find == [py, "-m", "elth_cli", "find", "--method", "random", "--arch", "mlp-300x2", "--dataset", "digits",
                    "--sparsity", "0", "--seed", "0", "-o", ticket, "--force", "--json", "--quiet"]
    for argv, device, precision in zip(trains, ("cuda", "cuda", "cpu"), ("bf16", "fp16", "fp32")):
        assert argv[:5] == [py, "-m", "elth_cli", "train", ticket]
        assert argv[argv.index("--device") + 1] == device and argv[argv.index("--precision") + 1] == precision
        assert argv[argv.index("--epochs") + 1] == "30" and "--json" in argv
    (ddp,) = cmds["ddp"]
    assert ddp[:9] == [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "elth_cli",
                       "train"]
    for argv in (*cmds["training"], *cmds["ddp"]):  # every line printed as it runs
        assert any(" ".join(argv[-4:]) in line for line in lines)


def _steps(out: Path, *names: str) -> list:
    steps = gpu_check.plan(gpu_check.Options(out=out))
    return [s for s in steps if s.name in names]


@pytest.mark.parametrize("break_it, reason", [
    (lambda steps: steps[0].commands[0].argv.__setitem__(1, "/nonexistent/train_throughput.py"), "no such script"),
    (lambda steps: steps[0].commands[0].argv.append("--jobz"), "rejects its options"),
    (lambda steps: steps[1].commands[1].argv.extend(["--epochs", "many"]), "Invalid value for '--epochs'"),
    (lambda steps: steps[1].commands[2].argv.extend(["--precision", "fp8"]), "unknown precision 'fp8'"),
    (lambda steps: steps[2].commands[0].argv.append("--no-such-option"), "No such option"),
])
def test_a_broken_command_fails_the_dry_run_with_its_reason(tmp_path, break_it, reason) -> None:
    steps = _steps(tmp_path, "throughput_eager", "training", "ddp")
    break_it(steps)
    lines: list[str] = []
    summary = gpu_check.run_check(gpu_check.Options(out=tmp_path), steps=steps, dry_run=True, echo=lines.append)
    assert not summary["ok"] and len(summary["failed"]) == 1
    (bad,) = [s for s in summary["steps"] if s["status"] == "failed"]
    assert reason in bad["message"], bad["message"]
    assert lines[-1].startswith("dry run FAILED: " + bad["step"])


def test_a_folder_that_cannot_be_written_stops_the_check(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(gpu_check.CheckError, match="not a writable folder"):
        gpu_check.run_check(gpu_check.Options(out=tmp_path / "file" / "out"), steps=[], dry_run=True)


def _step(name: str, code: str, timeout_s: float) -> "gpu_check.Step":
    """A step running ``python -c CODE``, passed when it exits 0."""
    cmd = gpu_check.Command(name, [sys.executable, "-c", code], "script")
    return gpu_check.Step(name, name, [cmd], timeout_s, evaluate=lambda r: (r[name]["rc"] == 0, {}, ""))


def test_a_step_over_its_time_is_stopped_and_the_next_one_runs(tmp_path) -> None:
    opts = gpu_check.Options(out=tmp_path, device="cpu", budget_s=60)
    steps = [_step("slow", "import time; time.sleep(60)", 1.5), _step("fine", "print('{\"a\": 1}')", 30)]
    env = {"cuda_available": False, "gpu_count": 0}
    results: dict = {}
    start = time.monotonic()
    records = [gpu_check.run_step(s, opts, env, start + opts.budget_s, results) for s in steps]
    assert time.monotonic() - start < 20
    assert [r["status"] for r in records] == ["timeout", "passed"]
    assert "over its time limit" in records[0]["message"] and results["fine"]["json"] == {"a": 1}
    assert json.loads((tmp_path / "slow.json").read_text())["status"] == "timeout"
    assert (tmp_path / "logs" / "fine.out").read_text().strip() == '{"a": 1}'
    late = gpu_check.run_step(steps[1], opts, env, time.monotonic() + 2, results)
    assert late["status"] == "skipped" and "budget" in late["message"]


def test_a_gpu_step_fails_without_cuda_and_ddp_is_skipped_with_one_gpu(tmp_path) -> None:
    opts = gpu_check.Options(out=tmp_path)
    steps = {s.name: s for s in gpu_check.plan(opts)}
    deadline = time.monotonic() + 60
    no_cuda = gpu_check.run_step(steps["throughput_eager"], opts, {"cuda_available": False}, deadline, {})
    assert no_cuda["status"] == "failed" and "CUDA is not available" in no_cuda["message"]
    one = gpu_check.run_step(steps["ddp"], opts, {"cuda_available": True, "gpu_count": 1}, deadline, {})
    assert one["status"] == "skipped" and one["message"] == "needs 2 GPUs, found 1"


def _train_result(acc: float) -> dict:
    return {"rc": 0, "json": {"metrics": {"test_acc": acc, "images_per_s": 1.0, "wall_time_s": 1.0}}}


def test_each_gpu_run_must_reach_the_cpu_accuracy_within_the_tolerance() -> None:
    results = {"cpu-fp32": _train_result(0.96), "gpu-bf16": _train_result(0.951), "gpu-fp16": _train_result(0.97)}
    ok, figures, message = gpu_check.evaluate_training(results, 1.0)
    assert ok and message == "" and figures["gpu-bf16"]["minus_cpu_points"] == pytest.approx(-0.9)
    results["gpu-fp16"] = _train_result(0.948)
    ok, figures, message = gpu_check.evaluate_training(results, 1.0)
    assert not ok and "gpu-fp16 test accuracy 94.80 % is more than 1.0 points below the CPU's 96.00 %" in message
    del results["gpu-bf16"]
    assert "gpu-bf16 did not finish" in gpu_check.evaluate_training(results, 1.0)[2]


def test_pytest_counts_read_the_summary_line() -> None:
    counts = gpu_check.pytest_counts("....\n5 passed, 1 skipped, 1029 deselected in 9.12s\n")
    assert counts == {"passed": 5, "failed": 0, "skipped": 1, "errors": 0, "deselected": 1029}
    ok, _, message = gpu_check.evaluate_pytest({"pytest": {"rc": 0, "stdout": "6 skipped, 1029 deselected in 8s"}})
    assert not ok and "'passed': 0" in message  # all skipped: no GPU seen


def test_help_and_a_missing_out_option() -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "--dry-run" in ok.stdout and "--out" in ok.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--out" in bad.stderr
