"""The training loop and its hooks: events in order, records a hook extends, masks rewired mid-training
(sparsity held, rewired weights and their momentum reset, a stopped run resuming bit-identically)."""

from __future__ import annotations

import json

import pytest
import torch

from elth_cli.train.options import RunOptions
from elth_cli import data, train
from elth_cli.errors import UsageError
from elth_cli.find import random_ticket
from elth_cli.train import Hook

SPE = 23  # digits: ceil(1437 / 64)


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load_dataset("digits")


@pytest.fixture(scope="module")
def ticket():
    return random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=0, dataset="digits")


def config(ticket, bundle, epochs: int = 2) -> train.TrainConfig:
    return train.default_recipe(ticket.spec, bundle.info).replace(epochs=epochs)


class Recorder(Hook):
    """Writes down every event; adds a field to each epoch's record."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_start(self, loop) -> None:
        self.events.append(("run_start", loop.step))

    def on_step_end(self, loop) -> None:
        self.events.append(("step", loop.step))

    def on_epoch_end(self, loop, record) -> None:
        record["hook_saw_step"] = loop.step
        self.events.append(("epoch_end", record["epoch"], record["test_acc"] is not None))

    def on_epoch_recorded(self, loop, record) -> None:
        self.events.append(("recorded", record["epoch"], record is loop.state.history[-1]))

    def on_stop(self, loop) -> None:
        self.events.append(("stop", loop.step))

    def on_run_end(self, loop) -> None:
        self.events.append(("run_end", loop.finished))


def test_events_arrive_in_order_and_hooks_extend_records(digits, ticket, tmp_path) -> None:
    rec = Recorder()
    log = tmp_path / "log.jsonl"
    result = train.train_state(ticket.build_model("init"), ticket.masks, digits, config(ticket, digits), run=RunOptions(hooks=[rec], jsonl_path=log))
    steps = lambda lo, hi: [("step", s) for s in range(lo, hi + 1)]  # noqa: E731
    # Evaluation runs before the caller's hooks in on_epoch_end, so a hook sees the test accuracy.
    assert rec.events == [("run_start", 0), *steps(1, SPE), ("epoch_end", 1, True), ("recorded", 1, True),
                          *steps(SPE + 1, 2 * SPE), ("epoch_end", 2, True), ("recorded", 2, True), ("run_end", True)]
    assert [r["hook_saw_step"] for r in result.history] == [SPE, 2 * SPE]
    assert [json.loads(line)["hook_saw_step"] for line in log.read_text().splitlines()] == [SPE, 2 * SPE]

    stopped = Recorder()
    with pytest.raises(train.TrainingStopped):
        train.train_state(ticket.build_model("init"), ticket.masks, digits, config(ticket, digits),
                          run=RunOptions(hooks=[stopped], checkpoint_path=tmp_path / "run.ckpt", stop_at_step=5))
    assert stopped.events[-3:] == [("step", 5), ("stop", 5), ("run_end", False)]


class Rewire(Hook):
    """Every ``every`` steps, in every masked layer, swap ``k`` kept weights for ``k`` pruned ones (drawn
    from a generator seeded with the step, so a resumed run draws the same), and check right after the
    update that every rewired weight and its momentum are zero."""

    def __init__(self, every: int = 10, k: int = 3) -> None:
        self.every, self.k = every, k
        self.rewired = 0
        self.violations: list[str] = []
        self.grown: dict[str, torch.Tensor] = {}

    def on_step_end(self, loop) -> None:
        if loop.step % self.every:
            return
        g = torch.Generator().manual_seed(loop.step)
        before = {key: m.clone() for key, m in loop.masks().items()}
        new = {}
        for key, m in before.items():
            flat = m.reshape(-1).clone()
            kept, pruned = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
            if len(kept) < self.k or len(pruned) < self.k:
                continue
            flat[kept[torch.randperm(len(kept), generator=g)[: self.k]]] = False
            flat[pruned[torch.randperm(len(pruned), generator=g)[: self.k]]] = True
            new[key] = flat.view_as(m)
        self.rewired += loop.set_masks(new)
        params = dict(loop.model.named_parameters())
        for key, mask in new.items():
            changed = mask != before[key]
            self.grown.setdefault(key, mask & ~before[key])
            weight = params[key].detach().cpu()
            momentum = loop.parts.optimizer.state[params[key]].get("momentum_buffer")
            if not bool((weight[changed] == 0).all()):
                self.violations.append(f"{key}: a rewired weight is not zero at step {loop.step}")
            if momentum is not None and not bool((momentum.cpu()[changed] == 0).all()):
                self.violations.append(f"{key}: a rewired weight kept its momentum at step {loop.step}")


def test_a_hook_rewires_masks_and_sparsity_is_held(digits, ticket) -> None:
    hook = Rewire()
    trained = train.train_ticket(ticket, digits, config(ticket, digits, epochs=4), hooks=[hook])
    updates = 4 * SPE // hook.every
    layers = sum(1 for m in ticket.masks.values() if not m.all())
    assert hook.rewired == updates * layers * 2 * hook.k and hook.violations == []
    assert trained.layer_sparsity() == ticket.layer_sparsity()  # every layer keeps its count
    assert any(not torch.equal(trained.masks[k], ticket.masks[k]) for k in ticket.masks)
    for key, mask in trained.masks.items():  # the final masks hold: pruned weights +0.0, in init and trained
        for state in (trained.init, trained.trained):
            assert bool((state[key][~mask] == 0).all()) and not bool(torch.signbit(state[key][~mask]).any()), key
    # Weights grown at the first update started at zero and then trained.
    moved = [bool((trained.trained[k][g & trained.masks[k]] != 0).any()) for k, g in hook.grown.items()]
    assert any(moved)
    assert trained.metrics["test_acc"] > 0.25  # chance is 0.1: it trains, rewired every 10 steps
    again = type(trained).from_bytes(trained.to_bytes())  # a valid ticket, file format included
    assert again.layer_sparsity() == ticket.layer_sparsity()


def test_a_rewired_run_stopped_and_resumed_is_bit_identical(digits, ticket, tmp_path) -> None:
    cfg = config(ticket, digits)

    def run(**kw):
        return train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg,
                                 run=RunOptions(hooks=[Rewire()], handle_signals=False, **kw))

    whole = run()
    ckpt = tmp_path / "rewired.ckpt"
    with pytest.raises(train.TrainingStopped):
        run(checkpoint_path=ckpt, stop_at_step=35)
    stopped = train.read_checkpoint(ckpt).masks()
    assert any(not torch.equal(stopped[k], ticket.masks[k]) for k in ticket.masks)  # the checkpoint has the rewiring
    resumed = run(checkpoint_path=ckpt)
    assert resumed.resumed_from == 35
    for k, v in whole.state.items():
        assert torch.equal(resumed.state[k], v), k
    for k, m in whole.masks.items():
        assert torch.equal(resumed.masks[k], m), k


def test_bad_mask_updates_are_refused(ticket) -> None:
    model = ticket.build_model("init")
    masks = train.MaskSet(model, ticket.masks)
    with pytest.raises(UsageError, match="not a masked weight"):
        masks.update({"bn.weight": torch.ones(4, dtype=torch.bool)})
    key = next(iter(ticket.masks))
    with pytest.raises(UsageError, match="has shape"):
        masks.update({key: torch.ones(3, dtype=torch.bool)})
    assert masks.update({key: ticket.masks[key]}) == 0  # unchanged: nothing rewired
