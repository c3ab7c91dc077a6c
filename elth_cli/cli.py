"""The ``elth`` command line: thin typer commands that parse, call the core and print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from elth_cli import __version__, archs, elastic
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.report import Log, fmt_int, fmt_pct, make_table, print_json, stdout_console
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

app = typer.Typer(
    name="elth",
    help="Find, stretch, squeeze and train lottery tickets (Elastic Lottery Ticket Hypothesis, Chen et al. 2021).\n\n"
    "Tickets are safetensors files (mask + init weights + provenance); commands chain through them, "
    "and '-' reads a ticket from stdin or writes it to stdout.",
    epilog="Example: elth find --method random --arch resnet20 --dataset digits --sparsity 0.8 -o - "
    "| elth stretch - --target resnet56 -o r56.safetensors",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors on stderr.")]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="ELTH_DATA", help="Folder holding the data sets (default: a cache folder)."),
]


def _check_stdout_use(output: str, json_out: bool) -> None:
    if output == STDIO and json_out:
        raise UsageError("--json and '-o -' both want stdout; write the ticket to a file or drop --json")


# ----- archs --------------------------------------------------------------------------------------
@app.command("archs", epilog="Example: elth archs --json | jq '.[] | select(.family == \"cifar-resnet\") | .name'")
def archs_cmd(
    json_out: JsonOpt = False,
) -> None:
    """List the architectures: name, family, blocks per stage, parameters.

    CIFAR ResNets take any depth 6n+2 (resnet8, resnet14, ...) and a width suffix (resnet20-w4);
    VGGs take a width too (vgg16-w16). Counts are for each family's native input (CIFAR-10: 3x32x32,
    10 classes; ImageNet: 3x224x224, 1000 classes).
    """
    summaries = [archs.summarize(s) for s in archs.standard_archs()]
    if json_out:
        print_json([s.as_dict() for s in summaries])
        return
    rows = [(s.name, s.family, s.blocks_per_stage and "/".join(map(str, s.blocks_per_stage)), s.width,
             fmt_int(s.parameters), fmt_int(s.prunable)) for s in summaries]
    stdout_console().print(make_table(["name", "family", "blocks/stage", "width", "parameters", "prunable"], rows,
                                      right=["width", "parameters", "prunable"]))


# ----- info ---------------------------------------------------------------------------------------
def ticket_summary(ticket: Ticket) -> dict:
    """Everything ``elth info`` shows, as a JSON-ready dict."""
    layers = {k: {"pruned": p, "total": t, "sparsity": p / t if t else 0.0} for k, (p, t) in ticket.layer_sparsity().items()}
    return {
        "arch": ticket.arch,
        "family": ticket.family,
        "blocks_per_stage": list(ticket.spec.depths),
        "dataset": ticket.dataset,
        "input_shape": list(ticket.input_shape),
        "num_classes": ticket.num_classes,
        "sparsity": ticket.sparsity,
        "method": ticket.method,
        "rewind_step": ticket.rewind_step,
        "trained": ticket.is_trained,
        "parents": ticket.parents,
        "transform": ticket.transform,
        "hparams": ticket.hparams,
        "metrics": ticket.metrics,
        "cost": ticket.cost,
        "created": ticket.created,
        "elth_version": ticket.elth_version,
        "sha256": ticket.sha256,
        "layers": layers,
    }


@app.command(epilog="Example: elth info r56.safetensors --json")
def info(
    ticket_path: Annotated[str, typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a ticket: architecture, sparsity overall and per layer, rewind step, provenance, metrics."""
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
                  f"strategy {t.get('strategy')}, mapping {t.get('mapping_string')}", markup=False)
    if ticket.metrics:
        con.print("metrics     " + ", ".join(f"{k}={v}" for k, v in sorted(ticket.metrics.items())), markup=False)
    if ticket.cost:
        con.print("cost        " + ", ".join(f"{k}={v}" for k, v in sorted(ticket.cost.items())), markup=False)
    con.print(f"created     {ticket.created} by elth {ticket.elth_version}", markup=False)
    rows = [(k, fmt_int(v["total"]), fmt_int(v["total"] - v["pruned"]), fmt_pct(v["sparsity"])) for k, v in doc["layers"].items()]
    con.print(make_table(["layer", "weights", "kept", "sparsity"], rows, right=["weights", "kept", "sparsity"]))


