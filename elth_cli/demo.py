"""The E-LTH experiment in miniature on the embedded digits set (the README's demo): the shipped experiment
file ``demo.toml`` (``elth run --show demo``), changed by ``elth demo``'s options and run on this machine's
worker pool (:mod:`elth_cli.experiment`).

IMP on resnet20 and resnet32 at width 4 (at the default width every method saturates on digits: see
docs/demo.md), on the paper's MLP-2 and MLP-4 and on a 4- and an 8-block ViT, then, at the levels where
the methods separate, the elastic transformations within each pair, the baselines from each target's rewind
weights and the reinit control, each trained with the same recipe. With ``full``, also each target's
early-bird IMP ticket trained in full, and RigL from scratch at the same sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elth_cli.errors import UsageError
from elth_cli.experiment.spec import Experiment, load_experiment

VIT_PAIR = ("vit-d4-w32-h2-p2", "vit-d8-w32-h2-p2")


@dataclass(frozen=True)
class DemoOptions:
    """``elth demo``'s options; the defaults run demo.toml as it is."""

    quick: bool = False  # 4 rounds, levels 3 and 4, 8 epochs: checks an installation
    full: bool = False  # also early-bird IMP and RigL rows
    seeds: int = 1  # replicates: seeds seed, seed + 1, ...
    seed: int = 0
    epochs: int | None = None  # None: the file's 15 (8 with quick)
    vit: bool = True


def demo_experiment(options: DemoOptions = DemoOptions()) -> Experiment:
    """The shipped demo.toml with ``options`` applied."""
    from elth_cli.train.config import check_seed

    if options.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {options.seeds}")
    check_seed(options.seed)
    exp = load_experiment("demo")
    recipe = dict(exp.recipe)
    changes: dict = {"seeds": tuple(range(options.seed, options.seed + options.seeds))}
    if options.quick:
        changes.update(rounds=4, levels=(3, 4))
        recipe["epochs"] = 8
    if options.epochs is not None:
        recipe["epochs"] = options.epochs
    if options.full:
        changes.update(early_bird=True, dst=("rigl",), dst_networks=exp.networks)
    if not options.vit:
        networks = tuple(n for n in exp.networks if n not in VIT_PAIR)
        changes.update(networks=networks, baseline_networks=tuple(n for n in exp.baseline_networks if n in networks),
                       dst_networks=tuple(n for n in changes.get("dst_networks", exp.dst_networks) if n in networks),
                       transforms=tuple(t for t in exp.transforms if t.source in networks))
    return exp.replace(recipe=recipe, **changes)


def run_demo(out_dir: str | Path, options: DemoOptions = DemoOptions(), log: object = None,
             jobs: int | None = None) -> object:
    """Run the demo into ``out_dir`` with ``jobs`` workers; its results (rows and missing jobs)."""
    from elth_cli.experiment import engine

    return engine.run_local(engine.open_experiment(demo_experiment(options), out_dir), jobs, log)
