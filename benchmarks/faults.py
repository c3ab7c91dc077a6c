"""Fault injection through the real CLI: kill or stop a training command at a random moment, run the
same command again, and check that it ends exactly where an uninterrupted run ends.

Three commands, each a fresh ``python -m elth_cli`` process on the embedded digits set:

* ``train``: ``elth train T -o OUT --epochs 3 --checkpoint-every 0`` (resnet8-w4);
* ``find-imp``: ``elth find --method imp`` (resnet8-w4, 2 rounds of 2 epochs, rewind 5it) into a run
  folder, with ``-o`` a copy of the final round;
* ``train-jobs``: ``elth train T1 T2 --out-dir D --jobs 2 --epochs 3 --checkpoint-every 0``.

Each is first run uninterrupted (the reference). Then, per command and signal, ``--cases`` runs
each get one signal, at a random moment from 0.1 s after the start to a little past the reference's
wall time, or right as a file appears (a checkpoint, a temporary file, an output; at a random moment
when the poll misses it):

* ``SIGKILL``: the process and every process it started (a node failure, the OOM killer);
* ``SIGKILL-parent`` (``train-jobs`` only): the parent alone (its workers get SIGTERM from Linux);
* ``SIGTERM`` and ``SIGUSR1`` (a batch system's stop): the exit status must be 75 (or 0 when it had
  finished), stderr must end with the one stop line and hold no traceback, and no ``.tmp`` or
  ``.lock`` file may be left.

Every file left must be whole (each ticket loads, each checkpoint reads). Then the same command runs
again to its end: exit 0, every output loads, its tensors (masks, init and trained weights) equal the
reference's bit for bit, and no ``.tmp``, ``.lock`` or checkpoint is left anywhere in the output
folders. Counted per command and signal: cases, runs that finished before the signal, wrong exit
statuses, stop lines missing or tracebacks, broken files, outputs different from the reference,
leftover files. Expected: all 0.

    python benchmarks/faults.py                          # 4 cases per command and signal (~30 min, 2 cores)
    python benchmarks/faults.py --cases 2 --commands train --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from elth_cli import __version__
from elth_cli.errors import ElthError

ROOT = Path(__file__).resolve().parents[1]
EXIT_STOPPED = 75


@dataclass(frozen=True)
class Command:
    name: str
    args: Callable[[Path, Path], list[str]]  # (inputs folder, case folder) -> arguments
    outputs: Callable[[Path], list[Path]]  # the tickets a finished run leaves in the case folder
    word: str  # "train", "find": the stop line's "elth WORD: stopped by ..."
    triggers: tuple[tuple[str, int], ...]  # (glob pattern, most appearances): the n-th new file there can trigger


RECIPE = ["--epochs", "3", "--checkpoint-every", "0"]
IMP = ["find", "--method", "imp", "--arch", "resnet8-w4", "--dataset", "digits", "--rounds", "2", "--rewind", "5it",
       "--epochs", "2", "--eval-every", "0", "--checkpoint-every", "0"]
COMMANDS = {
    "train": Command(
        "train", lambda i, d: ["train", str(i / "t.safetensors"), "-o", str(d / "out.safetensors"), *RECIPE],
        lambda d: [d / "out.safetensors"], "train", (("*.ckpt", 2), (".*.tmp", 3), ("out.safetensors", 1))),
    "find-imp": Command(
        "find-imp", lambda i, d: [*IMP, "--out-dir", str(d / "run"), "-o", str(d / "final.safetensors")],
        lambda d: [d / "run" / f"round-{r:02d}.safetensors" for r in range(3)] + [d / "final.safetensors"], "find",
        (("run/*.ckpt", 3), ("run/.*.tmp", 6), ("run/round-*.safetensors", 3), ("final.safetensors", 1))),
    "train-jobs": Command(
        "train-jobs", lambda i, d: ["train", str(i / "a.safetensors"), str(i / "b.safetensors"), "--out-dir",
                                    str(d / "out"), "--jobs", "2", *RECIPE],
        lambda d: [d / "out" / "a.safetensors", d / "out" / "b.safetensors"], "train",
        (("out/*.ckpt", 4), ("out/.*.tmp", 6), ("out/*.safetensors", 2))),
}
SIGNALS = ("SIGKILL", "SIGKILL-parent", "SIGTERM", "SIGUSR1")


def make_inputs(folder: Path) -> None:
    from elth_cli.find import random_ticket

    for name, seed in (("t", 0), ("a", 1), ("b", 2)):
        ticket = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=seed, dataset="digits")
        ticket.save(folder / f"{name}.safetensors")


# ----- processes ----------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Run:
    code: int
    stderr: str
    seconds: float
    signalled_at: float | None = None  # seconds after the start; None: it finished first
    orphans: int = 0  # processes it started that outlived it by two minutes
    by_file: bool = False  # a file trigger fired (not its fallback time)


def run_command(args: list[str], folder: Path, mode: str | None = None, trigger: tuple[str, Any] | None = None,
                timeout: float = 900) -> Run:
    """Run ``elth ARGS``; with ``mode``, send that signal when ``trigger`` fires: ("time", seconds) or
    ("file", (patterns, n, seconds)): the n-th new file matching one of the glob patterns under ``folder``
    seen, or those seconds passed (a temporary file lives for milliseconds: the poll can miss it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    err_path = folder.parent / f"{folder.name}.stderr"
    start = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "elth_cli", *args], stdout=subprocess.DEVNULL, stderr=err,
                                env=env)
        signalled_at, orphans, by_file = None, 0, False
        if mode is not None:
            seen: set[tuple[str, int]] = set()
            while proc.poll() is None:
                now = time.monotonic() - start
                if trigger[0] == "time":
                    fire = now >= trigger[1]
                else:
                    patterns, n, latest = trigger[1]
                    for pattern in patterns:
                        for p in folder.glob(pattern):
                            try:
                                seen.add((str(p), p.stat().st_ino))
                            except OSError:
                                pass
                    fire = len(seen) >= n or now >= latest
                    by_file = len(seen) >= n
                if fire:
                    tree = descendants(proc.pid)
                    sig = signal.SIGKILL if mode.startswith("SIGKILL") else getattr(signal, mode)
                    with_children = mode == "SIGKILL"
                    for pid in [proc.pid, *(tree if with_children else [])]:
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                    signalled_at = now
                    break
                time.sleep(0.001 if trigger[0] == "file" else 0.01)
            if signalled_at is not None:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                deadline = time.monotonic() + 120
                while any(alive(p) for p in tree) and time.monotonic() < deadline:
                    time.sleep(0.05)
                left = [p for p in tree if alive(p)]
                orphans = len(left)
                for p in left:  # ours: end them before the re-run
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return Run(proc.returncode, err_path.read_text(errors="replace"), time.monotonic() - start, signalled_at, orphans,
               by_file)


