"""Tests of elth_cli.train through its Python API: recipes, step syntax, the LR schedule, training
to a useful accuracy with pruned weights held at zero, bit-identical stop and resume, signals,
checkpoints, evaluation. CPU only except the tests marked cuda."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import pytest
import torch

from elth_cli.train.options import RunOptions
from elth_cli import archs, data, train
from elth_cli.runtime.device import device_setup
from elth_cli.errors import ElthError, UsageError
from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket
from elth_cli.train.config import check_given_options

DIGITS_SPE = 23  # ceil(1437 train images / batch 64)


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load_dataset("digits")


@pytest.fixture(scope="module")
def info() -> data.DatasetInfo:
    return data.get_dataset_info("digits")


def digits_ticket(arch: str = "resnet20-w4", sparsity: float = 0.5, seed: int = 0, rewind_step: int = 0) -> Ticket:
    info = data.get_dataset_info("digits")
    t = random_ticket(arch, info.input_shape, info.num_classes, sparsity, seed=seed, dataset="digits")
    return dataclasses.replace(t, rewind_step=rewind_step)


def digits_config(ticket: Ticket, **changes) -> train.TrainConfig:
    return train.default_recipe(ticket.spec, data.get_dataset_info("digits")).replace(**changes)


def accuracy_fields(history: list[dict]) -> list[dict]:
    """History without the timing fields (which legitimately differ between runs)."""
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in history]


# ---------------------------------------------------------------------------------------------
# Step syntax, recipes and the schedule
# ---------------------------------------------------------------------------------------------


def test_parse_steps() -> None:
    assert train.parse_steps("1000it", 391) == 1000
    assert train.parse_steps("2ep", 391) == 782
    assert train.parse_steps("500", 391) == 500
    assert train.parse_steps(" 2EP ", 10) == 20
    assert train.parse_steps("1ep5it", 10) == 15
    assert train.parse_steps(7, 10) == 7
    assert train.parse_steps("0", 10) == 0
    for bad in ("", "ep", "it", "2 ep", "-3", "1.5ep", "3epochs", "it5"):
        with pytest.raises(UsageError):
            train.parse_steps(bad, 10)
    assert train.normalise_steps("500") == "500it"
    assert train.parse_step_list("80ep,120ep") == ("80ep", "120ep")
    assert train.parse_step_list("none") == ()


def test_default_recipes() -> None:
    cifar = data.get_dataset_info("cifar10")
    for arch in ("resnet20", "resnet56", "vgg16"):
        cfg = train.default_recipe(archs.resolve_arch(arch), cifar)
        assert (cfg.recipe, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == \
            ("cifar", 160, 128, 0.1, 0.9, 1e-4)
        assert (cfg.schedule, cfg.milestones, cfg.gamma, train.parse_steps(cfg.warmup, 391)) == \
            ("step", ("80ep", "120ep"), 0.1, 0)
    imagenet = train.default_recipe(archs.resolve_arch("imagenet-resnet18"), data.get_dataset_info("imagenet"))
    assert (imagenet.recipe, imagenet.epochs, imagenet.batch_size, imagenet.lr, imagenet.weight_decay) == \
        ("imagenet", 90, 1024, 0.4, 1e-4)
    assert (imagenet.milestones, imagenet.warmup) == (("30ep", "60ep", "80ep"), "5ep")
    for arch in ("resnet56", "resnet20-w4", "imagenet-resnet18", "vgg11"):
        d = train.default_recipe(archs.resolve_arch(arch), data.get_dataset_info("digits"))
        assert (d.recipe, d.epochs, d.batch_size, d.lr, d.warmup, d.schedule, d.weight_decay, d.momentum) == \
            ("digits", 30, 64, 0.05, "2ep", "cosine", 5e-4, 0.9)


def test_step_schedule_values() -> None:
    cfg = train.default_recipe(archs.resolve_arch("resnet20"), data.get_dataset_info("cifar10"))
    spe = 391
    assert train.lr_at(0, cfg, spe) == pytest.approx(0.1)
    assert train.lr_at(80 * spe - 1, cfg, spe) == pytest.approx(0.1)
    assert train.lr_at(80 * spe, cfg, spe) == pytest.approx(0.01)
    assert train.lr_at(120 * spe - 1, cfg, spe) == pytest.approx(0.01)
    assert train.lr_at(120 * spe, cfg, spe) == pytest.approx(0.001)
    assert train.lr_at(160 * spe - 1, cfg, spe) == pytest.approx(0.001)
    # ImageNet: linear warm-up over 5 epochs, from lr/warmup_steps at step 0.
    inet = train.default_recipe(archs.resolve_arch("imagenet-resnet18"), data.get_dataset_info("imagenet"))
    spe = 1252
    warm = 5 * spe
    assert train.lr_at(0, inet, spe) == pytest.approx(0.4 / warm)
    assert train.lr_at(warm // 2 - 1, inet, spe) == pytest.approx(0.4 * (warm // 2) / warm)
    assert train.lr_at(warm - 1, inet, spe) == pytest.approx(0.4)
    assert train.lr_at(30 * spe, inet, spe) == pytest.approx(0.04)
    assert train.lr_at(60 * spe, inet, spe) == pytest.approx(0.004)
    assert train.lr_at(80 * spe, inet, spe) == pytest.approx(0.0004)
    # Iteration milestones and a warm-up given in iterations.
    custom = cfg.replace(milestones="100,200it", warmup="10", gamma=0.5)
    assert [train.lr_at(s, custom, 50) for s in (0, 9, 99, 100, 200)] == pytest.approx([0.01, 0.1, 0.1, 0.05, 0.025])


def test_cosine_schedule_values(info) -> None:
    cfg = train.default_recipe(archs.resolve_arch("resnet20-w4"), info)
    total, warm = 30 * DIGITS_SPE, 2 * DIGITS_SPE
    assert train.lr_at(0, cfg, DIGITS_SPE) == pytest.approx(0.05 / warm)
    assert train.lr_at(warm - 1, cfg, DIGITS_SPE) == pytest.approx(0.05)
    assert train.lr_at(warm, cfg, DIGITS_SPE) == pytest.approx(0.05)  # cosine starts at the base lr
    assert train.lr_at(warm + (total - warm) // 2, cfg, DIGITS_SPE) == pytest.approx(0.025)
    quarter = warm + (total - warm) // 4
    assert train.lr_at(quarter, cfg, DIGITS_SPE) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 4)))
    last = train.lr_at(total - 1, cfg, DIGITS_SPE)
    assert 0 < last < 1e-5


def test_config_options_and_validation(info) -> None:
    spec = archs.resolve_arch("resnet20-w4")
    cfg = train.config_from_options(spec, info, epochs=5, lr=0.2, warmup="100", schedule="step",
                                    milestones="2ep,4ep", seed=3)
    assert (cfg.epochs, cfg.lr, cfg.warmup, cfg.schedule, cfg.milestones, cfg.seed) == \
        (5, 0.2, "100it", "step", ("2ep", "4ep"), 3)
    # Switching the CIFAR recipe to cosine drops its milestones.
    cifar = train.config_from_options(spec, data.get_dataset_info("cifar10"), schedule="cosine")
    assert cifar.milestones == ()
    with pytest.raises(UsageError, match="--milestones only apply"):
        train.config_from_options(spec, info, milestones="10ep")  # digits is cosine
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"momentum": 1.0}, {"batch_size": 0}, {"warmup": "2 epochs"},
                {"schedule": "linear"}, {"gamma": 0.0}, {"eval_every": -1}):
        with pytest.raises(UsageError):
            train.config_from_options(spec, info, **bad)
        with pytest.raises(UsageError):  # no recipe makes these right: refused before any ticket is read
            check_given_options(**bad)
    # What only some recipes refuse (milestones: digits is cosine, CIFAR is step) passes the shared check.
    check_given_options(milestones="10ep", epochs=3)


# ---------------------------------------------------------------------------------------------
# Training on digits
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_pair(digits) -> tuple[Ticket, Ticket]:
    """resnet20-w4 at 50% sparsity trained with the full digits recipe (about 10 s on 2 cores)."""
    ticket = digits_ticket()
    return ticket, train.train_ticket(ticket, digits, digits_config(ticket))


def test_training_reaches_90_percent(trained_pair) -> None:
    _, trained = trained_pair
    m = trained.metrics
    assert m["test_acc"] >= 0.90, m
    assert m["best_test_acc"] >= m["test_acc"]
    assert m["train_acc"] > 0.85
    assert (m["epochs"], m["steps"], m["total_steps"], m["start_step"]) == (30, 30 * DIGITS_SPE, 30 * DIGITS_SPE, 0)
    assert m["precision"] == "fp32" and m["device"].startswith("cpu")
    assert m["wall_time_s"] > 0 and m["images_per_s"] > 0
    assert math.isfinite(m["test_loss"]) and math.isfinite(m["train_loss"])


def test_pruned_weights_stay_zero_and_masks_unchanged(trained_pair) -> None:
    ticket, trained = trained_pair
    assert trained.trained is not None
    for key, mask in ticket.masks.items():
        assert torch.equal(trained.masks[key], mask)
        w = trained.trained[key]
        assert bool((w[~mask] == 0).all()), key
        assert not bool(torch.signbit(w[~mask]).any()), f"{key}: pruned weights must be +0.0"
        assert bool((w[mask] != 0).any()), f"{key}: no kept weight moved"
    for key, t in ticket.init.items():
        assert torch.equal(trained.init[key], t)
    # The trained weights differ from the init and the result is a valid ticket end to end.
    assert not torch.equal(trained.trained["fc.weight"], ticket.init["fc.weight"])
    again = Ticket.from_bytes(trained.to_bytes())
    assert again.is_trained and again.metrics == trained.metrics


def test_trained_ticket_keeps_provenance_and_records_config(trained_pair) -> None:
    ticket, trained = trained_pair
    for name in ("arch", "method", "rewind_step", "dataset", "parents", "transform", "cost", "input_shape", "num_classes"):
        assert getattr(trained, name) == getattr(ticket, name), name
    h = trained.hparams
    assert h["ticket_hparams"] == ticket.hparams
    for key in ("dataset", "recipe", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                "milestones", "gamma", "warmup", "seed", "device", "precision", "compile", "eval_every",
                "steps_per_epoch", "total_steps", "warmup_steps", "milestone_steps", "start_step"):
        assert key in h, key
    assert (h["steps_per_epoch"], h["warmup_steps"], h["total_steps"]) == (DIGITS_SPE, 2 * DIGITS_SPE, 30 * DIGITS_SPE)
    json.dumps(h)  # JSON-ready, as ticket metadata must be


def test_evaluate_matches_recorded_accuracy(trained_pair, digits) -> None:
    _, trained = trained_pair
    model = trained.build_model("trained")
    result = train.evaluate(model, digits, "test", trained.hparams["eval_batch_size"])
    assert result["accuracy"] == trained.metrics["test_acc"]
    assert result["loss"] == trained.metrics["test_loss"]
    assert result["examples"] == 360 and "top5" not in result
    assert model.training  # a fresh model is in train mode, and evaluate restores the mode it found
    model.eval()
    assert train.evaluate(model, digits, "train", 500)["examples"] == 1437
    assert not model.training


def test_evaluate_top5_with_many_classes() -> None:
    info = data.DatasetInfo("twenty", (1, 8, 8), 20, (0.5,), (0.25,), True, "synthetic")
    g = torch.Generator().manual_seed(0)
    images = {s: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g) for s, n in (("train", 64), ("test", 50))}
    labels = {s: torch.randint(0, 20, (n,), generator=g) for s, n in (("train", 64), ("test", 50))}
    bundle = data.TensorBundle(info, data.Augment(pad=1, flip=False), torch.device("cpu"), images, labels)
    model = archs.build_model(archs.resolve_arch("resnet8-w4"), (1, 8, 8), 20, seed=0)
    result = train.evaluate(model, bundle, "test", 16)
    assert 0 <= result["accuracy"] <= result["top5"] <= 1 and result["examples"] == 50


def test_divergence_is_a_clear_error(digits) -> None:
    ticket = digits_ticket("resnet8-w4")
    with pytest.raises(ElthError, match="diverged"):
        train.train_ticket(ticket, digits, digits_config(ticket, epochs=1, lr=1e30, warmup="0"))


# ---------------------------------------------------------------------------------------------
# Rewind step, snapshots, stop and resume
# ---------------------------------------------------------------------------------------------


def test_rewind_step_positions_the_schedule(digits, monkeypatch) -> None:
    """A ticket rewound to step r trains steps r..total-1 with the schedule's LR at each of them."""
    seen: list[float] = []
    original = train.TrainStep.__call__

    def spy(self, x, y, lr):
        seen.append(lr)
        return original(self, x, y, lr)

    monkeypatch.setattr(train.TrainStep, "__call__", spy)
    r = 30  # mid-epoch 2
    ticket = digits_ticket("resnet8-w4", rewind_step=r)
    cfg = digits_config(ticket, epochs=3)
    total = 3 * DIGITS_SPE
    result = train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg, start_step=r, snapshot_steps={r, 46, total})
    assert seen == [train.lr_at(s, cfg, DIGITS_SPE) for s in range(r, total)]
    assert seen[0] == pytest.approx(0.05 * 31 / 46)  # still warming up at step 30 of 46
    assert [h["step"] for h in result.history] == [46, total] and result.history[0]["epoch"] == 2
    assert (result.metrics["steps"], result.metrics["total_steps"], result.metrics["start_step"]) == (total - r, total, r)
    assert sorted(result.snapshots) == [r, 46, total]
    for k, v in ticket.init.items():
        assert torch.equal(result.snapshots[r][k], v), k  # the snapshot at the start step is the init
    for k, v in result.state.items():
        assert torch.equal(result.snapshots[total][k], v), k
    with pytest.raises(UsageError, match="not before the recipe's last step"):
        train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg, start_step=total)


