"""The ``elth`` command line: a thin typer layer that parses, calls the core and prints.

* :mod:`.app`: the app and its entry point (:func:`main`: errors as one line, exit statuses, stops,
  closed pipes);
* :mod:`.params`: the shared options, and those generated from the recipe's and a run's fields;
* :mod:`.render`: what ``info`` and ``compare`` print, text and JSON;
* one module per command group: :mod:`.cmd_tickets` (archs, info, stretch, squeeze), :mod:`.cmd_units`
  (align, widen, narrow), :mod:`.cmd_compare`,
  :mod:`.cmd_interop` (import, export), :mod:`.cmd_train` (train, eval), :mod:`.cmd_find`, :mod:`.cmd_demo`;
* :mod:`.examples`: the worked examples every ``--help`` prints; :mod:`.reference`: docs/cli.md.

Importing this package registers every command, in the order ``elth --help`` lists them.
"""

from elth_cli.cli.app import app, main
from elth_cli.cli import cmd_tickets, cmd_units, cmd_compare, cmd_interop, cmd_train, cmd_find, cmd_demo, cmd_run  # noqa: F401,E402 - register

__all__ = ["app", "main"]
