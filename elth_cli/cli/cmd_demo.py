"""``elth demo``: the digits experiment of ``make demo`` (:mod:`elth_cli.demo`, the shipped demo.toml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from elth_cli.cli.app import command, report_stop
from elth_cli.cli.params import JsonOpt, QuietOpt
from elth_cli.errors import UsageError
from elth_cli.report import Log, print_json
from elth_cli.runtime.launch import detect_launch


@command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the tickets and the table (re-running "
                       "resumes).")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A reduced run (4 rounds, 8 epochs) to check an "
                     "installation.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Also early-bird IMP chains and RigL: two more rows per "
                    "target and level, about half as much work again.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes side by side, each with "
                    "cores/N threads (default: one per core, at most 8; 1: everything in this process).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs of every training (IMP rounds included; "
                      "default 15, 8 with --quick); the digits recipe's 30 takes twice as long.",
                      show_default=False)] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Run the whole comparison for N seeds (--seed, --seed + 1, "
                     "...; each in OUT_DIR/seed-S) and print mean +- standard deviation per row.")] = 1,
    vit: Annotated[bool, typer.Option("--vit/--no-vit", help="Also the vision transformer pair (vit-d4-w32 and "
                   "vit-d8-w32, AdamW); --no-vit leaves it out, a third less work.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisations, data order and augmentation "
                    "(the first of --seeds).")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The E-LTH experiment in miniature on the embedded digits set: IMP on resnet20 and resnet32 (width 4), on
    MLP-2 and MLP-4 and on a 4- and an 8-block ViT, stretch and squeeze within each pair, random and magnitude
    baselines, the reinit control (the IMP mask with new weights), with --full early-bird IMP and RigL too,
    and the comparison table with each ticket's FLOPs. It is the shipped experiment file demo.toml (elth run
    --show demo) with these options applied; IMP chains and trainings run side by side (--jobs).
    """
    from elth_cli import demo as demo_mod
    from elth_cli.experiment.results import print_results

    if detect_launch().distributed:  # every rank would write the same files at once
        raise UsageError("elth demo runs in one process; start it without torchrun or srun")
    options = demo_mod.DemoOptions(quick=quick, full=full, seeds=seeds, seed=seed, epochs=epochs, vit=vit)
    exp = demo_mod.demo_experiment(options)  # a bad --seeds or --seed is the first thing to report
    with report_stop("demo"):
        res = demo_mod.run_demo(out_dir, options, Log(quiet), jobs)
    if json_out:
        print_json(json.loads((out_dir / "table.json").read_text()))
        return
    print_results(exp, res.rows)
    Log(quiet).info(f"tickets, table.txt, table.json and figures in {out_dir}")
