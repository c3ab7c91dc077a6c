"""The ``elth`` command line: thin typer commands that parse, call the core and print."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

import typer

# Only what --help and --version need is imported here: no torch. Commands import the core lazily.
from elth_cli import __version__, archs, stops
from elth_cli.cli_examples import epilog
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import (STDIO, check_distinct, check_output_path, check_side_file, is_epoch_log, stdout_left_unread,
                             write_bytes_atomic)
from elth_cli.launch import detect_launch
from elth_cli.report import Log, fmt_flops, fmt_int, fmt_pct, make_table, print_json, stderr_console, stdout_console
from elth_cli.train.config import CHECKPOINT_EVERY_S, TrainConfig, check_checkpoint_every, check_seed, config_overrides, recipe_hint

if TYPE_CHECKING:
    from elth_cli.ticket import Ticket

# typer >= 0.20 vendors click and derives its errors from TyperException; older typer uses click itself.
_PARSE_ERRORS: tuple[type[BaseException], ...] = ()
try:
    from typer.exceptions import TyperException

    _PARSE_ERRORS += (TyperException,)
except ImportError:  # pragma: no cover - depends on the installed typer
    pass
try:
    import click

    _PARSE_ERRORS += (click.ClickException,)
except ImportError:  # pragma: no cover
    pass

def _plain_argument_help() -> None:
    """typer >= 0.2x prints an argument's Python type after its name in --help (``TICKET <list[str]>``,
    ``SRC <str>``); the metavar already says what the argument is. Show the name alone."""
    argument = getattr(getattr(typer, "core", None), "TyperArgument", None)
    if argument is not None and hasattr(argument, "display_type_rich"):
        argument.display_type_rich = lambda self, ctx: None


_plain_argument_help()
_HELP_OPTIONS = ("-h", "--help")
_CONTEXT_SETTINGS = {"help_option_names": list(_HELP_OPTIONS)}
app = typer.Typer(
    name="elth",
    help="Find, stretch, squeeze and train lottery tickets (Elastic Lottery Ticket Hypothesis, Chen et al. 2021).\n\n"
    "Tickets are safetensors files (mask + init weights + provenance); commands chain through them, "
    "and '-' reads a ticket from stdin or writes it to stdout.",
    epilog=epilog(None),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Markdown re-flows docstring paragraphs (wrapped in the source) to the terminal width.
    rich_markup_mode=None,
    context_settings=_CONTEXT_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"elth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """elth: lottery tickets from the command line."""


# ----- shared option types ------------------------------------------------------------------------
OutOpt = Annotated[str, typer.Option("-o", "--output", help="Output ticket file ('-' for stdout).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout instead of text.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr (errors and "
                     "warnings still print); stdout is unchanged.")]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="ELTH_DATA", help="Folder holding the data sets (default: "
                 "$XDG_CACHE_HOME/elth/data, else ~/.cache/elth/data; docs/datasets.md)."),
]


def _config_option(name: str) -> Any:
    """The option of a TrainConfig field, as its metadata describes it (flag, help, type)."""
    flag = TrainConfig.flags()[name]
    hint = recipe_hint(name)  # the recipe decides these defaults: say what each recipe has
    return Annotated[flag.type, typer.Option(*flag.decls, help=f"{flag.help} [{hint}]" if hint else flag.help)]


def _check_stdout_use(output: str, json_out: bool) -> None:
    if output == STDIO and json_out:
        raise UsageError("--json and '-o -' both want stdout; write the ticket to a file or drop --json")


# ----- archs --------------------------------------------------------------------------------------
@app.command("archs", epilog=epilog("archs"))
def archs_cmd(
    json_out: JsonOpt = False,
) -> None:
    """List the architectures: name, family, blocks per stage, parameters, forward MACs.

    CIFAR ResNets take any depth 6n+2 (resnet8, resnet14, ...) and a width suffix (resnet20-w4);
    VGGs take a width too (vgg16-w16). Counts are for each family's native input (CIFAR-10: 3x32x32,
    10 classes; ImageNet: 3x224x224, 1000 classes). MACs are the dense forward multiply-accumulates
    of one sample through the conv and linear layers (FLOPs = 2 x MACs); --json gives them exactly.
    """
    summaries = [archs.summarize(s) for s in archs.standard_archs()]
    if json_out:
        print_json([s.as_dict() for s in summaries])
        return

    def fmt_macs(n: int) -> str:  # 40.8M, 1.81G
        return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"

    rows = [(s.name, s.family, s.blocks_per_stage and "/".join(map(str, s.blocks_per_stage)), s.width,
             fmt_int(s.parameters), fmt_int(s.prunable), fmt_macs(s.macs)) for s in summaries]
    columns = ["name", "family", "blocks/stage", "width", "parameters", "prunable", "MACs"]
    stdout_console().print(make_table(columns, rows, right=["width", "parameters", "prunable", "MACs"]))


# ----- info ---------------------------------------------------------------------------------------
def ticket_summary(ticket: Ticket) -> dict:
    """Everything ``elth info`` shows, as a JSON-ready dict."""
    # A list, in the model's order (a JSON object's keys would be sorted by name).
    layers = [{"key": k, "pruned": p, "total": t, "sparsity": p / t if t else 0.0}
              for k, (p, t) in ticket.layer_sparsity().items()]
    return {
        **ticket.identity(),
        "parents": ticket.parents,
        "transform": ticket.transform,
        "hparams": ticket.hparams,
        "metrics": ticket.metrics,
        "cost": ticket.cost,
        "config": ticket.config,
        "created": ticket.created,
        "elth_version": ticket.elth_version,
        "format_version": ticket.format_version,
        "integrity": ticket.integrity,
        "layers": layers,
    }


def _config_lines(config: Optional[dict]) -> list[str]:
    """The ``config`` section of ``elth info``: how the run that made the ticket was set up."""
    if not config:
        return []
    env = config.get("environment") or {}
    processes = env.get("world_size", 1)
    launch = "one process" if processes == 1 else f"{processes} processes ({env.get('launcher')}, {env.get('backend')})"
    lines = [f"config      elth {config.get('command')} on {env.get('device')}, {launch}, host {env.get('hostname')}",
             f"versions    elth {env.get('elth')}, torch {env.get('torch')}, CUDA {env.get('cuda') or '-'}, "
             f"cuDNN {env.get('cudnn') or '-'}, Python {env.get('python')}"]
    hparams = config.get("hparams") or {}
    if hparams:
        lines.append("hparams     " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(hparams.items())))
    return lines


@app.command(epilog=epilog("info"))
def info(
    paths: Annotated[list[str], typer.Argument(metavar="TICKET_OR_RUN", help="Ticket files ('-' for stdin) or IMP "
                     "run folders (the --out-dir of find --method imp).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a ticket: architecture, sparsity overall and per layer, rewind step, provenance, metrics, and the
    configuration of the run that made it (hyperparameters, versions, device, processes, host). An IMP run folder:
    its rounds (sparsity, test accuracy, steps, seconds, file) and the round in progress. Several: one table of
    every ticket (a run folder gives its rounds)."""
    if len(paths) == 1 and paths[0] != STDIO and Path(paths[0]).is_dir():
        _info_run(paths[0], json_out)
    elif len(paths) == 1:
        _info_ticket(paths[0], json_out)
    else:
        _info_many(paths, json_out)


def _info_ticket(ticket_path: str, json_out: bool) -> None:
    """``elth info TICKET``: everything about one ticket."""
    from elth_cli.ticket import Ticket

    ticket = Ticket.load(ticket_path)
    doc = ticket_summary(ticket)
    if json_out:
        print_json(doc)
        return
    con = stdout_console()
    con.print(f"ticket      {ticket_path}  (sha256 {ticket.sha256[:16]}...)", markup=False)
    con.print(f"arch        {ticket.arch}  ({ticket.family}, blocks/stage {ticket.spec.depth_label})", markup=False)
    con.print(f"input       {'x'.join(map(str, ticket.input_shape))}, {ticket.num_classes} classes"
              + (f", dataset {ticket.dataset}" if ticket.dataset else ""), markup=False)
    con.print(f"sparsity    {fmt_pct(ticket.sparsity)} pruned ({fmt_pct(1 - ticket.sparsity)} kept)", markup=False)
    con.print(f"method      {ticket.method}, rewind step {ticket.rewind_step}, "
              f"{'trained' if ticket.is_trained else 'untrained'}", markup=False)
    for p in ticket.parents:
        con.print(f"parent      {p.get('arch')} ({p.get('method')}, {fmt_pct(p.get('sparsity'))}) sha256 {str(p.get('sha256'))[:16]}...", markup=False)
    if ticket.transform:
        t = ticket.transform
        con.print(f"transform   {t.get('kind')} {t.get('source_arch')} -> {t.get('target_arch')}, "
                  f"strategy {t.get('strategy')}, mapping {t.get('mapping_string')} (elth's numbering: --mapping)",
                  markup=False)
        if "reference_mapping" in t:
            ref = t["reference_mapping"]
            con.print(f"reference   --block_mapping '{ref}' (ElasticLTH's change_depth; elth: --reference-mapping)" if ref else
                      f"reference   no --block_mapping: {t.get('reference_mapping_note')}", markup=False)
    if ticket.metrics:
        shown = {k: f"[{len(v)} entries]" if isinstance(v, list) else v for k, v in ticket.metrics.items()}
        con.print("metrics     " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())), markup=False)
    if ticket.cost:
        con.print("cost        " + ", ".join(f"{k}={v}" for k, v in sorted(ticket.cost.items())), markup=False)
    for line in _config_lines(ticket.config):
        con.print(line, markup=False)
    con.print(f"created     {ticket.created} by elth {ticket.elth_version}", markup=False)
    from elth_cli.container import INTEGRITY_NOTES

    con.print(f"file        format {ticket.format_version}: {INTEGRITY_NOTES[ticket.integrity]}", markup=False)
    rows = [(v["key"], fmt_int(v["total"]), fmt_int(v["total"] - v["pruned"]), fmt_pct(v["sparsity"]))
            for v in doc["layers"]]
    con.print(make_table(["layer", "weights", "kept", "sparsity"], rows, right=["weights", "kept", "sparsity"]))


