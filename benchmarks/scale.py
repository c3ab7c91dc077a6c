"""Scale: wall time and peak memory of every ticket command on big tickets, beside the hardware's limit.

For each architecture (default: an ImageNet ResNet-152 ticket, ~302 MB at 80 % sparsity, and a
ViT-L/16 one, ``vit-d24-w1024-h16-p16`` on ImageNet, ~1.5 GB) these commands run, each as a fresh
process (``python -m elth_cli ...``, as the console script does; wall time and peak resident memory
taken with ``os.wait4`` / ``ru_maxrss``, as benchmarks/startup.py does):

    find --method random, find --method magnitude (a fresh seeded network, no data read), stretch
    (the shallower partner's ticket to the arch: resnet101 -> resnet152, vit-d12 -> vit-d24; with a
    shallow arch such as resnet18 the arch's own ticket to its deeper partner), squeeze (the deeper
    ticket to the shallower arch), info, compare (the random and magnitude tickets), export (to an
    open_lth run folder) and import (that folder back).

Right beside each command (same run, same warm page cache, alternating run by run) a *limit* runs:
the cheapest fresh process that does the same I/O in the format it must use, so ``wall / limit`` says
how far the command is from what this machine allows:

- ``find``: ``import torch``, build the network's initial weights with elth's own builder
  (``elth_cli.archs.build_model(spec, input_shape, num_classes, seed=0)``) and write its state dict
  with ``safetensors.torch.save_file`` into the same folder, then fsync it.
- ``stretch``, ``squeeze``, ``info``, ``compare`` (safetensors in, safetensors or text out): plain
  Python, no torch: read every input file fully (``open().read()``), sha256 it (hashlib), and write
  as many bytes as the command's output (its ticket, or for info/compare its stdout) to a file in
  the same folder (write, flush and fsync: every elth output is flushed to the disk before its rename).
- ``export`` (safetensors in, torch .pth out): ``import torch``, read + sha256 the input ticket,
  then ``torch.save`` tensors with the same keys, shapes and dtypes (zero-filled) as every .pth file
  the command wrote (and as many bytes as its other files), into a folder beside it, each fsynced.
- ``import`` (torch .pth in, safetensors out): ``import torch``, ``torch.load(weights_only=True)``
  every .pth file of the run folder, then write (and fsync) as many bytes as the command's output ticket.

Memory: ``mem ratio = (peak - baseline) / largest file`` (largest input or output file). The baseline
is the peak RSS of a fresh ``python -c "import torch"``, except for info, stretch, squeeze and compare,
whose target is to run without torch: their ratio uses ``python -c "import numpy"`` (the one against
torch's baseline is reported too). Targets: time ratio <= 2 and memory ratio <= 1.5 ("ok"/"over").

One warm-up (``python -c pass``, ``import torch``, ``elth --version``) runs first so that the page
cache holds the interpreter and torch for commands and limits alike; every command and limit runs
``--runs`` times (medians reported).

    python benchmarks/scale.py                         # resnet152 and ViT-L (minutes, several GB)
    python benchmarks/scale.py --arch imagenet-resnet152 --runs 3
    python benchmarks/scale.py --quick --json          # small archs: a fast test run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHS = ("imagenet-resnet152", "vit-d24-w1024-h16-p16")
QUICK_ARCHS = ("imagenet-resnet18", "vit-d4-w64-h4-p16")
SPARSITY = "0.8"
# The partner of a ResNet for stretch/squeeze: the next depth of the same block kind.
RESNET_PARTNERS = {"imagenet-resnet152": "imagenet-resnet101", "imagenet-resnet101": "imagenet-resnet50",
                   "imagenet-resnet50": "imagenet-resnet101", "imagenet-resnet34": "imagenet-resnet26",
                   "imagenet-resnet26": "imagenet-resnet18", "imagenet-resnet18": "imagenet-resnet26"}
TORCH_FREE = ("info", "stretch", "squeeze", "compare")
TIME_TARGET, MEMORY_TARGET = 2.0, 1.5

LIMIT_FIND = """
import os, sys
import torch
from safetensors.torch import save_file
from elth_cli.archs import build_model, resolve_arch
from elth_cli.data.datasets import get_dataset_info
arch, dataset, out = sys.argv[1:]
info = get_dataset_info(dataset)
model = build_model(resolve_arch(arch), info.input_shape, info.num_classes, seed=0)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""

LIMIT_SAFETENSORS = """
import hashlib, os, sys
out, size, *inputs = sys.argv[1:]
for path in inputs:
    with open(path, "rb") as f:
        data = f.read()
    hashlib.sha256(data).hexdigest()
    del data
with open(out, "wb") as f:
    f.write(bytes(int(size)))
    f.flush()
    os.fsync(f.fileno())
"""

