"""Experiment files (elth_cli/experiment): the schema and its errors, the job graph and its identities, a
local run that reuses finished jobs and re-runs only the changed ones, failures, the plan, status and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_in_process
from elth_cli.errors import UsageError
from elth_cli.experiment import engine, tasks
from elth_cli.experiment.graph import build_graph
from elth_cli.experiment.jobstate import read_record
from elth_cli.experiment.spec import dump_experiment, load_experiment, parse_experiment
from elth_cli.report import Log

SMALL = """
[experiment]
name = "small"
dataset = "digits"
networks = ["mlp-300x2", "mlp-300x3"]
device = "cpu"

[recipe]
epochs = 2
eval_every = 0

[imp]
rounds = 1
rewind = "1ep"

[[transform]]
source = "mlp-300x2"
target = "mlp-300x3"
strategies = ["append"]

[baselines]
kinds = ["random"]
networks = ["mlp-300x3"]
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----- the file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["demo", "cifar10-table3"])
def test_the_shipped_files_read_back_equal_from_their_dump(name):
    exp = load_experiment(name)
    assert parse_experiment(dump_experiment(exp), exp.source) == exp


def test_the_table3_file_is_the_papers_protocol():
    exp = load_experiment("cifar10-table3")
    assert exp.dataset == "cifar10" and exp.seeds == (0, 1, 2) and exp.levels == (10, 13) and exp.rewind == "1000it"
    assert [(t.source, t.target) for t in exp.transforms] == [("resnet14", "resnet20"), ("resnet20", "resnet32"),
                                                               ("resnet32", "resnet56")]
    assert exp.dst == ("dpf",) and exp.slurm.gpus == 1
    nodes = build_graph(exp)
    assert sum(n.kind == "imp" for n in nodes) == 12 and len(nodes) == 12 + 3 * 2 * (3 * 2 + 3 + 3)


