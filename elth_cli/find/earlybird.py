"""Early-bird tickets: ``elth find --method early-bird`` (You et al., ICLR 2020).

Train a fresh network with the recipe until the global magnitude mask at the target sparsity stops
moving (the largest of the last ``window`` epoch-to-epoch normalised Hamming distances below
``epsilon``; :class:`~elth_cli.train.convergence.MaskConvergence`), then stop and prune once: the
ticket is that mask, exact, with ``init`` = the weights at the rewind step under it. It is not
trained (train it with ``elth train``); it records the epoch of detection, the distance history
and what the search cost (steps, seconds, FLOPs). A run that never converges trains the whole
recipe and prunes at its end, and says so.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from elth_cli import archs, data
from elth_cli.errors import UsageError
from elth_cli.find.baselines import default_exclude
from elth_cli.find.methods import FindRequest
from elth_cli.find.tickets import Pretrained, fresh_ticket, pretrained_field, pretrained_source
from elth_cli.masks import refuse_empty_layers
from elth_cli.prune import check_sparsity, magnitude_scores, prune_to_sparsity
from elth_cli.steps import parse_steps
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.train.config import TrainConfig
from elth_cli.train.convergence import (DEFAULT_EPSILON, DEFAULT_WINDOW, STATE_KEY, MaskConvergence, check_detection,
                                        never_settles)
from elth_cli.train.provenance import run_config
from elth_cli.runtime import distributed
from elth_cli.train.options import RunOptions, run_options
from elth_cli.train.run import train_state


@dataclass(frozen=True)
class EarlyBirdOptions:
    """What an early-bird search does, apart from the recipe (a TrainConfig)."""

    arch: str
    dataset: str
    sparsity: float
    rewind: str = "0it"
    window: int = DEFAULT_WINDOW
    epsilon: float = DEFAULT_EPSILON
    exclude: tuple[str, ...] | None = None  # None: the family's default (fc for VGG)
    pretrained: Pretrained | None = None  # find --pretrained FILE: the search starts from its weights

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude"] = None if self.exclude is None else list(self.exclude)
        pretrained_field(d, self.pretrained)
        return d


def options_from(request: FindRequest, arch: str, dataset: str) -> EarlyBirdOptions:
    """The search's options from what ``find`` was asked (``request``), its defaults where none was given."""
    from elth_cli.steps import normalise_steps

    if request.sparsity is None:
        raise UsageError("early-bird needs --sparsity")
    opts = EarlyBirdOptions(arch, dataset, request.sparsity, rewind=normalise_steps(request.rewind),
                            exclude=request.exclude, pretrained=pretrained_source(request.pretrained),
                            **request.detection())
    check_detection(opts.window, opts.epsilon)
    return opts


def pruned_count(masks: dict[str, Any], sparsity: float, exclude: tuple[str, ...]) -> int:
    """Weights pruned at ``sparsity`` of every prunable weight, checked to be reachable with ``exclude`` dense."""
    total = sum(m.numel() for m in masks.values())
    allowed = sum(m.numel() for k, m in masks.items() if k not in exclude)
    target = round(sparsity * total)
    if target > allowed:
        raise UsageError(f"sparsity {sparsity} is impossible with {', '.join(exclude)} kept dense: at most "
                         f"{allowed / total:.4f} is reachable; lower --sparsity or change --exclude")
    return target


def find_early_bird(opts: EarlyBirdOptions, cfg: TrainConfig, bundle: data.DataBundle, run: RunOptions | None = None,
                    **options: Any) -> Ticket:
    """Train until the mask converges, then prune once; return the (untrained) ticket, unsaved.

    ``run`` (or ``options``, its fields by name) says how the training runs (checkpoint, resume, log,
    ...): a stopped search resumes and detects at the same epoch as an uninterrupted one.
    """
    check_sparsity(opts.sparsity)
    check_detection(opts.window, opts.epsilon)
    run = run_options(run, **options)
    spec, info = archs.resolve_arch(opts.arch), bundle.info
    exclude = default_exclude(spec) if opts.exclude is None else tuple(opts.exclude)
    spe = bundle.steps_per_epoch(cfg.batch_size, distributed.ranks()[1])
    rewind_step = parse_steps(opts.rewind, spe)
    if rewind_step >= cfg.total_steps(spe):
        raise UsageError(f"--rewind {opts.rewind} ({rewind_step} steps) is not before the end of training")
    problem = never_settles(cfg.epochs, opts.window, f"the early-bird search of {spec.name}")
    if problem and distributed.ranks()[0] == 0:  # said before the training, not found at its end
        print(f"warning: {problem}", file=sys.stderr)
    dense = fresh_ticket(spec.name, info.input_shape, info.num_classes, seed=cfg.seed, dataset=info.name,
                         pretrained=opts.pretrained)
    keys = [k for k in dense.masks if k not in exclude]
    detector = MaskConvergence(keys, pruned_count(dense.masks, opts.sparsity, exclude), opts.window, opts.epsilon,
                               stop=True, not_before=rewind_step)
    title = f"early-bird {spec.name} on {info.name}" if run.title == RunOptions.title else run.title
    result = train_state(dense.build_model("init"), dense.masks, bundle, cfg, 0,
                         run=run.replace(hooks=(detector, *run.hooks), title=title),
                         snapshot_steps={rewind_step} if rewind_step else (),
                         search={"method": "early-bird", **opts.as_dict()})
    masks = prune_to_sparsity(magnitude_scores(result.state, keys), dense.masks, opts.sparsity, exclude)
    refuse_empty_layers(masks, f"sparsity {opts.sparsity:g}", "lower --sparsity", allow=run.allow_empty_layers)
    rewind = result.snapshots[rewind_step] if rewind_step else dense.init
    search = _search_record(result.extra.get(STATE_KEY, {}), result.metrics)
    hparams = {"early_bird": opts.as_dict() | {"exclude": list(exclude)}, **cfg.resolved(spe, 0)}
    m = result.metrics
    return Ticket(
        arch=spec.name, input_shape=info.input_shape, num_classes=info.num_classes, masks=masks,
        init=apply_masks(rewind, masks), method="early-bird", rewind_step=rewind_step, dataset=info.name,
        hparams=hparams, metrics={"early_bird": search},
        cost={"trainings": 1, "train_steps": int(m["steps"]), "train_seconds": float(m["wall_time_s"]),
              "train_flops": float(m["train_flops"]), "dense_train_flops": float(m["dense_train_flops"])},
        config=run_config("find", hparams, bundle.device, result.setup),
    )


def _search_record(state: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """What the ticket records of its search: detection, distances, and the dense network's accuracy then."""
    return {
        "detected_epoch": state.get("detected_epoch"),
        "detected_step": state.get("detected_step"),
        "converged": state.get("detected_epoch") is not None,
        "distances": state.get("distances", []),
        "steps": metrics["steps"], "total_steps": metrics["total_steps"],
        "dense_test_acc": metrics.get("test_acc"),  # of the network it was drawn from, when it stopped
        "train_flops": metrics["train_flops"], "dense_run_flops": metrics["dense_run_flops"],
    }


# The registry's interface (elth_cli.find.methods): a search method's ``search``.
search = find_early_bird
