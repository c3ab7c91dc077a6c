"""ImageNet ResNets with torchvision's ResNet modules and state-dict keys (built without torchvision).

imagenet-resnet18/26/34 use basic blocks (2/2/2/2, 2/3/4/3 as in the E-LTH paper, 3/4/6/3),
imagenet-resnet50/101/152 bottleneck blocks. The ``imagenet-`` prefix keeps them apart from the
CIFAR ResNets (CIFAR resnet50 and resnet152 exist too). open_lth's ``imagenet_resnet_N`` is an alias.
``-wW`` sets the first stage's width (stages of W, 2W, 4W, 8W; 64 is torchvision's), as open_lth's
``imagenet_resnet_N_W``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from elth_cli.archs.base import (
    ArchSpec,
    BlockLayout,
    Family,
    ParamCount,
    ParamTally,
    StateEntry,
    StateTally,
    pool_size,
)
from elth_cli.archs.units import Shape, Units, residual_units
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "imagenet-resnet"
_NAME = re.compile(r"^imagenet-resnet-?(\d+)(?:-w(\d+))?$")
_ALIAS = re.compile(r"^imagenet_resnet_(\d+)(?:_(\d+))?$")

# depth -> (block type, blocks per stage)
PLANS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    26: ("basic", (2, 3, 4, 3)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


DEFAULT_WIDTH = 64


def _spec(depth: int, width: int) -> ArchSpec:
    if depth not in PLANS:
        known = ", ".join(f"imagenet-resnet{d}" for d in PLANS)
        raise UsageError(f"imagenet-resnet{depth} is not a known ImageNet ResNet; known: {known}")
    if width < 1:
        raise UsageError("width must be a positive number of filters, e.g. imagenet-resnet18-w32")
    kind, depths = PLANS[depth]
    name = f"imagenet-resnet{depth}" + ("" if width == DEFAULT_WIDTH else f"-w{width}")
    return ArchSpec(name=name, family=FAMILY_NAME, depths=depths, width=width, variant=kind)


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    return _spec(int(m.group(1)), int(m.group(2)) if m.group(2) else DEFAULT_WIDTH) if m else None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """Targets may be named ``imagenet-resnet34`` or, within this family, just ``resnet34``."""
    m = _NAME.match(name) or _ALIAS.match(name) or re.match(r"^resnet(\d+)$", name)
    if not m:
        return None
    width = m.group(2) if m.lastindex and m.lastindex >= 2 else None
    target = _spec(int(m.group(1)), int(width) if width else source.width)
    if target.variant != source.variant:
        raise UsageError(
            f"{target.name} uses {target.variant} blocks and {source.name} {source.variant} blocks; "
            "blocks of different types cannot be mapped onto each other"
        )
    return target


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's ResNet with ``spec``'s width (``nets.imagenet_resnet_net``: its keys, without torchvision)."""
    in_channels = input_shape[0]
    # Imported here: the modules need torch, and resolving names or counting parameters must not.
    from torch import nn

    from elth_cli.archs.nets.imagenet_resnet_net import BasicBlock, Bottleneck, ResNet

    block = BasicBlock if spec.variant == "basic" else Bottleneck
    # torchvision's pass at width 64 only, and conv1 replaced after the fact: the random draws (and so a
    # seeded model) are those of torchvision's class and of the WidthResNet the family used before.
    model = ResNet(block, list(spec.depths), num_classes, spec.width, torchvision_init=spec.width == DEFAULT_WIDTH)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, spec.width, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The parameters and forward MACs of ``build(spec, ...)``, following torchvision's ResNet (groups=1,
    base width 64, v1.5: a bottleneck downsamples in its 3x3 conv)."""
    expansion, w = (1 if spec.variant == "basic" else 4), spec.width
    tally = ParamTally()
    size = tally.conv(input_shape[0], w, 7, input_shape[1:], stride=2, padding=3)
    tally.bn(w)
    size = pool_size(size, 3, stride=2, padding=1)
    inplanes = w
    for stage, n in enumerate(spec.depths):
        planes = w * 2**stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            # (f_in, f_out, kernel, stride, padding), applied in sequence from the block's input.
            if spec.variant == "basic":
                convs = [(inplanes, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
            else:
                convs = [(inplanes, planes, 1, 1, 0), (planes, planes, 3, stride, 1),
                         (planes, planes * expansion, 1, 1, 0)]
            out = size
            for f_in, f_out, kernel, s, pad in convs:
                out = tally.conv(f_in, f_out, kernel, out, stride=s, padding=pad)
                tally.bn(f_out)
            # torchvision's downsample (1x1 conv + BN, on the block's input) where the shape changes.
            if stride != 1 or inplanes != planes * expansion:
                tally.conv(inplanes, planes * expansion, 1, size, stride=stride)
                tally.bn(planes * expansion)
            inplanes, size = planes * expansion, out
    tally.linear(8 * w * expansion, num_classes)
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)`` in torchvision's order (``nets.imagenet_resnet_net``), without
    building it: conv1, bn1, then per block its convs and BNs and, where the shape changes, ``downsample``."""
    expansion, w = (1 if spec.variant == "basic" else 4), spec.width
    tally = StateTally()
    tally.conv("conv1", input_shape[0], w, 7)
    tally.bn("bn1", w)
    inplanes = w
    for stage, n in enumerate(spec.depths):
        planes = w * 2**stage
        for b in range(n):
            p = f"layer{stage + 1}.{b}."
            # (f_in, f_out, kernel) of conv1, conv2(, conv3), each followed by its BN.
            if spec.variant == "basic":
                convs = [(inplanes, planes, 3), (planes, planes, 3)]
            else:
                convs = [(inplanes, planes, 1), (planes, planes, 3), (planes, planes * expansion, 1)]
            for j, (f_in, f_out, kernel) in enumerate(convs, start=1):
                tally.conv(f"{p}conv{j}", f_in, f_out, kernel)
                tally.bn(f"{p}bn{j}", f_out)
            if (stage > 0 and b == 0) or inplanes != planes * expansion:
                tally.conv(p + "downsample.0", inplanes, planes * expansion, 1)
                tally.bn(p + "downsample.1", planes * expansion)
            inplanes = planes * expansion
    tally.linear("fc", 8 * w * expansion, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    stages = tuple(tuple(f"layer{s + 1}.{b}." for b in range(n)) for s, n in enumerate(spec.depths))
    return BlockLayout(stem=("conv1.", "bn1."), stages=stages, head=("fc.",))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """Channels: the stem's, each stage's (torchvision's downsample starts a new group), and each block's inner
    convs' (two in a bottleneck, one in a basic block)."""
    pairs = ["1", "2"] if spec.variant == "basic" else ["1", "2", "3"]
    blocks = [(f"layer{s + 1}.{b}.", pairs) for s, n in enumerate(spec.depths) for b in range(n)]
    return residual_units(shapes, ("conv1.", "bn1."), blocks, ("downsample.0.", "downsample.1."))


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=tuple(f"imagenet-resnet{d}" for d in PLANS),
    default_exclude=(),
    recipe="imagenet",
    native_input=((3, 224, 224), 1000),
    reference_prefix="model.",
    reference_mapping="per-stage",
    units=units,
    state=state,
)
