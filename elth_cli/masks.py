"""Counting over mask dicts: kept weights, same layout, overlap (Jaccard, Hamming) of two masks.

A mask dict maps each prunable state-dict key to a tensor that is nonzero (True) where the weight
is kept. Tickets hold bool masks; open_lth's ``mask.pth`` holds int 0/1 ones, so every count here
treats "nonzero" as "kept". Masks may be torch tensors (on any device) or numpy arrays (a ticket read
without torch). This module is the one place these counts are made; it depends on numpy and
:mod:`elth_cli.errors` only (torch's own operations are used on torch tensors), so any layer of elth can
use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor

# What to do when two masks do not line up: the fix that compare's messages have always given.
ONE_ARCH_FIX = "compare masks of one architecture"


# ----- kept and total -----------------------------------------------------------------------------
def layer_counts(masks: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """Per key: (kept weights, all weights) of that mask."""
    return {key: (count_nonzero(m), m.size if isinstance(m, np.ndarray) else m.numel()) for key, m in masks.items()}


def count_nonzero(t: Any) -> int:
    """The nonzero entries of a torch tensor or numpy array."""
    if isinstance(t, np.ndarray):
        return int(np.count_nonzero(t))
    if t.device.type == "cpu" and str(t.dtype) != "torch.bfloat16":  # numpy counts several times faster
        return int(np.count_nonzero(t.detach().numpy()))
    return int(t.count_nonzero())


def kept_and_total(masks: Mapping[str, Tensor]) -> tuple[int, int]:
    """(kept weights, all weights) over every mask together."""
    kept = total = 0
    for k, n in layer_counts(masks).values():
        kept += k
        total += n
    return kept, total


def empty_layers(masks: Mapping[str, Tensor]) -> list[str]:
    """The keys whose mask keeps no weight at all (in the masks' order)."""
    return [key for key, (kept, total) in layer_counts(masks).items() if kept == 0 and total > 0]


def describe_keys(keys: list[str], shown: int = 4) -> str:
    """``a, b, c and 5 more``: a list of layer names for a one-line message."""
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def refuse_empty_layers(masks: Mapping[str, Tensor], what: str, fix: str, allow: bool = False) -> None:
    """Refuse masks that leave a layer without any weight (unless ``allow``): no signal passes through
    such a layer, so the network trains to chance. Masks that keep no weight at all are refused
    whatever ``allow`` says (a ticket's sparsity is below 1). ``what`` says whose masks they are,
    ``fix`` what to do instead."""
    kept, total = kept_and_total(masks)
    if total and not kept:
        raise UsageError(f"{what} prunes every one of the network's {total:,} weights; {fix}")
    empty = empty_layers(masks)
    if empty and not allow:
        raise UsageError(f"{what} leaves no weight in {len(empty)} layer{'s' if len(empty) > 1 else ''} "
                         f"({describe_keys(empty)}): nothing passes through {'them' if len(empty) > 1 else 'it'}, "
                         f"so the network cannot learn; {fix}, or pass --allow-empty-layers to go on anyway")


# ----- same layout --------------------------------------------------------------------------------
def layout_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> str | None:
    """The first way two mask dicts differ in keys or shapes, as a phrase; None when they line up."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))[0]
        return f"the masks cover different weights ({only!r} is in one only)"
    for key in a:
        if a[key].shape != b[key].shape:
            return f"mask {key!r} has shape {list(a[key].shape)} in one ticket and {list(b[key].shape)} in the other"
    return None


def same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Whether two mask dicts have the same keys and the same shape under every key."""
    return layout_difference(a, b) is None


def check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], fix: str = ONE_ARCH_FIX) -> None:
    """Raise UsageError ``"<first difference>; <fix>"`` unless the two mask dicts line up."""
    difference = layout_difference(a, b)
    if difference is not None:
        raise UsageError(f"{difference}; {fix}")


# ----- overlap ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """Counts of two masks A and B over the same weights: one layer, or several pooled by :func:`pooled`.

    The expected counts are those of independent random masks with A's and B's per-layer
    densities: for a layer of n weights at densities p and q, E|A∩B| = n p q and
    E|A∪B| = n (p + q - p q) (for independent Bernoulli masks and for uniformly random masks with
    exactly np and nq kept weights alike, the overlap then being hypergeometric with mean n p q).
    Pooled, they are summed layer by layer, so the pooled expectation respects each layer's density.
    """

    weights: int
    kept_a: int
    kept_b: int
    intersection: int
    union: int
    expected_intersection: float
    expected_union: float

    @property
    def jaccard(self) -> float:
        """|A∩B| / |A∪B|; 1.0 when both keep nothing (two empty sets are the same set, not 0/0)."""
        return self.intersection / self.union if self.union else 1.0

    @property
    def expected_random_jaccard(self) -> float:
        """E|A∩B| / E|A∪B|: a ratio of expectations, which differs from the expected ratio by O(1/n)."""
        return self.expected_intersection / self.expected_union if self.expected_union else 1.0

    @property
    def hamming(self) -> int:
        """Weights kept by one mask and pruned by the other: |A xor B| = |A∪B| - |A∩B|."""
        return self.union - self.intersection


def layer_overlap(a: Tensor, b: Tensor) -> Overlap:
    """The overlap of two masks of one layer (same shape)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
        n = a.size
    else:
        a, b = a.bool(), b.bool()
        n = a.numel()
    ka, kb = count_nonzero(a), count_nonzero(b)
    p, q = (ka / n, kb / n) if n else (0.0, 0.0)
    return Overlap(n, ka, kb, count_nonzero(a & b), count_nonzero(a | b), n * p * q, n * (p + q - p * q))


def layer_overlaps(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor,
                   fix: str = ONE_ARCH_FIX) -> dict[str, Overlap]:
    """Per key, the overlap of two mask dicts (or two single tensors, under the key ``""``).

    Raises UsageError (ending in ``fix``) when the masks do not have the same keys and shapes.
    """
    a_m, b_m = _as_masks(a), _as_masks(b)
    check_same_layout(a_m, b_m, fix)
    return {key: layer_overlap(a_m[key], b_m[key]) for key in a_m}


def pooled(overlaps: Iterable[Overlap]) -> Overlap:
    """Several layers' overlaps as one: every count and expectation summed."""
    weights = kept_a = kept_b = inter = union = 0
    e_inter = e_union = 0.0
    for o in overlaps:
        weights += o.weights
        kept_a += o.kept_a
        kept_b += o.kept_b
        inter += o.intersection
        union += o.union
        e_inter += o.expected_intersection
        e_union += o.expected_union
    return Overlap(weights, kept_a, kept_b, inter, union, e_inter, e_union)


def jaccard(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor) -> float:
    """|A∩B| / |A∪B| of the kept weights of two masks (all layers pooled); 1.0 when both keep nothing."""
    return pooled(layer_overlaps(a, b).values()).jaccard


def expected_random_jaccard(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor) -> float:
    """The Jaccard index two independent random masks with the same per-layer densities would have.

    The pooled value is sum(E|A∩B|) / sum(E|A∪B|) over the layers (see :class:`Overlap`).
    """
    return pooled(layer_overlaps(a, b).values()).expected_random_jaccard


def hamming(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor) -> int:
    """Number of weights kept by one mask and pruned by the other (masks as tensors or dicts of tensors)."""
    return pooled(layer_overlaps(a, b).values()).hamming


def _as_masks(masks: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
    # A bare tensor is a one-layer mask dict, so the same code serves single layers.
    return dict(masks) if isinstance(masks, Mapping) else {"": masks}
