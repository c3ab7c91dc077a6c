"""torchvision's ImageNet ResNet (v1.5), without torchvision: open_lth's ``imagenet_resnet_N[_W]``.

``ResNet``, ``BasicBlock`` and ``Bottleneck`` set up torchvision's modules with its names, in its order
and with its shapes (``torchvision.models.resnet``, groups 1, base width 64, no dilation): ticket files and
open_lth's checkpoints hold these keys, and torchvision's weights load into them strictly. The first stage
has ``width`` filters (64: torchvision's; stages of W, 2W, 4W, 8W). Importing torchvision's module would
import all of ``torchvision.models`` and ``torch._dynamo`` (seconds); this one needs torch alone.

Construction draws from torch's random generator exactly as the classes it replaces did (torchvision's
``ResNet`` at width 64, with its Kaiming-normal pass; ``WidthResNet``, without it, at other widths), so a
seeded model is what it was before.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(f_in: int, f_out: int, stride: int = 1) -> nn.Conv2d:
    """torchvision's 3x3 convolution: padding 1, no bias."""
    return nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(f_in: int, f_out: int, stride: int = 1) -> nn.Conv2d:
    """torchvision's 1x1 convolution: no bias."""
    return nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; the stride in the first; ``downsample`` (1x1 conv + BN) on the shortcut or None."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (the stride: v1.5), 1x1 up to ``4 * planes``, each with BN; ``downsample`` as BasicBlock's."""

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """conv1 (7x7, stride 2) -> bn1 -> relu -> maxpool -> layer1..layer4 -> avgpool -> fc, as torchvision's.

    ``torchvision_init``: end with torchvision's pass (Kaiming-normal conv weights, fan-out; BN 1 and 0).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 width: int = 64, torchvision_init: bool = True) -> None:
        super().__init__()
        self.inplanes = width
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
        if torchvision_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        """One stage: the downsample (built first, as torchvision does) where the shape changes, then the blocks."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
