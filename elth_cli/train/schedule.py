"""The learning-rate schedule: step (open_lth's milestones) or cosine, each with a linear warm-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

from elth_cli.steps import parse_steps
from elth_cli.train.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """The LR schedule of a config with every step resolved to iterations (cheap to call per step)."""

    base: float
    kind: str
    total: int
    warmup: int
    milestones: tuple[int, ...]
    gamma: float

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int) -> "Schedule":
        return cls(cfg.lr, cfg.schedule, cfg.total_steps(steps_per_epoch), parse_steps(cfg.warmup, steps_per_epoch),
                   tuple(sorted(parse_steps(m, steps_per_epoch) for m in cfg.milestones)), cfg.gamma)

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            if self.warmup and step < self.warmup:
                return self.base * (step + 1) / self.warmup
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return self.base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        passed = sum(1 for m in self.milestones if step >= m)
        return self.base * factor * self.gamma**passed


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate of iteration ``step`` (0-based).

    step: ``lr * min(1, (step+1)/warmup) * gamma ** (milestones passed)`` (open_lth's LambdaLR, except
    that warm-up starts at lr/warmup rather than 0, so the first step is not wasted);
    cosine: linear warm-up, then cosine from ``lr`` to 0 over the remaining steps.
    """
    return Schedule.of(cfg, steps_per_epoch)(step)
