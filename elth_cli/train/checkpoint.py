"""The checkpoint file format (docs/checkpoint-format.md): everything a stopped run needs to resume.

A checkpoint is a safetensors file, with no pickle anywhere: tensors for the state (model,
optimizer, RNGs, the epoch's running statistics, the current masks, snapshots) and flat JSON
metadata for the rest (the run's identity, step, history, timings, optimizer groups, scaler).
This module is the one place that writes and reads it, as ``ticket.py`` is for tickets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from elth_cli import schema
from elth_cli.container import DIGEST_KEYS, UNCHECKED, check_integrity, peek_format, read_header, write_tensors
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import check_side_file, write_atomic

CHECKPOINT_FORMAT = "elth.checkpoint"
# 2: the digest covers the whole file (file_sha256); 1: the tensor bytes only (payload_sha256), or nothing.
CHECKPOINT_VERSION = 2
WHOLE_FILE_DIGEST_SINCE = 2

_COUNT = schema.integer(0, 2**53)
_SECONDS = schema.number(0)
# The schema of the metadata (docs/checkpoint-format.md): what a resumed run reads back, by type and range.
METADATA_RULES: dict[str, schema.Check] = {
    "format_version": schema.integer(1),
    "identity": schema.json_text(schema.obj({"config": schema.obj(), "start_step": _COUNT,
                                             "steps_per_epoch": _COUNT, "world_size": _COUNT,
                                             "source": schema.text})),
    "step": _COUNT,
    "seen": _COUNT,
    "history": schema.json_text(schema.list_of(schema.obj({"epoch": _COUNT, "step": _COUNT}))),
    "best_test_acc": schema.json_text(schema.optional(schema.number(0, 1))),
    "wall_seconds": _SECONDS,
    "train_seconds": _SECONDS,
    "train_images": _COUNT,
    "param_groups": schema.json_text(schema.list_of(schema.obj())),
    "optim_scalars": schema.json_text(schema.obj(values=schema.obj())),
    "scaler": schema.json_text(schema.optional(schema.obj())),
    # Optional (older checkpoints lack them: 0 and {}): FLOPs so far and the hooks' own state (mask updates, ...).
    "flops": _SECONDS,
    "dense_flops": _SECONDS,
    "extra": schema.json_text(schema.obj()),
    # Optional (older checkpoints lack it): the CPU threads of the run that wrote it (CPU results depend on it).
    "cpu_threads": schema.integer(1, 1 << 20),
    **dict.fromkeys(DIGEST_KEYS, schema.text),
}


def checkpoint_path_for(output: str | os.PathLike[str]) -> Path:
    """The default checkpoint of an output ticket: ``OUT.ckpt`` beside it."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def check_checkpoint_path(path: str | os.PathLike[str] | None) -> None:
    """Before any work: a checkpoint path is writable and holds nothing but an elth checkpoint, since the
    run overwrites it and deletes it at the end (never a ticket or another file, even with --restart)."""
    if path is None:
        return
    check_side_file(path, "checkpoint")
    p = Path(path)
    if p.exists():
        fmt = peek_format(p)
        if fmt != CHECKPOINT_FORMAT:
            if fmt is None:
                kind = "a file that is not an elth checkpoint"
            elif not fmt.startswith("elth."):
                kind = "a safetensors file that is not an elth checkpoint"
            else:
                kind = f"an {fmt.replace('elth.', 'elth ')} file, not a checkpoint"
            raise UsageError(f"checkpoint {p} holds {kind}; elth overwrites and deletes only its own checkpoints: "
                             "choose another --checkpoint path (or move that file)")


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
    """Everything a checkpoint restores besides the model, optimizer and mask tensors."""

    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_test_acc: float | None = None
    wall_seconds: float = 0.0  # summed over every segment of a resumed run
    train_seconds: float = 0.0  # training steps only (no eval, no first step of a segment)
    train_images: int = 0  # images behind train_seconds
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    flops: float = 0.0  # training FLOPs so far, at the masks' densities (see elth_cli.flops)
    dense_flops: float = 0.0  # what the same steps cost a dense network
    # JSON-ready state that hooks keep across a resume (e.g. the record of a dynamic mask's updates).
    extra: dict[str, Any] = field(default_factory=dict)
    # Tensors the mask set keeps besides the model (DPF's dense weights), saved as ``extra/<name>``.
    extra_tensors: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class EpochStats:
    """The running loss sum, correct count and examples of the epoch in progress."""

    loss_sum: Tensor
    correct: Tensor
    seen: int


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

    @property
    def cpu_threads(self) -> int | None:
        """The CPU threads of the run that wrote it (None: an older checkpoint that did not record them)."""
        return int(self.meta["cpu_threads"]) if "cpu_threads" in self.meta else None

    def masks(self) -> dict[str, Tensor] | None:
        """The masks the run had when it stopped (None in a checkpoint from before masks were recorded)."""
        masks = {k[len("mask/"):]: v for k, v in self.tensors.items() if k.startswith("mask/")}
        return masks or None


