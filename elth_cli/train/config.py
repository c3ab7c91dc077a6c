"""The training configuration: :class:`TrainConfig`, the paper's recipes, overrides by field name.

A training hyperparameter is a field of :class:`TrainConfig`. Its command-line flag and help
text are the field's metadata (:class:`Flag`), read by ``elth train`` and ``elth find`` alike, and
command options reach the config by field name (:func:`config_overrides`,
:func:`config_from_options`). Adding one therefore takes: the field, its check in
:func:`validate_config`, its option alias in ``cli.py`` and a parameter in the two command
signatures. This module does not import torch (``--help`` reads it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Mapping, Optional

from elth_cli.errors import UsageError
from elth_cli.steps import normalise_steps, parse_step_list, parse_steps, scale_steps

if TYPE_CHECKING:
    from elth_cli.archs import ArchSpec
    from elth_cli.data import DatasetInfo

SCHEDULES = ("step", "cosine")
OPTIMIZERS = ("sgd", "adamw")
# AdamW's constants (torch's defaults, DeiT's and timm's): recorded in a trained ticket's hparams, not options.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
# One process writes a checkpoint at an epoch's end only when this long has passed since the last one
# (``--checkpoint-every``); a stop always writes one. Not part of a run's identity: it changes no result.
CHECKPOINT_EVERY_S = 30.0
# Bounds no real run reaches (the paper's longest recipe is 160 epochs; ImageNet's 90 x 1,251 steps):
# past them a value is a typo that would train until killed.
MAX_EPOCHS = 100_000
MAX_TOTAL_STEPS = 10**8
MAX_BATCH = 1 << 24
MAX_SEED = 2**63 - 1  # what torch.manual_seed takes


@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line: option declarations, help, the option's type."""

    decls: tuple[str, ...]
    help: str
    type: Any
    panel: str = "Training"  # the --help panel it is listed in


def _flag(decls: str | tuple[str, ...], help: str, type_: Any, panel: str = "Training", **default: Any) -> Any:
    decls = (decls,) if isinstance(decls, str) else decls
    return field(metadata={"flag": Flag(decls, help, type_, panel)}, **default)


