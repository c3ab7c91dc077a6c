"""An experiment as a graph of jobs: each IMP chain, and each ticket trained from a chain's round.

A :class:`Node` is one job: what it makes (a run folder or a trained ticket, under the seed's
folder ``seed-S/``), the jobs it reads (``after``), its relative cost, and its identity: the job's
own settings, the resolved training recipe (the fields a checkpoint's run identity holds, less the
device) and the identities of the jobs it reads. A job whose identity is what its record says it
ran is done; one whose identity changed runs again, and so do the jobs that read it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from elth_cli.experiment.spec import Experiment

IMP, TRANSFORM, BASELINE, EARLY_BIRD, DST = "imp", "transform", "baseline", "early-bird", "dst"
# The baselines: (row kind, find method, how its sparsity matches the IMP ticket's). The uniform random
# baseline is the paper's; the layer-wise one asks "is it the mask, or only its layer-wise density?";
# reinit keeps the IMP ticket's mask with new init weights ("is it the mask, or the mask with its init?").
BASELINES = {"random": ("random", "overall"), "random layer-wise": ("random", "layerwise"),
             "magnitude": ("magnitude", "overall"), "reinit": ("reinit", None)}
# The reinit row's weights are drawn from the seed plus this: a seed no replicate's network is drawn from.
REINIT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Node:
    """One job of the graph. ``params`` are its own settings (they enter its identity); ``outputs`` the files
    and folders it writes, relative to the experiment's folder; ``row`` what row of the table it gives
    (target, level, kind, source), None for a chain."""

    name: str
    slug: str
    kind: str
    seed: int
    params: Mapping[str, Any]
    after: tuple[str, ...] = ()
    cost: float = 1.0
    outputs: tuple[str, ...] = ()
    row: tuple[str, int, str, str] | None = None
    identity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The identity's sha256 (what a record compares)."""
        return identity_digest(self.identity)


