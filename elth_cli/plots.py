"""Figures for a paper, drawn from the ``elth compare`` document (matplotlib, the optional ``plot`` extra).

* ``accuracy``: test accuracy against the weights remaining, on a log axis (the standard lottery
  ticket plot): one series per method and architecture (IMP rounds joined by a line), replicates
  (tickets that differ only by seed) as their mean with the standard deviation as error bars;
* ``layers``: the layer-wise sparsity of each ticket, aligned by stage and block, with short layer
  names and a y range from the data;
* ``interpolation``: accuracy along the straight line between two trainings of one ticket, with the
  line between the end points that the error barrier is measured against.

The file's extension chooses the format (PNG, PDF, SVG); the file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import atomic_path

PLOT_MISSING = "--plot needs matplotlib: pip install 'elth[plot]'"
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
KINDS = ("auto", "accuracy", "layers", "interpolation")
MARKERS, DASHES = "os^Dv<>pXh", ("-", "--", "-.", ":")
# The figures' type sizes: small enough for a panel in a two-column paper, still legible.
STYLE = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}


def require_matplotlib() -> None:
    """Fail with a one-line install hint when the optional plotting extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ElthError(PLOT_MISSING, exit_code=1) from None


def plot_format(path: str | Path) -> str:
    """The format a plot file's extension asks for; anything else is refused before any work."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise UsageError(f"--plot {path}: the format comes from the extension; use .png, .pdf or .svg")
    return FORMATS[ext]


def _accuracy_points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per ticket with a test accuracy, replicates merged into their mean (with its std)."""
    tickets, points, grouped = doc["tickets"], [], set()
    for g in doc.get("replicates") or []:
        if g["test_acc"]["mean"] is None:
            continue
        grouped.update(g["members"])
        points.append({"series": series_label(tickets[g["members"][0]]), "density": 1 - g["sparsity"]["mean"],
                       "acc": g["test_acc"]["mean"], "std": g["test_acc"]["std"] or 0.0, "n": g["test_acc"]["n"]})
    for i, t in enumerate(tickets):
        if i not in grouped and t["test_acc"] is not None:
            points.append({"series": series_label(t), "density": 1 - t["sparsity"], "acc": t["test_acc"], "std": 0.0,
                           "n": 1})
    return points


def series_label(row: dict[str, Any]) -> str:
    """A ticket's series in the accuracy plot: its method (a transformation with its strategy) and arch."""
    t = row.get("transform") or {}
    method = f"{t['kind']} {t.get('strategy') or ''}".strip() if t.get("kind") else row["method"]
    return f"{method}, {row['arch']}"


def panels(doc: dict[str, Any], kind: str) -> list[str]:
    """The panels ``kind`` draws for ``doc``: ``auto`` every one the data allows; a named one is
    refused when there is nothing to draw."""
    if kind not in KINDS:
        raise UsageError(f"unknown --plot-kind {kind!r}; choose one of {', '.join(KINDS)}")
    points = _accuracy_points(doc)
    possible = ["layers"]
    if len(points) >= 2:
        possible.append("accuracy")
    if doc.get("interpolation"):
        possible.append("interpolation")
    if kind == "auto":
        return possible
    if kind not in possible:
        why = {"accuracy": "it needs two or more tickets with a test accuracy (trained tickets)",
               "interpolation": "it needs --interpolate"}[kind]
        raise UsageError(f"--plot-kind {kind}: {why}")
    return [kind]


