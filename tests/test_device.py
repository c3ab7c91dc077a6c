"""Devices and precision, and every device-dependent branch forced on the CPU.

No GPU has ever been lent to this project, so the branches a CUDA run takes (fp16 autocast with a
grad scaler, channels_last, fused SGD, pinned non-blocking copies, cuDNN autotuning) run here on
the CPU wherever torch allows it: each trains a real (small) run and is checked for what the
branch promises, not only for not crashing.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from elth_cli.train.options import RunOptions
from elth_cli import data, train
from elth_cli.runtime import device
from elth_cli.runtime.device import device_setup, resolve_device, resolve_precision
from elth_cli.errors import UsageError
from elth_cli.find import random_ticket

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    """channels_last and compiled graphs need two threads here: with one, resnet20-w4 on 1x8x8 input
    once corrupted glibc's heap (a torch bug on this CPU); CI has two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def test_resolve_device_and_precision() -> None:
    cpu = resolve_device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"  # CPU fp16 autocast and grad scaler (torch >= 2.3)
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("fp8", cpu)
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_fp16_on_a_cpu_torch_without_it_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(device, "cpu_fp16_supported", lambda: False)
    with pytest.raises(UsageError, match="fp16 training on the CPU needs"):
        resolve_precision("fp16", CPU)


def test_setup_defaults_and_forced_choices(monkeypatch) -> None:
    cpu = device_setup("cpu")
    assert (cpu.channels_last, cpu.fused_sgd, cpu.pin_memory, cpu.non_blocking, cpu.cudnn_benchmark) == \
        (False, False, False, False, False)
    assert cpu.make_scaler() is None and cpu.optimizer_kwargs() == {"foreach": True}
    forced = device_setup("cpu", "fp16", channels_last=True, fused_sgd=True, pin_memory=True)
    assert forced.grad_scaler and forced.optimizer_kwargs() == {"fused": True}
    assert forced.as_dict()["device"] == "cpu" and forced.as_dict()["grad_scaler"] is True
    with pytest.raises(UsageError, match="unknown device choice"):
        device_setup("cpu", fast=True)
    with pytest.raises(UsageError, match="resolved"):
        device_setup("cpu", "auto")
    device.fused_supported.cache_clear()
    monkeypatch.setattr(torch.optim, "SGD", _sgd_without_fused(torch.optim.SGD))
    try:
        with pytest.raises(UsageError, match="no fused SGD"):
            device_setup("cpu", fused_sgd=True)
    finally:
        device.fused_supported.cache_clear()


def _sgd_without_fused(sgd):
    def make(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("fused=True requires all the params to be floating point Tensors of supported devices")
        return sgd(params, **kw)
    return make


@pytest.fixture(scope="module")
def ticket():
    info = data.get_dataset_info("digits")
    return random_ticket("resnet8-w4", info.input_shape, info.num_classes, 0.5, seed=0, dataset="digits")


def _train(ticket, setup, epochs=3):
    bundle = data.load_dataset("digits", device=setup)
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=epochs, precision=setup.precision)
    return bundle, train.train_ticket(ticket, bundle, cfg, handle_signals=False)  # the data's choices


def _assert_pruned_zero(ticket, trained) -> None:
    for key, mask in ticket.masks.items():
        w = trained.trained[key]
        assert bool((w[~mask] == 0).all()) and not bool(torch.signbit(w[~mask]).any()), key


