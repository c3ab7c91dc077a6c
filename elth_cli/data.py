"""Data sets: one registry, one loader, batches that are a pure function of (seed, epoch).

Two paths share one interface, :class:`DataBundle`:

* In-memory sets (digits, mnist, fashion-mnist, svhn, cifar10, cifar100) are read once into a
  uint8 tensor ``[N, C, H, W]`` on the target device. Every training step is a handful of tensor
  ops on that device (gather, pad, crop-gather, normalise): no DataLoader, no worker processes,
  no per-example Python, and no host-device synchronisation per step. On a GPU this keeps a small
  network's step time bound by the network, not by the input pipeline.
* Folder sets (imagenet, imagefolder) are too large for that and go through a
  ``torch.utils.data.DataLoader`` with worker processes, pinned memory and uint8 transfer.

In both paths an epoch's order and every augmentation parameter are drawn up front from a CPU
``torch.Generator`` seeded from (seed, epoch), so ``train_batches(..., start_batch=k)`` yields
exactly the batches k, k+1, ... of the uninterrupted epoch and all DDP ranks agree on the order.
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import hashlib
import importlib
import importlib.resources
import importlib.util
import io
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from elth_cli.runtime.device import DeviceSetup, device_setup
from elth_cli.errors import ElthError, UsageError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set; nothing here requires loading it."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    description: str


@dataclass(frozen=True)
class Augment:
    """Training augmentation of an in-memory set: zero-pad by ``pad``, random crop back, maybe flip."""

    pad: int
    flip: bool


# An in-memory reader's result: {split: uint8 images [N, C, H, W]}, {split: int64 labels [N]}.
Arrays = tuple[dict[str, Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class DatasetRecord:
    """Everything elth knows about one data set; the registry is one of these per set.

    In-memory sets have a ``reader`` (``reader(root, download) -> Arrays``) and an ``augment``;
    folder sets have neither (torchvision transforms augment them in the DataLoader workers).
    """

    info: DatasetInfo
    augment: Augment | None  # None: folder set
    expected: str  # what the set's folder should contain, for "not found" messages
    aliases: tuple[str, ...] = ()  # other spellings users type, lower case
    reader: Callable[[Path, bool], Arrays] | None = None  # None: folder set
    # Files (relative to the data folder) that must all be present to load without --download;
    # empty for sets that need nothing on disk (digits is embedded) or are checked otherwise (folders).
    required_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A set half-described as in-memory would fail far from here; refuse it when the module loads.
        if (self.reader is None) != (self.augment is None) or (self.reader is None) == self.info.in_memory:
            raise ValueError(f"data set {self.info.name}: an in-memory set needs a reader and an augmentation, "
                             "a folder set neither")


# Per-channel statistics of each set's training images in [0, 1] units. Digits' values were
# computed from its train split (1,437 images) by _digits_stats(); tests/test_data.py recomputes them.
DIGITS_MEAN = (0.3051509,)
DIGITS_STD = (0.3759414,)

# The registry itself (one DatasetRecord per set) is at the end of the module, after the readers
# its records refer to.

# ---------------------------------------------------------------------------------------------
# Registry look-ups
# ---------------------------------------------------------------------------------------------


def dataset_names() -> list[str]:
    """Canonical names of all registered data sets, in registry order."""
    return list(_REGISTRY)


def dataset_descriptions() -> dict[str, str]:
    """One-line description of every data set by name, for help texts (loads nothing)."""
    return {name: record.info.description for name, record in _REGISTRY.items()}


def canonical_name(name: str) -> str:
    """Map a user-typed name or alias (``fmnist``, ``cifar-10``) to its registry name."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UsageError(f"unknown data set '{name}'; choose one of: {', '.join(_REGISTRY)}")
    return key


