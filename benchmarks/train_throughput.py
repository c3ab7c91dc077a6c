"""Training throughput: elth's training step against the way the reference implementation trains.

elth: the data set held on the device as uint8 (data.TensorBundle: gather, pad, crop and flip as
tensor ops), ``train.TrainStep`` as ``train.build_parts`` assembles it for the device's
``DeviceSetup`` (no host-device sync, fused/foreach SGD, masks re-applied with one
``_foreach_mul_`` after the step), mixed precision and channels_last on CUDA, optionally compiled.

baseline (open_lth's way): a torchvision-style data set of uint8 HWC images read through a
DataLoader with worker processes and PIL transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize), fp32, and a PrunedModel wrapper that multiplies each
mask into its weight (``param.data *= mask``) before every forward, an LR scheduler stepped every
iteration.

Same model (ResNet-20 by default, a random 50%-sparse ticket), same batch, same device, one run.
Warm-up steps are excluded; on CUDA the clocks are read after a synchronisation. The data are
CIFAR-10 when ``--data-dir`` holds it, else 50,000 random 32x32x3 images (the speed is the same).

``--jobs N`` also times N trainings side by side, as ``elth train --out-dir --jobs N`` and the demo
run them (worker processes; on CUDA one GPU each, several per GPU past the GPU count): each
worker's images/s and their sum, against one training alone.

    python benchmarks/train_throughput.py                 # CPU here, CUDA where there is one
    python benchmarks/train_throughput.py --device cuda --compile --json
    python benchmarks/train_throughput.py --device cuda --jobs 4   # four trainings on one GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elth_cli import __version__, data, train
from elth_cli.runtime.device import autocast, device_name, device_setup, resolve_device, resolve_precision, synchronize
from elth_cli.errors import ElthError
from elth_cli.find import random_ticket

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10
EPOCHS = 160  # the paper's CIFAR recipe


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def cifar_like(data_dir: str | None) -> tuple[dict[str, Tensor], dict[str, Tensor], str]:
    """uint8 NCHW images and int64 labels of CIFAR-10 (real when found in data_dir, else random)."""
    if data_dir:
        try:
            bundle = data.load_dataset("cifar10", data_dir, device="cpu")
            return bundle.images, bundle.labels, f"CIFAR-10 from {data_dir}"
        except ElthError as e:
            sys.exit(f"error: {e}")
    g = torch.Generator().manual_seed(0)
    images = {s: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
              for s, n in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES))}
    labels = {s: torch.randint(0, 10, (n,), generator=g) for s, n in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES))}
    return images, labels, "synthetic CIFAR-10-sized (50,000 random 32x32x3 uint8 images)"


class PilImages(torch.utils.data.Dataset):
    """torchvision CIFAR10's __getitem__: a uint8 HWC array, one PIL image per example, transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class PrunedModel(nn.Module):
    """open_lth's PrunedModel: the mask is multiplied into each pruned weight before every forward."""

    def __init__(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        for k, m in masks.items():
            self.register_buffer(self._name(k), m.float())

    @staticmethod
    def _name(key: str) -> str:
        return "mask_" + key.replace(".", "___")

    def _apply_mask(self) -> None:
        for name, param in self.model.named_parameters():
            if hasattr(self, self._name(name)):
                param.data *= getattr(self, self._name(name))

    def forward(self, x: Tensor) -> Tensor:
        self._apply_mask()
        return self.model(x)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def timed(batches: Iterator[tuple[Tensor, Tensor]], step: Callable[[Tensor, Tensor], None], warmup: int, steps: int,
          device: torch.device, start_at: float | None = None) -> tuple[float, int]:
    """Run ``warmup`` untimed then ``steps`` timed steps; return (seconds, images). ``start_at``: a
    wall-clock time (time.time()) to wait for after the warm-up, so that several workers time together."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    images = 0
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
        images += y.shape[0]
    synchronize(device)
    return time.perf_counter() - t0, images


def full_batches(epochs: Callable[[int], Iterator[tuple[Tensor, Tensor]]], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of every epoch in turn, without the last partial one (its new shape would recompile)."""
    epoch = 0
    while True:
        for x, y in epochs(epoch):
            if y.shape[0] == batch_size:
                yield x, y
        epoch += 1


@torch.no_grad()
def time_eval(model: nn.Module, bundle: data.DataBundle, device: torch.device, precision: str, images: int) -> float:
    """Seconds per test image of the per-epoch evaluation (eager model, as training evaluates)."""
    model.eval()
    batches = bundle.eval_batches(1000, "test")
    x, _ = next(batches)
    with autocast(device, precision):
        model(x)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    done = 0
    for x, y in batches:
        if done >= images:
            break
        with autocast(device, precision):
            model(x).argmax(1)
        done += y.shape[0]
    synchronize(device)
    return (time.perf_counter() - t0) / max(done, 1)


def run_elth(args, ticket, images, labels, device: torch.device, precision: str, start_at: float | None = None) -> dict:
    info = data.get_dataset_info("cifar10")
    setup = device_setup(device, precision)  # what a training run on this device chooses
    bundle = data.TensorBundle(info, data.Augment(pad=4, flip=True), setup, images, labels)
    cfg = train.default_recipe(ticket.spec, info).replace(device=str(device), precision=precision,
                                                          compile=args.compile, batch_size=args.batch_size)
    parts = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, setup)  # the loop's own set-up
    batches = full_batches(lambda e: bundle.train_batches(args.batch_size, e, seed=0), args.batch_size)
    seconds, n = timed(batches, lambda x, y: parts.step(x, y, cfg.lr), args.warmup_steps, args.steps, device, start_at)
    eval_s_per_image = time_eval(parts.model, bundle, device, precision, min(TEST_IMAGES, args.eval_images))
    optimizer_kind = "fused" if setup.fused_sgd else "foreach"
    return {"images_per_s": n / seconds, "seconds": seconds, "images": n, "eval_s_per_image": eval_s_per_image,
            "optimizer": f"SGD ({optimizer_kind})", "precision": precision, "compile": args.compile,
            "channels_last": setup.channels_last}


