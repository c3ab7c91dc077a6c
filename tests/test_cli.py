"""The CLI as a user meets it: real subprocesses, exit statuses, streams and files."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from conftest import ROOT, assert_clean_error, run_elth, run_elth_bytes
from elth_cli.cli import app
from elth_cli.ticket import Ticket

COMMANDS = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]


def test_version_and_help():
    r = run_elth("--version")
    assert r.code == 0 and r.stdout.startswith("elth ")
    r = run_elth("--help")
    assert r.code == 0
    for name in COMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command):
    r = run_elth(command, "--help")
    assert r.code == 0, r.stderr
    assert "Example" in r.stdout and f"elth {command}" in r.stdout


def test_archs_json():
    r = run_elth("archs", "--json")
    assert r.code == 0
    rows = json.loads(r.stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["resnet20"]["parameters"] == 272_474
    assert by_name["imagenet-resnet26"]["blocks_per_stage"] == [2, 3, 4, 3]
    assert by_name["vgg19"]["family"] == "cifar-vgg"


def test_find_stretch_info_pipeline(tmp_path):
    """`elth --help`'s example, `elth find ... -o - | elth stretch - ...`, through a real shell pipe."""
    from elth_cli.cli.examples import PIPELINE

    cmd = PIPELINE.command.replace("elth ", f"{sys.executable} -m elth_cli ")
    proc = subprocess.run(cmd, shell=True, capture_output=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"stretch resnet20 -> resnet56" in proc.stderr
    out = tmp_path / "r56.safetensors"
    ticket = Ticket.load(out)
    assert ticket.arch == "resnet56" and ticket.method == "stretch"
    assert ticket.sparsity == pytest.approx(0.8, abs=0.01)
    r = run_elth("info", str(out), "--json")
    (doc,) = json.loads(r.stdout)  # one document per argument, always a list
    assert doc["transform"]["mapping_string"] == "0:0;1:1,3,5,7;2:2,4,6,8"
    assert doc["parents"][0]["arch"] == "resnet20"
    assert len(doc["parents"][0]["sha256"]) == 64
    assert [layer["key"] for layer in doc["layers"]] == list(ticket.masks)  # the model's order


def test_stdout_carries_only_the_ticket(ticket_file):
    code, out, err = run_elth_bytes("stretch", "-", "--target", "resnet32", "-o", "-", stdin=ticket_file.read_bytes())
    assert code == 0, err
    t = Ticket.from_bytes(out)
    assert t.arch == "resnet32-w4"
    # the parent's hash is that of the bytes that came in on stdin
    assert t.parents[0]["sha256"] == Ticket.load(ticket_file).sha256


def test_stretch_json_and_squeeze_back(tmp_path, ticket_file):
    s = tmp_path / "s.safetensors"
    r = run_elth("stretch", str(ticket_file), "--target", "resnet44", "--strategy", "interpolate", "-o", str(s), "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["transform"]["mapping"] == [[0, 1, 1, 1, 2, 2, 2]] * 3
    assert doc["target"]["arch"] == "resnet44-w4"
    back = tmp_path / "back.safetensors"
    r = run_elth("squeeze", str(s), "--target", "resnet20", "--mapping", "0:0;1:1;4:2", "-o", str(back))
    assert r.code == 0, r.stderr
    a, b = Ticket.load(ticket_file), Ticket.load(back)
    assert all((a.init[k] == b.init[k]).all() for k in a.init)


# ----- bad input: one line, status 1 or 2, no traceback, nothing written ----------------------------
def _no_output(tmp_path, name="out.safetensors"):
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_not_safetensors(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("just some text that is long enough to have a header")
    r = run_elth("stretch", str(bad), "--target", "resnet32", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (1,), "not a safetensors file")
    _no_output(tmp_path)


def test_truncated(tmp_path, ticket_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ticket_file.read_bytes()[:-100])
    r = run_elth("stretch", str(cut), "--target", "resnet32", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (1,), "truncated")
    _no_output(tmp_path)


def test_other_format(tmp_path):
    import torch
    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    r = run_elth("info", str(other))
    assert_clean_error(r, (1,), "not an elth ticket")


def test_mask_for_another_arch(tmp_path, ticket):
    from elth_cli.container import save_with_digest
    meta = ticket.metadata()
    meta["arch"] = "resnet32-w4"
    tensors = {f"mask/{k}": v for k, v in ticket.masks.items()} | {f"init/{k}": v for k, v in ticket.init.items()}
    path = tmp_path / "wrong.safetensors"
    path.write_bytes(save_with_digest(tensors, meta))  # valid as a file; its masks are another network's
    r = run_elth("info", str(path))
    assert_clean_error(r, (1,), "another architecture")


def test_unknown_arch(tmp_path):
    r = run_elth("find", "--method", "random", "--arch", "resnet21", "--dataset", "digits", "--sparsity", "0.5", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "6n+2")
    _no_output(tmp_path)
    r = run_elth("find", "--method", "random", "--arch", "alexnet", "--dataset", "digits", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "unknown architecture")


def test_unknown_dataset(tmp_path):
    r = run_elth("find", "--method", "random", "--arch", "resnet20", "--dataset", "imagenette", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "imagenette")
    _no_output(tmp_path)


def test_target_of_another_family(tmp_path, ticket_file):
    r = run_elth("stretch", str(ticket_file), "--target", "vgg19", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "within their family")
    _no_output(tmp_path)


def test_wrong_direction(tmp_path, ticket_file):
    r = run_elth("stretch", str(ticket_file), "--target", "resnet14", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "elth squeeze")
    r = run_elth("squeeze", str(ticket_file), "--target", "resnet56", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "elth stretch")
    _no_output(tmp_path)


def test_bad_mapping(tmp_path, ticket_file):
    r = run_elth("stretch", str(ticket_file), "--target", "resnet32", "--mapping", "0:0;1:1;2:2", "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), "left empty")
    _no_output(tmp_path)


def test_output_exists_without_force(tmp_path, ticket_file):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    r = run_elth("stretch", str(ticket_file), "--target", "resnet32", "-o", str(out))
    assert_clean_error(r, (2,), "--force")
    assert out.read_bytes() == b"precious"
    r = run_elth("stretch", str(ticket_file), "--target", "resnet32", "-o", str(out), "--force")
    assert r.code == 0 and Ticket.load(out).arch == "resnet32-w4"


@pytest.mark.parametrize("value, hint", [("1.0", "[0, 1)"), ("-0.1", "[0, 1)"), ("80", "did you mean 0.8")])
def test_sparsity_out_of_range(tmp_path, value, hint):
    r = run_elth("find", "--method", "random", "--arch", "resnet20-w4", "--dataset", "digits", "--sparsity", value, "-o", str(tmp_path / "out.safetensors"))
    assert_clean_error(r, (2,), hint)
    _no_output(tmp_path)


def test_missing_input_and_usage_errors(tmp_path):
    r = run_elth("info", str(tmp_path / "nope.safetensors"))
    assert_clean_error(r, (2,), "does not exist")
    r = run_elth("stretch", "--target", "resnet32")
    assert_clean_error(r, (2,), "missing")
    r = run_elth("info", "x", "--bogus")
    assert_clean_error(r, (2,), "--bogus")


def test_json_and_stdout_ticket_conflict(ticket_file):
    r = run_elth("stretch", str(ticket_file), "--target", "resnet32", "-o", "-", "--json")
    assert_clean_error(r, (2,), "stdout")


def test_output_folder_that_is_a_file(tmp_path):
    """A folder path that is a file is found before any work: one line, status 2, not a traceback."""
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    r = run_elth("find", "--method", "imp", "--arch", "resnet14-w4", "--dataset", "digits", "--rounds", "1",
                 "--epochs", "1", "--out-dir", str(blocker))
    assert_clean_error(r, (2,), f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_python_types(command):
    """Options and arguments read as words (TICKET, KEY, --augment/--no-augment), never as Python types."""
    r = run_elth(command, "--help")
    assert r.code == 0
    for junk in ("<bool>", "<list[", "{TICKET...}"):
        assert junk not in r.stdout, (junk, r.stdout)


# ----- what a new user still trips on (issue 28, item 11) ------------------------------------------------
def test_help_lists_every_command_whole_and_usage_reads_plainly():
    r = run_elth("--help")
    assert r.code == 0 and "..." not in r.stdout.split("Commands:")[1].split("Examples:")[0]
    assert "train    Train tickets from their rewind point" in r.stdout
    usage = run_elth("info", "--help").stdout.splitlines()[0]
    assert usage == "Usage: elth info [OPTIONS] TICKET_OR_RUN..."  # typer wrote {TICKET_OR_RUN}...


def test_find_and_train_help_group_their_options_in_panels():
    for command in ("find", "train"):
        text = run_elth(command, "--help").stdout
        heads = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
        assert heads[-6:] == ["Method:", "Training:", "Data:", "Devices:", "Output:", "Other:"], heads
        training = text.split("\nTraining:")[1].split("\nData:")[0]
        assert "--epochs" in training and "--lr" in training and "--device" not in training


def test_values_complete_in_the_shell():
    import os

    env = {"_ELTH_COMPLETE": "complete_bash", "COMP_CWORD": "3"}
    for words, expected in ((["elth", "find", "--method", "ri"], "rigl"), (["elth", "find", "--arch", "resnet2"], "resnet20"),
                            (["elth", "train", "--precision", "bf"], "bf16"), (["elth", "eval", "--dataset", "dig"], "digits"),
                            (["elth", "compare", "--plot-kind", "lay"], "layers")):
        proc = subprocess.run([sys.executable, "-m", "elth_cli", *words[1:]], capture_output=True, timeout=120,
                              env=dict(os.environ, **env, COMP_WORDS=" ".join(words), PYTHONPATH=str(ROOT)))
        assert expected in proc.stdout.decode(), (words, proc.stdout, proc.stderr)


def test_a_missing_option_is_named_alone(tmp_path):
    r = run_elth("find", "--method", "rigl", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5")
    assert_clean_error(r, (2,), "rigl needs -o FILE")
    assert "--arch" not in r.stderr
    r = run_elth("find", "--method", "imp", "--arch", "resnet8-w4", "--rounds", "1", "--out-dir", str(tmp_path / "r"))
    assert_clean_error(r, (2,), "imp needs --dataset")


def test_plot_kind_without_plot_is_refused(tmp_path, ticket):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ticket.save(a)
    ticket.save(b)
    r = run_elth("compare", str(a), str(b), "--plot-kind", "layers")
    assert_clean_error(r, (2,), "--plot-kind says which figure --plot draws")


def test_info_takes_quiet_and_reads_its_numbers(tmp_path):
    out = tmp_path / "t.safetensors"
    assert run_elth("find", "--method", "rigl", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5",
                    "--epochs", "1", "--update-every", "5", "-o", str(out), "-q").code == 0
    r = run_elth("info", str(out), "-q")
    assert r.code == 0 and r.stderr == ""
    metrics = [line for line in r.stdout.splitlines() if line.startswith(("metrics", "            "))]
    assert metrics and all(len(line) <= 100 for line in metrics)
    assert "test_acc " in r.stdout and "%" in r.stdout.split("test_acc ")[1][:10]  # an accuracy, in %
    assert "mask_updates [" in r.stdout and "entr" in r.stdout


def test_a_search_that_can_never_settle_says_so_before_it_trains(tmp_path):
    r = run_elth("find", "--method", "early-bird", "--arch", "resnet8-w4", "--dataset", "digits", "--sparsity", "0.5",
                 "--epochs", "3", "--window", "5", "-o", str(tmp_path / "eb.safetensors"))
    assert r.code == 0, r.stderr
    lines = r.stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if "can never settle" in line)
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert warning < first_epoch  # said up front, not after the whole recipe
    assert "mask distance" in lines[first_epoch + 1]  # the epoch lines show how far the mask moved


def test_a_refusal_never_suggests_the_source_itself(tmp_path):
    from elth_cli import archs
    from elth_cli.errors import UsageError

    with pytest.raises(UsageError) as info:
        archs.resolve_target(archs.resolve_arch("vgg13-fc3"), "vgg16-fc3")
    assert "e.g. vgg13-fc3" not in str(info.value) and "e.g. vgg13-fc5" in str(info.value)


def test_one_epoch_and_one_thread_are_singular(tmp_path, ticket_file):
    r = run_elth("train", str(ticket_file), "-o", str(tmp_path / "o.safetensors"), "--epochs", "1")
    assert r.code == 0 and "(1 epoch of 23)" in r.stderr and "1 epochs" not in r.stderr


def test_info_prints_a_rate_as_a_rate_and_a_duration_in_seconds():
    from elth_cli.cli.render import fmt_value

    assert fmt_value("images_per_s", 7879.25) == "7,879.2/s"
    assert fmt_value("wall_time_s", 6.04) == "6.0 s"