# ----- checks -------------------------------------------------------------------------------------
def tensors_of(path: Path) -> dict[str, Any]:
    from elth_cli.ticket import Ticket

    t = Ticket.load(path)
    out = {f"mask/{k}": v for k, v in t.masks.items()}
    out.update({f"init/{k}": v for k, v in t.init.items()})
    out.update({f"trained/{k}": v for k, v in (t.trained or {}).items()})
    return out


def equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def broken_files(folder: Path, outputs: list[Path]) -> list[str]:
    """Files that are there but not whole: tickets that do not load, checkpoints that do not read."""
    from elth_cli import train

    bad = []
    for p in outputs:
        if p.exists():
            try:
                tensors_of(p)
            except ElthError as e:
                bad.append(f"{p.name}: {e}")
    for p in folder.rglob("*.ckpt"):
        try:
            train.read_checkpoint(p)
        except ElthError as e:
            bad.append(f"{p.name}: {e}")
    return bad


def leftovers(folder: Path, checkpoints: bool) -> list[str]:
    ends = (".tmp", ".lock", ".ckpt") if checkpoints else (".tmp", ".lock")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(ends))


def stop_line_problem(run: Run, word: str, mode: str) -> str | None:
    """What is wrong with a stopped run's stderr: a traceback, or not exactly one stop line at the end."""
    if "Traceback" in run.stderr:
        return "traceback: " + run.stderr.strip().splitlines()[-1][:160]
    if run.code != EXIT_STOPPED:
        return None
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    stops = [line for line in lines if line.startswith(f"elth {word}: stopped by {mode}")]
    if len(stops) != 1 or lines[-1] != stops[0]:
        return f"stop lines {stops[:2]}, last line {lines[-1][:160] if lines else None!r}"
    return None


