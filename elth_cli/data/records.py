"""What elth knows about a data set before loading it: :class:`DatasetInfo` (what a model needs),
:class:`Augment` (an in-memory set's training augmentation), :class:`DatasetRecord` (one registry
entry), the readers' result type, and the small helpers the other data modules word messages with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from elth_cli.errors import ElthError

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


def resized(info: DatasetInfo, size: int | None) -> DatasetInfo:
    """``info`` as the network sees it when every image is resized to ``size`` x ``size`` (None: as it is)."""
    if size is None:
        return info
    return dataclasses.replace(info, input_shape=(info.input_shape[0], size, size))


def shape_str(shape: tuple[int, ...]) -> str:
    """``(3, 32, 32)`` as ``3x32x32``, for messages."""
    return "x".join(str(s) for s in shape)


def with_classes(info: DatasetInfo, num_classes: int) -> DatasetInfo:
    """``info`` with ``num_classes`` classes (a folder set counts its class folders)."""
    return DatasetInfo(info.name, info.input_shape, num_classes, info.mean, info.std, info.in_memory,
                       info.description)


def one_line(exc: BaseException) -> str:
    """An exception as one line for an error message: its text, with its type where the text alone is unclear."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (OSError, ElthError)):
        return text or type(exc).__name__
    # KeyError('data') alone reads as "'data'"; the type says what went wrong.
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
