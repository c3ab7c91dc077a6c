"""``elth export --format state-dict``: a ticket's weights as the plain state dict its model class loads.

``OUT.safetensors`` holds the weights (trained when the ticket is trained, else its init; ``--weights``
chooses) with the masks applied, under exactly the keys of the model's ``state_dict()``, so that
``model.load_state_dict(load_file(OUT), strict=True)`` loads it: for ``timm:`` tickets timm's model of the
same name, depth, image size, channels and classes; for ``imagenet-resnet*`` at width 64 torchvision's
``resnet{18,34,50,101,152}``; for elth's own families the elth model. ``OUT.masks.safetensors`` holds
the masks (bool, one per prunable weight, the same keys). Each file is written atomically; the metadata of
both names the ticket, the weights and the model that loads them (``model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from elth_cli.errors import UsageError
from elth_cli.fileio import check_output_path, write_bytes_atomic
from elth_cli.ticket import Ticket, apply_masks
from elth_cli.ticket_checks import validate

FORMAT = "elth.state_dict"
SUFFIX = ".safetensors"
MASKS_SUFFIX = ".masks.safetensors"
TORCHVISION_RESNETS = (18, 34, 50, 101, 152)


@dataclass(frozen=True)
class StateDictExport:
    """What ``export --format state-dict`` wrote: the two files, the weights chosen, the loading model."""

    weights_file: str
    masks_file: str
    weights: str
    model: str

    @property
    def files(self) -> list[str]:
        return [self.weights_file, self.masks_file]


def masks_path(out: str | Path) -> Path:
    """``OUT.masks.safetensors`` beside ``OUT.safetensors``."""
    out = Path(out)
    return out.with_name(out.name[: -len(SUFFIX)] + MASKS_SUFFIX)


def check_outputs(out: str | Path, force: bool) -> Path:
    """Before any work: ``OUT`` ends in .safetensors, neither file exists (unless ``force``), both can be written."""
    if str(out) == "-" or not str(out).endswith(SUFFIX) or str(out).endswith(MASKS_SUFFIX):
        raise UsageError(f"--format state-dict writes OUT{SUFFIX} and OUT{MASKS_SUFFIX}: give a file name ending "
                         f"in {SUFFIX} (not {MASKS_SUFFIX}), e.g. weights{SUFFIX}")
    masks = masks_path(out)
    check_output_path(out, force)
    check_output_path(masks, force)
    return masks


def loading_model(ticket: Ticket) -> str:
    """The Python expression of the model whose ``load_state_dict(strict=True)`` takes the exported weights."""
    spec, (c, h, w), k = ticket.spec, ticket.input_shape, ticket.num_classes
    if spec.family == "timm":
        return (f"timm.create_model({spec.variant!r}, pretrained=False, depth={spec.depths[0]}, img_size=({h}, {w}), "
                f"in_chans={c}, num_classes={k})")
    depth = spec.name.removeprefix("imagenet-resnet")
    if spec.family == "imagenet-resnet" and spec.width == 64 and c == 3 and depth.isdigit() \
            and int(depth) in TORCHVISION_RESNETS:
        return f"torchvision.models.resnet{depth}(num_classes={k})"
    return f"elth_cli.archs.build_model(elth_cli.archs.resolve_arch({spec.name!r}), ({c}, {h}, {w}), {k})"


def export_state_dict(ticket: Ticket, out: str | Path, weights: str | None = None,
                      force: bool = False) -> StateDictExport:
    """Write ``ticket``'s masked weights (``weights``: init or trained; default trained if trained) to ``out`` and
    its masks beside it; each file atomically, the masks first."""
    from safetensors.torch import save

    masks_file = check_outputs(out, force)
    validate(ticket)
    chosen = weights or ("trained" if ticket.is_trained else "init")
    state = apply_masks(ticket.state(chosen), ticket.masks)
    model = loading_model(ticket)
    meta = {"format": FORMAT, "arch": ticket.arch, "weights": chosen, "model": model,
            "input_shape": "x".join(map(str, ticket.input_shape)), "num_classes": str(ticket.num_classes),
            "ticket_sha256": ticket.sha256 or "", "sparsity": repr(ticket.sparsity)}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    masks = {k: m.to("cpu", torch.bool).contiguous().clone() for k, m in ticket.masks.items()}
    write_bytes_atomic(masks_file, save(masks, {**meta, "content": "masks"}))
    write_bytes_atomic(out, save(tensors, {**meta, "content": "weights"}))
    return StateDictExport(str(out), str(masks_file), chosen, model)
