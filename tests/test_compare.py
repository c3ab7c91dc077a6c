"""elth compare: mask overlap against its random expectation, aligned profiles, interpolation, the JSON document."""

import dataclasses
import functools
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import Result, assert_clean_error, make_ticket, run_elth, run_in_process
from elth_cli import archs, cli, data, elastic
from elth_cli.compare import compare_tickets, expected_random_jaccard, hamming, jaccard
from elth_cli.errors import UsageError
from elth_cli.interpolation import error_barriers, interpolate, interpolate_state, recompute_bn_stats
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.train import evaluate

TOP_KEYS = {"schema", "schema_version", "family", "same_arch", "tickets", "replicates", "duplicates", "pairs", "profile", "interpolation"}
TICKET_KEYS = {"name", "sha256", "arch", "family", "blocks_per_stage", "dataset", "input_shape", "num_classes",
               "sparsity", "prunable_weights", "kept_weights", "method", "rewind_step", "trained", "parents",
               "transform", "test_acc", "test_loss", "cost", "flops"}
PAIR_KEYS = {"a", "b", "weights", "intersection", "union", "jaccard", "expected_random_jaccard", "jaccard_over_random",
             "hamming", "hamming_fraction", "identical_masks", "layers"}
LAYER_KEYS = {"key", "weights", "sparsity_a", "sparsity_b", "intersection", "union", "jaccard",
              "expected_random_jaccard", "hamming", "hamming_fraction"}
