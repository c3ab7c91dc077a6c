"""Moving a network's units (elth_cli.archs.units): permutations, and the matchings that find them.

A *unit map* of a group is a long tensor ``m`` over the units of the result: result unit ``i`` is unit
``m[i]`` of the input. A permutation is a unit map of the group's own size; width transfer uses maps
to more units (duplicates) or fewer (a selection). :func:`take_units` applies maps to a state dict (or a
mask dict) on every axis the units describe, so a permuted network computes exactly what the original
did. Two matchings find the permutations that carry one network's units onto another's (Ainsworth
et al., "Git Re-Basin", ICLR 2023; Adnan et al., ICML 2025, for lottery-ticket masks):

* :func:`weight_matching`: coordinate ascent over the groups, each step a linear assignment
  (``scipy.optimize.linear_sum_assignment``) maximising the inner product of the two networks'
  weights, with every other group held at its current permutation; no data.
* :func:`activation_matching`: each group on its own, the assignment that maximises the correlation
  of the two networks' activations at the group's probes over some inputs.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from elth_cli.archs.units import STATISTICS, Units
from elth_cli.errors import UsageError

Maps = Mapping[str, Tensor]


def identity_maps(units: Units) -> dict[str, Tensor]:
    """Every group's identity permutation."""
    return {name: torch.arange(g.size) for name, g in units.groups.items()}


def random_permutations(units: Units, generator: torch.Generator) -> dict[str, Tensor]:
    """A uniformly random permutation of every group's units."""
    return {name: torch.randperm(g.size, generator=generator) for name, g in units.groups.items()}


def inverse(perms: Maps) -> dict[str, Tensor]:
    """The permutations that undo ``perms``."""
    return {name: torch.argsort(p) for name, p in perms.items()}


def compose(first: Maps, then: Maps) -> dict[str, Tensor]:
    """The permutations that apply ``first`` and then ``then`` (unit ``i`` of the result is unit
    ``first[then[i]]`` of the input)."""
    return {name: first[name][then[name]] for name in first}


