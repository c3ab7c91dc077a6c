"""Width transfer: masks and weights unit by unit as docs/elastic.md ("Width") states, the function kept by
``carry``, narrow undoing widen, and clear refusals."""

import pytest
import torch

from conftest import assert_clean_error, run_in_process
from elth_cli.errors import UsageError
from elth_cli.find.baselines import random_ticket
from elth_cli.ticket import Ticket
from elth_cli.width import WidthOptions, narrow, transfer_width, widen

PAIRS = [
    ("resnet8-w4", "resnet8-w8", (1, 8, 8)), ("imagenet-resnet50-w4", "imagenet-resnet50-w8", (3, 32, 32)),
    ("mlp-30x2", "mlp-60x2", (1, 8, 8)), ("vgg11-w4", "vgg11-w12", (3, 32, 32)),
    ("vgg13-w4-fc2", "vgg13-w8-fc2", (3, 32, 32)), ("vit-d2-w16-h2-p2", "vit-d2-w32-h4-p2", (1, 8, 8)),
]


@pytest.mark.parametrize("arch,wide,shape", PAIRS)
def test_carry_keeps_the_function_and_narrow_undoes_widen(arch, wide, shape):
    ticket = random_ticket(arch, shape, 10, 0.5, seed=0)
    wider = widen(ticket, wide, WidthOptions(init="carry"))
    assert wider.arch == wide and wider.method == "widen" and wider.parents == [ticket.parent_record()]
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        torch.testing.assert_close(wider.build_model().double().eval()(x), ticket.build_model().double().eval()(x),
                                   atol=1e-9, rtol=1e-7)
    back = narrow(wider, arch, WidthOptions(init="carry"))
    assert all(torch.equal(back.masks[k], ticket.masks[k]) for k in ticket.masks)
    for k in ticket.init:
        torch.testing.assert_close(back.init[k], ticket.init[k], atol=1e-7, rtol=1e-6)


def test_a_widened_resnet_is_its_source_tiled_unit_by_unit():
    """Target unit j is source unit j mod n on every unit axis: a conv's mask is the source's repeated in 2x2
    blocks over (output, input) channels; the stem's input (pixels) and the classes are not units."""
    ticket = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.6, seed=3)
    wider = widen(ticket, "resnet8-w8", WidthOptions(init="carry"))
    src, dst = ticket.masks, wider.masks
    assert torch.equal(dst["blocks.0.conv1.weight"], src["blocks.0.conv1.weight"].repeat(2, 2, 1, 1))
    assert torch.equal(dst["conv.weight"], src["conv.weight"].repeat(2, 1, 1, 1))  # one input channel: kept
    assert torch.equal(dst["fc.weight"], src["fc.weight"].repeat(1, 2))
    for j in range(32):  # the last stage: 16 channels -> 32
        assert torch.equal(dst["blocks.2.conv2.weight"][j], src["blocks.2.conv2.weight"][j % 16].repeat(2, 1, 1))
    # Weights: copied on output units, divided by the copies on the input units they sum over.
    w, v = wider.init["blocks.1.conv1.weight"], ticket.init["blocks.1.conv1.weight"]
    assert torch.equal(w[3, 5], v[3, 1] / 2) and torch.equal(w[11, 5], v[3, 1] / 2)
    assert torch.equal(wider.init["bn.running_var"], ticket.init["bn.running_var"].repeat(2))


def test_vit_heads_are_whole_units():
    ticket = random_ticket("vit-d1-w16-h2-p2", (1, 8, 8), 10, 0.5, seed=0)
    wider = widen(ticket, "vit-d1-w32-h4-p2", WidthOptions(init="carry"))
    q_src, q_dst = ticket.masks["blocks.0.attn.qkv.weight"], wider.masks["blocks.0.attn.qkv.weight"]
    # Rows: (q, k, v) x heads x 8 dims; head h of the wide network is head h mod 2 of the source.
    src = q_src.reshape(3, 2, 8, 16)
    dst = q_dst.reshape(3, 4, 8, 32)
    for h in range(4):
        assert torch.equal(dst[:, h], src[:, h % 2].repeat(1, 1, 2))
    with pytest.raises(UsageError, match="whole units"):
        widen(ticket, "vit-d1-w32-h2-p2")  # the same two heads, twice as wide: head size changes