def get_dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Describe a data set without loading it.

    ``imagefolder`` has no fixed class count: it is the number of class folders in
    ``data_dir/train``, so it needs ``data_dir``.
    """
    info = _REGISTRY[canonical_name(name)].info
    if info.name != "imagefolder":
        return info
    classes = _folder_classes(_folder_root("imagefolder", data_dir) / "train", "imagefolder")
    return _with_classes(info, len(classes))


def default_data_dir() -> Path:
    """Where data sets are looked for and downloaded: $ELTH_DATA, else $XDG_CACHE_HOME/elth/data,
    else ~/.cache/elth/data."""
    env = os.environ.get("ELTH_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "elth" / "data"


def check_compatible(info: DatasetInfo, input_shape: tuple[int, int, int], num_classes: int,
                     what: str = "ticket") -> None:
    """Raise ElthError when a model made for ``input_shape``/``num_classes`` cannot run on ``info``."""
    shape = tuple(int(s) for s in input_shape)
    if shape == info.input_shape and int(num_classes) == info.num_classes:
        return
    fixes = []
    if shape[1:] != info.input_shape[1:] and shape[0] == info.input_shape[0] and shape[1] == shape[2]:
        fixes.append(f"--resize {shape[1]} resizes {info.name}'s images to its input size")
    if int(num_classes) != info.num_classes:
        fixes.append(f"--new-head trains a new {info.num_classes}-way classifier (re-initialised, at the old "
                     "one's sparsity)")
    fix = "; " + ", and ".join(fixes) if fixes and shape[0] == info.input_shape[0] else \
        f"; use a {what} made for this data set"
    raise ElthError(
        f"{what} expects {_shape_str(shape)} inputs and {num_classes} classes but {info.name} gives "
        f"{_shape_str(info.input_shape)} and {info.num_classes} classes{fix}"
    )


def resized(info: DatasetInfo, size: int | None) -> DatasetInfo:
    """``info`` as the network sees it when every image is resized to ``size`` x ``size`` (None: as it is)."""
    if size is None:
        return info
    return dataclasses.replace(info, input_shape=(info.input_shape[0], size, size))


def resize_to_fit(info: DatasetInfo, input_shape: tuple[int, int, int], given: int | None = None,
                  recorded: int | None = None) -> int | None:
    """The resize a network made for ``input_shape`` sees ``info`` at: ``given`` (an explicit --resize), else
    the one its training recorded (``hparams.resize``) where that makes the data fit, else none."""
    if given is not None:
        if not 1 <= given <= 4096:
            raise UsageError(f"--resize must be a size from 1 to 4096, got {given}")
        return given
    if recorded is not None and resized(info, recorded).input_shape == tuple(input_shape):
        return recorded
    return None


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _with_classes(info: DatasetInfo, num_classes: int) -> DatasetInfo:
    return DatasetInfo(info.name, info.input_shape, num_classes, info.mean, info.std, info.in_memory,
                       info.description)


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


def _check_split(split: str) -> None:
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


def _train_ranges(n: int, batch_size: int, world_size: int, rank: int,
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


def _eval_ranges(n: int, batch_size: int, world_size: int, rank: int) -> list[tuple[int, int]]:
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
        self.setup = device if isinstance(device, DeviceSetup) else device_setup(device)
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
        _check_split(split)
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
        ranges = _train_ranges(self.num_examples("train"), batch_size, world_size, rank, start_batch)
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
        _check_split(split)
        ranges = _eval_ranges(self.num_examples(split), batch_size, world_size, rank)
        return self._eval_iter(split, ranges)

    def _eval_iter(self, split: str, ranges: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels = self.images[split], self.labels[split]
        for lo, hi in ranges:
            yield self._finish(images[lo:hi]), labels[lo:hi]


# ---------------------------------------------------------------------------------------------
# Folder data sets (ImageFolder layout) through a DataLoader
# ---------------------------------------------------------------------------------------------


class _SeededImages(torch.utils.data.Dataset):
    """Images addressed by ``(index, seed, augment)``: the transform's randomness comes from ``seed``.

    torchvision's transforms draw from the global CPU generator; seeding it per example (and
    restoring it afterwards) makes each image's crop independent of which worker loads it and of
    where in the epoch loading started, which is what makes mid-epoch resume exact.
    """

    def __init__(self, samples: list[tuple[str, int]], train_tf: Callable[[Any], Tensor],
                 eval_tf: Callable[[Any], Tensor]) -> None:
        self.samples = samples
        self.train_tf = train_tf
        self.eval_tf = eval_tf

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, bool]) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        index, seed, augment = key
        path, label = self.samples[index]
        img = default_loader(path)
        if not augment:
            return self.eval_tf(img), label
        state = torch.get_rng_state()
        try:
            # Only the CPU generator: torch.manual_seed would also reseed (and clobber) CUDA's.
            torch.random.default_generator.manual_seed(seed)
            return self.train_tf(img), label
        finally:
            torch.set_rng_state(state)


class _PlanBatchSampler(torch.utils.data.Sampler):
    """Yields the batches of whatever plan was set last; lets one persistent DataLoader serve every epoch.

    The DataLoader iterates its batch sampler in the main process, so replacing the plan before
    each pass changes the batches without restarting the worker processes.
    """

    def __init__(self) -> None:
        self.perm: np.ndarray | None = None
        self.seeds: np.ndarray | None = None
        self.ranges: list[tuple[int, int]] = []
        self.augment = False

    def set_plan(self, perm: np.ndarray | None, seeds: np.ndarray | None, ranges: list[tuple[int, int]],
                 augment: bool) -> None:
        self.perm, self.seeds, self.ranges, self.augment = perm, seeds, ranges, augment

    def __len__(self) -> int:
        return len(self.ranges)

    def __iter__(self) -> Iterator[list[tuple[int, int, bool]]]:
        for lo, hi in self.ranges:
            idx = range(lo, hi) if self.perm is None else self.perm[lo:hi].tolist()
            seeds = [0] * (hi - lo) if self.seeds is None else self.seeds[lo:hi].tolist()
            yield [(int(i), int(s), self.augment) for i, s in zip(idx, seeds)]


class FolderBundle(DataBundle):
    """An image-folder data set read from disk by DataLoader workers; batches normalised on the device.

    Each split has one persistent DataLoader, so iterate one train (or eval) iterator at a time:
    starting a new one re-plans the loader that an unfinished one is still reading.
    """

    def __init__(self, info: DatasetInfo, device: torch.device | DeviceSetup, root: Path,
                 train: list[tuple[str, int]], test: list[tuple[str, int]], num_workers: int) -> None:
        super().__init__(info, device)
        from torchvision import transforms as T

        self.root = root
        self.num_workers = num_workers
        size = info.input_shape[1]
        # Workers hand over uint8 tensors: a quarter of float32's bytes through shared and pinned
        # memory; normalisation then runs on the device in whole batches.
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
        eval_tf = T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.PILToTensor()])
        self._sets = {"train": _SeededImages(train, train_tf, eval_tf), "test": _SeededImages(test, train_tf, eval_tf)}
        self._loaders: dict[str, tuple[torch.utils.data.DataLoader, _PlanBatchSampler]] = {}

    def num_examples(self, split: str) -> int:
        _check_split(split)
        return len(self._sets[split])

    def _loader(self, split: str) -> tuple[torch.utils.data.DataLoader, _PlanBatchSampler]:
        if split not in self._loaders:
            sampler = _PlanBatchSampler()
            loader = torch.utils.data.DataLoader(
                self._sets[split], batch_sampler=sampler, num_workers=self.num_workers,
                pin_memory=self.setup.pin_memory, persistent_workers=self.num_workers > 0,
            )
            self._loaders[split] = (loader, sampler)
        return self._loaders[split]

    def train_batches(self, batch_size: int, epoch: int, seed: int, start_batch: int = 0, rank: int = 0,
                      world_size: int = 1, augment: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.num_examples("train")
        ranges = _train_ranges(n, batch_size, world_size, rank, start_batch)
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g).numpy()
        seeds = torch.randint(0, 2**62, (n,), generator=g).numpy()
        return self._iterate("train", perm, seeds, ranges, augment)

    def eval_batches(self, batch_size: int, split: str = "test", rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        _check_split(split)
        ranges = _eval_ranges(self.num_examples(split), batch_size, world_size, rank)
        return self._iterate(split, None, None, ranges, False)

    def _iterate(self, split: str, perm: np.ndarray | None, seeds: np.ndarray | None,
                 ranges: list[tuple[int, int]], augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
        loader, sampler = self._loader(split)
        sampler.set_plan(perm, seeds, ranges, augment)
        for x, y in loader:
            x = x.to(self.device, non_blocking=self.setup.non_blocking)
            y = y.to(self.device, non_blocking=self.setup.non_blocking)
            yield self._finish(x), y


def _folder_root(name: str, data_dir: str | Path | None) -> Path:
    if name == "imagefolder":
        if data_dir is None:
            raise UsageError("imagefolder needs --data-dir pointing to a folder with train/ and val/ "
                             "class folders (one sub-folder per class)")
        return Path(data_dir).expanduser()
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    # Accept both --data-dir pointing at ImageNet itself and a shared data folder holding imagenet/.
    if not (base / "train").is_dir() and (base / "imagenet" / "train").is_dir():
        return base / "imagenet"
    return base


def _folder_classes(train_dir: Path, name: str) -> list[str]:
    root = train_dir.parent
    if not train_dir.is_dir() or not (root / "val").is_dir():
        download = " (it cannot be downloaded)" if name == "imagenet" else ""
        raise ElthError(f"{name} not found in {root} (expected train/ and val/ class folders){download}; "
                        f"pass --data-dir pointing to a folder with train/ and val/, one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise ElthError(f"{train_dir} has no class folders; put each class's images in its own sub-folder")
    return classes


def _load_folder(name: str, data_dir: str | Path | None, device: DeviceSetup,
                 num_workers: int | None) -> FolderBundle:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = _folder_root(name, data_dir)
    classes = _folder_classes(root / "train", name)
    info = _REGISTRY[name].info
    if name == "imagenet" and len(classes) != info.num_classes:
        raise ElthError(f"imagenet in {root} has {len(classes)} class folders in train/, expected "
                        f"{info.num_classes}; use --dataset imagefolder for other folder trees")
    val_classes = sorted(e.name for e in os.scandir(root / "val") if e.is_dir())
    extra = sorted(set(val_classes) - set(classes))
    if extra:
        raise ElthError(f"{root / 'val'} has class folders that train/ lacks ({', '.join(extra[:5])}); "
                        f"give train/ and val/ the same class folders")
    # Both splits use train/'s class indices, so a val/ missing some classes keeps its labels right.
    class_to_idx = {c: i for i, c in enumerate(classes)}
    try:
        train = make_dataset(str(root / "train"), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        test = make_dataset(str(root / "val"), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    except (OSError, ValueError) as exc:
        raise ElthError(f"cannot read {name} in {root}: {_one_line(exc)}") from exc
    for split, samples in (("train", train), ("val", test)):
        if not samples:
            raise ElthError(f"{root / split} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); "
                            f"put the images in one sub-folder per class")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise UsageError(f"number of workers must be 0 or more, got {num_workers}")
    return FolderBundle(_with_classes(info, len(classes)), device, root, train, test, num_workers)


# ---------------------------------------------------------------------------------------------
# In-memory readers: each returns {split: uint8 [N, C, H, W]}, {split: int64 [N]}
# ---------------------------------------------------------------------------------------------

DIGITS_RESOURCE = "data_files/uci-digits.csv.gz"
DIGITS_TEST_SIZE = 360


def _digits_file() -> Any:
    """The embedded digits file, an ``importlib.resources`` Traversable (a function so that the tests
    can point the reader at a damaged copy)."""
    return importlib.resources.files("elth_cli").joinpath(DIGITS_RESOURCE)


def _digits_table() -> np.ndarray:
    """The embedded digits table, 1,797 rows of 64 pixels (0..16) and a label (0..9).

    The file comes with the package, so --download cannot mend it: a damaged one is named with the
    advice to reinstall elth.
    """
    source = _digits_file()
    fix = "reinstall elth: pip install --force-reinstall elth, or pip install -e . in a checkout"
    try:
        table = np.loadtxt(io.BytesIO(gzip.decompress(source.read_bytes())), delimiter=",", dtype=np.int64)
    except Exception as exc:  # a missing file, a gzip or zlib error, a line that does not parse: all damage
        raise ElthError(f"elth's embedded digits file {source} is damaged ({_one_line(exc)}); {fix}") from exc
    if table.shape != (1797, 65):
        raise ElthError(f"elth's embedded digits file {source} is damaged (shape {table.shape}, expected "
                        f"(1797, 65)); {fix}")
    if table.min() < 0 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
        raise ElthError(f"elth's embedded digits file {source} is damaged (pixels outside 0..16 or labels "
                        f"outside 0..9); {fix}")
    return table


def digits_pixels_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale digits' 0..16 pixel values to 0..255 as round(v * 255 / 16), in exact integer arithmetic."""
    return ((values.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)


def digits_split(labels: np.ndarray, test_size: int = DIGITS_TEST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) of the fixed digits split, stratified by class.

    Rows are ranked by a SHA-256 hash of their row number rather than by a random generator, so
    the split is the same on every machine and every torch or numpy version. Each class gives the
    test split its share of ``test_size`` (largest remainders break the rounding).
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / len(labels)
    share = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - share), kind="stable")[: test_size - int(share.sum())]:
        share[i] += 1
    test: list[int] = []
    for c, k in zip(classes, share):
        rows = np.flatnonzero(labels == c)
        ranked = sorted(rows.tolist(), key=lambda r: hashlib.sha256(f"uci-digits:{r}".encode()).digest())
        test.extend(ranked[:k])
    test_idx = np.array(sorted(test), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _read_digits(root: Path, download: bool) -> Arrays:
    table = _digits_table()
    images = digits_pixels_to_uint8(table[:, :64]).reshape(-1, 1, 8, 8)
    labels = table[:, 64]
    train_idx, test_idx = digits_split(labels)
    return ({"train": torch.from_numpy(images[train_idx]), "test": torch.from_numpy(images[test_idx])},
            {"train": torch.from_numpy(labels[train_idx]), "test": torch.from_numpy(labels[test_idx])})


def _digits_stats() -> tuple[float, float]:
    """Mean and std of the digits train split in [0, 1] units (the source of DIGITS_MEAN/STD)."""
    images, _ = _read_digits(Path("."), False)
    x = images["train"].double() / 255.0
    return float(x.mean()), float(x.std(unbiased=False))


def _svhn_class() -> type:
    from torchvision.datasets import SVHN

    class LenientSVHN(SVHN):
        """SVHN that trusts a .mat file that is present; md5 is checked only on download."""

        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()

        def download(self) -> None:
            # torchvision re-downloads any file whose md5 differs, which would overwrite a subset.
            if not self._check_integrity():
                super().download()

    return LenientSVHN


# ---------------------------------------------------------------------------------------------
# CIFAR: elth's own reader of the official python-pickle layout
# ---------------------------------------------------------------------------------------------
# torchvision's CIFAR classes unpickle the batch files with plain pickle.load, so a data file with
# a __reduce__ runs any code it names, and elth reads files whose md5 it cannot check (subsets,
# re-packs). elth therefore reads them itself, through an unpickler that resolves only the few
# globals the format needs; torchvision is used for --download alone.


@dataclass(frozen=True)
class _CifarLayout:
    """Where one CIFAR set's files are and which key holds its labels."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    labels_key: str
    num_classes: int
    downloader: str  # the torchvision.datasets class whose url and md5 --download uses

    def required(self) -> tuple[str, ...]:
        """The data files, relative to the data folder. The meta file is not among them: it holds
        only class names, which elth never uses, so it is never read."""
        return tuple(f"{self.folder}/{f}" for f in self.train + self.test)


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                            "labels", 10, "CIFAR10"),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100, "CIFAR100"),
}

# Every global that the official files (Python 2 cPickle, protocol 2: numpy arrays and dtypes,
# lists of ints, str) and Python-3 re-packs of them (bytes as _codecs.encode under protocols 0-2,
# numpy integers as scalar, protocol-5 arrays as _frombuffer) load by name; numpy 2 writes
# numpy._core where numpy 1 wrote numpy.core. Each only builds an array, a dtype, a numpy scalar
# or bytes from values in the file; nothing here can import a module or call anything else.
_CIFAR_GLOBALS = frozenset(
    {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
     for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class _RefusedGlobal(Exception):
    """A pickle asked for a global outside _CIFAR_GLOBALS; the message is its dotted name."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """pickle's spelling of bytes under protocols 0-2. Another codec is no part of a CIFAR file, and
    some (zlib, bz2) would turn a small file into a large array."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"bytes in encoding {encoding!r}, expected latin1")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR files: only the globals in _CIFAR_GLOBALS resolve, so no file can run code."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``; _RefusedGlobal for any other."""
        if (module, name) not in _CIFAR_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        if module == "_codecs":
            return _latin1_encode
        # numpy 2 warns on the old numpy.core spelling and numpy 1 lacks numpy._core: try both.
        for spelling in (module.replace("numpy.core.", "numpy._core."), module.replace("numpy._core.", "numpy.core.")):
            try:
                return getattr(importlib.import_module(spelling), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")


def _quoted(text: str, limit: int = 80) -> str:
    """``text`` from a file, quoted on one line (repr escapes newlines) and cut to ``limit``."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _unpickle_cifar(path: Path, name: str, root: Path) -> Any:
    """One CIFAR file through _CifarUnpickler; a refused global or a damaged pickle is an ElthError
    that names the file. A missing or unreadable file is left to _read_in_memory to word."""
    try:
        with open(path, "rb") as f:
            # latin1 turns Python 2 str (keys, names and the raw array bytes) into str, as numpy expects.
            return _CifarUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise ElthError(f"{path} is not a CIFAR batch file: it asks to load {_quoted(str(exc))}, which a data "
                        f"file never needs; replace the file with the official one") from None
    except OSError:
        raise
    except Exception as exc:  # truncated or garbled: an interrupted download, so a fresh one mends it
        raise ElthError(f"cannot read {name} from {root} ({path} is damaged: {_one_line(exc)}); delete its "
                        f"files and pass --download to fetch them again") from exc


def _describe(value: Any) -> str:
    """What an unpickled value is, for a message: its type, and dtype and shape for an array."""
    if isinstance(value, np.ndarray):
        return _quoted(f"an array of {value.dtype}, shape {value.shape}")[1:-1]
    return f"a {type(value).__name__}"


def _label_text(value: int) -> str:
    # A label read from a file can be any Python int, and one past 4300 digits cannot even be printed.
    return str(value) if abs(value) < 10**18 else ("a huge negative number" if value < 0 else "a huge number")


def _cifar_labels(labels: Any, key: str, n: int, num_classes: int) -> np.ndarray | str:
    """Labels as int64 [n] (a list of Python ints in the official files), or what is wrong with them."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            return f"its {key} are {_describe(labels)}, expected a list of integers"
    elif not isinstance(labels, (list, tuple)):
        return f"its {key} are {_describe(labels)}, expected a list of integers"
    else:
        odd = [v for v in labels if not isinstance(v, (int, np.integer)) or isinstance(v, bool)][:1]
        if odd:
            return f"its {key} hold {_describe(odd[0])}, expected integers"
    if len(labels) != n:
        return f"it has {len(labels)} {key} for {n} images"
    if n:
        # Range first, on the values as they are: a huge Python int would overflow int64.
        lo, hi = int(min(labels)), int(max(labels))
        if lo < 0 or hi >= num_classes:
            return f"it has {key} {_label_text(lo)}..{_label_text(hi)}, outside 0..{num_classes - 1}"
    return np.asarray(labels, dtype=np.int64).reshape(n)


def _cifar_arrays(path: Path, obj: Any, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one unpickled CIFAR file, or an
    ElthError naming the file when its content is not the official layout."""
    def refuse(what: str) -> ElthError:
        return ElthError(f"{path} is not a CIFAR batch file: {what}; replace the file with the official one")

    if not isinstance(obj, dict):
        raise refuse(f"it holds {_describe(obj)}, not a dict")
    # Python 2 str keys load as str with encoding='latin1'; a re-pack may have kept them as bytes.
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", layout.labels_key) if k not in entry]
    if missing:
        raise refuse(f"it has no {' and no '.join(repr(k) for k in missing)} entry")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise refuse(f"its data is {_describe(data)}, expected an N x 3072 uint8 array")
    labels = _cifar_labels(entry[layout.labels_key], layout.labels_key, data.shape[0], layout.num_classes)
    if isinstance(labels, str):
        raise refuse(labels)
    # Each row holds the R, G and B planes of one image in turn: a reshape gives NCHW directly.
    return data.reshape(-1, 3, 32, 32), labels


def _download_cifar(layout: _CifarLayout, root: Path) -> None:
    """Fetch and unpack the official archive with torchvision's downloader, which checks its md5."""
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    source = getattr(torchvision.datasets, layout.downloader)
    download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)