LIMIT_EXPORT = """
import hashlib, json, os, sys
import torch
ticket, manifest, out = sys.argv[1:]
with open(ticket, "rb") as f:
    hashlib.sha256(f.read()).hexdigest()
os.makedirs(out, exist_ok=True)
for name, entry in json.load(open(manifest)).items():
    if isinstance(entry, int):
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes(entry))
            f.flush()
            os.fsync(f.fileno())
        continue
    tensors = {k: torch.zeros(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in entry.items()}
    with open(os.path.join(out, name), "wb") as f:
        torch.save(tensors, f)
        f.flush()
        os.fsync(f.fileno())
    del tensors
"""

LIMIT_IMPORT = """
import os, sys
import torch
run_dir, out, size = sys.argv[1:]
for name in sorted(os.listdir(run_dir)):
    if name.endswith(".pth"):
        torch.load(os.path.join(run_dir, name), weights_only=True, map_location="cpu")
with open(out, "wb") as f:
    f.write(bytes(int(size)))
    f.flush()
    os.fsync(f.fileno())
"""

MANIFEST = """
import json, os, sys
import torch
run_dir, out = sys.argv[1:]
manifest = {}
for name in sorted(os.listdir(run_dir)):
    path = os.path.join(run_dir, name)
    if not name.endswith(".pth"):
        manifest[name] = os.path.getsize(path)
        continue
    state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    manifest[name] = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}
json.dump(manifest, open(out, "w"))
"""


@dataclass
class Case:
    """One timed command: its elth arguments, the files it reads and writes, and its limit's kind."""

    command: str
    args: list[str]
    inputs: list[Path]
    output: Path | None  # a file or folder; None: the command's output is its stdout
    limit: str  # find, safetensors, export or import
    arch: str = ""
    dataset: str = ""