def _info_run(path: str, json_out: bool) -> None:
    """``elth info RUN_DIR``: an IMP run's rounds."""
    from elth_cli.runfolder import run_summary

    doc = run_summary(path)
    if json_out:
        print_json(doc)
        return
    imp, con = doc["arguments"]["imp"], stdout_console()
    plan = f"--rounds {imp['rounds']}" if imp.get("rounds") is not None else f"--sparsity {imp['sparsity']}"
    con.print(f"run         {path}  (IMP {doc['arch']} on {doc['dataset']}, {doc['finished_rounds']} of "
              f"{doc['planned_rounds'] + 1} rounds finished; {plan}, --prune-rate {imp.get('prune_rate')}, "
              f"--rewind {imp.get('rewind')}{', early-bird rounds' if imp.get('early_bird') else ''})", markup=False)
    if doc["in_progress"]:
        p = doc["in_progress"]
        con.print(f"in progress round {p['round']}, step {p['step']} ({p['checkpoint']}); re-run the same find "
                  "command to resume", markup=False)
    columns = ["round", "sparsity", "test acc", "steps", "seconds", "file"]
    rows = [(r["round"], fmt_pct(r["sparsity"]), fmt_pct(r["test_acc"]), fmt_int(r["steps"]), f"{r['seconds']:.1f}",
             r["path"]) for r in doc["rounds"]]
    con.print(make_table(columns, rows, right=columns[:5]))


def _info_many(paths: list[str], json_out: bool) -> None:
    """``elth info A B ...``: one row per ticket (a run folder gives one per round)."""
    from elth_cli.ticket import Ticket

    if paths.count(STDIO) > 1:
        raise UsageError("only one ticket can come from stdin ('-')")
    files = _expand_runs(paths)
    docs = []
    for f in files:
        t = Ticket.load(f)
        docs.append({"path": "stdin" if f == STDIO else f, **t.identity(), "test_acc": (t.metrics or {}).get("test_acc")})
    if json_out:
        print_json(docs)
        return
    columns = ["ticket", "arch", "method", "sparsity", "rewind", "trained", "test acc", "sha256"]
    rows = [(d["path"], d["arch"], d["method"], fmt_pct(d["sparsity"]), d["rewind_step"], "yes" if d["trained"] else "no",
             fmt_pct(d["test_acc"]), str(d.get("sha256") or "")[:12]) for d in docs]
    stdout_console().print(make_table(columns, rows, right=["sparsity", "rewind", "test acc"]))


# ----- stretch / squeeze --------------------------------------------------------------------------
def _transform_command(kind: str, source: str, target: str, output: str, strategy: Optional[str],
                       mapping: Optional[str], reference_mapping: Optional[str], force: bool, json_out: bool,
                       quiet: bool) -> None:
    from elth_cli import elastic
    from elth_cli.ticket import Ticket

    _check_stdout_use(output, json_out)
    check_output_path(output, force)
    log = Log(quiet)
    ticket = Ticket.load(source)
    plan = elastic.plan_transform(ticket.spec, target, kind, strategy, mapping, reference_mapping)
    for note in plan.notes:
        log.warn(note)
    other = elastic.as_reference_reading(mapping, plan.source, plan.target) if mapping is not None else None
    if other is not None:  # valid in both numberings, with two meanings: say which one was taken
        log.warn(f"--mapping {mapping} is read in elth's numbering ({elastic.format_mapping(plan.mapping)}); in the "
                 f"reference's it would mean {other} in elth's: for that, pass it as --reference-mapping")
    result = elastic.apply_transform(ticket, plan)
    sha = result.save(output, force=force)
    summary = {
        "source": {"path": source, "arch": ticket.arch, "sparsity": ticket.sparsity, "sha256": ticket.sha256},
        "target": {"path": output, "arch": result.arch, "sparsity": result.sparsity, "sha256": sha},
        "transform": plan.describe(),
    }
    if json_out:
        print_json(summary)
        return
    log.info(f"{kind} {ticket.arch} -> {result.arch} ({plan.strategy})")
    for s, stage in enumerate(plan.mapping):
        blocks = " ".join(f"B{i}" for i in stage)
        log.info(f"  stage {s}: {plan.source.depths[s]} -> {len(stage)} blocks: {blocks}")
    log.info(f"  mapping  {elastic.format_mapping(plan.mapping)} (elth's numbering: --mapping)")
    ref, why = elastic.reference_mapping(plan.source, plan.mapping)
    log.info(f"  reference --block_mapping '{ref}' (the reference's numbering: --reference-mapping)" if ref else
             f"  no reference --block_mapping: {why}")
    log.info(f"  sparsity {fmt_pct(ticket.sparsity)} -> {fmt_pct(result.sparsity)}")
    log.info(f"wrote {output if output != STDIO else 'stdout'}")


SrcArg = Annotated[str, typer.Argument(metavar="SRC", help="Source ticket file ('-' for stdin).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target architecture, resolved within the source's family.")]
MappingOpt = Annotated[
    Optional[str],
    typer.Option("--mapping", help="Explicit block mapping 'src:dst,dst;src:dst' in elth's numbering: local block "
                 "ids from 0 within a stage (an MLP's or FC stack's hidden layers 0..n-1); one string for every "
                 "stage, or one per stage joined by '|'. What elth info shows as 'mapping'."),
]
ReferenceMappingOpt = Annotated[
    Optional[str],
    typer.Option("--reference-mapping", help="The mapping in the reference's own --block_mapping numbering "
                 "(ElasticLTH; what elth info shows as 'reference'): the same as --mapping except for MLPs "
                 "(fc_layers positions, the narrow layer named too) and VGGs with an FC stack (classifier places, "
                 "2j for hidden layer j)."),
]


@app.command(epilog=epilog("stretch"))
def stretch(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="append (default; extra blocks cycle "
                        "through the source's non-first blocks) or interpolate (each block repeated in place).")] = None,
    mapping: MappingOpt = None,
    reference_mapping: ReferenceMappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stretch a ticket to a deeper network of its family by replicating blocks (mask and init weights)."""
    _transform_command("stretch", source, target, output, strategy, mapping, reference_mapping, force, json_out, quiet)


@app.command(epilog=epilog("squeeze"))
def squeeze(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="keep-first (default; keeps blocks "
                        "0..m-1, the inverse of append) or spaced (evenly spaced blocks, always block 0).")] = None,
    mapping: MappingOpt = None,
    reference_mapping: ReferenceMappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Squeeze a ticket to a shallower network of its family by dropping blocks, keeping their order."""
    _transform_command("squeeze", source, target, output, strategy, mapping, reference_mapping, force, json_out, quiet)


# ----- compare ------------------------------------------------------------------------------------
def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _mean_std(s: dict, pct: bool = True) -> str:
    """``96.94% +- 0.52`` (mean +- standard deviation over the replicates)."""
    if s["mean"] is None:
        return "-"
    mean = fmt_pct(s["mean"]) if pct else fmt_flops(s["mean"])
    if s["std"] is None:
        return mean
    return f"{mean} +- {100 * s['std']:.2f}" if pct else f"{mean} +- {fmt_flops(s['std'])}"


def _print_replicates(doc: dict, letter: Callable[[int], str]) -> None:
    """Tickets that differ only by seed: one row per group, mean +- standard deviation over its members."""
    if not doc["replicates"]:
        return
    rows = [(" ".join(letter(i) for i in g["members"]), g["method"], g["arch"], g["test_acc"]["n"],
             ", ".join("/".join(map(str, s)) for s in g["seeds"]), _mean_std(g["sparsity"]), _mean_std(g["test_acc"]),
             _mean_std(g["flops_total"], pct=False)) for g in doc["replicates"]]
    columns = ["tickets", "method", "arch", "n", "seeds", "sparsity", "test acc", "FLOPs"]
    stdout_console().print(make_table(columns, rows, right=["n", "sparsity", "test acc", "FLOPs"],
                                      title="replicates: tickets that differ only by seed (mean +- standard "
                                            "deviation over n, n-1 in the denominator)"))


