"""``elth train`` (one ticket, or several side by side with ``--out-dir``) and ``elth eval``. Both go through
the core's one path (:mod:`elth_cli.train.job`, :mod:`elth_cli.train.evaluation`); this module parses and
prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elth_cli.cli.app import command, report_stop
from elth_cli.cli.params import (DATA, METHOD, OUTPUT, DataDirOpt, DatasetOpt, DeviceOpt, DistTimeoutOpt, DownloadOpt,
                                 EvalResizeOpt, ForceOpt, JsonOpt, QuietOpt, WorkersOpt, check_stdout_use, recipe_options,
                                 run_flags, with_fields)
from elth_cli.cli.render import empty_layers_warning
from elth_cli.report import plural
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO
from elth_cli.report import Log, fmt_int, fmt_pct, make_table, print_json, stdout_console
from elth_cli.runtime.launch import detect_launch
from elth_cli.train.config import TrainConfig
from elth_cli.train.options import RunOptions

NewHeadOpt = Annotated[bool, typer.Option("--new-head", rich_help_panel=METHOD, help="A ticket made for another class "
                       "count: train a new classifier for the data set's classes (re-initialised, at the old one's "
                       "sparsity; every other tensor kept).")]


def _workers_ahead(params: dict[str, Any]) -> None:
    """Several tickets in worker processes: their fork server imports torch and the training code while
    this process does the same and checks the tickets (the two start-ups overlap, docs/training.md)."""
    if params.get("out_dir") is not None and min(params.get("jobs") or 1, len(params.get("ticket_paths") or ())) > 1:
        from elth_cli.runtime.pool import prepare_workers

        prepare_workers(("elth_cli.train.several",))


@command("train", before_torch=_workers_ahead)
@with_fields(TrainConfig, RunOptions)
def train(
    ticket_paths: Annotated[list[str], typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin); "
                            "several with --out-dir.")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", rich_help_panel=OUTPUT, help="Output ticket file "
                      "('-' for stdout); one ticket only.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", rich_help_panel=OUTPUT, help="Train every TICKET "
                       "into this folder, under its file name, with its checkpoint, log and JSON lines beside it; "
                       "re-running finishes what is left.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", rich_help_panel="Devices", help="With --out-dir: trainings side "
                    "by side, each in a worker process with cores/N CPU threads, or its own GPU (several per GPU when "
                    "N exceeds them).")] = 1,
    new_head: NewHeadOpt = False,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    dist_timeout: DistTimeoutOpt = 300.0,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", rich_help_panel=OUTPUT, help="Checkpoint file "
                          "(default: OUT.ckpt beside the output; with '-o -' there is none unless given).")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=OUTPUT, help="Insist on resuming from the "
                      "checkpoint (an existing checkpoint is resumed even without it).")] = False,
    restart: Annotated[bool, typer.Option("--restart", rich_help_panel=OUTPUT, help="Ignore an existing checkpoint and "
                       "start over.")] = False,
    log_jsonl: Annotated[Optional[Path], typer.Option("--log-jsonl", rich_help_panel=OUTPUT, help="Write one JSON line "
                         "per epoch here.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Train a ticket's subnetwork from its init weights at its rewind step; pruned weights stay zero.

    Recipes (the paper's, every value overridable): CIFAR SGD 0.1, batch 128, 160 epochs, x0.1 at 80ep/120ep;
    ImageNet 0.4, batch 1024, 90 epochs, 5ep warm-up; MNIST MLPs SGD 0.1, batch 128, 40 epochs; digits 30 epochs,
    cosine, 2ep warm-up; vision transformers AdamW 1e-3, wd 0.05, batch 128, 100 epochs, cosine, 5ep warm-up (on
    digits 3e-3, batch 64, 30 epochs, 2ep warm-up).

    Step values read 1000it, 2ep or a bare number of iterations.

    A checkpoint is written at epoch ends (every --checkpoint-every seconds) and on SIGTERM/SIGUSR1 (exit 75) or
    Ctrl-C (exit 130): re-run the same command to resume; once finished, the same command does nothing and exits
    0. The output ticket holds the trained weights, the resolved config and the metrics.

    Several tickets side by side: elth train T1 T2 ... --out-dir DIR --jobs N trains each into DIR under its file
    name (checkpoint, .log and .jsonl beside it) in N worker processes with cores/N CPU threads each, or a GPU
    each. A failed ticket does not stop the others; a re-run reuses finished outputs and resumes the rest.

    Data-parallel with several processes: torchrun --nproc-per-node N -m elth_cli train ... (or srun). --batch-size
    stays the global batch; rank 0 alone writes the ticket, the checkpoint and the logs.
    """
    if resume and restart:
        raise UsageError("--resume and --restart contradict each other; pass one of them")
    several = out_dir is not None or len(ticket_paths) > 1
    if several:
        for flag, value in (("-o", output), ("--checkpoint", checkpoint), ("--log-jsonl", log_jsonl),
                            ("--resume", resume or None)):
            if value is not None:
                raise UsageError(f"{flag} is for one ticket; train --out-dir does not use it")
        if out_dir is None:
            raise UsageError(f"{len(ticket_paths)} tickets need --out-dir DIR (each trains into DIR under its file name); "
                             "-o takes one")
    elif output is None:
        raise UsageError("pass -o FILE (or '-o -' for stdout), or --out-dir DIR")
    elif jobs != 1:
        raise UsageError("--jobs runs several trainings: give several tickets with --out-dir")
    from elth_cli.train.job import DataOptions, Setup

    setup = Setup(DataOptions(dataset, str(data_dir) if data_dir else None, download, workers), recipe_options(options),
                  options["device"], options["precision"], dist_timeout)
    run = RunOptions(**run_flags(options), resume="require" if resume else "never" if restart else "auto")
    if several:
        assert out_dir is not None
        _train_several(ticket_paths, out_dir, jobs, setup, run, new_head, force, json_out, quiet)
    else:
        assert output is not None
        _train_one(ticket_paths[0], output, checkpoint, log_jsonl, setup, run, new_head, force, json_out, quiet)


