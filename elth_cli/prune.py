"""Pruning scores and exact-sparsity masks."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elth_cli.errors import UsageError
from elth_cli.masks import count_nonzero, kept_and_total
from elth_cli.ticket_checks import as_array

RANDOM_DISTRIBUTIONS = ("layerwise", "global", "erk")


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


def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float, dense: Iterable[str] = (),
                  power: float = 1.0) -> dict[str, float]:
    """Per-layer densities of the Erdos-Renyi-Kernel distribution at overall ``sparsity``.

    A layer's density is proportional to ``(sum of its dimensions / product of its dimensions) ** power``
    (Evci et al. 2020, RigL's ``get_sparsities_erdos_renyi``; Mocanu et al. 2018 for the
    fully connected case): small layers and ones with few inputs per output stay denser. The scale
    is chosen so the kept weights add up to ``(1 - sparsity)`` of all; a layer whose density would
    exceed 1 is made dense and the rest rescaled, as RigL does. ``dense`` keys are kept dense.
    """
    check_sparsity(sparsity)
    dense_keys = set(dense)
    while True:
        kept_budget = (1 - sparsity) * sum(math.prod(s) for s in shapes.values())
        kept_budget -= sum(math.prod(shapes[k]) for k in dense_keys)
        raw = {k: (sum(s) / math.prod(s)) ** power for k, s in shapes.items() if k not in dense_keys}
        if not raw:
            break
        scale = kept_budget / sum(raw[k] * math.prod(shapes[k]) for k in raw)
        over = [k for k, r in raw.items() if r * scale > 1]
        if not over:
            break
        top = max(raw[k] for k in over)
        dense_keys.update(k for k in over if raw[k] == top)
    if raw and scale < 0:
        raise UsageError(f"sparsity {sparsity} is impossible with {', '.join(sorted(dense)) or 'no layer'} kept dense")
    return {k: 1.0 if k in dense_keys else raw[k] * scale for k in shapes}


def erk_layer_counts(shapes: dict[str, tuple[int, ...]], sparsity: float, dense: Iterable[str] = (),
                     power: float = 1.0) -> dict[str, int]:
    """Pruned weights per layer for ERK at exactly ``round(sparsity * total)`` pruned (largest remainders)."""
    densities = erk_densities(shapes, sparsity, dense, power)
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    target = round(sparsity * sum(sizes.values()))
    raw = {k: (1 - densities[k]) * sizes[k] for k in shapes}
    counts = {k: min(sizes[k], math.floor(r + 1e-9)) for k, r in raw.items()}
    left = target - sum(counts.values())
    for k in sorted(shapes, key=lambda k: raw[k] - counts[k], reverse=True):
        if left <= 0:
            break
        if counts[k] < sizes[k] and densities[k] < 1.0:
            counts[k] += 1
            left -= 1
    return counts


# ----- exact pruning by scores ---------------------------------------------------------------------
def prune_lowest(
    scores: Mapping[str, Tensor], masks: dict[str, Tensor], n_prune: int, exclude: Iterable[str] = ()
) -> dict[str, Tensor]:
    """New masks with the ``n_prune`` lowest-scoring surviving weights removed, over all tensors together.

    Only weights that survive in ``masks`` and whose key is not in ``exclude`` compete. The
    threshold is the exact ``n_prune``-th smallest surviving score: ``torch.kthvalue`` on a GPU (no
    host copy of the weights); on the CPU, with numpy, a partition of one layer's survivors or a
    two-pass radix selection over several layers (:func:`kth_smallest`: no copy of all the scores at
    once). Ties at the threshold are broken by position, so exactly ``n_prune`` weights go. ``scores``
    may compute each tensor's scores when asked (it is asked twice per key).
    """
    excluded = set(exclude)
    keys = [k for k in masks if k not in excluded]
    out = {k: m.clone() for k, m in masks.items()}
    if n_prune <= 0 or not keys:
        return out
    available = sum(count_nonzero(masks[k]) for k in keys)
    if n_prune > available:
        raise UsageError(f"cannot prune {n_prune} weights: only {available} prunable weights remain")
    if masks[keys[0]].device.type != "cpu":
        return _prune_on_device(scores, out, keys, n_prune)
    if len(keys) > 1:
        threshold, below = kth_smallest(lambda: _survivors(scores, masks, keys), n_prune)
        threshold = np.float32(threshold.item())
    else:
        values = next(_survivors(scores, masks, keys))
        threshold = np.partition(values, n_prune - 1)[n_prune - 1]  # (on a copy: the scores keep their order)
        below = int(np.count_nonzero(values < threshold))
    ties = n_prune - below  # everything strictly below the threshold goes; of the ties, as many as still needed
    for key in keys:
        score, m = as_array(scores[key]).astype(np.float32, copy=False), out[key].numpy()
        drop = (score < threshold) & m
        if ties > 0:
            tied = np.flatnonzero((score == threshold) & m)[:ties]
            ties -= tied.size
            drop.reshape(-1)[tied] = True
        m[drop] = False  # (m shares the new mask tensor's memory)
    return out


def _prune_on_device(scores: Mapping[str, Tensor], out: dict[str, Tensor], keys: list[str], n_prune: int
                     ) -> dict[str, Tensor]:
    """:func:`prune_lowest` with torch on the masks' device (a GPU): kthvalue of every survivor."""
    flat = torch.cat([scores[k][out[k]].float().reshape(-1) for k in keys])
    threshold = torch.kthvalue(flat, n_prune).values
    ties_to_prune = n_prune - int((flat < threshold).sum())
    for key in keys:
        score = scores[key].float()
        m = out[key]
        drop = (score < threshold) & m
        if ties_to_prune > 0:
            tie = ((score == threshold) & m).reshape(-1)
            tie_idx = tie.nonzero().squeeze(1)[:ties_to_prune]
            ties_to_prune -= int(tie_idx.numel())
            drop.view(-1)[tie_idx] = True
        m[drop] = False
    return out