@dataclass(frozen=True)
class TrainConfig:
    """Every value a training run depends on, resolved (recorded as the trained ticket's hparams).

    Step-valued fields (``milestones``, ``warmup``) keep their step syntax (``80ep``, ``1000it``)
    because an epoch's length depends on the data set and batch size; :func:`parse_steps` turns
    them into iterations once ``steps_per_epoch`` is known. ``eval_every`` is in epochs (0: only
    after the last epoch).
    """

    dataset: str
    recipe: str
    epochs: int = _flag("--epochs", "Epochs of the whole schedule (a run starts at the ticket's rewind step).",
                        Optional[int])
    batch_size: int = _flag(("--batch-size", "-b"), "Global batch size.", Optional[int])
    lr: float = _flag("--lr", "Base learning rate.", Optional[float])
    # Keyword-only with a default: a run recorded before the field existed trained with SGD.
    optimizer: str = _flag("--optimizer", "sgd (with --momentum, weight decay on every parameter) or adamw (betas "
                           "0.9,0.999, decoupled weight decay, none on biases, norms and embeddings).", Optional[str],
                           default="sgd", kw_only=True)
    momentum: float = _flag("--momentum", "SGD momentum (not with --optimizer adamw).", Optional[float])
    weight_decay: float = _flag("--weight-decay", "Weight decay (SGD: every parameter; AdamW: decoupled, weight "
                                "matrices only).", Optional[float])
    schedule: str = _flag("--schedule", "step (milestones) or cosine (to 0).", Optional[str])
    milestones: tuple[str, ...] = _flag("--milestones", "Step schedule: steps where the LR is multiplied by "
                                        "--gamma, e.g. 80ep,120ep or 32000it ('none' for no drops).", Optional[str])
    gamma: float = _flag("--gamma", "LR factor at each milestone.", Optional[float])
    warmup: str = _flag("--warmup", "Linear warm-up length: 5ep, 1000it or 1000.", Optional[str])
    seed: int = _flag("--seed", "Seed of the initialisation (find), data order and augmentation.", int, default=0)
    augment: bool = _flag("--augment/--no-augment", "Random crops (and flips where the data set has them).", bool,
                          default=True)
    eval_every: int = _flag("--eval-every", "Test every N epochs (0: only after the last; the last epoch is "
                            "always tested).", int, default=1)
    eval_batch_size: int = 1000
    device: str = _flag("--device", "auto (CUDA when available), cpu, cuda or cuda:N.", str, "Devices", default="cpu")
    precision: str = _flag("--precision", "auto (bf16 on CUDA that supports it, else fp32), bf16, fp16 (with a "
                           "grad scaler; on the CPU where torch supports it) or fp32.", str, "Devices", default="fp32")
    compile: bool = _flag("--compile", "torch.compile the model (faster on GPUs after a slow first step).", bool,
                          "Devices", default=False)
    deterministic: bool = _flag("--deterministic", "Deterministic kernels only (slower).", bool, "Devices",
                                default=False)
    train_scale: int = _flag("--train-scale", "Train K times longer: the recipe's epochs, milestones and warm-up "
                             "(after the other options) times K, as RigL-5x (K=5).", Optional[int], default=1)
    resize: int = _flag("--resize", "Resize every image to N x N (bilinear, after the augmentation) for a ticket "
                        "made for that input size: CIFAR-10 for ImageNet tickets is --resize 224 (the paper's "
                        "Table 7).", Optional[int], "Data", default=None)
    # SyncBatchNorm across ranks (CUDA, several processes); ignored with one.
    sync_bn: bool = _flag("--sync-bn", "Several processes on GPUs: BatchNorm statistics over the global batch "
                          "(SyncBatchNorm). Ignored with one process; refused on the CPU.", bool, "Devices",
                          default=False)

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Defaults of the fields that have one: what a run recorded before a field existed meant."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """The fields that are command-line options, by field name."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls) if "flag" in f.metadata}

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied and validated (step values normalised)."""
        if "milestones" in changes and isinstance(changes["milestones"], str):
            changes["milestones"] = parse_step_list(changes["milestones"])
        elif "milestones" in changes:
            changes["milestones"] = tuple(normalise_steps(m) for m in changes["milestones"])
        if "warmup" in changes:
            changes["warmup"] = normalise_steps(changes["warmup"])
        cfg = dataclasses.replace(self, **changes)
        validate_config(cfg)
        return cfg

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch

    def resolved(self, steps_per_epoch: int, start_step: int = 0, world_size: int = 1) -> dict[str, Any]:
        """The config plus everything derived from the epoch length: what a trained ticket records."""
        d = self.as_dict()
        if self.optimizer == "adamw":
            d.update(betas=list(ADAMW_BETAS), eps=ADAMW_EPS)
        else:
            d.update(nesterov=False)
        d.update(
            steps_per_epoch=steps_per_epoch,
            total_steps=self.total_steps(steps_per_epoch),
            start_step=start_step,
            warmup_steps=parse_steps(self.warmup, steps_per_epoch),
            milestone_steps=[parse_steps(m, steps_per_epoch) for m in self.milestones],
            world_size=world_size,
        )
        return d


MOMENTUM_WITH_ADAMW = "--momentum is SGD's; AdamW has none (its betas are 0.9,0.999): drop --momentum or pass --optimizer sgd"


def validate_config(cfg: TrainConfig) -> None:
    """Raise UsageError naming the first value out of range."""
    checks = [
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.epochs <= MAX_EPOCHS, f"--epochs must be at most {MAX_EPOCHS:,}, got {cfg.epochs}"),
        (1 <= cfg.batch_size <= MAX_BATCH, f"--batch-size must be from 1 to {MAX_BATCH:,}, got {cfg.batch_size}"),
        (cfg.resize is None or 1 <= cfg.resize <= 4096, f"--resize must be a size from 1 to 4096, got {cfg.resize}"),
        (cfg.eval_batch_size >= 1, f"eval batch size must be at least 1, got {cfg.eval_batch_size}"),
        (math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}"),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (cfg.optimizer in OPTIMIZERS, f"unknown --optimizer {cfg.optimizer!r}; choose sgd or adamw"),
        (cfg.optimizer != "adamw" or cfg.momentum == 0, MOMENTUM_WITH_ADAMW),
        (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"--weight-decay must be 0 or more, got {cfg.weight_decay}"),
        (math.isfinite(cfg.gamma) and cfg.gamma > 0, f"--gamma must be a positive number, got {cfg.gamma}"),
        (cfg.schedule in SCHEDULES, f"unknown --schedule {cfg.schedule!r}; choose step or cosine"),
        (cfg.recipe in RECIPES, f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(RECIPES)}"),
        (isinstance(cfg.train_scale, int) and 1 <= cfg.train_scale <= 100,
         f"--train-scale must be a whole number from 1 to 100, got {cfg.train_scale}"),
        (cfg.eval_every >= 0, f"--eval-every must be 0 (only at the end) or more epochs, got {cfg.eval_every}"),
        (cfg.precision in ("bf16", "fp16", "fp32"),
         f"precision must be resolved to bf16, fp16 or fp32, got {cfg.precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    check_seed(cfg.seed)
    for s in (*cfg.milestones, cfg.warmup):
        parse_steps(s, 1)
    # Milestones in one unit can be ordered without the epoch length; mixed ones are checked once it is known.
    units = {m[-2:] if m[:-2].isdigit() else "mixed" for m in cfg.milestones}
    if len(units) == 1 and "mixed" not in units:
        check_milestone_order(cfg.milestones, 1)


def check_seed(seed: int) -> None:
    """A seed torch takes: a whole number from 0 to 2^63-1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be a whole number from 0 to 2^63-1, got {seed}")