def _print_compare(doc: dict) -> None:
    """The text form of ``elth compare``: tickets, mask overlap, aligned profile, interpolation."""
    con = stdout_console()
    letter = lambda i: chr(65 + i) if i < 26 else str(i)  # noqa: E731 - tickets are A, B, C... in every table
    rows = []
    for i, t in enumerate(doc["tickets"]):
        parents = ", ".join(f"{(p['sha256'] or '?')[:12]} {p['arch']}" for p in t["parents"]) or "-"
        cost = t["cost"]
        cost_text = "-" if all(cost.get(k) is None for k in ("train_steps", "train_seconds", "trainings")) else (
            f"{fmt_int(cost.get('train_steps') or 0)} steps, {float(cost.get('train_seconds') or 0):.0f} s, "
            f"{_plural(cost.get('trainings') or 0, 'training')}")
        loss = "-" if t["test_loss"] is None else f"{t['test_loss']:.4f}"
        flops = t["flops"]
        relative = "-" if flops["relative"] is None else f"{flops['relative']:.2f}x"
        rows.append((letter(i), t["name"], t["arch"], fmt_pct(t["sparsity"]), t["method"],
                     t["rewind_step"], parents, "yes" if t["trained"] else "no", fmt_pct(t["test_acc"]), loss, cost_text,
                     fmt_flops(flops["total"]), relative))
    con.print(make_table(["", "ticket", "arch", "sparsity", "method", "rewind", "parents (sha256 arch)", "trained",
                          "test acc", "test loss", "cost to obtain", "FLOPs", "x dense"], rows,
                         title="tickets (FLOPs: to obtain and train; x dense: over one dense training of the arch)",
                         right=["sparsity", "rewind", "test acc", "test loss", "FLOPs", "x dense"]))
    _print_replicates(doc, letter)
    if len(doc["tickets"]) == 2 and doc["pairs"]:
        pair = doc["pairs"][0]
        lrows = [(l["key"], fmt_int(l["weights"]), fmt_pct(l["sparsity_a"]), fmt_pct(l["sparsity_b"]),
                  f"{l['jaccard']:.4f}", f"{l['expected_random_jaccard']:.4f}", fmt_int(l["hamming"]))
                 for l in pair["layers"]]
        con.print(make_table(["layer", "weights", "sparsity A", "sparsity B", "jaccard", "random", "hamming"], lrows,
                             title="per layer (random: expected jaccard of independent random masks, same densities)",
                             right=["weights", "sparsity A", "sparsity B", "jaccard", "random", "hamming"]))
    if doc["pairs"]:
        prows = [(f"{letter(p['a'])}-{letter(p['b'])}", f"{p['jaccard']:.4f}", f"{p['expected_random_jaccard']:.4f}",
                  "-" if p["jaccard_over_random"] is None else f"{p['jaccard_over_random']:.2f}x",
                  fmt_int(p["hamming"]), fmt_pct(p["hamming_fraction"])) for p in doc["pairs"]]
        con.print(make_table(["pair", "jaccard", "random", "vs random", "hamming", "hamming %"], prows,
                             title="mask overlap of kept weights (same architecture)",
                             right=["jaccard", "random", "vs random", "hamming", "hamming %"]))
    if not doc["same_arch"] or len(doc["tickets"]) > 2:
        names = [f"{letter(i)} {t['arch']}" for i, t in enumerate(doc["tickets"])]
        prof = []
        for r in doc["profile"]:
            cells = []
            for s, src in zip(r["sparsity"], r["copied_from"]):
                cell = "-" if s is None else fmt_pct(s)
                if src is not None and src != f"s{r['stage']}.b{r['block']}":
                    cell += f" (<- {src})"
                cells.append(cell)
            prof.append((r["label"], *cells))
        con.print(make_table(["position", *names], prof, title="sparsity by aligned position ('-': no such layer; "
                             "(<- sX.bY): copied from that source block)", right=names))
    interp = doc.get("interpolation")
    if interp:
        irows = [(f"{p['alpha']:.3f}", fmt_pct(p["accuracy"]), f"{p['loss']:.4f}") for p in interp["points"]]
        bn = (f"BN statistics recomputed on {interp['bn_batches']} training batches of {interp['bn_batch_size']}"
              if interp["recompute_bn"] else "BN statistics interpolated")
        con.print(make_table(["alpha", f"{interp['split']} acc", "loss"], irows, right=["alpha", f"{interp['split']} acc", "loss"],
                             title=f"linear interpolation A -> B on {interp['dataset']} ({bn})"))
        con.print(f"error barrier {fmt_pct(interp['error_barrier'])} (max over alpha of the error above the line "
                  f"between the end points); vs the end points' mean {fmt_pct(interp['error_barrier_vs_mean'])}",
                  markup=False)


def _expand_runs(paths: list[str]) -> list[str]:
    """Ticket paths, with each IMP run folder replaced by its finished rounds' tickets."""
    from elth_cli.runfolder import run_summary

    out: list[str] = []
    for p in paths:
        out += [r["path"] for r in run_summary(p)["rounds"]] if p != STDIO and Path(p).is_dir() else [p]
    return out


EvalResizeOpt = Annotated[Optional[int], typer.Option("--resize", help="Resize every image to N x N (bilinear) for a "
                          "ticket made for that input size (default: the --resize its training recorded).")]


