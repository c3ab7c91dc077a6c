"""Units and permutations: a permuted network computes what the original did, and matching recovers a
random permutation exactly, for every family that describes its units."""

import dataclasses

import pytest
import torch

from elth_cli import archs
from elth_cli.archs.units import UnitsBuilder, check_units
from elth_cli.errors import UsageError
from elth_cli.symmetry import (
    activation_matching, compose, identity_maps, inverse, permute, random_permutations, take_units, weight_matching,
)

# One small network of every family with units (both ImageNet block types; VGG with and without FC layers).
NETWORKS = [
    ("resnet8-w4", (1, 8, 8)), ("imagenet-resnet18-w8", (3, 32, 32)), ("imagenet-resnet50-w4", (3, 32, 32)),
    ("mlp-30x2", (1, 8, 8)), ("vgg11-w4", (3, 32, 32)), ("vgg13-w4-fc2", (3, 32, 32)), ("mobilenetv1-1", (3, 32, 32)),
    ("vit-d2-w16-h2-p2", (1, 8, 8)),
]


def _noise(key, value, gen):
    """Norm layers' parameters and statistics made unlike their defaults (so that they must move too), with
    small means, so that no ReLU shuts a whole channel."""
    if key.endswith(("running_mean", "norm1.bias", "norm2.bias")) or (key.endswith(".bias") and value.dim() == 1):
        return value + 0.1 * torch.randn(value.shape, generator=gen)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(value.shape, generator=gen)
    return value


def _network(arch, shape, seed=0):
    """A seeded model whose norms are not at their defaults, its state and its units."""
    spec = archs.resolve_arch(arch)
    model = archs.build_model(spec, shape, 10, seed=seed)
    gen = torch.Generator().manual_seed(seed + 5)
    state = {k: _noise(k, v, gen) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    units = archs.network_units(spec, {k: tuple(v.shape) for k, v in state.items()})
    return spec, model.eval(), state, units


def _model(spec, shape, state):
    model = archs.build_model(spec, shape, 10)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("arch,shape", NETWORKS)
def test_a_permuted_network_computes_the_same_and_weight_matching_recovers_the_permutation(arch, shape):
    spec, model, state, units = _network(arch, shape)
    perms = random_permutations(units, torch.Generator().manual_seed(1))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    moved = permute(state, units, perms)
    assert any(not torch.equal(moved[k], state[k]) for k in state)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, out_moved = model(x), _model(spec, shape, moved)(x)
        torch.testing.assert_close(out_moved, out, atol=1e-5, rtol=0)
        # In float64, what depends on the input agrees to a millionth of its spread (a deep MobileNet at its
        # init spreads little: 1e-5, float32's rounding).
        x64, out64 = x.double(), model.double()(x.double())
        moved64 = _model(spec, shape, moved).double()(x64)
    spread = float((out64 - out64.mean(0)).abs().max())
    assert spread > 1e-7
    torch.testing.assert_close(moved64 - moved64.mean(0), out64 - out64.mean(0), atol=spread * 1e-6, rtol=0)
    found = weight_matching(units, moved, state)
    assert all(torch.equal(found[g], inverse(perms)[g]) for g in units.groups)  # every layer, exactly
    back = permute(moved, units, found)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("arch,shape", [n for n in NETWORKS if n[0] in ("resnet8-w4", "imagenet-resnet50-w4",
                                                                         "mlp-30x2", "vit-d2-w16-h2-p2")])
def test_activation_matching_recovers_a_random_permutation(arch, shape):
    spec, model, state, units = _network(arch, shape)
    perms = random_permutations(units, torch.Generator().manual_seed(3))
    moved = _model(spec, shape, permute(state, units, perms))
    gen = torch.Generator().manual_seed(4)
    found = activation_matching(units, moved, model, [torch.randn(32, *shape, generator=gen) for _ in range(8)])
    assert all(torch.equal(found[g], inverse(perms)[g]) for g in units.groups)


def test_one_tensor_left_unpermuted_changes_the_function():
    """The check above can fail: moving a conv's output channels without its BatchNorm breaks the network."""
    spec, model, state, units = _network("resnet8-w4", (1, 8, 8))
    perms = random_permutations(units, torch.Generator().manual_seed(1))
    moved = permute(state, units, perms)
    moved["bn.weight"] = state["bn.weight"]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(_model(spec, (1, 8, 8), moved)(x), model(x), atol=1e-4)


def test_residual_stages_share_one_group_and_heads_move_whole():
    _, _, _, units = _network("resnet8-w4", (1, 8, 8))
    # The stem, block 0's second conv and block 1's first conv see the same channels.
    stem = units.axes["conv.weight"][0]
    assert units.axes["blocks.0.conv2.weight"][0] == stem == units.axes["blocks.1.conv1.weight"][1]
    assert units.axes["blocks.1.shortcut.0.weight"] == ("blocks.1.shortcut.0", stem, None, None)
    _, _, state, vit_units = _network("vit-d2-w16-h2-p2", (1, 8, 8))
    heads = vit_units.groups["blocks.0.attn.heads"]
    assert (heads.size, heads.unit_dims) == (2, 8)
    swapped = take_units(state, vit_units, {"blocks.0.attn.heads": torch.tensor([1, 0])})
    q = state["blocks.0.attn.qkv.weight"]
    # Queries, keys and values: each of the three copies has its two heads of 8 rows swapped.
    for part in range(3):
        rows = slice(16 * part, 16 * part + 16)
        assert torch.equal(swapped["blocks.0.attn.qkv.weight"][rows], torch.cat([q[rows][8:], q[rows][:8]]))
    assert torch.equal(swapped["blocks.0.attn.proj.weight"][:, :8], state["blocks.0.attn.proj.weight"][:, 8:])


def test_compose_and_inverse():
    _, _, state, units = _network("mlp-30x2", (1, 8, 8))
    p = random_permutations(units, torch.Generator().manual_seed(1))
    q = random_permutations(units, torch.Generator().manual_seed(2))
    both = permute(permute(state, units, p), units, q)
    assert all(torch.equal(both[k], permute(state, units, compose(p, q))[k]) for k in state)
    same = permute(permute(state, units, p), units, inverse(p))
    assert all(torch.equal(same[k], state[k]) for k in state)
    assert all(torch.equal(v, torch.arange(len(v))) for v in compose(p, inverse(p)).values())
    assert identity_maps(units).keys() == units.groups.keys()


def test_units_descriptions_are_checked():
    shapes = {"a.weight": (4, 3), "a.bias": (4,), "fc.weight": (10, 4)}
    b = UnitsBuilder(shapes)
    g = b.group("a", size_of="a.weight")
    b.linear("a.", None, g)
    with pytest.raises(UsageError, match="nothing of fc.weight"):
        b.done()
    b.linear("fc.", g, None)
    units = b.done()
    with pytest.raises(UsageError, match="not a whole number"):
        check_units(units, {**shapes, "fc.weight": (10, 5)})
    with pytest.raises(UsageError, match="do not define"):
        check_units(dataclasses.replace(units, axes={**units.axes, "a.bias": ("b",)}), shapes)


def test_a_family_without_units_is_refused_in_one_line():
    spec = archs.resolve_arch("resnet8-w4")
    family = archs.family_of(spec)
    bare = dataclasses.replace(family, units=None)
    archs.FAMILIES[family.name] = bare
    try:
        with pytest.raises(UsageError, match="does not describe its units"):
            archs.network_units(spec, {})
    finally:
        archs.FAMILIES[family.name] = family