def check_milestone_order(milestones: tuple[str, ...], steps_per_epoch: int) -> None:
    """--milestones in increasing order: a step schedule multiplies the LR at each in turn."""
    steps = [parse_steps(m, steps_per_epoch) for m in milestones]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise UsageError(f"--milestones must be in increasing order, got {','.join(milestones)}")


def check_run_length(cfg: TrainConfig, steps_per_epoch: int) -> None:
    """The whole run, once the epoch length is known: at most MAX_TOTAL_STEPS steps, milestones in order."""
    total = cfg.total_steps(steps_per_epoch)
    if total > MAX_TOTAL_STEPS:
        raise UsageError(f"{cfg.epochs:,} epochs of {steps_per_epoch:,} steps is {total:,} steps, more than "
                         f"{MAX_TOTAL_STEPS:,}; lower --epochs (or --train-scale)")
    check_milestone_order(cfg.milestones, steps_per_epoch)


# The paper's recipes (Table 4, open_lth's defaults), the short digits recipe and the vision transformers'
# two, by recipe name. A recipe without ``optimizer`` would train with the field's default, SGD; each says it.
RECIPES: dict[str, dict[str, Any]] = {
    # CIFAR ResNet / VGG: SGD 0.9, lr 0.1, wd 1e-4, batch 128, 160 epochs, x0.1 at 80 and 120 epochs.
    "cifar": dict(epochs=160, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                  schedule="step", milestones=("80ep", "120ep"), gamma=0.1, warmup="0it"),
    # ImageNet ResNet: batch 1024, lr 0.4, 90 epochs, x0.1 at 30/60/80, 5 warm-up epochs, wd 1e-4.
    "imagenet": dict(epochs=90, batch_size=1024, lr=0.4, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                     schedule="step", milestones=("30ep", "60ep", "80ep"), gamma=0.1, warmup="5ep"),
    # MNIST MLPs (open_lth's mnist_lenet): plain SGD 0.1, batch 128, 40 epochs, no decay, no schedule.
    "mnist": dict(epochs=40, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                  schedule="step", milestones=(), gamma=0.1, warmup="0it"),
    # digits (any family but the transformers): seconds on a CPU; deep ResNets diverge on digits without the warm-up.
    "digits": dict(epochs=30, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                   schedule="cosine", milestones=(), gamma=0.1, warmup="2ep"),
    # Vision transformers (CIFAR-sized data, and the family's default elsewhere): DeiT's optimizer (Touvron et
    # al. 2021, "Training data-efficient image transformers", Table 9 and Sec. 6): AdamW, betas 0.9/0.999,
    # weight decay 0.05 (not on biases, norms, position embedding or class token), 5 epochs of linear warm-up,
    # cosine decay. DeiT's LR rule, 5e-4 x batch/512, is tuned to ImageNet's 300 epochs of heavy augmentation;
    # ViTs trained from scratch on CIFAR-sized sets use 1e-3 at batch 128 for 100 epochs (Lee, Lee and Song
    # 2021, "Vision Transformer for Small-Size Datasets"; omihub777/ViT-CIFAR), which this recipe takes. On
    # ImageNet pass DeiT's own values: --batch-size 1024 --lr 1e-3 --epochs 300. momentum 0: AdamW has none.
    "vit": dict(epochs=100, batch_size=128, lr=1e-3, optimizer="adamw", momentum=0.0, weight_decay=0.05,
                schedule="cosine", milestones=(), gamma=0.1, warmup="5ep"),
    # Vision transformers on digits: the digits recipe's length and batch (30 epochs, 64, 2ep warm-up, cosine)
    # with the ViT recipe's AdamW, without the random crops: a crop shifts an 8x8 digit across the 2x2 patches'
    # borders, which a short run cannot learn to ignore. Measured on the dense vit-d4-w32-h2-p2, 15 epochs, seed 0
    # (2026-12-06): 34% test accuracy with crops against 81% without (lr 3e-3); without, 61% at 1e-3, 81% at
    # 3e-3, 91% at 5e-3 (85% with seed 1; the deeper vit-d8-w32-h2-p2 86%), 31% at 1e-2.
    "vit-digits": dict(epochs=30, batch_size=64, lr=5e-3, optimizer="adamw", momentum=0.0, weight_decay=0.05,
                       schedule="cosine", milestones=(), gamma=0.1, warmup="2ep", augment=False),
}
# How recipe_hint names each recipe.
RECIPE_LABELS = {"cifar": "CIFAR", "imagenet": "ImageNet", "mnist": "MNIST", "digits": "digits", "vit": "ViT",
                 "vit-digits": "ViT digits"}