def identity_digest(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def slugify(text: str) -> str:
    """A file-safe name: ``seed 1: resnet32-w4 l10 stretch append`` -> ``seed-1-resnet32-w4-l10-stretch-append``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


# ----- where things are (relative to the experiment's folder) ------------------------------------
def seed_folder(seed: int) -> str:
    return f"seed-{seed}"


def chain_folder(seed: int, arch: str, early_bird: bool = False) -> str:
    """An IMP chain's run folder."""
    return f"{seed_folder(seed)}/{'imp-eb' if early_bird else 'imp'}-{arch}"


def round_file(seed: int, arch: str, level: int, early_bird: bool = False) -> str:
    """The chain's ticket of round ``level`` (find/runfolder.round_path's name)."""
    return f"{chain_folder(seed, arch, early_bird)}/round-{level:02d}.safetensors"


def trained_file(seed: int, target: str, level: int, kind: str, source: str | None = None) -> str:
    """A trained row ticket: ``seed-0/resnet32-w4-l10-stretch-append-from-resnet20-w4.safetensors``."""
    tail = f"-from-{source}" if source and source != target else ""
    return f"{seed_folder(seed)}/{target}-l{level:02d}-{slugify(kind)}{tail}.safetensors"


def chain_name(arch: str, early_bird: bool = False) -> str:
    return f"{'early-bird IMP' if early_bird else 'IMP'} {arch}"


# ----- the graph ----------------------------------------------------------------------------------
def recipe_identity(exp: Experiment, arch: str, seed: int) -> dict[str, Any]:
    """The resolved recipe of ``arch``'s trainings (TrainConfig's fields, less the device: the same job on
    another machine is the same job)."""
    from elth_cli import archs
    from elth_cli.data.datasets import get_dataset_info
    from elth_cli.train.config import config_from_options

    cfg = config_from_options(archs.resolve_arch(arch), get_dataset_info(exp.dataset), seed=seed, **exp.recipe)
    d = cfg.as_dict()
    d.pop("device", None)
    return d


def build_graph(exp: Experiment) -> list[Node]:
    """Every job of ``exp``, each after the jobs it reads, in a stable order (chains first)."""
    nodes: list[Node] = []
    for seed in exp.seeds:
        nodes.extend(_seed_nodes(exp, seed))
    return nodes


class _Builder:
    """The nodes of one seed; identities are made as nodes are added (a node's inputs come first)."""

    def __init__(self, exp: Experiment, seed: int) -> None:
        self.exp, self.seed = exp, seed
        self.prefix = f"seed {seed}: " if len(exp.seeds) > 1 else ""
        self.recipes = {a: recipe_identity(exp, a, seed) for a in exp.networks}
        self.nodes: dict[str, Node] = {}

    def cost(self, arch: str, trainings: float = 1.0) -> float:
        from elth_cli import archs

        # Steps x layers: these trainings cost per step roughly in proportion to their depth.
        return trainings * self.recipes[arch]["epochs"] * sum(archs.resolve_arch(arch).depths)

    def add(self, name: str, kind: str, params: dict[str, Any], arch: str, after: tuple[str, ...],
            outputs: tuple[str, ...], row: tuple[str, int, str, str] | None, cost: float) -> None:
        full = self.prefix + name
        after_full = tuple(self.prefix + a for a in after)
        identity = {"job": kind, "seed": self.seed, "dataset": self.exp.dataset, **params,
                    "recipe": self.recipes[arch], "inputs": {self.nodes[a].slug: self.nodes[a].digest for a in after_full}}
        self.nodes[full] = Node(full, slugify(f"s{self.seed} {name}"), kind, self.seed, params, after_full, cost,
                                outputs, row, identity)


def _seed_nodes(exp: Experiment, seed: int) -> list[Node]:
    b = _Builder(exp, seed)
    for arch in exp.networks:
        for early in (False, True) if exp.early_bird else (False,):
            params = {"arch": arch, "rounds": exp.rounds, "rewind": exp.rewind, "prune_rate": exp.prune_rate,
                      "early_bird": early}
            b.add(chain_name(arch, early), IMP, params, arch, (), (chain_folder(seed, arch, early),), None,
                  b.cost(arch, (exp.rounds + 1) * (0.25 if early else 1.0)))
    for level in exp.levels:
        for target in exp.networks:
            _level_nodes(b, target, level)
    return list(b.nodes.values())


def _level_nodes(b: _Builder, target: str, level: int) -> None:
    """The trainings that give ``target``'s rows at ``level``: transforms into it, early-bird, dynamic sparse
    training, baselines (the table's order after the target's own IMP ticket)."""
    exp, seed = b.exp, b.seed

    def add(kind: str, row_kind: str, source: str, params: dict[str, Any], after: str, name: str) -> None:
        path = trained_file(seed, target, level, row_kind, source)
        b.add(name, kind, {"target": target, "level": level, "row": row_kind, **params}, target, (after,),
              (path,), (target, level, row_kind, source), b.cost(target))

    for t in (t for t in exp.transforms if t.target == target):
        for strategy in t.strategies:
            row = f"{t.op} {strategy}"
            add(TRANSFORM, row, t.source, {"source": t.source, "op": t.op, "strategy": strategy},
                chain_name(t.source), f"{target} l{level} {row} from {t.source}")
    if exp.early_bird:
        add(EARLY_BIRD, "IMP early-bird", target, {}, chain_name(target, True), f"{target} l{level} IMP early-bird")
    if target in exp.dst_networks:
        for method in exp.dst:
            add(DST, method, target, {"method": method}, chain_name(target), f"{target} l{level} {method}")
    if target in exp.baseline_networks:
        for kind in exp.baselines:
            method, match = BASELINES[kind]
            add(BASELINE, kind, target, {"method": method, "match": match}, chain_name(target),
                f"{target} l{level} {kind}")