@pytest.mark.parametrize("change, message", [
    (("[imp]", "[imp]\nround = 3"), "[imp] round: unknown key; did you mean rounds?"),
    (("[baselines]", "[baseline]"), "unknown table [baseline]; did you mean [baselines]?"),
    (("rounds = 1", "rounds = 1\nlevels = [2]"), "[imp] levels: level 2 is not a round of the chain"),
    (('strategies = ["append"]', 'strategies = ["spaced"]'), "'spaced' is not a strategy of a stretch"),
    (('target = "mlp-300x3"', 'target = "mlp-300x4"'), "is not one of [experiment] networks"),
    (("epochs = 2", "epochs = 0"), "[recipe]"),
    (("epochs = 2", "epoch = 2"), "[recipe] epoch: unknown key; did you mean epochs?"),
    (("epochs = 2", "seed = 1"), "[recipe] seed: set it in [experiment] (seeds = [0, 1, 2])"),
    (('dataset = "digits"', 'dataset = "nope"'), "[experiment] dataset"),
    (('networks = ["mlp-300x2", "mlp-300x3"]', 'networks = "mlp-300x2"'), "[experiment] networks: must be a list"),
    (('kinds = ["random"]', 'kinds = ["lucky"]'), "'lucky' is not one of random"),
    (("[imp]", "[imp\n"), "not valid TOML"),
    (('rewind = "1ep"', 'rewind = "soon"'), "[imp] rewind"),
])
def test_a_bad_file_is_refused_in_one_line_naming_the_key(tmp_path, change, message):
    path = write(tmp_path, SMALL.replace(*change))
    with pytest.raises(UsageError) as e:
        load_experiment(str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(UsageError, match="demo, cifar10-table3"):
        load_experiment(str(tmp_path / "nope.toml"))


# ----- the graph and its identities ----------------------------------------------------------------
def test_identities_follow_inputs_and_not_the_seed_count(tmp_path):
    exp = load_experiment(str(write(tmp_path, SMALL)))
    one = {n.slug: n.digest for n in build_graph(exp)}
    two = {n.slug: n.digest for n in build_graph(exp.replace(seeds=(0, 1)))}
    assert all(two[slug] == digest for slug, digest in one.items())  # adding a seed keeps seed 0's jobs
    longer = {n.slug: n.digest for n in build_graph(exp.replace(recipe={"epochs": 3, "eval_every": 0}))}
    assert all(longer[slug] != digest for slug, digest in one.items())
    # A transform reads its source's chain: a change of the chain's rewind changes the transform's identity too.
    rewound = {n.slug: n for n in build_graph(exp.replace(rewind="2ep"))}
    node = rewound["s0-mlp-300x3-l1-stretch-append-from-mlp-300x2"]
    assert node.digest != one[node.slug] and node.after == ("IMP mlp-300x2",)


# ----- running ------------------------------------------------------------------------------------
def started(capsys) -> list[str]:
    err = capsys.readouterr().err
    return sorted(line.split("]")[0][1:] for line in err.splitlines() if line.endswith(")") and "] started (" in line)


def test_a_local_run_reuses_its_jobs_and_reruns_only_the_changed_ones(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    out = tmp_path / "out"
    r = run_in_process(capsys, "run", path, "--out-dir", out, "--jobs", "2")
    assert r.code == 0, r.stderr
    first = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()}
    assert len(first) == 4 and json.loads((out / "table.json").read_text())["missing"] == []
    # Edit: another strategy and another baseline. The plan says so, and only those two run.
    path.write_text(SMALL.replace('["append"]', '["append", "interpolate"]').replace('["random"]',
                                                                                      '["random", "magnitude"]'))
    r = run_in_process(capsys, "run", path, "--out-dir", out, "--plan", "--json")
    actions = {j["job"]: j["action"] for j in json.loads(r.stdout)["jobs"]}
    assert sorted(k for k, v in actions.items() if v != "done") == ["mlp-300x3 l1 magnitude",
                                                                    "mlp-300x3 l1 stretch interpolate from mlp-300x2"]
    r = run_in_process(capsys, "run", path, "--out-dir", out, "--jobs", "1")
    assert r.code == 0 and "6 jobs, 2 to run, 4 done before" in r.stderr, r.stderr
    kinds = {row["kind"] for row in json.loads((out / "table.json").read_text())["rows"]}
    assert {"magnitude", "stretch interpolate"} <= kinds
    assert {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir() if p.name in first} == first
    # A changed chain: it runs again and says why, and so do the jobs that read it, and nothing else.
    path.write_text(path.read_text().replace('rewind = "1ep"', 'rewind = "10it"'))
    plan = run_in_process(capsys, "run", path, "--out-dir", out, "--plan")
    assert "re-run IMP mlp-300x2 (rewind '1ep' -> '10it')" in plan.stdout
    assert "re-run mlp-300x3 l1 stretch append from mlp-300x2 (IMP mlp-300x2 runs again)" in plan.stdout


def test_a_failed_job_is_reported_with_its_log_and_its_readers_do_not_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real = tasks._imp

    def broken(worker, node, exp, where):
        if node.params["arch"] == "mlp-300x2":
            raise UsageError("the data set vanished")
        return real(worker, node, exp, where)

    monkeypatch.setitem(tasks.__dict__, "_imp", broken)
    # With tensorboard = true every training also writes event files, one folder per job (IMP: per round).
    opened = engine.load(str(write(tmp_path, SMALL.replace('device = "cpu"', 'device = "cpu"\ntensorboard = true'))), out)
    with pytest.raises(Exception, match="failed: IMP mlp-300x2, mlp-300x3 l1 stretch append"):
        engine.run_local(opened, 1, Log(quiet=True))
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((out / "tensorboard" / "s0-mlp-300x3-l1-random").glob("events.out.tfevents.*"))
        assert list((out / "tensorboard" / "s0-imp-mlp-300x3").glob("round-01/events.out.tfevents.*"))
    rec = read_record(out, opened.node("IMP mlp-300x2"))
    assert rec["state"] == "failed" and "vanished" in Path(rec["log"]).read_text()
    capsys.readouterr()
    r = run_in_process(capsys, "run", "--status", out, "--json")
    states = {j["job"]: (j["state"], j["detail"]) for j in json.loads(r.stdout)["jobs"]}
    assert states["IMP mlp-300x2"][0] == "failed" and rec["log"] in states["IMP mlp-300x2"][1]
    assert states["mlp-300x3 l1 stretch append from mlp-300x2"] == ("blocked", "needs IMP mlp-300x2, which failed")
    assert states["mlp-300x3 l1 random"][0] == "done"
    # The report has the finished rows and lists the missing jobs.
    doc = json.loads((out / "table.json").read_text())
    assert {r["kind"] for r in doc["rows"]} == {"IMP (own)", "random"}
    assert {m["job"] for m in doc["missing"]} == {"IMP mlp-300x2", "mlp-300x3 l1 stretch append from mlp-300x2"}


@pytest.mark.parametrize("args, message", [
    (["run"], "give an experiment file"),
    (["run", "demo"], "give --out-dir"),
    (["run", "demo", "--report", "x"], "--report and --status read the folder alone; drop EXPERIMENT"),
    (["run", "demo", "--out-dir", "x", "--executor", "cloud"], "unknown --executor 'cloud'"),
    (["run", "--status", "."], "is not an experiment's folder"),
])
def test_run_refuses_bad_command_lines_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(run_in_process(capsys, *args), codes=(2,), contains=message)


def test_a_folder_of_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_clean_error(run_in_process(capsys, "run", write(tmp_path, SMALL), "--out-dir", tmp_path / "out"),
                       codes=(2,), contains="holds other files and no experiment.toml")


def test_show_prints_a_shipped_file(capsys):
    r = run_in_process(capsys, "run", "--show", "demo")
    assert r.code == 0 and parse_experiment(r.stdout).name == "demo"


# ----- on a real SLURM cluster (tests/slurm/cluster.sh; .ci/run starts it) ------------------------
@pytest.mark.slurm
def test_the_slurm_executor_ends_with_the_table_of_a_local_run(slurm_cluster, tmp_path, capsys, monkeypatch):
    """Every job a SLURM job, each after the jobs it reads (afterok), the results written by a last job: the
    table equals the local pool's, row for row (same seeds, one thread per job)."""
    import os

    from conftest import ROOT

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write(tmp_path, SMALL)
    local = run_in_process(capsys, "run", path, "--out-dir", tmp_path / "local", "--jobs", "2", "--json")
    assert local.code == 0, local.stderr
    r = run_in_process(capsys, "run", path, "--out-dir", tmp_path / "slurm", "--executor", "slurm", "--wait",
                       "--partition", "debug")
    assert r.code == 0, r.stderr
    ids = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())
    assert len(ids) == 5 and "results" in ids  # four jobs and the one that writes the results
    script = (tmp_path / "slurm" / "slurm" / "s0-mlp-300x3-l1-random.sbatch").read_text()
    assert "#SBATCH --partition=debug" in script and "--signal=B:USR1@90" in script and "--requeue" in script

    def rows(folder: str) -> list:
        doc = json.loads((tmp_path / folder / "table.json").read_text())
        return [{k: v for k, v in row.items() if k not in ("path", "cost_seconds")} for row in doc["rows"]]

    assert rows("slurm") == rows("local") and len(rows("local")) == 4
    status = run_in_process(capsys, "run", "--status", tmp_path / "slurm", "--json")
    assert {j["state"] for j in json.loads(status.stdout)["jobs"]} == {"done"}
    assert os.path.exists(tmp_path / "slurm" / "logs" / "s0-imp-mlp-300x2.log")


