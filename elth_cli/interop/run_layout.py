"""The open_lth / ElasticLTH run folder layout: file names, steps, and reading its ``.pth`` files safely.

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from elth_cli import archs
from elth_cli.errors import ElthError, UsageError
from elth_cli.masks import kept_and_total
from elth_cli.steps import split_steps
from elth_cli.ticket import Ticket

MASK_FILE = "mask.pth"
REPORT_FILE = "sparsity_report.json"
LOGGER_FILE = "logger"
MODEL_RE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")


# ----- steps and file names -----------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Step:
    """A training step as open_lth names it: epoch ``ep`` and iteration ``it`` within that epoch."""

    ep: int
    it: int

    @property
    def filename(self) -> str:
        """The model file open_lth saves at this step: ``model_ep{E}_it{I}.pth``."""
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
        """``{"ep": E, "it": I}``, as the import record keeps a step."""
        return {"ep": self.ep, "it": self.it}


@dataclass(frozen=True)
class StepSpec:
    """A step named on the command line: an (epoch, iteration) pair, or an absolute iteration (``ep`` None)."""

    ep: int | None
    it: int

    def matches(self, step: Step, steps_per_epoch: int | None) -> bool:
        """Whether ``step`` is this one; an absolute iteration past epoch 0 needs ``steps_per_epoch``."""
        if self.ep is not None:
            return (self.ep, self.it) == (step.ep, step.it)
        return step.iteration(steps_per_epoch) == self.it

    def resolve(self, steps_per_epoch: int | None) -> Step:
        """The open_lth step this names (epoch 0 when an iteration is given and the epoch length is unknown)."""
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


def _broken_zip(path: Path) -> bool:
    """A file that starts as torch.save's zip archive but is not a whole one (cut short, or damaged)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            starts_as_zip = f.read(4) == b"PK\x03\x04"
        return starts_as_zip and not zipfile.is_zipfile(path)
    except OSError:
        return False


def _reason(e: BaseException, path: Path) -> str:
    """Why torch could not read a file, in one whole sentence (its messages run to several lines, and cutting
    one at a fixed length left it mid-word)."""
    text = " ".join(str(e).split())
    if "central directory" in text or "zip archive" in text or isinstance(e, EOFError) or _broken_zip(path):
        return "it is truncated or damaged: not a complete zip archive"
    if not text:
        return type(e).__name__
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 200 else f"{type(e).__name__} while reading it"


def load_tensor_dict(path: Path, what: str, mmap: bool = False) -> dict[str, Tensor]:
    """A ``.pth`` file holding a dict of name -> tensor, loaded with ``weights_only=True`` only; ``mmap``: its
    tensors map the file (nothing read until used) where its format allows (torch's zip format), else read.

    Anything else (a pickled object of another type, a function reference, a list, a non-tensor
    value, a file that is not a torch file) is refused with a one-line ElthError.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # an old (pre-zip) file cannot be mapped
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        glob = _weights_only_detail(str(e))
        if glob is not None:
            raise ElthError(f"refused {what} {path}: it holds a Python object that is not a tensor ({glob}); elth loads "
                            ".pth files with weights_only=True and never unpickles arbitrary objects") from None
        raise ElthError(f"{what} {path} is not a readable PyTorch tensor file ({_reason(e, path)}); copy it again from "
                        "the run folder") from None
    if not isinstance(obj, dict):
        raise ElthError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors (a state dict or a mask)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        k = bad[0]
        raise ElthError(f"{what} {path}: entry {k!r} is a {type(obj[k]).__name__}, not a tensor; "
                        "expected a dict of name -> tensor")
    return dict(obj)


# ----- reference keys -----------------------------------------------------------------------------
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


# ----- summaries ----------------------------------------------------------------------------------
def summary(ticket: Ticket) -> dict[str, Any]:
    """Counts for the import/export summaries."""
    kept, total = kept_and_total(ticket.masks)
    return {"arch": ticket.arch, "sparsity": ticket.sparsity, "prunable_weights": total, "kept_weights": kept,
            "rewind_step": ticket.rewind_step, "trained": ticket.is_trained,
            "sparsity_report": {"total": float(total), "unpruned": float(kept)}}