class _SignalAt:
    """A reporter that sends this process a signal once training reaches a step."""

    def __init__(self, step: int, signum: int) -> None:
        self.at, self.signum, self.sent = step, signum, False

    def start(self, *args) -> None: ...

    def step(self, step: int, live) -> None:
        if step == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def epoch(self, *args) -> None: ...

    def close(self) -> None: ...


def _assert_same_run(a: train.TrainResult, b: train.TrainResult) -> None:
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    assert accuracy_fields(a.history) == accuracy_fields(b.history)
    for k in ("test_acc", "best_test_acc", "test_loss", "train_loss", "train_acc", "steps"):
        assert a.metrics[k] == b.metrics[k], k
    assert a.snapshots.keys() == b.snapshots.keys()
    for s in a.snapshots:
        for k in a.snapshots[s]:
            assert torch.equal(a.snapshots[s][k], b.snapshots[s][k]), (s, k)


def test_stop_and_resume_is_bit_identical(digits, tmp_path) -> None:
    ticket = digits_ticket()
    cfg = digits_config(ticket, epochs=3)
    snaps = {10, 46}

    def run(**kw) -> train.TrainResult:
        return train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg, snapshot_steps=snaps,
                                 run=RunOptions(**kw))

    whole = run(checkpoint_path=tmp_path / "whole.ckpt")
    ckpt = tmp_path / "split.ckpt"
    jsonl = tmp_path / "split.jsonl"
    with pytest.raises(train.TrainingStopped) as stop:
        run(checkpoint_path=ckpt, stop_at_step=30, jsonl_path=jsonl)  # mid-epoch 2, after snapshot 10
    assert stop.value.exit_code == train.EXIT_STOPPED and stop.value.step == 30
    assert ckpt.exists() and "re-run the same command" in str(stop.value)
    assert len(jsonl.read_text().splitlines()) == 1
    # A changed configuration is refused, naming what changed.
    with pytest.raises(UsageError, match=r"differs in: lr 0\.05 -> 0\.04"):
        train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg.replace(lr=0.04), run=RunOptions(checkpoint_path=ckpt))
    other = digits_ticket(seed=1)
    with pytest.raises(UsageError, match="the ticket"):
        train.train_state(other.build_model("init"), other.masks, digits, cfg, run=RunOptions(checkpoint_path=ckpt))
    resumed = run(checkpoint_path=ckpt, jsonl_path=jsonl)
    assert resumed.resumed_from == 30
    _assert_same_run(whole, resumed)
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    # The final checkpoint is complete: resuming it again returns the same result without training.
    again = run(checkpoint_path=ckpt)
    _assert_same_run(whole, again)
    train.remove_checkpoint(ckpt)
    assert not ckpt.exists()
    with pytest.raises(UsageError, match="no checkpoint"):
        run(checkpoint_path=ckpt, resume="require")


