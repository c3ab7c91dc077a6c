"""``elth find``: IMP, early-bird, dynamic sparse training and the one-shot baselines. The methods, their kinds
and the options each uses are the registry's (:mod:`elth_cli.find.methods`); this module parses, refuses an
option the method does not use, runs the method's job and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elth_cli import archs
from elth_cli.cli.app import command, report_stop
from elth_cli.cli.params import (DATA, METHOD, OUTPUT, DataDirOpt, DistTimeoutOpt, DownloadOpt, ForceOpt, JsonOpt,
                                 QuietOpt, WorkersOpt, check_stdout_use, complete_choices, flag_of, given_options,
                                 recipe_options, run_flags, with_fields)
from elth_cli.cli.render import empty_layers_warning
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO
from elth_cli.find import methods
from elth_cli.report import Log, fmt_flops, fmt_int, fmt_pct, make_table, print_json, stderr_console, stdout_console
from elth_cli.runtime.launch import detect_launch
from elth_cli.train.config import TrainConfig, check_seed
from elth_cli.train.options import RunOptions


def _opt(*decls: str, help: str, panel: str = METHOD, **extra: Any) -> Any:
    return typer.Option(*decls, help=help, rich_help_panel=panel, **extra)


@command("find")
@with_fields(TrainConfig, RunOptions)
def find(
    ctx: typer.Context,
    method: Annotated[str, _opt("--method", "-m", autocompletion=complete_choices("method"), help="imp (iterative "
                      "magnitude pruning with rewinding), early-bird (prune once when the mask settles), dynamic sparse "
                      "training (rigl, set, dpf), a one-shot baseline: random, magnitude, snip, grasp, synflow, or "
                      "reinit (the random reinitialisation control: --like's mask with new weights).")] = "imp",
    arch: Annotated[Optional[str], _opt("--arch", "-a", autocompletion=complete_choices("arch"), help="Architecture "
                    "(elth archs lists them); baselines take it from --from when given, reinit from --like.")] = None,
    sparsity: Annotated[Optional[float], _opt("--sparsity", help="Fraction of prunable weights pruned, in [0, 1); imp: "
                        "the last round prunes to exactly this.")] = None,
    rounds: Annotated[Optional[int], _opt("--rounds", help="imp: pruning rounds after the dense round 0 "
                      "(sparsity 1-(1-p)^r).")] = None,
    prune_rate: Annotated[float, _opt("--prune-rate", help="imp: fraction of the remaining weights pruned per "
                          "round.")] = 0.2,
    rewind: Annotated[str, _opt("--rewind", help="imp, early-bird: training step the survivors rewind to: 1000it, 2ep or "
                      "0 (the initialisation).")] = "0",
    exclude: Annotated[Optional[list[str]], _opt("--exclude", metavar="KEY", help="Prunable weights kept dense (repeat "
                       "the option); default: fc.weight for VGGs, nothing for ResNets.")] = None,
    early_bird: Annotated[bool, _opt("--early-bird", help="imp: train each round only until its next mask has settled "
                          "(--window, --epsilon), then prune and rewind.")] = False,
    window: Annotated[Optional[int], _opt("--window", help="early-bird: epochs whose mask distances must all be below "
                      "--epsilon (default 5, You et al. 2020).")] = None,
    epsilon: Annotated[Optional[float], _opt("--epsilon", help="early-bird: largest mask distance (Hamming over the "
                       "kept weights) that counts as settled (default 0.1, You et al. 2020).")] = None,
    distribution: Annotated[Optional[str], _opt("--distribution", help="How sparsity spreads over the layers. random: "
                            "layerwise (every tensor at the same rate, the paper's baseline; default), global or erk "
                            "(Erdos-Renyi-Kernel); rigl/set: erk (default) or layerwise.")] = None,
    update_every: Annotated[Optional[int], _opt("--update-every", help="rigl/set/dpf: steps between mask updates "
                            "(default 100 for rigl/set, 16 for dpf).")] = None,
    update_until: Annotated[Optional[float], _opt("--update-until", help="rigl/set/dpf: fraction of training after "
                            "which the mask is fixed (dpf reaches --sparsity there; default 0.75).")] = None,
    drop_fraction: Annotated[Optional[float], _opt("--drop-fraction", help="rigl/set: fraction of each layer's active "
                             "weights rewired at the first update, decaying by cosine to 0 (default 0.3).")] = None,
    from_ticket: Annotated[Optional[str], _opt("--from", help="Baselines: prune at this ticket's init (rewind) "
                           "weights, e.g. an IMP run's round-00.safetensors.")] = None,
    like: Annotated[Optional[str], _opt("--like", help="Baselines: match this ticket's sparsity (instead of "
                    "--sparsity); reinit: the ticket whose mask gets new init weights.")] = None,
    match: Annotated[str, _opt("--match", help="With --like: overall, or layerwise (same count per layer).")] = "overall",
    batches: Annotated[int, _opt("--batches", help="snip/grasp: training batches whose gradients score the "
                       "weights.")] = 10,
    iterations: Annotated[int, _opt("--iterations", help="synflow: pruning iterations.")] = 100,
    pretrained: Annotated[Optional[str], _opt("--pretrained", metavar="FILE", help="Start from the weights in this "
                          "local file instead of a fresh init: .safetensors, or a .pth/.pt/.bin state dict (read with "
                          "weights_only=True); its keys and shapes must be --arch's exactly. Nothing is downloaded; "
                          "the ticket records the file's name and sha256.")] = None,
    dataset: Annotated[Optional[str], _opt("--dataset", "-d", panel=DATA, autocompletion=complete_choices("dataset"),
                       help="Data set: fixes input shape and class count; training methods train on it, snip/grasp "
                       "read a few batches of it.")] = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    dist_timeout: DistTimeoutOpt = 300.0,
    output: Annotated[Optional[str], _opt("-o", "--output", panel=OUTPUT, help="Output ticket ('-' for stdout); for "
                      "imp, a copy of the final round's ticket.")] = None,
    out_dir: Annotated[Optional[Path], _opt("--out-dir", panel=OUTPUT, help="imp: folder for one ticket per round, "
                       "find.jsonl and checkpoints; re-running the same command resumes.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Find a ticket: IMP with rewinding (one ticket per round), early-bird, dynamic sparse training, or a one-shot
    pruning baseline.

    imp trains the dense network (round 0), then each round prunes --prune-rate of the remaining weights by global
    magnitude, rewinds the survivors to the --rewind step and trains again (every flag of elth train applies);
    with --early-bird each round stops once its next mask has settled. early-bird trains until the magnitude mask
    at --sparsity settles, then prunes once and rewinds (an untrained ticket). rigl, set and dpf train once from
    scratch while the mask moves (a trained ticket). Baselines prune once at --from's init weights (or a fresh
    seeded network of --arch) to --sparsity or --like's sparsity: random, magnitude, snip, grasp (original sign
    convention), synflow (iterative, data-free). reinit, the random reinitialisation control, keeps --like's mask
    and draws new init weights from --seed (another seed than the ticket's own).

    imp runs data-parallel with several processes (torchrun --nproc-per-node N -m elth_cli find ..., or srun):
    rank 0 prunes and writes, every rank trains; --batch-size is the global batch.
    """
    from elth_cli.find.methods import FindRequest
    from elth_cli.train.job import DataOptions, Setup

    found = methods.method(method)
    _check_find(ctx, found, output, json_out, sparsity, arch, dataset, like, data_dir, pretrained)
    check_seed(options["seed"])  # the one-shot methods take it without a training config
    request = FindRequest.from_options({**locals(), **options, "batch_size": options.get("batch_size")})
    setup = Setup(DataOptions(dataset, str(data_dir) if data_dir else None, download, workers), recipe_options(options),
                  options["device"], options["precision"], dist_timeout)
    run = RunOptions(**run_flags(options))
    runner = {methods.IMP: _find_imp, methods.SEARCH: _find_search, methods.BASELINE: _find_baseline}[found.kind]
    runner(request, setup, run, output, out_dir, force, json_out, quiet)


