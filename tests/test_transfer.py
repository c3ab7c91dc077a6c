"""Tickets across data sets: another set of the same shape and classes trains as is (provenance
records both), another class count needs --new-head, another input size --resize. The data sets
are tiny files in their real on-disk formats (CIFAR-10/100 pickles, SVHN .mat)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket
from elth_cli.transfer import new_head
from test_data import _py2_pickle, _random_images, _write_cifar10


@pytest.fixture
def data_dir(tmp_path):
    """CIFAR-10, CIFAR-100 and SVHN, each a few images in its real format, in one folder."""
    sio = pytest.importorskip("scipy.io")
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = _random_images(8, (3072,), 1)
    for split, n in (("train", 8), ("test", 4)):
        _py2_pickle(folder / split, {b"data": x[:n], b"fine_labels": [(7 * i) % 100 for i in range(n)],
                                     b"coarse_labels": [0] * n})
    _py2_pickle(folder / "meta", {b"fine_label_names": [b"f%d" % i for i in range(100)]})
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                      "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    return tmp_path


def _cifar_ticket(tmp_path, shape=(3, 32, 32)):
    path = tmp_path / "c.safetensors"
    random_ticket("resnet8-w4", shape, 10, 0.5, seed=0, dataset="cifar10").save(path)
    return path


def test_a_ticket_trains_on_another_data_set_of_its_shape(capsys, tmp_path, data_dir):
    ticket = _cifar_ticket(tmp_path)
    out = tmp_path / "svhn.safetensors"
    r = run_in_process(capsys, "train", ticket, "--dataset", "svhn", "--data-dir", data_dir, "-o", out,
                       "--epochs", "1", "--batch-size", "4", "-q")
    assert r.code == 0, r.stderr
    trained = Ticket.load(out)
    assert trained.dataset == "svhn" and trained.hparams["dataset"] == "svhn"
    assert trained.hparams["data_transfer"] == {"from": "cifar10", "to": "svhn", "new_head": False}


def test_another_class_count_needs_a_new_head(capsys, tmp_path, data_dir):
    ticket = _cifar_ticket(tmp_path)
    out = tmp_path / "c100.safetensors"
    args = ("train", ticket, "--dataset", "cifar100", "--data-dir", data_dir, "-o", out, "--epochs", "1",
            "--batch-size", "4", "-q")
    assert_clean_error(run_in_process(capsys, *args), codes=(1,), contains="--new-head")
    assert not out.exists()
    r = run_in_process(capsys, *args, "--new-head")
    assert r.code == 0, r.stderr
    trained, source = Ticket.load(out), Ticket.load(ticket)
    assert trained.num_classes == 100 and trained.masks["fc.weight"].shape[0] == 100
    assert all(torch.equal(trained.masks[k], source.masks[k]) for k in source.masks if k != "fc.weight")
    assert trained.hparams["data_transfer"]["new_head"] is True


def test_another_input_size_needs_a_resize(capsys, tmp_path, data_dir):
    ticket = _cifar_ticket(tmp_path, shape=(3, 16, 16))  # made for 16x16 inputs, as an ImageNet ticket for 224
    out = tmp_path / "small.safetensors"
    args = ("train", ticket, "--dataset", "cifar10", "--data-dir", data_dir, "-o", out, "--epochs", "1",
            "--batch-size", "4", "-q")
    assert_clean_error(run_in_process(capsys, *args), codes=(1,), contains="--resize 16")
    r = run_in_process(capsys, *args, "--resize", "16")
    assert r.code == 0, r.stderr
    trained = Ticket.load(out)
    assert trained.hparams["resize"] == 16 and tuple(trained.input_shape) == (3, 16, 16)
    # eval and compare --interpolate read the recorded resize (they refused and suggested an option they lacked).
    data = ("--dataset", "cifar10", "--data-dir", data_dir)
    r = run_in_process(capsys, "eval", out, *data, "--json")
    assert r.code == 0, r.stderr
    import json

    assert json.loads(r.stdout)["resize"] == 16
    assert run_in_process(capsys, "eval", out, *data, "--resize", "16", "-q").code == 0
    assert_clean_error(run_in_process(capsys, "eval", out, *data, "--resize", "8"), codes=(1,), contains="--resize 16")
    again = tmp_path / "again.safetensors"
    assert run_in_process(capsys, *args[:6], "-o", again, "--epochs", "1", "--batch-size", "4", "-q", "--resize", "16",
                          "--seed", "1").code == 0
    r = run_in_process(capsys, "compare", out, again, "--interpolate", "--points", "2", "--bn-batches", "1", *data,
                       "--json")
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["interpolation"]["points"]) == 2


def test_new_head_keeps_everything_but_the_classifier():
    source = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.8, seed=0, dataset="digits")
    moved = new_head(source, 5, seed=1)
    head = moved.masks["fc.weight"]
    assert head.shape == (5, 16) and moved.init["fc.weight"].shape == (5, 16)
    old_density = float(source.masks["fc.weight"].float().mean())
    assert 0.1 < old_density < 0.3  # the classifier was pruned: the new one is too, at its rate
    assert int(head.sum()) == round(old_density * head.numel())
    assert all(torch.equal(moved.masks[k], source.masks[k]) for k in source.masks if k != "fc.weight")
    assert moved.hparams["new_head"]["from_classes"] == 10 and moved.hparams["new_head"]["keys"] == ["fc.weight", "fc.bias"]
