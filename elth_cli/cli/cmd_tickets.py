"""The commands that read and transform tickets without training: ``archs``, ``info``, ``stretch``,
``squeeze``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elth_cli import archs
from elth_cli.cli.app import command
from elth_cli.cli.params import METHOD, ForceOpt, JsonOpt, OutOpt, QuietOpt, check_stdout_use
from elth_cli.cli.render import print_many, print_run, print_ticket, ticket_summary
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.report import Log, fmt_int, fmt_pct, make_table, print_json, stdout_console


@command("archs")
def archs_cmd(json_out: JsonOpt = False) -> None:
    """List the architectures: name, family, blocks per stage, parameters, forward MACs.

    CIFAR ResNets take any depth 6n+2 (resnet8, resnet14, ...) and a width suffix (resnet20-w4);
    VGGs take a width too (vgg16-w16). Counts are for each family's native input (CIFAR-10: 3x32x32,
    10 classes; ImageNet: 3x224x224, 1000 classes). MACs are the dense forward multiply-accumulates
    of one sample through the conv and linear layers (FLOPs = 2 x MACs); --json gives them exactly.
    timm's vision transformers (timm:vit_tiny_patch16_224-d6, with the timm extra) are not listed.
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


@command("info")
def info(
    paths: Annotated[list[str], typer.Argument(metavar="TICKET_OR_RUN", help="Ticket files ('-' for stdin) or IMP "
                     "run folders (the --out-dir of find --method imp).")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show a ticket: architecture, sparsity overall and per layer, rewind step, provenance, metrics, and the
    configuration of the run that made it (hyperparameters, versions, device, processes, host). An IMP run folder:
    its rounds (sparsity, test accuracy, steps, seconds, file) and the round in progress. Several: one table of
    every ticket (a run folder gives its rounds).

    --json prints a list with one document per argument, whatever their number: a ticket's (kind "ticket") or a
    run folder's (kind "run").
    """
    from elth_cli.find.runfolder import run_summary
    from elth_cli.ticket import Ticket

    if paths.count(STDIO) > 1:
        raise UsageError("only one ticket can come from stdin ('-')")
    is_run = [p != STDIO and Path(p).is_dir() for p in paths]
    if json_out:
        print_json([{"kind": "run", "path": p, **run_summary(p)} if run else
                    {"kind": "ticket", "path": "stdin" if p == STDIO else p, **ticket_summary(Ticket.load(p, arrays="numpy"))}
                    for p, run in zip(paths, is_run)])
        return
    con = stdout_console()
    if len(paths) == 1 and is_run[0]:
        print_run(con, run_summary(paths[0]))
    elif len(paths) == 1:
        print_ticket(con, Ticket.load(paths[0], arrays="numpy"), "stdin" if paths[0] == STDIO else paths[0])
    else:
        files = [r["path"] for p, run in zip(paths, is_run) for r in (run_summary(p)["rounds"] if run else [{"path": p}])]
        print_many(con, [{"path": "stdin" if f == STDIO else f, **ticket_summary(Ticket.load(f, arrays="numpy"))}
                            for f in files])


SrcArg = Annotated[str, typer.Argument(metavar="SRC", help="Source ticket file ('-' for stdin).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", rich_help_panel=METHOD,
                                        help="Target architecture, resolved within the source's family.")]
MappingOpt = Annotated[Optional[str], typer.Option(
    "--mapping", rich_help_panel=METHOD, help="Explicit block mapping 'src:dst,dst;src:dst' in elth's numbering: "
    "local block ids from 0 within a stage (an MLP's or FC stack's hidden layers 0..n-1); one string for every "
    "stage, or one per stage joined by '|'. What elth info shows as 'mapping'.")]
ReferenceMappingOpt = Annotated[Optional[str], typer.Option(
    "--reference-mapping", rich_help_panel=METHOD, help="The mapping in the reference's own --block_mapping "
    "numbering (ElasticLTH; what elth info shows as 'reference'): the same as --mapping except for MLPs (fc_layers "
    "positions, the narrow layer named too) and VGGs with an FC stack (classifier places, 2j for hidden layer j).")]


def transform_command(kind: str, source: str, target: str, output: str, strategy: Optional[str],
                      mapping: Optional[str], reference_mapping: Optional[str], force: bool, json_out: bool,
                      quiet: bool) -> None:
    """``stretch`` and ``squeeze``: plan the mapping, apply it, save, and say what was done."""
    from elth_cli import elastic
    from elth_cli.ticket import Ticket

    check_stdout_use(output, json_out)
    check_output_path(output, force)
    log = Log(quiet)
    ticket = Ticket.load(source, arrays="numpy")  # read, mapped and written without torch
    plan = elastic.plan_transform(ticket.spec, target, kind, strategy, mapping, reference_mapping)
    for note in plan.notes:
        log.warn(note)
    other = elastic.as_reference_reading(mapping, plan.source, plan.target) if mapping is not None else None
    if other is not None:  # valid in both numberings, with two meanings: say which one was taken
        log.warn(f"--mapping {mapping} is read in elth's numbering ({elastic.format_mapping(plan.mapping)}); in the "
                 f"reference's it would mean {other} in elth's: for that, pass it as --reference-mapping")
    result = elastic.apply_transform(ticket, plan)
    sha = result.save(output, force=force)
    if json_out:
        print_json({"source": {"path": source, "arch": ticket.arch, "sparsity": ticket.sparsity, "sha256": ticket.sha256},
                    "target": {"path": output, "arch": result.arch, "sparsity": result.sparsity, "sha256": sha},
                    "transform": plan.describe()})
        return
    _say_transform(log, kind, ticket, result, plan, output)


def _say_transform(log: Log, kind: str, ticket: Any, result: Any, plan: Any, output: str) -> None:
    from elth_cli import elastic

    log.info(f"{kind} {ticket.arch} -> {result.arch} ({plan.strategy})")
    for s, stage in enumerate(plan.mapping):
        log.info(f"  stage {s}: {plan.source.depths[s]} -> {len(stage)} blocks: {' '.join(f'B{i}' for i in stage)}")
    log.info(f"  mapping  {elastic.format_mapping(plan.mapping)} (elth's numbering: --mapping)")
    ref, why = elastic.reference_mapping(plan.source, plan.mapping)
    log.info(f"  reference --block_mapping '{ref}' (the reference's numbering: --reference-mapping)" if ref else
             f"  no reference --block_mapping: {why}")
    log.info(f"  sparsity {fmt_pct(ticket.sparsity)} -> {fmt_pct(result.sparsity)}")
    log.info(f"wrote {output if output != STDIO else 'stdout'}")


@command("stretch")
def stretch(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", "-s", rich_help_panel=METHOD, help="append (default; extra blocks cycle through the source's "
        "non-first blocks) or interpolate (each block repeated in place).")] = None,
    mapping: MappingOpt = None,
    reference_mapping: ReferenceMappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stretch a ticket to a deeper network of its family by replicating blocks (mask and init weights)."""
    transform_command("stretch", source, target, output, strategy, mapping, reference_mapping, force, json_out, quiet)


@command("squeeze")
def squeeze(
    source: SrcArg,
    target: TargetOpt,
    output: OutOpt,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", "-s", rich_help_panel=METHOD, help="keep-first (default; keeps blocks 0..m-1, the inverse of "
        "append) or spaced (evenly spaced blocks, always block 0).")] = None,
    mapping: MappingOpt = None,
    reference_mapping: ReferenceMappingOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Squeeze a ticket to a shallower network of its family by dropping blocks, keeping their order."""
    transform_command("squeeze", source, target, output, strategy, mapping, reference_mapping, force, json_out, quiet)
