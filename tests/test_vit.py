"""The vision transformer family: names, the model and its counts, and stretching and squeezing a ViT ticket
block by block (tiny widths, CPU)."""

from __future__ import annotations

import pytest
import torch

from elth_cli import archs, elastic, flops
from elth_cli.archs import vit
from elth_cli.errors import UsageError
from elth_cli.find import random_ticket
from elth_cli.mappings import format_mapping, inverse_mapping
from elth_cli.ticket import Ticket

DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)
SMALL = "vit-d4-w16-h2-p2"  # 16 patches of digits' 8x8 (17 tokens), two heads of 8 features
STEM_AND_HEAD = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
                 "norm.bias", "head.weight", "head.bias")


# ----- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, canonical", [
    ("vit-d4-w64-h4-p2", "vit-d4-w64-h4-p2"),
    ("vit-d4-w64", "vit-d4-w64-h1-p4"),  # heads: width // 64, at least 1; patch 4
    ("VIT-D4-W64-H4", "vit-d4-w64-h4-p4"),
    ("vit-d6-w192", "vit-d6-w192-h3-p4"),
    ("vit-d2-w200", "vit-d2-w200-h2-p4"),  # 200 // 64 = 3 heads do not divide 200: the most that do, 2
    ("vit-d1-w8-p1", "vit-d1-w8-h1-p1"),
    ("vit-tiny", "vit-d12-w192-h3-p4"),
    ("vit-small-p16", "vit-d12-w384-h6-p16"),
    ("vit-base-p16", "vit-d12-w768-h12-p16"),
])
def test_names_parse(name, canonical):
    spec = archs.resolve_arch(name)
    assert (spec.name, spec.family) == (canonical, "vit")
    assert archs.resolve_arch(spec.name) == spec


@pytest.mark.parametrize("name, message", [
    ("vit-d4", "names no width"),
    ("vit-d0-w64", "1 to 64 blocks"),
    ("vit-d65-w64", "1 to 64 blocks"),
    ("vit-d4-w0", "positive number of features"),
    ("vit-d4-w64-h3", "multiple of its number of heads"),
    ("vit-d4-w64-h0", "multiple of its number of heads"),
    ("vit-d4-w64-p0", "patch size must be a positive"),
    ("vit-huge", "not a ViT name"),
    ("vit", "not a ViT name"),
])
def test_bad_names_are_refused_in_one_line(name, message):
    with pytest.raises(UsageError, match=message) as e:
        archs.resolve_arch(name)
    assert "\n" not in str(e.value)


def test_targets_keep_the_sources_width_heads_and_patch():
    src = archs.resolve_arch("vit-d4-w64-h4-p2")
    assert archs.resolve_target(src, "vit-d8").name == "vit-d8-w64-h4-p2"
    assert archs.resolve_target(src, "vit-d2-w64").name == "vit-d2-w64-h4-p2"
    assert archs.resolve_target(src, "vit-d8-w64-h4-p2").name == "vit-d8-w64-h4-p2"
    tiny = archs.resolve_arch("vit-d6-w192-h3-p16")
    assert archs.resolve_target(tiny, "vit-tiny").name == "vit-d12-w192-h3-p16"
    with pytest.raises(UsageError, match="heads 2 .* not heads"):
        archs.resolve_target(src, "vit-d8-w64-h2")
    with pytest.raises(UsageError, match="patch size 4 .* not patch size"):
        archs.resolve_target(src, "vit-d8-p4")
    with pytest.raises(UsageError, match="width"):
        archs.resolve_target(src, "vit-d8-w32")
    with pytest.raises(UsageError, match="within their family"):
        archs.resolve_target(src, "resnet20")


