"""Start-up: wall time and peak memory of the commands that must answer at once.

Each command runs as a fresh process (``python -m elth_cli ...``, as the console script does) a few
times; the median wall time and the largest peak resident memory are printed. Targets (issue
"Training gets one home"): ``--version``, ``--help`` and every ``CMD --help`` under 0.5 s and
150 MB, ``archs`` under 1.5 s, on the 2-core CI machine. Issue "Big networks at the speed of the
disk": ``info`` of a small ticket (resnet20-w4, written to a temporary folder first) under 0.5 s and
150 MB, and every command's file errors (a missing input ticket; exit status 2) before torch.

    python benchmarks/startup.py            # every command, 5 runs each
    python benchmarks/startup.py --runs 9 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("archs", "info", "stretch", "squeeze", "compare", "import", "export", "train", "eval", "find", "demo")


def run_once(args: list[str], expect: int = 0) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one fresh ``python -m elth_cli ARGS`` that must exit with ``expect``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "elth_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != expect:
        sys.exit(f"error: elth {' '.join(args)} exited with {proc.returncode}, not {expect}")
    return wall, usage.ru_maxrss / 1024  # Linux reports kilobytes


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per command (the median wall time is reported)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        return _report(_measure(args.runs, Path(tmp)), args.runs, args.json)


def _cases(tmp: Path) -> list[tuple[list[str], int]]:
    """Every command line timed, with the exit status it must end with."""
    small = tmp / "small.safetensors"
    run_once(["find", "--method", "random", "--arch", "resnet20-w4", "--dataset", "digits", "--sparsity", "0.5",
              "-o", str(small), "--quiet"])
    missing = str(tmp / "missing.safetensors")
    return ([(["--version"], 0), (["--help"], 0), (["archs"], 0), (["archs", "--json"], 0)]
            + [([c, "--help"], 0) for c in COMMANDS]
            + [(["info", str(small)], 0), (["info", "--json", str(small)], 0), (["info", missing], 2),
               (["train", missing, "--dataset", "digits", "-o", str(tmp / "o.safetensors")], 2),
               (["find", "--method", "magnitude", "--from", missing, "--sparsity", "0.5", "-o", str(tmp / "o")], 2),
               (["export", missing, str(tmp / "out")], 2)])


def _measure(n_runs: int, tmp: Path) -> list[dict]:
    rows = []
    for case, status in _cases(tmp):
        runs = [run_once(case, status) for _ in range(n_runs)]
        rows.append({"command": "elth " + " ".join(case).replace(str(tmp), "TMP"), "wall_s_median": round(statistics.median(w for w, _ in runs), 3),
                     "wall_s_max": round(max(w for w, _ in runs), 3), "peak_mb": round(max(m for _, m in runs), 1)})
    return rows


def _report(rows: list[dict], n_runs: int, as_json: bool) -> list[dict]:
    if as_json:
        print(json.dumps({"cpus": os.cpu_count(), "runs": n_runs, "rows": rows}, indent=2))
        return rows
    print(f"{os.cpu_count()} CPU cores, {n_runs} runs per command (median and max wall time, peak memory)")
    for r in rows:
        print(f"  {r['command']:<44} {r['wall_s_median']:6.3f} s  (max {r['wall_s_max']:.3f} s)  {r['peak_mb']:6.1f} MB")
    return rows


if __name__ == "__main__":
    main()
