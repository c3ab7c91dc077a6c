"""The find methods, in one registry: each method's name, kind and the options it uses.

A method is one of three kinds:

* ``imp``: iterative magnitude pruning, a run folder of rounds (:mod:`.imp`);
* ``search``: one training whose hooks make the ticket (early-bird, RigL, SET, DPF): its module
  has ``options_from(request)`` and ``search(options, cfg, bundle, run)``;
* ``baseline``: pruning once at a ticket's init weights, without training, or a control of a ticket (its
  mask with new weights: ``reinit``) (:mod:`.baselines`).

The command line's checks follow from the registry: an option a method does not use is refused
(:func:`unused_options`), and so is one that every other method takes but it cannot (its ``refuses``,
:func:`refused_options`); the list of names is :data:`NAMES`, and the dispatch reads ``kind`` and
``module``. A new method is its module and one :class:`Method` entry. :class:`FindRequest` is
everything a find command was asked, by field name. No torch here (``--help`` reads it).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from elth_cli.errors import UsageError

IMP, SEARCH, BASELINE = "imp", "search", "baseline"
# The options of a training (the recipe's and a run's flags, the loader workers): every training method
# uses them; ``TRAINING`` in a method's ``uses`` stands for all of them (see :func:`training_options`).
TRAINING = "training"
# Run options that every method takes (a baseline's mask may empty a layer too).
COMMON = ("allow_empty_layers",)


@dataclass(frozen=True)
class Method:
    """A find method: its name, kind, one line of help, the options it uses (besides the ones every method
    takes: --arch, --dataset, --sparsity, --exclude, --seed, --device, -o...) and its module."""

    name: str
    kind: str
    help: str
    uses: tuple[str, ...]
    module: str
    # Options every other method takes that this one refuses: (option, why), the why one clause of its refusal.
    refuses: tuple[tuple[str, str], ...] = ()

    def implementation(self) -> Any:
        """The module that implements it (imported on first use: it needs torch)."""
        return importlib.import_module(self.module)


_BASELINE_USES = ("from_ticket", "like")
_KEEPS_MASK = "keeps the --like ticket's mask exactly"
_REINIT_REFUSES = (
    ("sparsity", f"{_KEEPS_MASK}, and its sparsity"), ("match", _KEEPS_MASK), ("exclude", _KEEPS_MASK),
    ("from_ticket", "draws new weights for the --like ticket's mask and prunes no ticket"),
    ("pretrained", "draws new weights from --seed, not from a file"),
)
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("imp", IMP, "iterative magnitude pruning with rewinding (one ticket per round)",
           (TRAINING, "out_dir", "rounds", "prune_rate", "rewind", "early_bird", "window", "epsilon"), "elth_cli.find.imp"),
    Method("early-bird", SEARCH, "prune once when the magnitude mask settles",
           (TRAINING, "rewind", "window", "epsilon"), "elth_cli.find.earlybird"),
    Method("rigl", SEARCH, "dynamic sparse training, regrowth by gradient",
           (TRAINING, "distribution", "update_every", "update_until", "drop_fraction"), "elth_cli.find.dst"),
    Method("set", SEARCH, "dynamic sparse training, random regrowth",
           (TRAINING, "distribution", "update_every", "update_until", "drop_fraction"), "elth_cli.find.dst"),
    Method("dpf", SEARCH, "dynamic pruning with feedback (gradual magnitude)",
           (TRAINING, "update_every", "update_until"), "elth_cli.find.dst"),
    Method("random", BASELINE, "a random mask", (*_BASELINE_USES, "match", "distribution"), "elth_cli.find.baselines"),
    Method("magnitude", BASELINE, "the largest init weights", (*_BASELINE_USES, "match"), "elth_cli.find.baselines"),
    Method("snip", BASELINE, "SNIP (connection sensitivity)", (*_BASELINE_USES, "match", "batches", "batch_size",
                                                               "workers"), "elth_cli.find.baselines"),
    Method("grasp", BASELINE, "GraSP (gradient signal preservation)", (*_BASELINE_USES, "match", "batches",
                                                                        "batch_size", "workers"), "elth_cli.find.baselines"),
    Method("synflow", BASELINE, "SynFlow (iterative, data-free)", (*_BASELINE_USES, "iterations"),
           "elth_cli.find.baselines"),
    Method("reinit", BASELINE, "the --like ticket's mask with new init weights drawn from --seed (a control)",
           ("like",), "elth_cli.find.baselines", refuses=_REINIT_REFUSES),
)}
NAMES = tuple(METHODS)


def method(name: str) -> Method:
    """The method called ``name``, or a one-line refusal listing them."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(NAMES)}")
    return METHODS[name]


