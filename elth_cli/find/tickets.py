"""Fresh tickets: a seeded network of an architecture, dense, where every search starts (a random one is
:func:`elth_cli.find.baselines.random_ticket`)."""

from __future__ import annotations

from typing import Any

import torch

from elth_cli import archs, data
from elth_cli.ticket import Ticket

# What a fresh network cost: nothing (a ticket's ``cost`` is what obtaining its mask and init took).
NO_COST: dict[str, Any] = {"train_steps": 0, "train_seconds": 0.0, "trainings": 0, "train_flops": 0.0,
                           "dense_train_flops": 0.0}


# How a fresh network's weights were drawn, by the family's ``init``: what its ticket records.
INIT_NOTES = {"open_lth": "kaiming_normal, bn uniform (open_lth)", "model": "the model's own"}


def fresh_ticket(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0,
                 dataset: str | None = None) -> Ticket:
    """A freshly initialised network (its family's init, seeded) with nothing pruned: where every search starts."""
    spec = archs.resolve_arch(arch)
    model = archs.build_model(spec, input_shape, num_classes, seed=seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {k: torch.ones(state[k].shape, dtype=torch.bool)
             for k in archs.prunable_keys(spec, input_shape, num_classes)}
    return Ticket(
        arch=spec.name, input_shape=tuple(input_shape), num_classes=num_classes, masks=masks, init=state,
        method="random", rewind_step=0, dataset=dataset,
        hparams={"seed": seed, "init": INIT_NOTES[archs.family_of(spec).init]},
        cost=dict(NO_COST),
    )


def dense_ticket(arch: str, dataset: str, seed: int = 0, data_dir: str | None = None) -> Ticket:
    """A freshly initialised dense network for ``dataset``'s input shape and classes, as a ticket."""
    info = data.get_dataset_info(dataset, data_dir)
    return fresh_ticket(arch, info.input_shape, info.num_classes, seed, dataset=info.name)


