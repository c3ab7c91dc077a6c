"""``--optimizer adamw`` and the vision transformers' recipes: AdamW trains a ticket with its pruned weights
held at zero, decays only weight matrices, zeroes the moments of rewired weights (RigL, SET), resumes
bit-identically; SGD stays the default of every older recipe, checkpoint and ticket. CPU only."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from torch import nn

from elth_cli import archs, data, train
from elth_cli.errors import UsageError
from elth_cli.find import random_ticket
from elth_cli.find.dst import DstOptions, find_dst
from elth_cli.runtime.device import device_setup
from elth_cli.ticket import Ticket
from elth_cli.train.config import RECIPES, check_given_options, config_from_options, recipe_hint, recipe_name
from elth_cli.train.loop import Hook
from elth_cli.train.options import RunOptions

ARCH = "mlp-16x2-8"


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load_dataset("digits")


@pytest.fixture(scope="module")
def ticket() -> Ticket:
    return random_ticket(ARCH, (1, 8, 8), 10, 0.5, seed=0, dataset="digits")


def adamw(ticket: Ticket, epochs: int = 2, **options) -> train.TrainConfig:
    """The digits recipe with AdamW, weight decay 0.05 and an LR for the tiny MLP of these tests (its 92 steps)."""
    return config_from_options(ticket.spec, data.get_dataset_info("digits"), optimizer="adamw", epochs=epochs,
                               lr=2e-2, weight_decay=0.05, device="cpu", precision="fp32", **options)


# ----- the option and the recipes -------------------------------------------------------------


def test_every_older_recipe_stays_sgd_and_adamw_records_no_momentum(ticket) -> None:
    info = data.get_dataset_info("digits")
    assert train.default_recipe(ticket.spec, info).optimizer == "sgd"
    for name in ("cifar", "imagenet", "mnist", "digits"):
        assert RECIPES[name]["optimizer"] == "sgd"
    cfg = adamw(ticket)
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.weight_decay) == ("adamw", 0.0, 2e-2, 0.05)
    # --optimizer alone keeps the recipe's other values.
    assert config_from_options(ticket.spec, info, optimizer="adamw").lr == 0.05
    hp = cfg.resolved(23)
    assert (hp["optimizer"], hp["betas"], hp["eps"]) == ("adamw", [0.9, 0.999], 1e-8) and "nesterov" not in hp
    sgd = train.default_recipe(ticket.spec, info).resolved(23)
    assert (sgd["optimizer"], sgd["nesterov"]) == ("sgd", False) and "betas" not in sgd
    assert config_from_options(ticket.spec, info, optimizer=" AdamW ").optimizer == "adamw"
    # The momentum help lists the SGD recipes only; the optimizer's names the AdamW ones.
    assert "ViT" not in recipe_hint("momentum") and "adamw ViT digits" in recipe_hint("optimizer")


@pytest.mark.parametrize("options", [dict(optimizer="adamw", momentum=0.9), dict(optimizer="adamw", momentum=0.0)])
def test_momentum_with_adamw_is_refused(ticket, options) -> None:
    with pytest.raises(UsageError, match="--momentum is SGD's") as e:
        config_from_options(ticket.spec, data.get_dataset_info("digits"), **options)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="--momentum is SGD's"):
        check_given_options(**options)
    with pytest.raises(UsageError, match="unknown --optimizer 'adam'"):
        check_given_options(optimizer="adam")
    check_given_options(momentum=0.9)  # SGD's recipes take it


def test_the_cli_refuses_momentum_with_adamw_in_one_line(tmp_path, capsys) -> None:
    from conftest import run_in_process

    path = tmp_path / "t.safetensors"
    path.write_bytes(random_ticket(ARCH, (1, 8, 8), 10, 0.5, seed=0, dataset="digits").to_bytes())
    r = run_in_process(capsys, "train", str(path), "-o", str(tmp_path / "out.safetensors"), "--optimizer", "adamw",
                       "--momentum", "0.9", "--device", "cpu")
    assert r.code == 2 and "--momentum is SGD's" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_transformer_family_gets_the_vit_recipes(monkeypatch) -> None:
    digits, cifar = data.get_dataset_info("digits"), data.get_dataset_info("cifar10")
    spec = archs.resolve_arch("resnet20")
    assert recipe_name(spec, digits) == "digits" and recipe_name(spec, cifar) == "cifar"
    assert recipe_name(archs.resolve_arch(ARCH), digits) == "digits"  # mnist has no mnist-digits recipe
    monkeypatch.setattr(archs, "family_of", lambda spec: types.SimpleNamespace(recipe="vit"))
    assert recipe_name(spec, digits) == "vit-digits" and recipe_name(spec, cifar) == "vit"
    for info, name in ((digits, "vit-digits"), (cifar, "vit")):
        cfg = train.default_recipe(spec, info)
        assert (cfg.recipe, cfg.optimizer, cfg.momentum, cfg.schedule, cfg.weight_decay) == \
            (name, "adamw", 0.0, "cosine", 0.05)
    # --optimizer sgd on a transformer: plain SGD unless --momentum is given.
    assert config_from_options(spec, cifar, optimizer="sgd", momentum=0.9).momentum == 0.9


# ----- training -------------------------------------------------------------------------------


def test_adamw_decays_weight_matrices_only() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 6))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 6))
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 3)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed", "cls_token"}

    t = random_ticket(ARCH, (1, 8, 8), 10, 0.5, seed=0, dataset="digits")
    cfg = adamw(t)
    model = Tiny()
    opt = train.make_optimizer(model, cfg, device_setup("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups]
    assert groups == [(0.05, ["fc.weight"]), (0.0, ["cls_token", "fc.bias", "norm.bias", "norm.weight", "pos_embed"])]
    g = opt.param_groups[0]
    assert (g["betas"], g["eps"], g["foreach"]) == ((0.9, 0.999), 1e-8, True)
    # Without no_weight_decay the embeddings (3-D) decay; SGD keeps its one group over every parameter.
    del Tiny.no_weight_decay
    assert [len(g["params"]) for g in train.make_optimizer(Tiny(), cfg, device_setup("cpu")).param_groups] == [3, 3]
    sgd = train.make_optimizer(model, cfg.replace(optimizer="sgd", momentum=0.9), device_setup("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1


def test_adamw_trains_a_ticket_with_its_pruned_weights_at_zero(digits, ticket) -> None:
    trained = train.train_ticket(ticket, digits, adamw(ticket, epochs=4))
    assert trained.metrics["test_acc"] > 0.2  # chance is 0.1
    for key, mask in ticket.masks.items():
        w = trained.trained[key]
        assert bool((w[~mask] == 0).all()) and not bool(torch.signbit(w[~mask]).any()), key
    again = Ticket.from_bytes(trained.to_bytes())  # the hparams schema takes the AdamW fields
    assert (again.hparams["optimizer"], again.hparams["betas"]) == ("adamw", [0.9, 0.999])
    # A ticket trained before elth had the field (no optimizer, nesterov, betas or eps) still loads.
    old = {k: v for k, v in trained.hparams.items() if k not in ("optimizer", "nesterov", "betas", "eps")}
    assert Ticket.from_bytes(dataclasses.replace(trained, hparams=old).to_bytes()).hparams == old
    with pytest.raises(Exception, match="betas"):
        Ticket.from_bytes(dataclasses.replace(trained, hparams={**trained.hparams, "betas": [0.9]}).to_bytes())


def test_adamw_stopped_and_resumed_is_bit_identical(digits, ticket, tmp_path) -> None:
    cfg = adamw(ticket)

    def run(**kw) -> train.TrainResult:
        return train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg,
                                 run=RunOptions(handle_signals=False, **kw))

    whole = run()
    ckpt = tmp_path / "adamw.ckpt"
    with pytest.raises(train.TrainingStopped):
        run(checkpoint_path=ckpt, stop_at_step=30)  # mid-epoch 2
    saved = train.read_checkpoint(ckpt)
    assert any(k.endswith("/exp_avg_sq") for k in saved.tensors) and saved.identity["config"]["optimizer"] == "adamw"
    assert len(json.loads(saved.meta["param_groups"])) == 2
    # The same checkpoint does not resume an SGD run.
    with pytest.raises(UsageError, match="optimizer 'adamw' -> 'sgd'"):
        train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg.replace(optimizer="sgd", momentum=0.9),
                          run=RunOptions(checkpoint_path=ckpt, handle_signals=False))
    resumed = run(checkpoint_path=ckpt)
    assert resumed.resumed_from == 30
    for k, v in whole.state.items():
        assert torch.equal(resumed.state[k], v), k
    assert [r["test_acc"] for r in whole.history] == [r["test_acc"] for r in resumed.history]


def test_a_run_recorded_before_the_field_is_sgd(ticket) -> None:
    cfg = train.default_recipe(ticket.spec, data.get_dataset_info("digits"))
    old = {k: v for k, v in cfg.as_dict().items() if k != "optimizer"}
    assert train.run_differences({"config": old}, {"config": cfg.as_dict()}) == []
    assert train.run_differences({"config": old}, {"config": {**old, "optimizer": "adamw"}}) == \
        ["optimizer 'sgd' -> 'adamw'"]


def test_an_sgd_checkpoint_without_the_field_resumes(digits, ticket, tmp_path) -> None:
    """A checkpoint an older elth wrote (no ``optimizer`` in its identity) resumes as SGD."""
    from elth_cli.container import read_header, save_with_digest
    from safetensors.torch import load as st_load

    cfg = train.default_recipe(ticket.spec, digits.info).replace(epochs=2)

    def run(**kw) -> train.TrainResult:
        return train.train_state(ticket.build_model("init"), ticket.masks, digits, cfg,
                                 run=RunOptions(handle_signals=False, **kw))

    ckpt = tmp_path / "old.ckpt"
    with pytest.raises(train.TrainingStopped):
        run(checkpoint_path=ckpt, stop_at_step=30)
    raw = ckpt.read_bytes()
    meta = {k: v for k, v in read_header(raw, str(ckpt)).items() if k not in ("file_sha256", "payload_sha256")}
    identity = json.loads(meta["identity"])
    del identity["config"]["optimizer"]
    meta["identity"] = json.dumps(identity, sort_keys=True)
    ckpt.write_bytes(save_with_digest(st_load(raw), meta))
    resumed = run(checkpoint_path=ckpt)
    assert resumed.resumed_from == 30
    whole = run()
    assert all(torch.equal(resumed.state[k], v) for k, v in whole.state.items())


# ----- rewiring -------------------------------------------------------------------------------


def test_a_mask_update_zeroes_the_adamw_moments_of_changed_weights(digits, ticket) -> None:
    model = ticket.build_model("init")
    parts = train.build_parts(model, ticket.masks, adamw(ticket), device_setup("cpu"))
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    parts.step(x, y, 1e-3)
    key = next(k for k, m in ticket.masks.items() if not m.all())
    param = dict(parts.model.named_parameters())[key]
    state = parts.optimizer.state[param]
    assert bool((state["exp_avg_sq"] != 0).any())
    old = ticket.masks[key]
    new = old.clone().reshape(-1)
    kept, pruned = new.nonzero().squeeze(1)[:5], (~new).nonzero().squeeze(1)[:5]
    new[kept], new[pruned] = False, True
    new = new.view_as(old)
    changed = new != old
    assert parts.masks.update({key: new}, parts.optimizer) == 10
    for name in ("exp_avg", "exp_avg_sq"):
        assert bool((state[name][changed] == 0).all()), name
        assert bool((state[name][~changed] != 0).any()), name  # the rest kept theirs
    assert bool((param.detach()[changed] == 0).all()) and float(state["step"]) == 1.0


class MomentWatch(Hook):
    """After every step (after the rewiring hook's): weights whose mask just changed are zero, with their moments."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] | None = None
        self.changes = 0
        self.grown = 0  # weights that joined a mask (for DPF: pruned ones that came back)
        self.violations: list[str] = []

    def on_step_end(self, loop) -> None:
        masks = {k: m.clone() for k, m in loop.masks().items()}
        params = dict(loop.model.named_parameters())
        for key, mask in masks.items():
            w = params[key].detach()
            if not bool((w[~mask] == 0).all()):
                self.violations.append(f"{key}: a pruned weight is not zero at step {loop.step}")
            if self.before is None:
                continue
            changed = mask != self.before[key]
            self.changes += int(changed.sum())
            self.grown += int((mask & ~self.before[key]).sum())
            state = loop.parts.optimizer.state[params[key]]
            for name in ("exp_avg", "exp_avg_sq"):
                if not bool((state[name][changed] == 0).all()):
                    self.violations.append(f"{key}: {name} of a rewired weight at step {loop.step}")
        self.before = masks


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_rewiring_with_adamw_zeroes_the_moments_of_changed_weights(digits, ticket, method) -> None:
    watch = MomentWatch()
    opts = DstOptions(method, ARCH, "digits", 0.8, update_every=5, update_until=0.5)
    trained = find_dst(opts, adamw(ticket), digits, hooks=[watch])
    assert watch.changes > 0 and watch.violations == []
    assert trained.hparams["optimizer"] == "adamw" and trained.sparsity == pytest.approx(0.8, abs=1e-3)


def test_dpf_with_adamw_lets_weights_return_and_keeps_them_zero_in_the_model(digits, ticket) -> None:
    """DPF's dense weights take the AdamW step; the model holds them masked, and a pruned one may come back."""
    watch = MomentWatch()
    opts = DstOptions("dpf", ARCH, "digits", 0.8, update_every=4, update_until=0.5)
    trained = find_dst(opts, adamw(ticket), digits, hooks=[watch])
    assert trained.sparsity == pytest.approx(0.8, abs=1e-3)
    assert not [v for v in watch.violations if "pruned" in v]  # DPF keeps the moments: those differ by design
    assert watch.grown > 0 and trained.metrics["test_acc"] > 0.1
