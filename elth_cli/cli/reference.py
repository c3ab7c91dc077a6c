"""The CLI reference (docs/cli.md), generated from the typer app so it cannot drift.

    python -m elth_cli.cli.reference > docs/cli.md

A test regenerates it and compares with the committed file.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import typer
from typer.models import ArgumentInfo, OptionInfo

from elth_cli import cli
from elth_cli.cli.examples import EXAMPLES


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Union and len(args) == 1:
        return _type_name(args[0])
    if origin in (list, typing.List):
        return f"{_type_name(args[0])}, repeatable"
    return {str: "text", int: "integer", float: "number", bool: "flag", Path: "path"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(default: Any, type_name: str) -> str:
    if default is inspect.Parameter.empty or default is ... or default is None:
        return ""
    if type_name == "flag":
        return "on" if default else "off"
    return f"`{default}`"


def _paragraphs(text: str) -> str:
    # Docstrings wrap at the source's width: re-flow each paragraph onto one line.
    parts = [" ".join(p.split()) for p in textwrap.dedent(text or "").strip().split("\n\n")]
    return "\n\n".join(p for p in parts if p)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def command_entries() -> list[tuple[str, Any]]:
    out = []
    for info in cli.app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        out.append((name, info))
    return out


def _parameter_rows(callback: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str, str, str]]]:
    """A command's arguments (metavar, help) and options (names, type, default, help), in order."""
    hints = typing.get_type_hints(callback, include_extras=True)
    arguments, options = [], []
    for pname, param in inspect.signature(callback).parameters.items():
        annotation = hints.get(pname, param.annotation)  # generated options are not in the hints
        if isinstance(annotation, type) and issubclass(annotation, typer.Context):
            continue  # the command's context (typer passes it): no option
        base, meta = annotation, None
        if typing.get_origin(annotation) is typing.Annotated:
            base, *extras = typing.get_args(annotation)
            meta = next((e for e in extras if isinstance(e, (OptionInfo, ArgumentInfo))), None)
        type_name = _type_name(base)
        help_text = " ".join((getattr(meta, "help", None) or "").split())
        if isinstance(meta, ArgumentInfo):
            arguments.append((getattr(meta, "metavar", None) or pname.upper(), help_text))
            continue
        decls = list(getattr(meta, "param_decls", None) or ())
        first = getattr(meta, "default", None)
        if isinstance(first, str) and first.startswith("-"):
            decls.insert(0, first)  # Annotated style: typer.Option("--json", ...) passes the name first
        decls = decls or [f"--{pname.replace('_', '-')}"]
        envvar = getattr(meta, "envvar", None)
        if envvar:
            help_text += f" Environment: `{envvar}`."
        required = param.default is inspect.Parameter.empty
        default = "required" if required else _default_text(param.default, type_name)
        options.append((", ".join(f"`{d}`" for d in decls), type_name, default, help_text))
    return arguments, options


def _command_section(name: str, callback: Any) -> list[str]:
    """One command's section: its help, usage, tables of arguments and options, and examples."""
    arguments, options = _parameter_rows(callback)
    usage = f"elth {name}" + "".join(f" {a[0]}" for a in arguments) + " [OPTIONS]"
    lines = [f"## elth {name}", "", _paragraphs(inspect.getdoc(callback) or ""), "", "```", usage, "```", ""]
    if arguments:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [f"| `{a}` | {_cell(h)} |" for a, h in arguments]
        lines.append("")
    if options:
        lines += ["| option | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| {d} | {t} | {_cell(df)} | {_cell(h)} |" for d, t, df, h in options]
        lines.append("")
    if name in EXAMPLES:
        lines += ["Examples (each runs as written; tests/test_examples.py runs them in this order):", "", "```sh"]
        for e in EXAMPLES[name]:
            lines += [f"# {e.what}", e.command]
        lines += ["```", ""]
    return lines


def render_cli_reference() -> str:
    """Markdown for every command: summary, usage, arguments and options with defaults, example."""
    lines = [
        "# CLI reference",
        "",
        "Generated from the typer app by `python -m elth_cli.cli.reference > docs/cli.md`; a test keeps it in sync.",
        "Every command also prints this with `--help`. Exit status: 0 success, 1 the work failed,",
        "2 the command line was wrong, 75 a training stopped by SIGTERM/SIGUSR1 after writing its",
        "checkpoint (run the same command again to resume), 130 interrupted by Ctrl-C, 141 the reader of",
        "stdout closed the pipe before the end (`| head`; 128 + SIGPIPE, as a shell reports it).",
        "",
        "| command | what |",
        "|---|---|",
    ]
    entries = command_entries()
    for name, info in entries:
        summary = _paragraphs(inspect.getdoc(info.callback) or "").split("\n\n")[0]
        lines.append(f"| [`elth {name}`](#elth-{name}) | {_cell(summary)} |")
    lines.append("")
    for name, info in entries:
        lines += _command_section(name, info.callback)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_cli_reference())