PROFILE_KEYS = {"label", "section", "stage", "block", "param", "keys", "weights", "sparsity", "copied_from"}
INTERP_KEYS = {"dataset", "split", "examples", "points", "recompute_bn", "bn_batches", "bn_batch_size", "bn_seed",
               "error_barrier", "error_barrier_vs_mean"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation (and stall badly on a busy shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_inprocess(capsys, *args: str) -> Result:
    """The CLI in this process (so tests can monkeypatch imports); exit status and streams as a user sees them."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out = capsys.readouterr()
    return Result(exc.value.code or 0, out.out, out.err)


def complement(ticket: Ticket) -> Ticket:
    """The ticket keeping exactly the weights ``ticket`` prunes (init zeroed where the new mask prunes)."""
    masks = {k: ~m for k, m in ticket.masks.items()}
    dense = archs.build_model(ticket.spec, ticket.input_shape, ticket.num_classes, seed=5).state_dict()
    return dataclasses.replace(ticket, masks=masks, init=apply_masks(dict(dense), masks), sha256=None)


def graded_ticket(arch: str = "resnet20-w4") -> Ticket:
    """A ticket whose layers all have different sparsities, so copied blocks are recognisable."""
    t = make_ticket(arch, 0.0)
    gen = torch.Generator().manual_seed(3)
    masks = {}
    for i, (key, m) in enumerate(t.masks.items()):
        keep = max(1, round(m.numel() * (0.9 - 0.04 * i)))
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=gen)[:keep]] = True
        masks[key] = flat.view(m.shape)
    return dataclasses.replace(t, masks=masks, init=apply_masks(t.init, masks), method="imp",
                               metrics={"test_acc": 0.91, "test_loss": 0.3},
                               cost={"train_steps": 5000, "train_seconds": 12.5, "trainings": 5})


# ----- overlap ------------------------------------------------------------------------------------
def test_jaccard_of_a_ticket_with_itself_and_its_complement():
    t = make_ticket("resnet20-w4", 0.6)
    c = complement(t)
    total = sum(m.numel() for m in t.masks.values())
    assert jaccard(t.masks, t.masks) == 1.0 and hamming(t.masks, t.masks) == 0
    assert jaccard(t.masks, c.masks) == 0.0 and hamming(t.masks, c.masks) == total
    doc = compare_tickets([t, t, c], ["t", "t2", "c"])
    by_pair = {(p["a"], p["b"]): p for p in doc["pairs"]}
    assert by_pair[(0, 1)]["jaccard"] == 1.0 and by_pair[(0, 1)]["identical_masks"]
    assert by_pair[(0, 2)]["jaccard"] == 0.0 and by_pair[(0, 2)]["hamming_fraction"] == 1.0
    assert all(layer["jaccard"] == 0.0 for layer in by_pair[(0, 2)]["layers"])
    # 60% sparse against 40% sparse: independent masks would share about 0.4*0.6 / (0.4+0.6-0.24) of their union.
    assert by_pair[(0, 2)]["expected_random_jaccard"] == pytest.approx(0.24 / 0.76, abs=2e-3)


def test_hamming_counts_differing_positions():
    a = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool)
    assert hamming(a, b) == 2
    assert hamming({"x": a, "y": a}, {"x": b, "y": ~a}) == 2 + 5
    assert jaccard(a, b) == pytest.approx(2 / 4)
    with pytest.raises(UsageError):
        hamming({"x": a}, {"x": a[:3]})


def random_masks(counts, sizes, gen):
    out = {}
    for i, (k, n) in enumerate(zip(counts, sizes)):
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=gen)[:k]] = True
        out[f"layer{i}"] = m
    return out


def test_expected_random_jaccard_matches_monte_carlo():
    sizes = (5000, 2000, 300)
    kept_a, kept_b = (1000, 1000, 15), (4500, 1000, 210)  # densities (0.2, 0.5, 0.05) and (0.9, 0.5, 0.7)
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(200):
        a, b = random_masks(kept_a, sizes, gen), random_masks(kept_b, sizes, gen)
        samples.append(jaccard(a, b))
    expected = expected_random_jaccard(a, b)
    mean = sum(samples) / len(samples)
    se = math.sqrt(sum((s - mean) ** 2 for s in samples) / (len(samples) - 1) / len(samples))
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
    # The pooled formula by hand: sum of n p q over sum of n (p + q - p q).
    inter = sum(ka * kb / n for ka, kb, n in zip(kept_a, kept_b, sizes))
    union = sum(ka + kb - ka * kb / n for ka, kb, n in zip(kept_a, kept_b, sizes))
    assert expected == pytest.approx(inter / union)
    # ...which is not the mean of the per-layer values (that would be 0.19, many standard errors away).
    per_layer = [ka * kb / n / (ka + kb - ka * kb / n) for ka, kb, n in zip(kept_a, kept_b, sizes)]
    assert abs(sum(per_layer) / 3 - mean) > 20 * se


# ----- rows and profiles --------------------------------------------------------------------------
def test_rows_report_metrics_cost_and_parents():
    src = graded_ticket()
    src.sha256 = "ab" * 32
    stretched = elastic.stretch(src, "resnet32")
    other = dataclasses.replace(make_ticket("resnet20-w4", 0.5), metrics={"final_test_acc": 0.5})
    doc = compare_tickets([src, stretched, other], ["src", "r32", "other"])
    rows = doc["tickets"]
    assert rows[0]["test_acc"] == 0.91 and rows[0]["test_loss"] == 0.3
    assert rows[1]["test_acc"] is None and rows[1]["trained"] is False
    assert rows[2]["test_acc"] == 0.5 and rows[2]["test_loss"] is None
    # A stretched ticket costs what its source's IMP cost, once.
    assert rows[1]["cost"] == rows[0]["cost"] == {"train_steps": 5000, "train_seconds": 12.5, "trainings": 5,
                                                  "train_flops": None, "dense_train_flops": None}
    assert rows[1]["flops"]["total"] is None  # a ticket from before FLOPs were counted: unknown, not 0
    # A random ticket costs no training, only the seconds its mask took to draw.
    assert {k: v for k, v in rows[2]["cost"].items() if k != "prune_seconds"} == {"train_steps": 0, "train_seconds": 0.0, "trainings": 0,
                                                                                    "train_flops": 0.0,
                                                                                    "dense_train_flops": 0.0}
    assert rows[2]["cost"]["prune_seconds"] < 5
    assert rows[1]["parents"] == [{"sha256": "ab" * 32, "arch": "resnet20-w4", "method": "imp",
                                   "sparsity": src.sparsity}]
    assert [(p["a"], p["b"]) for p in doc["pairs"]] == [(0, 2)] and not doc["same_arch"]


def test_aligned_profile_of_a_stretch_keeps_the_source_pattern():
    src = graded_ticket("resnet20-w4")
    r32 = elastic.stretch(src, "resnet32", strategy="append")  # each stage: B0 B1 B2 B1 B2
    rows = {r["label"]: r for r in compare_tickets([src, r32], ["r20", "r32"])["profile"]}
    labels = list(rows)
    assert labels[0] == "stem.conv.weight" and labels[-1] == "head.fc.weight"
    assert labels[1:5] == ["s0.b0.conv1.weight", "s0.b0.conv2.weight", "s0.b1.conv1.weight", "s0.b1.conv2.weight"]
    assert "s1.b0.shortcut.0.weight" in labels and len(labels) == 2 + 3 * 5 * 2 + 2
    for label, row in rows.items():
        s20, s32 = row["sparsity"]
        if row["section"] == "block" and row["block"] >= 3:
            assert s20 is None and row["keys"][0] is None  # '-' in the table
            source = f"s{row['stage']}.b{row['block'] - 2}"
            assert row["copied_from"][1] == source
            assert s32 == rows[f"{source}.{row['param']}"]["sparsity"][0]
        else:
            assert s20 == s32, label
    # The graded source makes this a real check: copied blocks differ from their neighbours.
    assert rows["s0.b3.conv1.weight"]["sparsity"][1] != rows["s0.b2.conv1.weight"]["sparsity"][1]


def test_text_output_marks_missing_blocks(ticket_file, tmp_path, capsys):
    r32 = tmp_path / "r32.safetensors"
    elastic.stretch(Ticket.load(ticket_file), "resnet32").save(r32)
    r = run_inprocess(capsys, "compare", str(ticket_file), str(r32))
    assert r.code == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if "s0.b3.conv1.weight" in line)
    assert "-" in line.split("│")[2] and "(<- s0.b1)" in line


def test_different_families_are_refused(ticket_file, tmp_path, capsys):
    vgg = tmp_path / "vgg.safetensors"
    make_ticket("vgg11-w8", 0.5).save(vgg)
    r = run_inprocess(capsys, "compare", str(ticket_file), str(vgg))
    assert_clean_error(r, codes=(2,), contains="different families")
    assert r.stdout == ""


# ----- the JSON document --------------------------------------------------------------------------
def test_compare_json_schema(tmp_path):
    a, b = make_ticket("resnet20-w4", 0.8, seed=0), make_ticket("resnet20-w4", 0.5, seed=1)
    paths = [tmp_path / n for n in ("a.safetensors", "b.safetensors", "c.safetensors")]
    a.save(paths[0])
    b.save(paths[1])
    elastic.stretch(Ticket.load(paths[0]), "resnet32").save(paths[2])
    r = run_elth("compare", *map(str, paths), "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == TOP_KEYS and doc["schema"] == "elth.compare" and doc["schema_version"] == 1
    assert doc["family"] == "cifar-resnet" and doc["same_arch"] is False and doc["interpolation"] is None
    assert [t["name"] for t in doc["tickets"]] == list(map(str, paths))
    assert all(set(t) == TICKET_KEYS for t in doc["tickets"])
    assert doc["tickets"][2]["parents"][0]["sha256"] == doc["tickets"][0]["sha256"]
    (pair,) = doc["pairs"]
    assert set(pair) == PAIR_KEYS and (pair["a"], pair["b"]) == (0, 1)
    assert pair["jaccard"] == pytest.approx(jaccard(a.masks, b.masks))
    assert pair["expected_random_jaccard"] == pytest.approx(expected_random_jaccard(a.masks, b.masks))
    assert pair["hamming"] == hamming(a.masks, b.masks)
    assert [layer["key"] for layer in pair["layers"]] == list(a.masks)
    assert all(set(layer) == LAYER_KEYS for layer in pair["layers"])
    assert all(set(row) == PROFILE_KEYS and len(row["sparsity"]) == 3 for row in doc["profile"])
    assert r.stdout == json.dumps(doc, indent=2, sort_keys=True) + "\n"  # stable: sorted keys


# ----- interpolation ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def digits():
    return data.load_dataset("digits")


def quick_train(ticket: Ticket, seed: int, steps: int = 40) -> Ticket:
    """A few SGD steps with plain torch on digits (data order from ``seed``); masks re-applied every step."""
    bundle = digits()
    torch.manual_seed(seed)
    model = ticket.build_model("init")
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = 0
    while step < steps:
        for x, y in bundle.train_batches(64, step, seed):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for key, m in ticket.masks.items():
                    params[key].mul_(m)
            step += 1
            if step >= steps:
                break
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acc = evaluate(model, bundle, "test")["accuracy"]
    return dataclasses.replace(ticket, trained=apply_masks(state, ticket.masks), metrics={"test_acc": acc}, sha256=None)


@functools.lru_cache(maxsize=None)
def trained_pair() -> tuple[Ticket, Ticket]:
    base = make_ticket("resnet8-w4", 0.5)
    return quick_train(base, 1), quick_train(base, 2)


def _eval(state_ticket: Ticket, recompute: bool) -> dict:
    model = state_ticket.build_model("trained")
    if recompute:
        recompute_bn_stats(model, digits(), None, 128, 0)
    return evaluate(model, digits(), "test", 1000)


def test_interpolation_end_points_reproduce_each_ticket():
    a, b = trained_pair()
    # Without the BN recompute, alpha 0 and 1 are exactly `evaluate` of each ticket's trained weights.
    doc = interpolate(a, b, digits(), points=3, recompute_bn=False)
    for point, t in ((doc["points"][0], a), (doc["points"][-1], b)):
        r = _eval(t, recompute=False)
        assert (point["accuracy"], point["loss"]) == (r["accuracy"], r["loss"])
    assert doc["points"][0]["accuracy"] == a.metrics["test_acc"]
    # With it, they are exactly each ticket's weights put through the same recompute.
    doc = interpolate(a, b, digits(), points=3)
    assert doc["recompute_bn"] and doc["bn_batches"] == math.ceil(digits().num_examples("train") / 128)
    for point, t in ((doc["points"][0], a), (doc["points"][-1], b)):
        r = _eval(t, recompute=True)
        assert (point["accuracy"], point["loss"]) == (r["accuracy"], r["loss"])
    assert [p["alpha"] for p in doc["points"]] == [0.0, 0.5, 1.0]
    assert set(doc) == INTERP_KEYS
    linear, mean = error_barriers([0.0, 0.5, 1.0], [p["error"] for p in doc["points"]])
    assert (doc["error_barrier"], doc["error_barrier_vs_mean"]) == (linear, mean)


def test_interpolated_weights_and_barriers():
    a, b = trained_pair()
    mid = interpolate_state(a.trained, b.trained, 0.5, a.masks)
    for key, m in a.masks.items():
        assert not mid[key][~m].any()
        assert torch.allclose(mid[key], (a.trained[key] + b.trained[key]) / 2, atol=1e-6)
    assert all(torch.equal(interpolate_state(a.trained, b.trained, 0.0, a.masks)[k], a.trained[k]) for k in a.trained)
    # The line between the end errors vs their mean (Frankle et al.'s height): they differ on a slope.
    assert error_barriers([0, 0.5, 1], [0.1, 0.5, 0.3]) == pytest.approx((0.3, 0.3))
    assert error_barriers([0, 0.5, 1], [0.1, 0.3, 0.5]) == pytest.approx((0.0, 0.2))


def test_bn_recompute_forgets_the_old_statistics():
    a, _ = trained_pair()
    clean, spoiled = a.build_model("trained"), a.build_model("trained")
    for m in spoiled.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(1e3)
            m.running_var.fill_(1e-3)
            m.momentum = 0.3
    recompute_bn_stats(clean, digits(), 4, 64, 0)
    recompute_bn_stats(spoiled, digits(), 4, 64, 0)
    assert all(torch.equal(x, y) for x, y in zip(clean.state_dict().values(), spoiled.state_dict().values()))
    assert {m.momentum for m in spoiled.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.3}
    bn = clean.bn
    assert int(bn.num_batches_tracked) == 4 and not torch.equal(bn.running_mean, a.trained["bn.running_mean"])


def test_cli_interpolate_json(tmp_path):
    a, b = trained_pair()
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.save(pa)
    b.save(pb)
    r = run_elth("compare", str(pa), str(pb), "--interpolate", "--dataset", "digits", "--points", "3",
                 "--no-recompute-bn", "--device", "cpu", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    interp = doc["interpolation"]
    assert set(interp) == INTERP_KEYS and interp["recompute_bn"] is False and interp["bn_batches"] is None
    assert [p["alpha"] for p in interp["points"]] == [0.0, 0.5, 1.0]
    assert interp["points"][0]["accuracy"] == a.metrics["test_acc"]
    assert interp["points"][-1]["accuracy"] == b.metrics["test_acc"]
    assert doc["pairs"][0]["identical_masks"] is True


@pytest.mark.parametrize("case", ["other-mask", "untrained", "no-dataset", "three"])
def test_cli_interpolate_refusals(tmp_path, capsys, case):
    a, b = trained_pair()
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.save(pa)
    if case == "other-mask":
        dataclasses.replace(b, masks=complement(a).masks, init=complement(a).init,
                            trained=apply_masks(b.trained, complement(a).masks)).save(pb)
    elif case == "untrained":
        dataclasses.replace(b, trained=None).save(pb)
    else:
        b.save(pb)
    args = ["compare", str(pa), str(pb), "--interpolate"]
    args += {"no-dataset": [], "three": [str(pa), "--dataset", "digits"]}.get(case, ["--dataset", "digits"])
    r = run_inprocess(capsys, *args)
    expected = {"other-mask": "different masks", "untrained": "no trained weights", "no-dataset": "--dataset",
                "three": "exactly two"}[case]
    assert_clean_error(r, codes=(2,), contains=expected)
    assert r.stdout == ""


# ----- plotting -----------------------------------------------------------------------------------
def test_plot_without_matplotlib_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "p.png"
    # The tickets do not even exist: the missing extra is reported first, and nothing is written.
    r = run_inprocess(capsys, "compare", str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors"),
                      "--plot", str(out))
    assert_clean_error(r, codes=(1,))
    assert r.stderr.strip() == "error: --plot needs matplotlib: pip install 'elth[plot]'"
    assert list(tmp_path.iterdir()) == []


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = trained_pair()
    pa, pb, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "p.png"
    a.save(pa)
    b.save(pb)
    r = run_inprocess(capsys, "compare", str(pa), str(pb), "--interpolate", "--dataset", "digits", "--points", "3",
                      "--device", "cpu", "--plot", str(out), "-q")
    assert r.code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "p.png"]
    r = run_inprocess(capsys, "compare", str(pa), str(pb), "--plot", str(out))
    assert_clean_error(r, codes=(2,), contains="--force")


def test_tickets_that_differ_only_by_seed_are_grouped_with_mean_and_std(capsys, tmp_path):
    import dataclasses
    import statistics

    from elth_cli.compare import compare_tickets

    accs = [0.91, 0.95, 0.93]
    seeded = [dataclasses.replace(make_ticket("resnet8-w4", 0.5, seed=s), metrics={"test_acc": a})
              for s, a in zip((0, 1, 2), accs)]
    other = make_ticket("resnet8-w4", 0.8, seed=0)  # another sparsity: not a replicate
    doc = compare_tickets([*seeded, other], ["a", "b", "c", "d"])
    (group,) = doc["replicates"]
    assert group["members"] == [0, 1, 2] and group["seeds"] == [[0, 0], [1, 1], [2, 2]]
    assert group["test_acc"]["n"] == 3
    assert group["test_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert group["test_acc"]["std"] == pytest.approx(statistics.stdev(accs))
    assert group["sparsity"]["std"] == pytest.approx(0.0, abs=1e-12)
    for i, t in enumerate([*seeded, other]):
        t.save(tmp_path / f"t{i}.safetensors")
    r = run_in_process(capsys, "compare", *[tmp_path / f"t{i}.safetensors" for i in range(4)])
    assert r.code == 0, r.stderr
    assert "replicates" in r.stdout and "93.00% +- 2.00" in r.stdout


def test_the_same_run_twice_is_a_duplicate_not_a_replicate(capsys, tmp_path):
    """Two trainings with the same seed were grouped as replicates (n = 2, std 0), and --help led there."""
    import dataclasses

    from elth_cli.compare import compare_tickets

    same = [dataclasses.replace(make_ticket("resnet8-w4", 0.5, seed=0), metrics={"test_acc": a}) for a in (0.9, 0.9)]
    other = dataclasses.replace(make_ticket("resnet8-w4", 0.5, seed=1), metrics={"test_acc": 0.8})
    doc = compare_tickets([*same, other], ["a", "b", "c"])
    assert doc["duplicates"] == [[0, 1]]
    (group,) = doc["replicates"]
    assert group["members"] == [0, 2] and group["test_acc"]["n"] == 2  # b counted once, through a
    alone = compare_tickets(same, ["a", "b"])
    assert alone["duplicates"] == [[0, 1]] and alone["replicates"] == []
    for i, t in enumerate(same):
        t.save(tmp_path / f"s{i}.safetensors")
    r = run_in_process(capsys, "compare", tmp_path / "s0.safetensors", tmp_path / "s1.safetensors")
    assert r.code == 0 and "replicates" not in r.stdout
    assert f"warning: {tmp_path / 's1.safetensors'} is the same run as {tmp_path / 's0.safetensors'}" in r.stderr