def test_fresh_and_from_weights():
    ticket = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.7, seed=0)
    fresh = widen(ticket, "resnet8-w8")
    assert fresh.transform["init"] == "fresh" and fresh.rewind_step == ticket.rewind_step
    assert all(torch.equal(fresh.init[k][~fresh.masks[k]], torch.zeros(int((~fresh.masks[k]).sum())))
               for k in fresh.masks)
    other = random_ticket("resnet8-w8", (1, 8, 8), 10, 0.0, seed=5)
    taken = widen(ticket, "resnet8-w8", WidthOptions(init="from", init_from=other))
    kept = taken.masks["blocks.0.conv1.weight"]
    assert torch.equal(taken.init["blocks.0.conv1.weight"][kept], other.init["blocks.0.conv1.weight"][kept])
    assert torch.equal(taken.init["bn.weight"], other.init["bn.weight"])
    with pytest.raises(UsageError, match="must be the target"):
        widen(ticket, "resnet8-w16", WidthOptions(init="from", init_from=other))


def test_narrow_densest_keeps_the_units_with_most_kept_weights():
    ticket = random_ticket("mlp-8x1", (1, 2, 2), 10, 0.0, seed=0)
    masks = dict(ticket.masks)
    masks["fc_layers.0.weight"] = torch.zeros(8, 4, dtype=torch.bool)
    masks["fc_layers.0.weight"][[1, 6]] = True  # units 1 and 6 keep their inputs, the others none
    dense = Ticket(arch=ticket.arch, input_shape=ticket.input_shape, num_classes=10, masks=masks, init=ticket.init)
    out = transfer_width(dense, "mlp-2x1", WidthOptions(select="densest"), direction="narrow")
    assert out.transform["units"]["fc_layers.0"] == [8, 2]
    assert bool(out.masks["fc_layers.0.weight"].all())


@pytest.mark.parametrize("target,message", [
    ("resnet14-w8", "keeps the depth"), ("vgg11-w8", "stays in one family"), ("resnet8-w6", "whole multiple"),
    ("resnet8-w4", "own architecture"), ("resnet8-w2", "use elth narrow"),
])
def test_refusals(target, message):
    ticket = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=0)
    with pytest.raises(UsageError, match=message):
        widen(ticket, target)


def test_cli_widen_and_narrow(tmp_path, capsys):
    src = tmp_path / "t.safetensors"
    random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=0, dataset="digits").save(src)
    wide, back = tmp_path / "w.safetensors", tmp_path / "b.safetensors"
    r = run_in_process(capsys, *["widen", str(src), "--target", "resnet8-w8", "-o", str(wide), "--json"])
    assert r.code == 0, r.stderr
    assert '"target_arch": "resnet8-w8"' in r.stdout
    r = run_in_process(capsys, *["narrow", str(wide), "--target", "resnet8-w4", "-o", str(back), "--init", "carry"])
    assert r.code == 0, r.stderr
    assert all(torch.equal(Ticket.load(back).masks[k], Ticket.load(src).masks[k]) for k in Ticket.load(src).masks)
    r = run_in_process(capsys, "info", str(back))
    assert "transform   narrow resnet8-w8 -> resnet8-w4, units x0.5, init carry, select first" in r.stdout
    assert_clean_error(run_in_process(capsys, *["narrow", str(src), "--target", "resnet8-w8", "-o", str(tmp_path / "x")]),
                       contains="use elth widen")
    assert_clean_error(run_in_process(capsys, *["widen", str(src), "--target", "resnet8-w8", "-o", str(tmp_path / "y"),
                                       "--init", "carry", "--init-from", str(src)]), contains="--init-from goes with")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