def _read_cifar(name: str) -> Callable[[Path, bool], Arrays]:
    """The reader of ``name`` (cifar10 or cifar100): its data files in the official layout, any
    number of images per file, with no md5 requirement (subsets and re-packs load)."""
    layout = _CIFAR_LAYOUTS[name]

    def read(root: Path, download: bool) -> Arrays:
        # As torchvision did: download only when a data file is missing, so a subset is never overwritten.
        if download and not all((root / f).is_file() for f in layout.required()):
            _download_cifar(layout, root)
        images, labels = {}, {}
        for split, files in (("train", layout.train), ("test", layout.test)):
            parts = []
            for f in files:
                path = root / layout.folder / f
                parts.append(_cifar_arrays(path, _unpickle_cifar(path, name, root), layout))
            # concatenate copies, so the tensors own writable memory whatever the unpickler made.
            images[split] = torch.from_numpy(np.concatenate([x for x, _ in parts]))
            labels[split] = torch.from_numpy(np.concatenate([y for _, y in parts]))
        return images, labels

    return read


def _read_svhn(root: Path, download: bool) -> Arrays:
    if importlib.util.find_spec("scipy") is None:
        raise ElthError("svhn needs scipy: pip install scipy")
    cls = _svhn_class()
    images, labels = {}, {}
    for split in SPLITS:
        ds = cls(str(root), split=split, download=download)
        images[split] = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision already made it NCHW
        labels[split] = torch.as_tensor(ds.labels, dtype=torch.int64).reshape(-1)
    return images, labels