def training_options() -> tuple[str, ...]:
    """What ``TRAINING`` stands for: every recipe flag but the seed and the device (every method takes those),
    every run flag, the loader workers and the timeout of several processes."""
    from elth_cli.train.config import TrainConfig
    from elth_cli.train.options import RunOptions

    recipe = [n for n in TrainConfig.flags() if n not in ("seed", "device")]
    run = [n for n in RunOptions.flags() if n not in COMMON]
    return (*recipe, *run, "workers", "dist_timeout")


def users(option: str) -> tuple[str, ...] | None:
    """The methods that use ``option`` (None: every method takes it)."""
    training = set(training_options())
    found = tuple(m.name for m in METHODS.values() if option in m.uses or (TRAINING in m.uses and option in training))
    known = training | {u for m in METHODS.values() for u in m.uses}
    return found if option in known else None


def unused_options(name: str, given: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The options among ``given`` that method ``name`` does not use, each with the methods that do."""
    out = []
    for option in sorted(given):
        who = users(option)
        if who is not None and name not in who:
            out.append((option, who))
    return out


def refused_options(name: str, given: set[str]) -> list[tuple[str, str]]:
    """The options among ``given`` that method ``name`` refuses although other methods take them, each with why."""
    return [(option, why) for option, why in METHODS[name].refuses if option in given]


def describe_users(who: tuple[str, ...]) -> str:
    """``training methods (imp, early-bird, ...)``, ``the one-shot baselines`` or the names."""
    kinds = {METHODS[n].kind for n in who}
    everyone = {m.name for m in METHODS.values() if m.kind in kinds}
    if set(who) == everyone and kinds == {BASELINE}:
        return "the one-shot baselines"
    if set(who) == everyone and kinds == {IMP, SEARCH}:
        return f"training methods ({', '.join(who)})"
    return ", ".join(who)


def require(method_name: str, given: dict[str, Any]) -> None:
    """Refuse a method run without what it needs, naming only what is missing (``given``: flag -> value)."""
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        listed = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        raise UsageError(f"{method_name} needs {listed}")


@dataclass(frozen=True)
class FindRequest:
    """What a find command asked for, by option name (None: not given; the method's default applies)."""

    method: str
    arch: str | None = None
    dataset: str | None = None
    sparsity: float | None = None
    exclude: tuple[str, ...] | None = None
    seed: int = 0
    rounds: int | None = None
    prune_rate: float = 0.2
    rewind: str = "0"
    early_bird: bool = False
    window: int | None = None
    epsilon: float | None = None
    from_ticket: str | None = None
    like: str | None = None
    match: str = "overall"
    distribution: str | None = None
    update_every: int | None = None
    update_until: float | None = None
    drop_fraction: float | None = None
    batches: int = 10
    iterations: int = 100
    batch_size: int | None = None
    pretrained: str | None = None

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> "FindRequest":
        """The request from a command's parsed options (those that are not request fields are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        request = {k: v for k, v in values.items() if k in names}
        if request.get("exclude") is not None:
            request["exclude"] = tuple(request["exclude"])
        return cls(**request)

    def detection(self) -> dict[str, Any]:
        """--window and --epsilon where given (the library's defaults otherwise)."""
        return {k: v for k, v in (("window", self.window), ("epsilon", self.epsilon)) if v is not None}
