"""The E-LTH experiment in miniature on the embedded digits set (the README's demo).

IMP on resnet20 and resnet32 at width 4 (at the default width every method saturates on digits:
see docs/demo.md) and on the paper's MLP-2 and MLP-4, then, at the levels where the methods
separate, the elastic transformations within each pair (shallow -> deep by append and interpolate;
deep -> shallow by keep-first and spaced), the baselines from each target's rewind weights
(uniform random, random with the IMP ticket's per-layer sparsities, one-shot magnitude) and the IMP
ticket's mask with new init weights (the random reinitialisation control), each trained with the
same recipe. With ``full``, also the target's ticket from early-bird IMP (each round stopped once
its next mask settled) trained in full, and RigL from scratch at the same sparsity (dynamic sparse
training). The table compares them per target and level with the compute spent to obtain each
ticket, and the FLOPs to obtain and train it.

Every IMP chain and every training is a job on the worker pool (:mod:`elth_cli.runtime.pool`): the chains
run side by side, and each training starts as soon as the chain it reads is done. Re-running
resumes: finished IMP rounds and trained tickets are reused, an interrupted training continues
from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from elth_cli import archs, data, elastic
from elth_cli.compare import flops_summary, spread
from elth_cli.errors import UsageError
from elth_cli.fileio import WriterLock
from elth_cli.find.baselines import BaselineOptions, prune_baseline, reinit_ticket
from elth_cli.find.imp import ImpOptions, imp_sparsities
from elth_cli.find.imp import imp_job as imp_job_run
from elth_cli.find.methods import FindRequest
from elth_cli.find.runfolder import RoundRecord, round_path
from elth_cli.find.search import SearchJob, search_job
from elth_cli.runtime.pool import prepare_workers, run_jobs
from elth_cli.runtime.slots import Slot, available_cores, plan_slots
from elth_cli.runtime.workers import Job, Worker
from elth_cli.report import JobProgress, Log, fmt_flops, fmt_pct, make_table, stdout_console
from elth_cli.ticket import Ticket
from elth_cli.train.checkpoint import checkpoint_path_for
from elth_cli.train.config import TrainConfig, config_from_options
from elth_cli.train.job import DataOptions, Setup, TrainJob, train_file
from elth_cli.train.options import RunOptions

# More workers than this gain nothing: the demo has at most 6 chains, then 12-36 trainings, at once.
MAX_JOBS = 8


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults are the ones docs/demo.md explains."""

    small: str = "resnet20-w4"
    large: str = "resnet32-w4"
    # The paper's MLP-2 and MLP-4 (Table 5): a second pair, stretched and squeezed the same way. None: none.
    mlp: tuple[str, str] | None = ("mlp-300x2", "mlp-300x4")
    # A vision transformer pair (4 and 8 pre-norm blocks of width 32, 2 heads, 2x2 patches; docs/demo.md):
    # trained with the vit-digits recipe (AdamW), stretched and squeezed the same way. None: none.
    vit: tuple[str, str] | None = ("vit-d4-w32-h2-p2", "vit-d8-w32-h2-p2")
    rounds: int = 13
    levels: tuple[int, ...] = (10, 13)  # IMP rounds: 89.26 % and 94.50 % sparsity
    rewind: str = "1ep"
    # Half the digits recipe's 30 epochs: the methods separate as clearly (more, for the baselines; docs/demo.md)
    # at half the time. None: the recipe's own.
    epochs: int | None = 15
    seed: int = 0
    device: str = "cpu"  # the documented figures are the CPU's
    full: bool = False  # also early-bird IMP and RigL rows
    seeds: int = 1  # replicates: seeds seed, seed + 1, ...; each in its own folder seed-S/ when more than one
    # The table reads each training's final test accuracy only: no test pass after the other epochs.
    eval_every: int = 0


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
    seed: int = 0


