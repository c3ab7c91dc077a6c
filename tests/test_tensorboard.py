"""``--log-dir``: TensorBoard event files of a training (the TensorBoard hook of train/hooks.py, the option's
checks, where IMP's rounds and ``train --out-dir``'s tickets write theirs). Read back as TensorBoard reads them
(``EventAccumulator``, which honours a resumed run's ``purge_step``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'elth[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from conftest import ROOT, assert_clean_error, make_ticket, run_doc_commands, run_in_process  # noqa: E402
from elth_cli import data, train  # noqa: E402
from elth_cli.errors import TENSORBOARD_MISSING, UsageError  # noqa: E402
from elth_cli.train.options import RunOptions  # noqa: E402

TIMINGS = ("seconds", "images_per_s")  # differ from run to run; everything else is the training's


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load_dataset("digits")


@pytest.fixture(scope="module")
def ticket():
    return make_ticket("resnet8-w4")


def config(ticket, digits, epochs: int = 2) -> train.TrainConfig:
    return train.default_recipe(ticket.spec, digits.info).replace(epochs=epochs, warmup="10it")


def read_events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str]]]:
    """Every scalar tag's (step, value) points and the hparams texts, as TensorBoard shows them."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("hparams/text_summary")]
    return scalars, texts


def without_timings(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    return {tag: points for tag, points in scalars.items() if tag not in TIMINGS}


def next_second(folder: Path) -> None:
    """Wait until the second the folder's newest event file was made has passed: event files are named by
    the second they were made in, and readers take them in name order (a real resume is seconds later)."""
    newest = max(int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*"))
    while int(time.time()) <= newest:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, digits, ticket):
    """An uninterrupted 2-epoch run with --log-dir and --log-jsonl: the reference."""
    tmp = tmp_path_factory.mktemp("whole")
    run = RunOptions(log_dir=tmp / "tb", jsonl_path=tmp / "log.jsonl", checkpoint_path=tmp / "run.ckpt")
    result = train.train_state(ticket.build_model("init"), ticket.masks, digits, config(ticket, digits), run=run)
    return tmp, result


def test_event_files_hold_each_epochs_record(whole_run, ticket) -> None:
    tmp, result = whole_run
    scalars, texts = read_events(tmp / "tb")
    records = [json.loads(line) for line in (tmp / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [23, 46]
    names = {"epoch": "epoch", "lr": "lr", "train_loss": "train/loss", "train_acc": "train/acc",
             "test_loss": "test/loss", "test_acc": "test/acc", "seconds": "seconds", "images_per_s": "images_per_s"}
    assert set(records[0]) == {*names, "step"}
    for key, tag in names.items():  # the JSON line's value, as TensorBoard keeps it (float32)
        assert scalars[tag] == [(r["step"], float(np.float32(r[key]))) for r in records], tag
    # Besides the record: the masks' sparsity and the training FLOPs so far.
    assert scalars["sparsity"] == [(23, 0.5), (46, 0.5)]
    assert scalars["train/flops"][-1] == (46, float(np.float32(result.metrics["train_flops"])))
    assert set(scalars) == {*names.values(), "sparsity", "train/flops"}
    # The resolved hyperparameters, once, at the start step.
    [(step, text)] = texts
    assert step == 0 and "| epochs | 2 |" in text and "| steps_per_epoch | 23 |" in text


def test_a_stopped_and_resumed_run_reads_as_an_uninterrupted_one(whole_run, digits, ticket, tmp_path) -> None:
    whole, _ = read_events(whole_run[0] / "tb")
    cfg, tb, ckpt = config(ticket, digits), tmp_path / "tb", tmp_path / "run.ckpt"

    def segment(**kw) -> train.TrainResult:
        run = RunOptions(log_dir=tb, checkpoint_path=ckpt, checkpoint_every_s=0, **kw)
        return train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg, run=run)

    with pytest.raises(train.TrainingStopped):
        segment(stop_at_step=30)  # mid-epoch 2: epoch 1 is written, and the checkpoint at step 30
    shutil.copy(ckpt, tmp_path / "at-30.ckpt")
    next_second(tb)
    segment()  # resumed from step 30 to the end
    stopped_once, texts = read_events(tb)
    assert without_timings(stopped_once) == without_timings(whole) and len(texts) == 1
    # A run killed after it wrote epoch 2 but before a checkpoint held it (SIGKILL) resumes from step 30
    # again: what it wrote past the checkpoint is purged, not doubled.
    shutil.copy(tmp_path / "at-30.ckpt", ckpt)
    next_second(tb)
    segment()
    again, texts = read_events(tb)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 3
    assert without_timings(again) == without_timings(whole) and len(texts) == 1


def test_a_missing_tensorboard_is_one_line_before_any_work(capsys, monkeypatch, tmp_path, ticket) -> None:
    source, out = tmp_path / "t.safetensors", tmp_path / "out.safetensors"
    ticket.save(source)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(UsageError, match=r"^--log-dir needs tensorboard: pip install 'elth\[tensorboard\]'$"):
        RunOptions(log_dir=tmp_path / "tb")
    r = run_in_process(capsys, "train", source, "-o", out, "--epochs", "1", "--log-dir", tmp_path / "tb")
    assert_clean_error(r, codes=(2,), contains=TENSORBOARD_MISSING)
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_a_broken_tensorboard_fails_the_run_in_one_line(monkeypatch, tmp_path, digits, ticket) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # found, but torch cannot import it
    run = RunOptions(log_dir=tmp_path / "tb")
    with pytest.raises(UsageError, match="needs tensorboard"):
        train.train_state(ticket.build_model("init"), ticket.masks, digits, config(ticket, digits, 1), run=run)


def test_a_log_dir_that_is_a_file_is_refused(capsys, tmp_path, ticket) -> None:
    source, taken = tmp_path / "t.safetensors", tmp_path / "taken"
    ticket.save(source)
    taken.write_text("mine")
    r = run_in_process(capsys, "train", source, "-o", tmp_path / "out.safetensors", "--log-dir", taken)
    assert_clean_error(r, codes=(2,), contains="is a file, not a folder")
    assert taken.read_text() == "mine"


def test_the_option_is_checked_without_importing_tensorboard() -> None:
    script = textwrap.dedent("""
        import sys
        from elth_cli.cli.preflight import check_files
        from elth_cli.train.options import RunOptions
        RunOptions(log_dir="tb")
        check_files({"log_dir": "tb"})
        print(sorted(m for m in ("tensorboard", "torch") if m in sys.modules))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_imp_writes_one_folder_per_round(tmp_path, digits) -> None:
    from elth_cli.find import ImpOptions, find_imp

    cfg = train.default_recipe(make_ticket("resnet8-w4").spec, digits.info).replace(epochs=1, warmup="5it")
    find_imp(ImpOptions("resnet8-w4", "digits", rounds=1), cfg, digits, tmp_path / "imp", handle_signals=False,
             log_dir=tmp_path / "tb")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["round-00", "round-01"]
    for r in (0, 1):
        scalars, texts = read_events(tmp_path / "tb" / f"round-{r:02d}")
        records = [json.loads(line) for line in (tmp_path / "imp" / f"round-{r:02d}.jsonl").read_text().splitlines()]
        assert scalars["test/acc"] == [(rec["step"], float(np.float32(rec["test_acc"]))) for rec in records]
        assert len(texts) == 1
    assert read_events(tmp_path / "tb" / "round-01")[0]["sparsity"] == [(23, pytest.approx(0.2, abs=1e-3))]


def test_train_out_dir_writes_one_folder_per_ticket(capsys, tmp_path) -> None:
    sources = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for seed, path in enumerate(sources):
        make_ticket("resnet8-w4", seed=seed).save(path)
    r = run_in_process(capsys, "train", *sources, "--out-dir", tmp_path / "out", "--epochs", "1",
                       "--log-dir", tmp_path / "tb", "--quiet")
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["a.safetensors", "b.safetensors"]
    for path in sources:
        scalars, _ = read_events(tmp_path / "tb" / path.name)
        assert [step for step, _ in scalars["train/loss"]] == [23]


def test_the_tracking_commands_of_docs_training_run_as_written(capsys, tmp_path, monkeypatch) -> None:
    """docs/training.md, "Tracking": its commands, in order, in one folder (trainings shortened to 2 epochs)."""
    monkeypatch.chdir(tmp_path)
    section = (ROOT / "docs" / "training.md").read_text().split("### Tracking")[1].split("\n### ")[0]
    run_doc_commands(capsys, section.split("```")[1], expected=3)
    assert [step for step, _ in read_events(tmp_path / "tb" / "r20")[0]["test/acc"]] == [23, 46]
    assert sorted(p.name for p in (tmp_path / "tb" / "imp").iterdir()) == ["round-00", "round-01"]
