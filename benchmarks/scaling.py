"""Data-parallel scaling: training images/s with 1 process and with N, and the efficiency.

Each configuration runs in fresh processes started here (torch.multiprocessing spawn), joined in
a process group exactly as ``torchrun`` / ``srun`` runs of elth are (elth_cli.runtime.distributed: gloo
on the CPU, NCCL on GPUs, one GPU per process), and times elth's own training step
(``train.TrainStep`` under DistributedDataParallel, device-resident data, masks re-applied after
every step) on a random 50%-sparse ticket and synthetic CIFAR-sized images.

* weak scaling (``--mode weak``): every process keeps ``--batch-size`` images per step, so N
  processes train N times the images per step; efficiency = images/s(N) / (N x images/s(1)).
* strong scaling (``--mode strong``): the global batch stays ``--batch-size`` (what elth's
  ``--batch-size`` means), split over the processes; efficiency = speed-up / N.

On the CPU every process gets ``--threads`` torch threads (default: the cores divided by N), so
the N-process run uses N times the cores of the 1-process run, as N GPUs are N times one.

    python benchmarks/scaling.py                          # CPU here (gloo), CUDA where there is one
    python benchmarks/scaling.py --nproc 8 --device cuda --mode both --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from elth_cli import __version__, data, train
from elth_cli.runtime import distributed
from elth_cli.runtime.device import device_name, device_setup, resolve_device, resolve_precision, synchronize
from elth_cli.errors import ElthError
from elth_cli.find import random_ticket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, opts: dict, out: str) -> None:
    """One rank: join the group, build the step train_state builds, time it, rank 0 writes the result."""
    torch.set_num_threads(opts["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    launch = distributed.Launch(rank, world, rank, "spawn")
    device = resolve_device(opts["device"], launch)
    with distributed.session(launch, device, timeout_s=300) as rt:
        info = data.get_dataset_info("cifar10")
        n = opts["images"]
        g = torch.Generator().manual_seed(0)
        images = {s: torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g)
                  for s, k in (("train", n), ("test", 100))}
        labels = {s: torch.randint(0, 10, (k,), generator=g) for s, k in (("train", n), ("test", 100))}
        precision = resolve_precision(opts["precision"], device)
        setup = device_setup(device, precision)
        bundle = data.TensorBundle(info, data.Augment(pad=4, flip=True), setup, images, labels)
        ticket = random_ticket(opts["arch"], (3, 32, 32), 10, opts["sparsity"], seed=0)
        cfg = train.default_recipe(ticket.spec, info).replace(device=device.type, precision=precision,
                                                              batch_size=opts["global_batch"])
        step = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, setup, world).step

        def batches():
            epoch = 0
            while True:
                yield from bundle.train_batches(cfg.batch_size, epoch, 0, rank=rank, world_size=world)
                epoch += 1

        it = batches()
        for _ in range(opts["warmup_steps"]):
            step(*next(it), cfg.lr)
        synchronize(device)
        distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(opts["steps"]):
            step(*next(it), cfg.lr)
        synchronize(device)
        distributed.barrier()  # the slowest rank sets the pace
        seconds = time.perf_counter() - t0
        if rt.is_main:
            result = {"processes": world, "global_batch": cfg.batch_size, "batch_per_process": cfg.batch_size // world,
                      "seconds": seconds, "images_per_s": opts["steps"] * cfg.batch_size / seconds,
                      "device": device_name(device), "backend": rt.backend, "precision": precision}
            Path(out).write_text(json.dumps(result))


def measure(world: int, opts: dict) -> dict:
    """images/s of ``world`` fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(world, _free_port(), opts, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=None, help="processes of the scaled run (default: GPUs, or 2 on the CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (each process takes cuda:RANK)")
    p.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128, help="weak: per process; strong: global")
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CPU, 300 on CUDA)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3 on CPU, 30 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads per process (default: cores / N)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ElthError as e:
        sys.exit(f"error: {e}")
    cuda = device.type == "cuda"
    nproc = args.nproc or (torch.cuda.device_count() if cuda else 2)
    if nproc < 2:
        sys.exit("error: scaling needs --nproc 2 or more (and as many GPUs on CUDA)")
    if cuda and nproc > torch.cuda.device_count():
        sys.exit(f"error: --nproc {nproc} but this machine has {torch.cuda.device_count()} GPUs")
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    steps = args.steps or (300 if cuda else 20)
    warmup = args.warmup_steps if args.warmup_steps is not None else (30 if cuda else 3)
    modes = ("weak", "strong") if args.mode == "both" else (args.mode,)
    rows = []
    for mode in modes:
        if mode == "strong" and args.batch_size % nproc:
            sys.exit(f"error: strong scaling splits --batch-size {args.batch_size} over {nproc} processes: "
                     f"choose a multiple of {nproc}")
        results = {}
        for world in (1, nproc):
            global_batch = args.batch_size * world if mode == "weak" else args.batch_size
            opts = {"device": "cuda" if cuda else "cpu", "arch": args.arch, "sparsity": args.sparsity,
                    "precision": args.precision, "global_batch": global_batch, "steps": steps, "warmup_steps": warmup,
                    "threads": threads, "images": max(4 * global_batch, 2048)}
            results[world] = measure(world, opts)
        one, many = results[1]["images_per_s"], results[nproc]["images_per_s"]
        rows.append({"mode": mode, "one": results[1], "many": results[nproc], "speedup": many / one,
                     "efficiency": many / (nproc * one)})
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "device": rows[0]["one"]["device"] if not cuda else torch.cuda.get_device_name(0),
        "threads_per_process": None if cuda else threads,
        "arch": args.arch,
        "sparsity": args.sparsity,
        "nproc": nproc,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "results": rows,
        "elth_version": __version__,
        "command": " ".join(["python", "benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return result
    where = "CUDA, NCCL" if cuda else f"CPU, gloo, {threads} thread(s) per process"
    print(f"{args.arch} at sparsity {args.sparsity}, {steps} timed steps after {warmup} warm-up ({where})")
    for row in rows:
        one, many = row["one"], row["many"]
        print(f"  {row['mode']:6}  1 process : batch {one['global_batch']:5d}  {one['images_per_s']:10,.0f} images/s")
        print(f"  {'':6}  {nproc} processes: batch {many['global_batch']:5d} ({many['batch_per_process']} each)  "
              f"{many['images_per_s']:10,.0f} images/s  speed-up x{row['speedup']:.2f}, efficiency {100 * row['efficiency']:.0f}%")
    return result


if __name__ == "__main__":
    main()