def measure(argv: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one fresh process ``argv`` (stdout to the file ``stdout``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(stdout or os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            sys.exit(f"error: {' '.join(argv[:6])} ... exited with {proc.returncode}\n{tail}")
    return wall, usage.ru_maxrss / 1024  # Linux reports kilobytes


def elth(args: list[str]) -> list[str]:
    """The argv of a fresh ``python -m elth_cli ARGS``."""
    return [sys.executable, "-m", "elth_cli", *args]


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def file_sizes(path: Path) -> list[int]:
    """Sizes in bytes of the file ``path`` or of every file in the folder ``path``."""
    if path.is_dir():
        return [p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()]
    return [path.stat().st_size]


def depth(arch: str) -> int:
    """The depth number in an architecture's name (152 in imagenet-resnet152, 24 in vit-d24-...)."""
    found = re.search(r"(?:resnet-?|vit-d)(\d+)", arch)
    if not found:
        sys.exit(f"error: no partner for stretch/squeeze known for {arch} (ImageNet ResNets and vit-d... only)")
    return int(found.group(1))


def partner(arch: str) -> str:
    """The architecture stretch and squeeze pair ``arch`` with: a ResNet's neighbour, a ViT of half depth."""
    if arch in RESNET_PARTNERS:
        return RESNET_PARTNERS[arch]
    d = depth(arch)
    if arch.startswith("vit-d"):
        return re.sub(r"^vit-d\d+", f"vit-d{d // 2 if d > 1 else 2}", arch)
    sys.exit(f"error: no partner for stretch/squeeze known for {arch}")


def build_cases(arch: str, dataset: str, folder: Path) -> tuple[list[Case], list[str]]:
    """The timed commands for ``arch`` with their files in ``folder``, and the untimed set-up's elth
    arguments (the partner's ticket, which stretch or squeeze reads)."""
    main, mag, other = folder / "random.safetensors", folder / "magnitude.safetensors", folder / "partner.safetensors"
    other_arch = partner(arch)
    find = ["find", "--arch", arch, "--dataset", dataset, "--sparsity", SPARSITY, "--seed", "0", "-q"]
    setup = ["find", "--method", "random", "--arch", other_arch, "--dataset", dataset, "--sparsity", SPARSITY,
             "--seed", "0", "-q", "-o", str(other)]
    if depth(other_arch) < depth(arch):  # stretch the partner up to arch, squeeze arch down to the partner
        shallow, deep, deep_arch, shallow_arch = other, main, arch, other_arch
    else:  # arch is the shallow one: stretch it to the partner, squeeze the partner to it
        shallow, deep, deep_arch, shallow_arch = main, other, other_arch, arch
    stretched, squeezed = folder / "stretched.safetensors", folder / "squeezed.safetensors"
    exported, imported = folder / "exported", folder / "imported.safetensors"
    cases = [
        Case("find random", find[:1] + ["--method", "random"] + find[1:] + ["-o", str(main)], [], main, "find"),
        Case("find magnitude", find[:1] + ["--method", "magnitude"] + find[1:] + ["-o", str(mag)], [], mag, "find"),
        Case("stretch", ["stretch", str(shallow), "-t", deep_arch, "-o", str(stretched), "-q"], [shallow],
             stretched, "safetensors"),
        Case("squeeze", ["squeeze", str(deep), "-t", shallow_arch, "-o", str(squeezed), "-q"], [deep],
             squeezed, "safetensors"),
        Case("info", ["info", str(main)], [main], None, "safetensors"),
        Case("compare", ["compare", str(main), str(mag)], [main, mag], None, "safetensors"),
        Case("export", ["export", str(main), str(exported), "-q"], [main], exported, "export"),
        Case("import", ["import", str(exported), "-a", arch, "-d", dataset, "-o", str(imported), "-q"], [exported],
             imported, "import"),
    ]
    for case in cases:
        case.arch, case.dataset = arch, dataset
    return cases, setup


def limit_argv(case: Case, written: Path) -> tuple[list[str], Path]:
    """The limit process for ``case`` (whose output, or captured stdout, is ``written``) and what it writes."""
    out = written.with_name(written.name + ".limit")
    py = [sys.executable, "-c"]
    if case.limit == "find":
        return py + [LIMIT_FIND, case.arch, case.dataset, str(out)], out
    if case.limit == "safetensors":
        size = str(sum(file_sizes(written)))
        return py + [LIMIT_SAFETENSORS, str(out), size, *map(str, case.inputs)], out
    if case.limit == "export":
        manifest = written.with_name(written.name + ".manifest.json")
        if not manifest.exists():  # untimed: the keys, shapes and dtypes of what export wrote
            measure(py + [MANIFEST, str(written), str(manifest)])
        return py + [LIMIT_EXPORT, str(case.inputs[0]), str(manifest), str(out)], out
    return py + [LIMIT_IMPORT, str(case.inputs[0]), str(out), str(sum(file_sizes(written)))], out


def run_case(case: Case, runs: int, folder: Path) -> dict:
    """Run ``case`` and its limit ``runs`` times, alternating; the raw figures of every run."""
    walls, peaks, limit_walls, limit_peaks = [], [], [], []
    stdout = folder / (case.command.replace(" ", "-") + ".stdout")
    for _ in range(runs):
        if case.output is not None:
            remove(case.output)
        wall, peak = measure(elth(case.args), stdout=stdout)
        written = case.output if case.output is not None else stdout
        argv, limit_out = limit_argv(case, written)
        remove(limit_out)
        limit_wall, limit_peak = measure(argv)
        remove(limit_out)
        walls.append(wall), peaks.append(peak), limit_walls.append(limit_wall), limit_peaks.append(limit_peak)
    sizes = [s for p in case.inputs for s in file_sizes(p)] + file_sizes(written)
    return {"arch": case.arch, "command": case.command, "args": case.args, "limit": case.limit,
            "wall_s_runs": walls, "limit_s_runs": limit_walls, "peak_mb_runs": peaks,
            "limit_peak_mb_runs": limit_peaks, "largest_file_mb": max(sizes) / 2**20,
            "output_mb": sum(file_sizes(written)) / 2**20}


def summarise(raw: dict, baselines: dict[str, float]) -> dict:
    """A result row: medians, the time and memory ratios, and the target checks."""
    med = statistics.median
    row = dict(raw, wall_s=med(raw["wall_s_runs"]), limit_s=med(raw["limit_s_runs"]),
               peak_mb=med(raw["peak_mb_runs"]), limit_peak_mb=med(raw["limit_peak_mb_runs"]))
    row["time_ratio"] = row["wall_s"] / row["limit_s"]
    largest = max(row["largest_file_mb"], 1e-6)
    row["mem_ratio_torch"] = (row["peak_mb"] - baselines["torch"]) / largest
    row["mem_ratio_numpy"] = (row["peak_mb"] - baselines["numpy"]) / largest
    torch_free = row["command"] in TORCH_FREE
    row["baseline"] = "numpy" if torch_free else "torch"
    row["mem_ratio"] = row["mem_ratio_numpy"] if torch_free else row["mem_ratio_torch"]
    row["time_ok"] = row["time_ratio"] <= TIME_TARGET
    row["mem_ok"] = row["mem_ratio"] <= MEMORY_TARGET
    return row


def warm_up_and_baselines(runs: int, folder: Path) -> tuple[dict, dict[str, float]]:
    """Warm the page cache once (interpreter, torch, elth), then the peak RSS of a fresh ``import torch`` and
    ``import numpy`` (median of ``runs``); also torch's version, read from the warm-up."""
    versions = folder / "versions.txt"
    measure([sys.executable, "-c", "pass"])
    measure([sys.executable, "-c", "import torch, numpy; print(torch.__version__); print(numpy.__version__)"],
            stdout=versions)
    measure(elth(["--version"]), stdout=folder / "elth-version.txt")
    torch_version, numpy_version = versions.read_text().split()[:2]
    baselines = {}
    for name in ("torch", "numpy"):
        baselines[name] = statistics.median(measure([sys.executable, "-c", f"import {name}"])[1]
                                            for _ in range(runs))
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch_version, "numpy": numpy_version,
            "elth": (folder / "elth-version.txt").read_text().strip(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return info, baselines


def print_table(info: dict, baselines: dict[str, float], rows: list[dict], runs: int) -> None:
    """The human-readable table, one block per architecture."""
    print(f"{info['cpus']} CPU cores, torch {info['torch']}, OMP_NUM_THREADS={info['omp_num_threads']}, "
          f"{info['date']}; {runs} run(s) per command and limit (medians)")
    print(f"baselines (peak RSS of a fresh process): import torch {baselines['torch']:.1f} MB, "
          f"import numpy {baselines['numpy']:.1f} MB")
    print(f"targets: time ratio <= {TIME_TARGET:g}, memory ratio <= {MEMORY_TARGET:g}; memory ratio = "
          "(peak - baseline) / largest file; info, stretch, squeeze, compare against numpy's baseline (torch's in "
          "brackets)")
    header = (f"  {'command':<16} {'wall s':>8} {'limit s':>8} {'ratio':>6} {'peak MB':>8} {'largest MB':>10} "
              f"{'mem ratio':>15}  time  memory")
    arch = None
    for r in rows:
        if r["arch"] != arch:
            arch = r["arch"]
            print(f"\n{arch}\n{header}")
        mem = f"{r['mem_ratio']:.2f}"
        if r["baseline"] == "numpy":
            mem += f" ({r['mem_ratio_torch']:.2f})"
        print(f"  {r['command']:<16} {r['wall_s']:8.2f} {r['limit_s']:8.2f} {r['time_ratio']:6.2f} "
              f"{r['peak_mb']:8.1f} {r['largest_file_mb']:10.1f} {mem:>15}  "
              f"{'ok' if r['time_ok'] else 'over':<4}  {'ok' if r['mem_ok'] else 'over'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", help=f"architecture to benchmark (repeat; default: "
                   f"{', '.join(DEFAULT_ARCHS)}; --quick: {', '.join(QUICK_ARCHS)})")
    p.add_argument("--dataset", default="imagenet", help="data set fixing input shape and classes (none is read; "
                   "default imagenet)")
    p.add_argument("--quick", action="store_true", help="small architectures: a fast test run")
    p.add_argument("--runs", type=int, default=1, help="runs of every command and its limit (medians reported)")
    p.add_argument("--work", type=Path, help="folder for the tickets (default: a temporary folder, removed after)")
    p.add_argument("--json", action="store_true", help="print every result and the machine as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    args.arch = args.arch or list(QUICK_ARCHS if args.quick else DEFAULT_ARCHS)
    return args


def benchmark_arch(arch: str, dataset: str, runs: int, work: Path, keep: bool) -> list[dict]:
    """Set up and run every command of one architecture; its raw rows. Its files go unless ``keep``."""
    folder = work / re.sub(r"[^A-Za-z0-9._-]", "_", arch)
    folder.mkdir(parents=True, exist_ok=True)
    cases, setup = build_cases(arch, dataset, folder)
    print(f"{arch}: set-up (the partner's ticket)", file=sys.stderr)
    measure(elth(setup))
    raw = []
    for case in cases:
        print(f"{arch}: {case.command}", file=sys.stderr)
        raw.append(run_case(case, runs, folder))
    if not keep:
        shutil.rmtree(folder)
    return raw


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table (or JSON) and return the results."""
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="elth-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        info, baselines = warm_up_and_baselines(args.runs, work)
        raw = [r for arch in args.arch for r in benchmark_arch(arch, args.dataset, args.runs, work,
                                                     keep=args.work is not None)]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = [summarise(r, baselines) for r in raw]
    result = {"machine": info, "runs": args.runs, "dataset": args.dataset, "sparsity": float(SPARSITY),
              "baselines_mb": baselines, "targets": {"time_ratio": TIME_TARGET, "mem_ratio": MEMORY_TARGET},
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(info, baselines, rows, args.runs)
    return result


if __name__ == "__main__":
    main()
