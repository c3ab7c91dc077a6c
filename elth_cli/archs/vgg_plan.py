"""The CIFAR VGG plan (convolutions per stage, stage widths), free of torch.

Kept apart from ``vgg`` (the family record) and ``nets.vgg_net`` (the modules) so both read one
plan without importing each other.
"""

from __future__ import annotations

from elth_cli.archs.base import ParamTally, StateTally, pool_size

CONVS_PER_STAGE: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
# Stage widths as multiples of W: W, 2W, 4W, 8W, 8W.
STAGE_SCALE: tuple[int, ...] = (1, 2, 4, 8, 8)


def tally_convs(tally: ParamTally, convs_per_stage: tuple[int, ...], width: int,
                input_shape: tuple[int, int, int]) -> int:
    """Count VGG's convolutions into ``tally``: 3x3 convs (pad 1, with bias) + BN, a 2x2 ceil-mode
    max-pool before every stage but the first. Returns the channels of the last stage."""
    filters, size = input_shape[0], input_shape[1:]
    for stage, n in enumerate(convs_per_stage):
        if stage > 0:
            size = pool_size(size, 2, stride=2, ceil_mode=True)
        for _ in range(n):
            size = tally.conv(filters, width * STAGE_SCALE[stage], 3, size, padding=1, bias=True)
            tally.bn(width * STAGE_SCALE[stage])
            filters = width * STAGE_SCALE[stage]
    return filters


def state_convs(tally: StateTally, convs_per_stage: tuple[int, ...], width: int, in_channels: int) -> int:
    """Write VGG's convolutions into ``tally`` (``layers.<i>.conv`` with bias, ``layers.<i>.bn``; each max-pool
    before a stage takes an index too, as in ``nn.Sequential``). Returns the channels of the last stage."""
    filters, index = in_channels, 0
    for stage, n in enumerate(convs_per_stage):
        if stage > 0:
            index += 1  # the max-pool
        for _ in range(n):
            tally.conv(f"layers.{index}.conv", filters, width * STAGE_SCALE[stage], 3, bias=True)
            tally.bn(f"layers.{index}.bn", width * STAGE_SCALE[stage])
            filters, index = width * STAGE_SCALE[stage], index + 1
    return filters