def _read_mnist(name: str) -> Callable[[Path, bool], Arrays]:
    def read(root: Path, download: bool) -> Arrays:
        from torchvision.datasets import MNIST, FashionMNIST

        cls = MNIST if name == "mnist" else FashionMNIST
        images, labels = {}, {}
        for split in SPLITS:
            ds = cls(str(root), train=split == "train", download=download)
            images[split] = ds.data.to(torch.uint8).unsqueeze(1).contiguous()
            labels[split] = ds.targets.to(torch.int64)
        return images, labels

    return read


# ---------------------------------------------------------------------------------------------
# The registry: one record per data set, in the order dataset_names() lists them
# ---------------------------------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_DATASETS = (
    DatasetRecord(
        DatasetInfo("digits", (1, 8, 8), 10, DIGITS_MEAN, DIGITS_STD, True,
                    "UCI handwritten digits, 8x8 grey, 10 classes, embedded (no download)"),
        Augment(pad=1, flip=False), "nothing (embedded in elth)", reader=_read_digits),
    DatasetRecord(
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                    "CIFAR-10, 32x32 colour, 10 classes, 50k train / 10k test"),
        Augment(pad=4, flip=True), "cifar-10-batches-py/", aliases=("cifar-10", "cifar_10"),
        reader=_read_cifar("cifar10"), required_files=_CIFAR_LAYOUTS["cifar10"].required()),
    DatasetRecord(
        DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                    "CIFAR-100, 32x32 colour, 100 classes, 50k train / 10k test"),
        Augment(pad=4, flip=True), "cifar-100-python/", aliases=("cifar-100", "cifar_100"),
        reader=_read_cifar("cifar100"), required_files=_CIFAR_LAYOUTS["cifar100"].required()),
    DatasetRecord(
        DatasetInfo("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), True,
                    "SVHN house numbers, 32x32 colour, 10 classes, 73k train / 26k test"),
        Augment(pad=4, flip=False), "train_32x32.mat and test_32x32.mat",
        reader=_read_svhn, required_files=("train_32x32.mat", "test_32x32.mat")),
    DatasetRecord(
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), True,
                    "MNIST handwritten digits, 28x28 grey, 10 classes, 60k train / 10k test"),
        Augment(pad=2, flip=False), "MNIST/raw/",
        reader=_read_mnist("mnist"), required_files=tuple(f"MNIST/raw/{f}" for f in _IDX_FILES)),
    DatasetRecord(
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), True,
                    "Fashion-MNIST clothing, 28x28 grey, 10 classes, 60k train / 10k test"),
        Augment(pad=2, flip=False), "FashionMNIST/raw/", aliases=("fashion_mnist", "fashionmnist", "fmnist"),
        reader=_read_mnist("fashion-mnist"), required_files=tuple(f"FashionMNIST/raw/{f}" for f in _IDX_FILES)),
    DatasetRecord(
        DatasetInfo("imagenet", (3, 224, 224), 1000, _IMAGENET_MEAN, _IMAGENET_STD, False,
                    "ImageNet-1k from train/ and val/ class folders, 224x224, 1000 classes"),
        None, "train/ and val/ class folders"),
    DatasetRecord(
        DatasetInfo("imagefolder", (3, 224, 224), 0, _IMAGENET_MEAN, _IMAGENET_STD, False,
                    "any train/ and val/ class folders (ImageFolder layout), 224x224, ImageNet statistics"),
        None, "train/ and val/ class folders"),
)

