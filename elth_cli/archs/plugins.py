"""Families from outside elth: entry points, ``--family-module`` and ``ELTH_FAMILIES``, checked on the way in.

A provider is a Python module (or a ``.py`` file) that defines ``FAMILIES`` (a list of
:class:`~elth_cli.archs.Family`) or ``FAMILY`` (one). Installed distributions register theirs under
the entry-point group ``elth.families`` (the entry point names the module, or a Family or list of
them in it); a module named by ``--family-module`` or in ``ELTH_FAMILIES`` (several joined by
``os.pathsep`` or commas) registers for the command that names it. Every record is checked before it
is used, and its functions are wrapped so that a bug in them is one line naming the family, never
a traceback. Nothing here imports torch: a provider that does is imported when the registry is first
asked about a name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from elth_cli.archs.base import ArchSpec, BlockLayout, Family, StateEntry
from elth_cli.archs.units import Units
from elth_cli.errors import UsageError

ENTRY_POINT_GROUP = "elth.families"
ENV_VAR = "ELTH_FAMILIES"
INITS = ("open_lth", "model")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]*$")
_DTYPE = re.compile(r"^(float|int|uint|bfloat|complex)\d+$|^bool$")


class FamilyError(UsageError):
    """A family record or a provider that cannot be used: its name, where it came from and what is wrong."""


def env_modules() -> list[str]:
    """The providers ``ELTH_FAMILIES`` names, in order."""
    text = os.environ.get(ENV_VAR, "")
    return [p.strip() for p in re.split(rf"[,{re.escape(os.pathsep)}]", text) if p.strip()]


def import_provider(ref: str) -> tuple[Any, str, str]:
    """Import a provider named by a dotted module name or a ``.py`` path: ``(module, provider, version)``.

    The provider is the module name (a file's is its resolved path) and the version that of the installed
    distribution that holds it (a file's is ``sha256:`` and the first 12 hex digits of its bytes).
    """
    if ref.endswith(".py") or os.sep in ref or "/" in ref:
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise FamilyError(f"family module {ref}: no such file; name a .py file or an importable module")
        name = "elth_family_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up by their module
        _run_provider(ref, lambda: loader_spec.loader.exec_module(module))
        return module, str(path), "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        module = _run_provider(ref, lambda: importlib.import_module(ref))
    except FamilyError as e:
        if isinstance(e.__cause__, ModuleNotFoundError) and e.__cause__.name == ref.split(".")[0]:
            raise FamilyError(f"family module {ref}: no module of that name is installed; install it "
                              "(pip install ...) or name a .py file") from None
        raise
    return module, ref, distribution_version(ref)


def _run_provider(ref: str, run: Callable[[], Any]) -> Any:
    try:
        return run()
    except UsageError:
        raise
    except Exception as e:  # whatever the provider's own code raised while it was imported
        raise FamilyError(f"family module {ref} failed to import: {type(e).__name__}: {e}") from e


def distribution_version(module: str) -> str:
    """The version of the installed distribution that provides ``module`` (``""`` when none does)."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def families_in(obj: Any, where: str) -> list[Family]:
    """The family records a provider module (``FAMILIES`` or ``FAMILY``), a Family or a list of them hold."""
    if isinstance(obj, Family):
        return [obj]
    if hasattr(obj, "FAMILIES") or hasattr(obj, "FAMILY"):
        obj = getattr(obj, "FAMILIES", None) or [getattr(obj, "FAMILY")]
    if not isinstance(obj, (list, tuple)) or not obj:
        raise FamilyError(f"family module {where} defines no families: give it FAMILIES = [Family(...), ...] "
                          "or FAMILY = Family(...) (docs/families.md)")
    for item in obj:
        if not isinstance(item, Family):
            raise FamilyError(f"family module {where}: {type(item).__name__} {item!r:.60} is not an "
                              "elth_cli.archs.Family")
    return list(obj)


def entry_point_families() -> list[Family]:
    """The families every installed distribution registers under ``elth.families``, checked and wrapped."""
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"{ep.value} (entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an installed package'})"
        obj = _run_provider(where, ep.load)
        version = ep.dist.version if ep.dist else distribution_version(ep.module)
        found += [checked(f, ep.module, version) for f in families_in(obj, where)]
    return found


def module_families(ref: str) -> list[Family]:
    """The families of the provider ``ref`` (``--family-module``, ``ELTH_FAMILIES``), checked and wrapped."""
    module, provider, version = import_provider(ref)
    return [checked(f, provider, version) for f in families_in(module, ref)]


def checked(family: Family, provider: str, version: str) -> Family:
    """``family`` with its provider recorded and its functions guarded, after checking every field."""
    name = family.name
    if not isinstance(name, str) or not _NAME.match(name):
        raise FamilyError(f"family {name!r} from {provider}: a family name is lowercase letters, digits and "
                          "'-', '_', '.', ':' (e.g. 'resmlp')")
    problem = _field_problem(family)
    if problem:
        raise FamilyError(f"family {name} from {provider}: {problem}")
    return dataclasses.replace(
        family, provider=provider, provider_version=version,
        parse=_guard(family, provider, "parse", family.parse, _check_spec),
        build=_guard(family, provider, "build", family.build, _check_module),
        layout=_guard(family, provider, "layout", family.layout, _check_layout),
        count=family.count and _guard(family, provider, "count", family.count, _check_count),
        resolve_target=family.resolve_target and _guard(family, provider, "resolve_target", family.resolve_target,
                                                        _check_spec),
        units=family.units and _guard(family, provider, "units", family.units, _check_units),
        state=family.state and _guard(family, provider, "state", family.state, _check_state),
    )


def _field_problem(family: Family) -> str:
    """What is wrong with the record's fields, or ``""``."""
    for field in ("parse", "build", "layout"):
        if not callable(getattr(family, field)):
            return f"{field} must be a function, got {type(getattr(family, field)).__name__}"
    for field in ("count", "resolve_target", "units", "state"):
        value = getattr(family, field)
        if value is not None and not callable(value):
            return f"{field} must be a function or None, got {type(value).__name__}"
    for field in ("standard_names", "default_exclude"):
        value = getattr(family, field)
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            return f"{field} must be a tuple of strings"
    if family.init not in INITS:
        return f"init must be one of {', '.join(INITS)}, got {family.init!r}"
    if not isinstance(family.recipe, str) or not family.recipe:
        return "recipe must name a training recipe (e.g. 'digits', 'cifar', 'vit')"
    shape = family.native_input
    if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[0], tuple) and len(shape[0]) == 3
            and all(isinstance(d, int) and d > 0 for d in (*shape[0], shape[1]))):
        return "native_input must be ((channels, height, width), classes), e.g. ((1, 8, 8), 10)"
    return ""


