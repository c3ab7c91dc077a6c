"""torchvision's ResNet at another width: open_lth's ``imagenet_resnet_N_W`` (stages of W, 2W, 4W, 8W).

torchvision fixes the first stage at 64 filters; this subclass sets up the same modules, in the same
order and with the same names, from a width of its own, so its keys are torchvision's. Width 64 is
built with torchvision's class itself.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import ResNet


class WidthResNet(ResNet):
    """A ResNet whose first stage has ``width`` filters (torchvision's layout and names otherwise)."""

    def __init__(self, block: type, layers: list[int], num_classes: int, width: int) -> None:
        nn.Module.__init__(self)  # torchvision's constructor hard-codes 64: set up its attributes here
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
