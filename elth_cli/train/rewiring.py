"""Dynamic sparse training as hooks of the training loop: RigL, SET and DPF.

* :class:`Rewiring` (RigL, Evci et al. 2020; SET, Mocanu et al. 2018): every ``every`` steps until
  ``until``, each layer drops the ``f * kept`` active weights of smallest magnitude and grows as
  many inactive ones: those with the largest dense gradient (RigL) or at random (SET). ``f``
  decays from the drop fraction to zero by cosine (RigL's schedule). Grown weights start at zero
  with no momentum (:meth:`~elth_cli.train.parts.MaskSet.update`); per-layer counts never change.
* :class:`GradualMagnitude` (DPF, Lin et al. 2020): the model trains with feedback
  (:class:`~elth_cli.train.parts.FeedbackMaskSet`: dense weights updated with the gradient of the
  masked network) and every ``every`` steps the mask is recomputed by global magnitude of the dense
  weights, at the sparsity of Zhu and Gupta's (2017) cubic schedule, which reaches the target at
  ``until``.

After ``until`` the mask is fixed. Each update is recorded in ``loop.state.extra["mask_updates"]``
(step, drop fraction or sparsity, fraction of active weights that moved), which checkpoints keep.
Randomness (SET's growth) is drawn from a generator seeded by the run's seed and the step, so a
resumed run makes the same choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from elth_cli.flops import FLOPS_PER_MAC, forward_macs
from elth_cli.prune import prune_to_sparsity
from elth_cli.train.loop import Hook, TrainLoop

UPDATES_KEY = "mask_updates"


@dataclass(frozen=True)
class UpdateSchedule:
    """When a dynamic mask changes: after every ``every`` steps, while fewer than ``until`` steps are done."""

    every: int
    until: int
    drop_fraction: float = 0.3

    @property
    def last(self) -> int:
        """The last step after which the mask changes (0: never)."""
        return self.until - self.until % self.every

    def updates_at(self, step: int) -> bool:
        """Whether the mask changes once ``step`` steps are done."""
        return 0 < step <= self.until and step % self.every == 0

    def fraction(self, step: int) -> float:
        """RigL's drop fraction after ``step`` steps: cosine decay from ``drop_fraction`` to 0 at ``until``."""
        return self.drop_fraction * 0.5 * (1 + math.cos(math.pi * min(step, self.until) / self.until))


def _record(loop: TrainLoop, entry: dict[str, Any]) -> None:
    loop.state.extra.setdefault(UPDATES_KEY, []).append(entry)


class Rewiring(Hook):
    """RigL (``growth="gradient"``) or SET (``growth="random"``) mask updates at fixed per-layer counts."""

    def __init__(self, growth: str, schedule: UpdateSchedule, keys: list[str], macs: dict[str, int],
                 seed: int = 0) -> None:
        if growth not in ("gradient", "random"):
            raise ValueError(f"growth must be gradient or random, not {growth!r}")
        self.growth, self.schedule, self.keys, self.macs, self.seed = growth, schedule, keys, macs, seed

    def on_step_end(self, loop: TrainLoop) -> None:
        step = loop.step
        if not self.schedule.updates_at(step):
            return
        fraction = self.schedule.fraction(step)
        masks, params = loop.masks(), dict(loop.model.named_parameters())
        new: dict[str, Tensor] = {}
        active = 0
        for key in self.keys:
            mask = masks[key]
            kept = int(mask.sum())  # a CPU tensor: no device sync
            active += kept
            n = round(fraction * kept)
            if 0 < n and kept < mask.numel():
                new[key] = self._rewired(params[key], mask, kept, n, step)
        if self.growth == "gradient":
            # RigL's update step needs the dense weight gradient: a dense pass instead of a sparse one.
            extra = forward_macs(self.macs) - forward_macs(self.macs, masks)
            loop.state.flops += loop.step_images * FLOPS_PER_MAC * extra
        changed = loop.set_masks(new) if new else 0
        _record(loop, {"step": step, "drop_fraction": round(fraction, 6),
                       "moved": round(changed / 2 / active, 6) if active else 0.0})

    @torch.no_grad()
    def _rewired(self, param: Tensor, mask: Tensor, kept: int, n: int, step: int) -> Tensor:
        """``mask`` with its ``n`` smallest active weights dropped and ``n`` inactive ones grown."""
        on = mask.to(param.device).reshape(-1)
        weight = param.detach().reshape(-1).float().abs()
        floor = torch.tensor(float("-inf"), device=param.device)
        survivors = torch.topk(torch.where(on, weight, floor), kept - n).indices
        after_drop = torch.zeros_like(on)
        after_drop[survivors] = True
        # Candidates: every weight off after the drop, the just-dropped included (as RigL).
        grow = torch.where(after_drop, floor, self._growth_scores(param, step))
        grown = torch.topk(grow, n).indices
        after_drop[grown] = True
        return after_drop.reshape(mask.shape).cpu()

    def _growth_scores(self, param: Tensor, step: int) -> Tensor:
        if self.growth == "gradient":
            grad = param.grad
            if grad is None:
                return torch.zeros(param.numel(), device=param.device)
            return torch.nan_to_num(grad.detach().reshape(-1).float().abs(), nan=0.0, posinf=0.0)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.rand(param.numel(), generator=gen).to(param.device)


def cubic_sparsity(step: int, target: float, until: int) -> float:
    """Zhu and Gupta's (2017) gradual schedule from 0: ``target * (1 - (1 - t / until) ** 3)``, then ``target``."""
    t = min(step, until) / until
    return target * (1 - (1 - t) ** 3)


class GradualMagnitude(Hook):
    """DPF's mask: global magnitude of the dense weights at the cubic schedule's sparsity.

    Needs a run with feedback (``train_state(..., feedback=True)``); ``exclude`` keys stay dense.
    """

    def __init__(self, target: float, schedule: UpdateSchedule, exclude: tuple[str, ...] = ()) -> None:
        self.target, self.schedule, self.exclude = target, schedule, exclude

    def on_step_end(self, loop: TrainLoop) -> None:
        step = loop.step
        if not self.schedule.updates_at(step):
            return
        mask_set = loop.parts.masks
        dense = getattr(mask_set, "dense", None)
        if dense is None:
            raise RuntimeError("GradualMagnitude needs a run with feedback (train_state(..., feedback=True))")
        sparsity = cubic_sparsity(step, self.target, self.schedule.last)  # the last update reaches the target
        scores = {k: d.detach().abs() for k, d in zip(mask_set.keys, dense)}
        everything = {k: torch.ones(d.shape, dtype=torch.bool, device=d.device) for k, d in scores.items()}
        new = prune_to_sparsity(scores, everything, sparsity, self.exclude)
        active = sum(int(m.sum()) for m in loop.masks().values())
        changed = loop.set_masks({k: m.cpu() for k, m in new.items()})
        _record(loop, {"step": step, "sparsity": round(sparsity, 6),
                       "moved": round(changed / active, 6) if active else 0.0})