def recipe_hint(name: str) -> str:
    """What a field defaults to in each recipe, for its option's help: ``default: 0.1 CIFAR, 0.4 ImageNet,
    0.1 MNIST, 0.05 digits`` (empty for a field the recipes do not set)."""
    if not all(name in r for r in RECIPES.values()):
        return ""

    def shown(value: Any) -> str:
        if isinstance(value, tuple):
            return ",".join(value) if value else "none"
        return f"{value:g}" if isinstance(value, float) else str(value)

    # SGD's momentum means nothing to the AdamW recipes (they record 0): not listed for them.
    shown_recipes = {k: r for k, r in RECIPES.items() if name != "momentum" or r.get("optimizer", "sgd") == "sgd"}
    return "default: " + ", ".join(f"{shown(r[name])} {RECIPE_LABELS.get(k, k)}" for k, r in shown_recipes.items())


def recipe_name(spec: ArchSpec, dataset_info: DatasetInfo) -> str:
    """The recipe a network trains with: its family's (cifar, imagenet, mnist, vit), or on digits the
    family's digits recipe (``vit-digits``) where RECIPES has one, else the short ``digits`` recipe."""
    from elth_cli import archs

    family = archs.family_of(spec).recipe
    if dataset_info.name != "digits":
        return family
    return f"{family}-digits" if f"{family}-digits" in RECIPES else "digits"


def default_recipe(spec: ArchSpec, dataset_info: DatasetInfo) -> TrainConfig:
    """The paper's recipe for ``spec``'s family (open_lth defaults), or the short digits recipe."""
    name = recipe_name(spec, dataset_info)
    eval_batch = 1000 if dataset_info.in_memory else 250
    return TrainConfig(dataset=dataset_info.name, recipe=name, eval_batch_size=eval_batch, **RECIPES[name])


