"""report.py's tables: drawn line by line where they fit, the same characters as rich's own table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from elth_cli.report import make_table


def _drawn(renderable, width: int = 100, color: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color, color_system="truecolor" if color else None)
    console.print(renderable)
    return out.getvalue()


CASES = [
    (["layer", "weights", "kept", "sparsity"], [["conv.weight", "36", "18", "50.00%"], ["fc.weight", "1,600", "8", "99.50%"]],
     None, ["weights", "kept", "sparsity"]),
    (["a"], [], None, []),
    (["name", "value"], [["ünïcödé", "日本語"], ["x", ""]], "a title", ["value"]),
    (["tickets", "method"], [["t1", "imp"]], "a title longer than the table is wide, which rich wraps", []),
    (["k", "v"], [["[bold]not markup?[/bold]", "1"]], None, ["v"]),
    (["k", "v"], [["a" * 70, "b" * 40]], None, []),  # wider than the console: rich narrows it
]


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("columns, rows, title, right", CASES)
def test_tables_are_drawn_as_rich_draws_them(columns, rows, title, right, color) -> None:
    table = make_table(columns, rows, title=title, right=right)
    assert _drawn(table, color=color) == _drawn(table.rich_table(), color=color)


def test_a_long_table_is_drawn_line_by_line() -> None:
    rows = [[f"layer{i}.weight", f"{i:,}", "1", "0.5"] for i in range(2000)]
    table = make_table(["layer", "weights", "kept", "sparsity"], rows, right=["weights", "kept", "sparsity"])
    text = _drawn(table)
    assert text.count("\n") == 2000 + 4 and text == _drawn(table.rich_table())
