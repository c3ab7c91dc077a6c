"""``--family-module``: the global option that registers a module's families for one command."""

from __future__ import annotations

from elth_cli.errors import UsageError

# Accepted anywhere before "--": before the command's name (the app's option, in `elth --help`) or after it.
FAMILY_MODULE = "--family-module"


def take_family_modules(args: list[str]) -> list[str]:
    """The command line without its ``--family-module`` options, which may come anywhere before ``--``; each module
    named is added to ``ELTH_FAMILIES`` (the registry reads it when a name is first resolved, and every process
    the command starts inherits it). A file that does not exist is refused here, before any work."""
    from elth_cli import archs

    kept: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            kept += args[i:]
            break
        if arg == FAMILY_MODULE or arg.startswith(FAMILY_MODULE + "="):
            if arg == FAMILY_MODULE and i + 1 >= len(args):
                raise UsageError(f"{FAMILY_MODULE} needs a module name or a .py file")
            ref = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            archs.name_family_module(ref)
            i += 1 if "=" in arg else 2
            continue
        kept.append(arg)
        i += 1
    return kept
