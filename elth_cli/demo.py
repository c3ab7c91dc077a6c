"""The E-LTH experiment in miniature on the embedded digits set (the README's demo).

IMP on resnet20 and resnet32 at width 4 (at the default width every method saturates on digits:
see docs/demo.md), then, at the levels where the methods separate, the elastic transformations
(resnet20 -> resnet32 by append and interpolate; resnet32 -> resnet20 by keep-first and spaced),
the target's ticket from early-bird IMP (each round stopped once its next mask settled) trained in
full, RigL from scratch at the same sparsity (dynamic sparse training), and the random and magnitude
baselines from each target's rewind weights, each trained with the same recipe. The table compares
them per target and level with the compute spent to obtain each ticket, and the FLOPs to obtain
and train it. Re-running resumes: finished IMP rounds and trained tickets are reused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from elth_cli import archs, data, elastic
from elth_cli.compare import flops_summary
from elth_cli.dst import DstOptions, find_dst
from elth_cli.fileio import WriterLock
from elth_cli.find import BaselineOptions, ImpOptions, RoundRecord, find_imp, imp_sparsities, prune_baseline, round_path
from elth_cli.report import Log, fmt_flops, fmt_pct, make_table, stdout_console
from elth_cli.ticket import Ticket
from elth_cli.train.checkpoint import checkpoint_path_for
from elth_cli.train.config import TrainConfig
from elth_cli.train.session import Session, save_result, training_session


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults are the ones docs/demo.md explains."""

    small: str = "resnet20-w4"
    large: str = "resnet32-w4"
    rounds: int = 13
    levels: tuple[int, ...] = (10, 13)  # IMP rounds: 89.26 % and 94.50 % sparsity
    rewind: str = "1ep"
    epochs: int | None = None  # None: the digits recipe (30 epochs)
    seed: int = 0
    device: str = "cpu"  # the documented figures are the CPU's


@dataclass
class Row:
    target: str
    level: int
    kind: str  # "IMP (own)", "stretch append", ..., "random", "magnitude"
    source: str
    sparsity: float
    test_acc: float
    cost_steps: int
    cost_seconds: float
    path: str
    extra: dict[str, Any] = field(default_factory=dict)
    flops: float | None = None  # to obtain and train the ticket (compare.flops_summary)
    flops_vs_dense: float | None = None  # over one dense training of the target


def _train_cached(session: Session, ticket: Ticket, path: Path, bundle: data.DataBundle, cfg: TrainConfig) -> Ticket:
    """Train ``ticket`` into ``path`` unless a trained ticket is already there (resume)."""
    if path.exists():
        return Ticket.load(path)
    ckpt = checkpoint_path_for(path)
    trained = session.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt)
    save_result(trained, path, ckpt, force=True)
    return trained


@dataclass
class _Demo:
    """One demo run: where it writes, its session, data and each network's recipe."""

    config: DemoConfig
    out: Path
    log: Log
    session: Session
    bundle: data.DataBundle
    cfgs: dict[str, TrainConfig]

    def imp_dir(self, arch: str, early_bird: bool = False) -> Path:
        return self.out / (f"imp-eb-{arch}" if early_bird else f"imp-{arch}")


