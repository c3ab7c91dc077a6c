"""Tickets across data sets: a new classifier for another class count (``elth train --new-head``).

A ticket found on one data set trains on another with the same input shape and class count as it
is; ``--resize`` adapts the input size on the data side (:func:`elth_cli.data.resized`). For another
class count, :func:`new_head` gives the ticket a classifier of the right size: re-initialised
(open_lth's init, seeded), with a random mask at the old classifier's sparsity, every other tensor
and mask kept. The trained ticket then records where it came from (``hparams.data_transfer``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from elth_cli import archs
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket, apply_masks


def new_head(ticket: Ticket, num_classes: int, seed: int = 0) -> Ticket:
    """``ticket`` with a fresh ``num_classes``-way classifier at the old classifier's sparsity."""
    if num_classes == ticket.num_classes:
        raise UsageError(f"the ticket already has {num_classes} classes; drop --new-head")
    spec, shape = ticket.spec, tuple(ticket.input_shape)
    fresh = archs.build_model(spec, shape, num_classes, seed=seed).state_dict()
    changed = [k for k, v in fresh.items() if tuple(v.shape) != tuple(ticket.init[k].shape)]
    head = archs.prunable_keys(spec, shape, num_classes)[-1]
    old = ticket.masks[head]
    density = float(old.float().mean())
    kept = max(1, round(density * fresh[head].numel())) if bool(old.any()) else 0
    gen = torch.Generator().manual_seed(seed + 7_100_003)
    mask = torch.zeros(fresh[head].numel(), dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=gen)[:kept]] = True
    masks = {**ticket.masks, head: mask.view(fresh[head].shape)}
    init = {k: (fresh[k] if k in changed else v).clone() for k, v in ticket.init.items()}
    record: dict[str, Any] = {"from_classes": ticket.num_classes, "classes": num_classes, "seed": seed,
                              "keys": changed, "sparsity": 1 - kept / mask.numel()}
    return dataclasses.replace(
        ticket, num_classes=num_classes, masks=masks, init=apply_masks(init, masks), trained=None, metrics=None,
        config=None, parents=[ticket.parent_record()] if ticket.sha256 else list(ticket.parents),
        hparams={**(ticket.hparams or {}), "new_head": record}, sha256=None)


def new_head_for(ticket: Ticket, dataset: str, data_dir: str | None = None, seed: int = 0) -> Ticket:
    """``--new-head``: :func:`new_head` with ``dataset``'s class count (read from its registry record)."""
    from elth_cli import data

    return new_head(ticket, data.get_dataset_info(dataset, data_dir).num_classes, seed)
