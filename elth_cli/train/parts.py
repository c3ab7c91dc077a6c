"""The training step and what it acts on: masks, optimizer, grad scaler, and evaluation.

:class:`TrainStep` is one optimizer step with no host-device synchronisation, exactly what
``benchmarks/train_throughput.py`` times. :func:`build_parts` assembles a run's model, masks,
optimizer, scaler and step for a :class:`~elth_cli.runtime.device.DeviceSetup`; the loop and the
benchmarks both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elth_cli.runtime import distributed
from elth_cli.data import DataBundle
from elth_cli.runtime.device import DeviceSetup, autocast
from elth_cli.errors import UsageError
from elth_cli.train.checkpoint import EpochStats
from elth_cli.train.config import ADAMW_BETAS, ADAMW_EPS, TrainConfig

# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


class MaskSet:
    """The masks of a model's pruned weights, kept as float tensors in each weight's dtype and layout.

    ``masks`` (CPU bool tensors, every masked key) is the current truth: what a checkpoint and the
    trained ticket record. Hooks may rewire them during training with :meth:`update`.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        self._params = dict(model.named_parameters())
        missing = [k for k in masks if k not in self._params]
        if missing:
            raise UsageError(f"mask {missing[0]!r} names no parameter of the model; is it a mask for another architecture?")
        self.load(masks)

    # False: the step's weight gradient is only needed at the kept weights (3 sparse passes per
    # step). The feedback set (DPF) needs it at every weight: its step costs a dense weight gradient.
    dense_weight_grad = False

    def load(self, masks: Mapping[str, Tensor]) -> None:
        """Take ``masks`` as they are (a resumed run's): no weight or optimizer state is touched."""
        self.version = getattr(self, "version", -1) + 1  # hooks that cache per-mask work watch it
        # In the model's parameter order, whatever order they come in (a checkpoint's is sorted by name).
        self.masks = {k: masks[k].detach().to("cpu", torch.bool) for k in self._params if k in masks}
        self.keys = self._acting_keys()
        self.params = [self._params[k] for k in self.keys]
        # empty_like keeps channels_last strides, so the foreach product runs over matching layouts.
        self.values = [torch.empty_like(p).copy_(self.masks[k].to(p.device)) for k, p in zip(self.keys, self.params)]

    def _acting_keys(self) -> list[str]:
        """The keys the set acts on each step. All-ones masks (a dense network, layers left unpruned)
        would multiply by 1: left out."""
        return [k for k, m in self.masks.items() if not bool(m.all())]

    def _checked(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A mask update as CPU bool tensors, refused when it names an unknown weight or has another shape."""
        out = {}
        for key, mask in masks.items():
            if key not in self.masks:
                raise UsageError(f"mask update names {key!r}, which is not a masked weight of this run")
            mask = mask.detach().to("cpu", torch.bool)
            if mask.shape != self.masks[key].shape:
                raise UsageError(f"mask update for {key!r} has shape {tuple(mask.shape)}, the weight "
                                 f"{tuple(self.masks[key].shape)}")
            out[key] = mask
        return out

    def before_optimizer(self) -> None:
        """Between backward and the optimizer step: nothing for a fixed mask (see FeedbackMaskSet)."""

    @torch.no_grad()
    def apply(self) -> None:
        """After the optimizer step: zero every pruned weight, one fused multi-tensor kernel (no hooks:
        they break under compile)."""
        if self.params:
            torch._foreach_mul_(self.params, self.values)

    def extra_state(self) -> dict[str, Tensor]:
        """Tensors besides the model that a checkpoint must keep (none for a fixed mask)."""
        return {}

    def load_extra(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore :meth:`extra_state` from a checkpoint."""

    @torch.no_grad()
    def clean(self) -> None:
        """Make pruned weights +0.0 (a product leaves -0.0 behind negative weights): the ticket's convention."""
        for p, m in zip(self.params, self.values):
            p.copy_(torch.where(m.bool(), p, torch.zeros((), dtype=p.dtype, device=p.device)))

    @torch.no_grad()
    def update(self, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None) -> int:
        """Rewire the masks during training; return how many weights changed state.

        ``masks`` gives new masks for some or all keys (same shapes). Every weight whose mask
        changes is set to zero, with its optimizer state (SGD's momentum, AdamW's two moments): a
        weight that leaves the mask is pruned, and one that joins starts from zero with no momentum,
        as RigL's grown connections do. Per-layer counts are the caller's to keep (the loop does not rebalance).
        """
        new = dict(self.masks)
        rewired = 0
        for key, mask in self._checked(masks).items():
            changed = mask != self.masks[key]
            count = int(changed.sum())
            if count:
                rewired += count
                _zero_where(self._params[key], changed, optimizer)
            new[key] = mask
        if rewired:
            self.load(new)
            self.apply()
        return rewired


class FeedbackMaskSet(MaskSet):
    """Masks with feedback (DPF, Lin et al. 2020): dense weights live beside the masked model.

    The model holds the masked weights at rest, so evaluation, snapshots and checkpoints see the
    sparse network. Each step computes its gradient at the masked weights, puts the dense weights
    back for the optimizer (momentum and weight decay act on them), keeps the result as the new
    dense weights and masks the model again. A pruned weight therefore keeps learning and may
    return when the mask is recomputed; :meth:`update` changes the masks without zeroing anything.
    """

    dense_weight_grad = True

    def _acting_keys(self) -> list[str]:
        return list(self.masks)  # all-ones included: their dense weights move whatever the mask

    def load(self, masks: Mapping[str, Tensor]) -> None:
        super().load(masks)
        if getattr(self, "dense", None) is None:
            self.dense = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def before_optimizer(self) -> None:
        torch._foreach_copy_(self.params, self.dense)

    @torch.no_grad()
    def apply(self) -> None:
        torch._foreach_copy_(self.dense, self.params)
        torch._foreach_mul_(self.params, self.values)

    @torch.no_grad()
    def update(self, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None) -> int:
        """New masks over the same dense weights: the model becomes dense x mask; no state is reset."""
        checked = self._checked(masks)
        new = {**self.masks, **checked}
        changed = sum(int((new[k] != self.masks[k]).sum()) for k in checked)
        self.load(new)
        torch._foreach_copy_(self.params, self.dense)
        torch._foreach_mul_(self.params, self.values)
        return changed

    def extra_state(self) -> dict[str, Tensor]:
        return {f"dense/{k}": d for k, d in zip(self.keys, self.dense)}

    @torch.no_grad()
    def load_extra(self, tensors: Mapping[str, Tensor]) -> None:
        for k, d in zip(self.keys, self.dense):
            saved = tensors.get(f"dense/{k}")
            if saved is None:
                raise UsageError(f"the checkpoint lacks the dense weights of {k!r} that feedback training keeps")
            d.copy_(saved)


def _zero_where(param: Tensor, changed: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Zero ``param`` where ``changed``, and every per-weight optimizer state there: SGD's momentum buffer,
    AdamW's exp_avg and exp_avg_sq (its step count is the parameter's, shared by every weight: kept, so a
    regrown weight's first moments are bias-corrected as a weight that saw zero gradients until now)."""
    where = changed.to(param.device)
    param.masked_fill_(where, 0.0)
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(where, 0.0)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


class TrainStep:
    """One optimizer step, with no host-device synchronisation.

    Loss sum and correct count accumulate in device tensors (:attr:`stats`) that
    :meth:`read_stats` reads once per epoch. The LR is a host float written into the param groups.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet,
                 setup: DeviceSetup, scaler: torch.amp.GradScaler | None = None) -> None:
        self.module = module
        self.optimizer = optimizer
        self.masks = masks
        self.setup = setup
        self.scaler = scaler
        device = setup.device
        self.stats = EpochStats(torch.zeros((), dtype=torch.float64, device=device),
                                torch.zeros((), dtype=torch.int64, device=device), 0)

    def reset_stats(self) -> None:
        self.stats.loss_sum.zero_()
        self.stats.correct.zero_()
        self.stats.seen = 0  # a host int: batch sizes are known on the host

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.setup.autocast():
            out = self.module(x)
            loss = F.cross_entropy(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            # With fused SGD the scaler hands its inf check to the optimizer kernel: still no sync.
            self.scaler.scale(loss).backward()
            self.masks.before_optimizer()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.masks.before_optimizer()
            self.optimizer.step()
        self.masks.apply()
        n = y.shape[0]
        with torch.no_grad():
            self.stats.loss_sum.add_(loss.detach(), alpha=n)  # one kernel, accumulated in float64
            self.stats.correct.add_((out.detach().argmax(1) == y).sum())
        self.stats.seen += n

    def read_stats(self) -> tuple[float, float]:
        """(mean loss, accuracy) of the examples since the last reset: one host-device sync."""
        seen = self.stats.seen
        if seen == 0:
            return float("nan"), float("nan")
        both = torch.stack([self.stats.loss_sum, self.stats.correct.double()]).tolist()
        return both[0] / seen, both[1] / seen


def make_optimizer(model: nn.Module, cfg: TrainConfig, setup: DeviceSetup) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters; fused (CUDA) or foreach per ``setup``.

    SGD: momentum, weight decay on every parameter (BN too, as open_lth), one parameter group.
    AdamW (``--optimizer adamw``): decoupled weight decay on the weight matrices and kernels only, as
    timm and DeiT: parameters of one dimension or none (biases, LayerNorm and BatchNorm weights) and
    the names the model's ``no_weight_decay()`` returns (position embedding, class token) get none.
    """
    kwargs = setup.optimizer_kwargs(cfg.optimizer)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=ADAMW_BETAS,
                                 eps=ADAMW_EPS, weight_decay=cfg.weight_decay, **kwargs)
    return torch.optim.SGD(list(model.parameters()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=False, **kwargs)


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: ``weight_decay`` on the rest, none on 1-D (and 0-D) parameters and the names
    ``model.no_weight_decay()`` gives (timm's convention; a model without the method names none). A group
    with no parameter is left out."""
    skip = getattr(model, "no_weight_decay", None)
    named = set(skip()) if callable(skip) else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in named else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@dataclass
class TrainParts:
    """What one run trains: the model (masks and checkpoints act on it), the module the step calls
    (the model, compiled with ``--compile``, wrapped in DDP with several processes), and the rest."""

    model: nn.Module
    module: nn.Module
    masks: MaskSet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step: TrainStep
    setup: DeviceSetup


def build_parts(model: nn.Module, masks: Mapping[str, Tensor], cfg: TrainConfig, setup: DeviceSetup,
                world_size: int = 1, feedback: bool = False) -> TrainParts:
    """Move ``model`` to the device, zero its pruned weights and build the optimizer, scaler and step.

    ``feedback``: keep dense weights beside the masked ones (:class:`FeedbackMaskSet`, for DPF).
    """
    setup.configure_torch()
    model = setup.prepare_model(model)
    if cfg.sync_bn and world_size > 1:
        model = distributed.convert_sync_bn(model, setup.device)
    mask_set = (FeedbackMaskSet if feedback else MaskSet)(model, masks)
    mask_set.apply()
    module: nn.Module = model
    if cfg.compile:
        # Static shapes: the epoch's last, smaller batch gets a graph of its own instead of turning
        # the main graph dynamic (slower kernels); it compiles once, as warm-up. The compiled module
        # shares the model's parameters.
        module = torch.compile(model, dynamic=False)
    if world_size > 1:
        module = distributed.wrap_ddp(module, setup.device)
    optimizer = make_optimizer(model, cfg, setup)
    scaler = setup.make_scaler()
    return TrainParts(model, module, mask_set, optimizer, scaler, TrainStep(module, optimizer, mask_set, setup, scaler),
                      setup)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, bundle: DataBundle, split: str = "test", batch_size: int = 1000,
             precision: str = "fp32", rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Top-1 accuracy (top-5 with more than 10 classes) and mean loss of ``split``, BN in eval mode.

    ``model`` must be on ``bundle.device``; its train/eval mode is restored afterwards. Results are
    read from the device once, at the end. With ``world_size`` > 1 each rank evaluates its shard and
    the sums are all-reduced, so every rank returns the metrics of the whole split.
    """
    was_training = model.training
    model.eval()
    device = bundle.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, correct top-5, examples
    top5 = bundle.info.num_classes > 10
    try:
        for x, y in bundle.eval_batches(batch_size, split, rank=rank, world_size=world_size):
            with autocast(device, precision):
                out = model(x)
            out = out.float()
            sums[0] += F.cross_entropy(out, y, reduction="sum").double()
            sums[1] += (out.argmax(1) == y).sum()
            if top5:
                sums[2] += (out.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            sums[3] += y.shape[0]
    finally:
        model.train(was_training)
    if world_size > 1:
        distributed.all_reduce_sum_(sums)
    loss, correct, correct5, n = sums.tolist()
    n = int(n)
    result: dict[str, Any] = {"split": split, "examples": n, "loss": loss / n if n else float("nan"),
                              "accuracy": correct / n if n else float("nan")}
    if top5:
        result["top5"] = correct5 / n if n else float("nan")
    return result
