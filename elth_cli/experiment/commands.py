"""What ``elth run`` does, from Python with the same names: :func:`run` (the plan, a local run, a SLURM
submission, one job), :func:`report`, :func:`status` and :func:`show`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from elth_cli.errors import UsageError
from elth_cli.experiment import engine
from elth_cli.experiment.spec import Experiment, find_file, load_experiment
from elth_cli.report import Log

EXECUTORS = ("local", "slurm")


def show(name: str) -> None:
    """Print an experiment file (a shipped one by name), to copy and edit."""
    sys.stdout.write(find_file(name).read_text(encoding="utf-8"))


def with_slurm_options(exp: Experiment, given: Mapping[str, Any]) -> Experiment:
    """The file's [slurm] options with those given on the command line in their place."""
    import dataclasses

    changes = {k: v for k, v in given.items() if v is not None}
    return exp.replace(slurm=dataclasses.replace(exp.slurm, **changes)) if changes else exp


def run(name: str | Experiment, out_dir: str | Path, log: Log | None = None, *, plan: bool = False,
        jobs: int | None = None, executor: str = "local", job: str | None = None,
        slurm: Mapping[str, Any] | None = None, wait: bool = False, json_out: bool = False) -> Any:
    """Run (or plan, or submit) an experiment into ``out_dir``; the JSON document ``--json`` prints, if any."""
    log = log or Log()
    if executor not in EXECUTORS:
        raise UsageError(f"unknown --executor {executor!r}; choose local or slurm")
    if jobs is not None and (jobs < 1 or executor != "local"):
        raise UsageError("--jobs is the local pool's workers: at least 1, and only with --executor local")
    exp = load_experiment(name) if isinstance(name, str) else name
    exp = with_slurm_options(exp, slurm or {})
    opened = engine.open_experiment(exp, out_dir)
    if plan:
        return _print_plan(opened, json_out)
    if job is not None:
        log.info(f"[{job}] {engine.run_job(opened, job)}")
        return None
    if executor == "slurm":
        from elth_cli.experiment import slurm as slurm_exec

        return slurm_exec.submit(opened, log, wait=wait)
    res = engine.run_local(opened, jobs, log)
    if json_out:
        import json

        return json.loads((opened.out / "table.json").read_text())
    from elth_cli.experiment.results import print_results

    print_results(exp, res.rows)
    log.info(f"tickets, table.txt, table.json and figures in {opened.out}")
    return None


def _print_plan(opened: engine.Opened, json_out: bool) -> Any:
    from elth_cli.experiment.jobstate import plan

    planned = plan(opened.out, opened.nodes)
    if json_out:
        return {"experiment": opened.exp.name, "jobs": [
            {"job": p.node.name, "id": p.node.slug, "action": p.action, "why": p.why, "after": list(p.node.after),
             "outputs": list(p.node.outputs)} for p in planned]}
    for line in engine.describe(planned):
        print(line)
    runs = sum(p.runs for p in planned)
    print(f"{len(planned)} jobs: {runs} to run, {len(planned) - runs} done")
    return None


def report(out_dir: str | Path, log: Log | None = None, json_out: bool = False) -> dict[str, Any]:
    """Write the folder's results from the jobs that have finished, print the table and the missing jobs."""
    from elth_cli.experiment.results import print_results, write_results

    log = log or Log()
    opened = engine.open_folder(out_dir)
    res, doc = write_results(opened.exp, opened.nodes, opened.out)
    if not json_out:
        print_results(opened.exp, res.rows)
    if res.missing:
        log.info(f"{len(res.missing)} of {len(opened.nodes)} jobs have no row yet: "
                 + ", ".join(f"{name} ({state})" for name, state in res.missing))
    return doc


def status(out_dir: str | Path, json_out: bool = False) -> dict[str, Any]:
    """Each job's state: from its record, and from SLURM's queue for jobs submitted there."""
    from elth_cli.experiment import slurm as slurm_exec

    opened = engine.open_folder(out_dir)
    states = slurm_exec.with_queue(opened, engine.job_states(opened))
    doc = {"experiment": opened.exp.name, "folder": str(opened.out),
           "jobs": [{"job": n.name, "id": n.slug, "state": s, "detail": d} for n, s, d in states]}
    if not json_out:
        width = max((len(n.name) for n, _, _ in states), default=0)
        for n, s, d in states:
            print(f"{s:9s} {n.name.ljust(width)}  {d}".rstrip())
        counts: dict[str, int] = {}
        for _, s, _ in states:
            counts[s] = counts.get(s, 0) + 1
        print(", ".join(f"{c} {s}" for s, c in counts.items()))
    return doc
