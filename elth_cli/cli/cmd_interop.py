"""``elth import`` and ``elth export``: open_lth / ElasticLTH run folders to and from tickets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from elth_cli.cli.app import command
from elth_cli.cli.params import DataDirOpt, ForceOpt, JsonOpt, OutOpt, QuietOpt, check_stdout_use, complete_choices
from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO, check_distinct, check_output_path
from elth_cli.report import Log, fmt_pct, print_json


@command("import")
def import_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="open_lth / ElasticLTH run folder (holds "
                       "mask.pth and `model_ep{E}_it{I}.pth`).")],
    output: OutOpt,
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture, elth's or open_lth's name "
                    "(resnet20, cifar_resnet_20, cifar_vgg_16).", autocompletion=complete_choices("arch"))],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Data set the run trained on (cifar10, "
                       "imagenet, ...): fixes input channels and classes (checked against the weights).",
                       autocompletion=complete_choices("dataset"))],
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

    check_stdout_use(output, json_out)
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


EXPORT_FORMATS = ("open-lth", "state-dict")


@command("export")
def export(
    ticket_path: Annotated[str, typer.Argument(metavar="TICKET", help="Ticket file ('-' for stdin).")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="open-lth: the folder to create (open_lth run "
                       "layout); state-dict: OUT.safetensors (the masks go to OUT.masks.safetensors).")],
    fmt: Annotated[str, typer.Option("--format", help="open-lth (a run folder) or state-dict (the masked weights as "
                   "the plain state dict the model class loads with load_state_dict(strict=True): timm's, "
                   "torchvision's ResNet, elth's), plus the masks.", autocompletion=lambda: list(EXPORT_FORMATS))
               ] = "open-lth",
    weights: Annotated[Optional[str], typer.Option("--weights", help="state-dict: trained or init (the weights at "
                       "the rewind step); default trained when the ticket is trained, else init.")] = None,
    trained_step: Annotated[Optional[str], typer.Option("--trained-step", help="open-lth: step to name the trained "
                            "weights with when the ticket does not record it (160ep, 62560it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT (open-lth: a folder that is not empty) if it "
                     "exists.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a ticket as an open_lth run folder: mask.pth (int 0/1), `model_ep{E}_it{I}.pth` state dicts
    (init at the rewind step, trained at the final step) and sparsity_report.json.

    --format state-dict writes OUT.safetensors, the weights with the masks applied under the model's own keys (timm's
    model for timm: tickets, torchvision's resnet for imagenet-resnet18/34/50/101/152, else elth's model), and
    OUT.masks.safetensors (bool, the same keys); each file atomically."""
    from elth_cli import interop
    from elth_cli.ticket import Ticket

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if fmt == "state-dict":
        _export_state_dict(ticket_path, str(out_dir), weights, trained_step, force, json_out, quiet)
        return
    if weights is not None:
        raise UsageError("--weights chooses the weights of --format state-dict; an open-lth run folder holds both")
    holder = [Ticket.load(ticket_path)]  # export lets the ticket go once its weights are written
    facts = {"sha256": holder[0].sha256, **interop.summary(holder[0])}
    plan = interop.export_ticket(holder, out_dir, force=force, trained_step=trained_step)
    doc = {"ticket": ticket_path, "sha256": facts.pop("sha256"), "output": str(out_dir), "files": plan.files, **facts}
    if json_out:
        print_json(doc)
        return
    Log(quiet).info(f"exported {doc['arch']} ({fmt_pct(doc['sparsity'])} sparse) to {out_dir}: {', '.join(plan.files)}")


def _export_state_dict(ticket_path: str, out: str, weights: Optional[str], trained_step: Optional[str], force: bool,
                       json_out: bool, quiet: bool) -> None:
    """``export --format state-dict``: OUT.safetensors and OUT.masks.safetensors."""
    from elth_cli import interop
    from elth_cli.ticket import Ticket

    if trained_step is not None:
        raise UsageError("--trained-step names the files of an open-lth run folder; --format state-dict does not use it")
    if weights not in (None, "init", "trained"):
        raise UsageError(f"--weights must be init or trained, not {weights!r}")
    masks = interop.state_dict.check_outputs(out, force)
    check_distinct({"TICKET": ticket_path, "OUT": out, "the masks file": masks})
    ticket = Ticket.load(ticket_path)
    result = interop.export_state_dict(ticket, out, weights, force=force)
    if json_out:
        print_json({"ticket": ticket_path, "sha256": ticket.sha256, "format": "state-dict", "output": out,
                    "masks": result.masks_file, "weights": result.weights, "model": result.model,
                    **interop.summary(ticket)})
        return
    Log(quiet).info(f"exported the {result.weights} weights of {ticket.arch} ({fmt_pct(ticket.sparsity)} sparse) to "
                    f"{out}, masks to {result.masks_file}; they load into {result.model}")
