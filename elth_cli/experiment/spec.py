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
from elth_cli.experiment import values

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
                what = {"experiment": "its data set and networks", "imp": "its IMP chains' rounds"}[name]
                raise UsageError(f"{self.where}: no [{name}] table; every experiment gives {what} there "
                                 "(docs/experiments.md)")
            return {}
        if not isinstance(value, dict):
            raise UsageError(f"{self.where}: {name} must be a table ([{name}]), got {values.kind_of(value)}")
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
        networks = g("networks", values.networks, what="the networks, e.g. networks = [\"resnet20\", \"resnet32\"]")
        return {"name": g("name", values.plain_name, Path(self.where).stem),
                "description": g("description", values.text, ""),
                "dataset": g("dataset", values.dataset, what="the data set, e.g. dataset = \"cifar10\""),
                "networks": networks, "seeds": g("seeds", values.seeds, (0,)),
                "device": g("device", values.text, "auto"), "tensorboard": g("tensorboard", values.flag, False)}

    def _imp(self) -> dict[str, Any]:
        t = self.table("imp", required=True)
        self.keys("imp", t, ("rounds", "levels", "rewind", "prune_rate", "early_bird"))
        g = lambda *a, **k: self.get("imp", t, *a, **k)  # noqa: E731
        rounds = g("rounds", values.positive_int, what="the IMP rounds, e.g. rounds = 13")
        levels = g("levels", values.whole_numbers, (rounds,))
        for level in levels:
            if not 1 <= level <= rounds:
                raise self.fail("imp", "levels", f"level {level} is not a round of the chain; use rounds 1 to {rounds}")
        return {"rounds": rounds, "levels": levels, "rewind": g("rewind", values.steps, "0it"),
                "prune_rate": g("prune_rate", values.fraction, 0.2), "early_bird": g("early_bird", values.flag, False)}

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
            raise UsageError(f"{self.where}: transform must be tables ([[transform]]), got {values.kind_of(items)}")
        return tuple(self._transform(i, t, networks) for i, t in enumerate(items, 1))

    def _transform(self, index: int, t: dict[str, Any], networks: tuple[str, ...]) -> Transform:
        table = f"[[transform]] number {index}"
        self.keys(table, t, ("source", "target", "strategies"))
        source = self.get(table, t, "source", values.member_of(networks), what="the network whose IMP tickets move")
        target = self.get(table, t, "target", values.member_of(networks), what="the network they move to")
        if source == target:
            raise self.fail(table, "target", f"is the source {source}; a transform moves a ticket to another depth")
        deeper = values.depth(target) > values.depth(source)
        default = ("append", "interpolate") if deeper else ("keep-first", "spaced")
        strategies = self.get(table, t, "strategies", values.strategies_for(deeper), default)
        try:
            from elth_cli import archs

            archs.resolve_target(archs.resolve_arch(source), target)
        except UsageError as e:
            raise self.fail(table, "target", str(e)) from None
        return Transform(source, target, strategies)

    def _rows(self, table: str, choices: tuple[str, ...], key: str, networks: tuple[str, ...]) -> dict[str, Any]:
        t = self.table(table)
        self.keys(table, t, (key, "networks"))
        kinds = self.get(table, t, key, values.choices_of(choices), choices if table in self.doc else ())
        member = values.member_of(networks)
        where = self.get(table, t, "networks", lambda v: tuple(member(x) for x in values.texts(v)), networks)
        if table == "baselines":
            return {"baselines": kinds, "baseline_networks": where}
        return {"dst": kinds, "dst_networks": where}

    def _slurm(self) -> SlurmOptions:
        t = self.table("slurm")
        names = tuple(f.name for f in dataclasses.fields(SlurmOptions))
        self.keys("slurm", t, names)
        g = lambda *a, **k: self.get("slurm", t, *a, **k)  # noqa: E731
        return SlurmOptions(partition=g("partition", values.text, None), account=g("account", values.text, None),
                            time=g("time", values.text, None), gpus=g("gpus", values.count, None),
                            cpus=g("cpus", values.positive_int, None),
                            signal_seconds=g("signal_seconds", values.positive_int, 90),
                            extra=g("extra", values.texts, ()))


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


def _table(name: str, fields: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_value(v)}" for k, v in fields.items() if v is not None and v != ()]
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
