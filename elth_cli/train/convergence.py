"""Early-bird detection as a hook: the magnitude mask stops moving long before training ends.

You et al. (ICLR 2020, "Drawing early-bird tickets") observe that the mask a pruning step would
take settles early in training: they compare the mask of each epoch with the previous one by
normalised Hamming distance, keep the last 5 distances, and draw the ticket once all of them are
below 0.1. :class:`MaskConvergence` does that for unstructured global magnitude pruning: at every
epoch end, the mask keeping the largest ``|w|`` among the surviving weights of ``keys`` with
``n_pruned`` of them pruned in all (one threshold over every layer, worked out on the device; one
host read per epoch, the distance), and its distance to the previous epoch's (:func:`mask_distance`:
Hamming over the kept weights, so that one epsilon means the same at every sparsity).

The distance goes into the epoch's record (the run's JSON lines) as ``mask_distance``; the history
and the epoch of detection into ``loop.state.extra["early_bird"]``, which checkpoints keep with the
previous mask (``extra/early_bird/mask``), so a resumed run detects at the same epoch as an
uninterrupted one. With ``stop`` the run ends at the detecting epoch (:meth:`TrainLoop.end_early`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from elth_cli.errors import UsageError
from elth_cli.train.loop import Hook, TrainLoop

STATE_KEY = "early_bird"
MASK_KEY = "early_bird/mask"
DEFAULT_WINDOW = 5  # You et al. 2020: a FIFO queue of the last 5 distances
DEFAULT_EPSILON = 0.1  # You et al. 2020: every distance in the queue below 0.1


def check_detection(window: int, epsilon: float) -> None:
    """Refuse a detection rule that cannot work, naming the flag."""
    if not 1 <= window <= 1000:
        raise UsageError(f"--window must be a number of epochs from 1 to 1000, got {window}")
    if not (math.isfinite(epsilon) and 0 < epsilon <= 1):
        raise UsageError(f"--epsilon is a normalised Hamming distance, in (0, 1]; got {epsilon}")


def never_settles(epochs: int, window: int, what: str) -> str | None:
    """Why a search of ``epochs`` epochs can never settle: the first distance comes after the second epoch and
    ``window`` of them are needed, so fewer than ``window + 1`` epochs never fill the window (None: it can)."""
    if epochs >= window + 1:
        return None
    return (f"{what} trains {epochs} epoch{'s' if epochs != 1 else ''}, fewer than --window {window} + 1: its mask can "
            "never settle and is pruned after the whole recipe; train longer (--epochs) or lower --window")


def mask_distance(a: Tensor, b: Tensor) -> float:
    """Normalised Hamming distance of two boolean masks of one shape: 0 when equal, 1 when complementary.

    The Hamming distance (weights kept by one mask and not the other) over the kept weights of both,
    ``|a xor b| / (|a| + |b|)``. At 50 % sparsity it is the Hamming distance over all weights, the
    normalisation You et al. use for channel masks; at 90 % sparsity that one could not exceed 0.2,
    and a fixed epsilon would mean something else at every sparsity. This one does not depend on it.
    """
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    counts = torch.stack([(a != b).sum(), a.sum() + b.sum()]).tolist()  # one host read
    return counts[0] / counts[1] if counts[1] else 0.0


def converged(distances: list[float], window: int, epsilon: float) -> bool:
    """Whether the last ``window`` distances are all below ``epsilon`` (and there are that many)."""
    return len(distances) >= window and max(distances[-window:]) < epsilon


class MaskConvergence(Hook):
    """Track the distance between consecutive epochs' magnitude masks; detect (and stop) once it settles.

    ``n_pruned``: weights pruned in the tracked mask, over ``keys`` (the ones the run's masks
    already prune count among them). ``not_before``: no stop before this step (IMP keeps the
    weights at its rewind step first).
    """

    def __init__(self, keys: list[str], n_pruned: int, window: int = DEFAULT_WINDOW,
                 epsilon: float = DEFAULT_EPSILON, stop: bool = True, not_before: int = 0) -> None:
        if window < 1 or not 0 < epsilon <= 1:
            raise ValueError("window must be at least 1 and epsilon in (0, 1]")
        self.keys, self.n_pruned, self.window, self.epsilon = keys, n_pruned, window, epsilon
        self.stop, self.not_before = stop, not_before
        self.previous: Tensor | None = None

    def state(self, loop: TrainLoop) -> dict[str, Any]:
        return loop.state.extra.setdefault(STATE_KEY, {"distances": [], "detected_epoch": None, "detected_step": None})

    def on_run_start(self, loop: TrainLoop) -> None:
        saved = loop.state.extra_tensors.get(MASK_KEY)
        self.previous = saved.to(loop.device) if saved is not None else None
        if self.stop and self.state(loop)["detected_epoch"] is not None:
            loop.end_early()  # a resumed run that had already detected: nothing left to train

    def current_mask(self, loop: TrainLoop) -> Tensor:
        """The flat mask over ``keys``: survivors with the largest |w|, ``n_pruned`` pruned in all."""
        params = dict(loop.model.named_parameters())
        masks = loop.masks()
        with torch.no_grad():
            scores = torch.cat([params[k].detach().reshape(-1).float().abs() for k in self.keys])
            alive = torch.cat([masks[k].reshape(-1) for k in self.keys]).to(scores.device)
            scores = torch.where(alive, scores, torch.tensor(float("-inf"), device=scores.device))
            if self.n_pruned <= 0:
                return alive
            # Ties at the threshold all stay: the tracked mask may keep a few more (the ticket's mask is exact).
            return scores > torch.kthvalue(scores, self.n_pruned).values

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        mask = self.current_mask(loop)
        state = self.state(loop)
        if self.previous is not None:
            distance = mask_distance(mask, self.previous)
            state["distances"].append(round(distance, 6))
            record["mask_distance"] = round(distance, 6)
        self.previous = mask
        loop.state.extra_tensors[MASK_KEY] = mask
        if state["detected_epoch"] is None and converged(state["distances"], self.window, self.epsilon):
            state["detected_epoch"], state["detected_step"] = record["epoch"], loop.step
        if self.stop and state["detected_epoch"] is not None and loop.step >= self.not_before:
            loop.end_early()