def _check_finite(tensors: Mapping[str, Tensor]) -> None:
    """Every float tensor is finite: a NaN weight, statistic or momentum would train on at chance."""
    for name, t in tensors.items():
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ElthError(f"its tensor {name} holds NaN or infinite values")


def _optimizer_tensors(opt: dict[str, Any]) -> dict[str, Tensor]:
    return {f"optim/{idx}/{name}": _cpu(value) for idx, entry in opt["state"].items()
            for name, value in entry.items() if isinstance(value, Tensor)}


def save_checkpoint(path: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, stats: EpochStats, run: RunState,
                    masks: Mapping[str, Tensor], cuda_rng: bool = True) -> None:
    """Write a resumable checkpoint atomically (temporary file, then rename).

    ``stats`` are the epoch's running statistics (with several processes, their sums over the
    ranks, written by rank 0). ``cuda_rng``: record every GPU's generator; not with several
    processes, where asking would create a context on every GPU from every rank (training draws
    nothing from them anyway).
    """
    opt = optimizer.state_dict()
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in cpu_state(model).items()}
    tensors.update(_optimizer_tensors(opt))
    tensors["rng/cpu"] = torch.get_rng_state()
    if cuda_rng and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.cpu()
    tensors["stats/loss_sum"] = _cpu(stats.loss_sum).reshape(1)
    tensors["stats/correct"] = _cpu(stats.correct).reshape(1)
    tensors.update({f"mask/{k}": _cpu(m).bool() for k, m in masks.items()})
    for s, state in run.snapshots.items():
        tensors.update({f"snap/{s}/{k}": v for k, v in state.items()})
    tensors.update({f"extra/{k}": _cpu(v) for k, v in run.extra_tensors.items()})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "identity": json.dumps(identity, sort_keys=True),
        "step": str(run.step),
        "seen": str(stats.seen),
        "history": json.dumps(run.history),
        "best_test_acc": json.dumps(run.best_test_acc),
        "wall_seconds": repr(run.wall_seconds),
        "train_seconds": repr(run.train_seconds),
        "train_images": str(run.train_images),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps({str(i): {k: v for k, v in e.items() if not isinstance(v, Tensor)}
                                     for i, e in opt["state"].items()}),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
        "flops": repr(float(run.flops)),
        "dense_flops": repr(float(run.dense_flops)),
        "extra": json.dumps(run.extra, sort_keys=True),
        "cpu_threads": str(torch.get_num_threads()),
    }
    write_atomic(path, lambda f: write_tensors(f, tensors, meta))  # streamed: no copy of the state in bytes


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint file; a damaged or foreign file is an ElthError saying what to do."""
    data = Path(path).read_bytes()
    try:
        meta = read_header(data, str(path))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ElthError(f"{path} is not an elth training checkpoint")
        missing = [k for k in ("format_version", "identity", "step", "seen", "history", "best_test_acc",
                               "wall_seconds", "train_seconds", "train_images", "param_groups", "optim_scalars",
                               "scaler") if k not in meta]
        if missing:
            raise ElthError(f"{path} lacks the metadata {missing[0]!r}")
        typed = schema.check_fields(meta, METADATA_RULES, lambda field, expected: ElthError(
            f"its metadata {field!r} must be {expected}"))
        if typed["format_version"] > CHECKPOINT_VERSION:
            raise ElthError(f"{path} was written by a newer elth; upgrade elth or delete it")
        integrity = check_integrity(data, meta, str(path), typed["format_version"] >= WHOLE_FILE_DIGEST_SINCE)
        if integrity == UNCHECKED:  # nothing would notice a dropped or renamed optimizer tensor
            raise ElthError("it was written by an older elth without a digest, so its state cannot be checked")
        tensors = st_load(data)
        _check_finite(tensors)
    except ElthError as e:
        raise ElthError(f"cannot resume from {path}: {e}; delete it (or pass --restart) to start over") from None
    except Exception as e:  # safetensors errors of a damaged file
        raise ElthError(f"cannot resume from {path} ({type(e).__name__}: {e}); delete it (or pass --restart) "
                        "to start over") from None
    return Checkpoint(Path(path), meta, tensors)


def _restore_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in json.loads(ckpt.meta["optim_scalars"]).items()}
    for name, value in ckpt.tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    live = optimizer.state_dict()["param_groups"]
    # The saved groups carry the hyperparameters; keep the live groups' parameter ids.
    groups = [{**g, "params": now["params"]} for g, now in zip(json.loads(ckpt.meta["param_groups"]), live)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_rng(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng/cpu"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def restore_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None, stats: EpochStats | None) -> RunState:
    """Load a checkpoint's state into the model, optimizer, scaler, RNGs and ``stats``; return the run state.

    ``stats=None`` (every rank but 0 of a multi-process run) leaves the epoch's running statistics
    alone: the checkpoint holds their sums over all ranks, which rank 0 carries. Masks are not
    applied here: :meth:`Checkpoint.masks` gives them to the caller. A checkpoint whose tensors do
    not fit the run is an ElthError.
    """
    try:
        return _restore(ckpt, model, optimizer, scaler, stats)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ElthError(f"cannot resume from {ckpt.path}: its state does not fit this run ({reason}); delete it "
                        "(or pass --restart) to start over") from None


def _restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, stats: EpochStats | None) -> RunState:
    t, meta = ckpt.tensors, ckpt.meta
    model.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")}, strict=True)
    _restore_optimizer(ckpt, optimizer)
    scaler_state = json.loads(meta["scaler"])
    if scaler is not None and scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    _restore_rng(t)
    if stats is not None:
        stats.loss_sum.copy_(t["stats/loss_sum"].reshape(()))
        stats.correct.copy_(t["stats/correct"].reshape(()))
        stats.seen = int(meta["seen"])
    snapshots: dict[int, dict[str, Tensor]] = {}
    for name, value in t.items():
        if name.startswith("snap/"):
            _, s, key = name.split("/", 2)
            snapshots.setdefault(int(s), {})[key] = value
    extra_tensors = {name[len("extra/"):]: value for name, value in t.items() if name.startswith("extra/")}
    return RunState(step=int(meta["step"]), history=json.loads(meta["history"]),
                    best_test_acc=json.loads(meta["best_test_acc"]), wall_seconds=float(meta["wall_seconds"]),
                    train_seconds=float(meta["train_seconds"]), train_images=int(meta["train_images"]),
                    snapshots=snapshots, flops=float(meta.get("flops", 0.0)),
                    dense_flops=float(meta.get("dense_flops", 0.0)), extra=json.loads(meta.get("extra", "{}")),
                    extra_tensors=extra_tensors)


def remove_checkpoint(path: str | os.PathLike[str] | None) -> None:
    """Delete a finished run's checkpoint (call it after the output has been written)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
