"""``elth compare``: tickets side by side, their mask overlap and layer profiles, and the linear interpolation
between two trainings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elth_cli import stops
from elth_cli.cli.app import command
from elth_cli.cli.params import (DATA, METHOD, OUTPUT, DataDirOpt, DeviceOpt, EvalResizeOpt, JsonOpt, QuietOpt,
                                 complete_choices)
from elth_cli.cli.render import print_compare
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.report import Log, fmt_pct, print_json, stdout_console

PLOT_KINDS = ("auto", "accuracy", "layers", "interpolation")


def expand_runs(paths: list[str]) -> list[str]:
    """Ticket paths, with each IMP run folder replaced by its finished rounds' tickets."""
    from elth_cli.find.runfolder import run_summary

    out: list[str] = []
    for p in paths:
        out += [r["path"] for r in run_summary(p)["rounds"]] if p != STDIO and Path(p).is_dir() else [p]
    return out


@command("compare")
def compare(
    tickets: Annotated[list[str], typer.Argument(metavar="TICKET_OR_RUN", help="Two or more ticket files of one "
                       "family ('-' for stdin, once), or IMP run folders (each gives its rounds).")],
    interpolate: Annotated[bool, typer.Option("--interpolate", rich_help_panel=METHOD, help="Evaluate the straight "
                           "line between two trained tickets with one mask (needs --dataset).")] = False,
    points: Annotated[int, typer.Option("--points", rich_help_panel=METHOD, help="Interpolation points, alpha evenly "
                      "spaced in [0, 1].")] = 11,
    recompute_bn: Annotated[bool, typer.Option("--recompute-bn/--no-recompute-bn", rich_help_panel=METHOD,
                            help="Recompute BatchNorm statistics at every point (default) or use the interpolated "
                            "ones.")] = True,
    bn_batches: Annotated[Optional[int], typer.Option("--bn-batches", rich_help_panel=METHOD, help="Training batches "
                          "for the BatchNorm recompute (default: one whole epoch).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=METHOD, help="Batch size of the "
                          "BatchNorm recompute.")] = 128,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", rich_help_panel=DATA, help="Data set for "
                       "--interpolate.", autocompletion=complete_choices("dataset"))] = None,
    resize: EvalResizeOpt = None,
    data_dir: DataDirOpt = None,
    download: Annotated[bool, typer.Option("--download", rich_help_panel=DATA, help="Download the data set if "
                        "missing.")] = False,
    device: DeviceOpt = "auto",
    plot: Annotated[Optional[Path], typer.Option("--plot", rich_help_panel=OUTPUT, help="Write a figure; the extension "
                    "sets the format (.png, .pdf, .svg). Needs matplotlib: pip install 'elth[plot]'.")] = None,
    plot_kind: Annotated[Optional[str], typer.Option("--plot-kind", rich_help_panel=OUTPUT, help="With --plot: "
                         "accuracy (test accuracy against weights remaining, log axis, error bars over seeds), layers "
                         "(layer-wise sparsity), interpolation (with --interpolate), or auto (default): every one the "
                         "tickets allow, side by side.", autocompletion=complete_choices("plot_kind"))] = None,
    force: Annotated[bool, typer.Option("--force", rich_help_panel=OUTPUT, help="Overwrite the --plot file if it "
                     "exists.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare tickets: sparsity, provenance, accuracy and cost; mask overlap (Jaccard against the random
    expectation, Hamming) for one architecture; the layer-wise profile aligned by stage and block for
    different depths; with --interpolate, linear mode connectivity of two trainings of one ticket.
    """
    from elth_cli import compare as cmp
    from elth_cli.ticket import Ticket

    _check_plot(plot, plot_kind, interpolate, force)
    tickets = expand_runs(tickets)
    _check_inputs(tickets, interpolate, dataset, resize)
    names = ["stdin" if p == STDIO else p for p in tickets]
    if interpolate:  # it trains nothing but evaluates networks: torch (a compare alone reads with numpy)
        stops.import_torch()
    # Without --interpolate only masks and records are compared: each file is let go once read and checked.
    loaded = [Ticket.load(p) if interpolate else Ticket.load(p, arrays="numpy").masks_only() for p in tickets]
    doc = cmp.compare_tickets(loaded, names)
    log = Log(quiet)
    for first, later in doc["duplicates"]:  # the same run twice: not a seed replicate, not an interpolation
        log.warn(f"{names[later]} is the same run as {names[first]} (same ticket, options and seeds): a duplicate, "
                 "counted once among replicates" + ("; the line between them is flat" if interpolate else ""))
    if interpolate:
        doc["interpolation"] = _interpolate(loaded, names, dataset, data_dir, download, device, resize, points,
                                            recompute_bn, bn_batches, batch_size, log)
    if plot is not None:
        from elth_cli import plots

        drawn = plots.plot_comparison(doc, plot, plot_kind or "auto")
        log.info(f"wrote {plot} ({', '.join(drawn)})")
    if json_out:
        print_json(doc)
    else:
        print_compare(stdout_console(), doc)


def _check_plot(plot: Optional[Path], plot_kind: Optional[str], interpolate: bool, force: bool) -> None:
    """Before any work: a figure can be drawn and written (a missing extra must not cost an interpolation)."""
    if plot is None:
        if plot_kind is not None:
            raise UsageError("--plot-kind says which figure --plot draws; give --plot FILE or drop --plot-kind")
        return
    from elth_cli import plots

    plots.require_matplotlib()
    plots.plot_format(plot)
    check_output_path(plot, force)
    if plot_kind is not None and plot_kind not in PLOT_KINDS:
        raise UsageError(f"unknown --plot-kind {plot_kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    if plot_kind == "interpolation" and not interpolate:
        raise UsageError("--plot-kind interpolation: it needs --interpolate")


def _check_inputs(tickets: list[str], interpolate: bool, dataset: Optional[str], resize: Optional[int]) -> None:
    if len(tickets) < 2:
        raise UsageError("compare needs at least two tickets")
    if tickets.count(STDIO) > 1:
        raise UsageError("only one ticket can come from stdin ('-')")
    if interpolate and dataset is None:
        raise UsageError("--interpolate needs --dataset (the data set to evaluate the interpolated weights on)")
    for given, name in ((dataset, "--dataset"), (resize, "--resize")):
        if given is not None and not interpolate:
            raise UsageError(f"{name} is only used with --interpolate")
    if interpolate and len(tickets) != 2:
        raise UsageError(f"--interpolate takes exactly two tickets, got {len(tickets)}")


def _interpolate(loaded: list[Any], names: list[str], dataset: str, data_dir: Optional[Path], download: bool,
                 device: str, resize: Optional[int], points: int, recompute_bn: bool, bn_batches: Optional[int],
                 batch_size: int, log: Log) -> dict[str, Any]:
    """The line between the two trainings, on ``dataset`` at the size the tickets' training recorded."""
    from elth_cli import data
    from elth_cli.interpolation import check_interpolable, interpolate
    from elth_cli.runtime.device import resolve_device

    check_interpolable(loaded[0], loaded[1], (names[0], names[1]))
    if points < 2:
        raise UsageError(f"--points must be at least 2 (the two end points), got {points}")
    folder = str(data_dir) if data_dir else None
    info = data.get_dataset_info(dataset, folder)
    size = data.resize_to_fit(info, loaded[0].input_shape, resize, (loaded[0].hparams or {}).get("resize"))
    data.check_compatible(data.resized(info, size), loaded[0].input_shape, loaded[0].num_classes)
    bundle = data.load_dataset(dataset, folder, download, resolve_device(device))
    bundle.set_resize(size)
    log.info(f"interpolating {names[0]} -> {names[1]} on {bundle.info.name}: {points} points"
             + (", BatchNorm statistics recomputed at each" if recompute_bn else ""))
    return interpolate(
        loaded[0], loaded[1], bundle, points, recompute_bn=recompute_bn, bn_batches=bn_batches, batch_size=batch_size,
        names=(names[0], names[1]),
        progress=lambda a, p: log.info(f"  alpha {a:.3f}: accuracy {fmt_pct(p['accuracy'])}, loss {p['loss']:.4f}"))