@app.command(epilog=epilog("compare"))
def compare(
    tickets: Annotated[list[str], typer.Argument(metavar="TICKET_OR_RUN", help="Two or more ticket files of one "
                       "family ('-' for stdin, once), or IMP run folders (each gives its rounds).")],
    json_out: JsonOpt = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a figure; the extension sets the format "
                    "(.png, .pdf, .svg). Needs matplotlib: pip install 'elth[plot]'.")] = None,
    plot_kind: Annotated[str, typer.Option("--plot-kind", help="accuracy (test accuracy against weights "
                         "remaining, log axis, error bars over seeds), layers (layer-wise sparsity), interpolation "
                         "(with --interpolate), or auto: every one the tickets allow, side by side.")] = "auto",
    interpolate: Annotated[bool, typer.Option("--interpolate", help="Evaluate the straight line between two "
                           "trained tickets with one mask (needs --dataset).")] = False,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Data set for --interpolate.")] = None,
    points: Annotated[int, typer.Option("--points", help="Interpolation points, alpha evenly spaced in [0, 1].")] = 11,
    recompute_bn: Annotated[bool, typer.Option("--recompute-bn/--no-recompute-bn", help="Recompute BatchNorm "
                            "statistics at every point (default) or use the interpolated ones.")] = True,
    bn_batches: Annotated[Optional[int], typer.Option("--bn-batches", help="Training batches for the BatchNorm "
                          "recompute (default: one whole epoch).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size of the BatchNorm recompute.")] = 128,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (for --interpolate).")] = "auto",
    resize: EvalResizeOpt = None,
    data_dir: DataDirOpt = None,
    download: Annotated[bool, typer.Option("--download", help="Download the data set if missing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --plot file if it exists.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare tickets: sparsity, provenance, accuracy and cost; mask overlap (Jaccard against the random
    expectation, Hamming) for one architecture; the layer-wise profile aligned by stage and block for
    different depths; with --interpolate, linear mode connectivity of two trainings of one ticket.
    """
    from elth_cli import compare as cmp
    from elth_cli import plots
    from elth_cli.ticket import Ticket

    if plot is not None:
        plots.require_matplotlib()  # before any work: a missing extra must not cost an interpolation
        plots.plot_format(plot)
        check_output_path(plot, force)
        if plot_kind == "interpolation" and not interpolate:
            raise UsageError("--plot-kind interpolation: it needs --interpolate")
    tickets = _expand_runs(tickets)
    if len(tickets) < 2:
        raise UsageError("compare needs at least two tickets")
    if tickets.count(STDIO) > 1:
        raise UsageError("only one ticket can come from stdin ('-')")
    if interpolate and dataset is None:
        raise UsageError("--interpolate needs --dataset (the data set to evaluate the interpolated weights on)")
    if dataset is not None and not interpolate:
        raise UsageError("--dataset is only used with --interpolate")
    if resize is not None and not interpolate:
        raise UsageError("--resize is only used with --interpolate")
    if interpolate and len(tickets) != 2:
        raise UsageError(f"--interpolate takes exactly two tickets, got {len(tickets)}")
    log = Log(quiet)
    names = ["stdin" if p == STDIO else p for p in tickets]
    loaded = [Ticket.load(p) for p in tickets]
    doc = cmp.compare_tickets(loaded, names)
    for first, later in doc["duplicates"]:  # the same run twice: not a seed replicate, not an interpolation
        Log().warn(f"{names[later]} is the same run as {names[first]} (same ticket, options and seeds): a "
                   "duplicate, counted once among replicates" + ("; the line between them is flat" if interpolate else ""))
    if interpolate:
        from elth_cli import data, interpolation
        from elth_cli.device import resolve_device

        interpolation.check_interpolable(loaded[0], loaded[1], (names[0], names[1]))
        if points < 2:
            raise UsageError(f"--points must be at least 2 (the two end points), got {points}")
        info = data.get_dataset_info(dataset, str(data_dir) if data_dir else None)
        size = data.resize_to_fit(info, loaded[0].input_shape, resize, (loaded[0].hparams or {}).get("resize"))
        data.check_compatible(data.resized(info, size), loaded[0].input_shape, loaded[0].num_classes)
        bundle = data.load_dataset(dataset, str(data_dir) if data_dir else None, download, resolve_device(device))
        bundle.set_resize(size)
        log.info(f"interpolating {names[0]} -> {names[1]} on {bundle.info.name}: {points} points"
                 + (", BatchNorm statistics recomputed at each" if recompute_bn else ""))
        doc["interpolation"] = interpolation.interpolate(
            loaded[0], loaded[1], bundle, points, recompute_bn=recompute_bn, bn_batches=bn_batches,
            batch_size=batch_size, names=(names[0], names[1]),
            progress=lambda a, p: log.info(f"  alpha {a:.3f}: accuracy {fmt_pct(p['accuracy'])}, loss {p['loss']:.4f}"))
    if plot is not None:
        drawn = plots.plot_comparison(doc, plot, plot_kind)
        log.info(f"wrote {plot} ({', '.join(drawn)})")
    if json_out:
        print_json(doc)
    else:
        _print_compare(doc)


# ----- import / export (open_lth run folders) ------------------------------------------------------
@app.command("import", epilog=epilog("import"))
def import_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="open_lth / ElasticLTH run folder (holds "
                       "mask.pth and `model_ep{E}_it{I}.pth`).")],
    output: OutOpt,
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture, elth's or open_lth's name "
                    "(resnet20, cifar_resnet_20, cifar_vgg_16).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Data set the run trained on (cifar10, "
                       "imagenet, ...): fixes input channels and classes (checked against the weights).")],
    init_step: Annotated[Optional[str], typer.Option("--init-step", help="Step of the init (rewind) weights: "
                         "1000it, 2ep218it or a file name (default: the earliest model file).")] = None,
    trained_step: Annotated[Optional[str], typer.Option("--trained-step", help="Step of the trained weights "
                            "(default: the latest model file; 'none' imports no trained weights).")] = None,
    steps_per_epoch: Annotated[Optional[int], typer.Option("--steps-per-epoch", help="Iterations per epoch of the "
                               "run (needed when a file's epoch is not 0, e.g. 391 for CIFAR-10 at batch 128).")] = None,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import an open_lth / ElasticLTH run folder as a ticket (method 'imported').

    .pth files are read with torch.load(weights_only=True): tensors only, never arbitrary pickled objects.
    """
    from elth_cli import interop

    _check_stdout_use(output, json_out)
    check_output_path(output, force)
    result = interop.import_run(run_dir, arch, dataset, data_dir=str(data_dir) if data_dir else None,
                                init_step=init_step, trained_step=trained_step, steps_per_epoch=steps_per_epoch)
    log = Log(quiet)
    for w in result.warnings:
        log.warn(w)
    sha = result.ticket.save(output, force=force)
    doc = {"source": str(run_dir), "output": output, "sha256": sha, "init_file": result.init_file,
           "trained_file": result.trained_file, "dense_keys": result.dense_keys, "zeroed_pruned": result.zeroed,
           **interop.summary(result.ticket)}
    if json_out:
        print_json(doc)
        return
    t = result.ticket
    log.info(f"imported {run_dir}: {t.arch}, sparsity {fmt_pct(t.sparsity)}, rewind step {t.rewind_step} "
             f"({result.init_file}), " + (f"trained {result.trained_file}" if result.trained_file else "untrained")
             + (f", dense: {', '.join(result.dense_keys)}" if result.dense_keys else ""))
    log.info(f"wrote {output if output != STDIO else 'stdout'}")


@app.command(epilog=epilog("export"))
def export(
    ticket_path: Annotated[str, typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin).")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Folder to create (open_lth run layout).")],
    trained_step: Annotated[Optional[str], typer.Option("--trained-step", help="Step to name the trained weights "
                            "with when the ticket does not record it (160ep, 62560it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a ticket as an open_lth run folder: mask.pth (int 0/1), `model_ep{E}_it{I}.pth` state dicts
    (init at the rewind step, trained at the final step) and sparsity_report.json."""
    from elth_cli import interop
    from elth_cli.ticket import Ticket

    ticket = Ticket.load(ticket_path)
    plan = interop.export_ticket(ticket, out_dir, force=force, trained_step=trained_step)
    doc = {"ticket": ticket_path, "sha256": ticket.sha256, "output": str(out_dir), "files": plan.files,
           **interop.summary(ticket)}
    if json_out:
        print_json(doc)
        return
    Log(quiet).info(f"exported {ticket.arch} ({fmt_pct(ticket.sparsity)} sparse) to {out_dir}: {', '.join(plan.files)}")


# ----- train / eval -------------------------------------------------------------------------------
DatasetOpt = Annotated[
    Optional[str],
    typer.Option("--dataset", "-d", help="Data set (default: the one the ticket records)."),
]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download the data set when it is missing.")]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", help="DataLoader workers for folder data sets (imagenet, imagefolder).")
]
DistTimeoutOpt = Annotated[float, typer.Option("--dist-timeout", envvar="ELTH_DIST_TIMEOUT", help="Several "
                           "processes (torchrun, srun): seconds a rank waits for the others, to join and at every "
                           "exchange, before it fails.")]

# The training flags, shared by `train` and `find` (IMP trains with the same recipe): each is a TrainConfig
# field, whose metadata gives its flag and help; the commands hand them to the config by field name.
EpochsOpt = _config_option("epochs")
LrOpt = _config_option("lr")
BatchSizeOpt = _config_option("batch_size")
MomentumOpt = _config_option("momentum")
WeightDecayOpt = _config_option("weight_decay")
MilestonesOpt = _config_option("milestones")
GammaOpt = _config_option("gamma")
WarmupOpt = _config_option("warmup")
ScheduleOpt = _config_option("schedule")
SeedOpt = _config_option("seed")
AugmentOpt = _config_option("augment")
EvalEveryOpt = _config_option("eval_every")
DeviceOpt = _config_option("device")
PrecisionOpt = _config_option("precision")
CompileOpt = _config_option("compile")
DeterministicOpt = _config_option("deterministic")
SyncBnOpt = _config_option("sync_bn")
TrainScaleOpt = _config_option("train_scale")
ResizeOpt = _config_option("resize")
NewHeadOpt = Annotated[bool, typer.Option("--new-head", help="A ticket made for another class count: train a new "
                       "classifier for this data set's (re-initialised, with a random mask at the old one's "
                       "sparsity); every other tensor and mask is kept.")]
AllowEmptyOpt = Annotated[bool, typer.Option("--allow-empty-layers", help="Go on with a mask that leaves a layer "
                          "without any weight (refused otherwise: nothing passes through it), with a warning that "
                          "names the layers.")]
CheckpointEveryOpt = Annotated[Optional[float], typer.Option(
    "--checkpoint-every", metavar="SECONDS", help=f"Write a checkpoint at an epoch's end when this long has passed "
    f"since the last (default {CHECKPOINT_EVERY_S:g}; 0: every epoch); a stop (SIGTERM, SIGUSR1, Ctrl-C) always "
    "writes one. Several processes write one every epoch.")]


def _prepare_train_files(ticket_path: str, output: str, force: bool, ckpt: Optional[Path], log_jsonl: Optional[Path],
                         resume: bool, restart: bool) -> Ticket:
    """What ``train`` checks before any work (rank 0 of several processes): the files it writes, the ticket.

    An existing output is not refused here: once the recipe is known, one that already is this training
    is reused (a requeued job that finished), anything else is refused (:func:`_finished_output`)."""
    from elth_cli.container import peek_format
    from elth_cli.ticket import FORMAT as TICKET_FORMAT
    from elth_cli.ticket import Ticket
    from elth_cli.train.checkpoint import check_checkpoint_path

    check_output_path(output, force=True)
    if output != STDIO and Path(output).exists() and not force and peek_format(output) != TICKET_FORMAT:
        raise UsageError(f"output {output} already exists and is not an elth ticket; pass --force to overwrite it "
                         "or choose another path")
    check_checkpoint_path(ckpt)
    if log_jsonl is not None:
        check_side_file(log_jsonl, "--log-jsonl")
    if resume and (ckpt is None or not Path(ckpt).exists()):
        raise UsageError(f"--resume given but there is no checkpoint {ckpt}; drop --resume to start a new run")
    resuming = ckpt is not None and Path(ckpt).exists() and not restart
    if log_jsonl is not None and Path(log_jsonl).exists() and not (force or resuming or is_epoch_log(log_jsonl)):
        # A new run rewrites its own epoch log from the start (a requeue after a kill before the first
        # checkpoint); anything else there would be lost.
        raise UsageError(f"--log-jsonl {log_jsonl} already exists and is not an elth epoch log; pass --force to "
                         "overwrite it or choose another file")
    return Ticket.load(ticket_path)


def _finished_output(output: str, ticket: Ticket, hparams: dict[str, Any], force: bool) -> Optional[Ticket]:
    """The existing ``output`` when it already is this training (a re-run of a finished command does no
    work); an existing output that is something else is refused unless ``--force``."""
    from elth_cli.train.several import reusable_output

    if output == STDIO or force or not Path(output).exists():
        return None
    return reusable_output(output, ticket, hparams, "pass --force to overwrite it or choose another path")


def _dataset_for(ticket: Ticket, dataset: Optional[str]) -> str:
    name = dataset or ticket.dataset
    if not name:
        raise UsageError("the ticket records no data set; pass --dataset")
    return name


@contextlib.contextmanager
def _report_stop(command: str, is_main: bool = True) -> Iterator[None]:
    """A training stopped by a signal: its one line (rank 0) and its exit status (75 resumable, 130 Ctrl-C)."""
    from elth_cli.train.signals import TrainingStopped

    try:
        yield
    except TrainingStopped as e:
        if is_main:
            print(f"elth {command}: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None


@app.command(epilog=epilog("train"))
def train(
    ticket_paths: Annotated[list[str], typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin); "
                            "several with --out-dir.")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Output ticket file ('-' for stdout); one "
                      "ticket only.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Train every TICKET into this folder, under "
                       "its file name, with its checkpoint, log and JSON lines beside it; re-running finishes "
                       "what is left.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="With --out-dir: trainings side by side, each in a "
                    "worker process with cores/N CPU threads, or its own GPU (several per GPU when N exceeds "
                    "them).")] = 1,
    dataset: DatasetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    milestones: MilestonesOpt = None,
    gamma: GammaOpt = None,
    warmup: WarmupOpt = None,
    schedule: ScheduleOpt = None,
    seed: SeedOpt = 0,
    augment: AugmentOpt = True,
    eval_every: EvalEveryOpt = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    deterministic: DeterministicOpt = False,
    sync_bn: SyncBnOpt = False,
    train_scale: TrainScaleOpt = None,
    resize: ResizeOpt = None,
    dist_timeout: DistTimeoutOpt = 300.0,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file (default: OUT.ckpt "
                          "beside the output; with '-o -' there is none unless given).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Insist on resuming from the checkpoint (an existing "
                      "checkpoint is resumed even without it).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore an existing checkpoint and start over.")] = False,
    log_jsonl: Annotated[Optional[Path], typer.Option("--log-jsonl", help="Write one JSON line per epoch here.")] = None,
    checkpoint_every: CheckpointEveryOpt = None,
    allow_empty_layers: AllowEmptyOpt = False,
    new_head: NewHeadOpt = False,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a ticket's subnetwork from its init weights at its rewind step; pruned weights stay zero.

    Recipes (the paper's, every value overridable): CIFAR SGD 0.1, batch 128, 160 epochs, x0.1 at 80ep/120ep;
    ImageNet 0.4, batch 1024, 90 epochs, 5ep warm-up; digits 30 epochs, cosine, 2ep warm-up.

    Step values read 1000it, 2ep or a bare number of iterations.

    A checkpoint is written at epoch ends (every --checkpoint-every seconds) and on SIGTERM/SIGUSR1 (exit 75) or
    Ctrl-C (exit 130): re-run the same command to resume. The output ticket holds the trained weights, the
    resolved config and the metrics.

    Several tickets side by side: elth train T1 T2 ... --out-dir DIR --jobs N trains each into DIR under its file
    name (checkpoint, .log and .jsonl beside it) in N worker processes with cores/N CPU threads each, or a GPU
    each. A failed ticket does not stop the others; a re-run reuses finished outputs and resumes the rest.

    Data-parallel with several processes: torchrun --nproc-per-node N -m elth_cli train ... (or srun). --batch-size
    stays the global batch; rank 0 alone writes the ticket, the checkpoint and the logs.
    """
    overrides = config_overrides(locals())
    checkpoint_every = check_checkpoint_every(CHECKPOINT_EVERY_S if checkpoint_every is None else checkpoint_every)
    if out_dir is not None or len(ticket_paths) > 1:
        _reject_flags("train --out-dir", (("-o", output), ("--checkpoint", checkpoint), ("--log-jsonl", log_jsonl),
                                          ("--resume", resume or None)), "for one ticket")
        if out_dir is None:
            raise UsageError(f"{len(ticket_paths)} tickets need --out-dir DIR (each trains into DIR under its file "
                             "name); -o takes one")
        from elth_cli.train.several import TrainRequest

        request = TrainRequest(dataset, overrides, precision, str(data_dir) if data_dir else None, download, workers,
                               force, restart, checkpoint_every, allow_empty_layers, new_head)
        _train_several(ticket_paths, out_dir, jobs, device, compile, request, json_out, quiet)
        return
    if output is None:
        raise UsageError("pass -o FILE (or '-o -' for stdout), or --out-dir DIR")
    if jobs != 1:
        raise UsageError("--jobs runs several trainings: give several tickets with --out-dir")
    ticket_path = ticket_paths[0]
    from elth_cli.report import TrainProgress
    from elth_cli.train.checkpoint import checkpoint_path_for
    from elth_cli.train.provenance import train_summary
    from elth_cli.train.session import training_session

    _check_stdout_use(output, json_out)
    if resume and restart:
        raise UsageError("--resume and --restart contradict each other; pass one of them")
    ckpt = checkpoint if checkpoint is not None else (None if output == STDIO else checkpoint_path_for(output))
    # Before the locks (which would take -o X --checkpoint X for a second writer, and name a lock file): every
    # file has one role (-o X --checkpoint X would delete the result with the checkpoint), every folder is
    # writable.
    check_distinct({"-o": output, "--checkpoint": ckpt, "--log-jsonl": log_jsonl})
    for role, path in (("--checkpoint", ckpt), ("--log-jsonl", log_jsonl)):
        check_distinct({"the ticket": ticket_path, role: path})
    check_output_path(output, force=True)
    for role, path in (("checkpoint", ckpt), ("--log-jsonl", log_jsonl)):
        if path is not None:
            check_side_file(path, role)
    with training_session(device, precision, dist_timeout) as session, \
            session.exclusive(output, f"the training of {output}"), session.exclusive(ckpt, f"the checkpoint {ckpt}"):
        # Rank 0 checks the files and reads the ticket; every rank gets it, or the error.
        ticket = session.on_main(lambda: _prepare_train_files(ticket_path, output, force, ckpt, log_jsonl, resume,
                                                              restart))
        if new_head:
            from elth_cli.transfer import new_head_for

            ticket = new_head_for(ticket, _dataset_for(ticket, dataset), str(data_dir) if data_dir else None, seed)
        cfg, bundle = session.prepare(ticket.spec, _dataset_for(ticket, dataset), data_dir=data_dir,
                                      download=download, workers=workers, ticket=ticket, **overrides)
        ws = session.runtime.world_size
        hparams = cfg.resolved(bundle.steps_per_epoch(cfg.batch_size, ws), ticket.rewind_step, ws)
        finished = session.on_main(lambda: _finished_output(output, ticket, hparams, force))
        if finished is not None:  # a re-run of a finished command (a requeued job): nothing to do
            trained, sha = finished, finished.sha256
        else:
            with _report_stop("train", session.runtime.is_main):
                trained = session.train_ticket(
                    ticket, bundle, cfg, checkpoint_path=ckpt,
                    resume="require" if resume else "never" if restart else "auto",
                    log=TrainProgress(quiet or not session.runtime.is_main), jsonl_path=log_jsonl,
                    checkpoint_every_s=checkpoint_every, allow_empty_layers=allow_empty_layers)
            sha = session.save(trained, output, ckpt, force=True)
        _warn_empty_layers(trained, output)
        if not session.runtime.is_main:
            return
    if json_out:
        print_json({**train_summary(trained, output, sha), "reused": finished is not None})
        return
    m = trained.metrics or {}
    ips = m.get("images_per_s")
    Log(quiet).info(
        f"{'already ' if finished is not None else ''}"
        f"trained {trained.arch} on {bundle.info.name}: test accuracy {fmt_pct(m.get('test_acc'))} "
        f"(best {fmt_pct(m.get('best_test_acc'))}), {fmt_int(m.get('steps', 0))} steps in {m.get('wall_time_s', 0):.1f} s"
        f"{f', {ips:,.0f} img/s' if ips else ''} ({cfg.precision} on {m.get('device')}) "
        f"-> {output if output != STDIO else 'stdout'}"
    )


def _train_several(paths: list[str], out_dir: Path, jobs: int, device: str, compile: bool, request: Any,
                   json_out: bool, quiet: bool) -> None:
    """``train T1 T2 ... --out-dir DIR --jobs N``: one job per ticket on the worker pool."""
    from elth_cli import jobs as jobs_mod
    from elth_cli.report import JobProgress
    from elth_cli.train import several

    if detect_launch().distributed:
        raise UsageError("several tickets are trained by one process with --jobs; start it without torchrun or srun")
    items = several.plan_items(paths, out_dir)
    several.check_request(request)
    slots = jobs_mod.plan_slots(min(jobs, len(items)), device)
    if compile and slots[0].device == "cpu" and slots[0].threads == 1:
        raise UsageError("--compile with one CPU thread per worker crashed torch on small inputs (docs/performance.md); "
                         "use fewer --jobs or drop --compile")
    several.make_out_dir(out_dir)  # only once the command line is known to be good
    log = Log(quiet)
    log.info(f"training {_plural(len(items), 'ticket')} into {out_dir} with {_plural(len(slots), 'worker')}")

    def made(outcome: Any) -> str:
        v = outcome.value
        return (f"{'already trained, ' if v['reused'] else ''}test acc {fmt_pct(v['test_acc'])} -> {v['output']}")

    with _report_stop("train"):
        result = jobs_mod.run_jobs(several.train_jobs(items, request), slots, JobProgress(log, made))
        if json_out:
            print_json({"out_dir": str(out_dir), "jobs": len(slots),
                        "results": [_job_record(o, item) for o, item in zip(result.outcomes.values(), items)]})
        else:
            rows = [(item.source, "reused" if o.ok and o.value["reused"] else o.status, fmt_pct((o.value or {}).get("test_acc")), f"{o.seconds:.1f}",
                     item.output if o.ok else o.message) for o, item in zip(result.outcomes.values(), items)]
            stdout_console().print(make_table(["ticket", "status", "test acc", "seconds", "output"], rows,
                                              right=["test acc", "seconds"]))
        result.check("trainings")


def _job_record(outcome: Any, item: Any) -> dict[str, Any]:
    return {"ticket": item.source, "output": item.output, "status": outcome.status, "message": outcome.message or None,
            "seconds": outcome.seconds, "worker": outcome.slot, **({"result": outcome.value} if outcome.ok else {})}


@app.command("eval", epilog=epilog("eval"))
def eval_cmd(
    ticket_path: Annotated[str, typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin).")],
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option("--split", help="test or train (unaugmented).")] = "test",
    weights: Annotated[str, typer.Option("--weights", help="trained, or init (the weights at the rewind step).")] = "trained",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size (default: the one "
                          "training evaluated with).")] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (the training precision on the same kind of "
                         "device, else bf16 on CUDA / fp32 on CPU), bf16, fp16 or fp32.")] = "auto",
    resize: EvalResizeOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a ticket: top-1 accuracy (top-5 with more than 10 classes) and mean loss, BN in eval mode."""
    from elth_cli import data as data_mod
    from elth_cli.device import device_name, device_setup, resolve_device, resolve_precision
    from elth_cli.ticket import Ticket
    from elth_cli.train.step import evaluate

    if detect_launch().distributed:  # every rank would evaluate the whole set and print it
        raise UsageError("elth eval runs in one process; start it without torchrun or srun")

    if split not in ("test", "train"):
        raise UsageError(f"unknown split {split!r}; choose test or train")
    ticket = Ticket.load(ticket_path)
    ticket.state(weights)  # an untrained ticket with --weights trained fails here, before any data is read
    info = data_mod.get_dataset_info(_dataset_for(ticket, dataset), str(data_dir) if data_dir else None)
    resize = data_mod.resize_to_fit(info, ticket.input_shape, resize, (ticket.hparams or {}).get("resize"))
    data_mod.check_compatible(data_mod.resized(info, resize), ticket.input_shape, ticket.num_classes)
    dev = resolve_device(device)
    recorded = ticket.hparams or {}
    if precision == "auto" and weights == "trained" and str(recorded.get("device", "")).split(":")[0] == dev.type:
        precision = str(recorded.get("precision", "auto"))
    prec = resolve_precision(precision, dev)
    if batch_size is None:
        batch_size = int(recorded.get("eval_batch_size") or (1000 if info.in_memory else 250))
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    setup = device_setup(dev, prec)
    bundle = data_mod.load_dataset(info.name, str(data_dir) if data_dir else None, download=download, device=setup,
                                   num_workers=workers)
    bundle.set_resize(resize)
    result = evaluate(setup.prepare_model(ticket.build_model(weights)), bundle, split, batch_size, prec)
    doc = {"ticket": ticket_path, "sha256": ticket.sha256, "arch": ticket.arch, "dataset": info.name,
           "weights": weights, "device": device_name(dev), "precision": prec, "batch_size": batch_size,
           "resize": resize, **result}
    if json_out:
        print_json(doc)
        return
    top5 = f", top-5 {fmt_pct(result['top5'])}" if "top5" in result else ""
    stdout_console().print(
        f"{ticket.arch} ({weights} weights) on {info.name} {split}: accuracy {fmt_pct(result['accuracy'])}{top5}, "
        f"loss {result['loss']:.4f} ({fmt_int(result['examples'])} images, {prec} on {doc['device']})", markup=False)


# ----- find ---------------------------------------------------------------------------------------
# Which `find` options each method uses: one given to a method that ignores it is refused (a silently
# ignored flag is a result the user did not ask for). Options every method takes are not listed.
_TRAINING_METHODS = ("imp", "early-bird", "rigl", "set", "dpf")
_BASELINES = ("random", "magnitude", "snip", "grasp", "synflow")
_RECIPE_OPTIONS = ("epochs", "lr", "momentum", "weight_decay", "milestones", "gamma", "warmup", "schedule", "augment",
                   "eval_every", "precision", "compile", "deterministic", "sync_bn", "train_scale", "dist_timeout",
                   "checkpoint_every", "resize")
FIND_OPTION_USERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_RECIPE_OPTIONS, _TRAINING_METHODS),
    "batch_size": (*_TRAINING_METHODS, "snip", "grasp"), "workers": (*_TRAINING_METHODS, "snip", "grasp"),
    "out_dir": ("imp",), "rounds": ("imp",), "prune_rate": ("imp",), "early_bird": ("imp",),
    "rewind": ("imp", "early-bird"), "window": ("imp", "early-bird"), "epsilon": ("imp", "early-bird"),
    "from_ticket": _BASELINES, "like": _BASELINES, "match": ("random", "magnitude", "snip", "grasp"),
    "distribution": ("random", "rigl", "set"), "update_every": ("rigl", "set", "dpf"),
    "update_until": ("rigl", "set", "dpf"), "drop_fraction": ("rigl", "set"),
    "batches": ("snip", "grasp"), "iterations": ("synflow",),
}


def _given_options(ctx: typer.Context) -> set[str]:
    """The parameters the command line set (not their defaults, nor an environment variable a cluster
    sets for every job)."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given.add(name)
    return given


