"""The fully connected network of open_lth's ``mnist_lenet_*`` (its state-dict keys), on any input size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``in_features`` -> each of ``sizes`` (the hidden layers, then the narrow one) -> classes, ReLU between
    (open_lth's LeNet)."""

    def __init__(self, in_features: int, sizes: list[int], num_classes: int) -> None:
        super().__init__()
        layers, current = [], in_features
        for size in sizes:
            layers.append(nn.Linear(current, size))
            current = size
        self.fc_layers = nn.ModuleList(layers)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)