def element_index(units: Units, key: str, axis: int, unit_map: Tensor, length: int) -> Tensor:
    """The elements of ``axis`` of ``key`` (``length`` long in the input) that a unit map picks: every copy of
    the group on the axis, every element of each chosen unit."""
    dims, copies = units.groups[units.axes[key][axis]].unit_dims, units.copies(key, axis, length)
    per_unit = (unit_map.long()[:, None] * dims + torch.arange(dims)[None, :]).reshape(-1)
    return (torch.arange(copies)[:, None] * (length // copies) + per_unit[None, :]).reshape(-1)


def take_units(state: Mapping[str, Tensor], units: Units, maps: Maps, scale_fan_in: bool = False) -> dict[str, Tensor]:
    """``state`` (a state dict or masks) with ``maps`` applied on every axis of a mapped group.

    ``scale_fan_in``: a weight that sums over a group's units has each input unit divided by the number of
    times its source unit appears in the map (duplicates share the source's contribution) and, where the map
    keeps only some of the source's units, multiplied by the source's units over the kept ones: widening by
    duplication keeps the network's function exactly, and narrowing undoes it."""
    out = {}
    for key, t in state.items():
        axes = units.axes.get(key, ())
        for axis, g in enumerate(axes):
            if g is None or g not in maps:
                continue
            length = t.shape[axis]
            t = t.index_select(axis, element_index(units, key, axis, maps[g], length))
            if scale_fan_in and units.fan_in.get(key) == axis and t.is_floating_point():
                t = t * _fan_in_factor(units, key, axis, maps[g], length, t.dim()).to(t.dtype)
        out[key] = t
    return out


def _fan_in_factor(units: Units, key: str, axis: int, unit_map: Tensor, length: int, ndim: int) -> Tensor:
    """Per element of the mapped axis, shaped to broadcast: the factor that keeps the sum over the inputs
    (see :func:`take_units`)."""
    group = units.groups[units.axes[key][axis]]
    copies = units.copies(key, axis, length)
    source_units = length // copies // group.unit_dims
    counts = torch.bincount(unit_map.long(), minlength=source_units).double()
    present = int((counts > 0).sum())
    per_unit = (source_units / present) / counts[unit_map.long()]
    shape = [1] * ndim
    shape[axis] = -1
    return per_unit.repeat_interleave(group.unit_dims).repeat(copies).view(shape)


def permute(state: Mapping[str, Tensor], units: Units, perms: Maps) -> dict[str, Tensor]:
    """``state`` with its units permuted (a network that computes what ``state``'s did)."""
    return take_units(state, units, perms)


# ----- weight matching -----------------------------------------------------------------------------------
def _unit_rows(t: Tensor, units: Units, key: str, axis: int) -> Tensor:
    """``t`` as one row per unit of the group on ``axis`` (its copies and every other axis flattened)."""
    group = units.groups[units.axes[key][axis]]
    moved = t.movedim(axis, 0)
    copies = units.copies(key, axis, t.shape[axis])
    rows = moved.reshape(copies, group.size, group.unit_dims, -1).transpose(0, 1)
    return rows.reshape(group.size, -1)


def _permuted_except(t: Tensor, units: Units, key: str, skip: int, perms: Maps) -> Tensor:
    """``t`` with ``perms`` applied on every axis of ``key`` but ``skip``."""
    for axis, g in enumerate(units.axes[key]):
        if g is not None and axis != skip and g in perms:
            t = t.index_select(axis, element_index(units, key, axis, perms[g], t.shape[axis]))
    return t


def matched_keys(units: Units, state: Mapping[str, Tensor]) -> list[str]:
    """The tensors weight matching compares: every floating one with a unit axis, running statistics left out."""
    return [k for k, t in state.items() if t.is_floating_point() and any(units.axes.get(k, ()))
            and not k.endswith(STATISTICS)]


def weight_matching(units: Units, a: Mapping[str, Tensor], b: Mapping[str, Tensor], seed: int = 0,
                    max_sweeps: int = 100) -> dict[str, Tensor]:
    """Permutations of ``a``'s units that make ``a`` closest to ``b`` (``permute(a, units, result) ~ b``): the
    largest sum of inner products of their weights, by coordinate ascent over the groups in a seeded random
    order until a whole sweep changes nothing."""
    from scipy.optimize import linear_sum_assignment

    keys = matched_keys(units, a)
    entries = {g: [(k, ax) for k, ax in units.entries(g) if k in keys] for g in units.groups}
    perms = identity_maps(units)
    gen = torch.Generator().manual_seed(seed)
    names = list(units.groups)
    for _ in range(max_sweeps):
        changed = False
        for i in torch.randperm(len(names), generator=gen).tolist():
            g = names[i]
            size = units.groups[g].size
            cost = torch.zeros(size, size, dtype=torch.float64)
            for key, axis in entries[g]:
                rows_a = _unit_rows(_permuted_except(a[key].double(), units, key, axis, perms), units, key, axis)
                cost += _unit_rows(b[key].double(), units, key, axis) @ rows_a.T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            idx = torch.arange(size)
            if float(cost[idx, new].sum()) > float(cost[idx, perms[g]].sum()) + 1e-9 * (1 + float(cost.abs().max())):
                perms[g], changed = new, True
        if not changed:
            break
    return perms


# ----- activation matching -------------------------------------------------------------------------------
class _Moments:
    """Running sums of two networks' activations at one probe: what their correlation needs."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: list[Tensor] = []

    def add(self, xa: Tensor, xb: Tensor) -> None:
        sums = [xa.sum(0), xb.sum(0), (xa * xa).sum(0), (xb * xb).sum(0), xb.T @ xa]
        self.sums = sums if not self.sums else [s + t for s, t in zip(self.sums, sums)]
        self.n += xa.shape[0]

    def correlation(self) -> Tensor:
        """corr[i, j]: of ``b``'s element ``i`` and ``a``'s element ``j`` (0 where one of them is constant)."""
        sa, sb, saa, sbb, sab = (s / self.n for s in self.sums)
        std_a = (saa - sa * sa).clamp_min(0).sqrt()
        std_b = (sbb - sb * sb).clamp_min(0).sqrt()
        cov = sab - sb[:, None] * sa[None, :]
        return cov / (std_b[:, None] * std_a[None, :]).clamp_min(1e-12)


def _record(model: nn.Module, units: Units, seen: dict[tuple[str, int], Tensor]) -> list:
    """Hooks on ``model`` that put each probe's activations, one row per position, into ``seen``."""
    modules = dict(model.named_modules())
    handles = []
    for name, group in units.groups.items():
        for i, probe in enumerate(group.probes):
            if probe.module not in modules:
                raise UsageError(f"the units probe {probe.module!r}, which is not a module of the network")

            def keep(x: Tensor, slot: tuple[str, int] = (name, i), axis: int = probe.axis) -> None:
                seen[slot] = x.detach().movedim(axis, -1).reshape(-1, x.shape[axis]).double()

            module = modules[probe.module]
            if probe.where == "in":
                handles.append(module.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    return handles


def activation_matching(units: Units, model_a: nn.Module, model_b: nn.Module, inputs: Iterable[Tensor]) -> dict[str, Tensor]:
    """Permutations of ``model_a``'s units that match ``model_b``'s by the correlation of their activations at
    each group's probes over ``inputs`` (both in eval mode): each group's assignment maximises the summed
    correlation of matched units (a head's: of its dimensions in order). A group without probes keeps its order."""
    from scipy.optimize import linear_sum_assignment

    moments: dict[tuple[str, int], _Moments] = {}
    seen_a: dict[tuple[str, int], Tensor] = {}
    seen_b: dict[tuple[str, int], Tensor] = {}
    handles = _record(model_a, units, seen_a) + _record(model_b, units, seen_b)
    modes = (model_a.training, model_b.training)
    model_a.eval(), model_b.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model_a(x), model_b(x)
                for slot, xa in seen_a.items():
                    moments.setdefault(slot, _Moments()).add(xa, seen_b[slot])
    finally:
        for h in handles:
            h.remove()
        model_a.train(modes[0]), model_b.train(modes[1])
    if not moments:
        raise UsageError("matching by activations needs at least one batch of inputs")
    perms = identity_maps(units)
    for name, group in units.groups.items():
        slots = [s for s in moments if s[0] == name]
        if not slots:
            continue
        n, dims = group.size, group.unit_dims
        score = sum(moments[s].correlation().view(n, dims, n, dims).diagonal(dim1=1, dim2=3).sum(-1) for s in slots)
        _, cols = linear_sum_assignment(score.numpy(), maximize=True)
        perms[name] = torch.as_tensor(cols, dtype=torch.long)
    return perms
