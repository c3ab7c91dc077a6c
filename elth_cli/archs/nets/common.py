"""Torch helpers shared by every family: open_lth's init, prunable keys, meta-device state."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def open_lth_init(module: nn.Module) -> None:
    """open_lth's default initialisation: Kaiming-normal conv/linear weights, BN gamma~U[0,1), beta=0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.0, 1.0)
        nn.init.zeros_(module.bias)


def prunable_keys_of(model: nn.Module) -> list[str]:
    """State-dict keys of every Conv2d and Linear weight: what a ticket masks."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            keys.append(f"{name}.weight" if name else "weight")
    return keys


def meta_state(build: Callable[[], nn.Module]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build a model on the meta device (no memory, no init cost) and return its state and prunable keys."""
    with torch.device("meta"):
        model = build()
    return dict(model.state_dict()), prunable_keys_of(model)