@pytest.fixture(scope="module")
def short_run(digits) -> tuple[Ticket, train.TrainConfig, Ticket]:
    """A 2-epoch resnet8-w4 run without interruption: the reference for resumed runs."""
    ticket = digits_ticket("resnet8-w4")
    cfg = digits_config(ticket, epochs=2)
    return ticket, cfg, train.train_ticket(ticket, digits, cfg)


# SIGTERM goes to a real subprocess in test_cli_train.py.
@pytest.mark.parametrize("signum, code", [(signal.SIGUSR1, 75), (signal.SIGINT, 130)])
def test_signal_stops_with_a_checkpoint(digits, short_run, tmp_path, signum, code) -> None:
    ticket, cfg, whole = short_run
    ckpt = tmp_path / "run.ckpt"
    before = signal.getsignal(signum)
    with pytest.raises(train.TrainingStopped) as stop:
        train.train_ticket(ticket, digits, cfg, checkpoint_path=ckpt, log=_SignalAt(12, signum))
    assert stop.value.exit_code == code
    assert signal.getsignal(signum) == before  # handlers restored
    assert ckpt.exists() and stop.value.step in (12, 13)
    assert signal.Signals(signum).name in str(stop.value)
    resumed = train.train_ticket(ticket, digits, cfg, checkpoint_path=ckpt)
    for k, v in whole.trained.items():
        assert torch.equal(resumed.trained[k], v), k
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]


