import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from elth_cli import archs
from elth_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name, canonical, depths",
    [
        ("resnet20", "resnet20", (3, 3, 3)),
        ("cifar_resnet_20", "resnet20", (3, 3, 3)),
        ("cifar_resnet_56_32", "resnet56-w32", (9, 9, 9)),
        ("resnet110", "resnet110", (18, 18, 18)),
        ("resnet8", "resnet8", (1, 1, 1)),
        ("resnet50", "resnet50", (8, 8, 8)),
        ("imagenet-resnet26", "imagenet-resnet26", (2, 3, 4, 3)),
        ("imagenet_resnet_34", "imagenet-resnet34", (3, 4, 6, 3)),
        ("imagenet-resnet152", "imagenet-resnet152", (3, 8, 36, 3)),
        ("vgg19", "vgg19", (2, 2, 4, 4, 4)),
        ("cifar_vgg_11", "vgg11", (1, 1, 2, 2, 2)),
        ("VGG16-w16", "vgg16-w16", (2, 2, 3, 3, 3)),
        # The reference's names of the families issue 12 added: ImageNet widths, MLPs, VGGs with FC stacks.
        ("imagenet_resnet_18_32", "imagenet-resnet18-w32", (2, 2, 2, 2)),
        ("mnist_lenet_300_300_100", "mlp-300x2", (2,)),
        ("mnist_lenet_300_100", "mlp-300x1", (1,)),
        ("mnist_lenet_500_300_100", "mlp-500-300-100", (2,)),  # unequal widths: imports, does not stretch
        ("cifar_vggnfc_13_64_3", "vgg13-fc3", (2,)),
        ("cifar_vggnfc_13_16_5", "vgg13-w16-fc5", (4,)),
    ],
)
def test_resolve(name, canonical, depths):
    spec = archs.resolve_arch(name)
    assert spec.name == canonical
    assert spec.depths == depths


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "vgg12", "imagenet-resnet20", "alexnet", "mlp-300x0",
                                  "mnist_lenet_500", "mlp-300-0-100", "cifar_vggnfc_13_64_1", "vgg13-fc1"])
def test_unknown_names(name):
    with pytest.raises(UsageError):
        archs.resolve_arch(name)


def test_cifar_resnet_keys_match_open_lth():
    spec = archs.resolve_arch("resnet20")
    keys = set(archs.expected_state(spec, (3, 32, 32), 10))
    # open_lth cifar_resnet_20: stem conv/bn, 9 blocks, shortcuts only at blocks 3 and 6, fc.
    assert {"conv.weight", "bn.weight", "bn.running_mean", "bn.num_batches_tracked", "fc.weight", "fc.bias"} <= keys
    assert {"blocks.0.conv1.weight", "blocks.8.bn2.running_var", "blocks.3.shortcut.0.weight", "blocks.6.shortcut.1.weight"} <= keys
    shortcut_blocks = sorted({k.split(".")[1] for k in keys if ".shortcut." in k})
    assert shortcut_blocks == ["3", "6"]
    prunable = archs.prunable_keys(spec, (3, 32, 32), 10)
    assert "conv.weight" in prunable and "fc.weight" in prunable and "blocks.3.shortcut.0.weight" in prunable
    assert len(prunable) == 1 + 9 * 2 + 2 + 1
    # The well-known parameter count of ResNet-20.
    assert archs.summarize(spec).parameters == 272_474


def test_resnet_widths_and_input_channels():
    spec = archs.resolve_arch("resnet20-w4")
    model = archs.build_model(spec, (1, 8, 8), 10, seed=0)
    assert model.conv.weight.shape == (4, 1, 3, 3)
    assert model.fc.weight.shape == (10, 16)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_build_is_seeded():
    spec = archs.resolve_arch("resnet14-w4")
    a = archs.build_model(spec, (1, 8, 8), 10, seed=3).state_dict()
    b = archs.build_model(spec, (1, 8, 8), 10, seed=3).state_dict()
    c = archs.build_model(spec, (1, 8, 8), 10, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])


@pytest.mark.parametrize("name", ["resnet20-w4", "vgg11-w4", "vgg19-w4", "imagenet-resnet18", "imagenet-resnet50"])
def test_layout_covers_every_key_once(name):
    spec = archs.resolve_arch(name)
    layout = archs.block_layout(spec)
    assert layout.depths == spec.depths
    keys = archs.expected_state(spec, (1, 8, 8), 10)
    for key in keys:
        owners = [p for stage in layout.stages for p in stage if key.startswith(p)]
        owners += [p for p in layout.stem + layout.head if key.startswith(p)]
        assert len(owners) == 1, (key, owners)
    # every block prefix owns at least one key
    for stage in layout.stages:
        for prefix in stage:
            assert any(k.startswith(prefix) for k in keys), prefix


