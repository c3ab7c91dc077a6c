"""Tests of elth_cli.data: the registry, the digits split, deterministic batches, the readers of
each on-disk format (tiny sets written here in the real layouts), and the folder loader."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_elth
from elth_cli import data as D
from elth_cli.data import datasets, readers
from elth_cli.errors import ElthError, UsageError
from elth_cli.find import random_ticket

DIGITS_TEST_SHA256 = "165a1899c71aaae340dba9760ddcae6e92cbc6020ab4782293d02e9b66ae3341"


@pytest.fixture(scope="module")
def digits() -> D.TensorBundle:
    return D.load_dataset("digits")


def _denormalise(x: torch.Tensor, info: D.DatasetInfo) -> torch.Tensor:
    """Back to uint8 pixel values (exact up to float rounding)."""
    c = info.input_shape[0]
    mean = torch.tensor(info.mean).view(1, c, 1, 1)
    std = torch.tensor(info.std).view(1, c, 1, 1)
    return torch.round((x.cpu() * std + mean) * 255)


def _all_batches(it) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*it)
    return torch.cat(xs), torch.cat(ys)


def _shifts(img: torch.Tensor, pad: int, mirror: bool = False) -> list[torch.Tensor]:
    """Every crop of ``img`` zero-padded by ``pad``, optionally mirrored."""
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    out = []
    for t in range(2 * pad + 1):
        for l in range(2 * pad + 1):
            crop = padded[..., t:t + h, l:l + w]
            out.append(crop.flip(-1) if mirror else crop)
    return out


def _matches_any(img: torch.Tensor, candidates: list[torch.Tensor]) -> bool:
    return bool((torch.stack(candidates) == img).flatten(1).all(1).any())


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_order_and_infos() -> None:
    assert D.dataset_names() == ["digits", "cifar10", "cifar100", "svhn", "mnist", "fashion-mnist",
                                 "imagenet", "imagefolder"]
    assert D.get_dataset_info("cifar10") == D.DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
        D.get_dataset_info("cifar10").description)
    assert D.get_dataset_info("cifar100").num_classes == 100
    assert D.get_dataset_info("mnist").mean == (0.1307,)
    assert D.get_dataset_info("imagenet").num_classes == 1000
    assert not D.get_dataset_info("imagenet").in_memory
    for name in D.dataset_names():
        desc = D.dataset_descriptions()[name]
        assert desc and "\n" not in desc
        if name != "imagefolder":
            info = D.get_dataset_info(name)
            assert len(info.mean) == len(info.std) == info.input_shape[0]


@pytest.mark.parametrize("alias,name", [("fashion_mnist", "fashion-mnist"), ("fmnist", "fashion-mnist"),
                                        ("cifar-10", "cifar10"), ("CIFAR-100", "cifar100"), ("Digits", "digits")])
def test_aliases(alias: str, name: str) -> None:
    assert D.get_dataset_info(alias).name == name


def test_every_alias_of_every_record_resolves_and_none_is_shared() -> None:
    aliases = [a for record in datasets._DATASETS for a in record.aliases]
    assert len(aliases) == len(set(aliases)) and not set(aliases) & set(D.dataset_names())
    for record in datasets._DATASETS:
        for alias in record.aliases:
            assert D.canonical_name(alias) == record.info.name
        # In-memory sets are read by their reader and augmented on the device; folder sets have neither.
        assert (record.reader is not None) == (record.augment is not None) == record.info.in_memory


def test_a_half_described_record_is_refused() -> None:
    info = D.get_dataset_info("cifar10")
    with pytest.raises(ValueError, match="cifar10: an in-memory set needs a reader and an augmentation"):
        D.DatasetRecord(info, D.Augment(pad=4, flip=True), "cifar-10-batches-py/")


def test_unknown_name() -> None:
    with pytest.raises(UsageError) as e:
        D.get_dataset_info("cifar11")
    msg = str(e.value)
    assert "cifar11" in msg and "digits" in msg and "fashion-mnist" in msg and "\n" not in msg
    with pytest.raises(UsageError):
        D.load_dataset("nope")


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ELTH_DATA", str(tmp_path / "d"))
    assert D.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("ELTH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert D.default_data_dir() == tmp_path / "c" / "elth" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert D.default_data_dir() == tmp_path / "h" / ".cache" / "elth" / "data"


def test_check_compatible() -> None:
    info = D.get_dataset_info("digits")
    D.check_compatible(info, (1, 8, 8), 10)
    with pytest.raises(ElthError) as e:
        D.check_compatible(info, (3, 32, 32), 10)
    assert str(e.value) == ("ticket expects 3x32x32 inputs and 10 classes but digits gives 1x8x8 and 10 classes; "
                            "use a ticket made for this data set")
    with pytest.raises(ElthError, match="^model expects 1x8x8 inputs and 100 classes but digits gives"):
        D.check_compatible(info, (1, 8, 8), 100, what="model")
    with pytest.raises(ElthError, match="^model expects"):
        D.check_compatible(D.get_dataset_info("cifar100"), (3, 32, 32), 10, what="model")


# ---------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------


def test_digits_shapes_and_labels(digits: D.TensorBundle) -> None:
    assert digits.info.input_shape == (1, 8, 8) and digits.info.num_classes == 10
    assert digits.num_examples("train") == 1437 and digits.num_examples("test") == 360
    for split in D.SPLITS:
        x, y = digits.images[split], digits.labels[split]
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9


def test_digits_split_fixed_and_stratified() -> None:
    labels = readers._digits_table()[:, 64]
    train, test = D.digits_split(labels)
    assert len(train) == 1437 and len(test) == 360
    assert len(np.intersect1d(train, test)) == 0 and len(np.union1d(train, test)) == 1797
    # The same split on every machine: pinned by a hash of the test rows.
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == DIGITS_TEST_SHA256
    assert np.array_equal(D.digits_split(labels)[1], test)
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 360 / 1797) < 0.01)


def test_digits_uint8_scaling(digits: D.TensorBundle) -> None:
    v = np.arange(17)
    assert D.digits_pixels_to_uint8(v).tolist() == [round(i * 255 / 16 + 1e-9) for i in v]
    assert D.digits_pixels_to_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]
    table = readers._digits_table()
    train, test = D.digits_split(table[:, 64])
    row = table[test[0]]
    expected = torch.tensor([(int(p) * 255 + 8) // 16 for p in row[:64]], dtype=torch.uint8).view(1, 8, 8)
    assert torch.equal(digits.images["test"][0], expected)
    assert int(digits.labels["test"][0]) == row[64]


def test_digits_mean_std_constants(digits: D.TensorBundle) -> None:
    x = digits.images["train"].double() / 255
    assert abs(float(x.mean()) - D.DIGITS_MEAN[0]) < 1e-6
    assert abs(float(x.std(unbiased=False)) - D.DIGITS_STD[0]) < 1e-6
    assert digits.info.mean == D.DIGITS_MEAN and digits.info.std == D.DIGITS_STD


@pytest.mark.parametrize("damage", ["truncated", "garbage", "short", "values"])
def test_damaged_embedded_digits_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """The digits file comes with elth: a damaged one asks for a reinstall, never for --download."""
    good = readers._digits_file().read_bytes()
    table = readers._digits_table()
    copy = tmp_path / "uci-digits.csv.gz"
    if damage == "truncated":
        copy.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        copy.write_bytes(b"not a gzip file")
    else:
        rows = table[:100] if damage == "short" else np.where(table == 16, 17, table)
        text = "\n".join(",".join(str(v) for v in row) for row in rows)
        copy.write_bytes(gzip.compress(text.encode()))
    monkeypatch.setattr(readers, "_digits_file", lambda: copy)
    with pytest.raises(ElthError) as e:
        D.load_dataset("digits")
    msg = str(e.value)
    assert msg.startswith(f"elth's embedded digits file {copy} is damaged (") and "\n" not in msg
    assert msg.endswith("; reinstall elth: pip install --force-reinstall elth, or pip install -e . in a checkout")
    assert "--download" not in msg and e.value.exit_code == 1


# ---------------------------------------------------------------------------------------------
# Training batches
# ---------------------------------------------------------------------------------------------


def test_batches_dtype_and_normalisation(digits: D.TensorBundle) -> None:
    x, y = next(digits.eval_batches(50))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (50, 1, 8, 8)
    expected = (digits.images["test"][:50].float() / 255 - D.DIGITS_MEAN[0]) / D.DIGITS_STD[0]
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(y, digits.labels["test"][:50])


def test_same_seed_epoch_same_batches(digits: D.TensorBundle) -> None:
    a = list(digits.train_batches(100, epoch=3, seed=7))
    b = list(digits.train_batches(100, epoch=3, seed=7))
    assert len(a) == len(b) == 15
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    _, y_other_epoch = _all_batches(digits.train_batches(100, epoch=4, seed=7))
    _, y_other_seed = _all_batches(digits.train_batches(100, epoch=3, seed=8))
    y = torch.cat([yb for _, yb in a])
    assert not torch.equal(y, y_other_epoch) and not torch.equal(y, y_other_seed)
    # Each epoch is a permutation: every label count is preserved.
    assert torch.equal(torch.bincount(y), torch.bincount(digits.labels["train"]))


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1)])
def test_start_batch_is_tail_of_epoch(digits: D.TensorBundle, world_size: int, rank: int) -> None:
    full = list(digits.train_batches(64, epoch=2, seed=11, rank=rank, world_size=world_size))
    for k in (0, 1, 5, len(full) - 1, len(full)):
        tail = list(digits.train_batches(64, epoch=2, seed=11, start_batch=k, rank=rank, world_size=world_size))
        assert len(tail) == len(full) - k
        for (xa, ya), (xb, yb) in zip(full[k:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_is_a_shift_never_a_flip(digits: D.TensorBundle) -> None:
    aug_x, aug_y = _all_batches(digits.train_batches(256, epoch=0, seed=3))
    raw_x, raw_y = _all_batches(digits.train_batches(256, epoch=0, seed=3, augment=False))
    assert torch.equal(aug_y, raw_y)  # augmentation does not change the order
    aug, raw = _denormalise(aug_x, digits.info), _denormalise(raw_x, digits.info)
    assert aug.min() >= 0 and aug.max() <= 255
    changed = 0
    for a, r in zip(aug[:300], raw[:300]):
        # A pure shift, never mirrored: digits are not symmetric, so a flip would match no shift.
        assert _matches_any(a, _shifts(r, 1)), "augmented digit is not a <=1 pixel shift of the original"
        changed += not torch.equal(a, r)
    assert changed > 200  # 8 of 9 offsets move the image


def test_steps_per_epoch_matches_batches(digits: D.TensorBundle) -> None:
    assert digits.steps_per_epoch(128) == 12 == len(list(digits.train_batches(128, 0, 0)))
    last = list(digits.train_batches(128, 0, 0))[-1][0]
    assert last.shape[0] == 1437 - 11 * 128  # single process keeps the partial batch
    assert digits.steps_per_epoch(128, world_size=2) == 11
    assert len(list(digits.train_batches(128, 0, 0, rank=1, world_size=2))) == 11
    assert digits.steps_per_epoch(1437) == 1 and digits.steps_per_epoch(1436) == 2
    assert digits.steps_per_epoch(8, world_size=4) == 1437 // 8


def test_ranks_are_disjoint_and_cover(digits: D.TensorBundle) -> None:
    # Tag every training image with its row so examples can be tracked through the shuffle.
    ids = torch.arange(1437)
    bundle = D.TensorBundle(digits.info, digits.augment, torch.device("cpu"),
                            {"train": digits.images["train"], "test": digits.images["test"]},
                            {"train": ids, "test": digits.labels["test"]})
    single = torch.cat([y for _, y in bundle.train_batches(100, epoch=1, seed=5)])
    r0 = [y for _, y in bundle.train_batches(100, epoch=1, seed=5, rank=0, world_size=2)]
    r1 = [y for _, y in bundle.train_batches(100, epoch=1, seed=5, rank=1, world_size=2)]
    assert len(r0) == len(r1) == bundle.steps_per_epoch(100, world_size=2) == 14
    assert all(len(a) == len(b) == 50 for a, b in zip(r0, r1))
    s0, s1 = set(torch.cat(r0).tolist()), set(torch.cat(r1).tolist())
    assert not s0 & s1
    assert s0 | s1 == set(single[: 14 * 100].tolist())  # same examples minus the dropped tail
    # Step by step, the two halves make up the single-process global batch.
    for step, (a, b) in enumerate(zip(r0, r1)):
        assert torch.equal(torch.cat([a, b]), single[step * 100:(step + 1) * 100])


def test_bad_batch_arguments(digits: D.TensorBundle) -> None:
    with pytest.raises(UsageError, match="divisible by the world size 3"):
        list(digits.train_batches(128, 0, 0, world_size=3))
    with pytest.raises(UsageError):
        digits.steps_per_epoch(10, world_size=4)
    with pytest.raises(UsageError):
        digits.eval_batches(10, world_size=3)
    with pytest.raises(UsageError, match="rank"):
        digits.train_batches(128, 0, 0, rank=2, world_size=2)
    with pytest.raises(UsageError, match="start batch"):
        digits.train_batches(128, 0, 0, start_batch=13)
    with pytest.raises(UsageError):
        digits.train_batches(0, 0, 0)
    with pytest.raises(UsageError, match="split"):
        digits.eval_batches(10, split="val")


def test_eval_batches_fixed_order_and_sharded(digits: D.TensorBundle) -> None:
    x, y = _all_batches(digits.eval_batches(64))
    assert torch.equal(y, digits.labels["test"]) and x.shape == (360, 1, 8, 8)
    x2, _ = _all_batches(digits.eval_batches(64))
    assert torch.equal(x, x2)
    assert all(len(b[1]) == 16 for b in list(digits.eval_batches(64, rank=2, world_size=4))[:-1])
    parts = [_all_batches(digits.eval_batches(64, rank=r, world_size=4)) for r in range(4)]
    assert [len(py) for _, py in parts] == [90, 90, 90, 90]
    assert torch.equal(torch.cat([py for _, py in parts]), y)
    assert torch.equal(torch.cat([px for px, _ in parts]), x)
    xt, yt = _all_batches(digits.eval_batches(500, split="train"))
    assert torch.equal(yt, digits.labels["train"])


def test_crop_flip_exact_pixels() -> None:
    img = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(1, 2, 3, 4).repeat(3, 1, 1, 1)
    img[1] += 100
    img[2] += 200
    padded = torch.nn.functional.pad(img, (1, 1, 1, 1))  # [3, 2, 5, 6]
    top = torch.tensor([0, 1, 2])
    left = torch.tensor([0, 1, 2])
    flip = torch.tensor([False, False, True])
    out = D.crop_flip(padded, top, left, flip, 3, 4)
    assert out.shape == (3, 2, 3, 4)
    # Offset (0, 0): the image moves down-right by one, zeros enter at the top and the left.
    expected0 = torch.zeros(2, 3, 4, dtype=torch.uint8)
    expected0[:, 1:, 1:] = img[0, :, :2, :3]
    assert torch.equal(out[0], expected0)
    assert torch.equal(out[1], img[1])  # offset (pad, pad) is the identity
    # Offset (2, 2), mirrored: shifted up-left by one, then read right to left.
    shifted = torch.zeros(2, 3, 4, dtype=torch.uint8)
    shifted[:, :2, :3] = img[2, :, 1:, 1:]
    assert torch.equal(out[2], shifted.flip(-1))
    assert out[2, 0, 0].tolist() == [0, 207, 206, 205]
    cl = D.crop_flip(padded, top, left, flip, 3, 4, channels_last=True)
    assert torch.equal(cl, out) and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(D.crop_flip(padded, top, left, None, 3, 4)[2], shifted)


def test_channels_last_path_on_cpu(digits: D.TensorBundle) -> None:
    bundle = D.TensorBundle(digits.info, digits.augment, torch.device("cpu"), digits.images, digits.labels)
    bundle.channels_last = True  # what a CUDA device selects
    x, _ = next(bundle.train_batches(32, 0, 0))
    ref, _ = next(digits.train_batches(32, 0, 0))
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, ref)
    xe, _ = next(bundle.eval_batches(32))
    assert xe.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Tiny sets in the real on-disk formats
# ---------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes bytes as Python 2 ``str`` opcodes, as in the official CIFAR pickles: they load as
    ``b'data'`` keys with ``encoding='bytes'`` and as ``'data'`` with ``encoding='latin1'``."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(path: Path, obj: object) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, bad_label: bool = False) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = _random_images(per_batch, (3072,), i)
        y = [(i + j) % 10 for j in range(per_batch)]
        _py2_pickle(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"data": x, b"labels": y})
        train_x.append(x)
        train_y += y
    tx = _random_images(n_test, (3072,), 99)
    ty = [j % 10 for j in range(n_test)]
    if bad_label:
        ty[0] = 10
    _py2_pickle(folder / "test_batch", {b"data": tx, b"labels": ty})
    _py2_pickle(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return {"train": (np.concatenate(train_x), train_y), "test": (tx, ty)}


def test_py2_pickle_matches_official_format(tmp_path: Path) -> None:
    _py2_pickle(tmp_path / "p", {b"data": np.zeros((2, 3), np.uint8), b"labels": [1]})
    with open(tmp_path / "p", "rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {b"data", b"labels"}
    with open(tmp_path / "p", "rb") as f:
        assert np.array_equal(pickle.load(f, encoding="latin1")["data"], np.zeros((2, 3), np.uint8))


def test_cifar10_tiny_real_format(tmp_path: Path) -> None:
    written = _write_cifar10(tmp_path)
    b = D.load_dataset("cifar10", data_dir=tmp_path)
    assert b.info.input_shape == (3, 32, 32) and b.num_examples("train") == 20 and b.num_examples("test") == 6
    for split in D.SPLITS:
        x, y = written[split]
        assert torch.equal(b.images[split], torch.from_numpy(x.reshape(-1, 3, 32, 32)))  # rows are R, G, B planes
        assert b.labels[split].tolist() == y
    xb, yb = next(b.eval_batches(4))
    assert xb.shape == (4, 3, 32, 32)
    assert torch.equal(_denormalise(xb, b.info), b.images["test"][:4].float())
    # Flips happen for CIFAR (random images have no mirror symmetry).
    flipped = 0
    for epoch in range(3):
        aug, _ = _all_batches(b.train_batches(8, epoch, 0))
        raw, _ = _all_batches(b.train_batches(8, epoch, 0, augment=False))
        for a, r in zip(_denormalise(aug, b.info), _denormalise(raw, b.info)):
            is_shift = _matches_any(a, _shifts(r, 4))
            assert is_shift or _matches_any(a, _shifts(r, 4, mirror=True))
            flipped += not is_shift
    assert 10 < flipped < 50


def test_cifar10_bad_labels_and_incomplete(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, bad_label=True)
    with pytest.raises(ElthError, match="labels 1..10, outside 0..9"):
        D.load_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ElthError, match="incomplete.*test_batch"):
        D.load_dataset("cifar10", data_dir=tmp_path)


def _write_cifar100(root: Path) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x = _random_images(5, (3072,), 1)
    y = [0, 42, 99, 7, 42]
    _py2_pickle(folder / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * 5})
    _py2_pickle(folder / "test", {b"data": x[:3], b"fine_labels": y[:3], b"coarse_labels": [0] * 3})
    _py2_pickle(folder / "meta", {b"fine_label_names": [b"f%d" % i for i in range(100)]})
    return x, y


def test_cifar100_tiny_real_format(tmp_path: Path) -> None:
    x, y = _write_cifar100(tmp_path)
    b = D.load_dataset("cifar-100", data_dir=tmp_path)
    assert b.info.num_classes == 100 and b.num_examples("train") == 5 and b.num_examples("test") == 3
    assert b.labels["train"].tolist() == y
    assert torch.equal(b.images["test"], torch.from_numpy(x[:3].reshape(-1, 3, 32, 32)))
    xb, yb = next(b.train_batches(5, 0, 0))
    assert xb.shape == (5, 3, 32, 32) and sorted(yb.tolist()) == sorted(y)


def _write_idx(path: Path, array: np.ndarray) -> None:
    # idx format: zero bytes, type 0x08 (ubyte), number of dims, big-endian int32 sizes, raw data.
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fmnist", "FashionMNIST")])
def test_mnist_tiny_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    train_x, test_x = _random_images(7, (28, 28), 1), _random_images(3, (28, 28), 2)
    train_y, test_y = np.array([0, 1, 2, 3, 4, 5, 9]), np.array([9, 8, 7])
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", train_y)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    b = D.load_dataset(name, data_dir=tmp_path)
    assert b.info.input_shape == (1, 28, 28)
    assert torch.equal(b.images["train"], torch.from_numpy(train_x).unsqueeze(1))
    assert b.labels["test"].tolist() == [9, 8, 7]
    xb, _ = next(b.train_batches(4, 0, 0))
    assert xb.shape == (4, 1, 28, 28)


def test_svhn_tiny_mat_files(tmp_path: Path) -> None:
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    hwcn = {s: rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8) for s, n in [("train", 4), ("test", 2)]}
    labels = {"train": np.array([[10], [1], [9], [10]], np.uint8), "test": np.array([[3], [10]], np.uint8)}
    for s in D.SPLITS:
        sio.savemat(tmp_path / f"{s}_32x32.mat", {"X": hwcn[s], "y": labels[s]})
    b = D.load_dataset("svhn", data_dir=tmp_path)
    assert b.labels["train"].tolist() == [0, 1, 9, 0]  # SVHN's label 10 is the digit 0
    assert b.labels["test"].tolist() == [3, 0]
    assert torch.equal(b.images["train"], torch.from_numpy(hwcn["train"].transpose(3, 2, 0, 1).copy()))
    assert next(b.eval_batches(2))[0].shape == (2, 3, 32, 32)


def test_svhn_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else real(n, *a))
    (tmp_path / "train_32x32.mat").write_bytes(b"x")
    (tmp_path / "test_32x32.mat").write_bytes(b"x")
    with pytest.raises(ElthError, match="^svhn needs scipy: pip install scipy$"):
        D.load_dataset("svhn", data_dir=tmp_path)


@pytest.mark.parametrize("name,expected", [("cifar10", "cifar-10-batches-py/"), ("cifar100", "cifar-100-python/"),
                                           ("svhn", "train_32x32.mat"), ("mnist", "MNIST/raw/"),
                                           ("fashion-mnist", "FashionMNIST/raw/")])
def test_missing_dataset_message(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(ElthError) as e:
        D.load_dataset(name, data_dir=tmp_path / "empty")
    msg = str(e.value)
    assert msg.startswith(f"{name} not found in {tmp_path / 'empty'} (expected {expected}")
    assert "--download" in msg and "--data-dir" in msg and "ELTH_DATA" in msg and "\n" not in msg


def test_missing_dataset_uses_elth_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELTH_DATA", str(tmp_path))
    with pytest.raises(ElthError, match=f"cifar10 not found in {tmp_path} "):
        D.load_dataset("cifar10")


def test_corrupt_file_message(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ElthError) as e:
        D.load_dataset("cifar10", data_dir=tmp_path)
    assert str(e.value).startswith(f"cannot read cifar10 from {tmp_path}") and "--download" in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Hostile and malformed CIFAR files: read by elth's restricted unpickler, never by pickle.load
# ---------------------------------------------------------------------------------------------


class _Hostile:
    """Pickles as the call ``func(*args)``, which a plain unpickler makes: how a data file runs code."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _hostile(kind: str, marker: Path) -> _Hostile:
    """A value whose unpickling creates ``marker``; its dotted name in a protocol-2 pickle is ``kind``
    (Python 3 writes them in Python 2's spelling there: builtins as __builtin__, subprocess as
    commands, which a plain unpickler maps back)."""
    return {"posix.system": _Hostile(os.system, f"touch '{marker}'"),
            "__builtin__.eval": _Hostile(eval, f"open({str(marker)!r}, 'w').close()"),
            "commands.run": _Hostile(subprocess.run, ["touch", str(marker)])}[kind]


