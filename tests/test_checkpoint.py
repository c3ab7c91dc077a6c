"""The checkpoint format's loader: whatever happens to a checkpoint's metadata or bytes, resuming
from it either works or stops with elth's own one-line error, never anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load

from conftest import make_ticket
from elth_cli.train.options import RunOptions
from elth_cli import container, data, train
from elth_cli.runtime.device import device_setup
from elth_cli.errors import ElthError


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A checkpoint of a resnet8-w4 run stopped mid-epoch 2, and what resuming it needs."""
    bundle = data.load_dataset("digits")
    ticket = make_ticket("resnet8-w4")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2)
    ckpt = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    with pytest.raises(train.TrainingStopped):
        train.train_state(ticket.build_model("init"), ticket.masks, bundle, cfg, run=RunOptions(checkpoint_path=ckpt, stop_at_step=30, handle_signals=False))
    return ticket, cfg, ckpt.read_bytes(), ckpt.parent


def _resume(ticket, cfg, raw: bytes, folder) -> None:
    """Read the checkpoint and load it into fresh parts, as a resumed run does."""
    path = folder / "mutant.ckpt"
    path.write_bytes(raw)
    try:
        ckpt = train.read_checkpoint(path)
        parts = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, device_setup("cpu"))
        train.restore_checkpoint(ckpt, parts.model, parts.optimizer, parts.scaler, parts.step.stats)
        masks = ckpt.masks()
        if masks is not None:
            from elth_cli.masks import same_layout

            if same_layout(masks, parts.masks.masks):
                parts.masks.load(masks)
        train.run_differences(ckpt.identity, {"config": cfg.as_dict()})
    except ElthError:
        pass


_VALUE = (st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=6),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                       max_leaves=6).map(json.dumps)
          | st.text(max_size=10))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_metadata_values_resume_or_are_refused(stopped, data) -> None:
    ticket, cfg, raw, folder = stopped
    n = int.from_bytes(raw[:8], "little")
    meta = dict(json.loads(raw[8:8 + n])["__metadata__"])
    for key in data.draw(st.lists(st.sampled_from(sorted(meta)), min_size=1, max_size=3, unique=True)):
        meta[key] = data.draw(_VALUE)
    _resume(ticket, cfg, container.save_with_digest(st_load(raw), meta), folder)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**9))
def test_any_byte_damage_resumes_or_is_refused(stopped, edits, cut) -> None:
    ticket, cfg, raw, folder = stopped
    damaged = bytearray(raw)
    for where, byte in edits:
        damaged[where % len(damaged)] = byte
    if cut is not None:
        damaged = damaged[: cut % len(damaged)]
    _resume(ticket, cfg, bytes(damaged), folder)


def test_a_header_that_renames_tensors_is_refused(stopped) -> None:
    """Header edits keep the payload (and its digest) intact: the loader must still refuse what does
    not fit the run, in one line."""
    ticket, cfg, raw, folder = stopped
    tensors = st_load(raw)
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    tensors["model/fc.renamed"] = tensors.pop("model/fc.weight")
    path = folder / "renamed.ckpt"
    path.write_bytes(container.save_with_digest(tensors, meta))  # a valid digest: the run's own checks refuse it
    parts = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, device_setup("cpu"))
    with pytest.raises(ElthError, match="does not fit this run"):
        train.restore_checkpoint(train.read_checkpoint(path), parts.model, parts.optimizer, parts.scaler,
                                 parts.step.stats)


def test_resuming_with_another_thread_count_warns(tmp_path, capsys) -> None:
    """On the CPU the result depends on the thread count; a resume with another one says so (it did not)."""
    import torch

    bundle = data.load_dataset("digits")
    ticket = make_ticket("resnet8-w4")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2)
    ckpt = tmp_path / "run.ckpt"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(train.TrainingStopped):
            train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, stop_at_step=5, handle_signals=False)
        assert train.read_checkpoint(ckpt).cpu_threads == 1
        torch.set_num_threads(2)
        capsys.readouterr()
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, handle_signals=False)
        err = capsys.readouterr().err
        assert f"warning: {ckpt} was written by a run with 1 CPU thread; resuming with 2" in err
    finally:
        torch.set_num_threads(before)