# ----- the model and its counts -------------------------------------------------------------------
@pytest.mark.parametrize("name, shape", [(SMALL, DIGITS), ("vit-d2-w32-h4", CIFAR), ("vit-d1-w8-p8", DIGITS)])
def test_forward_on_digits_and_cifar_shapes(name, shape):
    spec = archs.resolve_arch(name)
    model = archs.build_model(spec, shape, 10, seed=0)
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    p = vit.patch(spec)
    assert model.pos_embed.shape == (1, 1 + (shape[1] // p) * (shape[2] // p), spec.width)
    assert model.cls_token.shape == (1, 1, spec.width)


def test_keys_are_timms_and_the_layout_places_each():
    spec = archs.resolve_arch("vit-d2-w16-h2-p2")
    keys = list(archs.expected_state(spec, DIGITS, 10))
    block = [f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")]
    assert sorted(keys) == sorted([*STEM_AND_HEAD, *(f"blocks.{i}.{k}" for i in (0, 1) for k in block)])
    layout = archs.block_layout(spec)
    assert [layout.locate(k) for k in STEM_AND_HEAD] == [("stem", -1, -1)] * 4 + [("head", -1, -1)] * 4
    assert layout.locate("blocks.1.norm2.weight") == ("block", 0, 1) and layout.first_is_free(0)
    assert archs.prunable_keys(spec, DIGITS, 10) == [
        "patch_embed.proj.weight", *(f"blocks.{i}.{k}.weight" for i in (0, 1)
                                     for k in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")), "head.weight"]


def test_an_input_the_patch_does_not_divide_is_refused():
    spec = archs.resolve_arch("vit-d2-w16-h2-p4")
    for call in (lambda: archs.build_model(spec, (3, 30, 30), 10), lambda: archs.summarize(spec, (3, 30, 30), 10)):
        with pytest.raises(UsageError, match=r"input is 30x30: .* multiples of 4; pick another patch size "
                                             r"\(-p2, -p3, -p5, -p6 fit\)$"):
            call()
    with pytest.raises(UsageError, match=r"\(-p2 fits\)"):
        archs.summarize(spec, (3, 30, 32), 10)


@pytest.mark.parametrize("name, shape, classes", [
    (SMALL, DIGITS, 10), ("vit-d3-w24-h3-p4", CIFAR, 100), ("vit-d1-w8-p1", (2, 3, 5), 3),
    ("vit-tiny-p16", (3, 224, 224), 1000),
])
def test_summarize_equals_the_hook_counts_and_the_formula(name, shape, classes):
    spec = archs.resolve_arch(name)
    summary = archs.summarize(spec, shape, classes)
    per_layer = flops.layer_macs(spec, shape, classes)
    assert summary.macs == sum(per_layer.values()) == flops.dense_forward_macs(spec, shape, classes)
    # Worked out here, independently: T tokens of width D, P pixels per patch, N blocks.
    c, h, w = shape
    p, d, n = vit.patch(spec), spec.width, spec.depths[0]
    t = 1 + (h // p) * (w // p)
    assert per_layer["blocks.0.attn.attention"] == 2 * t * t * d  # Q K^T and attn @ V over every head
    assert per_layer["blocks.0.attn.qkv.weight"] == t * d * 3 * d
    block = t * (3 * d * d + d * d + 2 * 4 * d * d) + 2 * t * t * d
    assert summary.macs == c * p * p * d * (t - 1) + n * block + d * classes
    with torch.device("meta"):
        model = archs.build_model(spec, shape, classes, initialise=False)
    params = dict(model.named_parameters())
    assert summary.parameters == sum(v.numel() for v in params.values())
    assert summary.prunable == sum(params[k].numel() for k in archs.prunable_keys(spec, shape, classes))


def test_vit_base_has_timms_parameter_count():
    # timm's vit_base_patch16_224: 86,567,656 parameters.
    assert archs.summarize(archs.resolve_arch("vit-base-p16"), (3, 224, 224), 1000).parameters == 86_567_656


def test_init_is_the_models_own_and_seeded():
    spec = archs.resolve_arch("vit-d2-w64-h4-p2")
    a, b = (archs.build_model(spec, DIGITS, 10, seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], archs.build_model(spec, DIGITS, 10, seed=4)
                           .state_dict()["blocks.0.attn.qkv.weight"])
    assert archs.family_of(spec).init == "model"
    qkv = a["blocks.0.attn.qkv.weight"]
    assert qkv.abs().max() <= 0.04 and 0.015 < qkv.std() < 0.02  # truncated at 2 std of 0.02
    assert torch.all(a["blocks.1.norm1.weight"] == 1) and torch.all(a["norm.bias"] == 0)
    assert torch.all(a["blocks.1.mlp.fc1.bias"] == 0) and torch.all(a["head.bias"] == 0)
    assert 0 < a["pos_embed"].abs().max() <= 0.04 and a["cls_token"].abs().max() > 0
    model = archs.build_model(spec, DIGITS, 10, seed=0)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.head_dim == 16


# ----- stretch and squeeze ------------------------------------------------------------------------
def _source(arch: str = SMALL, seed: int = 0) -> Ticket:
    """A random ticket whose blocks differ everywhere: its unmasked tensors (LayerNorms, biases) carry the
    block's number, so a block copied from the wrong place shows."""
    ticket = random_ticket(arch, DIGITS, 10, 0.5, seed=seed, dataset="digits")
    for key, value in ticket.init.items():
        if key.startswith("blocks.") and key not in ticket.masks:
            ticket.init[key] = value + 10.0 * (1 + int(key.split(".")[1]))
    return ticket


def _check_blocks(source: Ticket, out: Ticket, mapping: tuple[int, ...]) -> None:
    """Target block j holds source block mapping[j] (masks, weights, both LayerNorms); stem and head as they were."""
    assert out.spec.depths == (len(mapping),)
    expected = {}
    for key in source.init:
        if key.startswith("blocks."):
            i, rest = key.split(".", 2)[1:]
            expected.update({f"blocks.{j}.{rest}": key for j, src in enumerate(mapping) if src == int(i)})
        else:
            expected[key] = key
    assert set(out.init) == set(expected)
    for key, src in expected.items():
        assert torch.equal(out.init[key], source.init[src]), (key, src)
        if key in out.masks or src in source.masks:
            assert torch.equal(out.masks[key], source.masks[src]), (key, src)
    for j, src in enumerate(mapping):
        for norm in ("norm1", "norm2"):
            assert torch.equal(out.init[f"blocks.{j}.{norm}.weight"], source.init[f"blocks.{src}.{norm}.weight"])
    assert all(torch.equal(out.init[k], source.init[k]) for k in STEM_AND_HEAD)
    assert all(torch.equal(out.masks[k], source.masks[k]) for k in ("patch_embed.proj.weight", "head.weight"))


@pytest.mark.parametrize("kind, arch, target, strategy, mapping", [
    ("stretch", SMALL, "vit-d8", "append", (0, 1, 2, 3, 1, 2, 3, 1)),
    ("stretch", SMALL, "vit-d8", "interpolate", (0, 1, 1, 1, 2, 2, 3, 3)),
    ("stretch", SMALL, "vit-d5", "append", (0, 1, 2, 3, 1)),
    ("stretch", SMALL, "vit-d5", "interpolate", (0, 1, 1, 2, 3)),
    # Block 0 is free: a one-block ViT stretches (every strategy repeats its block).
    ("stretch", "vit-d1-w16-h2-p2", "vit-d3", "append", (0, 0, 0)),
    ("stretch", "vit-d1-w16-h2-p2", "vit-d3", "interpolate", (0, 0, 0)),
    ("squeeze", "vit-d8-w16-h2-p2", "vit-d4", "keep-first", (0, 1, 2, 3)),
    ("squeeze", "vit-d8-w16-h2-p2", "vit-d4", "spaced", (0, 2, 5, 7)),
    ("squeeze", SMALL, "vit-d1", "keep-first", (0,)),
    ("squeeze", SMALL, "vit-d1", "spaced", (0,)),
])
def test_each_strategy_maps_block_by_block(kind, arch, target, strategy, mapping):
    source = _source(arch)
    out = getattr(elastic, kind)(source, target, strategy=strategy)
    assert out.transform["mapping"] == [list(mapping)] and out.transform["strategy"] == strategy
    _check_blocks(source, out, mapping)
    assert out.build_model("init")(torch.randn(2, *DIGITS)).shape == (2, 10)


@pytest.mark.parametrize("kind, target, text, mapping", [
    # Block 0 is free: an explicit mapping may copy it anywhere, move it or drop it.
    ("stretch", "vit-d6", "3:0;0:1,5;2:2;1:3,4", (3, 0, 2, 1, 1, 0)),
    ("squeeze", "vit-d2", "3:0;1:1", (3, 1)),
])
def test_an_explicit_mapping_maps_block_by_block(kind, target, text, mapping):
    source = _source()
    out = getattr(elastic, kind)(source, target, mapping=text)
    assert out.transform["strategy"] == "mapping"
    _check_blocks(source, out, mapping)


def test_no_reference_mapping_the_reference_has_no_vit():
    out = elastic.stretch(_source(), "vit-d6")
    assert out.transform["reference_mapping"] is None and "no vit family" in out.transform["reference_mapping_note"]
    assert out.transform["mapping_string"] == "0:0;1:1,4;2:2,5;3:3"
    with pytest.raises(UsageError, match="no vit family, so no numbering of its own; give the mapping to --mapping"):
        elastic.stretch(_source(), "vit-d6", reference_mapping="0:0;1:1,4;2:2,5;3:3")


def _same(a: Ticket, b: Ticket) -> bool:
    return (a.arch == b.arch and a.masks.keys() == b.masks.keys() and a.init.keys() == b.init.keys()
            and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
            and all(torch.equal(a.init[k], b.init[k]) for k in a.init))


@pytest.mark.parametrize("deeper", ["vit-d5", "vit-d8", "vit-d11"])
def test_append_then_keep_first_gives_the_source_back(deeper):
    # append keeps blocks 0..n-1 where they were and puts the copies after them: keep-first drops the copies.
    source = _source()
    back = elastic.squeeze(elastic.stretch(source, deeper, strategy="append"), source.arch, strategy="keep-first")
    assert _same(back, source)


@pytest.mark.parametrize("src, deeper", [("vit-d4-w16-h2-p2", "vit-d8"), ("vit-d4-w16-h2-p2", "vit-d7"),
                                         ("vit-d3-w16-h2-p2", "vit-d5"), ("vit-d2-w16-h2-p2", "vit-d5")])
def test_interpolate_then_spaced_gives_the_source_back_for_these_depths(src, deeper):
    # interpolate 4 -> 8 is 0 1 1 1 2 2 3 3 and spaced 8 -> 4 picks places 0 3 5 7: blocks 0 1 2 3.
    source = _source(src)
    back = elastic.squeeze(elastic.stretch(source, deeper, strategy="interpolate"), src, strategy="spaced")
    assert _same(back, source)


def test_interpolate_then_spaced_is_not_an_inverse_in_general():
    # interpolate 6 -> 8 is 0 1 1 2 2 3 4 5; spaced 8 -> 6 picks places 0 1 3 4 6 7: blocks 0 1 2 2 4 5, not 0..5.
    # keep-first does not undo interpolate either (it keeps the copies 1 1 ...), nor spaced append's.
    source = _source("vit-d6-w16-h2-p2")
    stretched = elastic.stretch(source, "vit-d8", strategy="interpolate")
    back = elastic.squeeze(stretched, source.arch, strategy="spaced")
    assert back.transform["mapping"] == [[0, 1, 3, 4, 6, 7]]
    _check_blocks(source, back, (0, 1, 2, 2, 4, 5))
    assert not _same(back, source)
    assert not _same(elastic.squeeze(elastic.stretch(_source(), "vit-d8", strategy="append"), SMALL,
                                     strategy="spaced"), _source())


def test_an_explicit_mapping_then_its_inverse_gives_the_source_back():
    source = _source()
    stretched = elastic.stretch(source, "vit-d6", mapping="3:0;0:1,5;2:2;1:3,4")
    inverse = inverse_mapping(((3, 0, 2, 1, 1, 0),), source.spec.depths)
    assert inverse == ((1, 3, 2, 0),)
    assert _same(elastic.squeeze(stretched, SMALL, mapping=format_mapping(inverse)), source)


def test_a_vit_ticket_builds_and_runs():
    ticket = random_ticket(SMALL, DIGITS, 10, 0.5, seed=1, dataset="digits")
    assert 0.49 < ticket.sparsity < 0.51
    model = ticket.build_model("init")
    assert model(torch.randn(2, *DIGITS)).shape == (2, 10)
    again = Ticket.from_bytes(ticket.to_bytes())
    assert _same(again, ticket)
