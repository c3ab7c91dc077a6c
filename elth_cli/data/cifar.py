"""CIFAR: elth's own reader of the official python-pickle layout.

torchvision's CIFAR classes unpickle the batch files with plain pickle.load, so a data file with
a __reduce__ runs any code it names, and elth reads files whose md5 it cannot check (subsets,
re-packs). elth therefore reads them itself, through an unpickler that resolves only the few
globals the format needs; torchvision is used for --download alone.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from elth_cli.data.records import Arrays, one_line
from elth_cli.errors import ElthError


@dataclass(frozen=True)
class CifarLayout:
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


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                            "labels", 10, "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100, "CIFAR100"),
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
    that names the file. A missing or unreadable file is left to load_dataset (datasets._read_in_memory) to word."""
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
        raise ElthError(f"cannot read {name} from {root} ({path} is damaged: {one_line(exc)}); delete its "
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


def _cifar_arrays(path: Path, obj: Any, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
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


def _download_cifar(layout: CifarLayout, root: Path) -> None:
    """Fetch and unpack the official archive with torchvision's downloader, which checks its md5."""
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    source = getattr(torchvision.datasets, layout.downloader)
    download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)


def read_cifar(name: str) -> Callable[[Path, bool], Arrays]:
    """The reader of ``name`` (cifar10 or cifar100): its data files in the official layout, any
    number of images per file, with no md5 requirement (subsets and re-packs load)."""
    layout = CIFAR_LAYOUTS[name]

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
