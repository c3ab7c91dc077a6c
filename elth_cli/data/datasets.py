"""The registry, one :class:`DatasetRecord` per data set, its look-ups, and :func:`load_dataset`,
the entry point: read a set (checked) and hand back its :class:`DataBundle`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from elth_cli.data.batches import DataBundle, DeviceSetup, TensorBundle, as_setup
from elth_cli.data.cifar import CIFAR_LAYOUTS, read_cifar
from elth_cli.data.imagefolder import folder_classes, load_folder
from elth_cli.data.readers import DIGITS_MEAN, DIGITS_STD, read_digits, read_mnist, read_svhn
from elth_cli.data.records import (SPLITS, Arrays, Augment, DatasetInfo, DatasetRecord, one_line, resized,
                                   shape_str, with_classes)
from elth_cli.errors import ElthError, UsageError

# The registry: one record per data set, in the order dataset_names() lists them.

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_DATASETS = (
    DatasetRecord(
        DatasetInfo("digits", (1, 8, 8), 10, DIGITS_MEAN, DIGITS_STD, True,
                    "UCI handwritten digits, 8x8 grey, 10 classes, embedded (no download)"),
        Augment(pad=1, flip=False), "nothing (embedded in elth)", reader=read_digits),
    DatasetRecord(
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                    "CIFAR-10, 32x32 colour, 10 classes, 50k train / 10k test"),
        Augment(pad=4, flip=True), "cifar-10-batches-py/", aliases=("cifar-10", "cifar_10"),
        reader=read_cifar("cifar10"), required_files=CIFAR_LAYOUTS["cifar10"].required()),
    DatasetRecord(
        DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                    "CIFAR-100, 32x32 colour, 100 classes, 50k train / 10k test"),
        Augment(pad=4, flip=True), "cifar-100-python/", aliases=("cifar-100", "cifar_100"),
        reader=read_cifar("cifar100"), required_files=CIFAR_LAYOUTS["cifar100"].required()),
    DatasetRecord(
        DatasetInfo("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), True,
                    "SVHN house numbers, 32x32 colour, 10 classes, 73k train / 26k test"),
        Augment(pad=4, flip=False), "train_32x32.mat and test_32x32.mat",
        reader=read_svhn, required_files=("train_32x32.mat", "test_32x32.mat")),
    DatasetRecord(
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), True,
                    "MNIST handwritten digits, 28x28 grey, 10 classes, 60k train / 10k test"),
        Augment(pad=2, flip=False), "MNIST/raw/",
        reader=read_mnist("mnist"), required_files=tuple(f"MNIST/raw/{f}" for f in _IDX_FILES)),
    DatasetRecord(
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), True,
                    "Fashion-MNIST clothing, 28x28 grey, 10 classes, 60k train / 10k test"),
        Augment(pad=2, flip=False), "FashionMNIST/raw/", aliases=("fashion_mnist", "fashionmnist", "fmnist"),
        reader=read_mnist("fashion-mnist"), required_files=tuple(f"FashionMNIST/raw/{f}" for f in _IDX_FILES)),
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
    classes = folder_classes(_folder_root("imagefolder", data_dir) / "train", "imagefolder")
    return with_classes(info, len(classes))


def default_data_dir() -> Path:
    """Where data sets are looked for and downloaded: $ELTH_DATA, else $XDG_CACHE_HOME/elth/data,
    else ~/.cache/elth/data."""
    env = os.environ.get("ELTH_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "elth" / "data"


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


def check_compatible(info: DatasetInfo, input_shape: tuple[int, int, int], num_classes: int,
                     what: str = "ticket") -> None:
    """Raise ElthError when a model made for ``input_shape``/``num_classes`` cannot run on ``info``."""
    shape = tuple(int(s) for s in input_shape)
    if shape == info.input_shape and int(num_classes) == info.num_classes:
        return
    fixes = []
    if shape[1:] != info.input_shape[1:] and shape[0] == info.input_shape[0] and shape[1] == shape[2]:
        fixes.append(f"--resize {shape[1]} resizes the images of {info.name} to its input size")
    if int(num_classes) != info.num_classes:
        fixes.append(f"--new-head trains a new {info.num_classes}-way classifier (re-initialised, at the old "
                     "one's sparsity)")
    fix = "; " + ", and ".join(fixes) if fixes and shape[0] == info.input_shape[0] else \
        f"; use a {what} made for this data set"
    raise ElthError(
        f"{what} expects {shape_str(shape)} inputs and {num_classes} classes but {info.name} gives "
        f"{shape_str(info.input_shape)} and {info.num_classes} classes{fix}"
    )


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
            raise ElthError(f"cannot create {root} to download {name} into: {one_line(exc)}") from exc
    try:
        images, labels = record.reader(root, download)
    except ElthError:
        raise
    except (OSError, RuntimeError) as exc:
        if download:
            raise ElthError(f"downloading {name} into {root} failed ({one_line(exc)}); check the network, "
                            f"or put the files there by hand") from exc
        raise ElthError(f"cannot read {name} from {root} ({one_line(exc)}); delete its files and pass "
                        f"--download to fetch them again") from exc
    except Exception as exc:  # unpickling / .mat / idx parse errors of a damaged file
        raise ElthError(f"cannot read {name} from {root} ({one_line(exc)}); delete its files and pass "
                        f"--download to fetch them again") from exc
    _validate(record.info, root, images, labels)
    return images, labels


def _validate(info: DatasetInfo, root: Path, images: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
    name = info.name
    for split in SPLITS:
        x, y = images[split], labels[split]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != info.input_shape or x.shape[0] != y.shape[0]:
            raise ElthError(f"{name} {split} split in {root} has images of shape {tuple(x.shape)} for "
                            f"{y.shape[0]} labels, expected N x {shape_str(info.input_shape)} uint8; "
                            f"delete its files and pass --download to fetch them again")
        if x.shape[0] == 0:
            raise ElthError(f"{name} {split} split in {root} is empty; delete its files and pass --download")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= info.num_classes:
            raise ElthError(f"{name} {split} split in {root} has labels {lo}..{hi}, outside "
                            f"0..{info.num_classes - 1}; check the files")


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
    dev = as_setup(device)
    record = _REGISTRY[name]
    if record.augment is None:
        return load_folder(record.info, _folder_root(name, data_dir), dev, num_workers)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    images, labels = _read_in_memory(record, root, download)
    return TensorBundle(record.info, record.augment, dev, images, labels)
