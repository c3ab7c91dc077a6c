"""The CIFAR MobileNet-V1 of ElasticLTH (``cifar_mobilenetv1_N`` state-dict keys)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SeparableBlock(nn.Module):
    """A depthwise 3x3 conv and a pointwise 1x1 conv, each with BN and ReLU (and a ReLU after, as the reference)."""

    def __init__(self, f_in: int, f_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_in, kernel_size=3, stride=stride, padding=1, groups=f_in, bias=False)
        self.bn1 = nn.BatchNorm2d(f_in)
        self.conv2 = nn.Conv2d(f_in, f_out, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(F.relu(self.bn2(self.conv2(out))))


def _blocks(channels: int, plan: tuple[tuple[int, int], ...]) -> tuple[nn.Sequential, int]:
    layers = []
    for out, stride in plan:
        layers.append(SeparableBlock(channels, out, stride))
        channels = out
    return nn.Sequential(*layers), channels


class CifarMobileNetV1(nn.Module):
    """conv -> part 1 (to 512) -> ``blocks`` x 512 at stride 1 -> part 3 (to 1024) -> pool -> fc."""

    def __init__(self, in_channels: int, num_classes: int, blocks: int, part1: tuple[tuple[int, int], ...],
                 part3: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.layers_part1, channels = _blocks(32, part1)
        self.layers_part2, channels = _blocks(channels, ((512, 1),) * blocks)
        self.layers_part3, channels = _blocks(channels, part3)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers_part3(self.layers_part2(self.layers_part1(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
