"""The experiment's figures (elth_cli.experiment.figures): accuracy against sparsity and against compute,
one panel per target and one series per ticket kind, drawn from the table over seeds; every format."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from elth_cli.errors import ElthError, UsageError
from elth_cli.experiment import figures
from elth_cli.plots import PLOT_MISSING

pytest.importorskip("matplotlib")

SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}
TARGETS = ("resnet20-w4", "resnet32-w4")
KINDS = ("IMP (own)", "stretch append", "random", "magnitude")
LEVELS = {6: 0.738, 3: 0.488}  # level 6 first: the series must be sorted by sparsity, not by row order


def _summary() -> list[dict]:
    """2 targets x 2 levels x 4 kinds, n=3 with a std; one row without FLOPs, and the stretched ticket
    missing at resnet32-w4's level 6 (an unfinished job)."""
    rows = []
    for t, target in enumerate(TARGETS):
        for level, sparsity in LEVELS.items():
            for k, kind in enumerate(KINDS):
                if (target, level, kind) == ("resnet32-w4", 6, "stretch append"):
                    continue
                acc = 0.95 - 0.1 * sparsity - 0.02 * k - 0.01 * t
                flops = None if (target, level, kind) == ("resnet20-w4", 3, "magnitude") else 1e12 * (1 + level) / (1 + k)
                rows.append({"target": target, "level": level, "kind": kind, "source": target, "n": 3,
                             "sparsity": sparsity + 0.001 * k, "test_acc": acc, "test_acc_std": 0.004 + 0.001 * k,
                             "flops": flops, "flops_vs_dense": None if flops is None else flops / 1e12})
    return rows


def _svg_text(path) -> str:
    """Every text of an SVG, matplotlib's glyph paths included: it names each drawn text in a comment."""
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(path.read_bytes(), parser=parser)  # raises unless the file is well-formed XML
    return " ".join(e.text or "" for e in root.iter())


def test_both_figures_in_every_format(tmp_path):
    folder = tmp_path / "figures" / "new"  # made if missing
    written = figures.plot_experiment(_summary(), folder, title="E-LTH on digits")
    assert [p.name for p in written] == [f"{n}.{f}" for n in ("accuracy", "cost") for f in ("png", "pdf", "svg")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written)  # no temporary left
    for p in written:
        assert p.read_bytes().startswith(SIGNATURES[p.suffix[1:]])
        assert p.suffix != ".pdf" or b"%%EOF" in p.read_bytes()[-32:]
    for name in ("accuracy", "cost"):
        text = _svg_text(folder / f"{name}.svg")
        assert all(k in text for k in KINDS) and all(t in text for t in TARGETS) and "E-LTH on digits" in text


def test_an_empty_summary_writes_nothing_and_a_bad_format_is_refused(tmp_path):
    assert figures.plot_experiment([], tmp_path / "figures") == []
    assert not (tmp_path / "figures").exists()
    with pytest.raises(UsageError, match="use png, pdf or svg"):
        figures.plot_experiment(_summary(), tmp_path / "figures", formats=("png", "jpg"))
    assert not (tmp_path / "figures").exists()  # refused before any drawing


def test_without_flops_only_the_accuracy_figure_is_written(tmp_path):
    rows = [{**r, "flops": None, "flops_vs_dense": None} for r in _summary()]
    written = figures.plot_experiment(rows, tmp_path, formats=("png",))
    assert [p.name for p in written] == ["accuracy.png"]


def test_the_accuracy_figure_has_a_panel_per_target_and_a_series_per_kind():
    fig = figures.draw_accuracy(_summary())
    assert [ax.get_title() for ax in fig.axes] == list(TARGETS)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["IMP (own)", "stretch append", "random",
                                                                  "magnitude"]
    rows = _summary()
    for ax, target in zip(fig.axes, TARGETS):
        series = {c.get_label(): c for c in ax.containers}
        assert list(series) == list(KINDS)  # every kind, the own IMP ticket first
        for kind, c in series.items():
            mine = sorted((r for r in rows if r["target"] == target and r["kind"] == kind),
                          key=lambda r: r["sparsity"])
            line = c.lines[0]
            assert list(line.get_ydata()) == pytest.approx([100 * r["test_acc"] for r in mine])
            assert list(line.get_xdata()) == pytest.approx([100 * r["sparsity"] for r in mine])
            assert c.has_yerr  # n = 3: error bars of the std
        assert len(series["stretch append"].lines[0].get_xdata()) == (1 if target == "resnet32-w4" else 2)
        own, random = series["IMP (own)"].lines[0], series["random"].lines[0]
        assert own.get_linestyle() == "-" and random.get_linestyle() == "--"
        assert own.get_zorder() > max(c.lines[0].get_zorder() for k, c in series.items() if k != "IMP (own)")


def test_the_cost_figure_leaves_out_rows_without_flops_and_draws_no_bars_for_one_seed():
    rows = [{**r, "n": 1, "test_acc_std": None} if r["target"] == "resnet32-w4" else r for r in _summary()]
    fig = figures.draw_cost(rows)
    assert len(fig.axes) == 2 and all(ax.get_xscale() == "log" for ax in fig.axes)
    first = {c.get_label(): c for c in fig.axes[0].containers}
    assert len(first["magnitude"].lines[0].get_xdata()) == 1  # its level-3 row has no FLOPs
    assert first["magnitude"].lines[0].get_linestyle() == "None"  # markers only
    assert all(not c.has_yerr for c in fig.axes[1].containers)  # n = 1: no error bars


def test_more_targets_wrap_into_a_grid_without_empty_panels():
    rows = [{**r, "target": f"{r['target']}-{i}"} for i in range(2) for r in _summary()]
    fig = figures.draw_accuracy(rows)
    assert len(fig.axes) == 4 and fig.axes[3].get_subplotspec().rowspan.start == 1


def test_a_missing_matplotlib_raises_the_plot_extras_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ElthError, match="pip install 'elth\\[plot\\]'") as e:
        figures.plot_experiment(_summary(), tmp_path)
    assert str(e.value) == PLOT_MISSING and not list(tmp_path.iterdir())


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, elth_cli.experiment.figures; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