@dataclass
class SeedSummary:
    """One row of the table over seeds: a target, level and ticket kind, its n replicates' mean and
    standard deviation (n - 1 in the denominator, as the paper's error bars)."""

    target: str
    level: int
    kind: str
    source: str
    n: int
    sparsity: float
    test_acc: float
    test_acc_std: float | None
    flops: float | None
    flops_vs_dense: float | None


# ----- where things are -------------------------------------------------------------------------
def imp_dir(out: Path, arch: str, early_bird: bool = False) -> Path:
    """An IMP chain's run folder in the demo's output."""
    return out / (f"imp-eb-{arch}" if early_bird else f"imp-{arch}")


def trained_path(out: Path, target: str, level: int, kind: str) -> Path:
    """A trained row ticket: ``resnet32-w4-l10-stretch-append.safetensors``, ``...-l13-random...``."""
    slug = {"IMP early-bird": "imp-early-bird"}.get(kind, kind.replace(" ", "-"))
    return out / f"{target}-l{level:02d}-{slug}.safetensors"


def pairs(config: DemoConfig) -> list[tuple[str, str]]:
    """The (shallower, deeper) pairs of architectures the demo transforms between."""
    return [(config.small, config.large)] + [tuple(p) for p in (config.mlp, config.vit) if p]


def targets(config: DemoConfig) -> list[str]:
    return [arch for pair in pairs(config) for arch in pair]


def _transforms(config: DemoConfig, target: str) -> list[tuple[str, str, str, str]]:
    """(row kind, source arch, stretch or squeeze, strategy) of a target's transformed tickets."""
    small, large = next(p for p in pairs(config) if target in p)
    if target == large:
        return [("stretch append", small, "stretch", "append"),
                ("stretch interpolate", small, "stretch", "interpolate")]
    return [("squeeze keep-first", large, "squeeze", "keep-first"),
            ("squeeze spaced", large, "squeeze", "spaced")]


# The baselines at each target's IMP sparsity: uniform random (every layer at one rate, the paper's
# baseline), random with the IMP ticket's own per-layer sparsities (the fairer control: is it the mask,
# or only its layer-wise density?), one-shot magnitude; and the IMP ticket's own mask with new init
# weights (the other control: is it the mask, or the mask with its init?).
BASELINES = (("random", "random", "overall"), ("random layer-wise", "random", "layerwise"),
             ("magnitude", "magnitude", "overall"), ("reinit", "reinit", None))
# The reinit row's weights: drawn from the demo's seed plus this, a seed no replicate's network is drawn from.
REINIT_SEED_OFFSET = 1_000_003


# ----- the jobs -----------------------------------------------------------------------------------
def _setup(worker: Worker, config: DemoConfig) -> Setup:
    """Every demo training's set-up: digits, the demo's seed, epochs and evaluation, the worker's device."""
    overrides = {k: v for k, v in (("seed", config.seed), ("epochs", config.epochs),
                                   ("eval_every", config.eval_every)) if v is not None}
    return Setup(DataOptions("digits"), overrides, device=worker.device)


def _train_cached(worker: Worker, config: DemoConfig, ticket: Ticket, path: Path, title: str | None = None) -> str:
    """Train ``ticket`` into ``path`` (the one path of ``elth train``: a finished one is kept, a stopped one
    resumes); its accuracy."""
    run = RunOptions(stop=worker.stop, handle_signals=False, **({"title": title} if title else {}))
    result = train_file(TrainJob(ticket, str(path), checkpoint_path_for(path), setup=_setup(worker, config), run=run))
    return f"test acc {fmt_pct(result.ticket.metrics['test_acc'])}"


