"""Training and evaluating tickets: recipes, LR schedules, the step, checkpoints and stop signals.

One module holds everything ``elth train`` / ``elth eval`` and iterative pruning (``find``) share:

* :class:`TrainConfig` and :func:`default_recipe`: the paper's recipes, every value resolved;
* :func:`parse_steps` and :func:`lr_at`: step syntax (``1000it``, ``2ep``) and the LR schedule;
* :class:`TrainStep`: the training step itself, small and free of host-device syncs, so the
  benchmark times exactly what training runs;
* :func:`train_state` / :func:`train_ticket`: the loop, with masks re-applied after every
  optimizer step, per-epoch checkpoints, SIGTERM/SIGUSR1/SIGINT handling and snapshots;
* :func:`evaluate`: top-1 (top-5) accuracy and mean loss with BN in eval mode;
* :func:`run_config`: the resolved configuration and the software and hardware it ran on.

With several processes (``torchrun``, ``srun``; see :mod:`elth_cli.distributed`) the same loop
runs data-parallel: DistributedDataParallel around the (compiled) model, each rank on its shard
of every global batch, metrics summed over ranks, stop signals agreed on, and rank 0 alone
writing checkpoints and logs. With one process none of that machinery is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from elth_cli import __version__, archs, distributed
from elth_cli.archs import ArchSpec
from elth_cli.data import DataBundle, DatasetInfo, check_compatible
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import write_bytes_atomic
from elth_cli.steps import normalise_steps, parse_step_list, parse_steps
from elth_cli.ticket import Ticket, apply_masks, now_utc, read_header

# ---------------------------------------------------------------------------------------------
# Exit statuses of a stopped run (documented in docs/training.md)
# ---------------------------------------------------------------------------------------------

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1, checkpoint written, resumable
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped by Ctrl-C (checkpoint written when there is a path)

SCHEDULES = ("step", "cosine")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
RECIPES = ("cifar", "imagenet", "digits")
CHECKPOINT_FORMAT = "elth.checkpoint"
CHECKPOINT_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Steps and schedules
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Configuration and recipes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Every value a training run depends on, resolved (recorded as the trained ticket's hparams).

    Step-valued fields (``milestones``, ``warmup``) keep their step syntax (``80ep``, ``1000it``)
    because an epoch's length depends on the data set and batch size; :func:`parse_steps` turns
    them into iterations once ``steps_per_epoch`` is known. ``eval_every`` is in epochs (0: only
    after the last epoch).
    """

    dataset: str
    recipe: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    milestones: tuple[str, ...]
    gamma: float
    warmup: str
    seed: int = 0
    augment: bool = True
    eval_every: int = 1
    eval_batch_size: int = 1000
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA, several processes); ignored with one

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Defaults of the fields that have one: what a run recorded before a field existed meant."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied and validated (step values normalised)."""
        if "milestones" in changes and isinstance(changes["milestones"], str):
            changes["milestones"] = parse_step_list(changes["milestones"])
        if "warmup" in changes:
            changes["warmup"] = normalise_steps(changes["warmup"])
        cfg = dataclasses.replace(self, **changes)
        validate_config(cfg)
        return cfg

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch

    def resolved(self, steps_per_epoch: int, start_step: int = 0, world_size: int = 1) -> dict[str, Any]:
        """The config plus everything derived from the epoch length: what a trained ticket records."""
        d = self.as_dict()
        d.update(
            optimizer="sgd",
            nesterov=False,
            steps_per_epoch=steps_per_epoch,
            total_steps=self.total_steps(steps_per_epoch),
            start_step=start_step,
            warmup_steps=parse_steps(self.warmup, steps_per_epoch),
            milestone_steps=[parse_steps(m, steps_per_epoch) for m in self.milestones],
            world_size=world_size,
        )
        return d


