"""The GPU check: every GPU measurement and test of elth in one command, for the few minutes a GPU
machine is lent, each step under its own time limit, every figure written as JSON under ``--out``.

Steps, in order (docs/performance.md, "The GPU check"):

1. ``cuda_tests``: ``pytest -m cuda`` (the tests skipped without a GPU);
2. ``throughput_eager``, ``throughput_compiled``, ``throughput_jobs2``: benchmarks/train_throughput.py
   on the device, eager, ``--compile``, and ``--jobs 2`` (two trainings side by side on the GPU);
3. ``training``: a fresh dense ticket (``elth find --method random --sparsity 0``) trained on the
   embedded digits set in bf16 and fp16 on the device and in fp32 on the CPU; each GPU run must reach
   the CPU run's test accuracy within ``--tolerance`` points (1.0);
4. ``ddp``: the same training data-parallel over two GPUs with torchrun (skipped with fewer GPUs).

A step that fails or times out is recorded and the next one runs; the exit status is 1 if any step
failed. ``--dry-run`` runs nothing expensive, on the CPU: it prints every command line, checks that
the scripts exist, that every command's options parse (argparse and elth's own parser, without
running anything), that pytest's ``cuda`` marker selects tests and that ``--out`` is writable, and
writes the summary with every step marked ``dry-run``.

    python benchmarks/gpu_check.py --out gpu-results --dry-run   # here, on the CPU
    python benchmarks/gpu_check.py --out gpu-results             # on the GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's elth_cli, not an installed one
    sys.path.insert(0, str(ROOT))

BUDGET_S = 450.0  # the whole check; under 8 minutes with the start-up and the summary
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TAIL = 4000  # characters of each command's stdout and stderr kept in the step's JSON


@dataclass
class Command:
    """One command line of a step. ``kind`` says how a dry run checks it: ``pytest``, ``script`` (an
    argparse script: its path and options), ``elth`` (``python -m elth_cli``: the options parse) or
    ``torchrun`` (torchrun's options and the elth command after ``-m elth_cli``)."""

    name: str
    argv: list[str]
    kind: str


@dataclass
class Step:
    """A step: its commands (run in order, the first failure ends the step), its time limit, the GPUs it
    needs (skipped with fewer) and ``evaluate``, which turns the results of the commands run so far in
    the check (by command name) into figures and a verdict: (ok, figures, message)."""

    name: str
    what: str
    commands: list[Command]
    timeout_s: float
    evaluate: Callable[[dict[str, dict]], tuple[bool, dict, str]]
    gpus: int = 1


@dataclass
class Options:
    """What the check runs: the device, the training's architecture and epochs, the tolerance, the budget."""

    out: Path
    device: str = "cuda"
    arch: str = "mlp-300x2"
    epochs: int = 30
    tolerance: float = 1.0
    budget_s: float = BUDGET_S
    python: str = sys.executable
    root: Path = ROOT


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def plan(opts: Options) -> list[Step]:
    """Every step of the check, with the exact command lines a real run runs."""
    py, out, bench = opts.python, opts.out, str(opts.root / "benchmarks" / "train_throughput.py")
    tput = [py, bench, "--device", opts.device, "--json"]
    ticket = str(out / "training" / "ticket.safetensors")

    def train(name: str, device: str, precision: str) -> list[str]:
        """``elth train``'s arguments for one run of the training step."""
        return ["train", ticket, "--dataset", "digits", "--epochs", str(opts.epochs), "--seed", "0",
                "--device", device, "--precision", precision, "-o", str(out / "training" / f"{name}.safetensors"),
                "--force", "--restart", "--json", "--quiet"]

    elth = [py, "-m", "elth_cli"]
    make_ticket = Command("ticket", [*elth, "find", "--method", "random", "--arch", opts.arch, "--dataset", "digits",
                                     "--sparsity", "0", "--seed", "0", "-o", ticket, "--force", "--json", "--quiet"],
                          "elth")
    gpu_runs = [Command(f"gpu-{p}", [*elth, *train(f"gpu-{p}", opts.device, p)], "elth") for p in ("bf16", "fp16")]
    cpu_run = Command("cpu-fp32", [*elth, *train("cpu-fp32", "cpu", "fp32")], "elth")
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "elth_cli"]
    ddp = Command("ddp-bf16", [*torchrun, *train("ddp-bf16", opts.device, "bf16")], "torchrun")
    return [
        Step("cuda_tests", "the tests marked cuda (pytest -m cuda)",
             [Command("pytest", [py, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                                 str(opts.root / "tests")], "pytest")], 90, evaluate=evaluate_pytest),
        Step("throughput_eager", "train_throughput.py, eager", [Command("eager", tput, "script")], 60,
             evaluate=lambda results: evaluate_throughput(results["eager"])),
        Step("throughput_compiled", "train_throughput.py --compile",
             [Command("compiled", [*tput, "--compile"], "script")], 120,
             evaluate=lambda results: evaluate_throughput(results["compiled"])),
        Step("throughput_jobs2", "train_throughput.py --jobs 2: two trainings side by side on the device",
             [Command("jobs2", [*tput, "--jobs", "2", "--jobs-start-s", "40"], "script")], 100,
             evaluate=lambda results: evaluate_throughput(results["jobs2"])),
        Step("training", f"{opts.arch} on digits, {opts.epochs} epochs: bf16 and fp16 on {opts.device} against "
             f"fp32 on the CPU (within {opts.tolerance} points)", [make_ticket, *gpu_runs, cpu_run], 120,
             evaluate=lambda results: evaluate_training(results, opts.tolerance)),
        Step("ddp", "the bf16 training data-parallel on two GPUs (torchrun)", [ddp], 60, gpus=2,
             evaluate=lambda results: evaluate_ddp(results, opts.tolerance)),
    ]


