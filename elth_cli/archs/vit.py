"""Vision transformers (Dosovitskiy et al. 2021), pre-norm, with timm's ``VisionTransformer`` state-dict keys.

``vit-d{depth}-w{width}-h{heads}-p{patch}``: a patch embedding (a Conv2d with kernel = stride = patch,
``patch_embed.proj``), a class token ``cls_token`` (1 x 1 x width) and a learned position embedding
``pos_embed`` (1 x (1 + patches) x width), ``depth`` encoder blocks ``blocks.i`` (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, GELU, ``mlp.fc2``; MLP ratio 4), a final ``norm`` and the classifier
``head`` on the class token.

Defaults: ``-h`` the most heads, up to width // 64, that divide the width (head dim 64, as ViT-Ti/S/B;
one head below width 128); ``-p`` 4 (CIFAR's 32x32 makes 8x8 patches; 2 suits digits' 8x8, 16 ImageNet's
224x224). The canonical name spells all four: ``vit-d4-w64`` is ``vit-d4-w64-h1-p4``. ``vit-tiny``,
``vit-small`` and ``vit-base`` are depth 12 at width 192, 384, 768 with 3, 6, 12 heads (``vit-tiny-p16``
for another patch). A model is built for one input size: its height and width must be multiples of the
patch (the position embedding has one row per patch).

The blocks are the one stage that stretches and squeezes; they all have one shape, so block 0 may be
copied or dropped like the others. The stem (``patch_embed``, ``cls_token``, ``pos_embed``) and the head
(``norm``, ``head``) are copied unchanged. Every Linear weight and the patch embedding's conv weight are
prunable; the embeddings, norms and biases are not. The model initialises itself (``init="model"``:
truncated normal, std 0.02).
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
)
from elth_cli.archs.units import Probe, Shape, Units, UnitsBuilder, numbered
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "vit"
DEFAULT_PATCH = 4
HEAD_DIM = 64  # what the default number of heads aims at
MLP_RATIO = 4
MAX_DEPTH = 64
# The well-known sizes (timm's vit_tiny/small/base): depth, width, heads.
SIZES = {"tiny": (12, 192, 3), "small": (12, 384, 6), "base": (12, 768, 12)}
# Every field optional here; a full name needs depth and width, a target only its depth.
_NAME = re.compile(r"^vit-d(\d+)(?:-w(\d+))?(?:-h(\d+))?(?:-p(\d+))?$")
_ALIAS = re.compile(r"^vit-(tiny|small|base)(?:-p(\d+))?$")
_VARIANT = re.compile(r"^h(\d+)-p(\d+)$")
GRAMMAR = ("vit-d{depth}-w{width}[-h{heads}][-p{patch}] (e.g. vit-d4-w64-h4-p2) or vit-tiny, vit-small, "
           "vit-base[-p{patch}]")


def default_heads(width: int) -> int:
    """The most heads, up to width // 64, that divide the width (at least one)."""
    heads = max(1, width // HEAD_DIM)
    while width % heads:
        heads -= 1
    return heads


def _spec(depth: int, width: int, heads: int | None, patch: int | None) -> ArchSpec:
    if not 1 <= depth <= MAX_DEPTH:
        raise UsageError(f"a ViT has 1 to {MAX_DEPTH} blocks, got {depth}")
    if width < 1:
        raise UsageError("a ViT's width must be a positive number of features, e.g. vit-d4-w64")
    heads = default_heads(width) if heads is None else heads
    if not 1 <= heads <= width or width % heads:
        raise UsageError(f"a ViT's width must be a multiple of its number of heads: width {width} does not split "
                         f"into {heads} heads (try -h{default_heads(width)})")
    patch = DEFAULT_PATCH if patch is None else patch
    if patch < 1:
        raise UsageError("a ViT's patch size must be a positive number of pixels, e.g. vit-d4-w64-p4")
    name = f"vit-d{depth}-w{width}-h{heads}-p{patch}"
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(depth,), width=width, variant=f"h{heads}-p{patch}")