def validate_config(cfg: TrainConfig) -> None:
    """Raise UsageError naming the first value out of range."""
    checks = [
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.eval_batch_size >= 1, f"eval batch size must be at least 1, got {cfg.eval_batch_size}"),
        (math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}"),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, f"--weight-decay must be 0 or more, got {cfg.weight_decay}"),
        (math.isfinite(cfg.gamma) and cfg.gamma > 0, f"--gamma must be a positive number, got {cfg.gamma}"),
        (cfg.schedule in SCHEDULES, f"unknown --schedule {cfg.schedule!r}; choose step or cosine"),
        (cfg.recipe in RECIPES, f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(RECIPES)}"),
        (cfg.eval_every >= 0, f"--eval-every must be 0 (only at the end) or more epochs, got {cfg.eval_every}"),
        (cfg.precision in ("bf16", "fp16", "fp32"), f"precision must be resolved to bf16, fp16 or fp32, got {cfg.precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    for s in (*cfg.milestones, cfg.warmup):
        parse_steps(s, 1)


def default_recipe(spec: ArchSpec, dataset_info: DatasetInfo) -> TrainConfig:
    """The paper's recipe for ``spec``'s family (open_lth defaults), or the short digits recipe.

    CIFAR ResNet / VGG: SGD 0.9, lr 0.1, wd 1e-4, batch 128, 160 epochs, x0.1 at 80 and 120 epochs.
    ImageNet ResNet: batch 1024, lr 0.4, 90 epochs, x0.1 at 30/60/80, 5 warm-up epochs, wd 1e-4.
    digits (any family): 30 epochs, batch 64, lr 0.05, 2 warm-up epochs, cosine, wd 5e-4; deep
    ResNets diverge on digits without the warm-up.
    """
    name = dataset_info.name
    eval_batch = 1000 if dataset_info.in_memory else 250
    if name == "digits":
        return TrainConfig(dataset=name, recipe="digits", epochs=30, batch_size=64, lr=0.05, momentum=0.9,
                           weight_decay=5e-4, schedule="cosine", milestones=(), gamma=0.1, warmup="2ep",
                           eval_batch_size=eval_batch)
    if archs.family_of(spec).recipe == "imagenet":
        return TrainConfig(dataset=name, recipe="imagenet", epochs=90, batch_size=1024, lr=0.4, momentum=0.9,
                           weight_decay=1e-4, schedule="step", milestones=("30ep", "60ep", "80ep"), gamma=0.1,
                           warmup="5ep", eval_batch_size=eval_batch)
    return TrainConfig(dataset=name, recipe="cifar", epochs=160, batch_size=128, lr=0.1, momentum=0.9,
                       weight_decay=1e-4, schedule="step", milestones=("80ep", "120ep"), gamma=0.1,
                       warmup="0it", eval_batch_size=eval_batch)


def config_from_options(
    spec: ArchSpec,
    dataset_info: DatasetInfo,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    milestones: str | Iterable[str] | None = None,
    gamma: float | None = None,
    warmup: str | int | None = None,
    schedule: str | None = None,
    seed: int | None = None,
    augment: bool | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    deterministic: bool = False,
    sync_bn: bool = False,
) -> TrainConfig:
    """The default recipe with every option that is not None applied (what ``elth train`` resolves).

    ``--milestones`` only mean something to the step schedule; asking for ``--schedule cosine``
    drops the recipe's milestones.
    """
    base = default_recipe(spec, dataset_info)
    if schedule is not None:
        schedule = schedule.strip().lower()
        if schedule not in SCHEDULES:
            raise UsageError(f"unknown --schedule {schedule!r}; choose step or cosine")
    kind = schedule or base.schedule
    if milestones is not None and kind == "cosine":
        raise UsageError("--milestones only apply to --schedule step; drop them or pass --schedule step")
    changes: dict[str, Any] = {"device": device, "precision": precision, "compile": compile,
                               "deterministic": deterministic, "sync_bn": sync_bn}
    if schedule == "cosine":
        changes["milestones"] = ()
    if milestones is not None:
        changes["milestones"] = (parse_step_list(milestones) if isinstance(milestones, str)
                                 else tuple(normalise_steps(m) for m in milestones))
    for name, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("momentum", momentum),
                        ("weight_decay", weight_decay), ("gamma", gamma), ("warmup", warmup),
                        ("schedule", schedule), ("seed", seed), ("augment", augment),
                        ("eval_every", eval_every), ("eval_batch_size", eval_batch_size)):
        if value is not None:
            changes[name] = value
    return base.replace(**changes)


