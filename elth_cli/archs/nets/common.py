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


# The layers a ticket masks: every convolution (1-, 2- and 3-D) and every Linear layer, by their weight.
PRUNABLE_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(weight key, module)`` of every conv and Linear layer, in the module's order: what a ticket masks."""
    return [(f"{name}.weight" if name else "weight", module) for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_LAYERS) and isinstance(getattr(module, "weight", None), torch.Tensor)]


def prunable_keys_of(model: nn.Module) -> list[str]:
    """State-dict keys of every conv and Linear weight: what a ticket masks."""
    return [key for key, _ in prunable_modules(model)]


# The key suffix of an attention module's own products in the per-layer MAC counts (no state-dict key has it).
ATTENTION = "attention"


def attention_heads(module: nn.Module) -> tuple[int, int] | None:
    """``(heads, head_dim)`` of a multi-head attention module, or None for any other module.

    An attention module is one with integer ``num_heads`` and ``head_dim`` attributes: elth's ViT,
    timm's ``Attention`` and torch's ``nn.MultiheadAttention`` all have them. Its own products (Q K^T
    and the attention-weighted sum of V) are what the MAC count adds beyond its Linear layers.
    """
    heads, dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if isinstance(heads, int) and isinstance(dim, int) and heads > 0 and dim > 0:
        return heads, dim
    return None


def attention_macs(module: nn.Module, tokens: int) -> int:
    """Forward MACs per sample of attention's products over ``tokens`` tokens: Q K^T (tokens^2 x head_dim per
    head) and the weighted sum of V (as many)."""
    heads, dim = attention_heads(module) or (0, 0)
    return 2 * tokens * tokens * heads * dim


def meta_state(build: Callable[[], nn.Module]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build a model on the meta device (no memory, no init cost) and return its state and prunable keys."""
    with torch.device("meta"):
        model = build()
    return dict(model.state_dict()), prunable_keys_of(model)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward MACs per sample of every conv and Linear layer (by weight key) and attention module
    (``<module>.attention``) of a live module: ``elth_cli.flops.module_macs``, which documents it."""
    layers = prunable_modules(model)
    macs = dict.fromkeys((key for key, _ in layers), 0)

    def hook(key: str):
        def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            # Output elements per sample x multiply-adds behind each (a layer called twice counts twice).
            fan_in = module.weight[0].numel()  # conv: C_in / groups x kernel; linear: in_features
            macs[key] += output[0].numel() * fan_in

        return count

    def attention_hook(key: str):
        def count(module: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0]  # (batch, tokens, features), or (tokens, batch, features) for a sequence-first module
            first = getattr(module, "batch_first", True) or x.dim() == 2
            macs[key] += attention_macs(module, x.shape[1] if first and x.dim() == 3 else x.shape[0])

        return count

    handles = [module.register_forward_hook(hook(key)) for key, module in layers]
    for name, module in model.named_modules():
        if attention_heads(module) is not None:
            key = f"{name}.{ATTENTION}"
            macs[key] = 0
            handles.append(module.register_forward_hook(attention_hook(key)))
    modes = {m: m.training for m in model.modules()}
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()  # training-mode BatchNorm refuses one sample at 1x1, and would update its statistics
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return macs
