"""Families from outside elth: a module named by --family-module or ELTH_FAMILIES, an installed distribution's
entry point, and Python's register_family; tickets that name their provider; malformed families as one line."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_elth, run_in_process
from elth_cli import archs
from elth_cli.archs import Family, FamilyError, StateEntry, plugins
from elth_cli.errors import UsageError
from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket

PLUGIN = Path(__file__).resolve().parent / "plugins" / "resmlp_family.py"


@pytest.fixture
def registry(monkeypatch):
    """This process's registry as it was, whatever a test registers."""
    monkeypatch.delenv(archs.ENV_VAR, raising=False)
    families, loaded = dict(archs.FAMILIES), set(archs._loaded)
    yield archs
    os.environ.pop(archs.ENV_VAR, None)
    archs.FAMILIES.clear()
    archs.FAMILIES.update(families)
    archs._loaded.clear()
    archs._loaded.update(loaded)


def _ok(r, what):
    assert r.code == 0, (what, r.stderr)
    return r


def test_a_family_in_a_file_goes_through_find_stretch_train_eval_and_compare(tmp_path, registry, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    fm = ["--family-module", str(PLUGIN)]
    _ok(run_in_process(capsys, *fm, "find", "-m", "imp", "--arch", "testmlp2-w16", "--dataset", "digits",
                       "--rounds", "1", "--epochs", "1", "--out-dir", "run", "-o", "imp.safetensors"), "find imp")
    # The option is also taken after the command's name.
    _ok(run_in_process(capsys, "stretch", "imp.safetensors", "-t", "testmlp4-w16", "-o", "s.safetensors", *fm),
        "stretch")
    _ok(run_in_process(capsys, "train", "s.safetensors", "--epochs", "2", "-o", "t.safetensors", *fm), "train")
    r = _ok(run_in_process(capsys, *fm, "eval", "t.safetensors", "--json"), "eval")
    assert json.loads(r.stdout)["accuracy"] > 0.2  # ten classes: chance is 0.1
    r = _ok(run_in_process(capsys, *fm, "compare", "imp.safetensors", "s.safetensors", "t.safetensors", "--json"),
            "compare")
    assert len(json.loads(r.stdout)["tickets"]) == 3
    ticket = Ticket.load(tmp_path / "t.safetensors")
    assert ticket.arch == "testmlp4-w16" and ticket.is_trained
    assert json.loads(ticket.metadata()["family_provider"])["module"] == str(PLUGIN)
    # ELTH_FAMILIES reaches a new process; without it the ticket is refused, with its provider and what to do.
    r = run_elth("info", "t.safetensors", cwd=tmp_path)  # the variable the option set is this process's
    assert r.code == 0, r.stderr
    os.environ.pop(archs.ENV_VAR)
    r = run_elth("info", "t.safetensors", cwd=tmp_path)
    assert r.code == 1 and "Traceback" not in r.stderr
    assert f"comes from the file {PLUGIN}" in r.stderr and "--family-module" in r.stderr


def _install(site: Path, version: str = "1.2") -> None:
    """An installed distribution `testfam` with an elth.families entry point, as pip would leave it."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, site / "testfam.py")
    info = site / f"testfam-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: testfam\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[elth.families]\ntestmlp = testfam\n")
    (info / "top_level.txt").write_text("testfam\n")
    (info / "RECORD").write_text("testfam.py,,\n")


def test_an_installed_entry_point_goes_through_find_stretch_train_eval_and_compare(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install(site)
    monkeypatch.setenv("PYTHONPATH", str(site))  # run_elth puts the checkout first, then this
    env_path = f"{Path(__file__).resolve().parents[1]}{os.pathsep}{site}"
    r = _run_with_path(env_path, "archs", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert any(row["family"] == "testmlp" for row in json.loads(r.stdout))
    r = _run_with_path(env_path, "find", "-m", "magnitude", "--arch", "testmlp3-w16", "--dataset", "digits",
                       "--sparsity", "0.5", "-o", "m.safetensors", cwd=tmp_path)
    assert r.code == 0, r.stderr
    for args in (("squeeze", "m.safetensors", "-t", "testmlp2-w16", "-o", "q.safetensors"),
                 ("stretch", "m.safetensors", "-t", "testmlp4-w16", "-o", "s.safetensors"),
                 ("train", "s.safetensors", "--epochs", "1", "-o", "t.safetensors"),
                 ("eval", "t.safetensors"),
                 ("compare", "m.safetensors", "s.safetensors", "t.safetensors")):
        r = _run_with_path(env_path, *args, cwd=tmp_path)
        assert r.code == 0, (args, r.stderr)
    r = run_elth("info", "q.safetensors", cwd=tmp_path)  # the distribution is not on this path
    assert r.code == 1 and "Traceback" not in r.stderr
    assert "comes from testfam 1.2" in r.stderr and "pip install" in r.stderr, r.stderr


def _run_with_path(pythonpath: str, *args: str, cwd: Path):
    import subprocess

    env = dict(os.environ, PYTHONPATH=pythonpath, COLUMNS="200")
    env.pop(archs.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-m", "elth_cli", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=300)

    class R:
        code, stdout, stderr = proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    return R


def test_register_family_from_python(registry):
    module = plugins.import_provider(str(PLUGIN))[0]
    record = registry.register_family(module.FAMILY, provider="my_lab.families", version="0.3")
    assert registry.resolve_arch("testmlp3-w8").family == "testmlp"
    assert record.provider == "my_lab.families" and registry.families()["testmlp"].provider_version == "0.3"
    target = registry.resolve_target(registry.resolve_arch("testmlp3-w8"), "testmlp5-w8")  # parsed in full
    assert target.depths == (5,)
    summary = registry.summarize(registry.resolve_arch("testmlp2-w8"), (1, 8, 8), 10)  # counted on the model
    assert summary.parameters == (64 * 8 + 8) + 2 * (8 + 8 + 8 * 8 + 8) + (8 * 10 + 10)
    assert summary.prunable == 64 * 8 + 2 * 8 * 8 + 8 * 10 and summary.macs == summary.prunable
    with pytest.raises(FamilyError, match="taken by the family from my_lab.families"):
        registry.register_family(module.FAMILY, provider="other.module")
    with pytest.raises(FamilyError, match="taken"):
        registry.register_family(archs.FAMILIES["mlp"].__class__(**{**archs.FAMILIES["mlp"].__dict__,
                                                                   "provider": "x"}), provider="somebody")


BAD_MODULES = {
    "no_families.py": ("X = 1\n", "defines no families"),
    "not_a_family.py": ("FAMILIES = ['resnet']\n", "is not an elth_cli.archs.Family"),
    "import_fails.py": ("import no_such_module_anywhere\n", "failed to import: ModuleNotFoundError"),
    "bad_name.py": ("from elth_cli.archs import Family\nFAMILY = Family(name='Bad Name', parse=len, build=len, "
                    "layout=len)\n", "a family name is lowercase"),
    "bad_init.py": ("from elth_cli.archs import Family\nFAMILY = Family(name='b', parse=len, build=len, layout=len, "
                    "init='xavier')\n", "init must be one of"),
    "not_callable.py": ("from elth_cli.archs import Family\nFAMILY = Family(name='b', parse=1, build=len, "
                        "layout=len)\n", "parse must be a function"),
}


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_a_malformed_family_module_is_one_line_naming_it(tmp_path, registry, name):
    code, message = BAD_MODULES[name]
    path = tmp_path / name
    path.write_text(code)
    with pytest.raises(FamilyError, match=message):
        plugins.module_families(str(path))


BROKEN_FUNCTIONS = {
    "parse": ("def parse(name):\n    return 1 / 0\n", "zz2", "its parse failed on 'zz2': ZeroDivisionError"),
    "parse_type": ("def parse(name):\n    return 'spec' if name.startswith('bro') else None\n", "bro2",
                   "its parse on 'bro2' returned a str, not an ArchSpec"),
    "layout": ("def layout(spec):\n    return ['blocks.0.']\n", "bro2", "its layout on bro2 returned a list"),
    "build": ("def build(spec, shape, classes):\n    raise ValueError('no such width')\n", "bro2",
              "its build failed on bro2: ValueError: no such width"),
    "state": ("def state(spec, shape, classes):\n    return {'1.weight': (10, 64)}\n", "bro2",
              "its state on bro2 returned a dict, not a non-empty list of StateEntry"),
}
_BROKEN_BASE = '''
import re
from torch import nn
from elth_cli.archs import ArchSpec, BlockLayout, Family
def parse(name):
    m = re.fullmatch(r"bro(\\d+)", name)
    return ArchSpec(name=name, family="bro", depths=(int(m[1]),), width=4) if m else None
def build(spec, shape, classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], classes))
def layout(spec):
    return BlockLayout(stem=(), stages=((),), head=("1.",))
'''


@pytest.mark.parametrize("broken", sorted(BROKEN_FUNCTIONS))
def test_a_bug_in_a_family_function_is_one_line_on_the_command_line(tmp_path, broken):
    code, arch, message = BROKEN_FUNCTIONS[broken]
    extra = ", state=state" if broken == "state" else ""
    (tmp_path / "bro.py").write_text(_BROKEN_BASE + code + "FAMILY = Family(name='bro', parse=parse, build=build, "
                                     f"layout=layout{extra})\n")
    fm = ("--family-module", str(tmp_path / "bro.py"))
    args = ["find", "-m", "random", "--arch", arch, "--dataset", "digits", "--sparsity", "0.5", "-o", "x.safetensors"]
    if broken == "layout":  # only stretching and squeezing read the layout
        assert run_elth(*fm, *args, cwd=tmp_path).code == 0
        args = ["stretch", "x.safetensors", "-t", "bro3", "-o", "y.safetensors"]
    r = run_elth(*fm, *args, cwd=tmp_path)
    assert r.code == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "family bro from" in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / args[-1]).exists()


def test_a_missing_family_module_is_refused_before_any_work(tmp_path):
    r = run_elth("--family-module", str(tmp_path / "nope.py"), "archs", cwd=tmp_path)
    assert r.code == 2 and r.stderr.strip() == f"error: family module {tmp_path / 'nope.py'}: no such file; name a " \
                                               ".py file or an importable module"
    r = run_elth("archs", "--family-module", "no_such_family_package", cwd=tmp_path)
    assert r.code == 2 and "no module of that name is installed" in r.stderr and "Traceback" not in r.stderr


def test_an_unknown_architecture_points_at_family_modules(registry):
    with pytest.raises(UsageError, match="--family-module"):
        registry.resolve_arch("transformer-xl")


def test_env_var_families_reach_name_resolution(registry, monkeypatch):
    monkeypatch.setenv(archs.ENV_VAR, f"{PLUGIN}")
    assert registry.resolve_arch("testmlp2-w4").family == "testmlp"
    assert isinstance(registry.families()["testmlp"], Family)


def test_docs_families_runs_as_written(tmp_path, registry, capsys, monkeypatch):
    """docs/families.md: its family saved as resmlp.py, its commands in order, then its Python, in one folder."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    python = [block.split("```")[0] for block in page.split("```python\n")[1:]]
    commands = [line for block in page.split("```bash\n")[1:] for line in block.split("```")[0].splitlines()
                if line.startswith("elth ")]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resmlp.py").write_text(python[0])
    assert 25 <= len(python[0].strip().splitlines()) <= 45  # "a family of about 30 lines"
    for command in commands:
        r = run_in_process(capsys, *shlex.split(command)[1:])
        assert r.code == 0, (command, r.stderr)
    trained = Ticket.load(tmp_path / "resmlp8-trained.safetensors")
    assert trained.arch == "resmlp8-w64" and trained.metrics["test_acc"] > 0.5
    exec(compile(python[1], "docs/families.md", "exec"), {})


def test_docs_families_units_work_on_the_resmlp_family(tmp_path, registry, capsys, monkeypatch):
    """docs/families.md, "Units": its function added to the page's resmlp.py, as the page says; then widen keeps
    the function (carry) and align recovers a permutation of the plugin's network."""
    from elth_cli.symmetry import permute, random_permutations, weight_matching
    from elth_cli.width import WidthOptions, widen

    page = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    python = [block.split("```")[0] for block in page.split("```python\n")[1:]]
    units_code = next(b for b in python if "def units(" in b)
    module = python[0].replace("\nFAMILY = Family(", units_code + "\n\nFAMILY = Family(\n    units=units,", 1)
    (tmp_path / "resmlp.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    archs.use_family_module("resmlp.py")
    ticket = random_ticket("resmlp3-w16", (1, 8, 8), 10, 0.5, seed=0)
    wide = widen(ticket, "resmlp3-w32", WidthOptions(init="carry"))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        torch.testing.assert_close(wide.build_model().double()(x), ticket.build_model().double()(x))
    units = archs.network_units(ticket.spec, {k: tuple(v.shape) for k, v in ticket.init.items()})
    perms = random_permutations(units, torch.Generator().manual_seed(1))
    moved = permute(ticket.init, units, perms)
    back = permute(moved, units, weight_matching(units, moved, ticket.init))
    assert all(torch.equal(back[k], ticket.init[k]) for k in back)
    ticket.save(tmp_path / "r.safetensors")
    r = run_in_process(capsys, "--family-module", "resmlp.py", "widen", "r.safetensors", "--target", "resmlp3-w64",
                       "-o", "wide.safetensors")
    assert r.code == 0, r.stderr


BROKEN_STATES = {
    "raises": (lambda spec, shape, classes: 1 / 0, "its state failed on bro2: ZeroDivisionError"),
    "not_a_list": (lambda spec, shape, classes: ("1.weight",), "its state on bro2 returned a tuple, not a non-empty"),
    "not_entries": (lambda spec, shape, classes: [("1.weight", (10, 64), "float32", True)],
                    "its state on bro2 returned the entry ('1.weight', (10, 64), 'float32', True): not a StateEntry"),
    "bad_dtype": (lambda spec, shape, classes: [StateEntry("1.weight", (10, 64), "torch.float32", True)],
                  "its dtype must be a numpy-style name"),
    "twice": (lambda spec, shape, classes: [StateEntry("1.bias", (10,), "float32", False)] * 2,
              "returned the key '1.bias' twice"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_STATES))
def test_a_bug_in_a_family_state_is_one_line_naming_it(registry, broken):
    namespace: dict = {}
    exec(compile(_BROKEN_BASE, "bro.py", "exec"), namespace)
    state, message = BROKEN_STATES[broken]
    family = Family(name="bro", parse=namespace["parse"], build=namespace["build"], layout=namespace["layout"],
                    state=state)
    registry.register_family(family, provider="my_lab.bro")
    with pytest.raises(FamilyError) as caught:
        registry.state_shapes(registry.resolve_arch("bro2"), (1, 8, 8), 10)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("family bro from my_lab.bro: ") and message in text, text


def test_a_family_state_that_is_not_a_function_is_refused(registry):
    namespace: dict = {}
    exec(compile(_BROKEN_BASE, "bro.py", "exec"), namespace)
    family = Family(name="bro", parse=namespace["parse"], build=namespace["build"], layout=namespace["layout"],
                    state=[])
    with pytest.raises(FamilyError, match="state must be a function or None, got list"):
        registry.register_family(family, provider="my_lab.bro")


def test_docs_families_state_is_the_resmlp_models(tmp_path, registry, monkeypatch):
    """docs/families.md, "The state dict without torch": its function added to the page's resmlp.py gives the
    model's state dict exactly, and state_shapes answers from it without building the model."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    python = [block.split("```")[0] for block in page.split("```python\n")[1:]]
    state_code = next(b for b in python if "def state(" in b)
    module = python[0].replace("\nFAMILY = Family(", state_code + "\n\nFAMILY = Family(\n    state=state,", 1)
    (tmp_path / "resmlp.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    archs.use_family_module("resmlp.py")
    spec = archs.resolve_arch("resmlp3-w16")
    family = archs.family_of(spec)
    model = family.build(spec, (1, 8, 8), 10)
    entries = family.state(spec, (1, 8, 8), 10)
    assert [(e.key, e.shape) for e in entries] == [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert [e.key for e in entries if e.prunable] == archs.prunable_keys_of(model)
    archs.FAMILIES["resmlp"] = dataclasses.replace(family, build=None)  # state_shapes must not build it
    found = archs.state_shapes(spec, (1, 8, 8), 10)
    assert found.prunable == tuple(archs.prunable_keys_of(model)) and set(found.dtypes.values()) == {"float32"}
