"""Pruning scores and exact-sparsity masks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from elth_cli.errors import UsageError

RANDOM_DISTRIBUTIONS = ("layerwise", "global")


def check_sparsity(sparsity: float) -> float:
    """Sparsity is the pruned fraction, in [0, 1)."""
    if not (isinstance(sparsity, (int, float)) and math.isfinite(sparsity)) or not 0.0 <= sparsity < 1.0:
        hint = f" (did you mean {sparsity / 100:g}?)" if isinstance(sparsity, (int, float)) and 1 <= sparsity < 100 else ""
        raise UsageError(f"sparsity must be the fraction of weights pruned, in [0, 1); got {sparsity}{hint}")
    return float(sparsity)


def allocate_counts(sizes: list[int], sparsity: float) -> list[int]:
    """How many weights to prune per tensor so each is at ``sparsity`` and the total is exact.

    Every tensor gets floor(sparsity * size); the remainder of round(sparsity * total) goes to
    the tensors with the largest fractional parts (largest-remainder apportionment).
    """
    total = round(sparsity * sum(sizes))
    raw = [sparsity * n for n in sizes]
    counts = [min(n, math.floor(r)) for n, r in zip(sizes, raw)]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - counts[i], reverse=True)
    left = total - sum(counts)
    for i in order:
        if left <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            left -= 1
    return counts


def random_masks(
    shapes: dict[str, tuple[int, ...]], sparsity: float, generator: torch.Generator, distribution: str = "layerwise"
) -> dict[str, Tensor]:
    """Random masks at exactly ``sparsity`` overall.

    ``layerwise`` (the paper's random-pruning baseline): every tensor pruned at the same rate.
    ``global``: pruned weights drawn uniformly over all tensors together.
    """
    check_sparsity(sparsity)
    keys = list(shapes)
    sizes = [int(torch.Size(shapes[k]).numel()) for k in keys]
    if distribution == "layerwise":
        counts = allocate_counts(sizes, sparsity)
        masks = {}
        for key, n, k in zip(keys, sizes, counts):
            flat = torch.ones(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=generator)[:k]] = False
            masks[key] = flat.view(shapes[key])
        return masks
    if distribution == "global":
        total = sum(sizes)
        flat = torch.ones(total, dtype=torch.bool)
        flat[torch.randperm(total, generator=generator)[: round(sparsity * total)]] = False
        return {key: part.view(shapes[key]).clone() for key, part in zip(keys, torch.split(flat, sizes))}
    raise UsageError(f"unknown random distribution {distribution!r}; choose {' or '.join(RANDOM_DISTRIBUTIONS)}")