def imp_job(worker: Worker, out: Path, config: DemoConfig, arch: str, early_bird: bool) -> str:
    """One IMP chain (``early_bird``: rounds stopped once their next mask settled) into its run folder."""
    def show(rec: RoundRecord) -> None:
        worker.note(f"round {rec.round:2d}: sparsity {fmt_pct(rec.sparsity)}, test acc {fmt_pct(rec.test_acc)}, "
                    f"{rec.seconds:.1f} s", (rec.round + 1) / (config.rounds + 1))

    opts = ImpOptions(arch, "digits", rounds=config.rounds, rewind=config.rewind, early_bird=early_bird)
    result = imp_job_run(opts, imp_dir(out, arch, early_bird), _setup(worker, config),
                         RunOptions(stop=worker.stop, handle_signals=False), on_round=show)
    records = result.records
    return f"{len(records) - 1} rounds, round {records[-1].round} at test acc {fmt_pct(records[-1].test_acc)}"


def transform_job(worker: Worker, out: Path, config: DemoConfig, target: str, level: int, kind: str) -> str:
    """The source's IMP ticket of ``level`` stretched or squeezed to ``target``, then trained."""
    _, source_arch, op, strategy = next(t for t in _transforms(config, target) if t[0] == kind)
    src = Ticket.load(round_path(imp_dir(out, source_arch), level))
    fn = elastic.stretch if op == "stretch" else elastic.squeeze
    moved = fn(src, archs.resolve_target(src.spec, target), strategy=strategy)
    return _train_cached(worker, config, moved, trained_path(out, target, level, kind))


def baseline_job(worker: Worker, out: Path, config: DemoConfig, target: str, level: int, kind: str) -> str:
    """A one-shot baseline (:data:`BASELINES`) at the target's dense rewind weights, at its IMP ticket's
    sparsity (overall, or layer by layer), or the IMP ticket's mask with new init weights, trained."""
    _, method, match = next(b for b in BASELINES if b[0] == kind)
    own = Ticket.load(round_path(imp_dir(out, target), level))
    if method == "reinit":
        ticket = reinit_ticket(own, config.seed + REINIT_SEED_OFFSET)
    else:
        dense = Ticket.load(round_path(imp_dir(out, target), 0))
        ticket = prune_baseline(dense, BaselineOptions(method=method, like=own, match=match, seed=config.seed))
    return _train_cached(worker, config, ticket, trained_path(out, target, level, kind))


def early_bird_job(worker: Worker, out: Path, config: DemoConfig, target: str, level: int) -> str:
    """The target's early-bird IMP ticket at ``level``, trained in full from its rewind point with the recipe:
    what early-bird rounds give for their lower cost."""
    found = Ticket.load(round_path(imp_dir(out, target, early_bird=True), level))
    ticket = dataclasses.replace(found, trained=None, metrics=None, config=None,
                                 parents=[found.parent_record()])  # its partial training dropped: trained anew
    return _train_cached(worker, config, ticket, trained_path(out, target, level, "IMP early-bird"))