# ----- stretch / squeeze --------------------------------------------------------------------------
def _transform_command(kind: str, source: str, target: str, output: str, strategy: Optional[str],
                       mapping: Optional[str], force: bool, json_out: bool, quiet: bool) -> None:
    _check_stdout_use(output, json_out)
    check_output_path(output, force)
    log = Log(quiet)
    ticket = Ticket.load(source)
    plan = elastic.plan_transform(ticket.spec, target, kind, strategy, mapping)
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
    log.info(f"  mapping  {elastic.format_mapping(plan.mapping)}")
    log.info(f"  sparsity {fmt_pct(ticket.sparsity)} -> {fmt_pct(result.sparsity)}")
    log.info(f"wrote {output if output != STDIO else 'stdout'}")


SrcArg = Annotated[str, typer.Argument(metavar="SRC", help="Source ticket file ('-' for stdin).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target architecture, resolved within the source's family.")]
MappingOpt = Annotated[
    Optional[str],
    typer.Option("--mapping", help="Explicit block mapping in the reference syntax 'src:dst,dst;src:dst' "
                 "(local block ids; one string for every stage, or one per stage joined by '|')."),
]


@app.command(epilog="Example: elth stretch r20.safetensors --target resnet56 -o r56.safetensors  "
             "(resnet20 -> resnet32 with append maps each stage as B0 B1 B2 B1 B2)")
def stretch(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="append (default; extra blocks cycle "
                        "through the source's non-first blocks) or interpolate (each block repeated in place).")] = None,
    mapping: MappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stretch a ticket to a deeper network of its family by replicating blocks (mask and init weights)."""
    _transform_command("stretch", source, target, output, strategy, mapping, force, json_out, quiet)


@app.command(epilog="Example: elth squeeze r56.safetensors --target resnet32 --strategy spaced -o r32.safetensors  "
             "(resnet56 -> resnet32 spaced keeps blocks 0 2 4 6 8 of each stage)")
def squeeze(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="keep-first (default; keeps blocks "
                        "0..m-1, the inverse of append) or spaced (evenly spaced blocks, always block 0).")] = None,
    mapping: MappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Squeeze a ticket to a shallower network of its family by dropping blocks, keeping their order."""
    _transform_command("squeeze", source, target, output, strategy, mapping, force, json_out, quiet)


# ----- find ---------------------------------------------------------------------------------------
@app.command(epilog="Example: elth find --method random --arch resnet20-w4 --dataset digits --sparsity 0.8 -o r20.safetensors")
def find(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture (elth archs lists them).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Data set: fixes input shape and class count.")],
    output: OutOpt,
    method: Annotated[str, typer.Option("--method", "-m", help="random: seeded random init + random mask.")] = "random",
    sparsity: Annotated[float, typer.Option("--sparsity", help="Fraction of prunable weights pruned, in [0, 1).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation and the mask.")] = 0,
    distribution: Annotated[str, typer.Option("--distribution", help="random masks: layerwise (same rate per "
                            "tensor, the paper's baseline) or global.")] = "layerwise",
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find a ticket. --method random: a randomly initialised network with a random mask at --sparsity."""
    from elth_cli import find as find_mod

    _check_stdout_use(output, json_out)
    check_output_path(output, force)
    if method not in find_mod.FIND_METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(find_mod.FIND_METHODS)}")
    ticket = find_mod.find_random(arch, dataset, sparsity, seed=seed, distribution=distribution,
                                  data_dir=str(data_dir) if data_dir else None)
    sha = ticket.save(output, force=force)
    if json_out:
        print_json({"path": output, "arch": ticket.arch, "sparsity": ticket.sparsity, "method": ticket.method, "sha256": sha})
        return
    Log(quiet).info(f"random ticket {ticket.arch} on {ticket.dataset}: sparsity {fmt_pct(ticket.sparsity)}, "
                    f"seed {seed} -> {output if output != STDIO else 'stdout'}")


# ----- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user errors become one line on stderr and a non-zero exit status, never a traceback."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="elth", standalone_mode=False)
    except ElthError as e:
        _fail(str(e), e.exit_code)
    except typer.Exit as e:
        code = e.exit_code
    except _PARSE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # `elth` alone: the help has been shown already
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "elth"
        _fail(f"{e.format_message()} (see {where} --help)".replace("\n", " "), getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
