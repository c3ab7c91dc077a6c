"""The layout rules of docs/architecture.md, checked on the source: who may import whom, no import
cycles (lazy imports inside functions included), no module over 450 lines (no cli/ module over 300),
no function body over 60 lines, no two modules with one file name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "elth_cli"
MAX_BODY = 60
MAX_MODULE, MAX_FRONT_END = 450, 300

# The verified model layer: it never reaches for training, data, devices or processes.
MODEL_LAYER = ("elth_cli.archs", "elth_cli.ticket", "elth_cli.ticket_checks", "elth_cli.digests", "elth_cli.elastic", "elth_cli.prune", "elth_cli.masks",
               "elth_cli.flops", "elth_cli.symmetry", "elth_cli.width")
NOT_FOR_THE_MODEL_LAYER = ("elth_cli.train", "elth_cli.data", "elth_cli.runtime", "elth_cli.find", "elth_cli.demo",
                           "elth_cli.compare", "elth_cli.interpolation", "elth_cli.interop", "elth_cli.cli",
                           "elth_cli.align", "elth_cli.experiment")
# The layers above the model layer, each of which may import only the ones below it.
LAYERS_BELOW = {
    "elth_cli.runtime": ("elth_cli.train", "elth_cli.find", "elth_cli.data", "elth_cli.cli", "elth_cli.demo",
                         "elth_cli.experiment"),
    "elth_cli.data": ("elth_cli.train", "elth_cli.find", "elth_cli.cli", "elth_cli.demo", "elth_cli.experiment"),
    "elth_cli.train": ("elth_cli.find", "elth_cli.cli", "elth_cli.demo", "elth_cli.experiment"),
    "elth_cli.find": ("elth_cli.cli", "elth_cli.demo", "elth_cli.experiment"),
    # Experiments orchestrate finding and training; the command line sits on them.
    "elth_cli.experiment": ("elth_cli.cli",),
}
# What `elth --help` imports must not import torch at module level (the lazy ones may).
TORCH_FREE = ("elth_cli.cli", "elth_cli.cli.app", "elth_cli.cli.params", "elth_cli.cli.render", "elth_cli.cli.cmd_tickets", "elth_cli.cli.cmd_units",
              "elth_cli.cli.cmd_train", "elth_cli.cli.cmd_find", "elth_cli.cli.cmd_compare", "elth_cli.cli.cmd_interop",
              "elth_cli.cli.cmd_demo", "elth_cli.cli.cmd_run", "elth_cli.find", "elth_cli.find.methods", "elth_cli.train.options", "elth_cli.train.config", "elth_cli.steps", "elth_cli.errors", "elth_cli.fileio",
              "elth_cli.report", "elth_cli.runtime.launch", "elth_cli.archs", "elth_cli.archs.base",
              "elth_cli.archs.cifar_resnet", "elth_cli.archs.imagenet_resnet", "elth_cli.archs.vgg",
              "elth_cli.archs.vgg_plan", "elth_cli.archs.vit", "elth_cli.archs.timm_family", "elth_cli.train",
              "elth_cli.__main__")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or None


def _imports(module: str, top_level_only: bool = False) -> set[str]:
    """The elth_cli modules ``module`` imports (anywhere in it, or only at module level)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("elth_cli") else name.split(".")[0]
            if target and target != module:
                out.add(target)
    return out


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, MODEL_LAYER)))
def test_model_layer_never_imports_training_data_or_devices(module: str) -> None:
    bad = sorted(t for t in _imports(module) if _in(t, NOT_FOR_THE_MODEL_LAYER))
    assert bad == [], f"{module} imports {bad}"


def test_nothing_in_the_core_imports_the_cli() -> None:
    users = sorted(m for m in MODULES if "elth_cli.cli" in _imports(m))
    assert all(u == "elth_cli.__main__" or u.startswith("elth_cli.cli.") for u in users), users  # the entry point


@pytest.mark.parametrize("module", TORCH_FREE)
def test_help_path_modules_do_not_import_torch_at_module_level(module: str) -> None:
    heavy = {"torch", "torchvision", "numpy", "safetensors", "timm", "tensorboard"} & _imports(module, top_level_only=True)
    assert not heavy, f"{module} imports {sorted(heavy)} when it is imported"


def test_no_import_cycles() -> None:
    edges = {m: {t for t in _imports(m) if t in MODULES} for m in MODULES}
    for m in MODULES:  # a package's face importing its own submodules is not a tie back
        if MODULES[m].name == "__init__.py":
            edges[m] = {t for t in edges[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_no_function_body_over_60_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                    body = body[1:]  # the docstring
                if body and body[-1].end_lineno - body[0].lineno + 1 > MAX_BODY:
                    long.append(f"{module}.{node.name}")
    assert long == []


def test_every_import_of_elth_names_resolves() -> None:
    """Lazy imports inside functions run only when their branch does: check each name exists now."""
    import importlib

    missing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("elth_cli"):
                target = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(target, alias.name) and f"{node.module}.{alias.name}" not in MODULES:
                        missing.append(f"{module}: from {node.module} import {alias.name}")
    assert missing == []


@pytest.mark.parametrize("layer", sorted(LAYERS_BELOW))
def test_each_layer_imports_only_the_layers_below(layer: str) -> None:
    bad = sorted(f"{m} -> {t}" for m in MODULES if _in(m, (layer,)) for t in _imports(m) if _in(t, LAYERS_BELOW[layer]))
    assert bad == []


def test_no_module_is_too_long() -> None:
    long = []
    for module, path in MODULES.items():
        limit = MAX_FRONT_END if _in(module, ("elth_cli.cli",)) else MAX_MODULE
        lines = len(path.read_text().splitlines())
        if lines > limit:
            long.append(f"{module}: {lines} lines (at most {limit})")
    assert long == []


def test_no_two_modules_share_a_file_name() -> None:
    names: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            names.setdefault(path.name, []).append(module)
    assert {n: ms for n, ms in names.items() if len(ms) > 1} == {}


def test_a_hyperparameter_or_a_run_option_is_an_option_of_every_training_command() -> None:
    """The options of train and find come from the fields (cli/params.with_fields): none can be forgotten."""
    import inspect

    from elth_cli.cli.cmd_find import find
    from elth_cli.cli.cmd_train import train
    from elth_cli.train.config import TrainConfig
    from elth_cli.train.options import RunOptions

    for command in (train, find):
        params = inspect.signature(command).parameters
        assert set(TrainConfig.flags()) | set(RunOptions.flags()) <= set(params), command.__name__


def test_the_find_registry_names_every_method_once_and_each_module_has_its_interface() -> None:
    from elth_cli.find import methods

    assert len(set(methods.NAMES)) == len(methods.NAMES)
    for m in methods.METHODS.values():
        module = m.implementation()
        if m.kind == methods.SEARCH:
            assert callable(module.options_from) and callable(module.search), m.name
        users = {o for o in m.uses if o != methods.TRAINING}
        assert users <= set(methods.FindRequest.__dataclass_fields__) | {"out_dir", "workers", "batch_size"}, m.name