def test_checkpoint_is_safetensors_without_pickle(digits, tmp_path) -> None:
    ticket = digits_ticket("resnet8-w4")
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(train.TrainingStopped):
        train.train_ticket(ticket, digits, digits_config(ticket, epochs=1), checkpoint_path=ckpt, stop_at_step=5)
    raw = ckpt.read_bytes()
    assert b"\x80\x04" not in raw[:16] and raw[8:9] == b"{"  # a safetensors header, not a pickle
    ck = train.read_checkpoint(ckpt)
    assert ck.meta["format"] == "elth.checkpoint" and ck.step == 5
    assert {"model/fc.weight", "rng/cpu", "stats/loss_sum"} <= set(ck.tensors)
    assert any(k.startswith("optim/") and k.endswith("momentum_buffer") for k in ck.tensors)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ElthError, match="cannot resume"):
        train.train_ticket(ticket, digits, digits_config(ticket, epochs=1), checkpoint_path=ckpt)
    # resume="never" starts over and replaces the damaged file (at the first epoch's end: the last
    # epoch writes none, and checkpoint_every_s=0 writes one at every other epoch).
    out = train.train_ticket(ticket, digits, digits_config(ticket, epochs=2), checkpoint_path=ckpt, resume="never",
                             checkpoint_every_s=0)
    assert out.is_trained and train.read_checkpoint(ckpt).step == DIGITS_SPE


