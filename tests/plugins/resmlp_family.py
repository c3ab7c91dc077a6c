"""A family defined outside elth, for the plugin tests: a residual MLP whose hidden blocks stretch."""

from __future__ import annotations

import re

from torch import nn

from elth_cli.archs import ArchSpec, BlockLayout, Family


class ResMLP(nn.Module):
    def __init__(self, inputs: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())
                                    for _ in range(depth))
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        x = self.inp(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def parse(name: str) -> ArchSpec | None:
    m = re.fullmatch(r"testmlp(\d+)-w(\d+)", name)
    return ArchSpec(name=name, family="testmlp", depths=(int(m[1]),), width=int(m[2])) if m else None


def build(spec: ArchSpec, shape: tuple[int, int, int], classes: int) -> nn.Module:
    return ResMLP(shape[0] * shape[1] * shape[2], spec.width, spec.depths[0], classes)


def layout(spec: ArchSpec) -> BlockLayout:
    return BlockLayout(stem=("inp.",), stages=(tuple(f"blocks.{i}." for i in range(spec.depths[0])),),
                       head=("out.",), free_first=(True,))


FAMILY = Family(name="testmlp", parse=parse, build=build, layout=layout, standard_names=("testmlp4-w32",),
                recipe="digits", native_input=((1, 8, 8), 10))
