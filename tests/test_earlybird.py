"""Early-bird tickets: the mask distance, detection on runs whose mask settles or keeps moving, the
exact sparsity of the ticket, resuming, and early-bird IMP rounds. resnet8-w4 on digits throughout."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli.train.options import RunOptions
from elth_cli import archs, data
from elth_cli.find.earlybird import EarlyBirdOptions, find_early_bird
from elth_cli.find import ImpOptions, find_imp, fresh_ticket
from elth_cli.train import TrainingStopped, train_state
from elth_cli.train.config import config_from_options
from elth_cli.train.convergence import MaskConvergence, converged, mask_distance
from elth_cli.train.loop import Hook

ARCH = "resnet8-w4"


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load_dataset("digits")


def recipe(bundle, **options):
    return config_from_options(archs.resolve_arch(ARCH), bundle.info, device="cpu", precision="fp32", **options)


# ----- the distance and the rule --------------------------------------------------------------
@pytest.mark.parametrize("kept", [0.05, 0.5, 0.9])
def test_distance_is_0_for_equal_and_1_for_complementary_masks(kept) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1000, generator=gen) < kept
    assert mask_distance(a, a.clone()) == 0.0
    assert mask_distance(a, ~a) == 1.0
    b = a.clone()
    b[a.nonzero()[:5, 0]] = False  # five kept weights dropped
    assert mask_distance(a, b) == pytest.approx(5 / (2 * int(a.sum()) - 5))
    with pytest.raises(ValueError):
        mask_distance(a, a[:10])


def test_the_rule_needs_a_full_window_below_epsilon() -> None:
    assert not converged([0.01, 0.01], window=3, epsilon=0.1)
    assert converged([0.5, 0.01, 0.05, 0.09], window=3, epsilon=0.1)
    assert not converged([0.01, 0.2, 0.01, 0.01], window=3, epsilon=0.1)


# ----- detection on crafted runs -----------------------------------------------------------------
class Shuffle(Hook):
    """Scrambles every conv/linear weight at each epoch end: the magnitude mask never settles."""

    def on_epoch_end(self, loop, record) -> None:
        gen = torch.Generator().manual_seed(record["epoch"])
        with torch.no_grad():
            for key in loop.masks():
                p = dict(loop.model.named_parameters())[key]
                p.copy_(p.reshape(-1)[torch.randperm(p.numel(), generator=gen)].reshape(p.shape))


def detect(bundle, extra_hooks, lr: float, epochs: int = 4):
    dense = fresh_ticket(ARCH, (1, 8, 8), 10, dataset="digits")
    keys = list(dense.masks)
    total = sum(m.numel() for m in dense.masks.values())
    detector = MaskConvergence(keys, round(0.8 * total), window=2, epsilon=0.1)
    result = train_state(dense.build_model("init"), dense.masks, bundle, recipe(bundle, epochs=epochs, lr=lr), 0, run=RunOptions(hooks=[*extra_hooks, detector]))
    return result


def test_a_mask_that_stops_moving_is_detected_and_the_run_ends(digits) -> None:
    result = detect(digits, [], lr=1e-12)  # the weights do not move: every distance is 0
    state = result.extra["early_bird"]
    assert state["distances"] == [0.0, 0.0] and state["detected_epoch"] == 3
    assert result.metrics["steps"] == 3 * 23 < result.metrics["total_steps"]
    assert [r.get("mask_distance") for r in result.history] == [None, 0.0, 0.0]  # in the JSON lines


def test_a_mask_that_keeps_moving_is_never_detected(digits) -> None:
    result = detect(digits, [Shuffle()], lr=1e-12)
    state = result.extra["early_bird"]
    assert state["detected_epoch"] is None and min(state["distances"]) > 0.5
    assert result.metrics["steps"] == result.metrics["total_steps"]  # the whole recipe


# ----- the early-bird ticket ------------------------------------------------------------------
def search(bundle, **train_options):
    opts = EarlyBirdOptions(ARCH, "digits", 0.9, rewind="1ep", window=2, epsilon=0.15)
    return find_early_bird(opts, recipe(bundle, epochs=10), bundle, **train_options)


def test_an_early_bird_ticket_has_the_exact_sparsity_and_resumes_to_the_same_detection(digits, tmp_path) -> None:
    whole = search(digits)
    total = sum(m.numel() for m in whole.masks.values())
    assert sum(int((~m).sum()) for m in whole.masks.values()) == round(0.9 * total)
    found = whole.metrics["early_bird"]
    assert found["converged"] and found["steps"] < found["total_steps"]
    assert whole.cost["train_steps"] == found["steps"] and whole.rewind_step == 23 and not whole.is_trained
    ckpt = tmp_path / "eb.ckpt"
    with pytest.raises(TrainingStopped):
        search(digits, checkpoint_path=ckpt, stop_at_step=found["detected_step"] - 10)
    resumed = search(digits, checkpoint_path=ckpt)
    assert resumed.metrics["early_bird"] == found
    assert all(torch.equal(whole.masks[k], resumed.masks[k]) and torch.equal(whole.init[k], resumed.init[k])
               for k in whole.masks)


def test_early_bird_imp_rounds_stop_early_and_cost_less(digits, tmp_path) -> None:
    cfg = recipe(digits, epochs=6)
    opts = ImpOptions(ARCH, "digits", rounds=2, rewind="1ep", early_bird=True, window=2, epsilon=0.15)
    records, final = find_imp(opts, cfg, digits, tmp_path / "run")
    assert [r.stopped_early for r in records][-1] == 0  # the last round has no next mask: it trains in full
    assert records[0].stopped_early == 1 and records[0].steps < cfg.epochs * 23
    full_steps = cfg.epochs * 23 + 2 * (cfg.epochs - 1) * 23
    assert final.cost["train_steps"] + records[-1].steps < full_steps
    assert final.sparsity == pytest.approx(0.36, abs=1e-3)
    log = [json.loads(line) for line in (tmp_path / "run" / "find.jsonl").read_text().splitlines()]
    assert [entry["stopped_early"] for entry in log] == [r.stopped_early for r in records]
    # Re-running reads the finished rounds back, early-bird records and all.
    again, _ = find_imp(opts, cfg, digits, tmp_path / "run")
    assert again == records


@pytest.mark.parametrize("args, message", [
    (["--method", "early-bird", "--window", "0"], "--window"),
    (["--method", "early-bird", "--epsilon", "2"], "--epsilon"),
    (["--method", "imp", "--out-dir", "run", "--rounds", "2", "--window", "3"], "--early-bird"),
    (["--method", "rigl", "--early-bird"], "--early-bird is for imp"),
])
def test_early_bird_options_are_checked(tmp_path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    r = run_in_process(capsys, "find", "--arch", ARCH, "--dataset", "digits", "--sparsity", "0.9",
                       "-o", "x.safetensors", *args)
    assert_clean_error(r, contains=message)
    assert not (tmp_path / "x.safetensors").exists()
