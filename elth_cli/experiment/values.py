"""The checks of an experiment file's values: each returns the value as elth uses it or raises ValueError
saying what it wants (:mod:`.spec` names the file, table and key)."""

from __future__ import annotations

from typing import Any, Callable

from elth_cli.errors import UsageError


def kind_of(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "true/false", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def plain_name(v: Any) -> str:
    s = text(v)
    if "/" in s or s.startswith("."):
        raise ValueError("must be a plain name (no / and no leading dot)")
    return s


def flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a whole number of at least 1")
    return v


def count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("must be a whole number of at least 0")
    return v


def fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.2")
    return float(v)


def texts(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise ValueError("must be a list of strings, e.g. [\"a\", \"b\"]")
    return tuple(v)


def whole_numbers(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise ValueError("must be a non-empty list of whole numbers, e.g. [10, 13]")
    if len(set(v)) != len(v):
        raise ValueError("must not repeat a value")
    return tuple(v)


def seeds(v: Any) -> tuple[int, ...]:
    from elth_cli.train.config import check_seed

    seeds = whole_numbers(v)
    for s in seeds:
        try:
            check_seed(s)
        except UsageError as e:
            raise ValueError(str(e)) from None
    return seeds


def networks(v: Any) -> tuple[str, ...]:
    from elth_cli import archs

    names = texts(v)
    if not names:
        raise ValueError("must name at least one network")
    try:
        resolved = tuple(archs.resolve_arch(n).name for n in names)
    except UsageError as e:
        raise ValueError(str(e)) from None
    if len(set(resolved)) != len(resolved):
        raise ValueError("names a network twice")
    return resolved


def dataset(v: Any) -> str:
    from elth_cli.data.datasets import get_dataset_info

    name = text(v)
    try:
        get_dataset_info(name)
    except UsageError as e:
        raise ValueError(str(e)) from None
    return name


def steps(v: Any) -> str:
    from elth_cli.steps import parse_steps

    s = text(v)
    try:
        parse_steps(s, 1)
    except UsageError as e:
        raise ValueError(str(e)) from None
    return s


def member_of(networks: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        from elth_cli import archs

        try:
            name = archs.resolve_arch(text(v)).name
        except UsageError as e:
            raise ValueError(str(e)) from None
        if name not in networks:
            raise ValueError(f"is not one of [experiment] networks ({', '.join(networks)})")
        return name
    return check


def depth(name: str) -> int:
    from elth_cli import archs

    return sum(archs.resolve_arch(name).depths)


def choices_of(choices: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        items = texts(v)
        for item in items:
            if item not in choices:
                raise ValueError(f"{item!r} is not one of {', '.join(choices)}")
        return items
    return check


def strategies_for(deeper: bool) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        from elth_cli.mappings import SQUEEZE_STRATEGIES, STRETCH_STRATEGIES

        allowed = STRETCH_STRATEGIES if deeper else SQUEEZE_STRATEGIES
        items = texts(v)
        if not items:
            raise ValueError("must name at least one strategy")
        for item in items:
            if item not in allowed:
                op = "a stretch (the target is deeper)" if deeper else "a squeeze (the target is shallower)"
                raise ValueError(f"{item!r} is not a strategy of {op}: {', '.join(allowed)}")
        return items
    return check