def _refuse_unused(ctx: typer.Context, method: str) -> None:
    """Refuse an option ``method`` does not use, naming the methods that do."""
    flags = {p.name: p.opts[0] if len(p.opts[0]) > 2 else p.opts[-1] for p in ctx.command.params}
    for name in sorted(_given_options(ctx)):
        users = FIND_OPTION_USERS.get(name)
        if users is not None and method not in users:
            who = "training methods (imp, early-bird, rigl, set, dpf)" if users == _TRAINING_METHODS else \
                "the one-shot baselines" if users == _BASELINES else ", ".join(users)
            raise UsageError(f"{flags.get(name, name)} is for {who}; --method {method} does not use it")


@app.command(epilog=epilog("find"))
def find(
    ctx: typer.Context,
    method: Annotated[str, typer.Option("--method", "-m", help="imp (iterative magnitude pruning with rewinding), "
                      "early-bird (prune once when the mask settles), dynamic sparse training (rigl, set, dpf), or a "
                      "one-shot baseline: random, magnitude, snip, grasp, synflow.")] = "imp",
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Architecture (elth archs lists them); "
                    "baselines take it from --from when given.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Data set: fixes input shape and class "
                       "count; IMP trains on it, snip/grasp read a few batches of it.")] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Output ticket ('-' for stdout); for imp, "
                      "a copy of the final round's ticket.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="imp: folder for one ticket per round, "
                       "find.jsonl and checkpoints; re-running the same command resumes.")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="imp: pruning rounds after the dense round 0 "
                      "(sparsity 1-(1-p)^r).")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", help="Fraction of prunable weights pruned, in "
                        "[0, 1); imp: the last round prunes to exactly this.")] = None,
    prune_rate: Annotated[float, typer.Option("--prune-rate", help="imp: fraction of the remaining weights pruned "
                          "per round.")] = 0.2,
    rewind: Annotated[str, typer.Option("--rewind", help="imp: training step the survivors rewind to: 1000it, 2ep "
                      "or 0 (the initialisation).")] = "0",
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", metavar="KEY", help="Prunable weights kept dense (repeat the "
                       "option); default: fc.weight for VGGs, nothing for ResNets.")] = None,
    from_ticket: Annotated[Optional[str], typer.Option("--from", help="Baselines: prune at this ticket's init "
                           "(rewind) weights, e.g. an IMP run's round-00.safetensors.")] = None,
    like: Annotated[Optional[str], typer.Option("--like", help="Baselines: match this ticket's sparsity (instead of "
                    "--sparsity).")] = None,
    match: Annotated[str, typer.Option("--match", help="With --like: overall, or layerwise (same count per layer).")] = "overall",
    distribution: Annotated[Optional[str], typer.Option("--distribution", help="How sparsity spreads over the "
                            "layers. random: layerwise (every tensor at the same rate, the paper's baseline; default), "
                            "global or erk (Erdos-Renyi-Kernel); rigl/set: erk (default) or layerwise.")] = None,
    update_every: Annotated[Optional[int], typer.Option("--update-every", help="rigl/set/dpf: steps between mask "
                            "updates (default 100 for rigl/set, 16 for dpf).")] = None,
    update_until: Annotated[Optional[float], typer.Option("--update-until", help="rigl/set/dpf: fraction of "
                            "training after which the mask is fixed (dpf reaches --sparsity there; default "
                            "0.75).")] = None,
    drop_fraction: Annotated[Optional[float], typer.Option("--drop-fraction", help="rigl/set: fraction of each "
                             "layer's active weights rewired at the first update, decaying by cosine to 0 "
                             "(default 0.3).")] = None,
    early_bird: Annotated[bool, typer.Option("--early-bird", help="imp: train each round only until its next mask "
                          "has settled (--window, --epsilon), then prune and rewind.")] = False,
    window: Annotated[Optional[int], typer.Option("--window", help="early-bird: epochs whose mask distances must "
                      "all be below --epsilon (default 5, You et al. 2020).")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="early-bird: largest mask distance (Hamming "
                       "over the kept weights) that counts as settled (default 0.1, You et al. 2020).")] = None,
    batches: Annotated[int, typer.Option("--batches", help="snip/grasp: training batches whose gradients score the "
                       "weights.")] = 10,
    iterations: Annotated[int, typer.Option("--iterations", help="synflow: pruning iterations.")] = 100,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    milestones: MilestonesOpt = None,
    gamma: GammaOpt = None,
    warmup: WarmupOpt = None,
    schedule: ScheduleOpt = None,
    seed: SeedOpt = 0,
    augment: AugmentOpt = True,
    eval_every: EvalEveryOpt = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    deterministic: DeterministicOpt = False,
    sync_bn: SyncBnOpt = False,
    train_scale: TrainScaleOpt = None,
    resize: ResizeOpt = None,
    dist_timeout: DistTimeoutOpt = 300.0,
    checkpoint_every: CheckpointEveryOpt = None,
    allow_empty_layers: AllowEmptyOpt = False,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find a ticket: IMP with rewinding (one ticket per round), early-bird, dynamic sparse training, or a one-shot
    pruning baseline.

    imp trains the dense network (round 0), then each round prunes --prune-rate of the remaining weights by global
    magnitude, rewinds the survivors to the --rewind step and trains again (every flag of elth train applies);
    with --early-bird each round stops once its next mask has settled. early-bird trains until the magnitude mask
    at --sparsity settles, then prunes once and rewinds (an untrained ticket). rigl, set and dpf train once from
    scratch while the mask moves (a trained ticket). Baselines prune once at --from's init weights (or a fresh
    seeded network of --arch) to --sparsity or --like's sparsity: random, magnitude, snip, grasp (original sign
    convention), synflow (iterative, data-free).

    imp runs data-parallel with several processes (torchrun --nproc-per-node N -m elth_cli find ..., or srun):
    rank 0 prunes and writes, every rank trains; --batch-size is the global batch.
    """
    args = types.SimpleNamespace(**{k: v for k, v in locals().items() if k != "ctx"},
                                 overrides=config_overrides(locals()))
    from elth_cli import data as data_mod
    from elth_cli.dst import DST_METHODS
    from elth_cli.find import FIND_METHODS
    from elth_cli.prune import check_sparsity

    if method not in FIND_METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(FIND_METHODS)}")
    _refuse_unused(ctx, method)
    if "match" in _given_options(ctx) and like is None:
        raise UsageError("--match says how to match --like's sparsity; give --like TICKET or drop --match")
    if detect_launch().distributed and method != "imp":
        raise UsageError(f"--method {method} runs in one process; start it without torchrun or srun "
                         "(only imp trains data-parallel)")
    if output is not None:
        _check_stdout_use(output, json_out)
    if sparsity is not None:
        check_sparsity(sparsity)
    if checkpoint_every is not None:
        check_checkpoint_every(checkpoint_every)
    check_seed(seed)  # the one-shot methods take it without a training config
    if arch is not None:
        archs.resolve_arch(arch)  # an unknown name is the first thing to report
    if dataset is not None:
        data_mod.get_dataset_info(dataset, str(data_dir) if data_dir else None)
    if method == "imp":
        _find_imp(args)
    elif method in DST_METHODS:
        _find_dst(args)
    elif method == "early-bird":
        _find_early_bird(args)
    else:
        _find_baseline(args)


def _find_imp(a: types.SimpleNamespace) -> None:
    """``find --method imp``: ``a`` holds the command's parameters."""
    from elth_cli import data as data_mod
    from elth_cli import find as find_mod
    from elth_cli.report import TrainProgress
    from elth_cli.steps import normalise_steps
    from elth_cli.train.session import training_session

    if a.arch is None or a.dataset is None or a.out_dir is None:
        raise UsageError("imp needs --arch, --dataset and --out-dir")
    spec = archs.resolve_arch(a.arch)
    info = data_mod.get_dataset_info(a.dataset, str(a.data_dir) if a.data_dir else None)
    if not a.early_bird:
        _reject_flags("imp", (("--window", a.window), ("--epsilon", a.epsilon)), "for early-bird rounds (--early-bird)")
    opts = find_mod.ImpOptions(spec.name, info.name, rounds=a.rounds, sparsity=a.sparsity, prune_rate=a.prune_rate,
                               rewind=normalise_steps(a.rewind), exclude=tuple(a.exclude) if a.exclude else None,
                               early_bird=a.early_bird, **_detection(a))
    last = find_mod.check_imp_options(opts)
    from elth_cli.runfolder import round_path

    final_round = round_path(a.out_dir, last)
    with training_session(a.device, a.precision, a.dist_timeout) as session:
        if a.output is not None:
            session.on_main(lambda: _check_copy_output(a.output, final_round, a.force))
        cfg, bundle = session.prepare(spec, info.name, data_dir=a.data_dir, download=a.download, workers=a.workers,
                                      **a.overrides)
        log = Log(a.quiet or not session.runtime.is_main)

        def show(rec: find_mod.RoundRecord) -> None:
            log.info(f"round {rec.round:2d}: sparsity {fmt_pct(rec.sparsity)}, test acc {fmt_pct(rec.test_acc)}, "
                     f"{rec.seconds:.1f} s -> {rec.path}")

        with _report_stop("find", session.runtime.is_main):
            records, final = find_mod.find_imp(opts, cfg, bundle, a.out_dir, log=TrainProgress(log.quiet),
                                               on_round=show, rank=session.runtime.rank,
                                               world_size=session.runtime.world_size,
                                               checkpoint_every_s=_checkpoint_every(a),
                                               allow_empty_layers=a.allow_empty_layers)
        _warn_empty_layers(final, str(a.out_dir))
        if a.output is not None and not _same_bytes(a.output, records[-1].path):  # a copy of the final round's file
            session.on_main(lambda: write_bytes_atomic(a.output, Path(records[-1].path).read_bytes()))
        if not session.runtime.is_main:
            return
    summary = {"method": "imp", "out_dir": str(a.out_dir), "output": a.output, "sha256": final.sha256,
               "arch": final.arch, "rounds": [r.as_dict() for r in records]}
    if a.json_out:
        print_json(summary)
    elif not (a.quiet and a.output == STDIO):  # the table is data on stdout; with '-o -' a log line on stderr
        columns = ["round", "sparsity", "test acc", "best", "steps", "seconds"] + (["early"] if a.early_bird else [])
        rows = [(r.round, fmt_pct(r.sparsity), fmt_pct(r.test_acc), fmt_pct(r.best_test_acc), fmt_int(r.steps),
                 f"{r.seconds:.1f}", *(["yes" if r.stopped_early else "no"] if a.early_bird else [])) for r in records]
        # With '-o -' stdout carries the ticket and nothing else: the table goes to stderr.
        console = stderr_console() if a.output == STDIO else stdout_console()
        console.print(make_table(columns, rows, title=f"IMP {final.arch} on {bundle.info.name}"
                                 + (" (early-bird rounds)" if a.early_bird else ""), right=columns[:6]))