def _number(text: str | None) -> int | None:
    return int(text) if text else None


def _or(given: int | None, otherwise: int | None) -> int | None:
    return otherwise if given is None else given


def heads(spec: ArchSpec) -> int:
    return int(_VARIANT.match(spec.variant).group(1))


def patch(spec: ArchSpec) -> int:
    return int(_VARIANT.match(spec.variant).group(2))


def parse(name: str) -> ArchSpec | None:
    m = _ALIAS.match(name)
    if m:
        depth, width, n_heads = SIZES[m.group(1)]
        return _spec(depth, width, n_heads, _number(m.group(2)))
    m = _NAME.match(name)
    if m and m.group(2):
        return _spec(int(m.group(1)), int(m.group(2)), _number(m.group(3)), _number(m.group(4)))
    if name == "vit" or name.startswith("vit-"):
        missing = " (it names no width)" if m else ""
        raise UsageError(f"{name!r} is not a ViT name{missing}; a ViT is {GRAMMAR}")
    return None


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """``vit-d8`` keeps the source's width, heads and patch; a field left out of any ViT name is the source's.
    A target with other heads or another patch size is refused: the transformations change depth only."""
    m = _NAME.match(name)
    if m:
        width = _or(_number(m.group(2)), source.width)
        n_heads = _or(_number(m.group(3)), heads(source) if width == source.width else None)
        target = _spec(int(m.group(1)), width, n_heads, _or(_number(m.group(4)), patch(source)))
    else:
        m = _ALIAS.match(name)
        if not m:
            return parse(name)
        depth, width, n_heads = SIZES[m.group(1)]
        target = _spec(depth, width, n_heads, _or(_number(m.group(2)), patch(source)))
    if target.width == source.width:
        for what, get in (("heads", heads), ("patch size", patch)):
            if get(target) != get(source):
                raise UsageError(f"target {target.name} has {what} {get(target)} but the source {source.name} has "
                                 f"{get(source)}; elastic transformations change depth, not {what}")
    return target


