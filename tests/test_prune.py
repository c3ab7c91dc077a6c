import pytest
import torch

from conftest import make_ticket
from elth_cli import data
from elth_cli.errors import UsageError
from elth_cli.find import BaselineOptions, prune_baseline
from elth_cli.ticket import Ticket
from elth_cli.prune import (
    allocate_counts, check_sparsity, count_pruned, magnitude_scores, prune_lowest, prune_to_sparsity, synflow_masks,
)


def test_allocate_counts_exact():
    sizes = [36, 144, 144, 160, 7]
    for s in (0.0, 0.2, 0.5, 0.8926, 0.99):
        counts = allocate_counts(sizes, s)
        assert sum(counts) == round(s * sum(sizes))
        assert all(0 <= c <= n and abs(c - s * n) < 1 + 1e-9 for c, n in zip(counts, sizes))


@pytest.mark.parametrize("bad", [1.0, -0.01, 80, float("nan")])
def test_check_sparsity(bad):
    with pytest.raises(UsageError):
        check_sparsity(bad)


def test_prune_lowest_is_exact_with_ties_and_respects_masks_and_exclude():
    scores = {"a": torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0]), "b": torch.tensor([0.0, 5.0, 0.0]), "c": torch.zeros(4)}
    masks = {"a": torch.tensor([True, False, True, True, True]), "b": torch.ones(3, dtype=torch.bool),
             "c": torch.ones(4, dtype=torch.bool)}
    out = prune_lowest(scores, masks, 3, exclude=["c"])
    assert count_pruned(out)[0] == count_pruned(masks)[0] + 3
    assert not out["a"][1]  # already pruned stays pruned
    assert out["c"].all()  # excluded untouched
    assert out["b"][1] and out["a"][4]  # the high scores survive
    assert masks["a"][0]  # inputs not modified


def test_magnitude_prunes_smallest_exactly():
    t = make_ticket("resnet20-w4", sparsity=0.0)
    keys = list(t.masks)
    out = prune_to_sparsity(magnitude_scores(t.init, keys), t.masks, 0.36)
    pruned, total = count_pruned(out)
    assert pruned == round(0.36 * total)
    kept_min = min(t.init[k][out[k]].abs().min() for k in keys)
    pruned_max = max(t.init[k][~out[k]].abs().max() for k in keys if (~out[k]).any())
    assert pruned_max <= kept_min


def test_impossible_sparsity_with_exclusions():
    t = make_ticket("vgg11-w4", sparsity=0.0)
    scores = magnitude_scores(t.init, list(t.masks))
    fc = t.masks["fc.weight"].numel()
    total = sum(m.numel() for m in t.masks.values())
    too_high = 1 - fc / total / 2
    with pytest.raises(UsageError, match="impossible"):
        prune_to_sparsity(scores, t.masks, too_high, exclude=["fc.weight"])
    with pytest.raises(UsageError, match="already"):
        prune_to_sparsity(scores, make_ticket("vgg11-w4", sparsity=0.5).masks, 0.2)


@pytest.mark.parametrize("sparsity", [0.2, 0.8926, 0.98])
def test_synflow_exact_and_data_free(sparsity):
    t = make_ticket("resnet20-w4", sparsity=0.0)
    out = synflow_masks(t.build_model(), t.masks, sparsity, t.input_shape, iterations=20)
    assert count_pruned(out)[0] == round(sparsity * count_pruned(out)[1])


class ExplodingBundle:
    """A data set that raises when read: synflow must not touch it."""

    def __getattr__(self, name):
        raise AssertionError(f"synflow read the data set ({name})")


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_every_baseline_hits_the_sparsity_exactly(method, sparsity, digits):
    src = make_ticket("resnet20-w4", sparsity=0.0, seed=1)
    src = Ticket.from_bytes(src.to_bytes())  # a ticket read from a file: it becomes the parent
    bundle = ExplodingBundle() if method == "synflow" else digits
    opts = BaselineOptions(method=method, sparsity=sparsity, batches=2, batch_size=64, synflow_iterations=10)
    out = prune_baseline(src, opts, bundle)
    pruned, total = count_pruned(out.masks)
    assert pruned == round(sparsity * total)
    assert out.method == method and out.parents == [src.parent_record()]
    for k, m in out.masks.items():  # init weights are the source's, zero where pruned
        assert torch.equal(out.init[k], torch.where(m, src.init[k], torch.zeros(())))
    if method == "random":  # layer-wise: every layer at the same rate
        for k, (p, n) in out.layer_sparsity().items():
            assert abs(p - sparsity * n) <= 1


def test_like_layerwise_matches_per_layer(digits):
    src = make_ticket("resnet20-w4", sparsity=0.0, seed=2)
    like = prune_baseline(src, BaselineOptions(method="magnitude", sparsity=0.8))
    for method in ("random", "snip"):
        out = prune_baseline(src, BaselineOptions(method=method, like=like, match="layerwise", batches=1, batch_size=64), digits)
        assert out.layer_sparsity() == like.layer_sparsity()
    out = prune_baseline(src, BaselineOptions(method="magnitude", like=like, match="overall"))
    assert count_pruned(out.masks) == count_pruned(like.masks)


def test_vgg_keeps_fc_dense_by_default():
    src = make_ticket("vgg11-w4", sparsity=0.0)
    out = prune_baseline(src, BaselineOptions(method="magnitude", sparsity=0.5))
    assert out.masks["fc.weight"].all()
    assert count_pruned(out.masks)[0] == round(0.5 * count_pruned(out.masks)[1])
