"""Multiply-accumulate (MAC) and FLOP counts of a network's forward pass, per layer and per sample.

Convention: the conv and Linear layers are counted, the layers a ticket masks, and attention's own
products. A conv's MACs are its output elements (C_out x H_out x W_out) times the multiply-adds behind
each one (C_in / groups x kH x kW); a linear layer's are in_features x out_features per token. An
attention module (one with ``num_heads`` and ``head_dim``: elth's ViT, timm's, torch's) adds Q K^T and
the weighted sum of V, 2 x tokens^2 x heads x head_dim, under the key ``<module>.attention``: no mask
covers it, so it counts dense at any sparsity. Bias adds, norms, softmax, activations, pooling and the
residual additions are not counted. A pruned layer costs its dense
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
    """Forward multiply-accumulates per input sample of every conv and Linear layer of a live module.

    Keyed by the layer's weight state-dict key, in the module's order (``archs.prunable_keys_of``), then
    ``<module>.attention`` for each attention module.
    One sample of zeros goes through the module where it is (its device and dtype; a model built on
    the meta device runs on meta), in eval mode and without gradients: the module's weights,
    BatchNorm statistics and modes are left as they were. A real forward rather than a meta one:
    meta tensors run through torch's Python reference ops, whose first use imports torch._dynamo
    and sympy (1.1-1.8 s of every training process's start-up), while one sample of a small network
    costs milliseconds. Hand it the plain module, not a DDP or compiled wrapper.
    """
    from elth_cli.archs.nets.common import count_macs

    return count_macs(model, input_shape)


@functools.lru_cache(maxsize=64)
def _layer_macs(spec: archs.ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> tuple[tuple[str, int], ...]:
    with torch.device("meta"):
        model = archs.build_model(spec, tuple(input_shape), num_classes, initialise=False)
    return tuple(module_macs(model, input_shape).items())


def layer_macs(spec: archs.ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, int]:
    """Dense forward multiply-accumulates per input sample of every conv and Linear layer (and attention).

    Keyed by the layer's weight state-dict key (``blocks.0.conv1.weight``, ``fc.weight``): exactly
    ``archs.prunable_keys(spec, input_shape, num_classes)``, in that order, then one
    ``<module>.attention`` entry per attention module (dense at any sparsity). Worked out on the meta
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

