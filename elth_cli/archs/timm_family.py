"""timm's vision transformers as a family (the optional extra ``elth[timm]``): ``timm:<model>`` and
``timm:<model>-d<N>``.

timm's model zoo is the standard source of transformer architectures; any model name whose timm
entrypoint builds a ``timm.models.vision_transformer.VisionTransformer`` (``vit_*``, ``deit_*``, their
register-token, distilled and pooled variants) is a member. ``timm:vit_tiny_patch16_224`` is the model at
its own depth, ``timm:vit_tiny_patch16_224-d6`` the same model with 6 blocks. The model is built with
``timm.create_model(name, pretrained=False, depth=N, img_size=(H, W), in_chans=C, num_classes=K)``:
timm's own initialisation, never a download. The transformer blocks (``blocks.{i}.``) are the one stage
that stretches and squeezes, every block alike (block 0 included); the stem is everything before them
(the patch embedding, the class, register and distillation tokens, the position embedding), the head
everything after (the final norms, the pooling, the classifiers).

Nothing here imports torch or timm when the module is imported: a name that does not start with
``timm:`` is never handed to timm, and a ``timm:`` name imports it on first use.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from elth_cli.archs.base import ArchSpec, BlockLayout, Family
from elth_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

FAMILY_NAME = "timm"
PREFIX = "timm:"
_NAME = re.compile(r"^timm:([a-z0-9_]+)(?:\.[a-z0-9_]+)?(?:-d(\d+))?$")
_TARGET = re.compile(r"^-?d(\d+)$")
# Top-level modules after the blocks: the final norms, attention pooling and the classifiers.
HEAD_MODULES = ("norm", "fc_norm", "attn_pool", "head", "head_dist", "head_drop")
MAX_DEPTH = 256
SUPPORTED = ("timm's VisionTransformer models (vit_*, deit_*, e.g. timm:vit_tiny_patch16_224, "
             "timm:deit_small_patch16_224-d4)")
INSTALL = "timm is not installed: pip install 'elth[timm]' (or pip install timm)"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UsageError(INSTALL) from None
    return timm


@functools.lru_cache(maxsize=64)
def _probe(model: str) -> tuple[int, int, tuple[str, ...]]:
    """``(its own depth, embed dim, top-level state-dict names)`` of a timm model, built on the meta device;
    a model that is not timm's VisionTransformer is refused."""
    timm = _timm()
    import torch
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(model):
        raise UsageError(f"timm has no model {model!r}; the timm family takes {SUPPORTED}")
    with torch.device("meta"):
        try:
            net = timm.create_model(model, pretrained=False)
        except Exception as e:  # timm's own error for a model it cannot build
            raise UsageError(f"timm cannot build {model}: {type(e).__name__}: {e}") from None
    if not isinstance(net, VisionTransformer):
        raise UsageError(f"timm:{model} builds a {type(net).__module__}.{type(net).__name__}; the timm family takes "
                         f"{SUPPORTED}")
    # A parameter of the network itself (cls_token) is a whole key, a module a prefix ending in '.'.
    tops = tuple(dict.fromkeys(k.split(".")[0] + "." if "." in k else k for k in net.state_dict()))
    return len(net.blocks), int(net.embed_dim), tops


def _spec(model: str, depth: int | None) -> ArchSpec:
    own, width, _ = _probe(model)
    depth = own if depth is None else depth
    if not 1 <= depth <= MAX_DEPTH:
        raise UsageError(f"timm:{model}-d{depth}: a vision transformer has 1 to {MAX_DEPTH} blocks")
    name = f"{PREFIX}{model}" + ("" if depth == own else f"-d{depth}")
    return ArchSpec(name=name, family=FAMILY_NAME, depths=(depth,), width=width, variant=model)


def parse(name: str) -> ArchSpec | None:
    """``timm:<model>`` or ``timm:<model>-d<N>`` (a pretrained tag, ``.augreg_in21k``, is dropped: no weights are
    ever fetched); None for any other name, without importing timm."""
    if not name.startswith(PREFIX):
        return None
    m = _NAME.match(name)
    if not m:
        raise UsageError(f"{name!r} is not a timm name; write timm:<model> or timm:<model>-d<N>, e.g. "
                         "timm:vit_tiny_patch16_224-d6")
    return _spec(m.group(1), int(m.group(2)) if m.group(2) else None)


def resolve_target(source: ArchSpec, name: str) -> ArchSpec | None:
    """``d8`` or ``-d8`` (the source's model at 8 blocks), or a full name of the same model."""
    m = _TARGET.match(name)
    if m:
        return _spec(source.variant, int(m.group(1)))
    target = parse(name)
    if target is not None and target.variant != source.variant:
        raise UsageError(f"{target.name} is another timm model than {source.name}; elastic transformations change "
                         f"the depth of one model: name the target {PREFIX}{source.variant}-d<N> or d<N>")
    return target


def build(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    timm = _timm()
    channels, height, width = input_shape
    try:
        return timm.create_model(spec.variant, pretrained=False, depth=spec.depths[0], img_size=(height, width),
                                 in_chans=channels, num_classes=num_classes)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise UsageError(f"timm cannot build {spec.name} for input {channels}x{height}x{width} with {num_classes} "
                         f"classes: {e}") from None


def layout(spec: ArchSpec) -> BlockLayout:
    """The blocks, and the model's own top-level names around them: a parameter of the network itself
    (``cls_token``, ``pos_embed``, ``reg_token``) is a whole key, a module a prefix."""
    _, _, tops = _probe(spec.variant)
    head = tuple(t for t in tops if t.rstrip(".") in HEAD_MODULES)
    stem = tuple(t for t in tops if t != "blocks." and t not in head)
    blocks = tuple(f"blocks.{i}." for i in range(spec.depths[0]))
    return BlockLayout(stem=stem, stages=(blocks,), head=head, free_first=(True,))


FAMILY = Family(
    name=FAMILY_NAME,
    parse=parse,
    build=build,
    layout=layout,
    count=None,  # counted on the model, built on the meta device
    resolve_target=resolve_target,
    standard_names=(),  # nothing listed: timm may be absent
    recipe="vit",
    native_input=((3, 224, 224), 1000),
    init="model",
)
