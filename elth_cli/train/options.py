"""How one training runs besides its recipe: :class:`RunOptions`.

:class:`~elth_cli.train.config.TrainConfig` is *what* a run trains with (the recipe: the values a
result depends on, recorded in the ticket and compared on resume). :class:`RunOptions` is *how*
it runs: where it checkpoints and logs, how it stops and reports, which hooks join it. These
change no result, so they are not part of a run's identity.

A field that a command line sets carries its flag (:class:`~elth_cli.train.config.Flag`, the same
record the recipe's fields carry): the commands build their options from it, so a new run option
is one field here, with its flag, and its use. This module does not import torch (``--help``
reads it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from elth_cli.errors import TENSORBOARD_MISSING, UsageError
from elth_cli.fileio import check_writable_folder
from elth_cli.train.config import CHECKPOINT_EVERY_S, Flag

if TYPE_CHECKING:
    from elth_cli.runtime.device import DeviceSetup
    from elth_cli.runtime.signals import StopFlag
    from elth_cli.train.hooks import Reporter
    from elth_cli.train.loop import Hook

RESUME_MODES = ("auto", "require", "never")


def _flag(decls: str | tuple[str, ...], help: str, type_: Any, panel: str, default: Any) -> Any:
    decls = (decls,) if isinstance(decls, str) else decls
    return field(default=default, metadata={"flag": Flag(decls, help, type_, panel)})


@dataclass(frozen=True)
class RunOptions:
    """How a training runs (none of it changes the result).

    ``checkpoint_path``: the resumable checkpoint (None: none; a stop then cannot be resumed),
    written at an epoch's end every ``checkpoint_every_s`` seconds (0: every epoch; several
    processes: every epoch) and on a stop. ``resume``: ``auto`` continues from an existing
    checkpoint, ``require`` insists on one, ``never`` starts over. ``jsonl_path``: one JSON line per
    epoch. ``log_dir``: TensorBoard event files of the epochs (:class:`~elth_cli.train.hooks.TensorBoard`;
    needs the ``tensorboard`` extra, checked here). ``log``: the progress reporter. ``stop``: a flag
    someone else's signal handlers set (a pool worker's: then ``handle_signals=False``);
    ``stop_at_step`` stops as a signal would (tests).
    ``hooks`` join the standard ones (:mod:`elth_cli.train.hooks`). ``allow_empty_layers``: train a
    mask that leaves a layer without any weight. ``setup``: the device choices, if not the data's.
    """

    checkpoint_path: Optional[Path] = None
    checkpoint_every_s: float = _flag(
        "--checkpoint-every", "Write a checkpoint at an epoch's end when this long has passed since the last "
        f"(seconds; default {CHECKPOINT_EVERY_S:g}; 0: every epoch); a stop (SIGTERM, SIGUSR1, Ctrl-C) always writes "
        "one. Several processes write one every epoch.", Optional[float], "Output", CHECKPOINT_EVERY_S)
    resume: str = "auto"
    jsonl_path: Optional[Path] = None
    log_dir: Optional[Path] = _flag(
        "--log-dir", "The folder for TensorBoard event files: each epoch's numbers as scalars (train/loss, "
        "test/acc, lr, ...) at its step, for TensorBoard, W&B or MLflow (docs/training.md, Tracking); needs "
        "pip install 'elth[tensorboard]'.", Optional[Path], "Output", None)
    log: Optional[Reporter] = None
    stop: Optional[StopFlag] = None
    handle_signals: bool = True
    stop_at_step: Optional[int] = None
    title: str = "training"
    hooks: tuple[Hook, ...] = ()
    allow_empty_layers: bool = _flag(
        "--allow-empty-layers", "Go on with a mask that leaves a layer without any weight (refused otherwise: nothing "
        "passes through such a layer).", bool, "Method", False)
    setup: Optional[DeviceSetup] = None

    def __post_init__(self) -> None:
        if self.resume not in RESUME_MODES:
            raise UsageError(f"resume must be auto, require or never, not {self.resume!r}")
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0):
            raise UsageError(f"--checkpoint-every must be 0 or more seconds, got {self.checkpoint_every_s}")
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path, Path):
            object.__setattr__(self, "checkpoint_path", Path(self.checkpoint_path))
        if self.jsonl_path is not None and not isinstance(self.jsonl_path, Path):
            object.__setattr__(self, "jsonl_path", Path(self.jsonl_path))
        if self.log_dir is not None:
            require_tensorboard()  # here, before any work: the hook that writes starts with the training
            if not isinstance(self.log_dir, Path):
                object.__setattr__(self, "log_dir", Path(self.log_dir))
        object.__setattr__(self, "hooks", tuple(self.hooks))

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """The fields that are command-line options, by field name."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls) if "flag" in f.metadata}

    def replace(self, **changes: Any) -> "RunOptions":
        """A copy with ``changes`` (checked)."""
        return dataclasses.replace(self, **changes)


def require_tensorboard() -> None:
    """Refuse ``--log-dir`` when tensorboard is not installed: an optional extra (pyproject.toml), found here
    without importing it (the CLI's start-up must not pay for it; the hook imports it when the run starts)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):  # a broken installation, or a module set to None to hide it
        found = False
    if not found:
        raise UsageError(TENSORBOARD_MISSING)


def check_log_dir(path: str | os.PathLike[str]) -> None:
    """Before any work: ``--log-dir`` can be had (tensorboard installed) and written (a folder, or one that
    can be made)."""
    require_tensorboard()
    check_writable_folder(path, f"--log-dir {path}", create=True)


def run_options(run: RunOptions | None = None, **options: Any) -> RunOptions:
    """``run`` (default: the defaults) with ``options`` by field name: the keyword form the Python API takes
    (``train_ticket(ticket, bundle, cfg, checkpoint_path=..., stop_at_step=...)``)."""
    base = run or RunOptions()
    unknown = set(options) - {f.name for f in dataclasses.fields(RunOptions)}
    if unknown:
        raise TypeError(f"not a run option: {', '.join(sorted(unknown))} (see elth_cli.train.RunOptions)")
    return base.replace(**options) if options else base