# The file of each set that gets the hostile value, and the key that holds its labels.
_CIFAR_TARGETS = {"cifar10": ("cifar-10-batches-py/data_batch_1", b"labels"),
                  "cifar100": ("cifar-100-python/train", b"fine_labels")}


def _write_cifar(name: str, root: Path) -> None:
    _write_cifar10(root) if name == "cifar10" else _write_cifar100(root)


def _plant(root: Path, name: str, value: object) -> Path:
    """Rewrite the target file of ``name`` as the official format with ``value`` as its batch label."""
    target, key = _CIFAR_TARGETS[name]
    _py2_pickle(root / target, {b"batch_label": value, b"data": _random_images(4, (3072,), 5), key: [1, 2, 3, 4]})
    return root / target


def _refusal(path: Path, kind: str) -> str:
    return (f"{path} is not a CIFAR batch file: it asks to load '{kind}', which a data file never needs; "
            f"replace the file with the official one")


@pytest.mark.parametrize("kind", ["posix.system", "__builtin__.eval", "commands.run"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_hostile_cifar_file_is_refused_and_never_runs(tmp_path: Path, name: str, kind: str) -> None:
    marker = tmp_path / "MARKER"
    _write_cifar(name, tmp_path / "data")
    path = _plant(tmp_path / "data", name, _hostile(kind, marker))
    with pytest.raises(ElthError) as e:
        D.load_dataset(name, data_dir=tmp_path / "data")
    assert str(e.value) == _refusal(path, kind) and e.value.exit_code == 1
    assert not marker.exists()


def test_hostile_cifar_file_refused_under_every_protocol(tmp_path: Path) -> None:
    # Python 3 spells the names its own way (builtins.eval); the allow-list does not care.
    marker = tmp_path / "MARKER"
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        value = {"data": _random_images(2, (3072,), 0), "labels": [0, 1], "batch_label": _hostile("__builtin__.eval", marker)}
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        with pytest.raises(ElthError, match=r"it asks to load '(__builtin__|builtins)\.eval'"):
            D.load_dataset("cifar10", data_dir=tmp_path)
        assert not marker.exists(), protocol


def test_hostile_meta_file_is_never_read(tmp_path: Path) -> None:
    # Class names are cosmetic: elth never opens batches.meta, so it cannot run code from there.
    marker = tmp_path / "MARKER"
    written = _write_cifar10(tmp_path / "data")
    _py2_pickle(tmp_path / "data" / "cifar-10-batches-py" / "batches.meta",
                {b"label_names": _hostile("posix.system", marker)})
    b = D.load_dataset("cifar10", data_dir=tmp_path / "data")
    assert b.labels["test"].tolist() == written["test"][1] and not marker.exists()


@pytest.fixture(scope="module")
def cifar_tickets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny untrained ticket for each CIFAR set (eval with --weights init), made in this process."""
    folder = tmp_path_factory.mktemp("tickets")
    paths = {}
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        paths[name] = folder / f"{name}.safetensors"
        random_ticket("resnet8-w2", (3, 32, 32), classes, 0.5, seed=0, dataset=name).save(paths[name])
    return paths


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_hostile_cifar_file_through_the_cli(tmp_path: Path, cifar_tickets: dict[str, Path], name: str) -> None:
    data, marker = tmp_path / "data", tmp_path / "MARKER"
    _write_cifar(name, data)
    args = ("eval", str(cifar_tickets[name]), "--weights", "init", "--dataset", name, "--data-dir", str(data))
    r = run_elth(*args)
    assert r.code == 0, r.stderr  # the same command on the good folder works
    path = _plant(data, name, _hostile("posix.system", marker))
    r = run_elth(*args)
    assert_clean_error(r, codes=(1,))
    assert r.stderr.strip().splitlines()[-1] == f"error: {_refusal(path, 'posix.system')}"
    assert not marker.exists()
    if name == "cifar10":  # train reads the data the same way, before any work
        out = tmp_path / "out.safetensors"
        r = run_elth("train", str(cifar_tickets[name]), "--data-dir", str(data), "--epochs", "1", "-o", str(out))
        assert_clean_error(r, codes=(1,), contains=_refusal(path, "posix.system"))
        assert not marker.exists() and not out.exists()


def _numpy1_spelling(path: Path) -> None:
    # numpy 1 (and so every official file) names numpy.core.multiarray; numpy 2 writes numpy._core.
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


@pytest.mark.parametrize("form", ["python2", "numpy1", "protocol-0", "protocol-2", "protocol-4", "protocol-5",
                                  "bytes-keys", "numpy-labels"])
def test_cifar_files_are_read_by_elth_not_pickle_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       form: str) -> None:
    """The official layout in every form it comes in loads with the right pixels (NCHW) and labels,
    and neither pickle.load nor torchvision's CIFAR classes are involved."""
    written = _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for f in ("data_batch_2", "test_batch"):
        path = folder / f
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        if form == "numpy1":
            _numpy1_spelling(path)
        elif form.startswith("protocol-"):  # a Python 3 re-pack with str keys
            path.write_bytes(pickle.dumps(entry, protocol=int(form.split("-")[1])))
        elif form == "bytes-keys":
            path.write_bytes(pickle.dumps({k.encode(): v for k, v in entry.items()}, protocol=4))
        elif form == "numpy-labels":  # labels as numpy integers, one by one and as an array
            entry["labels"] = [np.int64(v) for v in entry["labels"]] if f == "test_batch" else np.array(entry["labels"])
            path.write_bytes(pickle.dumps(entry, protocol=2))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CIFAR file went through plain pickle or torchvision's CIFAR classes")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", boom)
    b = D.load_dataset("cifar10", data_dir=tmp_path)
    for split in D.SPLITS:
        x, y = written[split]
        assert torch.equal(b.images[split], torch.from_numpy(x.reshape(-1, 3, 32, 32)))
        assert b.images[split].is_contiguous() and b.images[split].dtype == torch.uint8
        assert b.labels[split].tolist() == y and b.labels[split].dtype == torch.int64


def test_a_cifar_subset_loads(tmp_path: Path) -> None:
    # No md5 requirement: files with fewer images than the official ones (even none) load.
    _write_cifar10(tmp_path, per_batch=1, n_test=2)
    _py2_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_5",
                {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()  # class names are cosmetic
    b = D.load_dataset("cifar10", data_dir=tmp_path)
    assert b.num_examples("train") == 4 and b.num_examples("test") == 2


_ENTRY = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}


@pytest.mark.parametrize("content,what", [
    ([1, 2, 3], "it holds a list, not a dict"),
    ({b"labels": [0, 1, 2]}, "it has no 'data' entry"),
    ({b"data": np.zeros((3, 3072), np.uint8)}, "it has no 'labels' entry"),
    ({**_ENTRY, b"data": np.zeros((3, 3, 32, 32), np.uint8)},
     "its data is an array of uint8, shape (3, 3, 32, 32), expected an N x 3072 uint8 array"),
    ({**_ENTRY, b"data": np.zeros((3, 3072), np.float32)},
     "its data is an array of float32, shape (3, 3072), expected an N x 3072 uint8 array"),
    ({**_ENTRY, b"data": b"x" * 9216}, "its data is a str, expected an N x 3072 uint8 array"),
    ({**_ENTRY, b"labels": [0, 1]}, "it has 2 labels for 3 images"),
    ({**_ENTRY, b"labels": [0, 1, 12]}, "it has labels 0..12, outside 0..9"),
    ({**_ENTRY, b"labels": [0, -1, 2]}, "it has labels -1..2, outside 0..9"),
    ({**_ENTRY, b"labels": [0, 1, 2**80]}, "it has labels 0..a huge number, outside 0..9"),
    ({**_ENTRY, b"labels": [0, 1.0, 2]}, "its labels hold a float, expected integers"),
    ({**_ENTRY, b"labels": b"abc"}, "its labels are a str, expected a list of integers"),
    ({**_ENTRY, b"labels": np.zeros((3, 1), np.int64)},
     "its labels are an array of int64, shape (3, 1), expected a list of integers"),
])
def test_malformed_cifar_file_is_refused_with_its_name(tmp_path: Path, content: object, what: str) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    _py2_pickle(path, content)
    with pytest.raises(ElthError) as e:
        D.load_dataset("cifar10", data_dir=tmp_path)
    assert str(e.value) == f"{path} is not a CIFAR batch file: {what}; replace the file with the official one"


def test_cifar_download_is_torchvision_download_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets
    import torchvision.datasets.utils

    calls = []

    def fake_download(url: str, root: str, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        _write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    b = D.load_dataset("cifar10", data_dir=tmp_path / "d", download=True)
    source = torchvision.datasets.CIFAR10
    assert calls == [(source.url, source.filename, source.tgz_md5)] and b.num_examples("train") == 20
    # Files that are there are used as they are: a subset is never downloaded over.
    D.load_dataset("cifar10", data_dir=tmp_path / "d", download=True)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# Folder sets
# ---------------------------------------------------------------------------------------------


def _write_folder_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + 4 * i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder_needs_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ElthError) as e:
        D.get_dataset_info("imagefolder")
    assert "--data-dir" in str(e.value) and "train/" in str(e.value) and "val/" in str(e.value)
    with pytest.raises(ElthError, match="--data-dir"):
        D.load_dataset("imagefolder")
    with pytest.raises(ElthError) as e:
        D.get_dataset_info("imagefolder", data_dir=tmp_path)
    msg = str(e.value)
    assert f"not found in {tmp_path}" in msg and "--data-dir" in msg and "train/ and val/" in msg


def test_imagefolder_tiny_tree(tmp_path: Path) -> None:
    _write_folder_tree(tmp_path)
    info = D.get_dataset_info("imagefolder", data_dir=tmp_path)
    assert info.num_classes == 2 and info.input_shape == (3, 224, 224) and not info.in_memory
    b = D.load_dataset("imagefolder", data_dir=tmp_path, num_workers=0)
    assert b.info == info and b.num_examples("train") == 6 and b.num_examples("test") == 6
    assert b.steps_per_epoch(2) == 3
    full = list(b.train_batches(2, epoch=0, seed=1))
    assert len(full) == 3
    for x, y in full:
        assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in full]).tolist()) == [0, 0, 0, 1, 1, 1]
    tail = list(b.train_batches(2, epoch=0, seed=1, start_batch=1))
    assert len(tail) == 2
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(full[1:], tail))
    other = torch.cat([x for x, _ in b.train_batches(2, epoch=1, seed=1)])
    assert not torch.equal(other, torch.cat([x for x, _ in full]))
    xe, ye = _all_batches(b.eval_batches(4))
    assert xe.shape == (6, 3, 224, 224) and ye.tolist() == [0, 0, 0, 1, 1, 1]
    r1 = list(b.train_batches(2, epoch=0, seed=1, rank=1, world_size=2))
    assert len(r1) == 3 and all(x.shape[0] == 1 for x, _ in r1)
    assert torch.equal(r1[0][0][0], full[0][0][1])  # rank 1 takes the second half of each global batch