def _train_one(source: str, output: str, checkpoint: Optional[Path], log_jsonl: Optional[Path], setup: Any, run: Any,
               new_head: bool, force: bool, json_out: bool, quiet: bool) -> None:
    """``train TICKET -o OUT``: the one training job, then its summary (rank 0)."""
    from elth_cli.report import TrainProgress
    from elth_cli.train.checkpoint import checkpoint_path_for
    from elth_cli.train.job import TrainJob, train_file
    from elth_cli.train.provenance import train_summary

    check_stdout_use(output, json_out)
    ckpt = checkpoint if checkpoint is not None else (None if output == STDIO else checkpoint_path_for(output))
    job = TrainJob(source, output, ckpt, log_jsonl, setup, new_head, run.replace(log=TrainProgress(quiet)), force)
    with report_stop("train"):
        result = train_file(job)
    if detect_launch().rank != 0:
        return
    trained, log = result.ticket, Log(quiet)
    warning = empty_layers_warning(trained, output)
    if warning:
        log.warn(warning)
    if json_out:
        print_json({**train_summary(trained, output, result.sha256), "reused": result.reused})
        return
    m = trained.metrics or {}
    ips = m.get("images_per_s")
    log.info(f"{'already ' if result.reused else ''}trained {trained.arch} on {result.cfg.dataset}: test accuracy "
             f"{fmt_pct(m.get('test_acc'))} (best {fmt_pct(m.get('best_test_acc'))}), {fmt_int(m.get('steps', 0))} "
             f"steps in {m.get('wall_time_s', 0):.1f} s{f', {ips:,.0f} img/s' if ips else ''} ({result.cfg.precision} "
             f"on {m.get('device')}) -> {output if output != STDIO else 'stdout'}")


