"""The paper's two figures of an experiment, drawn from its table over seeds (matplotlib, the optional
``plot`` extra).

* ``accuracy``: test accuracy against sparsity, one panel per target network, one line per ticket
  kind (the target's own IMP ticket emphasized, the baselines dashed), error bars of the standard
  deviation over seeds;
* ``cost``: test accuracy against the compute to obtain and train each ticket (FLOPs, log scale),
  one panel per target, one marker per kind.

A summary row is a dict with the keys of :class:`elth_cli.demo.SeedSummary`: ``target``, ``level``,
``kind``, ``source``, ``n``, ``sparsity`` (0..1), ``test_acc`` (0..1), ``test_acc_std`` (or None),
``flops`` (or None), ``flops_vs_dense``. Rows may be missing (unfinished jobs): what there is is drawn.
matplotlib is imported only when a figure is drawn, never when this module is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from elth_cli.errors import UsageError
from elth_cli.plots import (
    DASHES,
    FORMATS,
    MARKERS,
    STYLE,
    pyplot,
    require_matplotlib,
    save_figure,
)

OWN = "IMP (own)"
# The demo's baselines (elth_cli.demo.BASELINES, not imported: the demo pulls in torch). A kind
# starting with "random" is one too, whatever its variant.
BASELINES = ("random", "magnitude", "reinit")
FIGURES = ("accuracy", "cost")
PANEL_COLUMNS = 3  # more targets than this wrap into a grid


def plot_experiment(summary: list[dict[str, Any]], folder: Path, formats: Sequence[str] = ("png", "pdf", "svg"),
                    title: str | None = None) -> list[Path]:
    """Draw ``accuracy.<fmt>`` and ``cost.<fmt>`` into ``folder`` (made if missing), each written
    atomically in every format of ``formats``; return the files written.

    An empty summary writes nothing and returns ``[]``; so does a figure without a row to draw (the
    cost figure when no row has its FLOPs). Without matplotlib, the ``plot`` extra's error is raised.
    """
    fmts = _formats(formats)
    drawers: dict[str, Callable[..., Any]] = {"accuracy": draw_accuracy, "cost": draw_cost}
    todo = [name for name in FIGURES if _rows(summary, name)]
    if not todo:
        return []
    require_matplotlib()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in todo:
        fig = drawers[name](summary, title)
        try:
            for fmt in fmts:
                path = folder / f"{name}.{fmt}"
                save_figure(fig, path)
                written.append(path)
        finally:
            pyplot().close(fig)  # figures are not garbage-collected while pyplot holds them
    return written


def draw_accuracy(summary: list[dict[str, Any]], title: str | None = None) -> Any:
    """The accuracy figure (a matplotlib Figure): per target, test accuracy (%) against sparsity (%),
    one line per kind sorted by sparsity."""
    return _draw(_rows(summary, "accuracy"), "accuracy", title)


def draw_cost(summary: list[dict[str, Any]], title: str | None = None) -> Any:
    """The cost figure (a matplotlib Figure): per target, test accuracy (%) against the FLOPs to obtain
    and train each ticket (log scale); rows without FLOPs are left out."""
    return _draw(_rows(summary, "cost"), "cost", title)


def _formats(formats: Sequence[str]) -> list[str]:
    """The formats asked for, checked against the ones the figures are written in (before any work)."""
    out = [f.lower().lstrip(".") for f in formats]
    unknown = [f for f in out if f".{f}" not in FORMATS]
    if unknown:
        raise UsageError(f"unknown figure format {unknown[0]!r}; use png, pdf or svg")
    return list(dict.fromkeys(out))  # a format named twice is written once


def _rows(summary: Iterable[dict[str, Any]], figure: str) -> list[dict[str, Any]]:
    """The rows ``figure`` can draw: a test accuracy (a failed evaluation is NaN), and FLOPs for ``cost``."""
    return [r for r in summary if r.get("test_acc") is not None and math.isfinite(r["test_acc"])
            and (figure != "cost" or r.get("flops") is not None)]


def _ordered(values: Iterable[str]) -> list[str]:
    """Distinct values in the order they first appear (the table's order: targets, then kinds)."""
    return list(dict.fromkeys(values))


def _kinds(rows: list[dict[str, Any]]) -> list[str]:
    """The kinds in legend order: the own IMP ticket first, the baselines last, else the table's order."""
    kinds = _ordered(r["kind"] for r in rows)
    return sorted(kinds, key=lambda k: (k != OWN, is_baseline(k)))  # stable: the table's order within


def is_baseline(kind: str) -> bool:
    """Whether ``kind`` is a baseline (drawn dashed) rather than a found or transformed ticket."""
    return kind in BASELINES or kind.startswith("random")


def _style(i: int, kind: str, figure: str) -> dict[str, Any]:
    """The i-th kind's look, the same in every panel: its own colour and marker; the own IMP ticket
    thick, solid and on top (the reference every other kind is read against), baselines dashed."""
    style: dict[str, Any] = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "markersize": 5,
                             "capsize": 3, "linewidth": 1.3, "linestyle": DASHES[0], "zorder": 3}
    if kind == OWN:
        style.update(linewidth=2.4, markersize=7, zorder=5)
    elif is_baseline(kind):
        style.update(linestyle=DASHES[1], alpha=0.85, zorder=2)
    if figure == "cost":
        style["linestyle"] = "none"  # points of different levels: a line would suggest a trade-off curve
    return style