def test_the_file_and_the_errors_of_docs_experiments_are_what_elth_reads_and_says(tmp_path):
    """docs/experiments.md: its schema example reads and makes its jobs; its two error lines are elth's."""
    from conftest import ROOT

    doc = (ROOT / "docs" / "experiments.md").read_text()
    exp = parse_experiment(doc.split("```toml")[1].split("```")[0], "exp.toml")
    nodes = build_graph(exp)
    # 3 seeds x (2 chains + 2 levels x (2 transforms + 4 baselines + 1 rigl)).
    assert len(nodes) == 3 * (2 + 2 * 7) and exp.slurm.extra == ("--qos=normal",)
    errors = [line for line in doc.splitlines() if line.startswith("error: exp.toml")]
    text = dump_experiment(exp).replace('[slurm]', '[slurm]\n', 1)
    for error, bad in zip(errors, (text.replace("rounds = 13", "round = 13"),
                                   text.replace('strategies = ["append", "interpolate"]', 'strategies = ["spaced"]'))):
        with pytest.raises(UsageError) as e:
            parse_experiment(bad, "exp.toml")
        assert f"error: {e.value}" == error


def test_a_slurm_jobs_script_asks_for_its_resources_and_requeues_on_exit_75(tmp_path):
    """What --executor slurm submits, without a cluster: the [slurm] table and the command line's options,
    requeue and the signal before the time limit, the one job it runs, and the results job."""
    from elth_cli.experiment import slurm
    from elth_cli.experiment.commands import with_slurm_options

    exp = load_experiment(str(write(tmp_path, SMALL + '\n[slurm]\npartition = "gpu"\ngpus = 1\nextra = ["--qos=low"]\n')))
    opened = engine.open_experiment(with_slurm_options(exp, {"time": "01:00:00", "partition": "short"}), tmp_path / "o")
    text = slurm.script(opened, opened.node("mlp-300x3 l1 random"), opened.exp.slurm)
    for line in ("#SBATCH --partition=short", "#SBATCH --gpus=1", "#SBATCH --time=01:00:00", "#SBATCH --qos=low",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@90", "--job s0-mlp-300x3-l1-random",
                 'if [ "$status" -eq 75 ]; then', 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in text, line
    results = slurm.script(opened, None, opened.exp.slurm)
    assert "--report" in results and "--requeue" not in results and "--gpus" not in results
