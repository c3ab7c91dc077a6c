"""Fresh tickets: a seeded network of an architecture, dense, where every search starts (a random one is
:func:`elth_cli.find.baselines.random_ticket`), or the weights of a local file (``find --pretrained FILE``).

A pretrained file is a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file read with
``torch.load(weights_only=True)`` (a state dict, or a dict holding one under ``state_dict`` or ``model``).
Its keys and shapes must be the model's exactly and its values finite; nothing is ever downloaded. The
ticket records the file's name and sha256 (``hparams.pretrained``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elth_cli import archs, data
from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket

# What a fresh network cost: nothing (a ticket's ``cost`` is what obtaining its mask and init took).
NO_COST: dict[str, Any] = {"train_steps": 0, "train_seconds": 0.0, "trainings": 0, "train_flops": 0.0,
                           "dense_train_flops": 0.0}
PRETRAINED_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class Pretrained:
    """A local weights file a ticket starts from: its path and the sha256 of its bytes."""

    path: str
    sha256: str

    def record(self) -> dict[str, str]:
        """What the ticket records: the file's name (not its path) and its digest."""
        return {"file": Path(self.path).name, "sha256": self.sha256}


def pretrained_source(path: str | Path | None) -> Pretrained | None:
    """``--pretrained FILE`` checked before any work (it exists, its kind is known) and its digest taken."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in PRETRAINED_SUFFIXES:
        raise UsageError(f"--pretrained {p}: give a .safetensors file or a .pth/.pt/.bin state dict")
    if not p.is_file():
        raise UsageError(f"--pretrained {p}: no such file")
    return Pretrained(str(p), hashlib.sha256(p.read_bytes()).hexdigest())


def _tensors(raw: bytes, source: Pretrained) -> dict[str, Tensor]:
    """The file's tensors by key: a safetensors file, or a torch file's state dict (weights only)."""
    name = Path(source.path).name
    try:
        if source.path.lower().endswith(".safetensors"):
            from safetensors.torch import load

            tensors = dict(load(raw))
            if any(k.startswith(("mask/", "init/")) for k in tensors):  # the ticket format's tensors
                raise UsageError(f"--pretrained {name} is an elth ticket, not a state dict; prune at its weights with "
                                 f"--from {name}, or write them with elth export {name} OUT.safetensors --format "
                                 "state-dict")
            return tensors
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except Exception as e:  # safetensors' and torch's own errors for files they cannot read
        raise UsageError(f"--pretrained {name} is not readable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         ".pth files are read with weights_only=True: a state dict of tensors only") from None
    for inner in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(inner), dict):
            obj = obj[inner]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise UsageError(f"--pretrained {name} holds no state dict (a dict of name -> tensor, possibly under "
                         "'state_dict' or 'model')")
    return dict(obj)


def read_pretrained(source: Pretrained, spec: archs.ArchSpec, expected: dict[str, Tensor],
                    num_classes: int) -> dict[str, Tensor]:
    """The file's state dict checked against the model's (``expected``): the same keys and shapes, finite values."""
    raw = Path(source.path).read_bytes()
    name = Path(source.path).name
    if hashlib.sha256(raw).hexdigest() != source.sha256:
        raise UsageError(f"--pretrained {name} changed while elth was reading it; run the command again")
    state = _tensors(raw, source)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = (f"{missing[0]} is missing ({len(missing)} missing, {len(unexpected)} unexpected)" if missing else
                f"{unexpected[0]} is not a key of {spec.name} ({len(unexpected)} unexpected)")
        raise UsageError(f"--pretrained {name}: {what}; give the state dict of {spec.name} itself, with its keys "
                         "(elth export TICKET --format state-dict writes one)")
    out = {}
    for key, want in expected.items():
        t = state[key]
        if tuple(t.shape) != tuple(want.shape):
            head = archs.block_layout(spec).locate(key)[0] == "head"
            fix = (f"the file's classifier is for another class count than {num_classes}: start from it on a data "
                   "set with its classes, then elth train --new-head" if head else "the file is for another model")
            raise UsageError(f"--pretrained {name}: {key} has shape {list(t.shape)} but {spec.name} needs "
                             f"{list(want.shape)}; {fix}")
        if t.dtype.is_floating_point != want.dtype.is_floating_point:
            raise UsageError(f"--pretrained {name}: {key} has dtype {t.dtype} but {spec.name} needs {want.dtype}")
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise UsageError(f"--pretrained {name}: {key} holds NaN or infinite values; the file is damaged")
        out[key] = t.detach().to(dtype=want.dtype).clone()
    return out


# How a fresh network's weights were drawn, by the family's ``init``: what its ticket records.
INIT_NOTES = {"open_lth": "kaiming_normal, bn uniform (open_lth)", "model": "the model's own"}


def fresh_ticket(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0,
                 dataset: str | None = None, pretrained: Pretrained | None = None) -> Ticket:
    """A freshly initialised network (its family's init, seeded) with nothing pruned: where every search starts;
    with ``pretrained``, the weights of that file instead (checked against the model)."""
    spec = archs.resolve_arch(arch)
    model = archs.build_model(spec, input_shape, num_classes, seed=seed)
    state = {k: v.detach() for k, v in model.state_dict().items()}  # the model goes: no copy needed
    hparams: dict[str, Any] = {"seed": seed, "init": INIT_NOTES[archs.family_of(spec).init]}
    if pretrained is not None:
        state = read_pretrained(pretrained, spec, state, num_classes)
        hparams.update(init="pretrained", pretrained=pretrained.record())
    masks = {k: torch.ones(state[k].shape, dtype=torch.bool)
             for k in archs.prunable_keys(spec, input_shape, num_classes)}
    return Ticket(
        arch=spec.name, input_shape=tuple(input_shape), num_classes=num_classes, masks=masks, init=state,
        method="random", rewind_step=0, dataset=dataset, hparams=hparams, cost=dict(NO_COST),
    )


def dense_ticket(arch: str, dataset: str, seed: int = 0, data_dir: str | None = None,
                 pretrained: Pretrained | None = None) -> Ticket:
    """A freshly initialised dense network for ``dataset``'s input shape and classes, as a ticket."""
    info = data.get_dataset_info(dataset, data_dir)
    return fresh_ticket(arch, info.input_shape, info.num_classes, seed, dataset=info.name, pretrained=pretrained)


def pretrained_field(options: dict[str, Any], pretrained: Pretrained | None) -> None:
    """A method's options as recorded: ``pretrained`` as the file's name and digest, left out when not given
    (as runs from before ``--pretrained`` recorded them)."""
    if pretrained is None:
        options.pop("pretrained", None)
    else:
        options["pretrained"] = pretrained.record()