def _yerr(points: list[dict[str, Any]]) -> list[float] | None:
    """Error bars of ± the std over seeds (in %) where a point has n > 1; None when no point has one."""
    errs = [100 * p["test_acc_std"] if p.get("n", 1) > 1 and p.get("test_acc_std") is not None
            and math.isfinite(p["test_acc_std"]) else 0.0 for p in points]
    return errs if any(errs) else None


def _draw(rows: list[dict[str, Any]], figure: str, title: str | None) -> Any:
    """One panel per target (a row, or a grid past :data:`PANEL_COLUMNS`), one series per kind, and
    one legend for the figure (the kinds look the same in every panel)."""
    plt = pyplot()
    targets, kinds = _ordered(r["target"] for r in rows), _kinds(rows)
    cols = max(1, min(PANEL_COLUMNS, len(targets)))
    nrows = max(1, math.ceil(len(targets) / cols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows + 0.5), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat[len(targets):]:
            fig.delaxes(ax)  # a grid's unused cells
        for ax, target in zip(axes.flat, targets):
            mine = [r for r in rows if r["target"] == target]
            for i, kind in enumerate(kinds):
                points = [r for r in mine if r["kind"] == kind]
                if points:
                    _series(ax, points, kind, _style(i, kind, figure), figure)
            _label_panel(ax, target, figure)
        _legend(fig, kinds)
        if title:
            fig.suptitle(title)
    return fig


def _series(ax: Any, points: list[dict[str, Any]], kind: str, style: dict[str, Any], figure: str) -> None:
    """One kind's points in one panel, sorted along the x axis; own IMP points named by their level in
    the cost figure (there the x order says nothing about the level)."""
    x_key = "sparsity" if figure == "accuracy" else "flops"
    points = sorted(points, key=lambda p: p[x_key])
    xs = [100 * p["sparsity"] if figure == "accuracy" else p["flops"] for p in points]
    ys = [100 * p["test_acc"] for p in points]
    ax.errorbar(xs, ys, yerr=_yerr(points), label=kind, **style)
    if figure == "cost" and kind == OWN:
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"l{p['level']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _label_panel(ax: Any, target: str, figure: str) -> None:
    """A panel's title (its target) and axes."""
    ax.set_title(target)
    ax.set_ylabel("test accuracy (%)")
    if figure == "accuracy":
        ax.set_xlabel("sparsity (% of weights pruned)")
    else:
        ax.set_xscale("log")  # FLOPs span orders of magnitude: one-shot baselines to long IMP chains
        ax.set_xlabel("FLOPs to obtain and train the ticket (log scale)")
    ax.grid(alpha=0.3, which="both" if figure == "cost" else "major")


def _legend(fig: Any, kinds: list[str]) -> None:
    """One legend below the panels with every kind once, in :func:`_kinds`' order (a kind missing from
    one panel still has its entry from another)."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [k for k in kinds if k in handles]
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncols=min(len(labels), 4))
