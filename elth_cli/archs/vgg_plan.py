"""The CIFAR VGG plan (convolutions per stage, stage widths), free of torch.

Kept apart from ``vgg`` (the family record) and ``nets.vgg`` (the modules) so both read one
plan without importing each other.
"""

from __future__ import annotations

CONVS_PER_STAGE: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
# Stage widths as multiples of W: W, 2W, 4W, 8W, 8W.
STAGE_SCALE: tuple[int, ...] = (1, 2, 4, 8, 8)
