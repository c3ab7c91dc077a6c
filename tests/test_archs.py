import pytest
import torch

from elth_cli import archs
from elth_cli.errors import UsageError


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
    ],
)
def test_resolve(name, canonical, depths):
    spec = archs.resolve_arch(name)
    assert spec.name == canonical
    assert spec.depths == depths


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "vgg12", "imagenet-resnet20", "alexnet", "imagenet-resnet18-w32"])
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
