"""Family.state and archs.state_shapes: every built-in family's state dict worked out from its spec equals its
model's, key for key and in order; reading it needs no torch; the ImageNet ResNets are torchvision's without it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from elth_cli import archs
from elth_cli.archs import StateEntry, StateShapes

ROOT = Path(__file__).resolve().parents[1]

_STANDARD = [(s.name, *archs.family_of(s).native_input) for s in archs.standard_archs() if s.family != "timm"]
_OTHERS = [
    ("resnet8", (3, 32, 32), 10), ("resnet20-w4", (3, 32, 32), 10), ("resnet32-w3", (1, 8, 8), 100),
    ("resnet56-w8", (3, 32, 32), 10),
    ("imagenet-resnet18", (1, 64, 64), 10), ("imagenet-resnet50", (1, 32, 32), 10),
    ("imagenet-resnet18-w32", (3, 224, 224), 1000), ("imagenet-resnet50-w16", (2, 32, 32), 7),
    ("vgg16", (1, 28, 28), 10), ("vgg11-w4", (1, 8, 8), 10), ("vgg13-w16-fc5", (1, 28, 28), 10),
    ("mlp-300x2", (1, 8, 8), 10), ("mlp-300-200-100", (3, 32, 32), 100), ("mlp-64x3-20", (1, 28, 28), 7),
    ("vit-d2-w16-h2-p2", (1, 8, 8), 10), ("vit-d3-w48-h3-p8", (3, 64, 32), 100), ("vit-tiny-p16", (3, 224, 224), 1000),
    ("mobilenetv1", (3, 32, 32), 100), ("mobilenetv1-2", (1, 28, 28), 7),
]


def _from_model(spec: archs.ArchSpec, shape: tuple[int, int, int], classes: int) -> list[StateEntry]:
    """The state dict of the model itself, built on the meta device, as StateEntry rows."""
    state, prunable = archs.meta_state(lambda: archs.family_of(spec).build(spec, shape, classes))
    return [StateEntry(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), k in prunable) for k, v in state.items()]


@pytest.mark.parametrize("name, shape, classes", _STANDARD + _OTHERS, ids=lambda v: str(v))
def test_family_state_is_the_models(name, shape, classes):
    spec = archs.resolve_arch(name)
    family = archs.family_of(spec)
    assert family.state is not None, f"{family.name} has no state"
    entries = family.state(spec, shape, classes)
    model = _from_model(spec, shape, classes)
    assert [e.key for e in entries] == [e.key for e in model]  # same keys, same order
    assert entries == model  # shapes, dtypes and prunable too
    found = archs.state_shapes(spec, shape, classes)
    assert isinstance(found, StateShapes)
    assert list(found.shapes.items()) == [(e.key, e.shape) for e in model]
    assert found.dtypes == {e.key: e.dtype for e in model}
    _, prunable = archs.meta_state(lambda: family.build(spec, shape, classes))
    assert found.prunable == tuple(prunable)


def test_expected_state_and_prunable_keys_keep_their_types():
    spec = archs.resolve_arch("resnet8-w4")
    expected = archs.expected_state(spec, [1, 8, 8], 10)  # a list is taken as well as a tuple
    state = archs.build_model(spec, (1, 8, 8), 10, seed=0).state_dict()
    assert list(expected) == list(state)
    assert all(expected[k] == (tuple(v.shape), v.dtype) for k, v in state.items())
    assert expected["bn.num_batches_tracked"] == ((), torch.int64)
    assert archs.prunable_keys(spec, (1, 8, 8), 10) == archs.prunable_keys_of(archs.build_model(spec, (1, 8, 8), 10))


def test_a_family_without_state_is_read_off_its_model():
    original = archs.FAMILIES["mlp"]
    spec = archs.resolve_arch("mlp-32x2")
    archs.FAMILIES["mlp"] = dataclasses.replace(original, state=None)
    try:
        archs._state_shapes.cache_clear()
        from_model = archs.state_shapes(spec, (1, 8, 8), 10)
    finally:
        archs.FAMILIES["mlp"] = original
        archs._state_shapes.cache_clear()
    assert from_model == archs.state_shapes(spec, (1, 8, 8), 10)
    assert from_model.dtypes["fc.weight"] == "float32"


def test_state_shapes_needs_no_torch():
    names = [n for n, _, _ in _STANDARD + _OTHERS]
    code = (
        "import sys\nfrom elth_cli import archs\n"
        f"for name, shape, classes in {[(n, s, c) for n, s, c in _STANDARD + _OTHERS]!r}:\n"
        "    found = archs.state_shapes(archs.resolve_arch(name), shape, classes)\n"
        "    assert found.prunable and found.shapes\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    assert len(names) > 30
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_imagenet_resnet_build_does_not_import_torchvision():
    code = (
        "import sys\nfrom elth_cli import archs\n"
        "archs.build_model(archs.resolve_arch('imagenet-resnet18-w8'), (3, 32, 32), 10, seed=0)\n"
        "print('torchvision' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


# ImageNet ResNets: ours against torchvision's.
tv = pytest.importorskip("torchvision.models.resnet")


class _OldWidthResNet(tv.ResNet):
    """The family's width-W ResNet before it dropped torchvision (a subclass of torchvision's, without its init
    pass), kept here to check the keys, shapes and random draws of ours against it."""

    def __init__(self, block: type, layers: list[int], num_classes: int, width: int) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)


def _old_build(spec: archs.ArchSpec, shape: tuple[int, int, int], classes: int) -> nn.Module:
    """What ``imagenet_resnet.build`` did with torchvision's classes."""
    block = tv.BasicBlock if spec.variant == "basic" else tv.Bottleneck
    if spec.width == 64:
        model = tv.ResNet(block, list(spec.depths), num_classes=classes)
    else:
        model = _OldWidthResNet(block, list(spec.depths), classes, spec.width)
    if shape[0] != 3:
        model.conv1 = nn.Conv2d(shape[0], spec.width, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@pytest.mark.parametrize("name, reference", [("imagenet-resnet18", "resnet18"), ("imagenet-resnet50", "resnet50")])
def test_imagenet_resnet_is_torchvisions(name, reference):
    theirs = getattr(tv, reference)()
    ours = archs.build_model(archs.resolve_arch(name), (3, 224, 224), 1000, seed=0)
    a, b = theirs.state_dict(), ours.state_dict()
    assert [(k, tuple(v.shape)) for k, v in a.items()] == [(k, tuple(v.shape)) for k, v in b.items()]
    assert [n for n, _ in theirs.named_modules()] == [n for n, _ in ours.named_modules()]
    with torch.no_grad():  # not at their defaults, so that BatchNorm's statistics count
        for k, v in a.items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else v + 0.01 * torch.randn_like(v))
    ours.load_state_dict(a, strict=True)
    theirs.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, shape, classes", [("imagenet-resnet18-w8", (3, 32, 32), 10),
                                                  ("imagenet-resnet50-w16", (1, 32, 32), 7),
                                                  ("imagenet-resnet18", (1, 32, 32), 10)])
def test_imagenet_resnet_is_what_it_was(name, shape, classes):
    """Keys, order, shapes and a seeded model's very values equal the torchvision-based build's."""
    spec = archs.resolve_arch(name)
    for initialise in (False, True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            old = _old_build(spec, shape, classes)
            if initialise:
                old.apply(archs.open_lth_init)
        new = archs.build_model(spec, shape, classes, seed=5, initialise=initialise)
        a, b = old.state_dict(), new.state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    old.eval(), new.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
