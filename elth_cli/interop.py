"""Reading and writing open_lth / ElasticLTH run folders (docs/interop.md).

A run folder (``lottery_<hash>/replicate_<r>/level_<L>/main/`` or a branch folder) holds:

* ``mask.pth``: ``torch.save`` of {prunable weight name -> int 0/1 tensor} (open_lth's
  ``Mask.save`` writes ``v.int()``: int32); keys left out mean "dense";
* ``model_ep{E}_it{I}.pth``: state dicts saved at the start step (the rewind point, already
  masked) and at the end step of training; ``E = step // iterations_per_epoch``,
  ``I = step % iterations_per_epoch``;
* ``sparsity_report.json``: ``{"total": float, "unpruned": float}`` over the mask's tensors.

Every ``.pth`` file is read with ``torch.load(..., weights_only=True)``: tensors, dicts and plain
values only. A pickle naming any other Python object is refused; nothing is ever unpickled
beyond that, so a hostile file cannot run code.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from elth_cli import archs, data
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import check_writable_folder, current_umask
from elth_cli.masks import kept_and_total
from elth_cli.steps import split_steps
from elth_cli.ticket import Ticket, apply_masks, validate

MASK_FILE = "mask.pth"
REPORT_FILE = "sparsity_report.json"
LOGGER_FILE = "logger"
IMPORT_KEY = "imported_from"  # metadata key recording where an imported ticket came from
MODEL_RE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")


# ----- steps and file names -----------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Step:
    """A training step as open_lth names it: epoch ``ep`` and iteration ``it`` within that epoch."""

    ep: int
    it: int

    @property
    def filename(self) -> str:
        return f"model_ep{self.ep}_it{self.it}.pth"

    def iteration(self, steps_per_epoch: int | None) -> int | None:
        """The absolute iteration, when it can be known (epoch 0, or the epoch length given)."""
        if self.ep == 0:
            return self.it
        return self.ep * steps_per_epoch + self.it if steps_per_epoch else None

    @classmethod
    def of_iteration(cls, iteration: int, steps_per_epoch: int | None) -> "Step":
        """open_lth's Step(iteration, iterations_per_epoch); epoch 0 when the epoch length is unknown."""
        if steps_per_epoch:
            return cls(*divmod(iteration, steps_per_epoch))
        return cls(0, iteration)

    def as_dict(self) -> dict[str, int]:
        return {"ep": self.ep, "it": self.it}


@dataclass(frozen=True)
class StepSpec:
    """A step named on the command line: an (epoch, iteration) pair, or an absolute iteration (``ep`` None)."""

    ep: int | None
    it: int

    def matches(self, step: Step, steps_per_epoch: int | None) -> bool:
        if self.ep is not None:
            return (self.ep, self.it) == (step.ep, step.it)
        return step.iteration(steps_per_epoch) == self.it

    def resolve(self, steps_per_epoch: int | None) -> Step:
        return Step(self.ep, self.it) if self.ep is not None else Step.of_iteration(self.it, steps_per_epoch)


def parse_step_spec(text: str) -> StepSpec:
    """``1000`` or ``1000it`` (an iteration), ``2ep218it`` or ``160ep`` (open_lth's epoch form), or a
    file name ``model_ep2_it218.pth``."""
    s = text.strip().lower()
    m = MODEL_RE.match(s)
    if m:
        return StepSpec(int(m.group(1)), int(m.group(2)))
    parts = split_steps(s)
    if parts is None:
        raise UsageError(f"{text!r} is not a step; write an iteration (1000 or 1000it), an epoch and iteration "
                         "(2ep218it, 160ep) or a file name (model_ep2_it218.pth)")
    return StepSpec(*parts)


def model_files(run_dir: Path) -> list[Step]:
    """The ``model_ep{E}_it{I}.pth`` files of a run folder, earliest first."""
    return sorted(Step(int(m.group(1)), int(m.group(2)))
                  for p in run_dir.iterdir() if p.is_file() and (m := MODEL_RE.match(p.name)))


