"""How elth adjusts typer: the help of an argument, and parameters that need no pydantic.

Each adjustment checks that the typer internals it touches are there, and leaves a typer without them
alone (``elth --help`` and every command then work as typer makes them, a little slower).
"""

from __future__ import annotations

from typing import Any

import typer


def apply() -> None:
    """Make both adjustments (once, when the app is created)."""
    _plain_argument_help()
    _strings_without_pydantic()


def _plain_argument_help() -> None:
    """typer >= 0.2x prints an argument's Python type after its name in --help (``TICKET <list[str]>``,
    ``SRC <str>``); the metavar already says what the argument is. Show the name alone."""
    argument = getattr(getattr(typer, "core", None), "TyperArgument", None)
    if argument is not None and hasattr(argument, "display_type_rich"):
        argument.display_type_rich = lambda self, ctx: None


def _strings_without_pydantic() -> None:
    """typer >= 0.2x coerces every parameter through a pydantic TypeAdapter, and pydantic's import is a fifth of
    the start-up of a command such as ``info``. A ``str`` or ``list[str]`` parameter (optional or not) and a
    flag have nothing to coerce (click hands over strings and bools): they get a runtime parameter of their own,
    which hands anything else to typer's. An older or newer typer without these internals is left alone."""
    from typing import Optional as _Optional

    core, coercion = getattr(typer, "core", None), getattr(typer, "_coercion", None)
    base = getattr(coercion, "RuntimeParam", None)
    build = getattr(core, "build_runtime_param", None)
    if base is None or build is None:
        return
    lists, plain = (list[str], _Optional[list[str]]), (str, _Optional[str], bool, list[str], _Optional[list[str]])

    class Plain(base):  # type: ignore[misc, valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation in lists and all(isinstance(v, str) for v in value):
                return list(value)
            if isinstance(value, bool if self.annotation is bool else str) and self.annotation not in lists:
                return value
            descriptor = coercion.resolve_type_descriptor(self.annotation, self.parameter_info)
            return build(descriptor)._coerce_value(value, param, ctx)  # anything else: typer's own

    def build_plainly(descriptor: Any) -> Any:
        if descriptor.annotation in plain and descriptor.file_annotation is None:
            return Plain(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation)
        return build(descriptor)

    core.build_runtime_param = build_plainly
