"""``elth run``: an experiment file (:mod:`elth_cli.experiment`) on this machine's worker pool or on SLURM;
its plan, its state and its results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from elth_cli.cli.app import command, report_stop
from elth_cli.cli.params import JsonOpt, QuietOpt
from elth_cli.errors import UsageError
from elth_cli.report import Log, print_json

EXPERIMENT, RESULTS, SLURM = "Experiment", "Results and state", "SLURM (--executor slurm)"


def _opt(*decls: str, help: str, panel: str = EXPERIMENT, **kw: object) -> object:
    return typer.Option(*decls, help=help, rich_help_panel=panel, **kw)


@command("run")
def run(
    experiment: Annotated[Optional[str], typer.Argument(help="An experiment file (.toml; docs/experiments.md), or a "
                          "shipped one by name: demo, cifar10-table3.", show_default=False)] = None,
    out_dir: Annotated[Optional[Path], _opt("--out-dir", help="The experiment's folder: its jobs' records, tickets, "
                       "logs and results (re-running reuses finished jobs).")] = None,
    plan: Annotated[bool, _opt("--plan", help="Print the jobs, what a run would do with each (done, run, re-run and "
                    "why) and after which jobs; run nothing.")] = False,
    jobs: Annotated[Optional[int], _opt("--jobs", "-j", help="Local workers side by side, each with cores/N threads "
                    "(default: one per core, at most 8).")] = None,
    executor: Annotated[str, _opt("--executor", help="local (this machine's worker pool) or slurm (one SLURM job per "
                        "job of the graph, each after the jobs it reads).")] = "local",
    report: Annotated[Optional[Path], _opt("--report", help="Write DIR's table (table.json, table.txt) and figures "
                      "from the jobs that have finished, and print the table.", panel=RESULTS)] = None,
    status: Annotated[Optional[Path], _opt("--status", help="Show what DIR's jobs are: done, running, queued, failed "
                      "(with the log), changed, not run.", panel=RESULTS)] = None,
    show: Annotated[bool, _opt("--show", help="Print the experiment file (a shipped one: to copy and edit).",
                    panel=RESULTS)] = False,
    job: Annotated[Optional[str], _opt("--job", help="Run this one job of the graph here (what each SLURM job runs).",
                   panel=SLURM)] = None,
    partition: Annotated[Optional[str], _opt("--partition", help="SLURM partition (else [slurm] in the file).",
                         panel=SLURM)] = None,
    account: Annotated[Optional[str], _opt("--account", help="SLURM account.", panel=SLURM)] = None,
    time_limit: Annotated[Optional[str], _opt("--time", help="Each job's time limit (SLURM's notation, 04:00:00).",
                          panel=SLURM)] = None,
    gpus: Annotated[Optional[int], _opt("--gpus", help="GPUs per job.", panel=SLURM)] = None,
    cpus: Annotated[Optional[int], _opt("--cpus", help="CPUs per job.", panel=SLURM)] = None,
    wait: Annotated[bool, _opt("--wait", help="Stay until every submitted job has ended, then write the results.",
                    panel=SLURM)] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an experiment file: IMP chains, transforms, baselines and seeds as a graph of jobs, on this machine's
    worker pool or on SLURM; re-running reuses finished jobs and re-runs only those whose inputs changed.
    """
    from elth_cli.experiment import commands

    log = Log(quiet)
    if report is not None or status is not None:
        _refuse_with_folder_mode(experiment, out_dir, plan, job)
        doc = commands.report(report, log, json_out) if report is not None else commands.status(status, json_out)
        if json_out:
            print_json(doc)
        return
    if experiment is None:
        raise UsageError("give an experiment file (or --report DIR, --status DIR); elth run --help shows how")
    if show:
        commands.show(experiment)
        return
    if out_dir is None:
        raise UsageError("give --out-dir DIR: the folder for the experiment's jobs and results")
    slurm = {"partition": partition, "account": account, "time": time_limit, "gpus": gpus, "cpus": cpus}
    with report_stop("run"):
        doc = commands.run(experiment, out_dir, log, plan=plan, jobs=jobs, executor=executor, job=job, slurm=slurm,
                           wait=wait, json_out=json_out)
    if json_out and doc is not None:
        print_json(doc)


def _refuse_with_folder_mode(experiment: str | None, out_dir: Path | None, plan: bool, job: str | None) -> None:
    given = [name for name, v in (("EXPERIMENT", experiment), ("--out-dir", out_dir), ("--plan", plan or None),
                                  ("--job", job)) if v]
    if given:
        raise UsageError(f"--report and --status read the folder alone; drop {', '.join(given)}")
