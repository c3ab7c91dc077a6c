"""ImageNet ResNets built on torchvision's ResNet class, so state-dict keys are torchvision's.

imagenet-resnet18/26/34 use basic blocks (2/2/2/2, 2/3/4/3 as in the E-LTH paper, 3/4/6/3),
imagenet-resnet50/101/152 bottleneck blocks. The ``imagenet-`` prefix keeps them apart from the
CIFAR ResNets (CIFAR resnet50 and resnet152 exist too). open_lth's ``imagenet_resnet_N`` is an alias.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from elth_cli.archs.base import ArchSpec, BlockLayout, Family, ParamCount, ParamTally, pool_size
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


def _spec(depth: int, width: str | None) -> ArchSpec:
    if depth not in PLANS:
        known = ", ".join(f"imagenet-resnet{d}" for d in PLANS)
        raise UsageError(f"imagenet-resnet{depth} is not a known ImageNet ResNet; known: {known}")
    if width is not None and int(width) != 64:
        raise UsageError("ImageNet ResNets come at torchvision's width only; drop the -wW suffix")
    kind, depths = PLANS[depth]
    return ArchSpec(name=f"imagenet-resnet{depth}", family=FAMILY_NAME, depths=depths, width=64, variant=kind)


def parse(name: str) -> ArchSpec | None:
    m = _NAME.match(name) or _ALIAS.match(name)
    return _spec(int(m.group(1)), m.group(2)) if m else None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """Targets may be named ``imagenet-resnet34`` or, within this family, just ``resnet34``."""
    m = _NAME.match(name) or _ALIAS.match(name) or re.match(r"^resnet(\d+)$", name)
    if not m:
        return None
    target = _spec(int(m.group(1)), m.group(2) if m.lastindex and m.lastindex >= 2 else None)
    if target.variant != source.variant:
        raise UsageError(
            f"{target.name} uses {target.variant} blocks and {source.name} {source.variant} blocks; "
            "blocks of different types cannot be mapped onto each other"
        )
    return target


def build(spec: ArchSpec, in_channels: int, num_classes: int) -> nn.Module:
    # Imported here: torch and torchvision.models take seconds to import, and most runs never need them.
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = BasicBlock if spec.variant == "basic" else Bottleneck
    model = ResNet(block, list(spec.depths), num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The parameters and forward MACs of ``build(spec, ...)``, following torchvision's ResNet (groups=1,
    base width 64, v1.5: a bottleneck downsamples in its 3x3 conv)."""
    expansion = 1 if spec.variant == "basic" else 4
    tally = ParamTally()
    size = tally.conv(input_shape[0], 64, 7, input_shape[1:], stride=2, padding=3)
    tally.bn(64)
    size = pool_size(size, 3, stride=2, padding=1)
    inplanes = 64
    for stage, n in enumerate(spec.depths):
        planes = 64 * 2**stage
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
    tally.linear(512 * expansion, num_classes)
    return tally.total()


def layout(spec: ArchSpec) -> BlockLayout:
    stages = tuple(tuple(f"layer{s + 1}.{b}." for b in range(n)) for s, n in enumerate(spec.depths))
    return BlockLayout(stem=("conv1.", "bn1."), stages=stages, head=("fc.",))


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
)
