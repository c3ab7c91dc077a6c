"""open_lth / ElasticLTH run folders: import, export, and refusing what is not plain tensors."""

import builtins
import json
import os
import stat

import pytest
import torch

from conftest import assert_clean_error, make_ticket, run_elth
from elth_cli import interop
from elth_cli.errors import ElthError, UsageError
from elth_cli.find import random_ticket
from elth_cli.interop import export_ticket, import_run, parse_step_spec, plan_export
from elth_cli.ticket import Ticket, apply_masks

CIFAR = (3, 32, 32)


def trained_state(ticket: Ticket, seed: int = 1) -> dict:
    """A stand-in for trained weights: every float tensor perturbed, pruned entries zero."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: (v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 7)
             for k, v in ticket.init.items()}
    return apply_masks(state, ticket.masks)


def write_run(folder, ticket: Ticket, files: dict, mask_keys=None, report: bool = True) -> None:
    """An open_lth run folder as open_lth writes it: torch.save of plain dicts of tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(ticket.masks) if mask_keys is None else mask_keys
    mask = {k: ticket.masks[k].int() for k in keys}  # Mask.save: v.cpu().int()
    torch.save(mask, folder / "mask.pth")
    for name, state in files.items():
        torch.save(dict(state), folder / name)
    if report:
        total = float(sum(t.numel() for t in mask.values()))
        unpruned = float(sum(int(t.sum()) for t in mask.values()))
        (folder / "sparsity_report.json").write_text(json.dumps({"total": total, "unpruned": unpruned}, indent=4))


def assert_same_files(a, b, names) -> None:
    for name in names:
        if name.endswith(".pth"):
            x = torch.load(a / name, map_location="cpu", weights_only=True)
            y = torch.load(b / name, map_location="cpu", weights_only=True)
            assert list(x) == list(y), name
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (name, k)
        else:
            assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name


@pytest.mark.parametrize("open_lth_name, arch", [("cifar_resnet_20_4", "resnet20-w4"), ("cifar_vgg_11_8", "vgg11-w8")])
def test_import_export_round_trip(tmp_path, open_lth_name, arch):
    ticket = make_ticket(arch, 0.7, input_shape=CIFAR)
    run = tmp_path / "level_3" / "main"
    names = ["mask.pth", "model_ep0_it0.pth", "model_ep160_it0.pth", "sparsity_report.json"]
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init, "model_ep160_it0.pth": trained_state(ticket)})

    result = import_run(run, open_lth_name)  # --dataset defaults to cifar10
    imported = result.ticket
    assert imported.arch == arch and imported.method == "imported" and imported.parents == []
    assert imported.rewind_step == 0 and imported.is_trained and result.trained_file == "model_ep160_it0.pth"
    assert imported.input_shape == CIFAR and imported.num_classes == 10
    for k in ticket.masks:
        assert torch.equal(imported.masks[k], ticket.masks[k])
    record = json.loads(imported.extra["imported_from"])
    assert record["folder"] == "main" and record["init_file"] == "model_ep0_it0.pth"
    assert record["trained_file"] == "model_ep160_it0.pth"

    # Through a ticket file, as the CLI does, then back out.
    path = tmp_path / "imported.safetensors"
    imported.save(path)
    out = tmp_path / "exported"
    plan = export_ticket(Ticket.load(path), out)
    assert sorted(plan.files) == sorted(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert_same_files(run, out, names)
    assert torch.load(out / "mask.pth", weights_only=True)["fc.weight"].dtype == torch.int32


def test_rewind_in_a_later_epoch_needs_the_epoch_length(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    run = tmp_path / "run"
    write_run(run, ticket, {"model_ep2_it218.pth": ticket.init, "model_ep160_it0.pth": trained_state(ticket)})
    with pytest.raises(UsageError, match="--steps-per-epoch"):
        import_run(run, "resnet8-w4")
    imported = import_run(run, "resnet8-w4", steps_per_epoch=391).ticket
    assert imported.rewind_step == 2 * 391 + 218
    out = tmp_path / "out"
    plan = export_ticket(imported, out)
    assert plan.files == ["mask.pth", "model_ep2_it218.pth", "model_ep160_it0.pth", "sparsity_report.json"]
    assert_same_files(run, out, plan.files)


def test_explicit_steps_pick_the_files(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    states = {f"model_ep{e}_it0.pth": trained_state(ticket, seed=e) for e in (1, 2)}
    run = tmp_path / "run"
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init, **states})

    r = import_run(run, "resnet8-w4", init_step="1ep", trained_step="model_ep2_it0.pth", steps_per_epoch=10)
    assert r.init_file == "model_ep1_it0.pth" and r.trained_file == "model_ep2_it0.pth"
    assert r.ticket.rewind_step == 10
    assert import_run(run, "resnet8-w4", init_step="10it", steps_per_epoch=10).init_file == "model_ep1_it0.pth"
    assert all(torch.equal(r.ticket.init[k], states["model_ep1_it0.pth"][k]) for k in ticket.init)
    r = import_run(run, "resnet8-w4", trained_step="none")
    assert r.trained_file is None and not r.ticket.is_trained and r.ticket.rewind_step == 0
    with pytest.raises(UsageError, match="not later"):
        import_run(run, "resnet8-w4", init_step="2ep", trained_step="1ep", steps_per_epoch=10)
    with pytest.raises(UsageError, match="matches"):
        import_run(run, "resnet8-w4", init_step="5ep")


def test_step_syntax():
    assert parse_step_spec("1000") == parse_step_spec("1000it") == interop.StepSpec(None, 1000)
    assert parse_step_spec("2ep218it") == parse_step_spec("model_ep2_it218.pth") == interop.StepSpec(2, 218)
    assert parse_step_spec("160ep") == interop.StepSpec(160, 0)
    with pytest.raises(UsageError):
        parse_step_spec("ten")


def test_missing_mask_keys_mean_dense_and_unknown_keys_are_refused(tmp_path):
    ticket = make_ticket("vgg11-w8", 0.6, input_shape=CIFAR)
    ticket.masks["fc.weight"] = torch.ones_like(ticket.masks["fc.weight"])  # as open_lth leaves a VGG's fc
    ticket.init = apply_masks(ticket.init, ticket.masks)
    keys = [k for k in ticket.masks if k != "fc.weight"]
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init}, mask_keys=keys)
    r = import_run(tmp_path / "run", "cifar_vgg_11_8")
    assert r.dense_keys == ["fc.weight"] and bool(r.ticket.masks["fc.weight"].all())
    assert not r.ticket.is_trained

    bad = {k: ticket.masks[k].int() for k in keys}
    bad["layers.0.bn.weight"] = torch.ones(8, dtype=torch.int32)
    torch.save(bad, tmp_path / "run" / "mask.pth")
    (tmp_path / "run" / "sparsity_report.json").unlink()
    with pytest.raises(ElthError, match="not a prunable weight"):
        import_run(tmp_path / "run", "vgg11-w8")


