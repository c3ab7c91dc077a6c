"""Devices and precision: the one place for every choice that depends on the hardware.

* :func:`resolve_device` turns ``--device`` into a ``torch.device``, for one process or for one
  rank of several (each rank on its own GPU, ``cuda:LOCAL_RANK``);
* :func:`resolve_precision` turns ``--precision`` into bf16, fp16 or fp32, refusing what the
  device cannot do;
* :class:`DeviceSetup` is the small record the training loop and the data loader read: memory
  format, fused or foreach SGD, grad scaler, autocast, pinned memory, non-blocking copies, cuDNN
  autotuning and determinism. :func:`device_setup` fills it with each device's defaults; every
  choice can be forced (the tests run each CUDA branch on the CPU wherever torch allows it).

Nothing here knows about processes beyond a rank's placement; ``distributed`` imports this
module, never the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import re
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from elth_cli.errors import UsageError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class Placement(Protocol):
    """Where a process sits among several (``distributed.Launch`` is one)."""

    rank: int
    world_size: int
    local_rank: int


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def _cuda_missing(text: str) -> UsageError:
    return UsageError(f"device {text} asked for but CUDA is not available on this machine; use --device cpu or auto")


def resolve_device(text: str = "auto", placement: Placement | None = None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; an unavailable device is an error.

    With several processes (``placement.world_size`` > 1) ``auto`` and ``cuda`` mean this rank's
    GPU, cuda:LOCAL_RANK; when a rank sees exactly one GPU (srun --gpus-per-task, or
    CUDA_VISIBLE_DEVICES set per rank) it is that one. ``cuda:N`` would put every rank on one GPU
    and is refused.
    """
    s = (text or "auto").strip().lower()
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if s not in ("auto", "cpu") and m is None:
        raise UsageError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    if s == "cpu" or (s == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    several = placement is not None and placement.world_size > 1
    if several and m is not None and m.group(1) is not None:
        raise UsageError(f"--device {text} would put all {placement.world_size} processes on one GPU; pass "
                         "--device cuda (each rank takes cuda:LOCAL_RANK)")
    if not torch.cuda.is_available():
        raise _cuda_missing(text)
    count = torch.cuda.device_count()
    if several:
        return _rank_gpu(placement, count)
    if s == "auto":
        return torch.device("cuda")
    if m.group(1) is not None and int(m.group(1)) >= count:
        raise UsageError(f"device {text} does not exist: this machine has {count} CUDA device(s)")
    return torch.device(s)


def _rank_gpu(placement: Placement, count: int) -> torch.device:
    if placement.local_rank < count:
        return torch.device("cuda", placement.local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise UsageError(f"rank {placement.rank} has local rank {placement.local_rank} but this node has {count} GPUs; "
                     f"start at most {count} processes per node (torchrun --nproc-per-node, srun --ntasks-per-node)")


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one: "cuda" and "cuda:0" are when 0 is the current GPU."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, recorded in the metrics."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, where work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cpu_fp16_supported() -> bool:
    """Whether this torch trains in fp16 on the CPU: fp16 autocast and a CPU grad scaler (torch >= 2.3)."""
    try:
        torch.amp.GradScaler("cpu")
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            out = torch.ones(2, 2) @ torch.ones(2, 2)
        return out.dtype == torch.float16
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return False


def _bf16_ok(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def resolve_precision(text: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, else fp32; refuse what the device cannot do."""
    s = (text or "auto").strip().lower()
    if s not in PRECISIONS:
        raise UsageError(f"unknown precision {text!r}; choose {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if s == "auto":
        return "bf16" if cuda and _bf16_ok(device) else "fp32"
    if s == "fp16" and not cuda and not cpu_fp16_supported():
        raise UsageError(f"fp16 training on the CPU needs fp16 autocast and a CPU grad scaler, which torch "
                         f"{torch.__version__} lacks; use --precision fp32 or bf16 on the CPU")
    if s == "bf16" and cuda and not _bf16_ok(device):
        raise UsageError(f"{torch.cuda.get_device_name(device)} does not support bf16; use --precision fp16 or fp32")
    return s


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision on a device (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The record the loop reads
# ---------------------------------------------------------------------------------------------


# The smallest optimizer of each kind with a fused kernel: what probes whether this torch has one.
_FUSED_PROBES = {
    "sgd": lambda weight: torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=True),
    "adamw": lambda weight: torch.optim.AdamW([weight], lr=1e-3, fused=True),
}


@functools.lru_cache(maxsize=None)
def fused_supported(device_type: str, optimizer: str = "sgd") -> bool:
    """Whether this torch has a fused ``optimizer`` kernel (sgd, adamw) for ``device_type`` (CUDA; the CPU since
    torch 2.4)."""
    try:
        _FUSED_PROBES[optimizer](torch.zeros(1, device=device_type, requires_grad=True))
        return True
    except (RuntimeError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class DeviceSetup:
    """Every device-dependent choice of a run, decided once (:func:`device_setup`) and read by the loop.

    ``channels_last``: model and input batches in NHWC, what cuDNN's fast convolutions want.
    ``fused_sgd``: one fused optimizer kernel, SGD's or AdamW's (else the multi-tensor ``foreach`` one);
    with fp16 it also takes the grad scaler's inf check, so a step stays free of host syncs.
    ``pin_memory``/``non_blocking``: folder data sets copy batches from page-locked memory,
    asynchronously. ``cudnn_benchmark``: cuDNN autotuning (off when ``deterministic``).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    fused_sgd: bool = False
    pin_memory: bool = False
    non_blocking: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs a grad scaler; bf16 has fp32's exponent range and needs none."""
        return self.precision == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the precision (a no-op for fp32)."""
        return autocast(self.device, self.precision)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.grad_scaler else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, in NHWC where ``channels_last``."""
        if self.channels_last:
            return model.to(device=self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def optimizer_kwargs(self, optimizer: str = "sgd") -> dict[str, bool]:
        """The kernel of ``optimizer`` (sgd, adamw): fused where chosen and this torch has it, else foreach."""
        fused = self.fused_sgd and (optimizer == "sgd" or fused_supported(self.device.type, optimizer))
        return {"fused": True} if fused else {"foreach": True}

    def for_run(self, precision: str, deterministic: bool) -> "DeviceSetup":
        """These device choices for a run's precision and determinism (no cuDNN autotuning when deterministic)."""
        return dataclasses.replace(self, precision=precision, deterministic=deterministic,
                                   cudnn_benchmark=self.cudnn_benchmark and not deterministic)

    def configure_torch(self) -> None:
        """Apply the process-wide switches: deterministic kernels, or cuDNN autotuning."""
        if self.deterministic:
            # cuBLAS needs this set before its first use to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a run's recorded configuration."""
        d = dataclasses.asdict(self)
        d["device"] = str(self.device)
        d["grad_scaler"] = self.grad_scaler
        return d


def device_setup(device: str | torch.device, precision: str = "fp32", deterministic: bool = False,
                 **forced: bool) -> DeviceSetup:
    """Each device's defaults (CUDA: NHWC, fused SGD, pinned non-blocking copies, cuDNN autotuning;
    CPU: none of them), with ``forced`` choices (``channels_last=True``, ``fused_sgd=True``, ...) on top.

    ``precision`` must be resolved already (:func:`resolve_precision`). A forced choice the
    installed torch cannot make (fused SGD on a CPU without the kernel) is a UsageError.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    unknown = set(forced) - {f.name for f in dataclasses.fields(DeviceSetup)} - {"device", "precision", "deterministic"}
    if unknown or {"device", "precision", "deterministic"} & set(forced):
        raise UsageError(f"unknown device choice {sorted(forced)[0]!r}")
    if precision not in PRECISIONS[1:]:
        raise UsageError(f"precision must be resolved to bf16, fp16 or fp32, got {precision!r}")
    choices = dict(channels_last=cuda, fused_sgd=cuda and fused_supported("cuda"), pin_memory=cuda,
                   non_blocking=cuda, cudnn_benchmark=cuda and not deterministic)
    choices.update(forced)
    if choices["fused_sgd"] and not fused_supported(dev.type):
        raise UsageError(f"torch {torch.__version__} has no fused SGD for {dev.type}; drop the fused choice")
    return DeviceSetup(dev, precision, deterministic=deterministic, **choices)