def _check_find(ctx: typer.Context, found: methods.Method, output: Optional[str], json_out: bool,
                sparsity: Optional[float], arch: Optional[str], dataset: Optional[str], like: Optional[str],
                data_dir: Optional[Path], pretrained: Optional[str] = None) -> None:
    """Before any work: options the method does not use, stdout shared, the values that can be checked alone."""
    from elth_cli import data
    from elth_cli.prune import check_sparsity

    given = given_options(ctx)
    for option, why in methods.refused_options(found.name, given):
        raise UsageError(f"--method {found.name} {why}: drop {flag_of(ctx, option)}")
    for option, users in methods.unused_options(found.name, given):
        raise UsageError(f"{flag_of(ctx, option)} is for {methods.describe_users(users)}; --method {found.name} does "
                         "not use it")
    if "match" in given and like is None:
        raise UsageError("--match says how to match --like's sparsity; give --like TICKET or drop --match")
    if detect_launch().distributed and found.kind != methods.IMP:
        raise UsageError(f"--method {found.name} runs in one process; start it without torchrun or srun "
                         "(only imp trains data-parallel)")
    if output is not None:
        check_stdout_use(output, json_out)
    if sparsity is not None:
        check_sparsity(sparsity)
    if arch is not None:
        archs.resolve_arch(arch)  # an unknown name is the first thing to report
    if dataset is not None:
        data.get_dataset_info(dataset, str(data_dir) if data_dir else None)
    if pretrained is not None and not Path(pretrained).is_file():
        raise UsageError(f"--pretrained {pretrained}: no such file")


