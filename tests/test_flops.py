"""MAC and FLOP counts: the meta-device hooks of elth_cli.flops against the registry's torch-free count,
hand-worked layers, and masked densities."""

from __future__ import annotations

import pytest
import torch

from elth_cli import archs, flops

_STANDARD = [s.name for s in archs.standard_archs()]


def _native(spec: archs.ArchSpec) -> tuple[tuple[int, int, int], int]:
    return archs.family_of(spec).native_input


def test_resnet20_is_about_41m_macs() -> None:
    # The published figure for ResNet-20 on CIFAR-10 is ~41M multiply-accumulates (~0.041 GMACs).
    macs = flops.dense_forward_macs(archs.resolve_arch("resnet20"), (3, 32, 32), 10)
    assert 40.5e6 <= macs <= 41.5e6
    assert macs == 40_813_184


def test_hand_worked_layers() -> None:
    macs = flops.layer_macs(archs.resolve_arch("resnet20"), (3, 32, 32), 10)
    assert macs["conv.weight"] == 3 * 16 * 3 * 3 * 32 * 32
    assert macs["blocks.0.conv1.weight"] == 16 * 16 * 3 * 3 * 32 * 32
    assert macs["blocks.3.conv1.weight"] == 16 * 32 * 3 * 3 * 16 * 16  # stride 2: 32x32 -> 16x16
    assert macs["blocks.3.shortcut.0.weight"] == 16 * 32 * 16 * 16
    assert macs["blocks.6.conv2.weight"] == 64 * 64 * 3 * 3 * 8 * 8
    assert macs["fc.weight"] == 64 * 10


@pytest.mark.parametrize("name", _STANDARD)
def test_registry_count_equals_the_model_at_native_input(name: str) -> None:
    spec = archs.resolve_arch(name)
    shape, classes = _native(spec)
    assert archs.summarize(spec).macs == flops.dense_forward_macs(spec, shape, classes)


@pytest.mark.parametrize("shape, classes", [((1, 8, 8), 10), ((3, 7, 9), 5), ((2, 1, 1), 3)])
@pytest.mark.parametrize("name", ["resnet20-w4", "vgg11-w4", "resnet8", "vgg16-w16", "imagenet-resnet18",
                                  "imagenet-resnet50"])
def test_registry_count_equals_the_model_for_other_inputs(name: str, shape, classes: int) -> None:
    # Odd and 1x1 sizes exercise the floor of strided convs and the ceil-mode pools of VGG.
    spec = archs.resolve_arch(name)
    assert archs.summarize(spec, shape, classes).macs == flops.dense_forward_macs(spec, shape, classes)


@pytest.mark.parametrize("name", ["resnet20-w4", "vgg11-w4", "imagenet-resnet18", "imagenet-resnet50"])
def test_layer_keys_are_the_prunable_keys_in_order(name: str) -> None:
    spec = archs.resolve_arch(name)
    macs = flops.layer_macs(spec, (1, 8, 8), 10)
    assert list(macs) == archs.prunable_keys(spec, (1, 8, 8), 10)
    assert all(m > 0 for m in macs.values())
    assert sum(macs.values()) == flops.dense_forward_macs(spec, (1, 8, 8), 10)


def test_callers_get_their_own_dict() -> None:
    spec = archs.resolve_arch("resnet8-w4")
    first = flops.layer_macs(spec, (1, 8, 8), 10)
    first["fc.weight"] = -1
    assert flops.layer_macs(spec, (1, 8, 8), 10)["fc.weight"] == 16 * 10


def _masks(spec: archs.ArchSpec, shape, classes) -> dict[str, torch.Tensor]:
    state = archs.expected_state(spec, shape, classes)
    return {k: torch.ones(state[k][0], dtype=torch.bool) for k in archs.prunable_keys(spec, shape, classes)}


def test_forward_macs_follow_the_mask_densities() -> None:
    spec, shape = archs.resolve_arch("resnet20-w4"), (1, 8, 8)
    macs = flops.layer_macs(spec, shape, 10)
    dense = sum(macs.values())
    assert flops.forward_macs(macs) == dense
    masks = _masks(spec, shape, 10)
    assert flops.forward_macs(macs, masks) == dense
    key = "blocks.3.conv1.weight"
    half = masks[key].flatten().clone()
    half[: half.numel() // 2] = False
    assert half.numel() % 2 == 0
    masks[key] = half.view(masks[key].shape)
    assert flops.forward_macs(macs, masks) == dense - macs[key] / 2
    # A layer without a mask counts dense.
    del masks["fc.weight"]
    assert flops.forward_macs(macs, masks) == dense - macs[key] / 2
    empty = {k: torch.zeros_like(m) for k, m in _masks(spec, shape, 10).items()}
    assert flops.forward_macs(macs, empty) == 0
    assert flops.training_flops_per_sample(macs, masks) == flops.FLOPS_PER_MAC * 3 * (dense - macs[key] / 2)


def test_masks_for_unknown_layers_are_refused() -> None:
    macs = flops.layer_macs(archs.resolve_arch("resnet8-w4"), (1, 8, 8), 10)
    with pytest.raises(KeyError, match="module.fc.weight"):
        flops.forward_macs(macs, {"module.fc.weight": torch.ones(10, 16, dtype=torch.bool)})


@pytest.mark.parametrize("name", ["resnet20-w4", "vgg11-w4"])
def test_a_live_module_is_counted_without_touching_it(name: str) -> None:
    spec = archs.resolve_arch(name)
    model = archs.build_model(spec, (1, 8, 8), 10, seed=0)
    model.train()
    model.fc.eval()  # a mixed mode survives too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert flops.module_macs(model, (1, 8, 8)) == flops.layer_macs(spec, (1, 8, 8), 10)
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert all(m.training != name.startswith("fc") for name, m in model.named_modules())
