"""Independent trainings side by side: ``elth train T1 ... Tk --out-dir DIR --jobs N`` against the same
trainings one after the other, timed as a user runs them (whole commands, start-up included).

k random tickets of ``--arch`` (seeds 0..k-1, 50 % sparse) on the embedded digits set, trained with
the digits recipe (``--epochs``) three ways, each a fresh process:

* ``sequential``: ``--jobs 1``, one process with torch's default threads (every core);
* ``sequential, 1 thread``: the same with ``OMP_NUM_THREADS=1``;
* ``--jobs N``: N worker processes, each with cores / N threads.

Speed-ups are the sequential wall time over each. On the CPU results depend on the thread count,
so the three runs give tickets that agree within each thread count only (each ticket records it).

``--repeat R`` runs the comparison R times (the spread of the speed-up is the point: a noisy machine
gives anything from 0.7x to 1.5x); ``--probe`` first measures what the machine itself allows: one
single-threaded compute loop alone, then N of them at once, in separate processes (``pair
efficiency``: the throughput each keeps, 1.0 on N real cores). ``--jobs N`` can only be as steady
as that.

    python benchmarks/jobs.py                       # 8 resnet20-w4 tickets, --jobs = the cores
    python benchmarks/jobs.py --tickets 4 --jobs 2 --epochs 10 --json
    python benchmarks/jobs.py --tickets 2 --jobs 2 --epochs 8 --repeat 5 --probe
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elth_cli import __version__
from elth_cli.find import random_ticket
from elth_cli.runtime.slots import available_cores

ROOT = Path(__file__).resolve().parents[1]


def _elth(args: list[str], threads: int | None = None) -> float:
    """Run ``elth ARGS`` as a fresh process; its wall time (a failure stops the benchmark)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "elth_cli", *args], capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: elth {' '.join(args[:2])} ... failed: {proc.stderr.decode().strip().splitlines()[-1:]}")
    return seconds


_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
x, w = torch.randn(64, 4, 16, 16), torch.randn(8, 4, 3, 3, requires_grad=True)
end, n = time.perf_counter() + float(sys.argv[1]), 0
while time.perf_counter() < end:
    torch.nn.functional.conv2d(x, w, padding=1).square().mean().backward()
    n += 1
print(n / float(sys.argv[1]))
"""


def probe(processes: int, seconds: float = 4.0) -> dict:
    """Steps per second of one single-threaded compute loop alone, and of each of ``processes`` at once."""
    def rates(k: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", _PROBE, str(seconds)], stdout=subprocess.PIPE) for _ in range(k)]
        return [float(p.communicate()[0]) for p in procs]

    alone = rates(1)[0]
    together = rates(processes)
    return {"alone": round(alone, 1), "together": [round(r, 1) for r in together],
            "efficiency": round(sum(together) / (processes * alone), 2)}


def run(opts: argparse.Namespace) -> dict:
    cores = available_cores()
    jobs = opts.jobs or cores
    with tempfile.TemporaryDirectory(prefix="elth-jobs-") as tmp:
        tickets = []
        for seed in range(opts.tickets):
            path = Path(tmp) / f"t{seed}.safetensors"
            random_ticket(opts.arch, (1, 8, 8), 10, 0.5, seed=seed, dataset="digits").save(path)
            tickets.append(str(path))
        runs = {}
        for name, n, threads in (("sequential", 1, None), ("sequential, 1 thread", 1, 1), (f"--jobs {jobs}", jobs, None)):
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            out.mkdir()
            args = ["train", *tickets, "--out-dir", str(out), "--jobs", str(n), "--epochs", str(opts.epochs),
                    "--device", "cpu", "--quiet"]
            runs[name] = round(_elth(args, threads), 2)
    base = runs["sequential"]
    return {"tickets": opts.tickets, "arch": opts.arch, "epochs": opts.epochs, "jobs": jobs, "cores": cores,
            "threads_per_job": max(1, cores // jobs), "seconds": runs,
            "speedup": {k: round(base / v, 2) for k, v in runs.items()},
            "machine": f"{platform.machine()}, {cores} cores", "python": platform.python_version(),
            "elth": __version__, "date": dt.date.today().isoformat(), "command": " ".join(sys.argv)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tickets", type=int, default=8, help="independent trainings (default 8)")
    p.add_argument("--jobs", type=int, default=None, help="workers of the parallel run (default: the cores)")
    p.add_argument("--arch", default="resnet20-w4")
    p.add_argument("--epochs", type=int, default=30, help="epochs per training (the digits recipe: 30)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--repeat", type=int, default=1, help="run the comparison this many times (its spread)")
    p.add_argument("--probe", action="store_true", help="first measure how N single-threaded processes share the CPU")
    opts = p.parse_args(argv)
    jobs = opts.jobs or available_cores()
    pair = probe(jobs) if opts.probe else None
    docs = [run(opts) for _ in range(opts.repeat)]
    doc = {**docs[-1], "runs": [d["speedup"] for d in docs], "probe": pair}
    if opts.json:
        print(json.dumps(doc, indent=2))
        return doc
    if pair is not None:
        print(f"CPU probe: one single-threaded loop {pair['alone']} steps/s alone; {jobs} at once "
              f"{', '.join(map(str, pair['together']))} steps/s: efficiency {pair['efficiency']:.2f}")
    print(f"{doc['tickets']} x {doc['arch']} on digits, {doc['epochs']} epochs each; {doc['machine']}")
    for i, d in enumerate(docs):
        print(f"run {i + 1}: " + "; ".join(f"{name} {seconds:.1f} s ({d['speedup'][name]:.2f}x)"
                                          for name, seconds in d["seconds"].items()))
    return doc


if __name__ == "__main__":
    main()
