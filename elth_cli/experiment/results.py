"""An experiment's results: one row per trained ticket (target, level, kind, seed), the table over seeds
(mean +- std, n), ``table.json``, ``table.txt`` and the figures, from whatever jobs have finished; the
jobs that have not are listed, not dropped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from elth_cli.experiment.graph import IMP, Node, round_file
from elth_cli.experiment.jobstate import DONE, read_record
from elth_cli.experiment.spec import Experiment
from elth_cli.fileio import write_bytes_atomic
from elth_cli.report import fmt_flops, fmt_pct, make_table, stdout_console


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


@dataclass
class Results:
    """The rows of the finished jobs, and the jobs whose rows are missing (name, state)."""

    rows: list[Row]
    missing: list[tuple[str, str]]


def collect(exp: Experiment, nodes: Sequence[Node], out: Path) -> Results:
    """The rows of every finished job in the table's order (per seed, level and target: its own IMP ticket,
    then the others in the graph's order), and the unfinished ones."""
    done = {n.name for n in nodes if _done(out, n)}
    chains = {(n.seed, n.params["arch"]): n.name for n in nodes if n.kind == IMP and not n.params["early_bird"]}
    by_cell: dict[tuple[int, str, int], list[Node]] = {}
    for n in nodes:
        if n.row is not None and n.name in done:
            by_cell.setdefault((n.seed, n.row[0], n.row[1]), []).append(n)
    rows = []
    for seed in exp.seeds:
        for level in exp.levels:
            for target in exp.networks:
                if chains[(seed, target)] in done:
                    rows.append(_own_row(out, seed, target, level))
                rows.extend(_node_row(out, n) for n in by_cell.get((seed, target, level), []))
    missing = [(n.name, (read_record(out, n) or {}).get("state", "not run")) for n in nodes if n.name not in done]
    return Results(rows, missing)


def _done(out: Path, node: Node) -> bool:
    rec = read_record(out, node)
    return rec is not None and rec.get("state") == DONE and rec.get("digest") == node.digest and \
        all((out / o).exists() for o in node.outputs)


def _own_row(out: Path, seed: int, target: str, level: int) -> Row:
    from elth_cli.ticket import Ticket

    own = Ticket.load(out / round_file(seed, target, level))
    return _row(target, level, "IMP (own)", target, own, own, seed)


def _node_row(out: Path, node: Node) -> Row:
    from elth_cli.ticket import Ticket

    target, level, kind, source = node.row
    trained = Ticket.load(out / node.outputs[0])
    found = Ticket.load(out / round_file(node.seed, target, level, True)) if kind == "IMP early-bird" else trained
    return _row(target, level, kind, source, found, trained, node.seed)


def _row(target: str, level: int, kind: str, source: str, ticket: Any, trained: Any, seed: int) -> Row:
    from elth_cli.compare import flops_summary

    metrics = trained.metrics or {}
    cost = ticket.cost or {}
    flops = flops_summary(trained)
    return Row(target, level, kind, source, ticket.sparsity, float(metrics.get("test_acc", float("nan"))),
               int(cost.get("train_steps", 0)), float(cost.get("train_seconds", 0.0)), ticket.sha256 or "",
               {"trainings": cost.get("trainings", 0)}, flops["total"], flops["relative"], seed)


def summarize(rows: list[Row]) -> list[SeedSummary]:
    """The rows over seeds: per target, level and kind, the mean and standard deviation of the seeds'
    (:func:`elth_cli.compare.spread`, as ``compare`` reports replicates)."""
    from elth_cli.compare import spread

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


def write_results(exp: Experiment, nodes: Sequence[Node], out: Path, figures: bool = True,
                  extra: dict[str, Any] | None = None) -> tuple[Results, dict[str, Any]]:
    """table.json, table.txt and (where matplotlib is installed) figures/ from the finished jobs."""
    from elth_cli.experiment.spec import dump_experiment
    from elth_cli.find.imp import imp_sparsities

    res = collect(exp, nodes, out)
    summary = summarize(res.rows)
    doc = {"experiment": exp.name, "dataset": exp.dataset, "file": dump_experiment(exp),
           "nominal_sparsity": {str(lv): imp_sparsities(exp.rounds, exp.prune_rate)[lv] for lv in exp.levels},
           "rows": [asdict(r) for r in res.rows], "summary": [asdict(s) for s in summary],
           "missing": [{"job": name, "state": state} for name, state in res.missing], **(extra or {})}
    if figures:
        doc["figures"] = _figures(summary, out)
    write_bytes_atomic(out / "table.json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    text = render_summary(summary) if len(exp.seeds) > 1 else render_table(res.rows)
    write_bytes_atomic(out / "table.txt", text.encode())
    return res, doc


def _figures(summary: list[SeedSummary], out: Path) -> list[str] | str:
    """The figures' paths, or why there are none."""
    from elth_cli.errors import UsageError

    if not summary:
        return "no finished rows yet"
    try:
        from elth_cli.experiment.figures import plot_experiment

        return [str(p.relative_to(out)) for p in plot_experiment([asdict(s) for s in summary], out / "figures")]
    except UsageError as e:  # matplotlib missing: the table is written all the same
        return str(e)


# ----- the table as text ----------------------------------------------------------------------------
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


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_results(exp: Experiment, rows: list[Row]) -> None:
    """The table on stdout: every row with one seed, mean +- std over seeds with several."""
    what = f"{exp.name} on {exp.dataset}"
    if len(exp.seeds) > 1:
        summary = summarize(rows)
        table = make_table(SUMMARY_COLUMNS, [_summary_cells(r) for r in summary], right=list(SUMMARY_COLUMNS[4:]),
                           title=f"{what} over {len(exp.seeds)} seeds: mean +- standard deviation (n - 1 in the "
                                 "denominator) of each ticket's test accuracy; FLOPs: to obtain and train, the seeds' mean")
    else:
        table = make_table(ROW_COLUMNS, [_row_cells(r) for r in rows], right=["level", *ROW_COLUMNS[4:]],
                           title=f"{what}: each target's own IMP ticket vs transformed tickets vs baselines (FLOPs: "
                                 "to obtain and train; x dense: over one dense training of the target)")
    stdout_console().print(table)