def test_train_state_from_a_state_dict(digits) -> None:
    ticket = digits_ticket("resnet8-w4")
    cfg = digits_config(ticket, epochs=1)
    with pytest.raises(UsageError, match="arch="):
        train.train_state(ticket.init, ticket.masks, digits, cfg)
    a = train.train_state(ticket.init, ticket.masks, digits, cfg, arch="resnet8-w4")
    b = train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda_training_keeps_pruned_weights_zero(precision) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    bundle = data.load_dataset("digits", device="cuda")
    assert bundle.channels_last
    ticket = digits_ticket("resnet20-w4")
    cfg = digits_config(ticket, epochs=4, device="cuda", precision=precision)
    trained = train.train_ticket(ticket, bundle, cfg)
    assert trained.metrics["test_acc"] > 0.3  # well above chance (0.1) after 92 steps
    for key, mask in ticket.masks.items():
        assert bool((trained.trained[key][~mask] == 0).all()), key
    assert trained.metrics["precision"] == precision


@pytest.mark.cuda
def test_cuda_step_is_channels_last_and_fused() -> None:
    setup = device_setup("cuda", "fp16")
    bundle = data.load_dataset("digits", device=setup)
    ticket = digits_ticket("resnet20-w4")
    cfg = digits_config(ticket, device="cuda", precision="fp16")
    parts = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, setup)
    assert parts.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert parts.optimizer.defaults.get("fused") is True and parts.scaler is not None
    x, y = next(bundle.train_batches(64, 0, 0))
    assert x.is_contiguous(memory_format=torch.channels_last)
    parts.step(x, y, 0.01)
    torch.cuda.synchronize()
    for key, mask in ticket.masks.items():
        assert bool((dict(parts.model.named_parameters())[key].detach().cpu()[~mask] == 0).all()), key