def run_baseline(args, ticket, images, labels, device: torch.device) -> dict:
    from torchvision import transforms as T

    info = data.get_dataset_info("cifar10")
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(info.mean, info.std)])
    hwc = images["train"].permute(0, 2, 3, 1).contiguous().numpy()
    ds = PilImages(hwc, labels["train"].numpy(), transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True)
    torch.backends.cudnn.benchmark = False  # open_lth leaves PyTorch's default
    model = PrunedModel(ticket.build_model("init"), ticket.masks).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)

    def step(x: Tensor, y: Tensor) -> None:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        model.train()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from loader

    seconds, n = timed(batches(), step, args.warmup_steps, args.steps, device)
    return {"images_per_s": n / seconds, "seconds": seconds, "images": n, "workers": args.workers,
            "optimizer": "SGD (default)", "precision": "fp32"}


def jobs_worker(worker, args: dict, start_at: float) -> dict:
    """One of ``--jobs`` workers (elth_cli.runtime.pool): elth's timed steps on the worker's device, timed from
    ``start_at`` together with the others."""
    opts = argparse.Namespace(**args)
    device = resolve_device(worker.device)
    precision = resolve_precision(opts.precision, device)
    images, labels, _ = cifar_like(opts.data_dir)
    ticket = random_ticket(opts.arch, (3, 32, 32), 10, opts.sparsity, seed=0, dataset="cifar10")
    late = time.time() > start_at
    result = run_elth(opts, ticket, images, labels, device, precision, start_at)
    return {"device": worker.device, "threads": torch.get_num_threads(), "images_per_s": result["images_per_s"],
            "late": late}


