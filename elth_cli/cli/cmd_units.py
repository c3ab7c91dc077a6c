"""The commands that move a ticket across initialisations and widths: ``align``, ``widen``, ``narrow``."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from elth_cli.cli.app import command
from elth_cli.cli.params import DATA, METHOD, DataDirOpt, DatasetOpt, ForceOpt, JsonOpt, OutOpt, QuietOpt, check_stdout_use
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.report import Log, fmt_pct, print_json

TicketArg = Annotated[str, typer.Argument(metavar="TICKET", help="The ticket whose mask moves ('-' for stdin).")]
WidthTargetOpt = Annotated[str, typer.Option("--target", "-t", rich_help_panel=METHOD, help="Target architecture: "
                                             "the same family and depth at another width (resnet20-w8).")]
InitOpt = Annotated[Optional[str], typer.Option("--init", rich_help_panel=METHOD, help="The target's weights: fresh "
                    "(the family's init, --seed; default), from (--init-from's init weights) or carry (the source's, "
                    "duplicated inputs divided by their copies: the same function, but copies train alike).")]
InitFromOpt = Annotated[Optional[str], typer.Option("--init-from", rich_help_panel=METHOD, help="A ticket of the "
                        "target architecture whose init weights the result takes (e.g. its IMP run's round 0).")]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel=METHOD, help="Seed of --init fresh's draw.")]


def _say(log: Log, what: str, ticket: Any, result: Any, output: str) -> None:
    log.info(what)
    log.info(f"  sparsity {fmt_pct(ticket.sparsity)} -> {fmt_pct(result.sparsity)}")
    log.info(f"wrote {output if output != STDIO else 'stdout'}")


def _document(path: str, ticket: Any, output: str, result: Any, sha: str) -> dict[str, Any]:
    return {"source": {"path": path, "arch": ticket.arch, "sparsity": ticket.sparsity, "sha256": ticket.sha256},
            "target": {"path": output, "arch": result.arch, "sparsity": result.sparsity, "sha256": sha},
            "transform": result.transform}


@command("align")
def align(
    ticket: TicketArg,
    to: Annotated[str, typer.Option("--to", rich_help_panel=METHOD, help="The other initialisation: a dense ticket "
                  "trained from it, or its IMP run folder (its round 0). The result takes its init weights.")],
    output: OutOpt,
    source: Annotated[Optional[str], typer.Option("--source", rich_help_panel=METHOD, help="The dense network "
                      "trained from TICKET's own initialisation (a ticket or run folder); default: round 0 of "
                      "TICKET's IMP run folder.")] = None,
    by: Annotated[str, typer.Option("--by", rich_help_panel=METHOD, help="weights (weight matching), activations "
                  "(activation matching on training images) or none (the mask as it is: the naive control).")]
    = "weights",
    match_on: Annotated[str, typer.Option("--match-on", rich_help_panel=METHOD, help="Which weights of the two "
                        "dense networks are matched: trained, or init (no training of --source needed).")] = "trained",
    signs: Annotated[bool, typer.Option("--signs", rich_help_panel=METHOD, help="Also give each kept weight the sign "
                     "of TICKET's own init weight (permuted), with --to's magnitude.")] = False,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=METHOD, help="Seed of weight matching's order over "
                    "the layers, and of the images' order for --by activations.")] = 0,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    batches: Annotated[int, typer.Option("--batches", rich_help_panel=DATA, help="--by activations: training "
                       "batches whose activations are correlated.")] = 10,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Move a ticket's mask onto another initialisation of its network: permute it onto the other network's units
    (found by matching two dense networks trained from the two initialisations) and take the other's init
    weights. --by none moves it unpermuted (the naive control)."""
    from elth_cli.align import AlignOptions, AlignRequest, align_job

    check_stdout_use(output, json_out)
    if batches < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--batches")
    request = AlignRequest(ticket, to, output, source, dataset, str(data_dir) if data_dir else None, batches)
    found, result, sha = align_job(request, AlignOptions(by, match_on, signs, seed), force=force)
    if json_out:
        print_json(_document(ticket, found, output, result, sha))
        return
    t = result.transform
    how = "unpermuted (--by none)" if by == "none" else f"by {by} ({match_on} weights): {t['units_moved']} of " \
                                                        f"{t['units']} units moved"
    _say(Log(quiet), f"align {found.arch} onto {to} {how}{', signs kept' if signs else ''}", found, result, output)


def _width(kind: str, source: str, target: str, output: str, init: Optional[str], init_from: Optional[str], seed: int,
           select: str, force: bool, json_out: bool, quiet: bool) -> None:
    """``widen`` and ``narrow``: load, transfer, save, and say what was done."""
    from elth_cli.ticket import Ticket
    from elth_cli.width import WidthOptions, transfer_width

    check_stdout_use(output, json_out)
    check_output_path(output, force)
    init = init or ("from" if init_from is not None else "fresh")
    if (init == "from") != (init_from is not None):
        raise typer.BadParameter("--init-from goes with --init from (or no --init)", param_hint="--init")
    ticket = Ticket.load(source)
    other = Ticket.load(init_from) if init_from is not None else None
    result = transfer_width(ticket, target, WidthOptions(init, seed, other, select), direction=kind)
    sha = result.save(output, force=force)
    if json_out:
        print_json(_document(source, ticket, output, result, sha))
        return
    changed = sorted({f"x{m / n:g}" for n, m in result.transform["units"].values() if n != m})
    _say(Log(quiet), f"{kind} {ticket.arch} -> {result.arch} (units {', '.join(changed)}; init {init}"
         f"{f', seed {seed}' if init == 'fresh' else ''}{f', select {select}' if kind == 'narrow' else ''})",
         ticket, result, output)


@command("widen")
def widen(source: TicketArg, target: WidthTargetOpt, output: OutOpt, init: InitOpt = None, init_from: InitFromOpt = None,
          seed: SeedOpt = 1, force: ForceOpt = False, json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Carry a ticket to a wider network of its family: every layer's units (channels, neurons, heads) repeated a
    whole number of times, masks tiled unit by unit."""
    _width("widen", source, target, output, init, init_from, seed, "first", force, json_out, quiet)


@command("narrow")
def narrow(
    source: TicketArg, target: WidthTargetOpt, output: OutOpt, init: InitOpt = None, init_from: InitFromOpt = None,
    seed: SeedOpt = 1,
    select: Annotated[str, typer.Option("--select", rich_help_panel=METHOD, help="Which units each layer keeps: first "
                      "(what undoes widen) or densest (the most kept weights).")] = "first",
    force: ForceOpt = False, json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Carry a ticket to a narrower network of its family: every layer keeps a whole fraction of its units."""
    _width("narrow", source, target, output, init, init_from, seed, select, force, json_out, quiet)