@pytest.mark.cuda
def test_cuda_eval_matches_cpu_eval(trained_pair, digits) -> None:
    _, trained = trained_pair
    cpu = train.evaluate(trained.build_model("trained"), digits, "test", 1000)
    bundle = data.load_dataset("digits", device="cuda")
    for precision, tol in (("fp32", 1 / 360 + 1e-9), ("bf16", 3 / 360 + 1e-9)):
        model = device_setup("cuda").prepare_model(trained.build_model("trained"))
        gpu = train.evaluate(model, bundle, "test", 1000, precision)
        assert abs(gpu["accuracy"] - cpu["accuracy"]) <= tol, precision
        assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.05), precision


@pytest.mark.parametrize("every_s, written_after", [(0, [False, True, True]), (1e9, [False, False, False])])
def test_checkpoints_at_epoch_ends_follow_checkpoint_every(digits, tmp_path, every_s, written_after) -> None:
    """0 writes one after every epoch but the last; a long interval writes none (a stop still would)."""
    ticket = digits_ticket("resnet8-w4")
    ckpt = tmp_path / "run.ckpt"
    seen: list[bool] = []

    class Watch(train.Hook):
        def on_epoch_end(self, loop, record) -> None:
            seen.append(ckpt.exists())

    train.train_ticket(ticket, digits, digits_config(ticket, epochs=3), checkpoint_path=ckpt, hooks=[Watch()],
                       checkpoint_every_s=every_s)
    assert seen == written_after
    with pytest.raises(UsageError, match="--checkpoint-every must be 0 or more"):
        train.train_ticket(ticket, digits, digits_config(ticket, epochs=1), checkpoint_every_s=-1)
