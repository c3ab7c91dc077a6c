"""``elth import``: an open_lth / ElasticLTH run folder read into a ticket, every file checked on the way.

The mask, the chosen model files, the sparsity report and the logger are checked against the
architecture and the data set (shapes, dtypes, finite values, 0/1 masks, the report's counts)
with messages that name the file and what to pass instead; pruned entries are zeroed. What was
read is recorded in the ticket (``imported_from``), so ``elth export`` can name files as they were.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from elth_cli import archs, data
from elth_cli.errors import ElthError, UsageError
from elth_cli.interop.run_layout import (
    LOGGER_FILE, MASK_FILE, REPORT_FILE, Step, StepSpec, from_reference_keys, load_tensor_dict, model_files,
    parse_step_spec,
)
from elth_cli.masks import kept_and_total
from elth_cli.ticket import Ticket, apply_masks_
from elth_cli.ticket_checks import as_array, validate

IMPORT_KEY = "imported_from"  # metadata key recording where an imported ticket came from


@dataclass
class ImportResult:
    """The imported ticket and what the import found on the way (for the summary and warnings)."""

    ticket: Ticket
    init_file: str
    trained_file: str | None
    dense_keys: list[str]
    zeroed: dict[str, int]
    report: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


def _pick(files: list[Step], spec: StepSpec | None, spe: int | None, what: str, run_dir: Path) -> Step:
    hits = [f for f in files if spec is not None and spec.matches(f, spe)]
    if not hits:
        names = ", ".join(f.filename for f in files)
        hint = " (an iteration past epoch 0 needs --steps-per-epoch)" if spec is not None and spec.ep is None and not spe else ""
        raise UsageError(f"no model file in {run_dir} matches {what}{hint}; it has {names}")
    return hits[0]


def _read_mask(path: Path, spec: archs.ArchSpec, shape: tuple[int, int, int], classes: int,
               expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> tuple[dict[str, Tensor], list[str], dict[str, Tensor]]:
    """Masks for every prunable key (bool), the keys left dense, and the file's own tensors."""
    raw = from_reference_keys(load_tensor_dict(path, "mask"), spec)
    prunable = archs.prunable_keys(spec, shape, classes)
    masks, dense = {}, []
    for key, t in raw.items():
        if key not in prunable:
            raise ElthError(f"{path}: {key!r} is not a prunable weight of {spec.name} (prunable: conv and linear "
                            "weights); is --arch right?")
        want = expected[key][0]
        if tuple(t.shape) != want:
            raise ElthError(f"{path}: {key} has shape {list(t.shape)} but {spec.name} needs {list(want)}; is --arch right?")
        if t.is_complex() or (t.dtype != torch.bool and t.numel() and not _zero_one(t)):
            raise ElthError(f"{path}: {key} holds values other than 0 and 1; not a mask")
    for key in prunable:
        if key in raw:
            masks[key] = (raw[key] != 0).contiguous()
        else:
            # A prunable key absent from mask.pth is a layer the run never pruned: dense.
            masks[key] = torch.ones(expected[key][0], dtype=torch.bool)
            dense.append(key)
    return masks, dense, raw


def _zero_one(t: Tensor) -> bool:
    """Whether every value is 0 or 1 (a NaN is neither): min and max, no array of flags as big as the tensor."""
    a = as_array(t)
    lo, hi = a.min(), a.max()
    return bool(lo >= 0 and hi <= 1) and (a.dtype.kind != "f" or not np.any((a != 0) & (a != 1)))


