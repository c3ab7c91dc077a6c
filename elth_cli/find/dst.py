"""Finding a ticket by dynamic sparse training: ``elth find --method rigl|set|dpf``.

The run trains a fresh network once, from step 0, while a hook of the training loop
(:mod:`elth_cli.train.rewiring`) moves its mask; the result is a trained ticket whose mask is the final
one, whose ``init`` is the run's initial weights under that mask and whose ``trained`` weights are
the final ones. Its ``cost`` is that one training (steps, seconds, FLOPs): the mask cost what the
run cost, and its ``trained`` weights came with it.

Defaults and their sources (docs/find.md): RigL and SET update every 100 steps with a drop
fraction of 0.3 decaying by cosine until 75 % of training, ERK layer-wise sparsity (Evci et al.
2020); DPF recomputes its mask every 16 steps along Zhu and Gupta's cubic schedule (Lin et al.
2020), reaching the target at 75 % of training (elth's choice, the same point as RigL's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from elth_cli import archs, data
from elth_cli.errors import UsageError
from elth_cli.find.methods import FindRequest
from elth_cli.find.baselines import BaselineOptions, default_exclude, prune_baseline
from elth_cli.find.tickets import Pretrained, fresh_ticket, pretrained_field, pretrained_source
from elth_cli.flops import module_macs
from elth_cli.prune import check_sparsity
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.train.config import TrainConfig
from elth_cli.train.rewiring import UPDATES_KEY, GradualMagnitude, Rewiring, UpdateSchedule
from elth_cli.train.loop import Hook
from elth_cli.train.provenance import run_config
from elth_cli.runtime import distributed
from elth_cli.train.options import RunOptions, run_options
from elth_cli.train.run import train_state

DST_METHODS = ("rigl", "set", "dpf")
DST_DISTRIBUTIONS = ("erk", "layerwise")
DEFAULT_UPDATE_EVERY = {"rigl": 100, "set": 100, "dpf": 16}


@dataclass(frozen=True)
class DstOptions:
    """What a dynamic sparse training run does, apart from the recipe (a TrainConfig)."""

    method: str
    arch: str
    dataset: str
    sparsity: float
    distribution: str = "erk"  # rigl/set: erk or layerwise; dpf prunes globally
    update_every: int | None = None  # None: 100 for rigl/set, 16 for dpf
    update_until: float = 0.75  # fraction of the run's steps after which the mask is fixed
    drop_fraction: float = 0.3  # rigl/set
    exclude: tuple[str, ...] | None = None  # None: the family's default (fc for VGG)
    pretrained: Pretrained | None = None  # find --pretrained FILE: the training starts from its weights

    def every(self) -> int:
        return self.update_every if self.update_every is not None else DEFAULT_UPDATE_EVERY[self.method]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(update_every=self.every(), exclude=None if self.exclude is None else list(self.exclude))
        pretrained_field(d, self.pretrained)
        if self.method == "dpf":
            d.update(distribution="global", drop_fraction=None)
        return d


def options_from(request: FindRequest, arch: str, dataset: str) -> DstOptions:
    """The method's options from what ``find`` was asked (``request``), its defaults where none was given."""
    if request.sparsity is None:
        raise UsageError(f"{request.method} needs --sparsity")
    return DstOptions(request.method, arch, dataset, request.sparsity, distribution=request.distribution or "erk",
                      update_every=request.update_every,
                      update_until=0.75 if request.update_until is None else request.update_until,
                      drop_fraction=0.3 if request.drop_fraction is None else request.drop_fraction,
                      exclude=request.exclude, pretrained=pretrained_source(request.pretrained))


def check_dst_options(opts: DstOptions) -> None:
    """Refuse options out of range, with the flag to change."""
    if opts.method not in DST_METHODS:
        raise UsageError(f"unknown dynamic sparse training method {opts.method!r}; choose one of "
                         f"{', '.join(DST_METHODS)}")
    check_sparsity(opts.sparsity)
    if opts.sparsity == 0:
        raise UsageError(f"{opts.method} needs --sparsity above 0 (0 is the dense network)")
    if opts.method != "dpf" and opts.distribution not in DST_DISTRIBUTIONS:
        raise UsageError(f"{opts.method} spreads its sparsity by erk or layerwise, not {opts.distribution!r}")
    if opts.update_every is not None and opts.update_every < 1:
        raise UsageError(f"--update-every must be at least 1 step, got {opts.update_every}")
    if not (math.isfinite(opts.update_until) and 0 < opts.update_until <= 1):
        raise UsageError(f"--update-until is the fraction of training after which the mask is fixed, in (0, 1]; "
                         f"got {opts.update_until}")
    if not (math.isfinite(opts.drop_fraction) and 0 < opts.drop_fraction <= 1):
        raise UsageError(f"--drop-fraction must be in (0, 1], got {opts.drop_fraction}")