def test_imagefolder_workers_match_main_process(tmp_path: Path) -> None:
    _write_folder_tree(tmp_path, per_class=2)
    serial = D.load_dataset("imagefolder", data_dir=tmp_path, num_workers=0)
    workers = D.load_dataset("imagefolder", data_dir=tmp_path, num_workers=2)
    for epoch in range(2):  # the second epoch reuses the persistent workers
        a = _all_batches(serial.train_batches(2, epoch, seed=4))
        b = _all_batches(workers.train_batches(2, epoch, seed=4))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_imagenet_requires_1000_classes(tmp_path: Path) -> None:
    _write_folder_tree(tmp_path / "imagenet", per_class=1)
    assert D.get_dataset_info("imagenet", data_dir=tmp_path).num_classes == 1000
    with pytest.raises(ElthError, match="2 class folders in train/, expected 1000; use --dataset imagefolder"):
        D.load_dataset("imagenet", data_dir=tmp_path, num_workers=0)
    with pytest.raises(ElthError, match="imagenet not found"):
        D.load_dataset("imagenet", data_dir=tmp_path / "nothing", num_workers=0)


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_channels_last(digits: D.TensorBundle) -> None:
    b = D.load_dataset("digits", device="cuda")
    assert b.images["train"].is_cuda
    x, y = next(b.train_batches(64, 0, 0))
    assert x.is_cuda and y.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    ref, ref_y = next(digits.train_batches(64, 0, 0))
    assert torch.equal(y.cpu(), ref_y) and torch.allclose(x.cpu(), ref, atol=1e-6)
    xe, _ = next(b.eval_batches(64))
    assert xe.is_cuda and xe.is_contiguous(memory_format=torch.channels_last)
    tail = list(b.train_batches(64, 1, 2, start_batch=3))
    full = list(b.train_batches(64, 1, 2))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(full[3:], tail))