def run_jobs_side_by_side(args, jobs: int) -> dict:
    """``jobs`` independent trainings at once (``elth train ... --jobs N``'s workers: cores / N threads
    each, or a GPU each, several per GPU past the GPU count): each one's images/s and their sum."""
    from elth_cli.runtime.pool import run_jobs
    from elth_cli.runtime.slots import plan_slots
    from elth_cli.runtime.workers import Job

    slots = plan_slots(jobs, args.device)
    start_at = time.time() + args.jobs_start_s  # time for every worker to start and warm up
    fields = {k: getattr(args, k) for k in ("precision", "compile", "arch", "sparsity", "batch_size", "steps",
                                           "warmup_steps", "eval_images", "data_dir")}
    result = run_jobs([Job(f"worker {s.index}", jobs_worker, {"args": fields, "start_at": start_at}) for s in slots],
                      slots)
    result.check("benchmark workers")
    workers = [o.value for o in result.outcomes.values()]
    return {"jobs": jobs, "workers": workers, "images_per_s": sum(w["images_per_s"] for w in workers),
            "late_starts": sum(w["late"] for w in workers)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="elth's precision: auto, bf16, fp16 or fp32 (baseline: fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile elth's model (compilation is warm-up)")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps per path (default: 20 on CPU, 300 on CUDA)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3 on CPU, 30 on CUDA)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="baseline DataLoader workers")
    p.add_argument("--eval-images", type=int, default=None, help="test images timed for the wall-time estimate "
                   "(default: 1,000 on CPU, 10,000 on CUDA)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (default: synthetic data)")
    p.add_argument("--jobs", type=int, default=1, help="also time N independent trainings at once, as elth train "
                   "--jobs N runs them (worker processes; on CUDA one GPU each, several per GPU past the GPU count)")
    p.add_argument("--jobs-start-s", type=float, default=60.0, help="seconds the --jobs workers get to start and "
                   "warm up before they all start timing")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
    except ElthError as e:
        sys.exit(f"error: {e}")
    cuda = device.type == "cuda"
    args.steps = args.steps or (300 if cuda else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (30 if cuda else 3)
    args.eval_images = args.eval_images or (TEST_IMAGES if cuda else 1000)

    images, labels, source = cifar_like(args.data_dir)
    ticket = random_ticket(args.arch, (3, 32, 32), 10, args.sparsity, seed=0, dataset="cifar10")
    baseline = run_baseline(args, ticket, images, labels, device)
    elth = run_elth(args, ticket, images, labels, device, precision)
    side_by_side = run_jobs_side_by_side(args, args.jobs) if args.jobs > 1 else None
    epoch_s = TRAIN_IMAGES / elth["images_per_s"] + TEST_IMAGES * elth["eval_s_per_image"]
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "device": device_name(device),
        "data": source,
        "arch": ticket.arch,
        "sparsity": ticket.sparsity,
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "elth": elth,
        "baseline": baseline,
        "speedup": elth["images_per_s"] / baseline["images_per_s"],
        "elth_epoch_seconds": epoch_s,
        "elth_160_epochs_minutes": EPOCHS * epoch_s / 60,
        "jobs": side_by_side,
        "elth_version": __version__,
        "command": " ".join(["python", "benchmarks/train_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return result
    print(f"{result['device']}, {ticket.arch} at sparsity {ticket.sparsity:.2f}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup_steps} warm-up; data: {source}")
    rows = [
        (f"baseline (DataLoader, {args.workers} workers, PIL transforms, fp32, mask in forward)", baseline["images_per_s"]),
        (f"elth (device-resident data, {precision}{', compiled' if args.compile else ''}, {elth['optimizer']})",
         elth["images_per_s"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, ips in rows:
        print(f"  {label:<{width}}  {ips:10,.0f} images/s")
    print(f"  speed-up x{result['speedup']:.2f}")
    if side_by_side is not None:
        per = ", ".join(f"{w['images_per_s']:,.0f}" for w in side_by_side["workers"])
        print(f"  elth, {args.jobs} trainings side by side (--jobs {args.jobs}): {side_by_side['images_per_s']:10,.0f} "
              f"images/s in all ({per}), x{side_by_side['images_per_s'] / elth['images_per_s']:.2f} one training"
              + (f"; {side_by_side['late_starts']} worker(s) started late: raise --jobs-start-s"
                 if side_by_side["late_starts"] else ""))
    print(f"  elth, 160 CIFAR-10 epochs (50,000 images + 10,000 test images each): "
          f"{result['elth_160_epochs_minutes']:.1f} min ({epoch_s:.2f} s per epoch)")
    return result


if __name__ == "__main__":
    main()
