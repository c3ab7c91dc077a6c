"""What a trained ticket records about the run that made it: config, metrics, software and hardware."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from typing import Any, Mapping

import torch

from elth_cli import __version__
from elth_cli.runtime import distributed
from elth_cli.runtime.device import DeviceSetup, device_name
from elth_cli.ticket import Ticket, apply_masks, now_utc


def environment(device: torch.device, setup: DeviceSetup | None = None) -> dict[str, Any]:
    """The software and hardware a run used: versions, device, its choices, processes, host (JSON-ready)."""
    cudnn = None
    with contextlib.suppress(Exception):  # a CPU-only torch has no cuDNN to ask
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env = {
        "elth": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built for (None: a CPU-only build)
        "cudnn": cudnn,
        "device": device_name(device),
        # CPU results depend on the thread count (reductions split differently): what it was.
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        **distributed.describe(),  # world_size, launcher, backend, hostname (rank 0's)
    }
    if setup is not None:
        env["device_setup"] = setup.as_dict()
    return env


def run_config(command: str, hparams: Mapping[str, Any], device: torch.device,
               setup: DeviceSetup | None = None) -> dict[str, Any]:
    """A ticket's ``config`` metadata: the command, every resolved hyperparameter, the environment."""
    return {"command": command, "hparams": dict(hparams), "environment": environment(device, setup)}


def trained_ticket(ticket: Ticket, state: dict[str, Any], masks: dict[str, Any], hparams: dict[str, Any],
                   metrics: dict[str, Any], config: dict[str, Any], dataset: str) -> Ticket:
    """``ticket`` after training: every field kept (provenance, cost, ...), with ``trained`` weights, the
    masks in force at the end, ``hparams``, ``metrics`` and ``config`` added."""
    if ticket.hparams:
        hparams = {**hparams, "ticket_hparams": ticket.hparams}  # how the mask and init were made, kept
    if ticket.dataset and ticket.dataset != dataset:  # a ticket found on one data set, trained on another
        hparams = {**hparams, "data_transfer": {"from": ticket.dataset, "to": dataset,
                                                "new_head": "new_head" in (ticket.hparams or {})}}
    rewired = any(not torch.equal(masks[k], ticket.masks[k]) for k in ticket.masks)
    if not rewired:
        masks = ticket.masks
    return dataclasses.replace(
        ticket,
        masks=masks,
        init=apply_masks(ticket.init, masks) if rewired else ticket.init,
        trained=apply_masks(state, masks),
        hparams=hparams,
        metrics=metrics,
        config=config,
        dataset=dataset,  # what it is trained for now (data_transfer records where it came from)
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
