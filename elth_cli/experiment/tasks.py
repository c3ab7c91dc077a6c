"""What each job of an experiment does, on a pool worker or as one SLURM job: an IMP chain into its
run folder, or a ticket made from a chain's round (stretched or squeezed, a baseline or control, the
early-bird round, dynamic sparse training at its sparsity) and trained into its file.

Every training goes through :func:`elth_cli.train.job.train_file` (the one path of ``elth train``): a
finished output of the same training is kept, a stopped one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from elth_cli.experiment.graph import (BASELINE, DST, EARLY_BIRD, IMP, REINIT_SEED_OFFSET, TRANSFORM, Node,
                                       chain_folder, round_file)
from elth_cli.experiment.spec import Experiment
from elth_cli.report import fmt_pct
from elth_cli.runtime.workers import Worker


def run_node(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """Run one job of the graph in ``out`` (its inputs are done); what it made, in a few words."""
    runner = {IMP: _imp, TRANSFORM: _transform, BASELINE: _baseline, EARLY_BIRD: _early_bird, DST: _dst}[node.kind]
    return runner(worker, node, exp, out)


def _setup(worker: Worker, node: Node, exp: Experiment) -> Any:
    from elth_cli.train.job import DataOptions, Setup

    return Setup(DataOptions(exp.dataset), {"seed": node.seed, **exp.recipe}, device=worker.device)


def _run_options(worker: Worker, node: Node, exp: Experiment, out: Path, title: str | None = None) -> Any:
    from elth_cli.train.options import RunOptions

    extra: dict[str, Any] = {"title": title} if title else {}
    if exp.tensorboard:
        extra["log_dir"] = out / "tensorboard" / node.slug
    return RunOptions(stop=worker.stop, handle_signals=False, **extra)


def _imp(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    from elth_cli.find.imp import ImpOptions, imp_job
    from elth_cli.find.runfolder import RoundRecord

    p = node.params

    def show(rec: RoundRecord) -> None:
        worker.note(f"round {rec.round:2d}: sparsity {fmt_pct(rec.sparsity)}, test acc {fmt_pct(rec.test_acc)}, "
                    f"{rec.seconds:.1f} s", (rec.round + 1) / (p["rounds"] + 1))

    opts = ImpOptions(p["arch"], exp.dataset, rounds=p["rounds"], prune_rate=p["prune_rate"], rewind=p["rewind"],
                      early_bird=p["early_bird"])
    result = imp_job(opts, out / chain_folder(node.seed, p["arch"], p["early_bird"]), _setup(worker, node, exp),
                     _run_options(worker, node, exp, out), on_round=show)
    last = result.records[-1]
    return f"{len(result.records) - 1} rounds, round {last.round} at test acc {fmt_pct(last.test_acc)}"


def _train(worker: Worker, node: Node, exp: Experiment, out: Path, ticket: Any, title: str | None = None) -> str:
    """Train ``ticket`` into the node's file (a finished one is kept, a stopped one resumes)."""
    from elth_cli.train.checkpoint import checkpoint_path_for
    from elth_cli.train.job import TrainJob, train_file

    path = out / node.outputs[0]
    result = train_file(TrainJob(ticket, str(path), checkpoint_path_for(path), setup=_setup(worker, node, exp),
                                 run=_run_options(worker, node, exp, out, title)))
    return f"test acc {fmt_pct(result.ticket.metrics['test_acc'])}"


def _own_round(node: Node, out: Path, arch: str | None = None, level: int | None = None, early: bool = False) -> Any:
    from elth_cli.ticket import Ticket

    p = node.params
    return Ticket.load(out / round_file(node.seed, arch or p["target"], p["level"] if level is None else level, early))


def _transform(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """The source's IMP ticket of the level stretched or squeezed to the target, then trained."""
    from elth_cli import archs, elastic

    p = node.params
    src = _own_round(node, out, arch=p["source"])
    fn = elastic.stretch if p["op"] == "stretch" else elastic.squeeze
    moved = fn(src, archs.resolve_target(src.spec, p["target"]), strategy=p["strategy"])
    return _train(worker, node, exp, out, moved)


def _baseline(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """A one-shot baseline at the target's dense rewind weights, at its IMP ticket's sparsity (overall or
    layer by layer), or the IMP ticket's mask with new init weights (reinit), trained."""
    from elth_cli.find.baselines import BaselineOptions, prune_baseline, reinit_ticket

    p = node.params
    own = _own_round(node, out)
    if p["method"] == "reinit":
        ticket = reinit_ticket(own, node.seed + REINIT_SEED_OFFSET)
    else:
        dense = _own_round(node, out, level=0)
        ticket = prune_baseline(dense, BaselineOptions(method=p["method"], like=own, match=p["match"], seed=node.seed))
    return _train(worker, node, exp, out, ticket)


def _early_bird(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """The early-bird chain's round ticket, trained in full from its rewind point with the recipe: what
    early-bird rounds give for their lower cost."""
    found = _own_round(node, out, early=True)
    ticket = dataclasses.replace(found, trained=None, metrics=None, config=None,
                                 parents=[found.parent_record()])  # its partial training dropped: trained anew
    return _train(worker, node, exp, out, ticket)


def _dst(worker: Worker, node: Node, exp: Experiment, out: Path) -> str:
    """Dynamic sparse training (RigL, SET, DPF: their defaults) from scratch at the level's exact sparsity."""
    from elth_cli import archs, data
    from elth_cli.find.methods import FindRequest
    from elth_cli.find.search import SearchJob, search_job
    from elth_cli.train.config import config_from_options

    p = node.params
    own = _own_round(node, out)
    setup = _setup(worker, node, exp)
    # The default update interval (every 100 steps) on a short run makes few updates: runs of under 500
    # steps update more often, so that there are 5 before updates stop (at 75 % of the steps).
    cfg = config_from_options(archs.resolve_arch(p["target"]), data.get_dataset_info(exp.dataset), **setup.overrides)
    bundle_steps = data.load_dataset(exp.dataset).steps_per_epoch(cfg.batch_size)
    until = round(0.75 * cfg.total_steps(bundle_steps))
    request = FindRequest(p["method"], arch=p["target"], dataset=exp.dataset, sparsity=own.sparsity,
                          update_every=min(100, max(1, until // 5)))
    title = f"{p['method']} {p['target']} at round {p['level']}'s sparsity"
    result = search_job(SearchJob(request, str(out / node.outputs[0]), setup,
                                  _run_options(worker, node, exp, out, title)))
    return f"test acc {fmt_pct(result.ticket.metrics['test_acc'])}"
