"""Checking the values elth reads back from its own files: types and ranges, one readable failure.

A check takes a value and returns it (possibly converted) or raises :class:`Invalid` saying what
was expected. The loaders (ticket metadata, checkpoint metadata, IMP run folders) describe their
fields with these checks and turn :class:`Invalid` into their own one-line error naming the field,
so a file with a value of the wrong type or range is refused on load instead of crashing later.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

Check = Callable[[Any], Any]


class Invalid(ValueError):
    """A value that does not fit its field; the message says what was expected."""


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"a string, got {_show(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"true or false, got {_show(value)}")
    return value


def _ascii_digits(text: str) -> bool:
    """Only 0-9 ('¹' and other Unicode digits pass str.isdigit but not int())."""
    return text.isascii() and text.isdigit()


def _range(lo: float | None, hi: float | None, below_hi: bool = False) -> str:
    """'in [0, 1)', 'of at least 1', 'of at most 5'."""
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}{')' if below_hi else ']'}"
    return f"of at least {lo}" if lo is not None else f"{'below' if below_hi else 'of at most'} {hi}"


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """A whole number (JSON number or decimal text) in [lo, hi]."""
    def check(value: Any) -> int:
        if isinstance(value, str) and _ascii_digits(value.strip().lstrip("-")) and len(value) < 30:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"a whole number, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(f"a whole number {_range(lo, hi)}, got {value}")
        return value
    return check


def number(lo: float | None = None, hi: float | None = None, below_hi: bool = False, nan: bool = False) -> Check:
    """A finite number (JSON number or decimal text) in [lo, hi] (or [lo, hi) with ``below_hi``);
    ``nan``: NaN too (a metric that was never measured)."""
    def check(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise Invalid(f"a number, got {_show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"a number, got {_show(value)}")
        if nan and math.isnan(value):
            return value
        if not math.isfinite(value):
            raise Invalid(f"a finite number, got {value}")
        too_high = hi is not None and (value >= hi if below_hi else value > hi)
        if (lo is not None and value < lo) or too_high:
            raise Invalid(f"a number {_range(lo, hi, below_hi)}, got {value}")
        return value
    return check


def optional(check: Check) -> Check:
    """``check``, or null."""
    def opt(value: Any) -> Any:
        return None if value is None else check(value)
    return opt


def list_of(item: Check, length: int | None = None) -> Check:
    def check(value: Any) -> list:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise Invalid(f"a list{f' of {length}' if length is not None else ''}, got {_show(value)}")
        return [_at(item, v, f"[{i}]") for i, v in enumerate(value)]
    return check


def obj(fields: Mapping[str, Check] | None = None, values: Check | None = None) -> Check:
    """A JSON object; ``fields`` are checked when present, ``values`` checks every other value."""
    def check(value: Any) -> dict:
        if not isinstance(value, dict):
            raise Invalid(f"an object, got {_show(value)}")
        out = {}
        for key, v in value.items():
            rule = (fields or {}).get(key, values)
            out[key] = v if rule is None else _at(rule, v, f".{key}")
        return out
    return check


def json_text(check: Check) -> Check:
    """Text holding JSON whose value passes ``check`` (how structured metadata is stored)."""
    def parse(value: Any) -> Any:
        try:
            decoded = json.loads(text(value))
        except json.JSONDecodeError:
            raise Invalid(f"valid JSON, got {_show(value)}") from None
        return check(decoded)
    return parse


def _at(check: Check, value: Any, where: str) -> Any:
    try:
        return check(value)
    except Invalid as e:
        message = str(e)
        # Name the innermost place: ".cost.train_steps: a whole number ..." reads from the field down.
        raise Invalid(f"{where}{message}" if message.startswith((".", "[")) else f"{where}: {message}") from None


def check_fields(values: Mapping[str, Any], rules: Mapping[str, Check], fail: Callable[[str, str], Exception]) -> dict:
    """Every field of ``values`` that has a rule, checked (and converted); ``fail(field, expected)``
    builds the error for the first one that does not fit. Fields without a rule pass unchanged."""
    out = dict(values)
    for key, rule in rules.items():
        if key in values:
            try:
                out[key] = rule(values[key])
            except Invalid as e:
                message = str(e)
                if message.startswith((".", "[")):
                    inner, _, expected = message.partition(": ")
                    raise fail(key + inner, expected) from None
                raise fail(key, message) from None
    return out
