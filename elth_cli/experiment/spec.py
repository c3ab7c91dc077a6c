"""The experiment file: a TOML document read into an :class:`Experiment`, every key checked.

An experiment is the networks and data set, the recipe's overrides, the IMP chains (rounds,
rewind, the levels compared), the elastic transforms between networks (stretch and squeeze
strategies), the one-shot baselines and controls, dynamic sparse training and early-bird rows,
the seeds, and how a cluster runs its jobs. docs/experiments.md documents every key; an unknown
key or a bad value is refused in one line that names the file, the table and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from elth_cli.errors import UsageError

# The rows each kind of job adds to a target's level (the table's "ticket" column).
BASELINE_KINDS = ("random", "random layer-wise", "magnitude", "reinit")
DST_METHODS = ("rigl", "set", "dpf")
SHIPPED = {"demo": "demo.toml", "cifar10-table3": "cifar10-table3.toml"}


@dataclass(frozen=True)
class Transform:
    """The source's IMP ticket of every level moved to ``target`` with each strategy, then trained."""

    source: str
    target: str
    strategies: tuple[str, ...]

    @property
    def op(self) -> str:
        """``stretch`` or ``squeeze`` (the strategies say which; they are checked to agree)."""
        from elth_cli.mappings import STRETCH_STRATEGIES

        return "stretch" if self.strategies[0] in STRETCH_STRATEGIES else "squeeze"