def _say(quiet: bool, ticket: Any, where: Optional[str], line: str) -> None:
    warning = empty_layers_warning(ticket, where or "")
    if warning:
        Log().warn(warning)
    Log(quiet).info(f"{line} -> {where if where != STDIO else 'stdout'}")


def _find_imp(request: Any, setup: Any, run: Any, output: Optional[str], out_dir: Optional[Path], force: bool,
              json_out: bool, quiet: bool) -> None:
    """``find --method imp``: the rounds into ``--out-dir``, the final one copied to ``-o``, a table."""
    from elth_cli.find import imp
    from elth_cli.report import TrainProgress

    methods.require("imp", {"--arch": request.arch, "--dataset": setup.data.dataset, "--out-dir": out_dir})
    info = _dataset_info(setup)
    opts = imp.options_from(request, archs.resolve_arch(request.arch).name, info.name)
    log = Log(quiet or detect_launch().rank != 0)

    def show(rec: Any) -> None:
        log.info(f"round {rec.round:2d}: sparsity {fmt_pct(rec.sparsity)}, test acc {fmt_pct(rec.test_acc)}, "
                 f"{rec.seconds:.1f} s -> {rec.path}")

    with report_stop("find"):
        result = imp.imp_job(opts, out_dir, setup, run.replace(log=TrainProgress(log.quiet)), output=output,
                             force=force, on_round=show)
    if detect_launch().rank != 0:
        return
    records, final = result.records, result.final
    warning = empty_layers_warning(final, str(out_dir))
    if warning:
        Log().warn(warning)
    if json_out:
        print_json({"method": "imp", "out_dir": str(out_dir), "output": output, "sha256": final.sha256,
                    "arch": final.arch, "rounds": [r.as_dict() for r in records]})
    elif not (quiet and output == STDIO):  # the table is data on stdout; with '-o -' a log line on stderr
        early = opts.early_bird
        columns = ["round", "sparsity", "test acc", "best", "steps", "seconds"] + (["early"] if early else [])
        rows = [(r.round, fmt_pct(r.sparsity), fmt_pct(r.test_acc), fmt_pct(r.best_test_acc), fmt_int(r.steps),
                 f"{r.seconds:.1f}", *(["yes" if r.stopped_early else "no"] if early else [])) for r in records]
        # With '-o -' stdout carries the ticket and nothing else: the table goes to stderr.
        console = stderr_console() if output == STDIO else stdout_console()
        console.print(make_table(columns, rows, right=columns[:6], title=f"IMP {final.arch} on {result.dataset}"
                                 + (" (early-bird rounds)" if early else "")))