# Look-ups by canonical name and by alias, both built from the records above.
_REGISTRY: dict[str, DatasetRecord] = {d.info.name: d for d in _DATASETS}
_ALIASES: dict[str, str] = {alias: d.info.name for d in _DATASETS for alias in d.aliases}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (OSError, ElthError)):
        return text or type(exc).__name__
    # KeyError('data') alone reads as "'data'"; the type says what went wrong.
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_present(record: DatasetRecord, root: Path) -> None:
    name = record.info.name
    missing = [f for f in record.required_files if not (root / f).is_file()]
    if not missing:
        return
    fix = "pass --download to fetch it, or --data-dir / ELTH_DATA pointing to the folder that holds it"
    if len(missing) == len(record.required_files):
        raise ElthError(f"{name} not found in {root} (expected {record.expected}); {fix}")
    raise ElthError(f"{name} in {root} is incomplete (missing {', '.join(missing)}); {fix}")


def _read_in_memory(record: DatasetRecord, root: Path, download: bool) -> Arrays:
    name = record.info.name
    # A set with no files on disk (digits, embedded) needs neither a presence check nor a folder to download into.
    if record.required_files and not download:
        _check_present(record, root)
    if download and record.required_files:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ElthError(f"cannot create {root} to download {name} into: {_one_line(exc)}") from exc
    try:
        images, labels = record.reader(root, download)
    except ElthError:
        raise
    except (OSError, RuntimeError) as exc:
        if download:
            raise ElthError(f"downloading {name} into {root} failed ({_one_line(exc)}); check the network, "
                            f"or put the files there by hand") from exc
        raise ElthError(f"cannot read {name} from {root} ({_one_line(exc)}); delete its files and pass "
                        f"--download to fetch them again") from exc
    except Exception as exc:  # unpickling / .mat / idx parse errors of a damaged file
        raise ElthError(f"cannot read {name} from {root} ({_one_line(exc)}); delete its files and pass "
                        f"--download to fetch them again") from exc
    _validate(record.info, root, images, labels)
    return images, labels


