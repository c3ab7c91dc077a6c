"""The CIFAR VGG modules of open_lth (``cifar_vgg_N`` state-dict keys).

Verified against open_lth tensor for tensor: keys, parameter order and shapes must not change.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# The stage widths live with the torch-free plan so the family record can count without torch.
from elth_cli.archs.vgg_plan import STAGE_SCALE as _STAGE_SCALE


class ConvModule(nn.Module):
    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """open_lth's CIFAR VGG; max-pools use ceil_mode so inputs smaller than 32x32 (digits) still fit."""

    def __init__(self, depths: tuple[int, ...], width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        filters = in_channels
        for stage, n in enumerate(depths):
            if stage > 0:
                # ceil_mode keeps a 1x1 map at 1x1; on even sizes it equals open_lth's pooling.
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            for _ in range(n):
                layers.append(ConvModule(filters, width * _STAGE_SCALE[stage]))
                filters = width * _STAGE_SCALE[stage]
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class CifarVGGFC(CifarVGG):
    """A CIFAR VGG with ``hidden`` fully connected layers of the last stage's width before ``fc``
    (ElasticLTH's cifar_vggnfc: ``classifier`` holds Linear, ReLU pairs, so its Linears sit at even places)."""

    def __init__(self, depths: tuple[int, ...], width: int, in_channels: int, num_classes: int, hidden: int) -> None:
        super().__init__(depths, width, in_channels, num_classes)
        features = self.fc.in_features
        del self.fc  # re-added after the hidden layers: parameters in the reference's order
        layers: list[nn.Module] = []
        for _ in range(hidden):
            layers += [nn.Linear(features, features), nn.ReLU()]
        self.classifier = nn.Sequential(*layers)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.classifier(x))