def _same_bytes(a: str, b: str | Path) -> bool:
    """Whether two files hold the same bytes (``-`` never does: stdout is always written)."""
    if a == STDIO or not Path(a).is_file() or not Path(b).is_file():
        return False
    return Path(a).stat().st_size == Path(b).stat().st_size and Path(a).read_bytes() == Path(b).read_bytes()


def _check_copy_output(output: str, final_round: Path, force: bool) -> None:
    """``find --method imp -o X``: X may already be the finished run's final round (a re-run of the same
    command, a requeued job: success without work); anything else there needs ``--force``."""
    if not _same_bytes(output, final_round):
        check_output_path(output, force)


def _detection(a: types.SimpleNamespace) -> dict[str, Any]:
    """--window and --epsilon where given (the library's defaults otherwise)."""
    return {k: v for k, v in (("window", a.window), ("epsilon", a.epsilon)) if v is not None}


def _find_early_bird(a: types.SimpleNamespace) -> None:
    """``find --method early-bird``: train until the mask settles, prune once; ``a`` holds the parameters."""
    from elth_cli import data as data_mod
    from elth_cli import earlybird
    from elth_cli.steps import normalise_steps
    from elth_cli.train.earlybird import check_detection

    if a.output is None or a.arch is None or a.dataset is None or a.sparsity is None:
        raise UsageError("early-bird needs --arch, --dataset, --sparsity and -o FILE")
    spec = archs.resolve_arch(a.arch)
    info = data_mod.get_dataset_info(a.dataset, str(a.data_dir) if a.data_dir else None)
    opts = earlybird.EarlyBirdOptions(spec.name, info.name, a.sparsity, rewind=normalise_steps(a.rewind),
                                      exclude=tuple(a.exclude) if a.exclude else None, **_detection(a))
    check_detection(opts.window, opts.epsilon)
    ticket, sha = _search_once(a, spec, info.name, "the early-bird search", lambda cfg, bundle, **options:
                               earlybird.find_early_bird(opts, cfg, bundle, **options))
    search = (ticket.metrics or {})["early_bird"]
    if a.json_out:
        print_json({"method": a.method, "output": a.output, "sha256": sha, "arch": ticket.arch,
                    "sparsity": ticket.sparsity, "rewind_step": ticket.rewind_step, "early_bird": search,
                    "cost": ticket.cost})
        return
    when = (f"mask settled at epoch {search['detected_epoch']}" if search["converged"]
            else "mask never settled: pruned after the whole recipe")
    Log(a.quiet).info(f"early-bird ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)}, {when}, "
                      f"{fmt_int(search['steps'])} of {fmt_int(search['total_steps'])} steps, "
                      f"{fmt_flops(ticket.cost.get('train_flops'))} FLOPs -> {a.output if a.output != STDIO else 'stdout'}")


