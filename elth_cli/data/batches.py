"""Batches that are a pure function of (seed, epoch), shared by both paths: the epoch plans and
their slicing per rank, the device-side augmentation, :class:`DataBundle` (the interface every
loaded set has) and :class:`TensorBundle` (an in-memory set held once on the device).

This is the one data module that imports :mod:`elth_cli.runtime.device`; the others take
:class:`DeviceSetup` and :func:`as_setup` from here.
"""

from __future__ import annotations

import abc
import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from elth_cli.data.records import SPLITS, Augment, DatasetInfo, resized
from elth_cli.runtime.device import DeviceSetup, device_setup
from elth_cli.errors import UsageError

__all__ = ["DeviceSetup", "as_setup", "epoch_seed", "check_split", "train_ranges", "eval_ranges", "crop_flip",
           "DataBundle", "TensorBundle"]


def as_setup(device: str | torch.device | DeviceSetup) -> DeviceSetup:
    """``device`` as a :class:`DeviceSetup`: itself, or that device's default choices."""
    return device if isinstance(device, DeviceSetup) else device_setup(torch.device(device))


# ---------------------------------------------------------------------------------------------
# Deterministic epoch plans and batch slicing (shared by both paths)
# ---------------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends only on (seed, epoch), the same on every machine."""
    digest = hashlib.sha256(f"elth-epoch:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1:
        raise UsageError(f"world size must be at least 1, got {world_size}")
    if batch_size % world_size:
        raise UsageError(
            f"batch size {batch_size} is the global batch and must be divisible by the world size "
            f"{world_size}; choose a multiple of {world_size}"
        )
    return batch_size // world_size


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside 0..{world_size - 1} for world size {world_size}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")


def _train_steps(n: int, batch_size: int, world_size: int) -> int:
    _per_rank_batch(batch_size, world_size)
    if world_size == 1:
        return math.ceil(n / batch_size)  # keep the last partial batch, as the reference code does
    # Every rank must take the same number of steps or DDP's all-reduce hangs: drop the partial tail.
    steps = n // batch_size
    if steps == 0:
        raise UsageError(f"global batch size {batch_size} is larger than the {n} training examples; "
                         f"choose a smaller batch size")
    return steps


def train_ranges(n: int, batch_size: int, world_size: int, rank: int,
                  start_batch: int) -> list[tuple[int, int]]:
    """Positions [lo, hi) in the epoch's permutation that this rank takes at each step."""
    steps = _train_steps(n, batch_size, world_size)
    _check_rank(rank, world_size)
    if not 0 <= start_batch <= steps:
        raise UsageError(f"start batch {start_batch} is outside 0..{steps} for an epoch of {steps} steps")
    per = batch_size // world_size
    ranges = []
    for step in range(start_batch, steps):
        lo = step * batch_size + rank * per
        ranges.append((lo, min(lo + per, n)))
    return ranges


def eval_ranges(n: int, batch_size: int, world_size: int, rank: int) -> list[tuple[int, int]]:
    """Fixed-order batches of this rank's contiguous shard; together the ranks see every example once."""
    per = _per_rank_batch(batch_size, world_size)
    _check_rank(rank, world_size)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return [(s, min(s + per, hi)) for s in range(lo, hi, per)]


# ---------------------------------------------------------------------------------------------
# Device-side augmentation
# ---------------------------------------------------------------------------------------------


def crop_flip(padded: Tensor, top: Tensor, left: Tensor, flip: Tensor | None, height: int, width: int,
              channels_last: bool = False) -> Tensor:
    """Crop ``height x width`` windows from a padded batch in one gather, mirroring where ``flip``.

    ``padded`` is ``[B, C, Hp, Wp]``; ``top``/``left`` (int64, ``[B]``) are each window's offsets and
    ``flip`` (bool, ``[B]``) mirrors the window left-right. Everything stays on ``padded``'s device
    and no value is read back to the host. With ``channels_last`` the result is gathered straight
    into NHWC memory, so the conv layers get their preferred layout without another copy.
    """
    dev = padded.device
    rows = top[:, None] + torch.arange(height, device=dev)  # [B, h]
    ar_w = torch.arange(width, device=dev)
    cols = left[:, None] + ar_w  # [B, w]
    if flip is not None:
        # Mirroring the window is the same as reading its columns right to left.
        cols = torch.where(flip[:, None], left[:, None] + (width - 1 - ar_w), cols)
    b = torch.arange(padded.shape[0], device=dev)
    c = torch.arange(padded.shape[1], device=dev)
    if channels_last:
        out = padded[b[:, None, None, None], c[None, None, None, :], rows[:, :, None, None], cols[:, None, :, None]]
        return out.permute(0, 3, 1, 2)
    return padded[b[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def _normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    # float() keeps the memory format, and in-place ops avoid three batch-sized temporaries.
    return x.float().mul_(1.0 / 255.0).sub_(mean).div_(std)


# ---------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------


class DataBundle(abc.ABC):
    """A loaded data set: its info, the device batches land on, and deterministic batch iterators."""

    info: DatasetInfo
    device: torch.device

    def __init__(self, info: DatasetInfo, device: torch.device | DeviceSetup) -> None:
        # The device's choices: NHWC batches where cuDNN's fastest convolutions want them (CUDA by
        # default), pinned memory and non-blocking copies for the folder loader.
        self.setup = as_setup(device)
        self.info = info
        self.resize: int | None = None  # set_resize: every batch resized to resize x resize
        self.device = device = self.setup.device
        self.channels_last = self.setup.channels_last
        c = info.input_shape[0]
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, c, 1, 1)

    @abc.abstractmethod
    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""

    def set_resize(self, size: int | None) -> None:
        """Resize every batch to ``size`` x ``size`` from now on; the info then reports that input size."""
        self.resize = size
        self.info = resized(self.info, size)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Steps each rank takes per epoch at global ``batch_size``; equals what train_batches yields."""
        return _train_steps(self.num_examples("train"), batch_size, world_size)

    def step_images(self, batch_size: int, batch: int, world_size: int = 1) -> int:
        """Images that step ``batch`` of an epoch trains on, over every rank (the last step may be short)."""
        n, per = self.num_examples("train"), batch_size // world_size
        return sum(max(0, min(per, n - (batch * batch_size + r * per))) for r in range(world_size))

    @abc.abstractmethod
    def train_batches(self, batch_size: int, epoch: int, seed: int, start_batch: int = 0, rank: int = 0,
                      world_size: int = 1, augment: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled, augmented training batches of one epoch for one rank, from step ``start_batch`` on.

        ``batch_size`` is global: each of ``world_size`` ranks gets ``batch_size // world_size``
        examples per step, disjoint from the other ranks'. Order and augmentation depend only on
        (seed, epoch), so resuming at ``start_batch=k`` reproduces the uninterrupted epoch exactly.
        """

    @abc.abstractmethod
    def eval_batches(self, batch_size: int, split: str = "test", rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """Unaugmented batches of ``split`` in fixed order; the ranks' shards together cover it once."""

    def _finish(self, x: Tensor) -> Tensor:
        x = _normalise(x, self._mean, self._std)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            # Bilinear, on the device, after the augmentation: CIFAR-10 at 224 for ImageNet tickets (Table 7).
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class TensorBundle(DataBundle):
    """An in-memory data set held once on the device as uint8 images and int64 labels."""

    def __init__(self, info: DatasetInfo, augment: Augment, device: torch.device | DeviceSetup,
                 images: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
        super().__init__(info, device)
        self.augment = augment
        self.images = {k: v.to(self.device).contiguous() for k, v in images.items()}
        self.labels = {k: v.to(device=self.device, dtype=torch.int64) for k, v in labels.items()}

    def num_examples(self, split: str) -> int:
        check_split(split)
        return int(self.labels[split].shape[0])

    def epoch_plan(self, epoch: int, seed: int) -> dict[str, Tensor]:
        """The whole epoch's permutation and crop/flip parameters, drawn on the CPU, moved once."""
        n = self.num_examples("train")
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        span = 2 * self.augment.pad + 1
        plan = torch.stack([
            torch.randperm(n, generator=g),
            torch.randint(0, span, (n,), generator=g),  # top offsets
            torch.randint(0, span, (n,), generator=g),  # left offsets
            torch.randint(0, 2, (n,), generator=g),  # flips
        ]).to(self.device)  # one host-to-device copy per epoch
        return {"perm": plan[0], "top": plan[1], "left": plan[2], "flip": plan[3].bool()}

    def train_batches(self, batch_size: int, epoch: int, seed: int, start_batch: int = 0, rank: int = 0,
                      world_size: int = 1, augment: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        ranges = train_ranges(self.num_examples("train"), batch_size, world_size, rank, start_batch)
        return self._train_iter(ranges, epoch, seed, augment)

    def _train_iter(self, ranges: list[tuple[int, int]], epoch: int, seed: int,
                    augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self.epoch_plan(epoch, seed)
        images, labels = self.images["train"], self.labels["train"]
        _, _, h, w = images.shape
        p = self.augment.pad
        for lo, hi in ranges:
            idx = plan["perm"][lo:hi]
            x = images.index_select(0, idx)
            y = labels.index_select(0, idx)
            if augment:
                flip = plan["flip"][lo:hi] if self.augment.flip else None
                x = crop_flip(F.pad(x, (p, p, p, p)), plan["top"][lo:hi], plan["left"][lo:hi], flip, h, w,
                              channels_last=self.channels_last)
            yield self._finish(x), y

    def eval_batches(self, batch_size: int, split: str = "test", rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        check_split(split)
        ranges = eval_ranges(self.num_examples(split), batch_size, world_size, rank)
        return self._eval_iter(split, ranges)

    def _eval_iter(self, split: str, ranges: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels = self.images[split], self.labels[split]
        for lo, hi in ranges:
            yield self._finish(images[lo:hi]), labels[lo:hi]