@dataclass
class Tally:
    cases: int = 0
    finished_first: int = 0
    wrong_exit: int = 0
    stop_line: int = 0  # stop line missing or doubled, or a traceback
    broken: int = 0
    different: int = 0
    leftover: int = 0  # .tmp or .lock after a stop, or after the re-run
    stale_checkpoint: int = 0  # a checkpoint left after the re-run finished
    orphans: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # every case: when the signal came, the two exit statuses

    def note(self, text: str) -> None:
        if len(self.examples) < 6:
            self.examples.append(text)


def one_case(cmd: Command, mode: str, inputs: Path, folder: Path, reference: dict[str, dict[str, Any]],
             ref_seconds: float, rng: random.Random, tally: Tally) -> None:
    folder.mkdir()
    args = cmd.args(inputs, folder)
    if rng.random() < 0.5:
        trigger: tuple[str, Any] = ("time", round(rng.uniform(0.1, 1.1 * ref_seconds), 3))
    else:
        pattern, most = rng.choice(cmd.triggers)
        trigger = ("file", ((pattern,), rng.randint(1, most), round(rng.uniform(0.1, 1.1 * ref_seconds), 3)))
    what = f"{mode} at {trigger[1] if trigger[0] == 'time' else 'file ' + repr(trigger[1])}"
    t0 = time.monotonic()
    tally.cases += 1
    stopped = run_command(args, folder, mode, trigger)
    if stopped.signalled_at is None:
        what += " (finished first)"
    else:
        what += f" (sent at {stopped.signalled_at:.2f} s{', the file seen' if stopped.by_file else ''})"
    if stopped.signalled_at is None:
        tally.finished_first += 1
    expected = {0} if stopped.signalled_at is None else (
        {-signal.SIGKILL, 0} if mode.startswith("SIGKILL") else {EXIT_STOPPED, 0})
    if mode == "SIGKILL-parent":
        expected = {-signal.SIGKILL, 0}
    if stopped.code not in expected:
        tally.wrong_exit += 1
        tally.note(f"{what}: exit {stopped.code}, stderr ends {stopped.stderr.strip().splitlines()[-1:]}")
    if not mode.startswith("SIGKILL"):
        problem = stop_line_problem(stopped, cmd.word, mode)
        if problem:
            tally.stop_line += 1
            tally.note(f"{what}: {problem}")
        left = leftovers(folder, checkpoints=False)
        if left:
            tally.leftover += 1
            tally.note(f"{what}: left after the stop: {left}")
    if stopped.orphans:
        tally.orphans += 1
        tally.note(f"{what}: {stopped.orphans} process(es) outlived it by 2 minutes")
    bad = broken_files(folder, cmd.outputs(folder))
    if bad:
        tally.broken += 1
        tally.note(f"{what}: broken after the stop: {bad[:2]}")

    again = run_command(args, folder)
    if again.code != 0:
        tally.wrong_exit += 1
        tally.note(f"{what}: the re-run exited {again.code}: {again.stderr.strip().splitlines()[-1:]}")
    if "Traceback" in again.stderr:
        tally.stop_line += 1
        tally.note(f"{what}: the re-run printed a traceback")
    bad = broken_files(folder, cmd.outputs(folder))
    missing = [p.name for p in cmd.outputs(folder) if not p.exists()]
    if bad or missing:
        tally.broken += 1
        tally.note(f"{what}: after the re-run: broken {bad[:2]}, missing {missing}")
    else:
        differ = [p.name for p in cmd.outputs(folder) if not equal(tensors_of(p), reference[p.name])]
        if differ:
            tally.different += 1
            tally.note(f"{what}: differs from the uninterrupted run: {differ}")
    left = leftovers(folder, checkpoints=True)
    if any(not p.endswith(".ckpt") for p in left):
        tally.leftover += 1
        tally.note(f"{what}: left after the re-run: {left}")
    if any(p.endswith(".ckpt") for p in left):
        tally.stale_checkpoint += 1
        tally.note(f"{what}: checkpoint left after the re-run finished: {left}")
    tally.runs.append(f"{what}: exit {stopped.code}, re-run exit {again.code}")
    tally.seconds += time.monotonic() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=4, help="signalled runs per command and signal (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    p.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS))
    p.add_argument("--keep", type=Path, default=None, help="keep every case's folder under this one")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"commands": {}}
    tmp = tempfile.mkdtemp(prefix="elth-faults-", dir=args.keep)
    try:
        base = Path(tmp)
        inputs = base / "inputs"
        inputs.mkdir()
        make_inputs(inputs)
        for name in args.commands:
            cmd = COMMANDS[name]
            ref_dir = base / f"{name}-reference"
            ref_dir.mkdir()
            ref = run_command(cmd.args(inputs, ref_dir), ref_dir)
            if ref.code != 0:
                sys.exit(f"error: the uninterrupted {name} failed ({ref.code}): {ref.stderr.strip()[-500:]}")
            reference = {p.name: tensors_of(p) for p in cmd.outputs(ref_dir)}
            rows: dict[str, Tally] = {}
            for mode in args.signals:
                if mode == "SIGKILL-parent" and name != "train-jobs":
                    continue  # one process: the same as SIGKILL
                tally = rows[mode] = Tally()
                for i in range(args.cases):
                    one_case(cmd, mode, inputs, base / f"{name}-{mode}-{i}", reference, ref.seconds, rng, tally)
                print(f"{name:<11} {mode:<15} {tally.cases} cases done in {tally.seconds:.0f} s", file=sys.stderr)
            results["commands"][name] = {"reference_seconds": round(ref.seconds, 1),
                                         "signals": {m: {k: round(v, 1) if isinstance(v, float) else v
                                                         for k, v in t.__dict__.items()} for m, t in rows.items()}}
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    every = [s for c in results["commands"].values() for s in c["signals"].values()]
    faults = ("wrong_exit", "stop_line", "broken", "different", "leftover", "stale_checkpoint", "orphans")
    results.update({"cases": sum(s["cases"] for s in every), "faults": {f: sum(s[f] for s in every) for f in faults},
                    "seed": args.seed, "seconds": round(time.perf_counter() - t_start, 1),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
                    "elth": __version__, "date": dt.date.today().isoformat(),
                    "command": " ".join(["python", "benchmarks/faults.py",
                                         *(argv if argv is not None else sys.argv[1:])])})
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return results
    cols = ["command", "signal", "cases", "finished first", "wrong exit", "stop line", "broken", "different",
            "leftover", "stale ckpt", "orphans", "seconds"]
    table = [cols]
    for name, c in results["commands"].items():
        for mode, s in c["signals"].items():
            table.append([name, mode, *(s[k] for k in ("cases", "finished_first", *faults)), f"{s['seconds']:.0f}"])
    widths = [max(len(str(r[i])) for r in table) for i in range(len(cols))]
    for r in table:
        print("  ".join(str(v).ljust(w) if j < 2 else str(v).rjust(w) for j, (v, w) in enumerate(zip(r, widths))))
    for name, c in results["commands"].items():
        print(f"{name}: uninterrupted run {c['reference_seconds']} s")
        for mode, s in c["signals"].items():
            for note in s["examples"]:
                print(f"  {mode}: {note}")
    print(f"{results['cases']} cases, faults: {results['faults']}; {results['seconds']:.0f} s in all")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
