import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_ticket
from elth_cli import archs, elastic, mappings
from elth_cli.elastic import squeeze, stretch
from elth_cli.mappings import MappingError, inverse_mapping, plan_mapping
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket


@functools.lru_cache(maxsize=None)
def cached_ticket(arch: str, seed: int = 0) -> Ticket:
    return make_ticket(arch, sparsity=0.6, seed=seed)


def assert_tickets_equal(a: Ticket, b: Ticket) -> None:
    assert a.arch == b.arch
    assert list(a.masks) == list(b.masks) and list(a.init) == list(b.init)
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k]), k
    for k in a.init:
        assert torch.equal(a.init[k], b.init[k]), k


def assert_blocks_copied(src: Ticket, out: Ticket) -> None:
    """Each target block's mask and init equal its source block's; stem and head unchanged."""
    mapping = out.transform["mapping"]
    s_lay, t_lay = archs.block_layout(src.spec), archs.block_layout(out.spec)
    for key, value in out.init.items():
        kind, s, j = t_lay.locate(key)
        if kind == "block":
            src_key = s_lay.stages[s][mapping[s][j]] + key[len(t_lay.stages[s][j]):]
        else:
            src_key = key
        assert torch.equal(value, src.init[src_key]), (key, src_key)
        if key in out.masks:
            assert torch.equal(out.masks[key], src.masks[src_key]), key
    assert set(out.init) == set(archs.expected_state(out.spec, out.input_shape, out.num_classes))
    assert set(out.masks) == set(archs.prunable_keys(out.spec, out.input_shape, out.num_classes))


# ----- strategies ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "src, tgt, strategy, expected",
    [
        (3, 5, "append", (0, 1, 2, 1, 2)),
        (3, 5, "interpolate", (0, 1, 1, 2, 2)),
        (5, 7, "interpolate", (0, 1, 1, 2, 2, 3, 4)),
        (5, 9, "append", (0, 1, 2, 3, 4, 1, 2, 3, 4)),
        (5, 9, "interpolate", (0, 1, 1, 2, 2, 3, 3, 4, 4)),
        (2, 5, "append", (0, 1, 1, 1, 1)),
        (3, 7, "append", (0, 1, 2, 1, 2, 1, 2)),
        (9, 5, "keep-first", (0, 1, 2, 3, 4)),
        (9, 5, "spaced", (0, 2, 4, 6, 8)),
        (5, 3, "spaced", (0, 2, 4)),
        (5, 1, "spaced", (0,)),
    ],
)
def test_stage_strategies(src, tgt, strategy, expected):
    assert plan_mapping((src,), (tgt,), strategy) == (expected,)


def test_reference_mapping_equals_interpolate():
    src = cached_ticket("resnet32-w2")
    ref = stretch(src, "resnet56", mapping="0:0;1:1,2;2:3,4;3:5,6;4:7,8")
    interp = stretch(src, "resnet56", strategy="interpolate")
    assert_tickets_equal(ref, interp)
    assert ref.transform["mapping"] == interp.transform["mapping"]
    assert ref.transform["mapping_string"] == "0:0;1:1,2;2:3,4;3:5,6;4:7,8"


def test_stretch_copies_blocks_and_keeps_stem_head():
    src = cached_ticket("resnet20-w4")
    out = stretch(src, "resnet32")
    assert out.arch == "resnet32-w4"
    assert out.transform["mapping"] == [[0, 1, 2, 1, 2]] * 3
    assert_blocks_copied(src, out)
    for key in ("conv.weight", "bn.running_mean", "fc.weight", "fc.bias"):
        assert torch.equal(out.init[key], src.init[key])
    assert out.method == "stretch" and out.parents[0]["arch"] == "resnet20-w4"
    assert out.rewind_step == src.rewind_step and out.cost == src.cost
    # the copies are independent tensors (safetensors refuses shared storage)
    assert out.init["blocks.1.conv1.weight"].data_ptr() != out.init["blocks.3.conv1.weight"].data_ptr()
    Ticket.from_bytes(out.to_bytes())


def test_squeeze_spaced_keeps_every_other_block():
    src = cached_ticket("resnet56-w2")
    out = squeeze(src, "resnet32", strategy="spaced")
    assert out.transform["mapping"] == [[0, 2, 4, 6, 8]] * 3
    assert_blocks_copied(src, out)