def _dataset_info(setup: Any) -> Any:
    from elth_cli import data

    return data.get_dataset_info(setup.data.dataset, setup.data.data_dir)


def _find_search(request: Any, setup: Any, run: Any, output: Optional[str], out_dir: Optional[Path], force: bool,
                 json_out: bool, quiet: bool) -> None:
    """``find --method early-bird|rigl|set|dpf``: one training that makes the ticket."""
    from elth_cli.find.search import SearchJob, search_job
    from elth_cli.report import TrainProgress

    methods.require(request.method, {"--arch": request.arch, "--dataset": setup.data.dataset,
                                     "--sparsity": request.sparsity, "-o FILE": output})
    with report_stop("find"):
        result = search_job(SearchJob(request, output, setup, run.replace(log=TrainProgress(quiet)), force))
    ticket, m = result.ticket, result.ticket.metrics or {}
    if request.method == "early-bird":
        search = m["early_bird"]
        if json_out:
            print_json({"method": request.method, "output": output, "sha256": result.sha256, "arch": ticket.arch,
                        "sparsity": ticket.sparsity, "rewind_step": ticket.rewind_step, "early_bird": search,
                        "cost": ticket.cost, "reused": result.reused})
            return
        when = (f"mask settled at epoch {search['detected_epoch']}" if search["converged"]
                else "mask never settled: pruned after the whole recipe")
        _say(quiet, ticket, output, f"early-bird ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)}, {when}, "
             f"{fmt_int(search['steps'])} of {fmt_int(search['total_steps'])} steps, "
             f"{fmt_flops(ticket.cost.get('train_flops'))} FLOPs")
        return
    if json_out:
        print_json({"method": request.method, "output": output, "sha256": result.sha256, "arch": ticket.arch,
                    "sparsity": ticket.sparsity, "metrics": m, "cost": ticket.cost, "reused": result.reused})
        return
    _say(quiet, ticket, output, f"{request.method} ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)}, test "
         f"accuracy {fmt_pct(m.get('test_acc'))}, {len(m.get('mask_updates', []))} mask updates, "
         f"{fmt_flops(ticket.cost.get('train_flops'))} training FLOPs")


def _find_baseline(request: Any, setup: Any, run: Any, output: Optional[str], out_dir: Optional[Path], force: bool,
                   json_out: bool, quiet: bool) -> None:
    """``find --method random|magnitude|snip|grasp|synflow``: prune once, no training; ``reinit``: a ticket's
    mask with new weights."""
    from elth_cli.find.baselines import baseline_job
    from elth_cli.runtime.memory import map_large_blocks

    if output is None:
        raise UsageError(f"{request.method} writes one ticket: pass -o FILE")
    map_large_blocks()  # no training: what pruning frees goes back to the system
    result = baseline_job(request, output, setup, run.allow_empty_layers, force)
    ticket = result.ticket
    if json_out:
        print_json({"method": request.method, "output": output, "sha256": result.sha256, "arch": ticket.arch,
                    "sparsity": ticket.sparsity, "parents": ticket.parents, "reused": result.reused})
        return
    reinit = request.method == "reinit"
    what = f", the mask of {request.like} with new init weights (seed {request.seed})" if reinit else ""
    _say(quiet, ticket, output, f"{request.method} ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)}{what}")