def test_pruned_entries_are_zeroed_on_import(tmp_path):
    # open_lth masks on every forward pass, so a saved trained state may hold values where pruned.
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    stale = {k: v.clone() for k, v in trained_state(ticket).items()}
    stale["conv.weight"] = stale["conv.weight"] + 1.0
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init, "model_ep3_it0.pth": stale})
    r = import_run(tmp_path / "run", "resnet8-w4")
    pruned = int((~ticket.masks["conv.weight"]).sum())
    assert r.zeroed == {"init": 0, "trained": pruned} and len(r.warnings) == 1
    assert not r.ticket.trained["conv.weight"][~ticket.masks["conv.weight"]].any()


class NotATensor:
    """Stands for any non-tensor object in a pickle (module level, so torch.save can pickle it)."""

    def __init__(self) -> None:
        self.value = 3


class Payload:
    """Unpickling this would create a file: weights_only must refuse it before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.mark.parametrize("make", [lambda m: NotATensor(), lambda m: os.system, lambda m: Payload(m)],
                         ids=["instance", "function", "code-on-load"])
def test_pickles_with_objects_are_refused(tmp_path, make):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    marker = tmp_path / "pwned"
    state = dict(ticket.init)
    state["extra"] = make(str(marker))
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": state})
    with pytest.raises(ElthError, match="refused .*not a tensor"):
        import_run(tmp_path / "run", "resnet8-w4")
    assert not marker.exists()


def test_cli_refuses_a_pickled_object_and_writes_nothing(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init})
    torch.save({"conv.weight": ticket.masks["conv.weight"].int(), "note": NotATensor()}, tmp_path / "run" / "mask.pth")
    out = tmp_path / "t.safetensors"
    r = run_elth("import", str(tmp_path / "run"), "--arch", "resnet8-w4", "--dataset", "cifar10", "-o", str(out))
    assert_clean_error(r, codes=(1,), contains="weights_only")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_cli_run_without_mask_is_an_error(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init})
    (tmp_path / "run" / "mask.pth").unlink()
    out = tmp_path / "t.safetensors"
    r = run_elth("import", str(tmp_path / "run"), "--arch", "resnet8-w4", "--dataset", "cifar10", "-o", str(out))
    assert_clean_error(r, codes=(1,), contains="mask.pth")
    assert not out.exists()


@pytest.mark.parametrize("arch, dataset, message", [
    ("resnet14-w4", "cifar10", "shape"),  # deeper: block keys exist but their shapes differ
    ("resnet8", "cifar10", "shape"),  # another width
    ("vgg11", "cifar10", "not a prunable weight"),  # another family
    ("resnet8-w4", "digits", "input channels"),  # another data set
])
def test_arch_or_dataset_mismatch_is_an_error(tmp_path, arch, dataset, message):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init})
    with pytest.raises(ElthError, match=message):
        import_run(tmp_path / "run", arch, dataset)


def test_classes_and_report_are_cross_checked(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR, num_classes=100)
    write_run(tmp_path / "run", ticket, {"model_ep0_it0.pth": ticket.init})
    with pytest.raises(ElthError, match="100 outputs"):
        import_run(tmp_path / "run", "resnet8-w4", "cifar10")
    assert import_run(tmp_path / "run", "resnet8-w4", "cifar100").ticket.num_classes == 100
    (tmp_path / "run" / "sparsity_report.json").write_text(json.dumps({"total": 10.0, "unpruned": 5.0}))
    with pytest.raises(ElthError, match="inconsistent"):
        import_run(tmp_path / "run", "resnet8-w4", "cifar100")


def test_export_names_come_from_the_training_hparams(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5)
    ticket.trained = trained_state(ticket)
    ticket.rewind_step = 46
    with pytest.raises(UsageError, match="--trained-step"):
        plan_export(ticket)
    assert plan_export(ticket, "30ep").trained == interop.Step(30, 0)
    ticket.hparams = {"steps_per_epoch": 23, "total_steps": 690}
    plan = plan_export(ticket)
    assert (plan.init, plan.trained) == (interop.Step(2, 0), interop.Step(30, 0))
    with pytest.raises(UsageError, match="not after"):
        plan_export(ticket, "1ep")

    out = tmp_path / "out"
    export_ticket(ticket, out)
    back = import_run(out, "resnet8-w4", "digits", steps_per_epoch=23).ticket
    assert back.rewind_step == 46
    for name in ("init", "trained"):
        a, b = getattr(ticket, name), getattr(back, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_export_is_atomic_and_refuses_a_non_empty_folder(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export_ticket(ticket, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_ticket(ticket, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mask.pth", "model_ep0_it0.pth", "sparsity_report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report == {"total": float(sum(m.numel() for m in ticket.masks.values())),
                      "unpruned": float(sum(int(m.sum()) for m in ticket.masks.values()))}


def test_cli_import_and_export(tmp_path):
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    run = tmp_path / "run"
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init, "model_ep4_it0.pth": trained_state(ticket)})
    out = tmp_path / "t.safetensors"
    r = run_elth("import", str(run), "--arch", "cifar_resnet_8_4", "--dataset", "cifar10", "-o", str(out), "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["trained_file"] == "model_ep4_it0.pth" and doc["arch"] == "resnet8-w4"
    assert Ticket.load(out).method == "imported"
    r = run_elth("export", str(out), str(tmp_path / "back"), "--json")
    assert r.code == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert_same_files(run, tmp_path / "back", files)
    r = run_elth("export", str(out), str(tmp_path / "back"))
    assert_clean_error(r, codes=(2,), contains="--force")


def test_export_creates_its_folder_with_the_umask(tmp_path, ticket):
    """The folder gets the permissions a plain mkdir gives (mkdtemp's are 0700), parents included."""
    out = tmp_path / "new" / "run"
    before = os.umask(0o022)
    try:
        interop.export_ticket(ticket, out)
    finally:
        os.umask(before)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert (out / "mask.pth").exists()


def _reference_imagenet_model(num_classes: int = 1000):
    """open_lth's ImageNet ResNet-18 layout: torchvision's ResNet held as ``model`` (keys ``model.*``)."""
    import torchvision

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torchvision.models.resnet18(num_classes=num_classes)

    return Model()


def test_imagenet_round_trip_with_the_references_model_prefix(tmp_path):
    ticket = random_ticket("imagenet-resnet18", (3, 224, 224), 1000, 0.7, seed=0, dataset="imagenet")
    interop.export_ticket(ticket, tmp_path / "run")
    mask = torch.load(tmp_path / "run" / "mask.pth", weights_only=True)
    assert all(k.startswith("model.") for k in mask) and "model.fc.weight" in mask
    state = torch.load(tmp_path / "run" / "model_ep0_it0.pth", weights_only=True)
    reference = _reference_imagenet_model()
    reference.load_state_dict(state, strict=True)  # every tensor where the reference looks for it
    back = import_run(tmp_path / "run", "imagenet-resnet18", "imagenet").ticket
    assert all(torch.equal(back.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert all(torch.equal(back.init[k], ticket.init[k]) for k in ticket.init)


def test_a_reference_imagenet_folder_imports(tmp_path):
    """A folder as ElasticLTH writes it for imagenet_resnet_18: prefixed state dict and int 0/1 mask."""
    reference = _reference_imagenet_model()
    run = tmp_path / "level_3" / "main"
    run.mkdir(parents=True)
    state = reference.state_dict()
    gen = torch.Generator().manual_seed(0)
    mask = {k: (torch.rand(v.shape, generator=gen) > 0.5).int() for k, v in state.items()
            if k.endswith("weight") and v.dim() in (2, 4)}
    torch.save(state, run / "model_ep0_it0.pth")
    torch.save(mask, run / "mask.pth")
    ticket = import_run(run, "imagenet_resnet_18", "imagenet").ticket
    assert ticket.arch == "imagenet-resnet18" and set(ticket.masks) == {k[len("model."):] for k in mask}
    assert torch.equal(ticket.masks["layer1.0.conv1.weight"], mask["model.layer1.0.conv1.weight"].bool())


# ----- reference names that mean something else than they say (issue 28, item 10) -----------------------
def test_a_five_part_vggnfc_name_is_read_as_the_reference_builds_it(tmp_path):
    """cifar_vggnfc_13_32_3 is 64 wide in the reference: a folder it wrote imports, saying so (it was refused
    with a shape error)."""
    ticket = make_ticket("vgg13-fc3", 0.5, input_shape=CIFAR)
    run = tmp_path / "main"
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init})
    result = import_run(run, "cifar_vggnfc_13_32_3")
    assert result.ticket.arch == "vgg13-fc3"
    assert any("cifar_vggnfc_13_32_3 is width 64 in the reference" in w for w in result.warnings)
    # A folder that really is 32 wide (someone's fork) imports as the name says, without the note.
    narrow = make_ticket("vgg13-w32-fc3", 0.5, input_shape=CIFAR)
    write_run(tmp_path / "narrow", narrow, {"model_ep0_it0.pth": narrow.init})
    result = import_run(tmp_path / "narrow", "cifar_vggnfc_13_32_3")
    assert result.ticket.arch == "vgg13-w32-fc3" and result.warnings == []


def test_a_vggnfc_with_one_fc_layer_names_the_plain_vgg_of_its_width():
    from elth_cli import archs

    with pytest.raises(UsageError, match=r"it is vgg13-w32 \(the cifar-vgg family\); give two or more, e.g. vgg13-w32-fc3"):
        archs.resolve_arch("cifar_vggnfc_13_32")


def test_an_mlp_of_unequal_widths_imports_trains_and_refuses_to_stretch(tmp_path):
    from elth_cli import archs, elastic

    spec = archs.resolve_arch("mnist_lenet_300_200_100")
    assert spec.name == "mlp-300-200-100" and archs.resolve_arch("mlp-300-300-100").name == "mlp-300x2"
    ticket = random_ticket("mlp-300-200-100", (1, 28, 28), 10, 0.5, seed=0, dataset="mnist")
    assert [tuple(ticket.init[f"fc_layers.{i}.weight"].shape) for i in range(3)] == [(300, 784), (200, 300), (100, 200)]
    run = tmp_path / "main"
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init})
    imported = import_run(run, "mnist_lenet_300_200_100", dataset="mnist").ticket
    assert imported.arch == "mlp-300-200-100" and all(torch.equal(imported.masks[k], ticket.masks[k]) for k in ticket.masks)
    with pytest.raises(UsageError, match=r"has hidden layers of different widths \(300, 200\).*cannot be stretched"):
        elastic.stretch(imported, "mlp-300x3")


def test_a_truncated_pth_is_one_whole_sentence(tmp_path):
    """The message of a truncated mask.pth was cut at 160 characters, mid-sentence (issue 28)."""
    ticket = make_ticket("resnet8-w4", 0.5, input_shape=CIFAR)
    run = tmp_path / "main"
    write_run(run, ticket, {"model_ep0_it0.pth": ticket.init})
    raw = (run / "mask.pth").read_bytes()
    (run / "mask.pth").write_bytes(raw[: len(raw) // 2])
    r = run_elth("import", str(run), "--arch", "resnet8-w4", "--dataset", "cifar10", "-o", str(tmp_path / "t.safetensors"))
    assert_clean_error(r, (1,), "is not a readable PyTorch tensor file (it is truncated or damaged: not a complete zip "
                       "archive); copy it again from the run folder")
