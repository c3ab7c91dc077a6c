"""Multiply-accumulate (MAC) and FLOP counts of a network's forward pass, per layer and per sample.

Convention: only the Conv2d and Linear layers are counted, the layers a ticket masks. A conv's
MACs are its output elements (C_out x H_out x W_out) times the multiply-adds behind each one
(C_in / groups x kH x kW); a linear layer's are in_features x out_features. Bias adds, BatchNorm,
activations, pooling and the residual additions are not counted. A pruned layer costs its dense
MACs times its density (kept / total weights of its mask), the usual accounting for unstructured
sparsity (it assumes kernels that skip the zeros).

``layer_macs`` reads the shapes off the real model: it builds it on the meta device (no memory,
no init) and runs a meta input through forward hooks; ``module_macs`` runs one sample of zeros
through a live module (what training counts with), where it is. The registry's
torch-free count (``elth_cli.archs.summarize(...).macs``, what ``elth archs`` lists) must agree
with it; tests/test_flops.py checks that for every listed architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from elth_cli import archs

# FLOPs are counted as 2 per multiply-accumulate (the convention of RigL, Evci et al. 2020, and most pruning papers);
# training counts backward as twice the forward.
FLOPS_PER_MAC = 2
# Forward + backward, the backward pass (gradients of activations and of weights) costing twice the forward.
TRAINING_PASSES = 3


def module_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Forward multiply-accumulates per input sample of every Conv2d and Linear layer of a live module.

    Keyed by the layer's weight state-dict key, in the module's order (``archs.prunable_keys_of``).
    One sample of zeros goes through the module where it is (its device and dtype; a model built on
    the meta device runs on meta), in eval mode and without gradients: the module's weights,
    BatchNorm statistics and modes are left as they were. A real forward rather than a meta one:
    meta tensors run through torch's Python reference ops, whose first use imports torch._dynamo
    and sympy (1.1-1.8 s of every training process's start-up), while one sample of a small network
    costs milliseconds. Hand it the plain module, not a DDP or compiled wrapper.
    """
    from elth_cli.archs.nets.common import prunable_keys_of

    keys = prunable_keys_of(model)
    macs = dict.fromkeys(keys, 0)

    def hook(key: str):
        def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            # Output elements per sample x multiply-adds behind each (a layer called twice counts twice).
            fan_in = module.weight[0].numel()  # conv: C_in / groups x kH x kW; linear: in_features
            macs[key] += output[0].numel() * fan_in

        return count

    handles = [module.register_forward_hook(hook(f"{name}.weight" if name else "weight"))
               for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
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


@functools.lru_cache(maxsize=64)
def _layer_macs(spec: archs.ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> tuple[tuple[str, int], ...]:
    with torch.device("meta"):
        model = archs.family_of(spec).build(spec, tuple(input_shape), num_classes)
    return tuple(module_macs(model, input_shape).items())


def layer_macs(spec: archs.ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, int]:
    """Dense forward multiply-accumulates per input sample of every Conv2d and Linear layer.

    Keyed by the layer's weight state-dict key (``blocks.0.conv1.weight``, ``fc.weight``): exactly
    ``archs.prunable_keys(spec, input_shape, num_classes)``, in that order. Worked out on the meta
    device and cached; the caller gets its own dict.
    """
    return dict(_layer_macs(spec, tuple(input_shape), num_classes))


def dense_forward_macs(spec: archs.ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Dense forward multiply-accumulates per input sample of the whole network (conv and linear layers)."""
    return sum(m for _, m in _layer_macs(spec, tuple(input_shape), num_classes))


def forward_macs(macs: Mapping[str, int], masks: Mapping[str, torch.Tensor] | None = None) -> float:
    """Forward multiply-accumulates per sample with each layer at its mask's density.

    ``macs`` is ``layer_macs(...)``; a layer's cost is its dense MACs times kept / total of
    ``masks[key]``, and a layer without a mask counts dense. The kept counts are read back once per
    device the masks are on, never once per layer. A mask for a key ``macs`` does not have is an
    error (a ticket of another architecture, or keys with a prefix).
    """
    masks = masks or {}
    unknown = sorted(set(masks) - set(macs))
    if unknown:
        raise KeyError(f"masks for layers the MAC counts do not have: {', '.join(unknown[:5])}")
    total = float(sum(m for k, m in macs.items() if k not in masks))
    by_device: dict[torch.device, list[str]] = {}
    for key in macs:
        if key in masks:
            by_device.setdefault(masks[key].device, []).append(key)
    for keys in by_device.values():
        kept = torch.stack([masks[k].count_nonzero() for k in keys]).tolist()  # one read-back per device
        total += sum(macs[k] * n / max(masks[k].numel(), 1) for k, n in zip(keys, kept))
    return total


def training_flops_per_sample(macs: Mapping[str, int], masks: Mapping[str, torch.Tensor] | None = None) -> float:
    """FLOPs of one training step per sample: forward + backward (twice the forward), 2 FLOPs per MAC."""
    return FLOPS_PER_MAC * TRAINING_PASSES * forward_macs(macs, masks)