CASES = {
    "fp16 autocast + grad scaler": dict(precision="fp16"),
    "channels_last": dict(channels_last=True),
    "fused SGD": dict(fused_sgd=True),
    "fp16 + fused SGD + channels_last (CUDA's defaults)": dict(precision="fp16", fused_sgd=True, channels_last=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forced_branch_trains_on_the_cpu(case, ticket, two_threads) -> None:
    choices = dict(CASES[case])
    setup = device_setup("cpu", choices.pop("precision", "fp32"), **choices)
    bundle, trained = _train(ticket, setup)
    m = trained.metrics
    assert m["test_acc"] > 0.3, m  # chance is 0.1; 69 steps (two of three epochs warming up) reach about 0.42
    assert m["precision"] == setup.precision and trained.hparams["precision"] == setup.precision
    _assert_pruned_zero(ticket, trained)
    recorded = trained.config["environment"]["device_setup"]
    assert recorded == setup.as_dict()
    assert bundle.channels_last == setup.channels_last


def test_forced_parts_are_what_cuda_gets(ticket, two_threads) -> None:
    """The step's pieces under CUDA's choices, built on the CPU: NHWC weights, fused SGD, a CPU scaler
    whose scale moves, fp16 activations inside the step and fp32 master weights."""
    setup = device_setup("cpu", "fp16", channels_last=True, fused_sgd=True)
    bundle = data.load_dataset("digits", device=setup)
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=1, precision="fp16")
    parts = train.build_parts(ticket.build_model("init"), ticket.masks, cfg, setup)
    weight = parts.model.blocks[0].conv1.weight  # 4 in-channels: NCHW and NHWC strides differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert parts.optimizer.defaults.get("fused") is True
    assert isinstance(parts.scaler, torch.amp.GradScaler) and parts.scaler.get_scale() == 65536.0
    outputs = []
    hook = parts.model.fc.register_forward_hook(lambda mod, inp, out: outputs.append(out.dtype))
    for (x, y), _ in zip(bundle.train_batches(64, 0, 0), range(3)):
        parts.step(x, y, 0.05)
    hook.remove()
    assert outputs == [torch.float16] * 3
    assert all(p.dtype == torch.float32 for p in parts.model.parameters())
    params = dict(parts.model.named_parameters())
    for key, mask in ticket.masks.items():
        assert bool((params[key].detach()[~mask] == 0).all()), key


def test_fp16_resume_is_bit_identical(ticket, tmp_path) -> None:
    """The grad scaler's state is part of the checkpoint: a stopped fp16 run resumes exactly."""
    setup = device_setup("cpu", "fp16")
    bundle = data.load_dataset("digits", device=setup)
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2, precision="fp16")
    run = lambda **kw: train.train_state(ticket.build_model("init"), ticket.masks, bundle, cfg,  # noqa: E731
                                         run=RunOptions(setup=setup, handle_signals=False, **kw))
    whole = run()
    ckpt = tmp_path / "fp16.ckpt"
    with pytest.raises(train.TrainingStopped):
        run(checkpoint_path=ckpt, stop_at_step=30)
    assert train.read_checkpoint(ckpt).meta["scaler"] != "null"
    resumed = run(checkpoint_path=ckpt)
    for k, v in whole.state.items():
        assert torch.equal(resumed.state[k], v), k


def test_pinned_non_blocking_folder_loader(tmp_path) -> None:
    """The folder loader takes pinning and non-blocking copies from the setup (pinning itself needs an
    accelerator: without one torch leaves it off, with a warning)."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (i * 60, 20, 200 if c == "a" else 10)).save(tmp_path / split / c / f"{i}.png")
    setup = device_setup("cpu", pin_memory=True, non_blocking=True)
    bundle = data.load_dataset("imagefolder", tmp_path, device=setup, num_workers=0)
    assert bundle.setup is setup
    with pytest.warns(UserWarning, match="pin_memory"):
        x, y = next(bundle.eval_batches(4))
    assert bundle._loader("test")[0].pin_memory is True
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.tolist() == [0, 0, 0, 1]


def test_configure_torch_sets_autotuning_and_determinism(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: calls.append(on))
    before = torch.backends.cudnn.benchmark
    try:
        dataclasses.replace(device_setup("cpu"), cudnn_benchmark=True).configure_torch()
        assert torch.backends.cudnn.benchmark is True and calls == []
        device_setup("cpu", deterministic=True, cudnn_benchmark=True).configure_torch()
        assert torch.backends.cudnn.benchmark is False and calls == [True]
    finally:
        torch.backends.cudnn.benchmark = before
