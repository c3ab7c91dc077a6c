"""Data-parallel runtime: who launched us, the process group, and the few collectives elth needs.

elth runs data-parallel when it is started as several processes, by ``torchrun`` (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set) or by ``srun`` (SLURM_PROCID,
SLURM_NTASKS and SLURM_LOCALID set; MASTER_ADDR and MASTER_PORT must come from the job script).
One process (``python -m elth_cli``, or a launcher with one process) is the plain path: no process
group, no wrapper, no collective; every helper here is then a no-op or calls its function directly.

The rules that keep the ranks in step (docs/training.md, "Several processes"):

* rank 0 makes every decision that depends on files (does a checkpoint exist, is a round done,
  which weights to prune) and hands the result, or its error, to the others
  (:func:`run_on_main`), so the ranks never disagree and nothing needs a shared file system;
* only rank 0 writes files and prints; other ranks stay quiet unless they lose contact;
* set-up work that every rank does locally (loading data, checking options) ends in an exchange
  of failures (:func:`agree_on_errors`), so one rank's error stops every rank at once instead of
  leaving the others waiting for a collective until the timeout;
* a stop signal on any rank is agreed on at step boundaries (:func:`agree_on_stop`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import inspect
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import WriterLock
from elth_cli.runtime.launch import Launch, detect_launch, launcher_name  # re-exported: the launch is part of this API

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
# Ranks agree on a stop signal every this many steps (and at every epoch end). Each agreement is
# a one-element all-reduce whose result the host must read (a sync), so not every step.
STOP_CHECK_EVERY = 10
DIGEST_ENV = "ELTH_DEBUG_DIGESTS"


class DistributedError(ElthError):
    """A failure of the multi-process machinery itself (a rank unreachable, a connection lost).

    Unlike other errors, which every rank raises alike and rank 0 alone reports, these are seen
    by one rank only, so every rank that meets one prints it.
    """

    local = True


def _master_address(launch: Launch, env: Mapping[str, str]) -> tuple[str, str]:
    addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    if not addr or not port:
        raise UsageError(
            f"{launch.launcher} started {launch.world_size} processes but MASTER_ADDR and MASTER_PORT are not set; "
            "export them in the job script, e.g. MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" "
            "| head -n 1) and MASTER_PORT=29500 (docs/slurm/README.md)")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"MASTER_PORT={port!r} is not a port number")
    return addr, port


# ---------------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """The running process group (or the single process): launch, device, backend, timeout."""

    launch: Launch
    device: torch.device
    backend: str | None = None  # nccl, gloo, or None for one process
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a ticket's ``config`` records about the run's processes."""
        return {"world_size": self.world_size, "launcher": self.launch.launcher, "backend": self.backend,
                "hostname": socket.gethostname()}


_runtime: Runtime | None = None
_ran_distributed = False  # a process group of several ranks was set up in this process


