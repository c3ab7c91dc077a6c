"""Every worked example of `--help` (elth_cli.cli_examples, also in docs/cli.md) runs as written, in
order, in one folder; the README's digits commands are among them."""

from __future__ import annotations

import json
import re
import shlex

import torch

from conftest import ROOT, run_doc_commands, run_in_process
from elth_cli.cli.examples import EXAMPLES, PIPELINE
from elth_cli.ticket import Ticket


def test_every_help_example_runs_in_order(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = []
    for command, examples in EXAMPLES.items():
        if command == "demo":  # minutes even --quick; tests/test_demo.py runs its code
            continue
        for example in examples:
            args = shlex.split(example.command)[1:] + shlex.split(example.short)
            r = run_in_process(capsys, *args)
            assert r.code == 0, (example.command, r.stderr)
            ran.append(example.command)
            if "--json" in args:
                json.loads(r.stdout)
    assert (tmp_path / "runs" / "r20" / "round-04.safetensors").exists()
    assert (tmp_path / "r32-imported.safetensors").exists() and (tmp_path / "trained" / "r20-random.safetensors").exists()
    assert len(ran) == sum(len(v) for k, v in EXAMPLES.items() if k != "demo")
    # The README's Python example, on the r20.safetensors the examples made, on the CPU.
    code = (ROOT / "README.md").read_text().split("```python")[1].split("```")[0]
    exec(compile(code, "README.md", "exec"), {})
    trained = Ticket.load(tmp_path / "r32-from-python.safetensors")
    assert trained.arch == "resnet32-w4" and trained.metrics["test_acc"] > 0.5


def test_the_readme_shows_tested_commands():
    """The README's digits pipeline and its demo line are examples this module runs (or the demo's)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("On the embedded digits set")[1].split("```")[1]
    commands = [line.strip() for line in block.splitlines() if line.strip().startswith("elth ")]
    known = {e.command for examples in EXAMPLES.values() for e in examples} | {PIPELINE.command}
    assert commands and all(c in known for c in commands), [c for c in commands if c not in known]
    assert PIPELINE.command in readme.replace("`", "")


def test_docs_run_nothing_into_a_missing_folder():
    """The tutorial creates the folders its commands write into before the first one does."""
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    written = set(re.findall(r"-o ([\w-]+)/", tutorial))
    for folder in written:
        first_use = tutorial.index(f"-o {folder}/")
        assert re.search(rf"mkdir -p[^\n]*\b{folder}\b", tutorial[:first_use]), folder


def test_the_python_of_docs_training_runs_as_written(tmp_path, monkeypatch):
    """docs/training.md, "From Python": its blocks, in order, in one folder."""
    monkeypatch.chdir(tmp_path)
    section = (ROOT / "docs" / "training.md").read_text().split("## From Python")[1].split("\n## ")[0]
    blocks = [b.split("```")[0] for b in section.split("```python")[1:]]
    assert len(blocks) == 2
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "docs/training.md", "exec"), scope)
    assert Ticket.load(tmp_path / "r20-trained.safetensors").is_trained and not (tmp_path / "r20.ckpt").exists()
    assert scope["result"].ticket.is_trained and (tmp_path / "r20-again.safetensors").exists()


def test_the_controls_of_docs_find_run_as_written(capsys, tmp_path, monkeypatch):
    """docs/find.md, "Controls": its commands, in order, in one folder (trainings shortened to 2 epochs, as
    the --help examples are)."""
    monkeypatch.chdir(tmp_path)
    section = (ROOT / "docs" / "find.md").read_text().split("### Controls")[1].split("\n## ")[0]
    run_doc_commands(capsys, section.split("```")[1], expected=6)
    imp, reinit = Ticket.load(tmp_path / "r20.safetensors"), Ticket.load(tmp_path / "r20-reinit-trained.safetensors")
    assert all(torch.equal(imp.masks[k], reinit.masks[k]) for k in imp.masks) and reinit.method == "reinit"
    assert reinit.parents[0]["sha256"] == imp.sha256 and reinit.rewind_step == imp.rewind_step
