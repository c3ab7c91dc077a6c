"""Where each worker of the pool runs (:class:`Slot`): its device and how many CPU threads it gets.

On the CPU the cores are shared out (``cores / N`` threads each: SLURM's and cgroups' allotment is
this process's affinity mask); on GPUs each worker gets its own, several per GPU when there are
more workers than GPUs. Nothing here imports torch unless CUDA devices are counted.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from elth_cli.errors import UsageError


@dataclass(frozen=True)
class Slot:
    """Where a worker runs: its index, its device and its CPU threads (None: this process's setting)."""

    index: int
    device: str
    threads: int | None





def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: SLURM's and cgroups' allotment)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _gpu_driver_present() -> bool:
    """Whether this machine may have a GPU torch can use: on Linux, CUDA and ROCm need their kernel
    driver, which shows in /proc and /dev; elsewhere, assume so (torch decides)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def plan_slots(jobs: int, device: str = "cpu", cores: int | None = None) -> list[Slot]:
    """``jobs`` workers: on the CPU each with ``cores // jobs`` threads (at least one); on CUDA
    (``auto`` with GPUs, ``cuda``) one GPU each in turn, several per GPU when ``jobs`` exceeds
    them; ``cuda:N`` puts every worker on GPU N. One job: one slot in this process (threads None)."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    cores = cores if cores is not None else available_cores()
    threads = max(1, cores // jobs) if jobs > 1 else None
    devices = _worker_devices(jobs, device)
    return [Slot(i, d, threads) for i, d in enumerate(devices)]


def _worker_devices(jobs: int, device: str) -> list[str]:
    text = (device or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not _gpu_driver_present()):
        return ["cpu"] * jobs  # without importing torch (2 s): the workers start sooner
    import torch

    if not torch.cuda.is_available():
        if text == "auto":
            return ["cpu"] * jobs
        raise UsageError(f"device {device} asked for but CUDA is not available on this machine; use --device cpu or auto")
    count = torch.cuda.device_count()
    if text.startswith("cuda:") and text[5:].isascii() and text[5:].isdigit():
        if int(text[5:]) >= count:
            raise UsageError(f"device {device} does not exist: this machine has {count} CUDA device(s)")
        return [text] * jobs
    if text not in ("auto", "cuda"):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return [f"cuda:{i % count}" for i in range(jobs)]
