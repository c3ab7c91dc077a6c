"""Figures for a paper: accuracy against sparsity (log density, error bars over seeds), layer-wise
sparsity, interpolation with its reference line; every figure in every format."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import assert_clean_error, make_ticket, run_in_process
from elth_cli import elastic, plots
from elth_cli.compare import compare_tickets

pytest.importorskip("matplotlib")

SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}


def _doc(with_interpolation: bool = True) -> dict:
    """An IMP-like series, two seeds of one random baseline, a stretched ticket, and an interpolation."""
    rounds = [dataclasses.replace(make_ticket("resnet14-w4", s, seed=0), method="imp", metrics={"test_acc": a})
              for s, a in ((0.2, 0.97), (0.5, 0.96), (0.8, 0.93), (0.9, 0.90))]
    seeds = [dataclasses.replace(make_ticket("resnet14-w4", 0.9, seed=k), metrics={"test_acc": a})
             for k, a in ((1, 0.70), (2, 0.76))]
    moved = elastic.stretch(rounds[2], "resnet20-w4")
    moved = dataclasses.replace(moved, metrics={"test_acc": 0.94})
    tickets = [*rounds, *seeds, moved]
    doc = compare_tickets(tickets, [f"/some/long/folder/t{i}.safetensors" for i in range(len(tickets))])
    if with_interpolation:
        doc["interpolation"] = {"points": [{"alpha": a, "accuracy": acc, "loss": 0.1} for a, acc in
                                           ((0.0, 0.95), (0.5, 0.80), (1.0, 0.93))],
                                "split": "test", "dataset": "digits", "recompute_bn": True, "error_barrier": 0.14}
    return doc


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
@pytest.mark.parametrize("kind", ["accuracy", "layers", "interpolation", "auto"])
def test_every_figure_in_every_format(tmp_path, kind, fmt):
    out = tmp_path / f"figure.{fmt}"
    drawn = plots.plot_comparison(_doc(), out, kind)
    assert drawn == (["layers", "accuracy", "interpolation"] if kind == "auto" else [kind])
    assert out.read_bytes().startswith(SIGNATURES[fmt])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_the_accuracy_figure_reads_as_a_lottery_ticket_plot():
    fig, _ = plots.draw(_doc(), "accuracy")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]  # log density, sparser to the right
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "imp, resnet14-w4" in labels and "stretch append, resnet20-w4" in labels
    assert "random, resnet14-w4 (mean +- std, n=2)" in labels  # the two seeds: one point with error bars
    errorbars = [c for c in ax.containers if c.has_yerr]
    assert len(errorbars) == 1


def test_the_layer_figure_is_readable_and_the_interpolation_has_its_reference_line():
    fig, _ = plots.draw(_doc(), "layers")
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks and not any(t.endswith(".weight") for t in ticks) and ticks[0] == "stem.conv"
    low, high = ax.get_ylim()
    assert low > 0 and high < 100  # from the data (20-90 % here), not a fixed 0-100
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("t0 (resnet14-w4") and "/some/long" not in legend[0]
    fig, _ = plots.draw(_doc(), "interpolation")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and list(lines[1].get_ydata()) == [95.0, 93.0]  # the end points' line


def test_a_kind_without_data_and_an_unknown_format_are_refused(capsys, tmp_path):
    with pytest.raises(Exception, match="needs --interpolate"):
        plots.panels(_doc(with_interpolation=False), "interpolation")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    make_ticket("resnet8-w4").save(a)
    make_ticket("resnet8-w4", seed=1).save(b)
    r = run_in_process(capsys, "compare", a, b, "--plot", tmp_path / "x.jpg")
    assert_clean_error(r, codes=(2,), contains="use .png, .pdf or .svg")
    r = run_in_process(capsys, "compare", a, b, "--plot", tmp_path / "x.pdf", "--plot-kind", "accuracy")
    assert_clean_error(r, codes=(2,), contains="two or more tickets with a test accuracy")
    assert not (tmp_path / "x.pdf").exists() and not (tmp_path / "x.jpg").exists()
