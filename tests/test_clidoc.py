from pathlib import Path

from elth_cli.cli.reference import command_entries, render_cli_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_in_sync():
    assert DOC.read_text() == render_cli_reference(), "docs/cli.md is stale: run python -m elth_cli.cli.reference > docs/cli.md"


def test_reference_names_every_command_and_option():
    text = render_cli_reference()
    for name, _ in command_entries():
        assert f"## elth {name}" in text
    for option in ("`--json`", "`--target`, `-t`", "`--rewind`", "`--like`", "`--precision`", "Environment: `ELTH_DATA`"):
        assert option in text, option
