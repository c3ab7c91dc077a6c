"""Folder data sets (ImageFolder layout: imagenet, imagefolder) through a DataLoader: too large to
hold on the device, so DataLoader workers read them with pinned memory and uint8 transfer, in the
order and with the augmentation of the same (seed, epoch) plans as the in-memory sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from elth_cli.data.batches import DataBundle, DeviceSetup, check_split, epoch_seed, eval_ranges, train_ranges
from elth_cli.data.records import DatasetInfo, one_line, with_classes
from elth_cli.errors import ElthError, UsageError


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
        check_split(split)
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
        ranges = train_ranges(n, batch_size, world_size, rank, start_batch)
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g).numpy()
        seeds = torch.randint(0, 2**62, (n,), generator=g).numpy()
        return self._iterate("train", perm, seeds, ranges, augment)

    def eval_batches(self, batch_size: int, split: str = "test", rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        check_split(split)
        ranges = eval_ranges(self.num_examples(split), batch_size, world_size, rank)
        return self._iterate(split, None, None, ranges, False)

    def _iterate(self, split: str, perm: np.ndarray | None, seeds: np.ndarray | None,
                 ranges: list[tuple[int, int]], augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
        loader, sampler = self._loader(split)
        sampler.set_plan(perm, seeds, ranges, augment)
        for x, y in loader:
            x = x.to(self.device, non_blocking=self.setup.non_blocking)
            y = y.to(self.device, non_blocking=self.setup.non_blocking)
            yield self._finish(x), y


def folder_classes(train_dir: Path, name: str) -> list[str]:
    """The class folders in ``train_dir``, sorted (their indices are the labels); ``train_dir`` and a
    val/ beside it must exist."""
    root = train_dir.parent
    if not train_dir.is_dir() or not (root / "val").is_dir():
        download = " (it cannot be downloaded)" if name == "imagenet" else ""
        raise ElthError(f"{name} not found in {root} (expected train/ and val/ class folders){download}; "
                        f"pass --data-dir pointing to a folder with train/ and val/, one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise ElthError(f"{train_dir} has no class folders; put each class's images in its own sub-folder")
    return classes


def load_folder(info: DatasetInfo, root: Path, device: DeviceSetup, num_workers: int | None) -> FolderBundle:
    """The folder set ``info`` (imagenet or imagefolder) in ``root``: its class folders checked and its
    images indexed; the images themselves are read by the DataLoader workers."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    name = info.name
    classes = folder_classes(root / "train", name)
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
        raise ElthError(f"cannot read {name} in {root}: {one_line(exc)}") from exc
    for split, samples in (("train", train), ("val", test)):
        if not samples:
            raise ElthError(f"{root / split} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); "
                            f"put the images in one sub-folder per class")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise UsageError(f"number of workers must be 0 or more, got {num_workers}")
    return FolderBundle(with_classes(info, len(classes)), device, root, train, test, num_workers)