@dataclass(frozen=True)
class SlurmOptions:
    """What every SLURM job of the experiment asks for (None: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    signal_seconds: int = 90  # SIGUSR1 this long before the time limit: checkpoint and requeue
    extra: tuple[str, ...] = ()  # more sbatch options, as given: ("--qos=high", "--constraint=a100")


@dataclass(frozen=True)
class Experiment:
    """Everything an experiment file says (see the module's docstring); ``source`` is the file's path."""

    name: str
    dataset: str
    networks: tuple[str, ...]
    rounds: int
    levels: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    device: str = "auto"
    rewind: str = "0it"
    prune_rate: float = 0.2
    early_bird: bool = False
    recipe: Mapping[str, Any] = field(default_factory=dict)
    transforms: tuple[Transform, ...] = ()
    baselines: tuple[str, ...] = ()
    baseline_networks: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    dst_networks: tuple[str, ...] = ()
    tensorboard: bool = False
    slurm: SlurmOptions = SlurmOptions()
    source: str = ""

    def replace(self, **changes: Any) -> "Experiment":
        return dataclasses.replace(self, **changes)


def shipped_path(name: str) -> Path | None:
    """The shipped experiment file called ``name`` (``demo``, ``cifar10-table3``), or None."""
    from importlib import resources

    stem = name[:-5] if name.endswith(".toml") else name
    if stem not in SHIPPED:
        return None
    return Path(str(resources.files("elth_cli.data_files") / SHIPPED[stem]))


def find_file(name: str) -> Path:
    """An experiment file by path, or a shipped one by name; a missing one is refused in one line."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = None if path.exists() or "/" in name else shipped_path(name)
    if shipped is not None:
        return shipped
    if path.exists():
        raise UsageError(f"experiment {name} is not a file; give an experiment file (.toml)")
    raise UsageError(f"no experiment file {name}; give a path, or one of the shipped experiments: "
                     f"{', '.join(SHIPPED)}")


def load_experiment(name: str) -> Experiment:
    """Read and check an experiment file (a path or a shipped name)."""
    path = find_file(name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read experiment file {path}: {e}") from None
    return parse_experiment(text, str(path))


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def parse_experiment(text: str, where: str = "experiment") -> Experiment:
    """The :class:`Experiment` an experiment file's text describes (``where``: the file, for errors)."""
    toml = _toml()
    try:
        doc = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML: {e}") from None
    return _Reader(doc, where).experiment()


# ----- reading and checking -----------------------------------------------------------------------
TABLES = ("experiment", "recipe", "imp", "transform", "baselines", "dst", "slurm")


class _Reader:
    """Reads one parsed document, naming the file, table and key in every refusal."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self.doc, self.where = doc, where

    def fail(self, table: str, key: str | None, problem: str) -> UsageError:
        at = (table if table.startswith("[") else f"[{table}]") + (f" {key}" if key else "")
        return UsageError(f"{self.where}: {at}: {problem}")

    def table(self, name: str, required: bool = False) -> dict[str, Any]:
        value = self.doc.get(name, None)
        if value is None:
            if required:
                raise UsageError(f"{self.where}: no [{name}] table; every experiment names its data set and networks "
                                 "there (docs/experiments.md)")
            return {}
        if not isinstance(value, dict):
            raise UsageError(f"{self.where}: {name} must be a table ([{name}]), got {_kind(value)}")
        return value

    def keys(self, table: str, values: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
                raise self.fail(table, key, f"unknown key; {hint}")

    def get(self, table: str, values: Mapping[str, Any], key: str, check: Callable[[Any], Any],
            default: Any = ..., what: str = "") -> Any:
        if key not in values:
            if default is ...:
                raise self.fail(table, key, f"missing; give {what}")
            return default
        try:
            return check(values[key])
        except (TypeError, ValueError) as e:
            raise self.fail(table, key, f"{e}; got {values[key]!r}") from None

    def experiment(self) -> Experiment:
        for name in self.doc:
            if name not in TABLES:
                close = difflib.get_close_matches(name, TABLES, n=1)
                hint = f"did you mean [{close[0]}]?" if close else f"the tables are {', '.join(TABLES)}"
                raise UsageError(f"{self.where}: unknown table [{name}]; {hint}")
        head = self._head()
        imp = self._imp()
        networks = head["networks"]
        exp = Experiment(**head, **imp, recipe=self._recipe(), transforms=self._transforms(networks),
                         **self._rows("baselines", BASELINE_KINDS, "kinds", networks),
                         **self._rows("dst", DST_METHODS, "methods", networks), slurm=self._slurm(),
                         source=self.where)
        return exp

    def _head(self) -> dict[str, Any]:
        t = self.table("experiment", required=True)
        self.keys("experiment", t, ("name", "description", "dataset", "networks", "seeds", "device", "tensorboard"))
        g = lambda *a, **k: self.get("experiment", t, *a, **k)  # noqa: E731
        networks = g("networks", _networks, what="the networks, e.g. networks = [\"resnet20\", \"resnet32\"]")
        return {"name": g("name", _name, Path(self.where).stem), "description": g("description", _str, ""),
                "dataset": g("dataset", _dataset, what="the data set, e.g. dataset = \"cifar10\""),
                "networks": networks, "seeds": g("seeds", _seeds, (0,)), "device": g("device", _str, "auto"),
                "tensorboard": g("tensorboard", _bool, False)}

    def _imp(self) -> dict[str, Any]:
        t = self.table("imp", required=True)
        self.keys("imp", t, ("rounds", "levels", "rewind", "prune_rate", "early_bird"))
        g = lambda *a, **k: self.get("imp", t, *a, **k)  # noqa: E731
        rounds = g("rounds", _positive_int, what="the IMP rounds, e.g. rounds = 13")
        levels = g("levels", _int_list, (rounds,))
        for level in levels:
            if not 1 <= level <= rounds:
                raise self.fail("imp", "levels", f"level {level} is not a round of the chain; use rounds 1 to {rounds}")
        return {"rounds": rounds, "levels": levels, "rewind": g("rewind", _steps, "0it"),
                "prune_rate": g("prune_rate", _rate, 0.2), "early_bird": g("early_bird", _bool, False)}

    def _recipe(self) -> dict[str, Any]:
        from elth_cli.train.config import TrainConfig, check_given_options

        t = self.table("recipe")
        known = tuple(n for n in TrainConfig.flags() if n not in ("seed", "device"))
        for key in t:
            if key in ("seed", "device"):
                example = "seeds = [0, 1, 2]" if key == "seed" else 'device = "cuda"'
                raise self.fail("recipe", key, f"set it in [experiment] ({example})")
        self.keys("recipe", t, known)
        recipe = {k: tuple(v) if isinstance(v, list) else v for k, v in t.items()}
        try:
            check_given_options(**recipe)
        except (UsageError, TypeError, ValueError) as e:
            raise self.fail("recipe", None, str(e)) from None
        return recipe

    def _transforms(self, networks: tuple[str, ...]) -> tuple[Transform, ...]:
        items = self.doc.get("transform", [])
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise UsageError(f"{self.where}: transform must be tables ([[transform]]), got {_kind(items)}")
        return tuple(self._transform(i, t, networks) for i, t in enumerate(items, 1))

    def _transform(self, index: int, t: dict[str, Any], networks: tuple[str, ...]) -> Transform:
        table = f"[[transform]] number {index}"
        self.keys(table, t, ("source", "target", "strategies"))
        source = self.get(table, t, "source", _member(networks), what="the network whose IMP tickets move")
        target = self.get(table, t, "target", _member(networks), what="the network they move to")
        if source == target:
            raise self.fail(table, "target", f"is the source {source}; a transform moves a ticket to another depth")
        deeper = _depth(target) > _depth(source)
        default = ("append", "interpolate") if deeper else ("keep-first", "spaced")
        strategies = self.get(table, t, "strategies", _strategies(deeper), default)
        try:
            from elth_cli import archs

            archs.resolve_target(archs.resolve_arch(source), target)
        except UsageError as e:
            raise self.fail(table, "target", str(e)) from None
        return Transform(source, target, strategies)

    def _rows(self, table: str, choices: tuple[str, ...], key: str, networks: tuple[str, ...]) -> dict[str, Any]:
        t = self.table(table)
        self.keys(table, t, (key, "networks"))
        kinds = self.get(table, t, key, _choices(choices), choices if table in self.doc else ())
        where = self.get(table, t, "networks", lambda v: tuple(_member(networks)(x) for x in _str_list(v)), networks)
        if table == "baselines":
            return {"baselines": kinds, "baseline_networks": where}
        return {"dst": kinds, "dst_networks": where}

    def _slurm(self) -> SlurmOptions:
        t = self.table("slurm")
        names = tuple(f.name for f in dataclasses.fields(SlurmOptions))
        self.keys("slurm", t, names)
        g = lambda *a, **k: self.get("slurm", t, *a, **k)  # noqa: E731
        return SlurmOptions(partition=g("partition", _str, None), account=g("account", _str, None),
                            time=g("time", _str, None), gpus=g("gpus", _count, None), cpus=g("cpus", _positive_int, None),
                            signal_seconds=g("signal_seconds", _positive_int, 90), extra=g("extra", _str_list, ()))


# ----- value checks (each raises ValueError with what it wants) ----------------------------------
def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "true/false", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def _name(v: Any) -> str:
    s = _str(v)
    if "/" in s or s.startswith("."):
        raise ValueError("must be a plain name (no / and no leading dot)")
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a whole number of at least 1")
    return v


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("must be a whole number of at least 0")
    return v


def _rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.2")
    return float(v)


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise ValueError("must be a list of strings, e.g. [\"a\", \"b\"]")
    return tuple(v)


def _int_list(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise ValueError("must be a non-empty list of whole numbers, e.g. [10, 13]")
    if len(set(v)) != len(v):
        raise ValueError("must not repeat a value")
    return tuple(v)


def _seeds(v: Any) -> tuple[int, ...]:
    from elth_cli.train.config import check_seed

    seeds = _int_list(v)
    for s in seeds:
        try:
            check_seed(s)
        except UsageError as e:
            raise ValueError(str(e)) from None
    return seeds


def _networks(v: Any) -> tuple[str, ...]:
    from elth_cli import archs

    names = _str_list(v)
    if not names:
        raise ValueError("must name at least one network")
    try:
        resolved = tuple(archs.resolve_arch(n).name for n in names)
    except UsageError as e:
        raise ValueError(str(e)) from None
    if len(set(resolved)) != len(resolved):
        raise ValueError("names a network twice")
    return resolved


def _dataset(v: Any) -> str:
    from elth_cli.data.datasets import get_dataset_info

    name = _str(v)
    try:
        get_dataset_info(name)
    except UsageError as e:
        raise ValueError(str(e)) from None
    return name


def _steps(v: Any) -> str:
    from elth_cli.steps import parse_steps

    s = _str(v)
    try:
        parse_steps(s, 1)
    except UsageError as e:
        raise ValueError(str(e)) from None
    return s


def _member(networks: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        from elth_cli import archs

        try:
            name = archs.resolve_arch(_str(v)).name
        except UsageError as e:
            raise ValueError(str(e)) from None
        if name not in networks:
            raise ValueError(f"is not one of [experiment] networks ({', '.join(networks)})")
        return name
    return check


def _depth(name: str) -> int:
    from elth_cli import archs

    return sum(archs.resolve_arch(name).depths)


def _choices(choices: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        items = _str_list(v)
        for item in items:
            if item not in choices:
                raise ValueError(f"{item!r} is not one of {', '.join(choices)}")
        return items
    return check


def _strategies(deeper: bool) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        from elth_cli.mappings import SQUEEZE_STRATEGIES, STRETCH_STRATEGIES

        allowed = STRETCH_STRATEGIES if deeper else SQUEEZE_STRATEGIES
        items = _str_list(v)
        if not items:
            raise ValueError("must name at least one strategy")
        for item in items:
            if item not in allowed:
                op = "a stretch (the target is deeper)" if deeper else "a squeeze (the target is shallower)"
                raise ValueError(f"{item!r} is not a strategy of {op}: {', '.join(allowed)}")
        return items
    return check


# ----- writing (the run folder's experiment.toml: the experiment as it ran) ----------------------
def dump_experiment(exp: Experiment) -> str:
    """``exp`` as an experiment file that :func:`parse_experiment` reads back equal (less ``source``)."""
    head = {"name": exp.name, "description": exp.description or None, "dataset": exp.dataset,
            "networks": list(exp.networks), "seeds": list(exp.seeds), "device": exp.device,
            "tensorboard": exp.tensorboard}
    imp = {"rounds": exp.rounds, "levels": list(exp.levels), "rewind": exp.rewind, "prune_rate": exp.prune_rate,
           "early_bird": exp.early_bird}
    parts = [_table("experiment", head), _table("recipe", dict(exp.recipe)) if exp.recipe else "",
             _table("imp", imp)]
    parts += [_table("[transform]", {"source": t.source, "target": t.target, "strategies": list(t.strategies)})
              for t in exp.transforms]
    if exp.baselines:
        parts.append(_table("baselines", {"kinds": list(exp.baselines), "networks": list(exp.baseline_networks)}))
    if exp.dst:
        parts.append(_table("dst", {"methods": list(exp.dst), "networks": list(exp.dst_networks)}))
    slurm = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(exp.slurm).items()}
    parts.append(_table("slurm", slurm))
    return "\n".join(p for p in parts if p)


def _table(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_value(v)}" for k, v in values.items() if v is not None and v != ()]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string is a JSON string
