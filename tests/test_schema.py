"""Metadata schemas: the checks themselves, and property tests that any mutation of a ticket's
metadata values, header or bytes either loads or is refused with elth's own one-line error."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load

from conftest import assert_clean_error, make_ticket, run_elth
from elth_cli import container, elastic, schema
from elth_cli.cli import render
from elth_cli.errors import ElthError, TicketError
from elth_cli.ticket import Ticket


def test_checks_convert_and_refuse() -> None:
    assert schema.integer(0, 10)("7") == 7 and schema.integer()(3) == 3
    for bad in ("x", True, 2.5, 11, "-1", "¹", "٣"):  # Unicode digits: str.isdigit says yes, int() or we say no
        with pytest.raises(schema.Invalid):
            schema.integer(0, 10)(bad)
    assert schema.number(0, 1, below_hi=True)("0.25") == 0.25
    for bad in ("1", "nan", "inf", "x", False, None):
        with pytest.raises(schema.Invalid):
            schema.number(0, 1, below_hi=True)(bad)
    assert math.isnan(schema.number(nan=True)(float("nan")))
    assert schema.json_text(schema.list_of(schema.integer(1), length=3))("[1, 8, 8]") == [1, 8, 8]
    with pytest.raises(schema.Invalid, match="a list of 3"):
        schema.json_text(schema.list_of(schema.integer(1), length=3))("[1, 8]")
    assert schema.optional(schema.text)(None) is None


def test_failures_name_the_innermost_field() -> None:
    rules = {"cost": schema.json_text(schema.obj({"train_steps": schema.integer(0)}, values=schema.number(0)))}
    fail = lambda field, expected: ValueError(f"{field}: {expected}")  # noqa: E731
    with pytest.raises(ValueError, match=r"^cost\.train_steps: a whole number, got 'x'$"):
        schema.check_fields({"cost": '{"train_steps": "x"}'}, rules, fail)
    with pytest.raises(ValueError, match=r"^cost\.train_seconds: a number of at least 0, got -5$"):
        schema.check_fields({"cost": '{"train_seconds": -5}'}, rules, fail)
    parents = {"parents": schema.list_of(schema.obj({"arch": schema.text}))}
    with pytest.raises(ValueError, match=r"^parents\[1\]\.arch: a string, got 3$"):
        schema.check_fields({"parents": [{"arch": "a"}, {"arch": 3}]}, parents, fail)
    assert schema.check_fields({"other": object}, rules, fail) == {"other": object}  # no rule: unchanged


@pytest.mark.parametrize("key, value, message", [
    ("cost", "3", "'cost' must be an object"),
    ("input_shape", '"1x8x8"', "'input_shape' must be a list of 3"),
    ("input_shape", "[1, 8, 0]", "'input_shape[2]' must be a whole number in [1, 65536]"),
    ("num_classes", "100000000000000000000", "'num_classes' must be a whole number in [1, 10000000]"),
    ("sparsity", "1.0", "'sparsity' must be a number in [0, 1)"),
    ("parents", '[{"sha256": 5}]', "'parents[0].sha256' must be a string"),
    ("config", '{"environment": []}', "'config.environment' must be an object"),
    ("hparams", "[1, 2]", "'hparams' must be an object"),
    ("rewind_step", "-3", "'rewind_step' must be a whole number"),
    ("family", "cifar-vgg", "metadata 'family' is 'cifar-vgg' but resnet8-w4 is a cifar-resnet"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(key, value, message) -> None:
    ticket = make_ticket("resnet8-w4")
    ticket.config = {"command": "train", "hparams": {}, "environment": {}}
    raw = _with_meta(ticket.to_bytes(), {key: value})
    with pytest.raises(TicketError, match=r"^mutant: .*" + _re(message)):
        Ticket.from_bytes(raw, "mutant")


def _re(text: str) -> str:
    import re

    return re.escape(text)


def _with_meta(raw: bytes, changes: dict[str, str | None]) -> bytes:
    """The same tensors with metadata values replaced or removed, and a valid digest: what the schema sees
    of a file whose writer got a value wrong (damage itself is refused by the digest, tests/test_container.py)."""
    n = int.from_bytes(raw[:8], "little")
    meta = dict(json.loads(raw[8:8 + n])["__metadata__"])
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return container.save_with_digest(st_load(raw), meta)


def test_unknown_keys_still_round_trip() -> None:
    raw = _with_meta(make_ticket("resnet8-w4").to_bytes(), {"lab_note": "run 7", "x-origin": "[1, 2]"})
    ticket = Ticket.from_bytes(raw)
    assert ticket.extra == {"lab_note": "run 7", "x-origin": "[1, 2]"}
    assert Ticket.from_bytes(ticket.to_bytes()).extra == ticket.extra


# ----- property tests --------------------------------------------------------------------------------
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**25, 10**25) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=8)
_VALUE = _JSON.map(lambda v: json.dumps(v)) | st.text(max_size=12)


@pytest.fixture(scope="module")
def rich_bytes() -> bytes:
    """A stretched ticket with a transform, parents, cost, hparams, metrics and config."""
    source = make_ticket("resnet14-w4")
    source.metrics = {"test_acc": 0.9}
    source.hparams = {"lr": 0.05}
    source.config = {"command": "train", "hparams": {"lr": 0.05}, "environment": {"device": "cpu"}}
    source.sha256 = "0" * 64
    return elastic.stretch(source, "resnet20-w4").to_bytes()


def _exercise(raw: bytes) -> None:
    """What `elth info`, `elth stretch` and a re-save do with a ticket: elth's error, or success."""
    try:
        ticket = Ticket.from_bytes(raw, "mutant")
        json.dumps(render.ticket_summary(ticket))
        render.config_lines(ticket.config)
        elastic.stretch(ticket, "resnet26-w4").to_bytes()
        ticket.to_bytes()
    except ElthError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_metadata_values_load_or_are_refused(rich_bytes, data) -> None:
    n = int.from_bytes(rich_bytes[:8], "little")
    keys = sorted(json.loads(rich_bytes[8:8 + n])["__metadata__"])
    chosen = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
    _exercise(_with_meta(rich_bytes, {k: data.draw(_VALUE) for k in chosen}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**9))