def _start_ticket(opts: DstOptions, spec: archs.ArchSpec, cfg: TrainConfig, info: data.DatasetInfo,
                  exclude: tuple[str, ...]) -> tuple[Ticket, Ticket]:
    """(the fresh dense network, the run's starting ticket): a random mask for rigl/set, dense for dpf."""
    dense = fresh_ticket(spec.name, info.input_shape, info.num_classes, seed=cfg.seed, dataset=info.name,
                         pretrained=opts.pretrained)
    if opts.method == "dpf":
        return dense, dense
    start = prune_baseline(dense, BaselineOptions("random", sparsity=opts.sparsity, distribution=opts.distribution,
                                                  exclude=exclude, seed=cfg.seed))
    return dense, start


def _hook(opts: DstOptions, schedule: UpdateSchedule, start: Ticket, exclude: tuple[str, ...],
          macs: dict[str, int], seed: int) -> Hook:
    if opts.method == "dpf":
        return GradualMagnitude(opts.sparsity, schedule, exclude)
    keys = [k for k in start.masks if k not in exclude]
    return Rewiring("gradient" if opts.method == "rigl" else "random", schedule, keys, macs, seed)


def find_dst(opts: DstOptions, cfg: TrainConfig, bundle: data.DataBundle, run: RunOptions | None = None,
             **options: Any) -> Ticket:
    """Train a fresh ``opts.arch`` on ``bundle`` with a dynamic mask; return the trained ticket (unsaved).

    ``run`` (or ``options``, its fields by name) says how the training runs (checkpoint, resume, log,
    stop, ...): a stopped run resumes bit-identically, mask updates and all. Its ``hooks`` run after
    the method's own (they see the masks each update leaves).
    """
    check_dst_options(opts)
    run = run_options(run, **options)
    spec = archs.resolve_arch(opts.arch)
    info = bundle.info
    exclude = default_exclude(spec) if opts.exclude is None else tuple(opts.exclude)
    world_size = distributed.ranks()[1]
    spe = bundle.steps_per_epoch(cfg.batch_size, world_size)
    total = cfg.total_steps(spe)
    schedule = UpdateSchedule(opts.every(), max(1, round(opts.update_until * total)), opts.drop_fraction)
    if schedule.last == 0:
        raise UsageError(f"{opts.method} would never update its mask: --update-until {opts.update_until} of "
                         f"{total} steps is {schedule.until} steps, fewer than --update-every {opts.every()}; "
                         "lower --update-every or train longer")
    dense, start = _start_ticket(opts, spec, cfg, info, exclude)
    model = start.build_model("init")
    hook = _hook(opts, schedule, start, exclude, module_macs(model, info.input_shape), cfg.seed)
    title = f"{opts.method} {spec.name} on {info.name}" if run.title == RunOptions.title else run.title
    run = run.replace(hooks=(hook, *run.hooks), title=title)
    result = train_state(model, start.masks, bundle, cfg, 0, run=run, feedback=opts.method == "dpf",
                         search=opts.as_dict())
    masks = result.masks
    assert masks is not None
    hparams = {"dst": opts.as_dict() | {"update_until_step": schedule.until, "exclude": list(exclude)},
               **cfg.resolved(spe, 0, world_size)}
    metrics = {**result.metrics, UPDATES_KEY: result.extra.get(UPDATES_KEY, [])}
    cost = {"trainings": 1, "train_steps": int(metrics["steps"]), "train_seconds": float(metrics["wall_time_s"]),
            "train_flops": float(metrics["train_flops"]), "dense_train_flops": float(metrics["dense_train_flops"])}
    return Ticket(
        arch=spec.name, input_shape=info.input_shape, num_classes=info.num_classes, masks=masks,
        init=apply_masks(dense.init, masks), trained=apply_masks(result.state, masks), method=opts.method,
        rewind_step=0, dataset=info.name, hparams=hparams, metrics=metrics, cost=cost,
        config=run_config("find", hparams, bundle.device, result.setup),
    )


# The registry's interface (elth_cli.find.methods): a search method's ``search``.
search = find_dst