def grid(spec: ArchSpec, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The patches along height and width of a (channels, height, width) input; refuses a size the patch
    does not divide."""
    p, (_, h, w) = patch(spec), input_shape
    if h % p or w % p:
        fits = [n for n in range(2, min(h, w) + 1) if h % n == 0 and w % n == 0][:4]
        hint = f" (-p{', -p'.join(map(str, fits))} {'fits' if len(fits) == 1 else 'fit'})" if fits else ""
        raise UsageError(f"{spec.name} cuts its input into {p}x{p} patches, but the input is {h}x{w}: its height "
                         f"and width must be multiples of {p}; pick another patch size{hint}")
    return h // p, w // p


def tokens(spec: ArchSpec, input_shape: tuple[int, int, int]) -> int:
    """The sequence length: the class token and one token per patch."""
    gh, gw = grid(spec, input_shape)
    return 1 + gh * gw


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    n_tokens = tokens(spec, input_shape)
    from elth_cli.archs.nets.vit_net import VisionTransformer

    return VisionTransformer(input_shape[0], n_tokens - 1, patch(spec), spec.width, spec.depths[0], heads(spec),
                             MLP_RATIO * spec.width, num_classes)


def count(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ParamCount:
    """The parameters and forward MACs of ``build(spec, ...)``, layer by layer as ``nets.vit_net`` has them."""
    n, d, p = tokens(spec, input_shape), spec.width, patch(spec)
    hidden = MLP_RATIO * d
    tally = ParamTally()
    tally.conv(input_shape[0], d, p, input_shape[1:], stride=p, bias=True)
    tally.tensor(d)  # cls_token
    tally.tensor(n * d)  # pos_embed
    for _ in range(spec.depths[0]):
        tally.norm(d)
        tally.linear(d, 3 * d, n)  # qkv
        tally.attention(n, d)  # Q K^T and attn @ V
        tally.linear(d, d, n)  # proj
        tally.norm(d)
        tally.linear(d, hidden, n)
        tally.linear(hidden, d, n)
    tally.norm(d)
    tally.linear(d, num_classes)  # on the class token alone
    return tally.total()


def state(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> list[StateEntry]:
    """The state dict of ``build(spec, ...)`` (``nets.vit_net``): the model's own ``cls_token`` and ``pos_embed``
    first (a module's parameters come before its children's), then ``patch_embed``, the blocks, ``norm``, ``head``."""
    n, d = tokens(spec, input_shape), spec.width
    hidden = MLP_RATIO * d
    tally = StateTally()
    tally.tensor("cls_token", (1, 1, d))
    tally.tensor("pos_embed", (1, n, d))
    tally.conv("patch_embed.proj", input_shape[0], d, patch(spec), bias=True)
    for i in range(spec.depths[0]):
        p = f"blocks.{i}."
        tally.norm(p + "norm1", d)
        tally.linear(p + "attn.qkv", d, 3 * d)
        tally.linear(p + "attn.proj", d, d)
        tally.norm(p + "norm2", d)
        tally.linear(p + "mlp.fc1", d, hidden)
        tally.linear(p + "mlp.fc2", hidden, d)
    tally.norm("norm", d)
    tally.linear("head", d, num_classes)
    return tally.done()


def layout(spec: ArchSpec) -> BlockLayout:
    blocks = tuple(f"blocks.{i}." for i in range(spec.depths[0]))
    return BlockLayout(stem=("patch_embed.", "cls_token", "pos_embed"), stages=(blocks,), head=("norm.", "head."),
                       free_first=(True,))


def units(spec: ArchSpec, shapes: dict[str, Shape]) -> Units:
    """The units of a ViT with timm's keys (:func:`transformer_units`) and ``spec``'s heads."""
    return transformer_units(shapes, heads(spec))


def transformer_units(shapes: dict[str, Shape], n_heads: int) -> Units:
    """The residual stream's features (patch embedding, class token, position embedding, every norm, every
    block's attention output and MLP output, the classifier's input: one group, since every block adds into
    it and LayerNorm treats its features alike), each block's heads (moved whole: queries, keys and values of a
    head and its slice of the output projection; a head's dimensions stay in order) and each block's MLP
    hidden features."""
    b = UnitsBuilder(shapes)
    blocks = numbered(shapes, "blocks.", ".attn.qkv.weight")
    resid = b.group("residual", size_of="patch_embed.proj.weight",
                    probes=(Probe("patch_embed", axis=-1), *(Probe(f"blocks.{i}", axis=-1) for i in blocks)))
    b.conv("patch_embed.proj.", None, resid)
    for key in ("cls_token", "pos_embed"):
        b.tensor(key, (None, None, resid))
    for i in blocks:
        p = f"blocks.{i}."
        b.norm(p + "norm1.", resid)
        head_dim = shapes[p + "attn.proj.weight"][1] // n_heads
        g = b.group(p + "attn.heads", size=n_heads, unit_dims=head_dim,
                    probes=(Probe(p + "attn.proj", where="in", axis=-1),))
        b.linear(p + "attn.qkv.", resid, g)  # its outputs: queries, keys and values, three copies of the heads
        b.linear(p + "attn.proj.", g, resid)
        b.norm(p + "norm2.", resid)
        hidden = b.group(p + "mlp.hidden", size_of=p + "mlp.fc1.weight", probes=(Probe(p + "mlp.fc1", axis=-1),))
        b.linear(p + "mlp.fc1.", resid, hidden)
        b.linear(p + "mlp.fc2.", hidden, resid)
    b.norm("norm.", resid)
    b.linear("head.", resid, None)
    return b.done()


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=count,
    resolve_target=resolve_target,
    standard_names=("vit-d4-w64-h4", "vit-d8-w64-h4", "vit-d6-w192", "vit-tiny", "vit-small", "vit-base"),
    default_exclude=(),
    recipe="vit",
    native_input=((3, 32, 32), 10),
    init="model",
    reference_mapping="none",  # ElasticLTH has no ViT
    units=units,
    state=state,
)