def schedule_problems(cfg: TrainConfig, steps_per_epoch: int, given: Collection[str] = ()) -> dict[str, str]:
    """A warm-up or milestones at or past the end of training (they would never take effect), by field.

    The message names the option when it is in ``given`` (the command line asked for it: an error),
    else the recipe (a short run of a long recipe: a warning)."""
    total = cfg.total_steps(steps_per_epoch)
    run = f"the run ({cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, {total} steps)"
    problems = {}
    warmup = parse_steps(cfg.warmup, steps_per_epoch)
    if warmup > 0 and warmup >= total:
        what = f"--warmup {cfg.warmup}" if "warmup" in given else f"the recipe's warm-up {cfg.warmup}"
        problems["warmup"] = (f"{what} ({warmup} steps) is not shorter than {run}: the LR never reaches "
                              f"{cfg.lr:g}; pass a shorter --warmup or train longer")
    late = [m for m in cfg.milestones if parse_steps(m, steps_per_epoch) >= total]
    if cfg.schedule == "step" and late:
        what = "--milestones" if "milestones" in given else "the recipe's milestones"
        problems["milestones"] = (f"{what} {','.join(late)} at or past the end of {run} never take effect; "
                                  "drop them (--milestones none) or train longer")
    return problems


def check_checkpoint_every(seconds: float) -> float:
    """``--checkpoint-every`` is a number of seconds, 0 or more."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UsageError(f"--checkpoint-every must be 0 or more seconds, got {seconds}")
    return seconds


def config_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The config options among a command's parameters (by field name), leaving out those not given (None)."""
    return {name: values[name] for name in TrainConfig.flags() if values.get(name) is not None}


def config_from_options(spec: ArchSpec, dataset_info: DatasetInfo, **options: Any) -> TrainConfig:
    """The default recipe with every option that is not None applied by field name (what ``elth train`` resolves).

    ``--milestones`` only mean something to the step schedule; asking for ``--schedule cosine``
    drops the recipe's milestones.
    """
    return apply_options(default_recipe(spec, dataset_info), **options)


def check_given_options(**options: Any) -> None:
    """Refuse a given option value that no recipe makes right (``--epochs 0``, an unknown schedule, a
    bad step value) before any ticket or data set is read: what several trainings share is checked
    once, not once per ticket. A value that only some recipes refuse is left to each training."""
    errors = []
    for name, values in RECIPES.items():
        try:
            apply_options(TrainConfig(dataset="", recipe=name, **values), **options)
            return
        except UsageError as e:
            errors.append(e)
    raise errors[0]


def apply_options(base: TrainConfig, **options: Any) -> TrainConfig:
    """``base`` with every option that is not None applied by field name, validated and scaled."""
    unknown = set(options) - set(TrainConfig.flags()) - {"eval_batch_size"}
    if unknown:
        raise TypeError(f"not a training option: {', '.join(sorted(unknown))}")
    changes = {k: v for k, v in options.items() if v is not None}
    if "schedule" in changes:
        changes["schedule"] = str(changes["schedule"]).strip().lower()
        if changes["schedule"] not in SCHEDULES:
            raise UsageError(f"unknown --schedule {changes['schedule']!r}; choose step or cosine")
    kind = changes.get("schedule", base.schedule)
    if "milestones" in changes and kind == "cosine":
        raise UsageError("--milestones only apply to --schedule step; drop them or pass --schedule step")
    if changes.get("schedule") == "cosine":
        changes["milestones"] = ()
    _optimizer_changes(base, changes)
    return scale_recipe(base.replace(**changes))


def _optimizer_changes(base: TrainConfig, changes: dict[str, Any]) -> None:
    """``--optimizer`` normalised; AdamW refuses a given ``--momentum`` and records momentum 0 (it has none)."""
    if "optimizer" in changes:
        changes["optimizer"] = str(changes["optimizer"]).strip().lower()
        if changes["optimizer"] not in OPTIMIZERS:
            raise UsageError(f"unknown --optimizer {changes['optimizer']!r}; choose sgd or adamw")
    if changes.get("optimizer", base.optimizer) == "adamw":
        if "momentum" in changes:
            raise UsageError(MOMENTUM_WITH_ADAMW)
        changes["momentum"] = 0.0


def scale_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` run ``cfg.train_scale`` times longer: epochs, milestones and warm-up multiplied (RigL's
    "5x" schedules, Evci et al. 2020). The config records the factor next to the scaled values."""
    k = cfg.train_scale
    if k == 1:
        return cfg
    return dataclasses.replace(cfg, epochs=cfg.epochs * k, milestones=tuple(scale_steps(m, k) for m in cfg.milestones),
                               warmup=scale_steps(cfg.warmup, k))