# ----- safe loading -------------------------------------------------------------------------------
def _weights_only_detail(message: str) -> str | None:
    """The offending global named in torch's weights_only error, when there is one."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", message) or re.search(r"unsupported GLOBAL (\S+)", message)
    return m.group(1) if m else None


def load_tensor_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A ``.pth`` file holding a dict of name -> tensor, loaded with ``weights_only=True`` only.

    Anything else (a pickled object of another type, a function reference, a list, a non-tensor
    value, a file that is not a torch file) is refused with a one-line ElthError.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        glob = _weights_only_detail(str(e))
        if glob is not None:
            raise ElthError(f"refused {what} {path}: it holds a Python object that is not a tensor ({glob}); elth loads "
                            ".pth files with weights_only=True and never unpickles arbitrary objects") from None
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ElthError(f"{what} {path} is not a readable PyTorch tensor file ({first})") from None
    if not isinstance(obj, dict):
        raise ElthError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors (a state dict or a mask)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        k = bad[0]
        raise ElthError(f"{what} {path}: entry {k!r} is a {type(obj[k]).__name__}, not a tensor; "
                        "expected a dict of name -> tensor")
    return dict(obj)


# ----- import -------------------------------------------------------------------------------------
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


def from_reference_keys(tensors: dict[str, Tensor], spec: archs.ArchSpec) -> dict[str, Tensor]:
    """The reference's keys as elth's: open_lth's ImageNet ResNet holds torchvision's as ``model``, so its
    keys read ``model.layer1.0.conv1.weight`` (the family's ``reference_prefix``). Keys without the prefix
    (an older elth export) are taken as they are."""
    prefix = archs.family_of(spec).reference_prefix
    if not prefix:
        return tensors
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}


def to_reference_keys(tensors: Mapping[str, Tensor], spec: archs.ArchSpec) -> dict[str, Tensor]:
    """elth's keys as the reference loads them (``model.`` before every ImageNet ResNet key)."""
    prefix = archs.family_of(spec).reference_prefix
    return {prefix + k: v for k, v in tensors.items()}


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
        if t.is_complex() or bool(((t != 0) & (t != 1)).any()):
            raise ElthError(f"{path}: {key} holds values other than 0 and 1; not a mask")
    for key in prunable:
        if key in raw:
            masks[key] = (raw[key] != 0).contiguous()
        else:
            # A prunable key absent from mask.pth is a layer the run never pruned: dense.
            masks[key] = torch.ones(expected[key][0], dtype=torch.bool)
            dense.append(key)
    return masks, dense, raw


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
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ElthError(f"{where}: {key} holds NaN or infinite values")
        out[key] = t.to(dtype).contiguous().clone()
    return out


def _masked(state: dict[str, Tensor], masks: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The state with pruned weights zeroed, and how many nonzero pruned entries that zeroed."""
    nonzero = sum(int((state[k][~m] != 0).sum()) for k, m in masks.items())
    return apply_masks(state, masks), nonzero


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
    init_raw = from_reference_keys(load_tensor_dict(root / init.filename, "model file"), spec)
    # A wrong --dataset shows first in the stem and the classifier: say so before any shape complaint.
    _check_io(init_raw, init_where, spec, shape, classes, info.name)
    masks, dense, raw_mask = _read_mask(root / MASK_FILE, spec, shape, classes, expected)
    report = _check_report(root, raw_mask)
    init_state, zeroed_init = _masked(_conform_state(init_raw, init_where, spec, shape, classes, info.name), masks)
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


# ----- export -------------------------------------------------------------------------------------
@dataclass
class ExportPlan:
    """The files ``export`` writes, decided before anything is written."""

    init: Step
    trained: Step | None

    @property
    def files(self) -> list[str]:
        names = [MASK_FILE, self.init.filename]
        if self.trained is not None:
            names.append(self.trained.filename)
        return names + [REPORT_FILE]


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


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def plan_export(ticket: Ticket, trained_step: str | None = None) -> ExportPlan:
    """File names for a ticket: the init at its rewind step, the trained state at the run's final step.

    The epoch length comes from the training hparams (``steps_per_epoch``, recorded by elth
    train), else from the import record (whose file names are then reused); without it steps are
    written as epoch 0. The final step is ``trained_step`` when given, else the hparams'
    ``total_steps``, else the imported file's step, else the metrics' ``total_steps``.
    """
    hp = ticket.hparams or {}
    rec = import_record(ticket) or {}
    hp_spe = _int(hp.get("steps_per_epoch"))
    spe = hp_spe or _int(rec.get("steps_per_epoch"))
    init_rec = rec.get("init_step")
    if not hp_spe and isinstance(init_rec, dict) and rec.get("rewind_step") == ticket.rewind_step and \
            _int(init_rec.get("ep")) is not None and _int(init_rec.get("it")) is not None:
        init = Step(init_rec["ep"], init_rec["it"])  # the name it was imported from
    else:
        # elth's own epoch length wins once elth has trained the ticket: all names from one length.
        init = Step.of_iteration(ticket.rewind_step, spe)
    if not ticket.is_trained:
        if trained_step is not None:
            raise UsageError("--trained-step given but the ticket has no trained weights")
        return ExportPlan(init, None)
    total = _int(hp.get("total_steps")) or _int((ticket.metrics or {}).get("total_steps"))
    trained_rec = rec.get("trained_step")
    if trained_step is not None:
        trained = parse_step_spec(trained_step).resolve(spe)
    elif total is not None and "total_steps" in hp:
        trained = Step.of_iteration(total, spe)
    elif isinstance(trained_rec, dict) and _int(trained_rec.get("ep")) is not None and _int(trained_rec.get("it")) is not None:
        trained = Step(trained_rec["ep"], trained_rec["it"])
    elif total is not None:
        trained = Step.of_iteration(total, spe)
    else:
        raise UsageError("the ticket's final training step is unknown (no total_steps in its hparams or metrics); "
                         "pass --trained-step, e.g. 160ep or 62560it")
    end = trained.iteration(spe)
    if (end is not None and end <= ticket.rewind_step) or trained <= init:
        raise UsageError(f"the final step {trained.filename} is not after the rewind step {init.filename}; "
                         "pass a later --trained-step")
    return ExportPlan(init, trained)


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"output folder {out} is not empty; pass --force to replace it or choose another path")
    check_writable_folder(out.parent, out, create=True)  # the finished folder is renamed into its parent


def _save(obj: dict[str, Tensor], path: Path) -> None:
    # Independent contiguous CPU tensors: torch.save writes whole storages, so never a view of a larger one.
    # Serialised in memory, then written as plain bytes: a full disk is then an OSError with its errno, where
    # torch.save onto a file raises a RuntimeError ("file write failed") with none.
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu").contiguous().clone() for k, v in obj.items()}, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def export_ticket(ticket: Ticket, out_dir: str | os.PathLike[str], force: bool = False,
                  trained_step: str | None = None) -> ExportPlan:
    """Write a ticket as an open_lth run folder; atomic: a temporary folder renamed into place."""
    out = Path(out_dir)
    _check_out_dir(out, force)
    validate(ticket)
    plan = plan_export(ticket, trained_step)
    out.parent.mkdir(parents=True, exist_ok=True)  # OUT_DIR is a folder to create, as find's --out-dir
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes the folder private (0700): give it the permissions a plain mkdir would.
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        _write_export(ticket, plan, tmp)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        was = "left as it was" if out.exists() else "not created"
        fix = "free some space (or raise the limit)" if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else \
            f"check the folder {out.parent} and its permissions"
        raise ElthError(f"cannot write {out}: {e.strerror or e}; the folder was {was}; {fix} and run the command "
                        "again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan


def _write_export(ticket: Ticket, plan: ExportPlan, tmp: Path) -> None:
    """The run folder's files, in ``tmp``."""
    # open_lth's Mask.save: every prunable key, int32 0/1 (v.cpu().int()).
    spec = ticket.spec
    _save(to_reference_keys({k: m.to(torch.int32) for k, m in ticket.masks.items()}, spec), tmp / MASK_FILE)
    _save(to_reference_keys(ticket.init, spec), tmp / plan.init.filename)
    if plan.trained is not None:
        _save(to_reference_keys(ticket.trained, spec), tmp / plan.trained.filename)
    unpruned, total = kept_and_total(ticket.masks)
    (tmp / REPORT_FILE).write_text(json.dumps({"total": float(total), "unpruned": float(unpruned)}, indent=4))


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing one (--force) is set aside first and removed after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, out)  # put the original back
        raise
    shutil.rmtree(old, ignore_errors=True)


def summary(ticket: Ticket) -> dict[str, Any]:
    """Counts for the import/export summaries."""
    kept, total = kept_and_total(ticket.masks)
    return {"arch": ticket.arch, "sparsity": ticket.sparsity, "prunable_weights": total, "kept_weights": kept,
            "rewind_step": ticket.rewind_step, "trained": ticket.is_trained,
            "sparsity_report": {"total": float(total), "unpruned": float(kept)}}
