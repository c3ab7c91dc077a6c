"""``elth export``: a ticket written as an open_lth run folder, atomically (a temporary folder renamed into place).

The file names are decided first (:func:`plan_export`: the init at the rewind step, the trained
state at the final step, named as an imported ticket's files were), then everything is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import check_writable_folder, current_umask
from elth_cli.interop.importer import import_record
from elth_cli.interop.run_layout import MASK_FILE, REPORT_FILE, Step, parse_step_spec, to_reference_keys
from elth_cli.masks import kept_and_total
from elth_cli.ticket import Ticket
from elth_cli.ticket_checks import validate


@dataclass
class ExportPlan:
    """The files ``export`` writes, decided before anything is written."""

    init: Step
    trained: Step | None

    @property
    def files(self) -> list[str]:
        """The file names, in the order they are written: the mask, the model files, the report."""
        names = [MASK_FILE, self.init.filename]
        if self.trained is not None:
            names.append(self.trained.filename)
        return names + [REPORT_FILE]


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


class _KeepsErrors:
    """A file whose write errors are kept: torch.save reports one as a RuntimeError without its errno."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _save(obj: dict[str, Tensor], path: Path) -> None:
    """``torch.save`` straight into the file (a full disk is an OSError with its errno), flushed to the disk."""
    tensors = {}
    for k, v in obj.items():
        t = v.detach().to("cpu").contiguous()
        # torch.save writes whole storages: a view of a larger one is copied out, anything else written as it is.
        whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        tensors[k] = t if whole else t.clone()
    with open(path, "wb") as f:
        out = _KeepsErrors(f)
        try:
            torch.save(tensors, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
        f.flush()
        os.fsync(f.fileno())


def export_ticket(ticket: Ticket | list[Ticket], out_dir: str | os.PathLike[str], force: bool = False,
                  trained_step: str | None = None) -> ExportPlan:
    """Write a ticket as an open_lth run folder; atomic: a temporary folder renamed into place.

    ``ticket`` may come in a one-element list, which export empties once the weights are written: where
    the list held the only reference, the ticket's memory goes before the int 0/1 masks (as big as the
    weights) are made, so that one file's worth of tensors is held at a time.
    """
    out = Path(out_dir)
    _check_out_dir(out, force)
    holder = ticket if isinstance(ticket, list) else [ticket]
    validate(holder[0])
    plan = plan_export(holder[0], trained_step)
    out.parent.mkdir(parents=True, exist_ok=True)  # OUT_DIR is a folder to create, as find's --out-dir
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes the folder private (0700): give it the permissions a plain mkdir would.
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        _write_export(holder, plan, tmp)
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


def _write_export(holder: list[Ticket], plan: ExportPlan, tmp: Path) -> None:
    """The run folder's files, in ``tmp``: the weights, then (the ticket let go, where ``holder`` held the only
    reference) the masks."""
    ticket = holder[0]
    spec = ticket.spec
    _save(to_reference_keys(ticket.init, spec), tmp / plan.init.filename)
    if plan.trained is not None:
        _save(to_reference_keys(ticket.trained, spec), tmp / plan.trained.filename)
    masks = {k: m.clone() for k, m in ticket.masks.items()}
    unpruned, total = kept_and_total(masks)
    holder.clear()
    del ticket
    # open_lth's Mask.save: every prunable key, int32 0/1 (v.cpu().int()).
    _save(to_reference_keys({k: m.to(torch.int32) for k, m in masks.items()}, spec), tmp / MASK_FILE)
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