@dataclass(frozen=True)
class Schedule:
    """The LR schedule of a config with every step resolved to iterations (cheap to call per step)."""

    base: float
    kind: str
    total: int
    warmup: int
    milestones: tuple[int, ...]
    gamma: float

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int) -> "Schedule":
        return cls(cfg.lr, cfg.schedule, cfg.total_steps(steps_per_epoch), parse_steps(cfg.warmup, steps_per_epoch),
                   tuple(sorted(parse_steps(m, steps_per_epoch) for m in cfg.milestones)), cfg.gamma)

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            if self.warmup and step < self.warmup:
                return self.base * (step + 1) / self.warmup
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return self.base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        passed = sum(1 for m in self.milestones if step >= m)
        return self.base * factor * self.gamma**passed


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate of iteration ``step`` (0-based).

    step: ``lr * min(1, (step+1)/warmup) * gamma ** (milestones passed)`` (open_lth's LambdaLR, except
    that warm-up starts at lr/warmup rather than 0, so the first step is not wasted);
    cosine: linear warm-up, then cosine from ``lr`` to 0 over the remaining steps.
    """
    return Schedule.of(cfg, steps_per_epoch)(step)


# ---------------------------------------------------------------------------------------------
# Devices and precision
# ---------------------------------------------------------------------------------------------


def resolve_device(text: str = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; an unavailable device is an error."""
    s = (text or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if m is None:
        raise UsageError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(f"device {text} asked for but CUDA is not available on this machine; use --device cpu or auto")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"device {text} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(s)


def resolve_precision(text: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, else fp32; refuse what the device cannot do."""
    s = (text or "auto").strip().lower()
    if s not in PRECISIONS:
        raise UsageError(f"unknown precision {text!r}; choose {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if s == "auto":
        return "bf16" if cuda and _bf16_ok(device) else "fp32"
    if s == "fp16" and not cuda:
        raise UsageError("fp16 training needs a CUDA GPU (it relies on a CUDA grad scaler); use --precision fp32 or bf16 on the CPU")
    if s == "bf16" and cuda and not _bf16_ok(device):
        raise UsageError(f"{torch.cuda.get_device_name(device)} does not support bf16; use --precision fp16 or fp32")
    return s


def _bf16_ok(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, recorded in the metrics."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """The software and hardware a run used: versions, device, processes, host (JSON-ready)."""
    cudnn = None
    with contextlib.suppress(Exception):  # a CPU-only torch has no cuDNN to ask
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "elth": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built for (None: a CPU-only build)
        "cudnn": cudnn,
        "device": device_name(device),
        "platform": platform.platform(),
        **distributed.describe(),  # world_size, launcher, backend, hostname (rank 0's)
    }


def run_config(command: str, hparams: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A ticket's ``config`` metadata: the command, every resolved hyperparameter, the environment."""
    return {"command": command, "hparams": dict(hparams), "environment": environment(device)}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_deterministic(enabled: bool, device: torch.device) -> None:
    """``--deterministic``: deterministic kernels (slower); otherwise let cuDNN pick the fastest ones."""
    if enabled:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to its device; NHWC (channels_last) on CUDA, where cuDNN's fast kernels want it."""
    if device.type == "cuda":
        return model.to(device=device, memory_format=torch.channels_last)
    return model.to(device)


def training_module(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """What the step calls: the model itself, or its compiled form with ``--compile``.

    The caller wraps it in DDP when there are several processes (compile first, then wrap). The
    compiled module shares the model's parameters, so masks and checkpoints act on ``model``.
    """
    if cfg.compile:
        # Static shapes: the epoch's last, smaller batch gets a graph of its own instead of turning
        # the main graph dynamic (slower kernels); it compiles once, as warm-up.
        return torch.compile(model, dynamic=False)
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum, weight decay on every parameter (BN too, as open_lth); fused on CUDA."""
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)
    params = list(model.parameters())
    if device.type == "cuda":
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # an older torch without fused SGD
            pass
    return torch.optim.SGD(params, foreach=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# Masks and the training step
# ---------------------------------------------------------------------------------------------


class MaskSet:
    """The masked parameters of a model and their masks as float tensors in the parameter's dtype and layout."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [k for k in masks if k not in params]
        if missing:
            raise UsageError(f"mask {missing[0]!r} names no parameter of the model; is it a mask for another architecture?")
        # All-ones masks (a dense network, layers left unpruned) would multiply by 1: leave them out.
        self.keys = [k for k in masks if not bool(masks[k].all())]
        self.params = [params[k] for k in self.keys]
        # empty_like keeps channels_last strides, so the foreach product runs over matching layouts.
        self.values = [torch.empty_like(p).copy_(masks[k].to(p.device)) for k, p in zip(self.keys, self.params)]

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight: one fused multi-tensor kernel (no hooks: they break under compile)."""
        if self.params:
            torch._foreach_mul_(self.params, self.values)

    @torch.no_grad()
    def clean(self) -> None:
        """Make pruned weights +0.0 (a product leaves -0.0 behind negative weights): the ticket's convention."""
        for p, m in zip(self.params, self.values):
            p.copy_(torch.where(m.bool(), p, torch.zeros((), dtype=p.dtype, device=p.device)))


class TrainStep:
    """One optimizer step, with no host-device synchronisation.

    Loss sum and correct count accumulate in device tensors that :meth:`read_stats` reads once per
    epoch. The LR is a host float written into the param groups. This is exactly what the
    benchmark times.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet,
                 device: torch.device, precision: str, scaler: torch.amp.GradScaler | None = None) -> None:
        self.module = module
        self.optimizer = optimizer
        self.masks = masks
        self.device = device
        self.precision = precision
        self.scaler = scaler
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0  # examples in the current stats; a host int (batch sizes are known on the host)

    def reset_stats(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.precision):
            out = self.module(x)
            loss = F.cross_entropy(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            # With fused SGD the scaler hands its inf check to the optimizer kernel: still no sync.
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.masks.apply()
        n = y.shape[0]
        with torch.no_grad():
            self.loss_sum.add_(loss.detach(), alpha=n)  # one kernel, accumulated in float64
            self.correct.add_((out.detach().argmax(1) == y).sum())
        self.seen += n

    def read_stats(self) -> tuple[float, float]:
        """(mean loss, accuracy) of the examples since the last reset: one host-device sync."""
        if self.seen == 0:
            return float("nan"), float("nan")
        both = torch.stack([self.loss_sum, self.correct.double()]).tolist()
        return both[0] / self.seen, both[1] / self.seen


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A grad scaler for fp16 only (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, bundle: DataBundle, split: str = "test", batch_size: int = 1000,
             precision: str = "fp32", rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Top-1 accuracy (top-5 with more than 10 classes) and mean loss of ``split``, BN in eval mode.

    ``model`` must be on ``bundle.device``; its train/eval mode is restored afterwards. Results are
    read from the device once, at the end. With ``world_size`` > 1 each rank evaluates its shard and
    the sums are all-reduced, so every rank returns the metrics of the whole split.
    """
    was_training = model.training
    model.eval()
    device = bundle.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = bundle.info.num_classes > 10
    n = 0
    try:
        for x, y in bundle.eval_batches(batch_size, split, rank=rank, world_size=world_size):
            with autocast(device, precision):
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            if top5:
                correct5 += (out.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            n += y.shape[0]
    finally:
        model.train(was_training)
    sums = torch.stack([loss_sum, correct.double(), correct5.double(),
                        torch.tensor(float(n), dtype=torch.float64, device=device)])
    if world_size > 1:
        distributed.all_reduce_sum_(sums)
    values = sums.tolist()
    n = int(values[3])
    result: dict[str, Any] = {
        "split": split,
        "examples": n,
        "loss": values[0] / n if n else float("nan"),
        "accuracy": values[1] / n if n else float("nan"),
    }
    if top5:
        result["top5"] = values[2] / n if n else float("nan")
    return result


# ---------------------------------------------------------------------------------------------
# Stop signals
# ---------------------------------------------------------------------------------------------


class StopFlag:
    """Set by a signal handler (or by hand); the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum


STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None), signal.SIGINT)
                     if s is not None)


@contextlib.contextmanager
def stop_signals(flag: StopFlag, repeat_grace_s: float = 0.0) -> Iterator[StopFlag]:
    """Route SIGTERM, SIGUSR1 and SIGINT to ``flag`` while the block runs; restore the old handlers after.

    A second Ctrl-C while the first is being handled aborts at once (KeyboardInterrupt), unless it
    comes within ``repeat_grace_s`` seconds of the first: under torchrun one Ctrl-C reaches a
    worker twice (from the terminal and forwarded by torchrun). Handlers can only be installed
    from the main thread; elsewhere the flag is left to the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    first = [0.0]

    def handler(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            if time.monotonic() - first[0] >= repeat_grace_s:
                raise KeyboardInterrupt
            return
        first[0] = time.monotonic()
        flag.request(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class TrainingStopped(ElthError):
    """A run stopped on request; ``exit_code`` is 75 (resumable) or 130 (Ctrl-C)."""

    def __init__(self, message: str, exit_code: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message, exit_code)
        self.step = step
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------
# Checkpoints: safetensors, tensors for state, JSON metadata for the rest (no pickle)
# ---------------------------------------------------------------------------------------------


def checkpoint_path_for(output: str | os.PathLike[str]) -> Path:
    """The default checkpoint of an output ticket: ``OUT.ckpt`` beside it."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A CPU, contiguous copy of a model's state dict (what tickets and snapshots hold)."""
    return {k: _cpu(v) for k, v in model.state_dict().items()}


def state_fingerprint(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> str:
    """sha256 over the starting weights and masks: a checkpoint only resumes the run it came from."""
    tensors = {f"s/{k}": _cpu(v) for k, v in state.items()}
    tensors.update({f"m/{k}": _cpu(v) for k, v in masks.items()})
    return hashlib.sha256(st_save(tensors)).hexdigest()


@dataclass
class RunState:
    """Everything a checkpoint restores besides the model and optimizer tensors."""

    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_test_acc: float | None = None
    wall_seconds: float = 0.0  # summed over every segment of a resumed run
    train_seconds: float = 0.0  # training steps only (no eval, no first step of a segment)
    train_images: int = 0  # images behind train_seconds
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)


def save_checkpoint(path: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, step_fn: TrainStep, run: RunState,
                    stats: tuple[Tensor, Tensor, int] | None = None) -> None:
    """Write a resumable checkpoint atomically (temporary file, then rename).

    ``stats`` (loss sum, correct count, examples) replace the step's own running statistics: with
    several processes, their sums over the ranks, written by rank 0.
    """
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in cpu_state(model).items()}
    opt = optimizer.state_dict()
    for idx, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{idx}/{name}"] = _cpu(value)
    tensors["rng/cpu"] = torch.get_rng_state()
    if stats is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        # Every GPU's generator; not with several processes, where asking would create a context on
        # every GPU from every rank (training draws nothing from them anyway).
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.cpu()
    loss_sum, correct, seen = stats if stats is not None else (step_fn.loss_sum, step_fn.correct, step_fn.seen)
    tensors["stats/loss_sum"] = _cpu(loss_sum).reshape(1)
    tensors["stats/correct"] = _cpu(correct).reshape(1)
    for s, state in run.snapshots.items():
        for k, v in state.items():
            tensors[f"snap/{s}/{k}"] = v
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "identity": json.dumps(identity, sort_keys=True),
        "step": str(run.step),
        "seen": str(seen),
        "history": json.dumps(run.history),
        "best_test_acc": json.dumps(run.best_test_acc),
        "wall_seconds": repr(run.wall_seconds),
        "train_seconds": repr(run.train_seconds),
        "train_images": str(run.train_images),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps({str(i): {k: v for k, v in e.items() if not isinstance(v, Tensor)}
                                     for i, e in opt["state"].items()}),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    write_bytes_atomic(path, st_save(tensors, metadata=meta))


@dataclass
class Checkpoint:
    """A checkpoint read back: its metadata and tensors, not yet applied."""

    path: Path
    meta: dict[str, str]
    tensors: dict[str, Tensor]

    @property
    def identity(self) -> dict[str, Any]:
        return json.loads(self.meta["identity"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint file; a damaged or foreign file is an ElthError saying what to do."""
    data = path.read_bytes()
    try:
        meta = read_header(data, str(path))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ElthError(f"{path} is not an elth training checkpoint")
        if int(meta.get("format_version", "0")) > CHECKPOINT_VERSION:
            raise ElthError(f"{path} was written by a newer elth; upgrade elth or delete it")
        tensors = st_load(data)
        json.loads(meta["identity"])
    except ElthError as e:
        raise ElthError(f"cannot resume from {path}: {e}; delete it (or pass --restart) to start over") from None
    except Exception as e:  # safetensors/JSON errors of a damaged file
        raise ElthError(f"cannot resume from {path} ({type(e).__name__}: {e}); delete it (or pass --restart) "
                        "to start over") from None
    return Checkpoint(path, meta, tensors)


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``name saved -> wanted`` for every field of a run's identity that differs."""
    out = []
    # A field added to TrainConfig after a run started is absent from its checkpoint: it had the default.
    saved_cfg = {**TrainConfig.field_defaults(), **saved.get("config", {})}
    wanted_cfg = {**TrainConfig.field_defaults(), **wanted.get("config", {})}
    for key in sorted(set(saved_cfg) | set(wanted_cfg)):
        if saved_cfg.get(key) != wanted_cfg.get(key):
            out.append(f"{key} {saved_cfg.get(key)!r} -> {wanted_cfg.get(key)!r}")
    for key in sorted((set(saved) | set(wanted)) - {"config"}):
        if saved.get(key) == wanted.get(key):
            continue
        if key == "source":
            out.append("the ticket (its masks or init weights)")
        else:
            out.append(f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}")
    return out


def restore_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None, step_fn: TrainStep, load_stats: bool = True) -> RunState:
    """Load a checkpoint's state into the model, optimizer, scaler, RNGs and step statistics.

    ``load_stats=False`` (every rank but 0 of a multi-process run) starts the epoch's running
    statistics at zero: the checkpoint holds their sums over all ranks, which rank 0 carries.
    """
    t, meta = ckpt.tensors, ckpt.meta
    model.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")}, strict=True)
    params = optimizer.state_dict()["param_groups"]
    scalars = json.loads(meta["optim_scalars"])
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in scalars.items()}
    for name, value in t.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    saved_groups = json.loads(meta["param_groups"])
    # The saved groups carry the hyperparameters; keep the live groups' parameter ids.
    groups = [{**g, "params": live["params"]} for g, live in zip(saved_groups, params)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scaler_state = json.loads(meta["scaler"])
    if scaler is not None and scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(t["rng/cpu"])
    cuda_states = [t[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in t]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if load_stats:
        step_fn.loss_sum.copy_(t["stats/loss_sum"].reshape(()))
        step_fn.correct.copy_(t["stats/correct"].reshape(()))
        step_fn.seen = int(meta["seen"])
    else:
        step_fn.reset_stats()
    snapshots: dict[int, dict[str, Tensor]] = {}
    for name, value in t.items():
        if name.startswith("snap/"):
            _, s, key = name.split("/", 2)
            snapshots.setdefault(int(s), {})[key] = value
    return RunState(
        step=int(meta["step"]),
        history=json.loads(meta["history"]),
        best_test_acc=json.loads(meta["best_test_acc"]),
        wall_seconds=float(meta["wall_seconds"]),
        train_seconds=float(meta["train_seconds"]),
        train_images=int(meta["train_images"]),
        snapshots=snapshots,
    )


def remove_checkpoint(path: str | os.PathLike[str] | None) -> None:
    """Delete a finished run's checkpoint (call it after the output has been written)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class Reporter(Protocol):
    """What the loop tells about its progress (report.TrainProgress implements it)."""

    def start(self, title: str, step: int, total: int, steps_per_epoch: int, batch_size: int,
              resumed: bool) -> None: ...

    def step(self, step: int, live: Callable[[], tuple[float, float]]) -> None: ...

    def epoch(self, record: dict[str, Any], epochs: int, total: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class TrainResult:
    """What :func:`train_state` returns: final CPU state (pruned weights +0.0), metrics, snapshots, history."""

    state: dict[str, Tensor]
    metrics: dict[str, Any]
    snapshots: dict[int, dict[str, Tensor]]
    history: list[dict[str, Any]]
    resumed_from: int | None = None


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_jsonl(path: Path | None, history: list[dict[str, Any]], append: dict[str, Any] | None = None) -> None:
    if path is None:
        return
    if append is None:  # rewrite from the (authoritative) history, e.g. on resume
        with open(path, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in history)
        return
    with open(path, "a") as f:
        f.write(json.dumps(append, sort_keys=True) + "\n")


def train_state(
    model_or_state: nn.Module | Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    bundle: DataBundle,
    cfg: TrainConfig,
    start_step: int = 0,
    *,
    arch: str | ArchSpec | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: str = "auto",
    snapshot_steps: Iterable[int] = (),
    log: Reporter | None = None,
    jsonl_path: str | os.PathLike[str] | None = None,
    stop: StopFlag | None = None,
    handle_signals: bool = True,
    stop_at_step: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    title: str = "training",
) -> TrainResult:
    """Train a masked network from ``start_step`` to the recipe's last step; return its final state.

    ``model_or_state`` is a model (moved to ``cfg.device`` in place) or a state dict (then ``arch``
    names the architecture). Pruned weights are zeroed after every optimizer step. With a
    ``checkpoint_path``, a checkpoint is written after every epoch and when a stop is requested
    (SIGTERM/SIGUSR1/SIGINT while ``handle_signals``, ``stop.request()``, or reaching
    ``stop_at_step``); the run then raises :class:`TrainingStopped`. ``resume``: ``auto`` continues
    from an existing checkpoint, ``require`` insists on one, ``never`` starts over. The state after
    ``s`` steps is kept for every ``s`` in ``snapshot_steps`` (IMP's rewind point) and returned in
    ``TrainResult.snapshots``. The checkpoint is left in place: remove it (:func:`remove_checkpoint`)
    once the result is saved.

    With ``world_size`` > 1 (a process group of that size must be running, see
    :mod:`elth_cli.distributed`) every rank calls this with the same arguments: the model trains
    under DistributedDataParallel on the rank's shard of each global batch, rank 0 alone reads and
    writes the checkpoint and the JSON lines and reports progress, a stop requested on any rank
    stops every rank at the same step (agreed every ``distributed.STOP_CHECK_EVERY`` steps and at
    epoch ends), and every rank returns the same state and metrics (timings aside).
    """
    validate_config(cfg)
    distributed.require(rank, world_size)
    if not _same_device(bundle.device, torch.device(cfg.device)):
        raise UsageError(f"the data is on {bundle.device} but the config trains on {cfg.device}; "
                         f"load it with device={cfg.device}")
    device = bundle.device  # cfg.device may say "cuda" where the data (and this rank) are on cuda:LOCAL_RANK
    if resume not in ("auto", "require", "never"):
        raise UsageError(f"resume must be auto, require or never, not {resume!r}")
    if isinstance(model_or_state, nn.Module):
        model = model_or_state
    else:
        if arch is None:
            raise UsageError("training from a state dict needs arch= (the architecture name)")
        spec = archs.resolve_arch(arch) if isinstance(arch, str) else arch
        model = archs.build_model(spec, bundle.info.input_shape, bundle.info.num_classes)
        model.load_state_dict(dict(model_or_state), strict=True)

    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    total = cfg.total_steps(spe)
    if not 0 <= start_step < total:
        raise UsageError(f"start step {start_step} (the ticket's rewind step) is not before the recipe's last step "
                         f"{total} ({cfg.epochs} epochs x {spe} steps); train for more --epochs")
    schedule = Schedule.of(cfg, spe)
    snapshot_steps = {int(s) for s in snapshot_steps}
    bad = [s for s in snapshot_steps if not start_step <= s <= total]
    if bad:
        raise UsageError(f"snapshot step {min(bad)} is outside the run's steps {start_step}..{total}")

    main = rank == 0
    identity = {
        "config": cfg.as_dict(),
        "start_step": start_step,
        "steps_per_epoch": spe,
        "world_size": world_size,
        "source": state_fingerprint(model.state_dict(), masks),
    }
    distributed.record_digests(f"{title} start", rank, masks=masks, state=model.state_dict())
    set_deterministic(cfg.deterministic, device)
    model = prepare_model(model, device)
    if cfg.sync_bn and world_size > 1:
        model = distributed.convert_sync_bn(model, device)
    mask_set = MaskSet(model, masks)
    mask_set.apply()
    module = training_module(model, cfg)
    if world_size > 1:
        module = distributed.wrap_ddp(module, device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = make_scaler(cfg.precision, device)
    step_fn = TrainStep(module, optimizer, mask_set, device, cfg.precision, scaler)

    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None
    jsonl = Path(jsonl_path) if jsonl_path is not None and main else None
    run = RunState(step=start_step)
    resumed_from = None
    # Rank 0 reads the checkpoint and checks that it belongs to this run; every rank gets it (or the error).
    ckpt = distributed.run_on_main(lambda: _read_resume(ckpt_path, resume, identity))
    if ckpt is not None:
        run = restore_checkpoint(ckpt, model, optimizer, scaler, step_fn, load_stats=main)
        resumed_from = run.step
    del ckpt
    _write_jsonl(jsonl, run.history)

    flag = stop or StopFlag()
    # One Ctrl-C reaches a torchrun worker twice (terminal and torchrun): only a later one aborts.
    signals = stop_signals(flag, 2.0 if world_size > 1 else 0.0) if handle_signals else contextlib.nullcontext(flag)
    segment_start = time.perf_counter()
    model.train()
    log = log if main else None
    if log is not None:
        log.start(title, run.step, total, spe, cfg.batch_size, resumed_from is not None)
    try:
        with signals:
            _loop(model, bundle, cfg, schedule, step_fn, mask_set, optimizer, scaler, run, total, spe,
                  snapshot_steps, flag, stop_at_step, ckpt_path, identity, jsonl, log, segment_start, rank,
                  world_size)
    finally:
        if log is not None:
            log.close()

    last = run.history[-1]
    metrics: dict[str, Any] = {
        "test_acc": last["test_acc"],
        "best_test_acc": run.best_test_acc,
        "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "epochs": cfg.epochs,
        "start_step": start_step,
        "steps": total - start_step,
        "total_steps": total,
        "wall_time_s": round(run.wall_seconds, 3),
        # All ranks step together: the run's throughput is world_size times one rank's.
        "images_per_s": (round(run.train_images * world_size / run.train_seconds, 1)
                         if run.train_seconds > 0 else None),
        "device": device_name(device),
        "precision": cfg.precision,
    }
    if world_size > 1:
        metrics["world_size"] = world_size
    if "test_top5" in last:
        metrics["test_top5"] = last["test_top5"]
    state = cpu_state(model)
    distributed.record_digests(f"{title} end", rank, masks=masks, state=state)
    return TrainResult(state, metrics, run.snapshots, run.history, resumed_from)


def _read_resume(path: Path | None, resume: str, identity: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint to resume from (None: start over), checked against the run's identity."""
    if path is not None and path.exists() and resume != "never":
        ckpt = read_checkpoint(path)
        diff = config_differences(ckpt.identity, identity)
        if diff:
            raise UsageError(f"checkpoint {path} belongs to a different run (differs in: {'; '.join(diff)}); "
                             "re-run with the original options, or pass --restart to discard it")
        return ckpt
    if resume == "require":
        raise UsageError(f"--resume given but there is no checkpoint {path}; drop --resume to start a new run")
    return None


class _StopCheck:
    """Whether to stop before a step: the local flag for one process, an agreement among several.

    With several processes the ranks all-reduce (MAX) their signal numbers at the segment's first
    step, every ``distributed.STOP_CHECK_EVERY`` steps after it and at every epoch end, so they stop
    at the same step; a stop is therefore noticed within that many steps. One process looks at its
    flag before every step, as before (no collective, no sync).
    """

    def __init__(self, flag: StopFlag, world_size: int, device: torch.device, first_step: int) -> None:
        self.flag, self.world_size, self.device, self.first = flag, world_size, device, first_step
        self.agreed_at: int | None = None
        self.agreed = 0

    def before_step(self, step: int) -> bool:
        if self.world_size == 1:
            return self.flag.requested
        if (step - self.first) % distributed.STOP_CHECK_EVERY:
            return False
        return self._agree(step)

    def at_epoch_end(self, step: int) -> bool:
        return self.flag.requested if self.world_size == 1 else self._agree(step)

    def _agree(self, step: int) -> bool:
        if self.agreed_at != step:  # once per step: the epoch end and the next epoch's start share one
            self.agreed_at, self.agreed = step, distributed.agree_on_stop(self.flag.signum, self.device)
            if self.agreed:
                # Every rank names the same signal (the largest number), so all exit with one status.
                self.flag.request(self.agreed)
        return self.agreed != 0


def _loop(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, schedule: Schedule, step_fn: TrainStep,
          mask_set: MaskSet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
          run: RunState, total: int, spe: int, snapshot_steps: set[int], flag: StopFlag,
          stop_at_step: int | None, ckpt_path: Path | None, identity: dict[str, Any], jsonl: Path | None,
          log: Reporter | None, segment_start: float, rank: int, world_size: int) -> None:
    device = bundle.device
    wall_base = run.wall_seconds
    several = world_size > 1
    stop_check = _StopCheck(flag, world_size, device, run.step)
    # Each rank evaluates eval_batch_size // world_size images at a time (the data needs a multiple).
    eval_batch = max(world_size, cfg.eval_batch_size // world_size * world_size)

    def wall() -> float:
        return wall_base + time.perf_counter() - segment_start

    def epoch_sums() -> Tensor:
        """(loss sum, correct, examples) of the epoch so far, summed over the ranks (float64, on the device)."""
        sums = torch.stack([step_fn.loss_sum, step_fn.correct.double(),
                            torch.tensor(float(step_fn.seen), dtype=torch.float64, device=device)])
        return distributed.all_reduce_sum_(sums)

    def snapshot() -> dict[str, Tensor]:
        distributed.sync_buffers(model)  # rank 0's running statistics, so every rank keeps the same weights
        return cpu_state(model)

    saved_at = -1

    def checkpoint() -> None:
        nonlocal saved_at
        if ckpt_path is not None and saved_at != run.step:
            run.wall_seconds = wall()
            stats = None
            if several:
                sums = epoch_sums()
                stats = (sums[0], sums[1].long(), int(sums[2].item()))
            # Rank 0 writes; the others wait for it, and fail with it if the write fails.
            distributed.run_on_main(lambda: save_checkpoint(ckpt_path, identity, model, optimizer, scaler, step_fn,
                                                            run, stats))
            saved_at = run.step

    def stopped() -> None:
        checkpoint()
        signum = flag.signum if flag.signum is not None else signal.SIGTERM
        name = signal.Signals(signum).name if flag.signum is not None else f"stop_at_step {stop_at_step}"
        code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_STOPPED
        where = f"step {run.step}/{total} (epoch {run.step // spe + 1}/{cfg.epochs})"
        if ckpt_path is None:
            raise TrainingStopped(f"stopped by {name} at {where}; no checkpoint (no checkpoint path given), "
                                  "so the run cannot be resumed", EXIT_INTERRUPTED if code == EXIT_INTERRUPTED else 1,
                                  run.step, None)
        raise TrainingStopped(f"stopped by {name} at {where}; checkpoint {ckpt_path} written; re-run the same "
                              "command to resume", code, run.step, ckpt_path)

    # The first step at each batch shape of a segment (compilation, cuDNN autotuning) is warm-up:
    # left out of images/s, and bracketed by syncs, the only ones inside an epoch.
    warm_shapes: set[tuple[int, ...]] = set()
    while run.step < total:
        epoch, batch = divmod(run.step, spe)
        if batch == 0:
            step_fn.reset_stats()
        epoch_start = mark = time.perf_counter()
        train_time, timed_images = 0.0, 0
        for x, y in bundle.train_batches(cfg.batch_size, epoch, cfg.seed, start_batch=batch, rank=rank,
                                         world_size=world_size, augment=cfg.augment):
            if run.step == stop_at_step or stop_check.before_step(run.step):
                stopped()
            if run.step in snapshot_steps and run.step not in run.snapshots:
                run.snapshots[run.step] = snapshot()
            warmup = tuple(x.shape) not in warm_shapes
            if warmup:
                _sync(device)
                train_time += time.perf_counter() - mark
            step_fn(x, y, schedule(run.step))
            run.step += 1
            if warmup:
                _sync(device)
                warm_shapes.add(tuple(x.shape))
                mark = time.perf_counter()
            else:
                timed_images += y.shape[0]
            if log is not None:
                log.step(run.step, step_fn.read_stats)
        # End of epoch: the one place where results are read back from the device.
        if several:
            loss_sum, correct, seen = epoch_sums().tolist()
            train_loss, train_acc = (loss_sum / seen, correct / seen) if seen else (float("nan"), float("nan"))
            distributed.sync_buffers(model)
        else:
            train_loss, train_acc = step_fn.read_stats()
        train_time += time.perf_counter() - mark
        # The weights are the same on every rank (DDP), so every rank reaches the same verdict.
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            raise ElthError(f"training diverged in epoch {epoch + 1} (weights became NaN or infinite; last lr "
                            f"{schedule(run.step - 1):.4g}); lower --lr or lengthen --warmup")
        done = run.step == total
        if done:
            mask_set.clean()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": run.step,
            "lr": schedule(run.step - 1),
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": None,
            "test_acc": None,
        }
        if done or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            result = evaluate(model, bundle, "test", eval_batch, cfg.precision, rank, world_size)
            record["test_loss"], record["test_acc"] = result["loss"], result["accuracy"]
            if "top5" in result:
                record["test_top5"] = result["top5"]
            if run.best_test_acc is None or result["accuracy"] > run.best_test_acc:
                run.best_test_acc = result["accuracy"]
        images = timed_images * world_size  # every rank trained as many images as this one
        record["images_per_s"] = round(images / train_time, 1) if train_time > 0 and timed_images else None
        record["seconds"] = round(time.perf_counter() - epoch_start, 3)
        run.train_seconds += train_time if timed_images else 0.0
        run.train_images += timed_images
        run.history.append(record)
        if run.step in snapshot_steps and run.step not in run.snapshots:
            run.snapshots[run.step] = snapshot()
        checkpoint()
        _write_jsonl(jsonl, run.history, record)
        if log is not None:
            log.epoch(record, cfg.epochs, total)
        if not done and stop_check.at_epoch_end(run.step):
            stopped()
    run.wall_seconds = wall()


# ---------------------------------------------------------------------------------------------
# Tickets
# ---------------------------------------------------------------------------------------------


def train_ticket(
    ticket: Ticket,
    bundle: DataBundle,
    cfg: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: str = "auto",
    log: Reporter | None = None,
    jsonl_path: str | os.PathLike[str] | None = None,
    stop: StopFlag | None = None,
    handle_signals: bool = True,
    stop_at_step: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Ticket:
    """Train a ticket's subnetwork from its ``init`` weights at its ``rewind_step``; return the trained ticket.

    The result keeps every field of ``ticket`` (masks, init, method, parents, transform, cost,
    ...) and adds ``trained``, ``hparams`` (the resolved config), ``metrics`` and ``config`` (the
    hyperparameters with the versions, device, processes and host of the run). It is not saved:
    save it, then :func:`remove_checkpoint`. With ``world_size`` > 1 every rank calls this (see
    :func:`train_state`) and gets the same trained weights; rank 0 saves the result.
    """
    check_compatible(bundle.info, ticket.input_shape, ticket.num_classes)
    model = ticket.build_model("init")
    result = train_state(model, ticket.masks, bundle, cfg, ticket.rewind_step, checkpoint_path=checkpoint_path,
                         resume=resume, log=log, jsonl_path=jsonl_path, stop=stop, handle_signals=handle_signals,
                         stop_at_step=stop_at_step, rank=rank, world_size=world_size,
                         title=f"{ticket.arch} on {bundle.info.name}")
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    hparams = cfg.resolved(spe, ticket.rewind_step, world_size)
    if ticket.hparams:
        hparams["ticket_hparams"] = ticket.hparams  # how the mask and init were made, kept
    return dataclasses.replace(
        ticket,
        trained=apply_masks(result.state, ticket.masks),
        hparams=hparams,
        metrics=result.metrics,
        config=run_config("train", cfg.resolved(spe, ticket.rewind_step, world_size), bundle.device),
        dataset=ticket.dataset or bundle.info.name,
        created=now_utc(),
        elth_version=__version__,
        sha256=None,
    )


def train_summary(ticket: Ticket, output: str, sha256: str | None) -> dict[str, Any]:
    """The ``elth train --json`` document."""
    return {
        "output": output,
        "sha256": sha256,
        "arch": ticket.arch,
        "dataset": (ticket.hparams or {}).get("dataset", ticket.dataset),
        "sparsity": ticket.sparsity,
        "rewind_step": ticket.rewind_step,
        "metrics": ticket.metrics,
        "hparams": ticket.hparams,
    }