def test_vgg_stretch_and_imagenet_stretch():
    src = cached_ticket("vgg13-w4")
    out = stretch(src, "vgg19")
    assert out.transform["mapping"] == [[0, 1], [0, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert_blocks_copied(src, out)
    src = cached_ticket("imagenet-resnet26")
    out = stretch(src, "imagenet-resnet34")
    assert out.transform["mapping"] == [[0, 1, 1], [0, 1, 2, 1], [0, 1, 2, 3, 1, 2], [0, 1, 2]]
    assert_blocks_copied(src, out)
    # the paper's 26 -> 34 mapping from the reference syntax, one string per stage
    out2 = stretch(src, "imagenet-resnet34", mapping="0:0;1:1,2|0:0;1:1,3;2:2|0:0;1:1,4;2:2,5;3:3|0:0;1:1;2:2")
    assert_tickets_equal(out, out2)


# ----- property: stretch then squeeze with the inverse mapping is the identity ---------------------
def _family_cases():
    cifar = [(f"resnet{6 * a + 2}-w2", f"resnet{6 * b + 2}-w2") for a in range(2, 6) for b in range(a + 1, 8)]
    vgg = [("vgg13-w4", "vgg16-w4"), ("vgg13-w4", "vgg19-w4"), ("vgg16-w4", "vgg19-w4")]
    imagenet = [("imagenet-resnet18", "imagenet-resnet26"), ("imagenet-resnet18", "imagenet-resnet34"),
                ("imagenet-resnet26", "imagenet-resnet34")]
    return cifar, vgg, imagenet


CIFAR_CASES, VGG_CASES, IMAGENET_CASES = _family_cases()


def _roundtrip(src_name: str, tgt_name: str, strategy: str, seed: int) -> None:
    src = cached_ticket(src_name, seed)
    out = stretch(src, tgt_name, strategy=strategy)
    assert_blocks_copied(src, out)
    inverse = inverse_mapping(tuple(map(tuple, out.transform["mapping"])), src.spec.depths)
    back = squeeze(out, src.spec, mapping=elastic.format_mapping(inverse))
    assert_tickets_equal(src, back)
    if strategy == "append":  # keep-first is the inverse of append
        assert_tickets_equal(src, squeeze(out, src.spec, strategy="keep-first"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CIFAR_CASES), strategy=st.sampled_from(["append", "interpolate"]), seed=st.integers(0, 2))
def test_roundtrip_cifar_resnet(case, strategy, seed):
    _roundtrip(*case, strategy, seed)


@settings(max_examples=6, deadline=None)
@given(case=st.sampled_from(VGG_CASES), strategy=st.sampled_from(["append", "interpolate"]))
def test_roundtrip_vgg(case, strategy):
    _roundtrip(*case, strategy, 0)


@settings(max_examples=4, deadline=None)
@given(case=st.sampled_from(IMAGENET_CASES), strategy=st.sampled_from(["append", "interpolate"]))
def test_roundtrip_imagenet_resnet(case, strategy):
    _roundtrip(*case, strategy, 0)


@settings(max_examples=40, deadline=None)
@given(src=st.integers(2, 12), extra=st.integers(1, 20), strategy=st.sampled_from(["append", "interpolate"]))
def test_stretch_plans_are_valid_and_use_distinct_blocks(src, extra, strategy):
    tgt = src + extra
    (stage,) = plan_mapping((src,), (tgt,), strategy)
    mappings.check_mapping((stage,), (src,), (tgt,))
    assert stage[:1] == (0,) and 0 not in stage[1:]
    counts = [stage.count(i) for i in range(1, src)]
    assert max(counts) - min(counts) <= 1  # as evenly as possible
    assert sorted(set(stage)) == list(range(src)) or tgt - 1 < src - 1
    if strategy == "interpolate":
        assert list(stage) == sorted(stage)  # in place
        assert counts == sorted(counts, reverse=True)  # earlier blocks take the extra copies


@settings(max_examples=40, deadline=None)
@given(tgt=st.integers(1, 12), extra=st.integers(1, 20), strategy=st.sampled_from(["keep-first", "spaced"]))
def test_squeeze_plans_keep_order(tgt, extra, strategy):
    src = tgt + extra
    (stage,) = plan_mapping((src,), (tgt,), strategy)
    mappings.check_mapping((stage,), (src,), (tgt,))
    assert list(stage) == sorted(set(stage)) and stage[0] == 0


# ----- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mapping, message",
    [
        ("0:0;1:1;2:2", "left empty"),
        ("0:0,1;1:2;2:3,4", "block 0"),
        ("0:0;1:1,2;2:3;5:4", "does not exist"),
        ("0:0;1:1,2;2:3,4,5", "does not exist"),
        ("0:0;1:1,2;2:2,3,4", "filled twice"),
        ("0:0;1:x", "not 'src:dst"),
        ("0:0;1:1,3;2:2,4|0:0;1:1,3;2:2,4", "stage parts"),
        ("1:0;0:1,2;2:3,4", "block 0"),
    ],
)
def test_bad_mappings(mapping, message):
    with pytest.raises(MappingError, match=message):
        stretch(cached_ticket("resnet20-w4"), "resnet32", mapping=mapping)


def test_direction_and_family_refusals():
    r20 = cached_ticket("resnet20-w4")
    with pytest.raises(UsageError, match="use elth squeeze"):
        stretch(r20, "resnet14")
    with pytest.raises(UsageError, match="use elth stretch"):
        squeeze(r20, "resnet32")
    with pytest.raises(UsageError, match="same blocks"):
        stretch(r20, "resnet20")
    with pytest.raises(UsageError, match="within their family"):
        stretch(r20, "vgg19")
    with pytest.raises(UsageError, match="unknown target"):
        stretch(r20, "resnet-huge")
    with pytest.raises(UsageError, match="not both"):
        stretch(r20, "resnet32", strategy="append", mapping="0:0;1:1,3;2:2,4")
    with pytest.raises(UsageError, match="strategies are"):
        stretch(r20, "resnet32", strategy="spaced")
    with pytest.raises(MappingError, match="only its block 0"):
        stretch(cached_ticket("resnet8-w4"), "resnet14")
    with pytest.raises(MappingError, match="only its block 0"):
        stretch(cached_ticket("vgg11-w4"), "vgg13")


def test_mixed_depths_need_a_mapping():
    src = cached_ticket("imagenet-resnet26")  # 2/3/4/3
    target = archs.ArchSpec("custom", "imagenet-resnet", (3, 2, 4, 3), 64, "basic")
    with pytest.raises(UsageError, match="explicit --mapping"):
        elastic.plan_transform(src.spec, target, "stretch")
    plan = elastic.plan_transform(src.spec, target, "stretch", mapping="0:0;1:1,2|0:0;1:1|0:0;1:1;2:2;3:3|0:0;1:1;2:2")
    assert plan.mapping == ((0, 1, 1), (0, 1), (0, 1, 2, 3), (0, 1, 2))


@pytest.mark.parametrize("source, target, strategy, expected", [
    ("resnet20", "resnet32", "append", "0:0;1:1,3;2:2,4"),                       # one string for every stage
    ("resnet56", "resnet32", "spaced", "0:0;2:1;4:2;6:3;8:4"),
    ("vgg13", "vgg16", "append", "0:0;1:1|0:0;1:1|0:0;1:1,2|0:0;1:1,2|0:0;1:1,2"),  # one per stage, always
    ("imagenet-resnet18", "imagenet-resnet34", "append", "0:0;1:1,2|0:0;1:1,2,3|0:0;1:1,2,3,4,5|0:0;1:1,2"),
])
def test_the_recorded_mapping_is_in_the_references_syntax(source, target, strategy, expected):
    from elth_cli import archs
    from elth_cli.elastic import plan_transform
    from elth_cli.mappings import parse_mapping

    src = archs.resolve_arch(source)
    kind = "stretch" if sum(archs.resolve_arch(target).depths) > sum(src.depths) else "squeeze"
    plan = plan_transform(src, target, kind, strategy)
    described = plan.describe()
    assert described["reference_mapping"] == expected
    # ...and elth reads it back to the same mapping.
    assert parse_mapping(expected, src.depths, plan.target.depths) == plan.mapping


def test_a_cifar_resnet_mapping_that_differs_between_stages_has_no_reference_form():
    from elth_cli import archs
    from elth_cli.elastic import plan_transform

    plan = plan_transform(archs.resolve_arch("resnet20"), "resnet32", "stretch", mapping="0:0;1:1,3;2:2,4|0:0;1:1,2;2:3,4|0:0;1:1,3;2:2,4")
    d = plan.describe()
    assert d["reference_mapping"] is None and "one --block_mapping string to every stage" in d["reference_mapping_note"]


def test_a_source_stage_of_one_block_cannot_be_stretched_and_no_mapping_is_suggested():
    from elth_cli import archs
    from elth_cli.elastic import plan_transform

    for mapping in (None, "0:0|0:0|0:0;1:1,2|0:0;1:1,2|0:0;1:1,2"):
        with pytest.raises(UsageError, match=r"vgg11 cannot be stretched to vgg16: in stages 0, 1 .* no mapping can "
                                             r"add blocks there; .* \(vgg13\)") as info:
            plan_transform(archs.resolve_arch("vgg11"), "vgg16", "stretch", mapping=mapping)
        assert "--mapping" not in str(info.value)


@pytest.mark.parametrize("source, target, kind, strategy", [
    ("mlp-300x2", "mlp-300x4", "stretch", "append"), ("mlp-300x2", "mlp-300x4", "stretch", "interpolate"),
    ("mlp-300x4", "mlp-300x2", "squeeze", "spaced"), ("vgg13-fc3", "vgg13-fc5", "stretch", "append"),
    ("vgg13-fc5", "vgg13-fc2", "squeeze", "keep-first"), ("vgg13-fc5", "vgg13-fc3", "squeeze", "spaced"),
])
def test_a_recorded_reference_mapping_reproduces_its_ticket(source, target, kind, strategy):
    """The mapping a ticket records in the reference's numbering, given back as --reference-mapping, makes the
    same ticket; given as --mapping (elth's numbering) it is refused with that hint or means elth's reading."""
    from elth_cli.elastic import MappingError, as_reference_reading

    ticket = make_ticket(source)
    transform = getattr(elastic, kind)
    first = transform(ticket, target, strategy=strategy)
    ref = first.transform["reference_mapping"]
    again = transform(ticket, target, reference_mapping=ref)
    assert again.transform["mapping"] == first.transform["mapping"]
    assert all(torch.equal(first.masks[k], again.masks[k]) and torch.equal(first.init[k], again.init[k])
               for k in first.masks)
    own = transform(ticket, target, mapping=first.transform["mapping_string"])
    assert own.transform["mapping"] == first.transform["mapping"]
    if ref != first.transform["mapping_string"]:
        try:
            pasted = transform(ticket, target, mapping=ref)
        except MappingError as e:
            assert "pass it as --reference-mapping" in str(e)
        else:  # valid in both numberings: elth's reading is taken, and the CLI says so
            assert as_reference_reading(ref, ticket.spec, pasted.spec) is not None


def test_a_mapping_valid_in_both_numberings_is_read_as_elths_with_a_warning(tmp_path, capsys):
    from conftest import run_in_process

    src = tmp_path / "fc5.safetensors"
    make_ticket("vgg13-fc5").save(src)
    r = run_in_process(capsys, "squeeze", src, "--target", "vgg13-fc2", "--mapping", "2:0", "-o", tmp_path / "a.safetensors")
    assert r.code == 0 and "warning: --mapping 2:0 is read in elth's numbering" in r.stderr
    assert "pass it as --reference-mapping" in r.stderr
    r = run_in_process(capsys, "squeeze", src, "--target", "vgg13-fc2", "--reference-mapping", "2:0", "--mapping", "1:0",
                       "-o", tmp_path / "b.safetensors")
    assert r.code == 2 and "not both" in r.stderr
    r = run_in_process(capsys, "squeeze", src, "--target", "vgg13-fc2", "--reference-mapping", "3:0",
                       "-o", tmp_path / "c.safetensors")
    assert r.code == 2 and "hidden layer j is 2j, so 3 names no layer" in r.stderr


def test_a_reference_target_name_keeps_the_source_width_and_says_so():
    plan = elastic.plan_transform(archs.resolve_arch("imagenet-resnet18-w32"), "imagenet_resnet_34", "stretch")
    assert plan.target.name == "imagenet-resnet34-w32"
    assert plan.notes == ("--target imagenet_resnet_34 is width 64 in the reference; the target keeps the source's "
                          "width 32: imagenet-resnet34-w32",)
    assert elastic.plan_transform(archs.resolve_arch("imagenet-resnet18"), "imagenet_resnet_34", "stretch").notes == ()
