"""Training and evaluating tickets, cut along its concepts:

* :mod:`.config`: :class:`TrainConfig` (each field with its flag and help), the recipes, overrides;
* :mod:`.schedule`: the LR schedule; the step notation itself lives in :mod:`elth_cli.steps`;
* :mod:`.options`: :class:`RunOptions`, how a run goes besides its recipe (checkpoint, logs, stops);
* :mod:`.parts`: masks, the training step, optimizer and scaler, evaluation;
* :mod:`.checkpoint`: the checkpoint file format (docs/checkpoint-format.md);
* :mod:`.loop` and :mod:`.hooks`: the loop and the events its hooks act on; :mod:`.rewiring` (dynamic
  sparse training) and :mod:`.convergence` (early-bird detection) are hooks;
* :mod:`.identity`: "is this the same run?" (resume, IMP run folders);
* :mod:`.run`: :func:`train_state` and :func:`train_ticket`;
* :mod:`.provenance`: what a trained ticket records about its run;
* :mod:`.session`: the one set-up of every command that trains;
* :mod:`.job`: one ticket trained into an output file (``train``, ``train --out-dir``, the demo), and
  :mod:`.several`, many of them on the worker pool.

Stop signals and their exit statuses are :mod:`elth_cli.runtime.signals` (re-exported here).

The names below are re-exported lazily (on first use), so that importing ``elth_cli.train.config``
for ``--help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("TrainConfig", "Flag", "RECIPES", "SCHEDULES", "default_recipe", "config_from_options",
                     "config_overrides", "validate_config", "recipe_name"), "config"),
    **dict.fromkeys(("parse_steps", "normalise_steps", "parse_step_list"), "elth_cli.steps"),
    **dict.fromkeys(("Schedule", "lr_at"), "schedule"),
    **dict.fromkeys(("MaskSet", "TrainStep", "TrainParts", "build_parts", "make_optimizer", "evaluate"), "parts"),
    **dict.fromkeys(("RunOptions", "run_options"), "options"),
    **dict.fromkeys(("TrainJob", "DataOptions", "Setup", "JobResult", "train_file", "dataset_for"), "job"),
    **dict.fromkeys(("CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Checkpoint", "EpochStats", "RunState",
                     "checkpoint_path_for", "cpu_state", "read_checkpoint", "remove_checkpoint", "restore_checkpoint",
                     "save_checkpoint", "state_fingerprint"), "checkpoint"),
    **dict.fromkeys(("EXIT_STOPPED", "EXIT_INTERRUPTED", "StopFlag", "stop_signals", "TrainingStopped"),
                    "elth_cli.runtime.signals"),
    **dict.fromkeys(("Hook", "TrainLoop", "StopCheck"), "loop"),
    **dict.fromkeys(("Reporter", "DivergenceCheck", "Evaluation", "Snapshots", "Checkpointing", "JsonLines",
                     "Progress", "standard_hooks"), "hooks"),
    **dict.fromkeys(("run_differences",), "identity"),
    **dict.fromkeys(("TrainResult", "train_state", "train_ticket", "run_identity"), "run"),
    **dict.fromkeys(("environment", "run_config", "train_summary", "trained_ticket"), "provenance"),
    **dict.fromkeys(("Session", "training_session", "save_result"), "session"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'elth_cli.train' has no attribute {name!r}")
    module = importlib.import_module(where if where.startswith("elth_cli.") else f"elth_cli.train.{where}")
    value = getattr(module, name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