def _warn_empty_layers(ticket: Ticket, where: str) -> None:
    """The warning of --allow-empty-layers: which layers of what was written keep no weight."""
    from elth_cli.masks import describe_keys, empty_layers

    empty = empty_layers(ticket.masks)
    if empty:
        Log().warn(f"{'stdout' if where == STDIO else where}: {len(empty)} layer{'s' if len(empty) > 1 else ''} keep "
                   f"no weight ({describe_keys(empty)}); nothing passes through them")


def _search_once(a: types.SimpleNamespace, spec: Any, dataset: str, what: str,
                 search: Callable[..., Ticket]) -> tuple[Ticket, str]:
    """One training that makes one ticket (early-bird, rigl, set, dpf): the session, the lock, the recipe and
    data, ``search(cfg, bundle, checkpoint_path=, log=)``, then the save (ticket first, checkpoint dropped)."""
    from elth_cli.report import TrainProgress
    from elth_cli.train.checkpoint import checkpoint_path_for
    from elth_cli.train.session import training_session

    ckpt = None if a.output == STDIO else checkpoint_path_for(a.output)
    with training_session(a.device, a.precision, a.dist_timeout) as session, \
            session.exclusive(ckpt and a.output, f"{what} writing {a.output}"):
        check_output_path(a.output, a.force)
        cfg, bundle = session.prepare(spec, dataset, data_dir=a.data_dir, download=a.download, workers=a.workers,
                                      **a.overrides)
        with _report_stop("find"):
            ticket = search(cfg, bundle, checkpoint_path=ckpt, log=TrainProgress(a.quiet),
                            checkpoint_every_s=_checkpoint_every(a), allow_empty_layers=a.allow_empty_layers)
        sha = session.save(ticket, a.output, ckpt, a.force)
    _warn_empty_layers(ticket, a.output)
    return ticket, sha


def _checkpoint_every(a: types.SimpleNamespace) -> float:
    return CHECKPOINT_EVERY_S if a.checkpoint_every is None else a.checkpoint_every


def _reject_flags(method: str, flags: tuple[tuple[str, Any], ...], purpose: str) -> None:
    for flag, value in flags:
        if value is not None:
            raise UsageError(f"{flag} is {purpose}; {method} does not use it")


def _find_dst(a: types.SimpleNamespace) -> None:
    """``find --method rigl|set|dpf``: one training with a dynamic mask; ``a`` holds the command's parameters."""
    from elth_cli import data as data_mod
    from elth_cli import dst

    if a.output is None or a.arch is None or a.dataset is None or a.sparsity is None:
        raise UsageError(f"{a.method} needs --arch, --dataset, --sparsity and -o FILE")
    spec = archs.resolve_arch(a.arch)
    info = data_mod.get_dataset_info(a.dataset, str(a.data_dir) if a.data_dir else None)
    opts = dst.DstOptions(a.method, spec.name, info.name, a.sparsity, distribution=a.distribution or "erk",
                          update_every=a.update_every, update_until=0.75 if a.update_until is None else a.update_until,
                          drop_fraction=0.3 if a.drop_fraction is None else a.drop_fraction,
                          exclude=tuple(a.exclude) if a.exclude else None)
    dst.check_dst_options(opts)
    ticket, sha = _search_once(a, spec, info.name, f"the {a.method} run", lambda cfg, bundle, **options:
                               dst.find_dst(opts, cfg, bundle, **options))
    m = ticket.metrics or {}
    if a.json_out:
        print_json({"method": a.method, "output": a.output, "sha256": sha, "arch": ticket.arch,
                    "sparsity": ticket.sparsity, "metrics": m, "cost": ticket.cost})
        return
    Log(a.quiet).info(f"{a.method} ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)}, test accuracy "
                      f"{fmt_pct(m.get('test_acc'))}, {len(m.get('mask_updates', []))} mask updates, "
                      f"{fmt_flops(ticket.cost.get('train_flops'))} training FLOPs "
                      f"-> {a.output if a.output != STDIO else 'stdout'}")