# ---------------------------------------------------------------------------------------------
# Figures from the commands' results
# ---------------------------------------------------------------------------------------------


def pytest_counts(text: str) -> dict[str, int]:
    """The counts of pytest's last summary line ("5 passed, 1 skipped, 1029 deselected in 9.1s")."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "deselected")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def evaluate_pytest(results: dict[str, dict]) -> tuple[bool, dict, str]:
    """Passed when pytest exits 0 having run at least one test (all skipped means no GPU was seen)."""
    r = results["pytest"]
    counts = pytest_counts(r["stdout"])
    ok = r["rc"] == 0 and counts["passed"] > 0
    return ok, counts, "" if ok else f"pytest exit {r['rc']}, {counts}"


def evaluate_throughput(r: dict) -> tuple[bool, dict, str]:
    """The benchmark's JSON (``r``: its command's result), and its headline figures."""
    doc = r.get("json")
    if r["rc"] != 0 or doc is None:
        return False, {}, f"exit {r['rc']}" + ("" if doc is not None else ", no JSON on stdout")
    jobs = doc.get("jobs") or {}
    figures = {"device": doc.get("device"), "elth_images_per_s": doc["elth"]["images_per_s"],
               "baseline_images_per_s": doc["baseline"]["images_per_s"], "speedup": doc["speedup"],
               "elth_160_epochs_minutes": doc["elth_160_epochs_minutes"],
               "jobs_images_per_s": jobs.get("images_per_s"), "jobs_late_starts": jobs.get("late_starts"),
               "benchmark": doc}
    return True, figures, ""


def accuracy_points(result: dict | None) -> float | None:
    """Test accuracy in percent of an ``elth train --json`` result (None when it did not finish)."""
    if not result or result["rc"] != 0 or not isinstance(result.get("json"), dict):
        return None
    return 100.0 * result["json"]["metrics"]["test_acc"]


def evaluate_training(results: dict[str, dict], tolerance: float) -> tuple[bool, dict, str]:
    """Each GPU run's test accuracy must be at least the CPU run's minus ``tolerance`` points."""
    cpu = accuracy_points(results.get("cpu-fp32"))
    figures: dict = {"cpu-fp32": {"test_acc": cpu}, "tolerance_points": tolerance}
    problems = [] if cpu is not None else ["the CPU run did not finish"]
    for name in ("gpu-bf16", "gpu-fp16"):
        acc = accuracy_points(results.get(name))
        metrics = (results.get(name) or {}).get("json", {}) or {}
        figures[name] = {"test_acc": acc, "images_per_s": metrics.get("metrics", {}).get("images_per_s"),
                         "wall_time_s": metrics.get("metrics", {}).get("wall_time_s")}
        if acc is None:
            problems.append(f"{name} did not finish")
        elif cpu is not None:
            figures[name]["minus_cpu_points"] = round(acc - cpu, 3)
            if acc < cpu - tolerance:
                problems.append(f"{name} test accuracy {acc:.2f} % is more than {tolerance} points below the "
                                f"CPU's {cpu:.2f} %")
    return not problems, figures, "; ".join(problems)


def evaluate_ddp(results: dict[str, dict], tolerance: float) -> tuple[bool, dict, str]:
    """The data-parallel run must finish; its accuracy against the training step's CPU run is recorded, not
    judged (two processes drop each epoch's last partial batch: not the same steps)."""
    cpu, acc = accuracy_points(results.get("cpu-fp32")), accuracy_points(results.get("ddp-bf16"))
    figures = {"cpu-fp32": {"test_acc": cpu}, "ddp-bf16": {"test_acc": acc},
               "within_tolerance": None if None in (cpu, acc) else acc >= cpu - tolerance}
    return acc is not None, figures, "" if acc is not None else "the torchrun training did not finish"


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def child_env(root: Path) -> dict[str, str]:
    """The environment of every command: this checkout first on PYTHONPATH, wide help text."""
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def run_command(cmd: Command, timeout_s: float, opts: Options) -> dict:
    """Run one command in its own process group; on time-out SIGTERM the group (elth writes its checkpoint and
    exits 75), SIGKILL it 15 s later. Streams go to ``OUT/logs/NAME.out|.err``; stdout's JSON is parsed."""
    logs = opts.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd.argv, cwd=opts.root, env=child_env(opts.root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    (logs / f"{cmd.name}.out").write_text(stdout)
    (logs / f"{cmd.name}.err").write_text(stderr)
    doc = None
    with contextlib.suppress(ValueError):
        doc = json.loads(stdout) if stdout.lstrip().startswith("{") else None
    return {"argv": cmd.argv, "rc": proc.returncode, "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - start, 2), "stdout": stdout[-TAIL:], "stderr": stderr[-TAIL:],
            "json": doc}


def skip_reason(step: Step, opts: Options, env: dict, left_s: float) -> str | None:
    """Why a step cannot run here (None: it can)."""
    cuda = opts.device.startswith("cuda")
    if step.gpus > 1 and (not cuda or env.get("gpu_count", 0) < step.gpus):
        return f"needs {step.gpus} GPUs, found {env.get('gpu_count', 0) if cuda else 0}"
    if left_s < 5:
        return f"the check's budget ({opts.budget_s:.0f} s) is spent"
    return None


def run_step(step: Step, opts: Options, env: dict, deadline: float, results: dict[str, dict]) -> dict:
    """Run a step's commands until one fails or its time is up; evaluate; write ``OUT/STEP.json``."""
    start = time.monotonic()
    record: dict = {"step": step.name, "what": step.what, "commands": [c.argv for c in step.commands]}
    reason = skip_reason(step, opts, env, deadline - start)
    if reason is not None:
        record.update(status="skipped", message=reason)
    elif opts.device.startswith("cuda") and not env.get("cuda_available"):  # a failure on a GPU machine, not a skip
        record.update(status="failed", message="CUDA is not available (torch.cuda.is_available() is False)")
    else:
        step_deadline = start + min(step.timeout_s, deadline - start)
        timed_out = False
        for cmd in step.commands:
            left = step_deadline - time.monotonic()
            if left <= 1:
                timed_out = True
                break
            results[cmd.name] = run_command(cmd, left, opts)
            timed_out = results[cmd.name]["timed_out"]
            if results[cmd.name]["rc"] != 0:
                break
        ok, figures, message = step.evaluate(results)
        failed = [results[c.name] | {"name": c.name} for c in step.commands
                  if c.name in results and results[c.name]["rc"] != 0]
        if failed:
            last = (failed[0]["stderr"].strip().splitlines() or ["(nothing on stderr)"])[-1]
            message = f"{failed[0]['name']} exited {failed[0]['rc']}: {last[:300]}" + (f"; {message}" if message else "")
        record["results"] = {c.name: results[c.name] for c in step.commands if c.name in results}
        status = "timeout" if timed_out else "passed" if ok else "failed"
        if timed_out:
            message = f"over its time limit ({min(step.timeout_s, deadline - start):.0f} s)" + (
                f"; {message}" if message else "")
        record.update(status=status, message=message, figures=figures)
    record["wall_s"] = round(time.monotonic() - start, 2)
    record["timeout_s"] = step.timeout_s
    (opts.out / f"{step.name}.json").write_text(json.dumps(record, indent=2, default=str))
    return record


_ENV_PROBE = """
import json, platform, torch
ok = torch.cuda.is_available()
n = torch.cuda.device_count() if ok else 0
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if ok else None, "cuda_available": ok, "gpu_count": n,
    "gpus": [torch.cuda.get_device_name(i) for i in range(n)],
    "bf16_supported": bool(ok and torch.cuda.is_bf16_supported())}))
"""


def environment(opts: Options, in_process: bool = False) -> dict:
    """torch and CUDA versions, the GPUs, the machine. A real run asks a child process (this one stays off the
    GPU); a dry run, on the CPU, asks this one."""
    if in_process:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(_ENV_PROBE, {})
        env = json.loads(out.getvalue())
    else:
        proc = subprocess.run([opts.python, "-c", _ENV_PROBE], capture_output=True, text=True,
                              env=child_env(opts.root), timeout=120)
        env = json.loads(proc.stdout) if proc.returncode == 0 else {"probe_error": proc.stderr.strip()[-TAIL:]}
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=opts.root, capture_output=True, text=True)
    from elth_cli import __version__

    return {**env, "elth": __version__, "commit": git.stdout.strip() or None, "host": os.uname().nodename,
            "cpu_count": os.cpu_count(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "python_executable": opts.python}


# ---------------------------------------------------------------------------------------------
# The dry run: every command checked without its expensive part
# ---------------------------------------------------------------------------------------------


class CheckError(Exception):
    """A command that would fail in the real run."""


class _Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args`` once a script's options have parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        """Carry the parsed options."""
        super().__init__("parsed")
        self.namespace = namespace


@contextlib.contextmanager
def _stop_after_parsing() -> Iterator[None]:
    """While active, a script's ``parse_args`` parses (and rejects what argparse rejects), then stops it."""
    original = argparse.ArgumentParser.parse_args

    def parse(self: argparse.ArgumentParser, args=None, namespace=None):  # type: ignore[no-untyped-def]
        """Parse as argparse does, then stop the script."""
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]


def check_script(argv: list[str]) -> str:
    """The script exists, imports, and its argparse parser accepts the options (its main stops there)."""
    script = Path(argv[1])
    if not script.is_file():
        raise CheckError(f"{script}: no such script")
    saved, err = sys.argv, io.StringIO()
    sys.argv = [str(script), *argv[2:]]
    try:
        with _stop_after_parsing(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed as parsed:
        return f"{script.name}: options parse ({len(vars(parsed.namespace))} values)"
    except SystemExit as e:
        raise CheckError(f"{script.name} rejects its options: {err.getvalue().strip().splitlines()[-1:] or e.code}")
    finally:
        sys.argv = saved
    raise CheckError(f"{script.name} ran to its end without parsing options")


def check_elth(args: list[str]) -> str:
    """elth's own parser (typer/click) accepts ``args`` (``CMD OPTIONS...``): types, names, arguments; and the
    device and precision are values elth knows. Nothing runs."""
    import typer

    from elth_cli.cli import app

    group = typer.main.get_command(app)
    name = args[0]
    if name not in getattr(group, "commands", {}):
        raise CheckError(f"elth has no command {name!r}")
    try:
        with group.commands[name].make_context(f"elth {name}", list(args[1:])) as ctx:
            values = ctx.params
    except Exception as e:  # click's errors, or those of the click typer vendors (typer >= 0.20)
        if not hasattr(e, "format_message"):
            raise
        raise CheckError(f"elth {name}: {e.format_message()}") from None
    device, precision = values.get("device") or "auto", values.get("precision") or "auto"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise CheckError(f"elth {name}: unknown device {device!r}")
    if precision not in PRECISIONS:
        raise CheckError(f"elth {name}: unknown precision {precision!r}")
    return f"elth {name}: options parse (device {device}, precision {precision})"


def check_torchrun(argv: list[str]) -> str:
    """torchrun's parser accepts its options, it launches ``-m elth_cli``, and elth's parser accepts the rest."""
    from torch.distributed.run import get_args_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = get_args_parser().parse_args(argv[3:])
    except SystemExit:
        raise CheckError(f"torchrun rejects its options: {err.getvalue().strip().splitlines()[-1:]}") from None
    if not ns.module or ns.training_script != "elth_cli":
        raise CheckError("torchrun does not run -m elth_cli")
    return f"torchrun: {ns.nproc_per_node} processes; " + check_elth(ns.training_script_args)


def check_pytest(argv: list[str], opts: Options) -> str:
    """The same pytest command with ``--collect-only`` collects at least one test."""
    proc = subprocess.run([*argv, "--collect-only"], cwd=opts.root, env=child_env(opts.root), capture_output=True,
                          text=True, timeout=180)
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", proc.stdout)
    selected = int(found.group(1)) if found else 0
    if proc.returncode != 0 or selected == 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        raise CheckError(f"pytest -m cuda selects no test (exit {proc.returncode}: {tail})")
    return f"pytest: {selected} tests selected"


def check_command(cmd: Command, opts: Options) -> str:
    """What a dry run checks of one command (CheckError when the real run would fail on it)."""
    if not (os.path.isfile(cmd.argv[0]) and os.access(cmd.argv[0], os.X_OK)):
        raise CheckError(f"{cmd.argv[0]}: no such executable")
    if cmd.kind == "pytest":
        return check_pytest(cmd.argv, opts)
    if cmd.kind == "script":
        return check_script(cmd.argv)
    if cmd.kind == "elth":
        return check_elth(cmd.argv[3:])
    if cmd.kind == "torchrun":
        return check_torchrun(cmd.argv)
    raise CheckError(f"unknown kind of command {cmd.kind!r}")


def dry_run_step(step: Step, opts: Options, env: dict) -> dict:
    """Check every command of a step; the step is ``dry-run`` when all pass, ``failed`` otherwise."""
    start = time.monotonic()
    checks, problems = [], []
    for cmd in step.commands:
        try:
            checks.append(check_command(cmd, opts))
        except CheckError as e:
            problems.append(f"{cmd.name}: {e}")
    skipped = skip_reason(step, opts, env, opts.budget_s)
    record = {"step": step.name, "what": step.what, "commands": [c.argv for c in step.commands],
              "status": "failed" if problems else "dry-run", "checks": checks, "message": "; ".join(problems),
              "would_skip": skipped, "timeout_s": step.timeout_s, "wall_s": round(time.monotonic() - start, 2)}
    (opts.out / f"{step.name}.json").write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def check_out_folder(out: Path) -> None:
    """Create ``out`` and the folders the commands write into, and prove them writable (CheckError otherwise)."""
    try:
        for folder in (out, out / "logs", out / "training"):
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".gpu-check-write-test"
            probe.write_text("ok")
            probe.unlink()
    except OSError as e:
        raise CheckError(f"{out}: not a writable folder ({e.strerror or e})") from None


def run_check(opts: Options, steps: list[Step] | None = None, dry_run: bool = False,
              echo: Callable[[str], None] = print) -> dict:
    """Run (or dry-run) every step in order within ``opts.budget_s``; write and return ``summary.json``."""
    start = time.monotonic()
    check_out_folder(opts.out)
    steps = plan(opts) if steps is None else steps
    env = environment(opts, in_process=dry_run)
    echo(f"GPU check{' (dry run)' if dry_run else ''}: {len(steps)} steps, budget {opts.budget_s:.0f} s, "
         f"results in {opts.out}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
         f"{env.get('gpu_count', 0)} GPU(s) {', '.join(env.get('gpus', []))}")
    deadline = start + opts.budget_s
    results: dict[str, dict] = {}
    records = []
    for i, step in enumerate(steps, 1):
        echo(f"[{i}/{len(steps)}] {step.name}: {step.what} (limit {step.timeout_s:.0f} s)")
        for cmd in step.commands:
            echo("    $ " + " ".join(_quote(a) for a in cmd.argv))
        record = dry_run_step(step, opts, env) if dry_run else run_step(step, opts, env, deadline, results)
        records.append(record)
        detail = record.get("message") or "; ".join(record.get("checks", [])) or _headline(record)
        echo(f"    -> {record['status']} ({record['wall_s']:.1f} s){': ' + detail if detail else ''}")
    failed = [r["step"] for r in records if r["status"] in ("failed", "timeout")]
    summary = {"dry_run": dry_run, "ok": not failed, "failed": failed, "wall_s": round(time.monotonic() - start, 2),
               "budget_s": opts.budget_s, "device": opts.device, "environment": env,
               "options": {"arch": opts.arch, "epochs": opts.epochs, "tolerance_points": opts.tolerance},
               "steps": [{k: r.get(k) for k in ("step", "status", "wall_s", "timeout_s", "message", "commands",
                                                "figures", "checks", "would_skip") if k in r} for r in records]}
    for step in summary["steps"]:  # the benchmark's whole document is in its own file
        if isinstance(step.get("figures"), dict):
            step["figures"] = {k: v for k, v in step["figures"].items() if k != "benchmark"}
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    echo(f"{'dry run' if dry_run else 'GPU check'} {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
         f"in {summary['wall_s']:.0f} s; summary: {opts.out / 'summary.json'}")
    return summary


def _quote(arg: str) -> str:
    """An argument as a shell would need it."""
    import shlex

    return shlex.quote(arg)


def _headline(record: dict) -> str:
    """A short line of a step's main figures."""
    figures = record.get("figures") or {}
    keys = ("passed", "skipped", "elth_images_per_s", "speedup", "jobs_images_per_s")
    parts = [f"{k} {figures[k]:.4g}" if isinstance(figures[k], float) else f"{k} {figures[k]}"
             for k in keys if figures.get(k) is not None]
    for name in ("cpu-fp32", "gpu-bf16", "gpu-fp16", "ddp-bf16"):
        acc = (figures.get(name) or {}).get("test_acc")
        if acc is not None:
            parts.append(f"{name} {acc:.2f} %")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """The command line; exit status 0 when every step passed (or, dry, checked), 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Steps: cuda_tests, throughput_eager, throughput_compiled, throughput_jobs2, "
                                       "training, ddp (docs/performance.md, 'The GPU check').")
    p.add_argument("--out", required=True, type=Path, help="folder for one JSON per step, summary.json and logs/")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: print and check every command, run none")
    p.add_argument("--device", default="cuda", help="the GPU the steps use: cuda or cuda:N (default cuda)")
    p.add_argument("--arch", default="mlp-300x2", help="architecture of the training step (default mlp-300x2)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the training step (default 30, the recipe)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="points of test accuracy a GPU run may fall below the CPU run (default 1.0)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"time for the whole check (default {BUDGET_S:.0f})")
    args = p.parse_args(argv)
    opts = Options(out=args.out.resolve(), device=args.device, arch=args.arch, epochs=args.epochs,
                   tolerance=args.tolerance, budget_s=args.budget_s)
    try:
        summary = run_check(opts, dry_run=args.dry_run)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