@pytest.mark.parametrize("name", ["vgg11-w4", "imagenet-resnet18", "resnet20-w4"])
def test_small_inputs_run(name):
    spec = archs.resolve_arch(name)
    model = archs.build_model(spec, (1, 8, 8), 10).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vgg_keys_match_open_lth():
    spec = archs.resolve_arch("vgg11")
    keys = list(archs.expected_state(spec, (3, 32, 32), 10))
    # open_lth numbers modules of nn.Sequential including the max-pools: 64, M, 128, M, 256, 256, M, ...
    convs = [k for k in keys if k.endswith("conv.weight")]
    assert convs == [f"layers.{i}.conv.weight" for i in (0, 2, 4, 5, 7, 8, 10, 11)]
    assert "layers.0.conv.bias" in keys
    assert archs.family_of(spec).default_exclude == ("fc.weight",)


def test_resolve_target_within_family():
    src = archs.resolve_arch("resnet20-w4")
    assert archs.resolve_target(src, "resnet56").name == "resnet56-w4"
    with pytest.raises(UsageError, match="within their family"):
        archs.resolve_target(src, "vgg19")
    with pytest.raises(UsageError, match="width"):
        archs.resolve_target(src, "resnet56-w8")
    im = archs.resolve_arch("imagenet-resnet18")
    assert archs.resolve_target(im, "resnet34").name == "imagenet-resnet34"
    with pytest.raises(UsageError, match="bottleneck"):
        archs.resolve_target(im, "imagenet-resnet50")


def test_standard_archs_listed():
    names = [s.name for s in archs.standard_archs()]
    for n in ("resnet20", "resnet56", "imagenet-resnet26", "vgg19"):
        assert n in names


def _model_counts(spec, input_shape, num_classes):
    """Counts read off the real model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = archs.family_of(spec).build(spec, tuple(input_shape), num_classes)
    parameters = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    # What summarize counted before it became arithmetic: state-dict floats bar the running stats.
    state = model.state_dict()
    from_state = sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)
    assert from_state == parameters
    assert prunable == sum(state[k].numel() for k in archs.prunable_keys_of(model))
    return parameters, prunable


_STANDARD = [s.name for s in archs.standard_archs()]
_OTHERS = ["resnet8", "resnet110-w4", "resnet20-w4", "resnet56-w8", "resnet32-w3", "vgg16-w16", "vgg11-w4", "vgg19-w5"]


@pytest.mark.parametrize("name", _STANDARD + _OTHERS)
def test_counts_match_the_models_at_native_input(name):
    spec = archs.resolve_arch(name)
    summary = archs.summarize(spec)
    assert (summary.parameters, summary.prunable) == _model_counts(spec, summary.input_shape, summary.num_classes)


@pytest.mark.parametrize("shape, classes", [((1, 8, 8), 10), ((3, 32, 32), 100), ((1, 224, 224), 7)])
@pytest.mark.parametrize("name", ["resnet20-w4", "resnet8", "resnet110", "vgg16-w16", "vgg11", "imagenet-resnet18",
                                  "imagenet-resnet26", "imagenet-resnet50"])
def test_counts_match_the_models_for_other_inputs(name, shape, classes):
    spec = archs.resolve_arch(name)
    summary = archs.summarize(spec, shape, classes)
    assert (summary.input_shape, summary.num_classes) == (shape, classes)
    assert (summary.parameters, summary.prunable) == _model_counts(spec, shape, classes)


def test_known_counts():
    # Published figures: ResNet-20 272,474; torchvision's resnet18 11,689,512 and resnet50 25,557,032.
    assert archs.summarize(archs.resolve_arch("resnet20")).parameters == 272_474
    assert archs.summarize(archs.resolve_arch("imagenet-resnet18")).parameters == 11_689_512
    assert archs.summarize(archs.resolve_arch("imagenet-resnet50")).parameters == 25_557_032


def test_registry_does_not_import_torch():
    code = (
        "import sys, elth_cli.archs as a\n"
        "specs = a.standard_archs() + [a.resolve_arch('resnet20-w4'), a.resolve_arch('vgg16-w16')]\n"
        "[a.summarize(s) for s in specs]\n"
        "[a.block_layout(s) for s in specs]\n"
        "a.summarize(specs[0], (1, 8, 8), 10)\n"
        "a.resolve_target(a.resolve_arch('resnet20'), 'resnet56'); a.family_of(specs[0])\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_torch_helpers_load_on_first_use():
    from elth_cli.archs import prunable_keys_of
    from elth_cli.archs.nets import common

    assert prunable_keys_of is common.prunable_keys_of
    assert archs.open_lth_init is common.open_lth_init and archs.meta_state is common.meta_state
    spec = archs.resolve_arch("resnet8-w4")
    model = archs.build_model(spec, (1, 8, 8), 10, seed=0)
    assert archs.prunable_keys_of(model) == archs.prunable_keys(spec, (1, 8, 8), 10)
    with pytest.raises(AttributeError):
        archs.no_such_helper