def _survivors(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], keys: list[str]) -> Iterator[np.ndarray]:
    """Each layer's surviving scores as float32 numpy values, one layer at a time (numpy selects several times
    faster than torch; a layer with nothing pruned yet is taken whole, without a copy)."""
    for k in keys:
        values = as_array(scores[k]).astype(np.float32, copy=False).reshape(-1)
        alive = as_array(masks[k]).reshape(-1)
        yield values if alive.all() else values[alive]


def _sortable(values: np.ndarray) -> np.ndarray:
    """float32 values as uint32 keys in the same order (negatives' bits flipped, positives' sign bit set);
    -0.0 gets +0.0's key, as the two compare equal."""
    bits = (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32)  # (-0.0 + 0.0 is +0.0)
    keys = bits >> 31
    np.negative(keys, out=keys)  # all ones for a negative value, zero otherwise
    keys |= np.uint32(0x80000000)
    keys ^= bits
    return keys


def kth_smallest(parts: Callable[[], Iterable[Any]], k: int) -> tuple[Tensor, int]:
    """The exact ``k``-th smallest (1-based) of float32 values given in parts (numpy arrays or CPU tensors),
    and how many are strictly
    smaller: what ``torch.kthvalue`` of their concatenation gives, in two passes over the parts that never
    hold more than one part's keys (a histogram of the keys' high 16 bits, then of the low 16 bits of
    those in the bucket found)."""
    high = np.zeros(1 << 16, np.int64)
    for part in parts():
        high += np.bincount(_sortable(as_array(part)) >> 16, minlength=1 << 16)
    bucket = int(np.searchsorted(np.cumsum(high), k))  # the first bucket whose running count reaches k
    below = int(high[:bucket].sum())
    low = np.zeros(1 << 16, np.int64)
    for part in parts():
        keys = _sortable(as_array(part))
        low += np.bincount(keys[(keys >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    rest = int(np.searchsorted(np.cumsum(low), k - below))
    key = np.uint32((bucket << 16) | rest)
    bits = key & np.uint32(0x7FFFFFFF) if key >> 31 else ~key
    return torch.tensor(np.array([bits], np.uint32).view(np.float32)[0]), below + int(low[:rest].sum())


def prune_lowest_per_layer(
    scores: dict[str, Tensor], masks: dict[str, Tensor], counts: dict[str, int]
) -> dict[str, Tensor]:
    """Remove ``counts[key]`` lowest-scoring surviving weights from each tensor separately."""
    # Layer by layer, in order (random scores may be drawn as they are asked for), one new mask at a time.
    return {key: prune_lowest({key: scores[key]}, {key: m}, counts[key])[key] if counts.get(key, 0) > 0 else m.clone()
            for key, m in masks.items()}


def count_pruned(masks: dict[str, Tensor]) -> tuple[int, int]:
    """(pruned, total) over all masks."""
    kept, total = kept_and_total(masks)
    return total - kept, total


def prune_to_sparsity(
    scores: dict[str, Tensor], masks: dict[str, Tensor], sparsity: float, exclude: Iterable[str] = ()
) -> dict[str, Tensor]:
    """Prune the lowest scores until exactly ``round(sparsity * total)`` prunable weights are pruned."""
    check_sparsity(sparsity)
    pruned, total = count_pruned(masks)
    target = round(sparsity * total)
    if target < pruned:
        raise UsageError(
            f"the starting mask is already at {pruned / total:.4f} sparsity, above the requested {sparsity}; "
            "start from a denser ticket"
        )
    excluded = set(exclude)
    available, _ = kept_and_total({k: m for k, m in masks.items() if k not in excluded})
    if target - pruned > available:
        reachable = (pruned + available) / total
        raise UsageError(
            f"sparsity {sparsity} is impossible with {', '.join(sorted(excluded)) or 'nothing'} kept dense: "
            f"at most {reachable:.4f} is reachable; lower --sparsity or change --exclude"
        )
    return prune_lowest(scores, masks, target - pruned, excluded)


# ----- scores: higher = more important ------------------------------------------------------------
def magnitude_scores(state: dict[str, Tensor], keys: Iterable[str]) -> Mapping[str, Tensor]:
    """|w|: IMP's and one-shot magnitude pruning's criterion, worked out for a tensor when asked (a
    network's worth of scores is never held at once)."""
    return _Computed(list(keys), lambda k: state[k].detach().abs())


class _Computed(Mapping[str, Tensor]):
    """A mapping whose values are computed on each access by a pure function of the key."""

    def __init__(self, keys: list[str], compute: Callable[[str], Tensor]) -> None:
        self._keys, self._compute = keys, compute

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._compute(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _masked_params(model: nn.Module, keys: Iterable[str]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    return {k: params[k] for k in keys}


def _batches(bundle, n_batches: int, batch_size: int, seed: int):
    """A few unaugmented, shuffled training batches (the same ones for a given seed)."""
    steps = min(n_batches, bundle.steps_per_epoch(batch_size))
    it = bundle.train_batches(batch_size, epoch=0, seed=seed, augment=False)
    for _ in range(steps):
        yield next(it)


def snip_scores(model: nn.Module, keys: list[str], bundle, n_batches: int = 10, batch_size: int = 128,
                seed: int = 0) -> dict[str, Tensor]:
    """SNIP (Lee et al. 2019): |g * w|, with g the loss gradient summed over a few batches."""
    params = _masked_params(model, keys)
    model.zero_grad(set_to_none=True)
    model.train()
    for x, y in _batches(bundle, n_batches, batch_size, seed):
        F.cross_entropy(model(x), y).backward()
    return {k: (p.grad * p).detach().abs() for k, p in params.items()}


def grasp_scores(model: nn.Module, keys: list[str], bundle, n_batches: int = 10, batch_size: int = 128,
                 seed: int = 0, temperature: float = 200.0) -> dict[str, Tensor]:
    """GraSP (Wang et al. 2020), the original sign convention.

    GraSP removes the weights with the *largest* S(-w) = -w * Hg (removing them reduces gradient
    flow least). elth prunes the lowest scores, so the score returned is -S(-w) = w * Hg. (The
    E-LTH reference code instead keeps the largest |Hg * w|, which differs from the paper.)
    """
    params = _masked_params(model, keys)
    weights = list(params.values())
    model.train()
    batches = list(_batches(bundle, n_batches, batch_size, seed))
    grad_w = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y)
        for acc, g in zip(grad_w, torch.autograd.grad(loss, weights)):
            acc += g
    model.zero_grad(set_to_none=True)
    # Hessian-gradient products differentiate twice; the fused attention kernels (flash, memory-efficient) have no
    # second derivative, the math one does (a transformer's attention, elth's or timm's).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        for x, y in batches:
            loss = F.cross_entropy(model(x) / temperature, y)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            z = sum((g * gw.detach()).sum() for g, gw in zip(grads, grad_w))
            z.backward()  # accumulates Hg into .grad
    return {k: (p.grad * p).detach() for k, p in params.items()}


@torch.no_grad()
def _linearise(model: nn.Module) -> None:
    """Replace every float parameter and buffer by its absolute value, in place.

    Only ever applied to SynFlow's private copy of the model, so the signs need not be kept.
    """
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.abs_()


def synflow_masks(
    model: nn.Module, masks: dict[str, Tensor], sparsity: float, input_shape: tuple[int, int, int],
    iterations: int = 100, exclude: Iterable[str] = (),
) -> dict[str, Tensor]:
    """SynFlow (Tanaka et al. 2020): iterative, data-free pruning to exactly ``sparsity``.

    Each of ``iterations`` rounds scores |w * dR/dw| with R = sum(f(1)) of the network with all
    parameters replaced by their absolute values (BatchNorm in eval mode, float64 to avoid
    overflow in deep networks), then prunes to the exponentially scheduled density
    d_k = d^(k/iterations). No data is read: the input is a tensor of ones of ``input_shape``.
    """
    check_sparsity(sparsity)
    if iterations < 1:
        raise UsageError("synflow needs at least one iteration")
    work = copy.deepcopy(model).double().eval()
    _linearise(work)
    params = _masked_params(work, list(masks))
    current = {k: m.clone() for k, m in masks.items()}
    pruned0, total = count_pruned(masks)
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=next(work.parameters()).device)
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for key, p in params.items():
                p.mul_(current[key].to(p.dtype))
        work.zero_grad(set_to_none=True)
        work(ones).sum().backward()
        scores = {key: (p.grad * p).detach().abs() for key, p in params.items()}
        # Exponential schedule from the starting density to the target one.
        density0 = 1 - pruned0 / total
        density_k = density0 * ((1 - sparsity) / density0) ** (k / iterations)
        step_sparsity = sparsity if k == iterations else 1 - density_k
        current = prune_to_sparsity(scores, current, max(step_sparsity, count_pruned(current)[0] / total), exclude)
    return current
