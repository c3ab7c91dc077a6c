"""The six built-in families give the same tickets as the release that wrote tests/fixtures/families.

Each fixture ticket is made again with today's code (same seeds, no data) and compared tensor by
tensor (sha256 of dtype, shape and bytes) and field by field (timestamps, versions, digests and
timings aside); the fixture files kept in the repository also load with today's code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from elth_cli.ticket import Ticket

HERE = Path(__file__).resolve().parent / "fixtures" / "families"
_spec = importlib.util.spec_from_file_location("make_fixtures", HERE / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
MANIFEST = json.loads((HERE / "manifest.json").read_text())
# Metadata fields added since the fixtures were written (anything else must be as it was).
ADDED_FIELDS = {"family_provider"}


def _check_same(name: str, ticket: Ticket) -> None:
    want = MANIFEST[name]
    assert fixtures.tensor_digests(ticket) == want["tensors"], f"{name}: tensors differ from the fixture"
    meta = fixtures.stable_metadata(ticket)
    assert set(meta) - set(want["metadata"]) <= ADDED_FIELDS, f"{name}: new metadata fields"
    for key, value in want["metadata"].items():
        assert meta.get(key) == value, f"{name}: metadata {key} differs"


@pytest.mark.parametrize("family", sorted(fixtures.CASES))
def test_family_makes_the_fixture_tickets_again(family):
    made = fixtures.make(family)
    assert {f"{family}-{kind}" for kind in made} <= set(MANIFEST)
    for kind, ticket in made.items():
        _check_same(f"{family}-{kind}", Ticket.from_bytes(ticket.to_bytes()))


@pytest.mark.parametrize("path", sorted(HERE.glob("*.safetensors")), ids=lambda p: p.stem)
def test_fixture_files_load_with_todays_code(path):
    ticket = Ticket.load(path)
    assert fixtures.tensor_digests(ticket) == MANIFEST[path.stem]["tensors"]
    assert ticket.spec.family in path.stem
