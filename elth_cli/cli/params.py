"""The command line's options, defined once: the shared ones (output, data, devices) and those generated
from the fields of :class:`~elth_cli.train.config.TrainConfig` (the recipe) and
:class:`~elth_cli.train.options.RunOptions` (how a run goes).

A field's :class:`~elth_cli.train.config.Flag` is its option: :func:`with_fields` adds every flagged
field to a command's signature, in its ``--help`` panel, and the command reads them back by field
name (:func:`recipe_options`, :func:`run_flags`). So a new hyperparameter or run option is its
field, its check and its use; no command lists it.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from elth_cli.errors import UsageError
from elth_cli.fileio import STDIO
from elth_cli.train.config import Flag, TrainConfig, recipe_hint
from elth_cli.train.options import RunOptions

# The --help panels, in the order a user reads them.
METHOD, TRAINING, DATA, DEVICES, OUTPUT = "Method", "Training", "Data", "Devices", "Output"

def _choices(kind: str) -> list[str]:
    """The values an option takes, for shell completion (none of this imports torch)."""
    if kind == "method":
        from elth_cli.find.methods import NAMES

        return list(NAMES)
    if kind == "arch":
        from elth_cli import archs

        return [s.name for s in archs.standard_archs()]
    if kind == "dataset":
        from elth_cli import data

        return list(data.dataset_names())
    return {"plot_kind": ["auto", "accuracy", "layers", "interpolation"], "precision": ["auto", "bf16", "fp16", "fp32"],
            "device": ["auto", "cpu", "cuda"], "schedule": ["step", "cosine"],
            "optimizer": ["sgd", "adamw"]}.get(kind, [])


def complete_choices(kind: str) -> Callable[[str], list[str]]:
    """A typer ``autocompletion`` callback: the values of ``kind`` that start with what was typed."""
    def complete(incomplete: str) -> list[str]:
        return [c for c in _choices(kind) if c.startswith(incomplete)]
    return complete


OutOpt = Annotated[str, typer.Option("-o", "--output", help="Output ticket file ('-' for stdout).",
                                     rich_help_panel=OUTPUT)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.", rich_help_panel=OUTPUT)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout instead of text.",
                                       rich_help_panel=OUTPUT)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr (errors and "
                                        "warnings still print); stdout is unchanged.", rich_help_panel=OUTPUT)]
DataDirOpt = Annotated[Optional[Path], typer.Option(
    "--data-dir", envvar="ELTH_DATA", rich_help_panel=DATA, help="Folder holding the data sets (default: "
    "$XDG_CACHE_HOME/elth/data, else ~/.cache/elth/data; docs/datasets.md).")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", rich_help_panel=DATA, autocompletion=complete_choices(
    "dataset"), help="Data set (default: the one the ticket records).")]
DownloadOpt = Annotated[bool, typer.Option("--download", rich_help_panel=DATA,
                                           help="Download the data set when it is missing.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", rich_help_panel=DATA, help="DataLoader workers for "
                                                   "folder data sets (imagenet, imagefolder).")]
DistTimeoutOpt = Annotated[float, typer.Option(
    "--dist-timeout", envvar="ELTH_DIST_TIMEOUT", rich_help_panel=DEVICES, help="Several processes (torchrun, srun): "
    "seconds a rank waits for the others, to join and at every exchange, before it fails.")]
EvalResizeOpt = Annotated[Optional[int], typer.Option(
    "--resize", rich_help_panel=DATA, help="Resize every image to N x N (bilinear) for a ticket made for that input "
    "size (default: the --resize its training recorded).")]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel=DEVICES, autocompletion=complete_choices("device"),
                                        help="auto (CUDA when available), cpu, cuda or cuda:N.")]

# What the command line defaults to where the record's own default is not what a user wants: device and
# precision are resolved per machine.
_CLI_DEFAULTS = {"device": "auto", "precision": "auto"}


def _parameter(name: str, flag: Flag, default: Any) -> inspect.Parameter:
    hint = recipe_hint(name)  # the recipe decides these defaults: say what each recipe has
    completion = complete_choices(name) if name in ("precision", "device", "schedule", "optimizer") else None
    option = typer.Option(*flag.decls, help=f"{flag.help} [{hint}]" if hint else flag.help, rich_help_panel=flag.panel,
                          autocompletion=completion)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[flag.type, option])


def _cli_default(record: type, name: str, flag: Flag) -> Any:
    if name in _CLI_DEFAULTS:
        return _CLI_DEFAULTS[name]
    if getattr(flag.type, "__origin__", None) is not None and type(None) in getattr(flag.type, "__args__", ()):
        return None  # Optional: not given means the recipe's (or the record's) value
    return next(f.default for f in dataclasses.fields(record) if f.name == name)


def field_parameters(record: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per flagged field of ``record`` (TrainConfig, RunOptions), in field order."""
    return [_parameter(name, flag, _cli_default(record, name, flag)) for name, flag in record.flags().items()
            if name not in skip]


def with_fields(*records: type, skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the flagged fields of ``records`` to a command's signature (the command takes them as ``**options``).

    typer reads a command's parameters from its signature, so the generated ones are options like any
    other: in ``--help`` (in their panel), in completion, in docs/cli.md.
    """
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)  # the module's annotations are strings (__future__)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        named = {p.name for p in own}
        generated = [p for r in records for p in field_parameters(r, skip) if p.name not in named]
        fn.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
        return fn
    return wrap


def recipe_options(options: dict[str, Any]) -> dict[str, Any]:
    """The recipe's options among a command's parameters (by field name), leaving out those not given."""
    return {name: options[name] for name in TrainConfig.flags() if options.get(name) is not None}


def run_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The run options among a command's parameters (by field name), leaving out those not given."""
    return {name: options[name] for name in RunOptions.flags() if options.get(name) is not None}


def check_stdout_use(output: str | None, json_out: bool) -> None:
    """A ticket and a JSON document cannot share stdout."""
    if output == STDIO and json_out:
        raise UsageError("--json and '-o -' both want stdout; write the ticket to a file or drop --json")


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters the command line set (not their defaults, nor an environment variable a cluster sets for
    every job)."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given.add(name)
    return given


def flag_of(ctx: typer.Context, name: str) -> str:
    """How a parameter is spelled on the command line (``--update-every``)."""
    for p in ctx.command.params:
        if p.name == name:
            return p.opts[0] if len(p.opts[0]) > 2 else p.opts[-1]
    return name