def init(launch: Launch, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Runtime:
    """Join the other ranks (NCCL on CUDA, gloo on the CPU); a no-op for one process.

    Every collective, the first connection included, fails after ``timeout_s`` seconds instead of
    waiting forever for a rank that died or never started.
    """
    global _runtime, _ran_distributed
    if not timeout_s > 0:
        raise UsageError(f"--dist-timeout must be a positive number of seconds, got {timeout_s}")
    if not launch.distributed:
        _runtime = Runtime(launch, device, None, timeout_s)
        return _runtime
    addr, port = _master_address(launch, os.environ)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and every "cuda" tensor of this rank go to its own GPU
    try:
        # env:// reads MASTER_ADDR/MASTER_PORT; under torchrun it joins the store torchrun's agent hosts.
        extra = {}
        if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            extra["device_id"] = device  # binds NCCL to this rank's GPU and connects eagerly (torch >= 2.3)
        dist.init_process_group(backend, init_method="env://", rank=launch.rank,
                                world_size=launch.world_size, timeout=_dt.timedelta(seconds=timeout_s), **extra)
        # NCCL connects lazily; one barrier proves that every rank is there, within the timeout.
        _barrier(backend, device)
    except (RuntimeError, ValueError) as e:
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
        raise DistributedError(
            f"could not reach the other ranks within {timeout_s:g} s (rank {launch.rank} of {launch.world_size}, "
            f"{launcher_name(launch)}, MASTER_ADDR={addr} MASTER_PORT={port}: {_first_line(e)}); check that every "
            "rank was started with the same MASTER_ADDR and MASTER_PORT, or raise --dist-timeout") from None
    _ran_distributed = True
    _runtime = Runtime(launch, device, backend, timeout_s)
    return _runtime


def shutdown() -> None:
    """Leave the process group (if any); safe to call more than once and after a failure."""
    global _runtime
    _runtime = None
    if dist.is_available() and dist.is_initialized():
        # DDP's reducer holds the group too: free unreachable wrappers first, so that the group is
        # really destroyed here and not by the interpreter's exit.
        gc.collect()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; after a multi-process run, without the interpreter's clean-up.

    A process group that something still references (a DDP wrapper kept alive by an exception's
    traceback) is otherwise destroyed during interpreter shutdown, where gloo's and NCCL's
    threads can abort the process ("terminate called without an active exception") and replace
    the exit status with SIGABRT. Every file elth writes is complete (atomic, flushed) by then.
    """
    if _ran_distributed:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


@contextlib.contextmanager
def session(launch: Launch, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Runtime]:
    """:func:`init` for the duration of a command, :func:`shutdown` after it, whatever happens."""
    try:
        yield init(launch, device, timeout_s)
    finally:
        shutdown()


def describe() -> dict[str, Any]:
    """The process part of a run's recorded configuration (one process when nothing was initialised)."""
    rt = _runtime
    if rt is None:
        return {"world_size": 1, "launcher": "single", "backend": None, "hostname": socket.gethostname()}
    return rt.describe()


def active() -> bool:
    """True while a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reporting_rank() -> int:
    """This process's rank for error reporting, also before (or without) a process group."""
    if _runtime is not None:
        return _runtime.rank
    try:
        return detect_launch().rank
    except ElthError:
        return 0


def ranks() -> tuple[int, int]:
    """This process's (rank, world size): the running process group's, or (0, 1) without one."""
    if not active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _barrier(backend: str | None, device: torch.device) -> None:
    if backend == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if active():
        rt = _runtime
        _barrier(dist.get_backend(), rt.device if rt is not None else torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Rank 0 decides, everyone follows
# ---------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    value: Any = None
    error: str | None = None
    exit_code: int = 1


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; tensors come back on the CPU device they left)."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises its error.

    This is how a decision is made once: whether a checkpoint exists and fits the run, whether an
    IMP round is done, which weights a round prunes, writing a file. A failure on rank 0 becomes
    the same error (message and exit status) on every rank, so all of them stop together.
    """
    if not active():
        return fn()
    if dist.get_rank() == 0:
        try:
            value = fn()
        except ElthError as e:
            broadcast_object(_Outcome(error=str(e), exit_code=e.exit_code))
            raise
        except BaseException as e:
            broadcast_object(_Outcome(error=f"rank 0 failed: {type(e).__name__}: {_first_line(e)}"))
            raise
        broadcast_object(_Outcome(value=value))
        return value
    outcome = broadcast_object(None)
    if outcome.error is not None:
        raise ElthError(outcome.error, outcome.exit_code)
    return outcome.value


@contextlib.contextmanager
def held_on_main(lock: WriterLock) -> Iterator[None]:
    """Rank 0 holds ``lock`` (one writer per run) for the block; when it cannot, every rank fails alike."""
    run_on_main(lock.acquire)
    try:
        yield
    finally:
        if not active() or dist.get_rank() == 0:
            lock.release()


@contextlib.contextmanager
def agree_on_errors() -> Iterator[None]:
    """Make local set-up work fail on every rank when it fails on any.

    The block must not use collectives itself. At its end the ranks exchange their failures; if
    there is one, every rank raises rank 0's error, or the first failing rank's, named.
    """
    if not active():
        yield
        return
    failure: tuple[str, int] | None = None
    own: BaseException | None = None
    try:
        yield
    except ElthError as e:
        failure, own = (str(e), e.exit_code), e
    except Exception as e:  # a bug on this rank: report it everywhere, keep its traceback here
        failure, own = (f"{type(e).__name__}: {_first_line(e)}", 1), e
    failures: list[tuple[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    bad = [(r, f) for r, f in enumerate(failures) if f is not None]
    if not bad:
        return
    if own is not None and (dist.get_rank() == 0 or not isinstance(own, ElthError)):
        raise own
    r, (message, code) = bad[0]
    raise ElthError(message if r == 0 else f"rank {r}: {message}", code)


# ---------------------------------------------------------------------------------------------
# Collectives of the training loop
# ---------------------------------------------------------------------------------------------


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op for one process); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree_on_stop(signum: int | None, device: torch.device) -> int:
    """The largest stop signal number any rank has received (0: none), the same on every rank.

    A MAX all-reduce of one int32 on the training device, then a read on the host.
    """
    if not active():
        return int(signum or 0)
    t = torch.tensor([int(signum or 0)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: one broadcast per dtype.

    DDP is told not to broadcast buffers before every forward (a collective per step). Running
    statistics do not affect training-mode forwards, so it is enough to make them agree where
    they are read: before evaluation, snapshots, checkpoints and the final state.
    """
    if not active():
        return
    groups: dict[torch.dtype, list[Tensor]] = {}
    for b in model.buffers():
        groups.setdefault(b.dtype, []).append(b)
    for buffers in groups.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            n = b.numel()
            b.copy_(flat[offset:offset + n].view(b.shape))
            offset += n


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` (which may be compiled: compile first, then wrap).

    Gradients are averaged across ranks in buckets during backward (NCCL: on a side stream, no
    host sync). Buffers are not broadcast per forward (see :func:`sync_buffers`).
    """
    from torch.nn.parallel import DistributedDataParallel

    # torch >= 2.15 renamed broadcast_buffers (per forward) to forward_sync_buffers.
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{no_sync: False})


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalise over the global batch (``--sync-bn``); CUDA only."""
    if device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA GPUs: SyncBatchNorm does not run on the CPU (gloo); drop --sync-bn")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def is_comm_failure(exc: BaseException) -> bool:
    """Whether an exception escaping a distributed run comes from the communication layer."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    try:  # the process group is gone by the time the error reaches the CLI: ask the launcher
        if not detect_launch().distributed:
            return False
    except ElthError:
        return False
    text = str(exc)
    return any(s in text for s in ("gloo", "NCCL", "nccl", "Connection closed", "Connection reset", "Timed out",
                                   "timed out", "c10d", "ProcessGroup"))


def comm_failure_message(exc: BaseException) -> str:
    return (f"lost contact with the other ranks ({_first_line(exc)}); another rank probably failed or was "
            "killed: see its messages")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # c10d prefixes messages with a source location, and gloo appends advice with an emoji: drop both.
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|py):\d+\]\s*", "", line)
    return line.split(" This is typically caused by")[0]


# ---------------------------------------------------------------------------------------------
# Debugging aid: what each rank holds
# ---------------------------------------------------------------------------------------------


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a dict of tensors (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def record_digests(name: str, rank_: int, **tensor_dicts: Mapping[str, Tensor]) -> None:
    """With ELTH_DEBUG_DIGESTS=DIR, write DIR/<name>.rank<r>.json: sha256 of each dict this rank holds.

    Used by the tests (and for debugging) to check that every rank trains with the same masks and
    ends with the same weights; without the variable it does nothing.
    """
    folder = os.environ.get(DIGEST_ENV)
    if not folder:
        return
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    doc = {"name": name, "rank": rank_, **{k: tensors_digest(v) for k, v in tensor_dicts.items()}}
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{slug}.rank{rank_}.json").write_text(json.dumps(doc, sort_keys=True) + "\n")