def run_demo(out_dir: str | Path, config: DemoConfig = DemoConfig(), log: Log | None = None) -> list[Row]:
    """Run the whole experiment into ``out_dir``; return the table rows (also written as table.json)."""
    log = log or Log()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with training_session(config.device) as session, WriterLock(out / "demo.lock", f"the demo in {out}"):
        cfgs, bundle = {}, None
        for arch in (config.small, config.large):
            cfgs[arch], bundle = session.prepare(archs.resolve_arch(arch), "digits", seed=config.seed,
                                                 epochs=config.epochs)
        demo = _Demo(config, out, log, session, bundle, cfgs)
        _announce(demo)
        for arch in (config.small, config.large):
            for early in (False, True):
                log.info(f"{'early-bird ' if early else ''}IMP on {arch} -> {demo.imp_dir(arch, early)}")
                find_imp(ImpOptions(arch, "digits", rounds=config.rounds, rewind=config.rewind, early_bird=early),
                         cfgs[arch], bundle, demo.imp_dir(arch, early), on_round=_progress(log, arch))
        rows = [row for level in config.levels for target in (config.small, config.large)
                for row in _level_rows(demo, target, level)]
    doc = {
        "config": asdict(config),
        "recipe": {a: c.as_dict() for a, c in cfgs.items()},
        "nominal_sparsity": {str(lv): imp_sparsities(config.rounds, 0.2)[lv] for lv in config.levels},
        "rows": [asdict(r) for r in rows],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "table.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (out / "table.txt").write_text(render_table(rows))
    return rows


def _announce(demo: _Demo) -> None:
    config, bundle, cfg = demo.config, demo.bundle, demo.cfgs[demo.config.small]
    spe = bundle.steps_per_epoch(cfg.batch_size)
    demo.log.info(f"elth demo: digits ({bundle.num_examples('train')} train / {bundle.num_examples('test')} test "
                  f"images), {config.small} and {config.large} (width 4), IMP {config.rounds} rounds at 20 %, rewind "
                  f"{config.rewind}, {cfg.epochs} epochs per training (lr {cfg.lr}, warm-up {cfg.warmup}, "
                  f"{cfg.schedule}), {spe} steps/epoch")


def _progress(log: Log, arch: str) -> Callable[[RoundRecord], None]:
    def show(rec: RoundRecord) -> None:
        log.info(f"  IMP {arch} round {rec.round:2d}: sparsity {fmt_pct(rec.sparsity)}, "
                 f"test acc {fmt_pct(rec.test_acc)}, {rec.seconds:.1f} s")
    return show


def _level_rows(demo: _Demo, target: str, level: int) -> list[Row]:
    """The rows of one target at one IMP level: its own ticket, the transformed ones, the baselines."""
    config, log = demo.config, demo.log
    transforms = {
        config.large: [("stretch append", config.small, "stretch", "append"),
                       ("stretch interpolate", config.small, "stretch", "interpolate")],
        config.small: [("squeeze keep-first", config.large, "squeeze", "keep-first"),
                       ("squeeze spaced", config.large, "squeeze", "spaced")],
    }
    own = Ticket.load(round_path(demo.imp_dir(target), level))
    rows = [_row(target, level, "IMP (own)", target, own, own)]
    for kind, source_arch, op, strategy in transforms[target]:
        src = Ticket.load(round_path(demo.imp_dir(source_arch), level))
        fn = elastic.stretch if op == "stretch" else elastic.squeeze
        moved = fn(src, archs.resolve_target(src.spec, target), strategy=strategy)
        name = f"{target}-l{level:02d}-{op}-{strategy}.safetensors"
        trained = _train_cached(demo.session, moved, demo.out / name, demo.bundle, demo.cfgs[target])
        rows.append(_row(target, level, kind, source_arch, trained, trained))
        log.info(f"  {kind} {source_arch} -> {target} at round {level}: test acc "
                 f"{fmt_pct(trained.metrics['test_acc'])}")
    rows.append(_early_bird_row(demo, target, level))
    rows.append(_rigl_row(demo, target, level, own))
    dense = Ticket.load(round_path(demo.imp_dir(target), 0))
    for method in ("random", "magnitude"):
        ticket = prune_baseline(dense, BaselineOptions(method=method, like=own, seed=config.seed))
        name = f"{target}-l{level:02d}-{method}.safetensors"
        trained = _train_cached(demo.session, ticket, demo.out / name, demo.bundle, demo.cfgs[target])
        rows.append(_row(target, level, method, target, trained, trained))
        log.info(f"  {method} baseline {target} at {fmt_pct(trained.sparsity)}: test acc "
                 f"{fmt_pct(trained.metrics['test_acc'])}")
    return rows


def _early_bird_row(demo: _Demo, target: str, level: int) -> Row:
    """The target's early-bird IMP ticket at ``level`` (rounds stopped when their next mask settled), trained
    in full from its rewind point with the recipe: what early-bird rounds give for their lower cost."""
    found = Ticket.load(round_path(demo.imp_dir(target, early_bird=True), level))
    ticket = dataclasses.replace(found, trained=None, metrics=None, config=None,
                                 parents=[found.parent_record()])  # its partial training dropped: trained anew
    path = demo.out / f"{target}-l{level:02d}-imp-early-bird.safetensors"
    trained = _train_cached(demo.session, ticket, path, demo.bundle, demo.cfgs[target])
    demo.log.info(f"  early-bird IMP {target} at round {level}: test acc {fmt_pct(trained.metrics['test_acc'])}")
    return _row(target, level, "IMP early-bird", target, found, trained)


def _rigl_row(demo: _Demo, target: str, level: int, own: Ticket) -> Row:
    """RigL (ERK, its defaults) from scratch at the level's exact sparsity: dynamic sparse training's row."""
    path = demo.out / f"{target}-l{level:02d}-rigl.safetensors"
    if path.exists():
        ticket = Ticket.load(path)
    else:
        ckpt = checkpoint_path_for(path)
        cfg = demo.cfgs[target]
        # RigL's default (every 100 steps) on the full recipe (690 steps: 5 updates); shorter runs
        # (--quick, tests) update more often so they still make 5.
        until = round(0.75 * cfg.total_steps(demo.bundle.steps_per_epoch(cfg.batch_size)))
        every = min(100, max(1, until // 5))
        ticket = find_dst(DstOptions("rigl", target, "digits", own.sparsity, update_every=every), cfg, demo.bundle,
                          checkpoint_path=ckpt, title=f"rigl {target} at round {level}'s sparsity")
        ticket.sha256 = save_result(ticket, path, ckpt, force=True)
    demo.log.info(f"  rigl {target} at {fmt_pct(ticket.sparsity)}: test acc {fmt_pct(ticket.metrics['test_acc'])}")
    return _row(target, level, "rigl", target, ticket, ticket)


def _row(target: str, level: int, kind: str, source: str, ticket: Ticket, trained: Ticket) -> Row:
    metrics = trained.metrics or {}
    cost = ticket.cost or {}
    flops = flops_summary(trained)
    return Row(target, level, kind, source, ticket.sparsity, float(metrics.get("test_acc", float("nan"))),
               int(cost.get("train_steps", 0)), float(cost.get("train_seconds", 0.0)), ticket.sha256 or "",
               {"trainings": cost.get("trainings", 0)}, flops["total"], flops["relative"])


def render_table(rows: list[Row]) -> str:
    """The comparison as text: per target and level, each ticket's sparsity, accuracy and cost."""
    lines = []
    header = f"{'target':<14} {'level':>5} {'ticket':<22} {'from':<14} {'sparsity':>9} {'test acc':>9} " \
             f"{'cost: trainings':>15} {'steps':>7} {'seconds':>8} {'FLOPs':>7} {'x dense':>7}"
    lines.append(header)
    lines.append("-" * len(header))
    last = None
    for r in rows:
        if last is not None and (r.target, r.level) != last:
            lines.append("")
        last = (r.target, r.level)
        lines.append(f"{r.target:<14} {r.level:>5} {r.kind:<22} {r.source:<14} {fmt_pct(r.sparsity):>9} "
                     f"{fmt_pct(r.test_acc):>9} {r.extra.get('trainings', 0):>15} {r.cost_steps:>7} {r.cost_seconds:>8.1f} "
                     f"{fmt_flops(r.flops):>7} {_times(r.flops_vs_dense):>7}")
    return "\n".join(lines) + "\n"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(rows: list[Row]) -> None:
    table = make_table(
        ["target", "level", "ticket", "from", "sparsity", "test acc", "trainings to obtain", "steps", "seconds",
         "FLOPs", "x dense"],
        [(r.target, r.level, r.kind, r.source, fmt_pct(r.sparsity), fmt_pct(r.test_acc), r.extra.get("trainings", 0),
          r.cost_steps, f"{r.cost_seconds:.1f}", fmt_flops(r.flops), _times(r.flops_vs_dense)) for r in rows],
        title="E-LTH on digits: each target's own IMP ticket vs transformed tickets vs RigL vs baselines (FLOPs: to "
              "obtain and train; x dense: over one dense training of the target)",
        right=["level", "sparsity", "test acc", "trainings to obtain", "steps", "seconds", "FLOPs", "x dense"],
    )
    stdout_console().print(table)