def _train_several(paths: list[str], out_dir: Path, jobs: int, setup: Any, run: Any, new_head: bool, force: bool,
                   json_out: bool, quiet: bool) -> None:
    """``train T1 T2 ... --out-dir DIR --jobs N``: one training job per ticket on the worker pool."""
    from elth_cli.report import JobProgress
    from elth_cli.runtime import pool
    from elth_cli.runtime.slots import plan_slots

    if detect_launch().distributed:
        raise UsageError("several tickets are trained by one process with --jobs; start it without torchrun or srun")
    slots = plan_slots(min(jobs, len(paths)), setup.device)
    if setup.overrides.get("compile") and slots[0].device == "cpu" and slots[0].threads == 1:
        raise UsageError("--compile with one CPU thread per worker crashed torch on small inputs (docs/performance.md); "
                         "use fewer --jobs or drop --compile")
    from elth_cli.train import several
    from elth_cli.train.job import TrainJob

    items = several.plan_items(paths, out_dir)
    base = TrainJob("", "", setup=setup, new_head=new_head, run=run, force=force)
    several.check_request(base)
    several.check_sources(items)
    several.make_out_dir(out_dir)  # only once the command line is known to be good
    log = Log(quiet)
    log.info(f"training {plural(len(items), 'ticket')} into {out_dir} with {plural(len(slots), 'worker')}")

    def made(outcome: Any) -> str:
        v = outcome.value
        return f"{'already trained, ' if v['reused'] else ''}test acc {fmt_pct(v['test_acc'])} -> {v['output']}"

    with report_stop("train"):
        result = pool.run_jobs(several.train_jobs(items, base), slots, JobProgress(log, made))
        _print_jobs(result, items, out_dir, len(slots), json_out)
        result.check("trainings")


def _print_jobs(result: Any, items: list[Any], out_dir: Path, workers: int, json_out: bool) -> None:
    pairs = list(zip(result.outcomes.values(), items))
    if json_out:
        print_json({"out_dir": str(out_dir), "jobs": workers, "results": [
            {"ticket": item.source, "output": item.output, "status": o.status, "message": o.message or None,
             "seconds": o.seconds, "worker": o.slot, **({"result": o.value} if o.ok else {})} for o, item in pairs]})
        return
    rows = [(item.source, "reused" if o.ok and o.value["reused"] else o.status, fmt_pct((o.value or {}).get("test_acc")),
             f"{o.seconds:.1f}", item.output if o.ok else o.message) for o, item in pairs]
    stdout_console().print(make_table(["ticket", "status", "test acc", "seconds", "output"], rows,
                                      right=["test acc", "seconds"]))


@command("eval")
def eval_cmd(
    ticket_path: Annotated[str, typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin).")],
    split: Annotated[str, typer.Option("--split", rich_help_panel=DATA, help="test or train (unaugmented).")] = "test",
    weights: Annotated[str, typer.Option("--weights", help="trained, or init (the weights at the rewind step).")] = "trained",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size (default: the one "
                          "training evaluated with).")] = None,
    dataset: DatasetOpt = None,
    resize: EvalResizeOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", rich_help_panel="Devices", help="auto (the training "
                         "precision on the same kind of device, else bf16 on CUDA / fp32 on CPU), bf16, fp16 or "
                         "fp32.")] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a ticket: top-1 accuracy (top-5 with more than 10 classes) and mean loss, BN in eval mode."""
    from elth_cli.ticket import Ticket
    from elth_cli.train.evaluation import evaluate_ticket
    from elth_cli.train.job import DataOptions

    if detect_launch().distributed:  # every rank would evaluate the whole set and print it
        raise UsageError("elth eval runs in one process; start it without torchrun or srun")
    ticket = Ticket.load(ticket_path)
    data = DataOptions(dataset, str(data_dir) if data_dir else None, download, workers)
    doc = {"ticket": ticket_path, **evaluate_ticket(ticket, data, split, weights, batch_size, device, precision, resize)}
    if json_out:
        print_json(doc)
        return
    top5 = f", top-5 {fmt_pct(doc['top5'])}" if "top5" in doc else ""
    stdout_console().print(
        f"{ticket.arch} ({weights} weights) on {doc['dataset']} {split}: accuracy {fmt_pct(doc['accuracy'])}{top5}, "
        f"loss {doc['loss']:.4f} ({fmt_int(doc['examples'])} images, {doc['precision']} on {doc['device']})", markup=False)