def _find_baseline(a: types.SimpleNamespace) -> None:
    """``find --method random|magnitude|snip|grasp|synflow``: ``a`` holds the command's parameters."""
    from elth_cli import data as data_mod
    from elth_cli import find as find_mod
    from elth_cli.device import resolve_device
    from elth_cli.ticket import Ticket

    method, data_dir = a.method, str(a.data_dir) if a.data_dir else None
    if a.output is None:
        raise UsageError(f"{method} writes one ticket: pass -o FILE")
    check_output_path(a.output, a.force)
    if (a.sparsity is None) == (a.like is None):
        raise UsageError(f"{method} needs exactly one of --sparsity and --like")
    like_ticket = Ticket.load(a.like) if a.like is not None else None
    if a.from_ticket is not None:
        source = Ticket.load(a.from_ticket)
        if a.arch is not None and archs.resolve_arch(a.arch).name != source.arch:
            raise UsageError("--arch disagrees with the --from ticket's architecture; drop --arch")
    else:
        if a.arch is None or a.dataset is None:
            raise UsageError(f"{method} needs --from TICKET, or --arch and --dataset for a fresh seeded network")
        source = find_mod.dense_ticket(a.arch, a.dataset, seed=a.seed, data_dir=data_dir)
    bundle = None
    if method in ("snip", "grasp"):
        name = a.dataset or source.dataset
        if not name:
            raise UsageError(f"{method} reads training batches: pass --dataset")
        bundle = data_mod.load_dataset(name, data_dir, download=a.download, device=resolve_device(a.device),
                                       num_workers=a.workers)
    options = find_mod.BaselineOptions(
        method=method, sparsity=a.sparsity, like=like_ticket, match=a.match, distribution=a.distribution or "layerwise",
        exclude=tuple(a.exclude) if a.exclude else None, seed=a.seed, batches=a.batches,
        batch_size=a.batch_size or 128, synflow_iterations=a.iterations, allow_empty_layers=a.allow_empty_layers)
    ticket = find_mod.prune_baseline(source, options, bundle)
    _warn_empty_layers(ticket, a.output)
    sha = ticket.save(a.output, force=a.force)
    if a.json_out:
        print_json({"method": method, "output": a.output, "sha256": sha, "arch": ticket.arch,
                    "sparsity": ticket.sparsity, "parents": ticket.parents})
        return
    Log(a.quiet).info(f"{method} ticket {ticket.arch}: sparsity {fmt_pct(ticket.sparsity)} "
                      f"-> {a.output if a.output != STDIO else 'stdout'}")


# ----- demo ---------------------------------------------------------------------------------------
@app.command(epilog=epilog("demo"))
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the tickets and the table (re-running "
                       "resumes).")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A reduced run (4 rounds, 8 epochs) to check an "
                     "installation.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Also early-bird IMP chains and RigL: two more rows per "
                    "target and level, about half as much work again.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes side by side, each with "
                    "cores/N threads (default: one per core, at most 8; 1: everything in this process).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Run the whole comparison for N seeds (--seed, --seed + 1, "
                     "...; each in OUT_DIR/seed-S) and print mean +- standard deviation per row.")] = 1,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The E-LTH experiment in miniature on the embedded digits set: IMP on resnet20 and resnet32 (width 4),
    stretch and squeeze between them, random and magnitude baselines (with --full: early-bird IMP and RigL too),
    and the comparison table with each ticket's FLOPs. IMP chains and trainings run side by side (--jobs).
    """
    from elth_cli import demo as demo_mod

    if detect_launch().distributed:  # every rank would write the same files at once
        raise UsageError("elth demo runs in one process; start it without torchrun or srun")
    config = demo_mod.DemoConfig(seed=seed, full=full, seeds=seeds)
    if quick:
        config = demo_mod.DemoConfig(rounds=4, levels=(3, 4), epochs=8, seed=seed, full=full, seeds=seeds)
    demo_mod.seeds_of(config)  # a bad --seeds is the first thing to report
    with _report_stop("demo"):
        rows = demo_mod.run_demo(out_dir, config, Log(quiet), jobs)
    if json_out:
        print_json(json.loads((out_dir / "table.json").read_text()))
        return
    if seeds > 1:
        demo_mod.print_summary(demo_mod.summarize(rows))
    else:
        demo_mod.print_table(rows)
    Log(quiet).info(f"tickets, table.txt and table.json in {out_dir}")


# ----- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user errors become one line on stderr and a non-zero exit status, never a traceback.

    The command is invoked directly rather than through typer's ``main``, so that a Ctrl-C at any
    moment reaches the handler below (typer turns it into a silent exit, click into a bare newline).
    """
    global _command
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    _command = f"elth {args[0]}" if args and args[0].isalpha() else "elth"
    code: Any = 0
    restore_handlers = stops.install()
    try:
        command = typer.main.get_command(app)
        if COMPLETE_VAR in os.environ:  # the shell asks for completions: click's own main answers and exits
            command.main(args=args, prog_name="elth", complete_var=COMPLETE_VAR)
        if len(args) == 2 and args[1] in _HELP_OPTIONS and args[0] in getattr(command, "commands", {}):
            # `elth CMD --help` straight from the command: parsing the group's options first would
            # import pydantic (typer's coercion) for nothing, a fifth of the start-up.
            sub = command.commands[args[0]]
            with sub.make_context(f"elth {args[0]}", args[1:], **_CONTEXT_SETTINGS):
                pass
        if args and args[0] in getattr(command, "commands", {}) and args[0] not in _TORCH_FREE \
                and not set(args[1:]) & set(_HELP_OPTIONS):
            _import_torch()
        with command.make_context("elth", args) as ctx:
            command.invoke(ctx)
        _report_late_stop()
        if stdout_left_unread():
            raise BrokenPipeError
    except stops.StopRequested as e:
        _fail(f"stopped by {e} before its result was written; re-run the same command", stops.EXIT_STOPPED,
              prefix=f"{_command}:")
    except ElthError as e:
        _fail(str(e), e.exit_code, local=getattr(e, "local", False))
    except typer.Exit as e:
        code = e.exit_code
    except _PARSE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `elth` alone: the help, as click shows it
            e.show()
            _exit(2)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "elth"
        _fail(f"{e.format_message()} (see {where} --help)".replace("\n", " "), getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        _fail(INTERRUPTED, 130)
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): stop quietly with the status a process killed
        # by SIGPIPE has in a shell (128 + 13), as `yes | head` does, so that `set -o pipefail` sees a
        # ticket or document that was not read in full. stdout goes to /dev/null first: Python's own
        # flush at exit would fail again and print a traceback-like warning.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit(EXIT_BROKEN_PIPE)
    except OSError as e:
        # A folder that is a file, no permission, a full disk: the system's reason, on one line.
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _fail(f"{e.strerror or e}{where}; check the path and its permissions", 1)
    except Exception as e:  # (after typer's Exit and Abort, which are RuntimeErrors too)
        distributed = sys.modules.get("elth_cli.distributed")
        if stops.interrupted():  # whatever a Ctrl-C broke on its way (a half-imported library, ...)
            _fail(INTERRUPTED, 130)
        if distributed is None or not isinstance(e, RuntimeError) or not distributed.is_comm_failure(e):
            raise
        # A rank lost its peers (gloo, NCCL): one line, not a traceback.
        _fail(distributed.comm_failure_message(e), 1, local=True)
    finally:
        restore_handlers()
    _exit(code if isinstance(code, int) else 0)


def _report_late_stop() -> None:
    """A stop that came after the training (while its result was saved): the outputs are complete, and the
    exit status says the command was stopped, so a requeued job runs it again and finds them finished."""
    signum = stops.pending()
    if signum is None:
        return
    name = signal.Signals(signum).name
    print(f"{_command}: stopped by {name} after its outputs were written; re-running the same command finds "
          "them finished", file=sys.stderr)
    _exit(stops.exit_status(signum))


_command = "elth"  # "elth train" once the command is known: the prefix of every stop line
INTERRUPTED = "interrupted by Ctrl-C"
COMPLETE_VAR = "_ELTH_COMPLETE"  # what the script of `elth --show-completion` sets
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed the pipe before the end
_TORCH_FREE = ("archs",)  # commands that answer without torch (and every --help)


def _import_torch() -> None:
    """Import torch with every stop held back until it is done, then honour it.

    An interrupt that lands inside torch's C++ initialisation can abort the process (SIGABRT, a
    stack dump) instead of raising KeyboardInterrupt; held, it costs at most the import's seconds.
    """
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum)) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        with stops.held():  # SIGTERM and SIGUSR1: raised at the end of the block
            import torch  # noqa: F401
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held:
        stops.note_interrupt()
        raise KeyboardInterrupt


def _fail(message: str, code: int, local: bool = False, prefix: str = "error:") -> None:
    """Print the error and exit. With several processes every rank fails alike and rank 0 alone reports it,
    except for a failure only this rank saw (``local``), which it reports under its rank."""
    if stops.interrupted():
        message, code, local = INTERRUPTED, 130, False
    rank = _rank_for_errors()
    # A stop is not an error of the work: its one line starts as every stop line does ("elth train: stopped
    # by SIGINT at ...", printed by _report_stop), with the command.
    if message == INTERRUPTED:
        prefix = f"{_command}:"
    if rank == 0:
        print(f"{prefix} {message}", file=sys.stderr)
    elif local:
        print(f"error: rank {rank}: {message}", file=sys.stderr)
    _exit(code)


def _exit(code: int) -> None:
    # Only a command that trained imported the process-group code (and torch); the rest exits plainly.
    distributed = sys.modules.get("elth_cli.distributed")
    if distributed is None:
        sys.exit(code)
    distributed.exit_process(code)


def _rank_for_errors() -> int:
    distributed = sys.modules.get("elth_cli.distributed")
    if distributed is not None:
        return distributed.reporting_rank()
    from elth_cli.launch import detect_launch

    try:
        return detect_launch().rank
    except ElthError:
        return 0
