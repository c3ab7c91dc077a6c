"""The families issue 12 added (MLPs, VGGs with an FC stack, ImageNet ResNets at other widths): each
stretch and squeeze checked block by block against a layout written here, BN buffers included,
and a round trip back to the source."""

from __future__ import annotations

import pytest
import torch

from elth_cli import archs, elastic
from elth_cli.find import random_ticket


def _ticket(arch: str, shape=(1, 8, 8)):
    return random_ticket(arch, shape, 10, 0.6, seed=3, dataset="digits")


def _check(source, target, expected: dict[str, str]):
    """Every target tensor (mask, init: weights, biases, BN buffers) is the named source tensor."""
    prefixes = sorted(expected, key=len, reverse=True)
    for key in target.init:
        prefix = next(p for p in prefixes if key.startswith(p))
        src_key = expected[prefix] + key[len(prefix):]
        assert torch.equal(target.init[key], source.init[src_key]), (key, src_key)
        if key in target.masks:
            assert torch.equal(target.masks[key], source.masks[src_key]), (key, src_key)


def _round_trip(source, up):
    back = elastic.squeeze(up, source.arch, strategy="keep-first")
    assert all(torch.equal(back.init[k], source.init[k]) for k in source.init)
    assert all(torch.equal(back.masks[k], source.masks[k]) for k in source.masks)


def test_mlp_stretch_squeeze_and_round_trip():
    src = _ticket("mlp-300x2")
    up = elastic.stretch(src, "mlp-300x4")  # append: the hidden layers B0 B1 become B0 B1 B1 B1
    _check(src, up, {"fc_layers.0.": "fc_layers.0.", "fc_layers.1.": "fc_layers.1.", "fc_layers.2.": "fc_layers.1.",
                     "fc_layers.3.": "fc_layers.1.", "fc_layers.4.": "fc_layers.2.", "fc.": "fc."})
    assert up.transform["reference_mapping"] == "0:0;1:1,2,3;2:4"  # open_lth's fc_layers indices, narrow layer too
    down = elastic.squeeze(up, "mlp-300x3", strategy="spaced")  # 4 -> 3 spaced keeps B0 B2 B3
    _check(up, down, {"fc_layers.0.": "fc_layers.0.", "fc_layers.1.": "fc_layers.2.", "fc_layers.2.": "fc_layers.3.",
                      "fc_layers.3.": "fc_layers.4.", "fc.": "fc."})
    assert down.transform["mapping"] == [[0, 2, 3]]
    _round_trip(src, up)
    with pytest.raises(Exception, match="only its block 0"):  # MLP-1: the input layer alone cannot grow
        elastic.stretch(_ticket("mlp-300x1"), "mlp-300x2")


def test_vgg_fc_stack_stretches_from_a_single_hidden_layer():
    src = _ticket("vgg13-w4-fc2")  # one hidden FC layer: the paper's VGG-13-2
    up = elastic.stretch(src, "vgg13-w4-fc5")
    conv = {p: p for p in archs.block_layout(src.spec).stem}
    _check(src, up, {**conv, "classifier.0.": "classifier.0.", "classifier.2.": "classifier.0.",
                     "classifier.4.": "classifier.0.", "classifier.6.": "classifier.0.", "fc.": "fc."})
    assert up.transform["reference_mapping"] == "0:0,2,4,6"  # the reference's classifier Sequential places
    down = elastic.squeeze(up, "fc3", strategy="spaced")  # 4 -> 2 hidden: the first and the last
    _check(up, down, {**conv, "classifier.0.": "classifier.0.", "classifier.2.": "classifier.6.", "fc.": "fc."})
    _round_trip(src, up)
    with pytest.raises(Exception, match="keep vgg13"):
        elastic.stretch(src, "vgg16-fc5")


def test_imagenet_resnet_at_another_width():
    src = random_ticket("imagenet-resnet18-w16", (3, 64, 64), 10, 0.6, seed=3)
    up = elastic.stretch(src, "resnet34")  # the width is kept: imagenet-resnet34-w16
    assert up.arch == "imagenet-resnet34-w16"
    layout = archs.block_layout(up.spec)
    expected = {"conv1.": "conv1.", "bn1.": "bn1.", "fc.": "fc."}
    for s, stage in enumerate(layout.stages):  # append from 2 blocks per stage: B0 B1 B1 B1 ...
        for j, prefix in enumerate(stage):
            expected[prefix] = f"layer{s + 1}.{min(j, 1)}."
    _check(src, up, expected)
    assert any(k.endswith("running_mean") for k in up.init)  # BN buffers went through the mapping too
    _round_trip(src, up)


def test_mobilenet_v1_stretches_its_512_channel_run():
    src = _ticket("mobilenetv1")  # 5 blocks of 512 channels at stride 1, as cifar_mobilenetv1
    up = elastic.stretch(src, "cifar_mobilenetv1_7")
    fixed = {p: p for p in ("conv.", "bn.", "layers_part1.", "layers_part3.", "fc.")}
    part2 = {f"layers_part2.{j}.": f"layers_part2.{s}." for j, s in enumerate((0, 1, 2, 3, 4, 1, 2))}
    _check(src, up, {**fixed, **part2})
    assert up.transform["reference_mapping"] == "0:0;1:1,5;2:2,6;3:3;4:4"
    assert src.masks["layers_part2.0.conv1.weight"].shape == (512, 1, 3, 3)  # the depthwise conv is masked too
    down = elastic.squeeze(src, "mobilenetv1-3", strategy="spaced")  # B0 B2 B4
    _check(src, down, {**fixed, **{f"layers_part2.{j}.": f"layers_part2.{s}." for j, s in enumerate((0, 2, 4))}})
    _round_trip(src, up)
    grown = elastic.stretch(_ticket("mobilenetv1-1"), "mobilenetv1-3")  # one block: copied, its shape is the others'
    assert grown.transform["mapping"] == [[0, 0, 0]]


def test_a_stretched_mlp_ticket_trains_to_its_targets_own_imp_ticket(tmp_path):
    """MLP-2's IMP ticket stretched to MLP-4 on digits trains to within 3 points of MLP-4's own IMP
    ticket at the same round (the demo shows the band at 89 % and 94.5 %)."""
    from elth_cli import data, train
    from elth_cli.find import ImpOptions, find_imp

    bundle = data.load_dataset("digits")
    tickets = {}
    for arch in ("mlp-300x2", "mlp-300x4"):
        cfg = train.config_from_options(archs.resolve_arch(arch), bundle.info, device="cpu", precision="fp32",
                                        eval_every=0)
        _, tickets[arch] = find_imp(ImpOptions(arch, "digits", rounds=3, rewind="1ep"), cfg, bundle, tmp_path / arch,
                                    handle_signals=False)
    stretched = elastic.stretch(tickets["mlp-300x2"], "mlp-300x4")
    trained = train.train_ticket(stretched, bundle, cfg)
    own = tickets["mlp-300x4"].metrics["test_acc"]
    assert trained.metrics["test_acc"] > 0.9 and abs(trained.metrics["test_acc"] - own) <= 0.03, \
        (trained.metrics["test_acc"], own)
