"""elth_cli.masks: kept/total counts, the same-layout check and the overlap of two mask dicts, by hand."""

import pytest
import torch

from elth_cli import compare
from elth_cli.errors import UsageError
from elth_cli.masks import (
    Overlap, check_same_layout, expected_random_jaccard, hamming, jaccard, kept_and_total, layer_counts,
    layer_overlap, layer_overlaps, layout_difference, pooled, same_layout,
)


def b(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


# Two layers; A keeps 3 of 4 and 1 of 2, B keeps 2 of 4 and 2 of 2.
A = {"conv": b(1, 1, 1, 0), "fc": b(1, 0)}
B = {"conv": b(1, 0, 0, 1), "fc": b(1, 1)}


# ----- kept and total -----------------------------------------------------------------------------
def test_kept_and_total_per_layer_and_pooled():
    assert layer_counts(A) == {"conv": (3, 4), "fc": (1, 2)}
    assert kept_and_total(A) == (4, 6)
    assert kept_and_total(B) == (4, 6)
    assert kept_and_total({}) == (0, 0)


def test_counts_treat_nonzero_as_kept_in_integer_masks():
    # open_lth's mask.pth holds int32 0/1 tensors; a 2-D mask counts every element.
    ints = {"w": torch.tensor([[1, 0], [0, 1]], dtype=torch.int32), "v": torch.zeros(3, dtype=torch.int32)}
    assert layer_counts(ints) == {"w": (2, 4), "v": (0, 3)}
    assert kept_and_total(ints) == (2, 7)


# ----- same layout --------------------------------------------------------------------------------
def test_same_layout_accepts_same_keys_and_shapes_in_any_order():
    assert same_layout(A, {"fc": b(0, 0), "conv": b(0, 0, 0, 0)})
    assert layout_difference(A, B) is None
    check_same_layout(A, B)  # no error


def test_layout_difference_names_a_missing_key_or_a_shape():
    assert layout_difference(A, {"conv": A["conv"]}) == "the masks cover different weights ('fc' is in one only)"
    assert not same_layout(A, {"conv": A["conv"], "fc": b(1, 0, 1)})
    assert layout_difference(A, {"conv": A["conv"], "fc": b(1, 0, 1)}) == \
        "mask 'fc' has shape [2] in one ticket and [3] in the other"


def test_check_same_layout_ends_the_message_with_the_callers_fix():
    with pytest.raises(UsageError, match=r"^the masks cover different weights \('x' is in one only\); use one arch$"):
        check_same_layout(A, {**A, "x": b(1)}, "use one arch")
    with pytest.raises(UsageError, match="in the other; compare masks of one architecture$"):
        check_same_layout(A, {"conv": b(1, 1), "fc": b(1, 0)})


# ----- overlap ------------------------------------------------------------------------------------
def test_layer_overlap_by_hand():
    # conv: A = {0, 1, 2}, B = {0, 3}: A∩B = {0}, A∪B = {0, 1, 2, 3}; p = 3/4, q = 2/4.
    o = layer_overlap(A["conv"], B["conv"])
    assert (o.weights, o.kept_a, o.kept_b, o.intersection, o.union) == (4, 3, 2, 1, 4)
    assert o.expected_intersection == pytest.approx(4 * 0.75 * 0.5)  # 1.5
    assert o.expected_union == pytest.approx(4 * (0.75 + 0.5 - 0.375))  # 3.5
    assert o.jaccard == 0.25
    assert o.expected_random_jaccard == pytest.approx(1.5 / 3.5)
    assert o.hamming == 3  # positions 1, 2, 3


def test_pooled_sums_layers_so_jaccard_is_not_a_mean_of_layers():
    per = layer_overlaps(A, B)
    assert list(per) == ["conv", "fc"]
    assert (per["fc"].intersection, per["fc"].union) == (1, 2)
    total = pooled(per.values())
    assert (total.weights, total.kept_a, total.kept_b, total.intersection, total.union) == (6, 4, 4, 2, 6)
    # fc: p = 1/2, q = 1: E∩ = 1, E∪ = 2; pooled with conv's 1.5 and 3.5.
    assert total.expected_intersection == pytest.approx(2.5)
    assert total.expected_union == pytest.approx(5.5)
    assert jaccard(A, B) == pytest.approx(2 / 6)  # not (1/4 + 1/2) / 2
    assert expected_random_jaccard(A, B) == pytest.approx(2.5 / 5.5)
    assert hamming(A, B) == 4
    assert pooled([]) == Overlap(0, 0, 0, 0, 0, 0.0, 0.0)


def test_empty_masks_overlap_fully_and_bare_tensors_are_one_layer():
    none = b(0, 0, 0)
    assert jaccard(none, none) == 1.0  # two empty kept sets are the same set
    assert expected_random_jaccard(none, none) == 1.0
    assert hamming(none, b(1, 0, 1)) == 2
    assert list(layer_overlaps(none, none)) == [""]
    with pytest.raises(UsageError, match="compare masks of one architecture"):
        jaccard(A, {"conv": A["conv"]})


def test_compare_reexports_the_same_functions():
    assert compare.jaccard is jaccard
    assert compare.expected_random_jaccard is expected_random_jaccard
    assert compare.hamming is hamming