def plot_comparison(doc: dict[str, Any], path: str | Path, kind: str = "auto") -> list[str]:
    """Draw ``kind`` (see :func:`panels`) into ``path`` in the format of its extension; return the panels."""
    require_matplotlib()
    plot_format(path)  # an unknown extension is refused before any drawing
    fig, chosen = draw(doc, kind)
    try:
        save_figure(fig, path)
    finally:
        pyplot().close(fig)
    return chosen


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported only when a figure is drawn (the CLI's start-up
    must not pay for matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` to ``path`` atomically (a temporary file beside it, then a rename), in the format
    of its extension; PNG at 200 dpi, the vector formats at their own resolution."""
    fmt = plot_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=200 if fmt == "png" else None)


def draw(doc: dict[str, Any], kind: str = "auto") -> tuple[Any, list[str]]:
    """The figure of ``kind``'s panels, side by side (a matplotlib Figure), and which panels they are."""
    chosen = panels(doc, kind)
    plt = pyplot()
    widths = [_layers_width(doc) if p == "layers" else 5.5 for p in chosen]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(chosen), figsize=(sum(widths), 4.4), squeeze=False,
                                 gridspec_kw={"width_ratios": widths})
        for ax, p in zip(axes[0], chosen):
            {"accuracy": _accuracy_panel, "layers": _layers_panel, "interpolation": _interpolation_panel}[p](ax, doc)
        fig.tight_layout()
    return fig, chosen


def _short(name: str) -> str:
    return Path(name).stem if name not in ("stdin", "-") else "stdin"


def _accuracy_panel(ax: Any, doc: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series: dict[str, list[dict[str, Any]]] = {}
    for p in _accuracy_points(doc):
        series.setdefault(p["series"], []).append(p)
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort(key=lambda p: -p["density"])
        n = max(p["n"] for p in pts)
        ax.errorbar([100 * p["density"] for p in pts], [100 * p["acc"] for p in pts],
                    yerr=[100 * p["std"] for p in pts] if n > 1 else None, marker=MARKERS[i % len(MARKERS)],
                    linestyle=DASHES[i % len(DASHES)] if len(pts) > 1 else "none", capsize=3, markersize=5,
                    label=label + (f" (mean +- std, n={n})" if n > 1 else ""))
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right, as lottery ticket plots read
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # 1, 2, 5 per decade: the minor ticks stay unlabelled
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against sparsity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left")


def _layers_width(doc: dict[str, Any]) -> float:
    return min(16.0, max(6.0, 2.0 + 0.16 * len(doc["profile"])))


def _layers_panel(ax: Any, doc: dict[str, Any]) -> None:
    rows, tickets = doc["profile"], doc["tickets"]
    xs = list(range(len(rows)))
    values = [s for r in rows for s in r["sparsity"] if s is not None]
    for i, t in enumerate(tickets):
        ys = [r["sparsity"][i] * 100 if r["sparsity"][i] is not None else math.nan for r in rows]
        # Distinct markers and dashes: a stretched ticket's line lies exactly on its source's.
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=3 + 1.5 * ((len(tickets) - 1 - i) % 3),
                linestyle=DASHES[i % len(DASHES)], alpha=0.85,
                label=f"{_short(t['name'])} ({t['arch']}, {100 * t['sparsity']:.1f}%)")
    step = max(1, math.ceil(len(rows) / 60))  # at most about 60 labels
    ax.set_xticks(xs[::step])
    ax.set_xticklabels([rows[i]["label"].removesuffix(".weight") for i in xs[::step]], rotation=60, ha="right",
                       fontsize=7)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = max(0.02, 0.08 * (high - low))
    ax.set_ylim(100 * max(0.0, low - margin), 100 * min(1.0, high + margin))
    ax.set_ylabel("sparsity (% pruned)")
    ax.set_title("layer-wise sparsity, aligned by stage and block")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)


def _interpolation_panel(ax: Any, doc: dict[str, Any]) -> None:
    interp = doc["interpolation"]
    alphas = [p["alpha"] for p in interp["points"]]
    accs = [100 * p["accuracy"] for p in interp["points"]]
    ax.plot(alphas, accs, marker="o", label="interpolated weights")
    ax.plot([alphas[0], alphas[-1]], [accs[0], accs[-1]], linestyle="--", color="gray",
            label="between the end points")
    names = [_short(t["name"]) for t in doc["tickets"][:2]]
    ax.set_xlabel(f"alpha (0: {names[0]}, 1: {names[1]})")
    ax.set_ylabel(f"{interp['split']} accuracy (%)")
    bn = "BN recomputed" if interp["recompute_bn"] else "BN interpolated"
    ax.set_title(f"linear interpolation on {interp['dataset']} ({bn}); error barrier "
                 f"{100 * interp['error_barrier']:.2f}%")
    ax.legend(loc="lower center")
    ax.grid(alpha=0.3)
