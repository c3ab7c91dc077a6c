"""In-memory readers: each returns {split: uint8 [N, C, H, W]}, {split: int64 [N]} (``Arrays``).

Digits is embedded in elth (``elth_cli/data_files``); MNIST, Fashion-MNIST and SVHN are read
through torchvision's own classes. CIFAR has its own module, :mod:`elth_cli.data.cifar`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import importlib.util
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from elth_cli.data.records import SPLITS, Arrays, one_line
from elth_cli.errors import ElthError

# Per-channel statistics of each set's training images in [0, 1] units. Digits' values were
# computed from its train split (1,437 images) by _digits_stats(); tests/test_data.py recomputes them.
DIGITS_MEAN = (0.3051509,)
DIGITS_STD = (0.3759414,)

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
        raise ElthError(f"elth's embedded digits file {source} is damaged ({one_line(exc)}); {fix}") from exc
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


def read_digits(root: Path, download: bool) -> Arrays:
    table = _digits_table()
    images = digits_pixels_to_uint8(table[:, :64]).reshape(-1, 1, 8, 8)
    labels = table[:, 64]
    train_idx, test_idx = digits_split(labels)
    return ({"train": torch.from_numpy(images[train_idx]), "test": torch.from_numpy(images[test_idx])},
            {"train": torch.from_numpy(labels[train_idx]), "test": torch.from_numpy(labels[test_idx])})


def _digits_stats() -> tuple[float, float]:
    """Mean and std of the digits train split in [0, 1] units (the source of DIGITS_MEAN/STD)."""
    images, _ = read_digits(Path("."), False)
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


def read_svhn(root: Path, download: bool) -> Arrays:
    if importlib.util.find_spec("scipy") is None:
        raise ElthError("svhn needs scipy: pip install scipy")
    cls = _svhn_class()
    images, labels = {}, {}
    for split in SPLITS:
        ds = cls(str(root), split=split, download=download)
        images[split] = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision already made it NCHW
        labels[split] = torch.as_tensor(ds.labels, dtype=torch.int64).reshape(-1)
    return images, labels


def read_mnist(name: str) -> Callable[[Path, bool], Arrays]:
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