def test_any_byte_damage_loads_or_is_refused(rich_bytes, edits, cut) -> None:
    raw = bytearray(rich_bytes)
    for where, byte in edits:
        raw[where % len(raw)] = byte
    if cut is not None:
        raw = raw[: cut % len(raw)]
    _exercise(bytes(raw))


def test_mutants_through_the_cli_are_one_line(tmp_path, rich_bytes) -> None:
    # The crashes fuzzing found before the schema (each printed a traceback): a sample, through the CLI.
    cases = [{"cost": "3"}, {"num_classes": "100000000000000000000"}, {"config": '{"environment": []}'}]
    for i, changes in enumerate(cases):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(_with_meta(rich_bytes, changes))
        assert_clean_error(run_elth("info", str(path)), (1,), "metadata")
        out = tmp_path / f"s{i}.safetensors"
        assert_clean_error(run_elth("stretch", str(path), "--target", "resnet26", "-o", str(out)), (1,), "metadata")
        assert not out.exists()


def test_a_unicode_digit_is_refused_not_a_crash() -> None:
    """Found by the property test above: format_version '¹' passed str.isdigit and crashed int()."""
    from elth_cli.errors import UsageError
    from elth_cli.steps import parse_steps
    from elth_cli.ticket import FORMAT, TicketError, _typed_metadata

    with pytest.raises(TicketError, match="format_version"):
        _typed_metadata({"format": FORMAT, "format_version": "\u00b9"}, "t.safetensors")
    for text in ("\u00b9", "\u0663ep", "2ep\u00b9it"):
        with pytest.raises(UsageError, match="not a step count"):
            parse_steps(text, 10)