def _guard(family: Family, provider: str, what: str, fn: Callable, check: Callable[[Family, Any], str]) -> Callable:
    """``fn`` whose exceptions (other than a UsageError it raises on purpose) and wrong results become one line."""

    def guarded(*args: Any) -> Any:
        try:
            result = fn(*args)
        except UsageError:
            raise
        except Exception as e:
            raise FamilyError(f"family {family.name} from {provider}: its {what} failed on "
                              f"{_describe(args[0])}: {type(e).__name__}: {e}") from e
        problem = check(family, result)
        if problem:
            raise FamilyError(f"family {family.name} from {provider}: its {what} on {_describe(args[0])} {problem}")
        return result

    guarded.__wrapped__ = fn  # type: ignore[attr-defined]
    return guarded


def _describe(arg: Any) -> str:
    return arg.name if isinstance(arg, ArchSpec) else repr(arg)


def _check_spec(family: Family, spec: Any) -> str:
    if spec is None:
        return ""
    if not isinstance(spec, ArchSpec):
        return f"returned a {type(spec).__name__}, not an ArchSpec or None"
    if spec.family != family.name:
        return f"returned a spec of family {spec.family!r}; its specs must say family={family.name!r}"
    if not spec.depths or not all(isinstance(d, int) and d >= 1 for d in spec.depths):
        return f"returned depths {spec.depths!r}; give at least one stage of at least one block"
    return ""


def _check_layout(family: Family, layout: Any) -> str:
    if not isinstance(layout, BlockLayout):
        return f"returned a {type(layout).__name__}, not a BlockLayout"
    for prefix in (*layout.stem, *layout.head):
        if not isinstance(prefix, str) or not prefix:
            return f"has the stem or head entry {prefix!r}; give module prefixes ending in '.' or whole keys"
    for stage in layout.stages:
        for prefix in stage:
            if not isinstance(prefix, str) or not prefix.endswith("."):
                return f"has the block prefix {prefix!r}; a block is a module prefix ending in '.' (e.g. 'blocks.0.')"
    return ""


def _check_module(family: Family, model: Any) -> str:
    if not (hasattr(model, "state_dict") and hasattr(model, "named_modules")):
        return f"returned a {type(model).__name__}, not a torch nn.Module"
    return ""


def _check_count(family: Family, count: Any) -> str:
    if not (isinstance(count, tuple) and len(count) == 3 and all(isinstance(v, int) and v >= 0 for v in count)):
        return "returned something other than ParamCount(parameters, prunable, macs) of whole numbers"
    return ""


def _check_units(family: Family, units: Any) -> str:
    if not isinstance(units, Units):
        return f"returned a {type(units).__name__}, not a Units (build it with elth_cli.archs.UnitsBuilder)"
    return ""


def _check_state(family: Family, state: Any) -> str:
    if not isinstance(state, list) or not state:
        return f"returned a {type(state).__name__}, not a non-empty list of StateEntry(key, shape, dtype, prunable)"
    keys = set()
    for entry in state:
        problem = _entry_problem(entry)
        if problem:
            return f"returned the entry {entry!r:.80}: {problem}"
        if entry.key in keys:
            return f"returned the key {entry.key!r} twice"
        keys.add(entry.key)
    return ""


def _entry_problem(entry: Any) -> str:
    """What is wrong with one entry of a family's ``state``, or ``""``."""
    if not isinstance(entry, StateEntry):
        return "not a StateEntry(key, shape, dtype, prunable)"
    if not isinstance(entry.key, str) or not entry.key:
        return "its key must be a non-empty string"
    if not isinstance(entry.shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in entry.shape):
        return "its shape must be a tuple of whole numbers"
    if not isinstance(entry.dtype, str) or not _DTYPE.match(entry.dtype):
        return "its dtype must be a numpy-style name such as 'float32' or 'int64'"
    if not isinstance(entry.prunable, bool):
        return "its prunable must be True or False"
    return ""