def rigl_job(worker: Worker, out: Path, config: DemoConfig, target: str, level: int) -> str:
    """RigL (ERK, its defaults) from scratch at the level's exact sparsity: dynamic sparse training's row."""
    path = trained_path(out, target, level, "rigl")
    own = Ticket.load(round_path(imp_dir(out, target), level))
    setup = _setup(worker, config)
    # RigL's default (every 100 steps) on the full recipe (690 steps: 5 updates); shorter runs (--quick,
    # tests) update more often so they still make 5.
    cfg = config_from_options(archs.resolve_arch(target), data.get_dataset_info("digits"), **setup.overrides)
    until = round(0.75 * cfg.total_steps(data.load_dataset("digits").steps_per_epoch(cfg.batch_size)))
    request = FindRequest("rigl", arch=target, sparsity=own.sparsity, update_every=min(100, max(1, until // 5)))
    result = search_job(SearchJob(request, str(path), setup,
                                  RunOptions(stop=worker.stop, handle_signals=False,
                                             title=f"rigl {target} at round {level}'s sparsity")))
    return f"test acc {fmt_pct(result.ticket.metrics['test_acc'])}"


def demo_jobs(out: Path, config: DemoConfig, steps_per_training: int, prefix: str = "") -> list[Job]:
    """Every chain and training of the demo as a job, each after the chain it reads (names start with
    ``prefix``: one seed's jobs among several seeds').

    Costs (for the order and the time-left estimate) are steps x layers: these small trainings
    cost per step roughly in proportion to their depth, whatever their arithmetic."""
    def cost(arch: str, trainings: float = 1.0) -> float:
        return trainings * steps_per_training * sum(archs.resolve_arch(arch).depths)

    chains = [(arch, early) for arch in targets(config) for early in ((False, True) if config.full
                                                                                   else (False,))]
    jobs = [Job(prefix + _chain_name(arch, early), imp_job, {"out": out, "config": config, "arch": arch, "early_bird": early},
                cost=cost(arch, (config.rounds + 1) * (0.25 if early else 1.0))) for arch, early in chains]
    for level in config.levels:
        for target in targets(config):
            common = {"out": out, "config": config, "target": target, "level": level}
            for kind, source, _, _ in _transforms(config, target):
                jobs.append(Job(f"{prefix}{target} l{level} {kind}", transform_job, {**common, "kind": kind},
                                (prefix + _chain_name(source),), cost(target)))
            for kind, _, _ in BASELINES:
                jobs.append(Job(f"{prefix}{target} l{level} {kind}", baseline_job, {**common, "kind": kind},
                                (prefix + _chain_name(target),), cost(target)))
            if config.full:
                jobs.append(Job(f"{prefix}{target} l{level} IMP early-bird", early_bird_job, common,
                                (prefix + _chain_name(target, True),), cost(target)))
                jobs.append(Job(f"{prefix}{target} l{level} rigl", rigl_job, common, (prefix + _chain_name(target),),
                                cost(target)))
    return jobs


def _chain_name(arch: str, early_bird: bool = False) -> str:
    return f"{'early-bird IMP' if early_bird else 'IMP'} {arch}"


def default_jobs() -> int:
    """One worker per core (one thread each), at most :data:`MAX_JOBS`."""
    return min(available_cores(), MAX_JOBS)


# ----- the run ------------------------------------------------------------------------------------
def run_demo(out_dir: str | Path, config: DemoConfig = DemoConfig(), log: Log | None = None,
             jobs: int | None = None) -> list[Row]:
    """Run the whole experiment into ``out_dir`` with ``jobs`` workers (default :func:`default_jobs`);
    return the table rows (also written as table.json and table.txt)."""
    log = log or Log()
    out = Path(out_dir)
    started = time.perf_counter()
    slots = plan_slots(jobs or default_jobs(), config.device)
    if slots[0].threads is not None:
        prepare_workers(("elth_cli.demo",))  # the workers share one import of the demo's code
    info = data.get_dataset_info("digits")
    cfgs = {a: config_from_options(archs.resolve_arch(a), info, seed=config.seed, epochs=config.epochs,
                                   eval_every=config.eval_every, device=config.device)
            for a in targets(config)}  # a bad value is refused before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    with WriterLock(out / "demo.lock", f"the demo in {out}"):
        spe = data.load_dataset("digits").steps_per_epoch(cfgs[config.small].batch_size)
        _announce(log, config, cfgs[config.small], spe, slots)
        steps = cfgs[config.small].total_steps(spe)
        per_seed = [(seed_dir(out, config, s), dataclasses.replace(config, seed=s, seeds=1)) for s in seeds_of(config)]
        prefix = (lambda s: f"seed {s}: ") if config.seeds > 1 else (lambda s: "")
        jobs = [job for folder, c in per_seed for job in demo_jobs(folder, c, steps, prefix(c.seed))]
        result = run_jobs(jobs, slots, JobProgress(log, lambda outcome: outcome.value))
        result.check("demo jobs")
        rows = [dataclasses.replace(row, seed=c.seed) for folder, c in per_seed for level in config.levels
                for target in targets(config) for row in _level_rows(folder, c, target, level)]
    doc = {
        "config": asdict(config),
        "recipe": {a: c.as_dict() for a, c in cfgs.items()},
        "nominal_sparsity": {str(lv): imp_sparsities(config.rounds, 0.2)[lv] for lv in config.levels},
        "rows": [asdict(r) for r in rows],
        "summary": [asdict(r) for r in summarize(rows)] if config.seeds > 1 else None,
        "jobs": len(slots), "threads_per_job": slots[0].threads,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "table.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    text = render_summary(summarize(rows)) if config.seeds > 1 else render_table(rows)
    (out / "table.txt").write_text(text)
    return rows


def seeds_of(config: DemoConfig) -> list[int]:
    """The seeds a demo runs: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
    if config.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {config.seeds}")
    return list(range(config.seed, config.seed + config.seeds))


def seed_dir(out: Path, config: DemoConfig, seed: int) -> Path:
    """Where one seed's chains and tickets go: the demo's folder itself with one seed, else ``seed-S/``."""
    return out if config.seeds == 1 else out / f"seed-{seed}"


def summarize(rows: list[Row]) -> list[SeedSummary]:
    """The rows over seeds: per target, level and kind, the mean and standard deviation of the seeds'
    (:func:`elth_cli.compare.spread`, as ``compare`` reports replicates)."""
    groups: dict[tuple[str, int, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.target, r.level, r.kind, r.source), []).append(r)
    out = []
    for (target, level, kind, source), rs in groups.items():
        acc = spread([r.test_acc for r in rs])
        flops = spread([r.flops for r in rs if r.flops is not None])
        rel = spread([r.flops_vs_dense for r in rs if r.flops_vs_dense is not None])
        out.append(SeedSummary(target, level, kind, source, len(rs), spread([r.sparsity for r in rs])["mean"],
                               acc["mean"], acc["std"], flops["mean"], rel["mean"]))
    return out


def _announce(log: Log, config: DemoConfig, cfg: TrainConfig, spe: int, slots: Sequence[Slot]) -> None:
    threads = f", {slots[0].threads} thread{'s' if slots[0].threads != 1 else ''} each" if slots[0].threads else ""
    log.info(f"elth demo: digits, {' and '.join('/'.join(p) for p in pairs(config))}, IMP {config.rounds} rounds at 20 %, "
             f"rewind {config.rewind}, {cfg.epochs} epochs per training (lr {cfg.lr}, warm-up {cfg.warmup}, "
             f"{cfg.schedule}), {spe} steps/epoch; {len(slots)} worker{'s' if len(slots) != 1 else ''}{threads}"
             + ("" if config.full else "; --full adds early-bird IMP and RigL"))


def _level_rows(out: Path, config: DemoConfig, target: str, level: int) -> list[Row]:
    """The rows of one target at one IMP level, read from the files the jobs wrote."""
    own = Ticket.load(round_path(imp_dir(out, target), level))
    rows = [_row(target, level, "IMP (own)", target, own, own)]
    for kind, source, _, _ in _transforms(config, target):
        trained = Ticket.load(trained_path(out, target, level, kind))
        rows.append(_row(target, level, kind, source, trained, trained))
    if config.full:
        found = Ticket.load(round_path(imp_dir(out, target, early_bird=True), level))
        rows.append(_row(target, level, "IMP early-bird", target, found,
                         Ticket.load(trained_path(out, target, level, "IMP early-bird"))))
        rigl = Ticket.load(trained_path(out, target, level, "rigl"))
        rows.append(_row(target, level, "rigl", target, rigl, rigl))
    for kind, _, _ in BASELINES:
        trained = Ticket.load(trained_path(out, target, level, kind))
        rows.append(_row(target, level, kind, target, trained, trained))
    return rows


def _row(target: str, level: int, kind: str, source: str, ticket: Ticket, trained: Ticket) -> Row:
    metrics = trained.metrics or {}
    cost = ticket.cost or {}
    flops = flops_summary(trained)
    return Row(target, level, kind, source, ticket.sparsity, float(metrics.get("test_acc", float("nan"))),
               int(cost.get("train_steps", 0)), float(cost.get("train_seconds", 0.0)), ticket.sha256 or "",
               {"trainings": cost.get("trainings", 0)}, flops["total"], flops["relative"])


# The two tables, each one list of columns shown two ways: plain text (table.txt) and rich (stdout).
ROW_COLUMNS = ("target", "level", "ticket", "from", "sparsity", "test acc", "trainings to obtain", "steps",
               "seconds", "FLOPs", "x dense")
SUMMARY_COLUMNS = ("target", "level", "ticket", "from", "n", "sparsity", "test acc (mean +- std)", "FLOPs",
                   "x dense")


_NAME_COLUMNS = ("target", "ticket", "from")


def _row_cells(r: Row) -> tuple[Any, ...]:
    return (r.target, r.level, r.kind, r.source, fmt_pct(r.sparsity), fmt_pct(r.test_acc),
            r.extra.get("trainings", 0), r.cost_steps, f"{r.cost_seconds:.1f}", fmt_flops(r.flops),
            _times(r.flops_vs_dense))


def _summary_cells(r: SeedSummary) -> tuple[Any, ...]:
    return (r.target, r.level, r.kind, r.source, r.n, fmt_pct(r.sparsity), _acc_spread(r), fmt_flops(r.flops),
            _times(r.flops_vs_dense))


def _plain_table(columns: Sequence[str], cells: Sequence[tuple[Any, ...]]) -> str:
    """Fixed-width text, the names left-aligned and the figures right-aligned, a blank line between
    targets and levels (the first two columns)."""
    widths = [max([len(c)] + [len(str(row[i])) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[Any]) -> str:
        return " ".join(str(v).ljust(w) if c in _NAME_COLUMNS else str(v).rjust(w)
                        for v, w, c in zip(values, widths, columns)).rstrip()

    header = line(columns)
    lines = [header, "-" * len(header)]
    for i, row in enumerate(cells):
        if i and row[:2] != cells[i - 1][:2]:
            lines.append("")
        lines.append(line(row))
    return "\n".join(lines) + "\n"


def render_table(rows: list[Row]) -> str:
    """The comparison as text: per target and level, each ticket's sparsity, accuracy and cost."""
    return _plain_table(ROW_COLUMNS, [_row_cells(r) for r in rows])


def _acc_spread(r: SeedSummary) -> str:
    return fmt_pct(r.test_acc) + ("" if r.test_acc_std is None else f" +- {100 * r.test_acc_std:.2f}")


def render_summary(summary: list[SeedSummary]) -> str:
    """The table over seeds as text: per target, level and kind, mean +- standard deviation over n."""
    return _plain_table(SUMMARY_COLUMNS, [_summary_cells(r) for r in summary])


def print_summary(summary: list[SeedSummary]) -> None:
    """The table over seeds on stdout."""
    stdout_console().print(make_table(SUMMARY_COLUMNS, [_summary_cells(r) for r in summary],
                                      right=list(SUMMARY_COLUMNS[4:]), title=(
        f"E-LTH on digits over {summary[0].n if summary else 0} seeds: mean +- standard deviation (n - 1 in the "
        "denominator) of each ticket's test accuracy; FLOPs: to obtain and train, the seeds' mean")))


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(rows: list[Row]) -> None:
    """The comparison on stdout."""
    table = make_table(
        ROW_COLUMNS, [_row_cells(r) for r in rows],
        title="E-LTH on digits: each target's own IMP ticket vs transformed tickets vs baselines (FLOPs: to "
              "obtain and train; x dense: over one dense training of the target)",
        right=["level", *ROW_COLUMNS[4:]],
    )
    stdout_console().print(table)