def _check_report(run_dir: Path, raw_mask: dict[str, Tensor]) -> dict[str, Any] | None:
    """Cross-check ``sparsity_report.json`` against mask.pth; None when the folder has none."""
    path = run_dir / REPORT_FILE
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        total, unpruned = float(report["total"]), float(report["unpruned"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ElthError(f"{path} is not a sparsity report ({{\"total\": ..., \"unpruned\": ...}})") from None
    want_kept, want_total = kept_and_total(raw_mask)  # int 0/1 tensors: nonzero means kept
    if total != want_total or unpruned != want_kept:
        raise ElthError(f"{path} says {unpruned:.0f} of {total:.0f} weights unpruned but {MASK_FILE} keeps "
                        f"{want_kept} of {want_total}; the run folder is inconsistent")
    return report


def _check_io(state: dict[str, Tensor], where: str, spec: archs.ArchSpec, shape: tuple[int, int, int],
              classes: int, dataset: str) -> None:
    """The first conv's input channels and the classifier's outputs against the data set (clear messages first)."""
    prunable = archs.prunable_keys(spec, shape, classes)
    stem, head = prunable[0], prunable[-1]
    if stem in state and state[stem].dim() == 4 and state[stem].shape[1] != shape[0]:
        raise ElthError(f"{where}: the first conv {stem} takes {state[stem].shape[1]} input channels but "
                        f"--dataset {dataset} has {shape[0]}; pass the data set the run was trained on")
    if head in state and state[head].dim() == 2 and state[head].shape[0] != classes:
        raise ElthError(f"{where}: the classifier {head} has {state[head].shape[0]} outputs but --dataset {dataset} "
                        f"has {classes} classes; pass the data set the run was trained on")


def _conform_state(state: dict[str, Tensor], where: str, spec: archs.ArchSpec, shape: tuple[int, int, int],
                   classes: int, dataset: str) -> dict[str, Tensor]:
    """Check a state dict against the architecture; cast to the model's dtypes, independent tensors."""
    _check_io(state, where, spec, shape, classes, dataset)
    expected = archs.expected_state(spec, shape, classes)
    out = {}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which"
        tail = "" if missing else f" {spec.name} does not have"
        raise ElthError(f"{where} {what}{tail} ({len(missing)} missing, {len(extra)} unexpected key(s)); "
                        f"is --arch {spec.name} right?")
    for key, (want, dtype) in expected.items():
        if key not in state:
            # Very old state dicts lack BN's num_batches_tracked: PyTorch itself fills it with 0.
            out[key] = torch.zeros(want, dtype=dtype)
            continue
        t = state[key]
        if tuple(t.shape) != want:
            raise ElthError(f"{where}: {key} has shape {list(t.shape)} but {spec.name} needs {list(want)}; "
                            f"is --arch {spec.name} right?")
        if t.dtype.is_floating_point != dtype.is_floating_point:
            raise ElthError(f"{where}: {key} has dtype {t.dtype} where {spec.name} has {dtype}")
        a = as_array(t) if t.dtype.is_floating_point and t.numel() else None
        if a is not None and not (np.isfinite(a.min()) and np.isfinite(a.max())):
            raise ElthError(f"{where}: {key} holds NaN or infinite values")
        t = t.to(dtype).contiguous()
        # Independent tensors (pruning writes into them): a view of a storage the file shares with others is copied.
        owns = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        out[key] = t if owns else t.clone()
    return out


def _masked(state: dict[str, Tensor], masks: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The state (its own tensors, from :func:`_conform_state`) with pruned weights zeroed in place, and how many
    nonzero pruned entries that zeroed."""
    nonzero = sum(int(np.count_nonzero(np.logical_and(as_array(state[k]), ~as_array(m)))) for k, m in masks.items())
    return apply_masks_(state, masks), nonzero


def _read_logger(run_dir: Path, trained: Step, spe: int | None) -> dict[str, Any] | None:
    """Final test accuracy/loss from open_lth's ``logger`` CSV (``name,iteration,value``), when present."""
    path = run_dir / LOGGER_FILE
    if not path.is_file():
        return None
    last: dict[str, tuple[int, float]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) != 3 or row[0] not in ("test_accuracy", "test_loss"):
                    continue
                it, value = int(row[1]), float(row[2])
                if row[0] not in last or it >= last[row[0]][0]:
                    last[row[0]] = (it, value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # the logger is informative only; a damaged one must not block an import
    if "test_accuracy" not in last:
        return None
    step = last["test_accuracy"][0]
    end = trained.iteration(spe)
    if end is not None and step != end:
        return None  # the last logged evaluation is not of the imported weights
    metrics: dict[str, Any] = {"test_acc": last["test_accuracy"][1], "source": "open_lth logger", "step": step}
    if "test_loss" in last and last["test_loss"][0] == step:
        metrics["test_loss"] = last["test_loss"][1]
    return metrics


@dataclass
class _RunStates:
    """What a run folder's mask and model files hold, checked and conformed to the architecture."""

    masks: dict[str, Tensor]
    dense: list[str]
    report: dict[str, Any] | None
    init: dict[str, Tensor]
    trained: dict[str, Tensor] | None
    zeroed: dict[str, int]


def _run_files(root: Path) -> list[Step]:
    """The model files of a run folder, after checking that it holds a mask and at least one of them."""
    if not (root / MASK_FILE).is_file():
        raise ElthError(f"{root} has no {MASK_FILE}; point at a run folder of a pruning level (level_<L>/main) "
                        "or a branch folder, which hold the mask")
    files = model_files(root)
    if not files:
        raise ElthError(f"{root} has no model_ep<E>_it<I>.pth file; it is not an open_lth run folder")
    return files


def _choose_steps(files: list[Step], init_step: str | None, trained_step: str | None, spe: int | None,
                  root: Path) -> tuple[Step, Step | None]:
    """The init and trained files: as asked, else the earliest and (when later) the latest."""
    init = _pick(files, parse_step_spec(init_step), spe, f"--init-step {init_step}", root) \
        if init_step is not None else files[0]
    if trained_step is not None and trained_step.strip().lower() == "none":
        trained = None
    elif trained_step is not None:
        trained = _pick(files, parse_step_spec(trained_step), spe, f"--trained-step {trained_step}", root)
    else:
        trained = files[-1] if files[-1] != init else None
    if trained is not None and trained <= init:
        raise UsageError(f"the trained weights {trained.filename} are not later than the init weights {init.filename}")
    return init, trained


def _rewind_iteration(init: Step, spe: int | None) -> int:
    """The init file's step in iterations, which a ticket's rewind step must be."""
    rewind = init.iteration(spe)
    if rewind is None:
        raise UsageError(f"the init weights {init.filename} are at epoch {init.ep}; pass --steps-per-epoch (open_lth: "
                         "ceil(training examples / batch size), 391 for CIFAR-10 at batch 128) so the rewind step "
                         "can be counted in iterations")
    return rewind


def _read_run(root: Path, init: Step, trained: Step | None, spec: archs.ArchSpec,
              info: data.DatasetInfo) -> _RunStates:
    """Read and check the mask, the sparsity report and the chosen model files; zero pruned entries."""
    shape, classes = tuple(info.input_shape), info.num_classes
    expected = archs.expected_state(spec, shape, classes)
    init_where = str(root / init.filename)
    # A wrong --dataset shows first in the stem and the classifier: say so before any shape complaint (from a
    # mapping of the file: only those two tensors are read).
    _check_io(from_reference_keys(load_tensor_dict(root / init.filename, "model file", mmap=True), spec), init_where,
              spec, shape, classes, info.name)
    # One file's tensors at a time: the int 0/1 mask (as big as the weights) goes once made bool.
    masks, dense, raw_mask = _read_mask(root / MASK_FILE, spec, shape, classes, expected)
    report = _check_report(root, raw_mask)
    del raw_mask
    init_raw = from_reference_keys(load_tensor_dict(root / init.filename, "model file"), spec)
    init_state, zeroed_init = _masked(_conform_state(init_raw, init_where, spec, shape, classes, info.name), masks)
    del init_raw
    trained_state, zeroed_trained = None, 0
    if trained is not None:
        trained_state = _conform_state(from_reference_keys(load_tensor_dict(root / trained.filename, "model file"), spec),
                                       str(root / trained.filename), spec, shape, classes, info.name)
        trained_state, zeroed_trained = _masked(trained_state, masks)
    return _RunStates(masks, dense, report, init_state, trained_state, {"init": zeroed_init, "trained": zeroed_trained})


def _import_record(root: Path, init: Step, trained: Step | None, spe: int | None, rewind: int,
                   states: _RunStates) -> dict[str, Any]:
    """Where an imported ticket came from: the ``imported_from`` metadata that :func:`import_record` reads."""
    return {
        "format": "open_lth",
        "folder": root.resolve().name,
        "path": str(root.resolve()),
        "mask_file": MASK_FILE,
        "init_file": init.filename,
        "init_step": init.as_dict(),
        "trained_file": trained.filename if trained else None,
        "trained_step": trained.as_dict() if trained else None,
        "steps_per_epoch": spe,
        "rewind_step": rewind,
        "dense_keys": states.dense,
        "zeroed_pruned": dict(states.zeroed),
        "sparsity_report": states.report,
    }


def import_run(
    run_dir: str | os.PathLike[str], arch: str, dataset: str = "cifar10", *, data_dir: str | None = None,
    init_step: str | None = None, trained_step: str | None = None, steps_per_epoch: int | None = None,
) -> ImportResult:
    """Read an open_lth / ElasticLTH run folder into a ticket (method ``imported``).

    ``init_step``/``trained_step`` pick the files (default: the earliest and the latest
    ``model_ep*_it*.pth``; ``trained_step="none"`` imports no trained weights). The input shape and
    class count come from ``dataset`` and are checked against the weights. Pruned entries are
    zeroed in both states (open_lth masks on every forward pass, so a saved trained state may hold
    stale values there).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run folder {root} does not exist or is not a folder")
    spec, notes = _as_the_reference_means(arch, archs.resolve_arch(arch), root)
    info = data.get_dataset_info(dataset, data_dir)
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch must be at least 1, got {steps_per_epoch}")
    files = _run_files(root)
    init, trained = _choose_steps(files, init_step, trained_step, steps_per_epoch, root)
    rewind = _rewind_iteration(init, steps_per_epoch)
    states = _read_run(root, init, trained, spec, info)
    record = _import_record(root, init, trained, steps_per_epoch, rewind, states)
    ticket = Ticket(
        arch=spec.name,
        input_shape=tuple(info.input_shape),
        num_classes=info.num_classes,
        masks=states.masks,
        init=states.init,
        trained=states.trained,
        method="imported",
        rewind_step=rewind,
        dataset=info.name,
        parents=[],
        metrics=_read_logger(root, trained, steps_per_epoch) if trained is not None else None,
        extra={IMPORT_KEY: json.dumps(record, sort_keys=True)},
    )
    validate(ticket, str(root))
    warnings = notes + [f"{n} pruned entries of the {label} weights were nonzero in the run folder; zeroed them"
                        for label, n in states.zeroed.items() if n]
    return ImportResult(ticket, init.filename, trained.filename if trained else None, states.dense,
                        dict(states.zeroed), states.report, warnings)


# The reference reads a VGG-FC's width only from a four-part name (cifar_vggnfc_D_W): in a five-part one
# (cifar_vggnfc_D_W_n) the W is ignored and the network is 64 wide.
_VGGNFC_WIDTH_IGNORED = re.compile(r"^cifar_vggnfc_(\d+)_(\d+)_(\d+)$")


def _as_the_reference_means(arch: str, spec: archs.ArchSpec, root: Path) -> tuple[archs.ArchSpec, list[str]]:
    """The architecture a reference run folder holds when ``arch`` is a reference name that the reference
    reads otherwise than its text says (``cifar_vggnfc_13_32_3`` is 64 wide), judged by the folder's
    first convolution; with a note saying so."""
    m = _VGGNFC_WIDTH_IGNORED.match(arch)
    if not m or int(m.group(2)) == 64 or not (root / MASK_FILE).is_file():
        return spec, []
    meant = archs.resolve_arch(f"vgg{m.group(1)}-fc{m.group(3)}")
    try:
        first = from_reference_keys(load_tensor_dict(root / MASK_FILE, "mask"), meant).get("layers.0.conv.weight")
    except ElthError:
        return spec, []  # the usual checks say what is wrong with the file
    if first is None or first.shape[0] != meant.width:
        return spec, []
    return meant, [f"{arch} is width {meant.width} in the reference (its name parser reads a width only from "
                   f"cifar_vggnfc_D_W), and this run folder's layers are {meant.width} wide: imported as {meant.name}"]


def import_record(ticket: Ticket) -> dict[str, Any] | None:
    """What :func:`import_run` recorded about the run folder a ticket came from, if anything."""
    text = ticket.extra.get(IMPORT_KEY)
    if not text:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None
