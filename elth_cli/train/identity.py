""""Is this the same run?": one comparison for resuming a checkpoint and for reusing an IMP run folder.

A run's identity is a JSON-ready dict: the training config (under one key, ``config`` in a
checkpoint, ``train`` in ``find.json``) and whatever else fixes the run (start step, steps per
epoch, number of processes, a fingerprint of the starting weights, IMP's options). A field added
to the config or the identity after a run started is absent from what that run recorded; it had
its default then, so both sides are compared with the defaults filled in.
"""

from __future__ import annotations

from typing import Any, Mapping

from elth_cli.train.config import TrainConfig

# Identity fields that older runs did not record, with the value they had.
IDENTITY_DEFAULTS: dict[str, Any] = {"world_size": 1}
# How a difference in an opaque field is described.
LABELS = {"source": "the ticket (its masks or init weights)"}


def run_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], config_key: str = "config") -> list[str]:
    """``name saved -> wanted`` for every field that differs (config fields by their own name, nested
    fields as ``parent.name``), in a stable order; empty when the runs are the same."""
    out: list[str] = []
    _compare(_with_defaults(saved, config_key), _with_defaults(wanted, config_key), (), config_key, out)
    return out


def _with_defaults(identity: Mapping[str, Any], config_key: str) -> dict[str, Any]:
    d = {**IDENTITY_DEFAULTS, **identity}
    if isinstance(d.get(config_key), dict):
        d[config_key] = {**TrainConfig.field_defaults(), **d[config_key]}
    return d


def _compare(saved: Any, wanted: Any, path: tuple[str, ...], config_key: str, out: list[str]) -> None:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted)):
            # The config's fields are named on their own ("lr", not "config.lr"): they are the flags.
            sub = path if not path and key == config_key else (*path, key)
            _compare(saved.get(key), wanted.get(key), sub, config_key, out)
        return
    if saved == wanted:
        return
    name = ".".join(path)
    out.append(LABELS.get(name) or f"{name} {saved!r} -> {wanted!r}")