def _validate(info: DatasetInfo, root: Path, images: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
    name = info.name
    for split in SPLITS:
        x, y = images[split], labels[split]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != info.input_shape or x.shape[0] != y.shape[0]:
            raise ElthError(f"{name} {split} split in {root} has images of shape {tuple(x.shape)} for "
                            f"{y.shape[0]} labels, expected N x {_shape_str(info.input_shape)} uint8; "
                            f"delete its files and pass --download to fetch them again")
        if x.shape[0] == 0:
            raise ElthError(f"{name} {split} split in {root} is empty; delete its files and pass --download")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= info.num_classes:
            raise ElthError(f"{name} {split} split in {root} has labels {lo}..{hi}, outside "
                            f"0..{info.num_classes - 1}; check the files")


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 device: str | torch.device | DeviceSetup = "cpu", num_workers: int | None = None) -> DataBundle:
    """Load a data set for training and evaluation on ``device`` (a device, or a
    :class:`~elth_cli.runtime.device.DeviceSetup` whose memory format and copy choices the batches follow).

    ``data_dir`` defaults to :func:`default_data_dir`. In-memory sets are read through
    torchvision's own data set classes, CIFAR through elth's restricted unpickler (``download``
    fetches them when missing), and copied once to the device; folder sets are indexed and read lazily by ``num_workers`` DataLoader workers
    (default ``min(8, cpu_count)``). Digits is embedded and ignores ``data_dir``/``download``.
    """
    name = canonical_name(name)
    dev = device if isinstance(device, DeviceSetup) else device_setup(torch.device(device))
    record = _REGISTRY[name]
    if record.augment is None:
        return _load_folder(name, data_dir, dev, num_workers)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    images, labels = _read_in_memory(record, root, download)
    return TensorBundle(record.info, record.augment, dev, images, labels)
