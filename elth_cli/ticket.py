"""The ticket file format (v1): a safetensors file holding masks, init weights and provenance.

Tensors: ``mask/<key>`` (bool, one per prunable weight), ``init/<key>`` (the whole state dict
the ticket starts training from, pruned entries zero) and optionally ``trained/<key>``.
``__metadata__`` is a flat str->str map; structured values are JSON. docs/ticket-format.md is
the specification; this module is the one place that reads and writes it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from elth_cli import __version__, archs, schema
from elth_cli.archs import ArchSpec
from elth_cli.container import DIGEST_KEYS, WHOLE_FILE, TensorFile, check_integrity, read_header, read_tensors, write_tensors
from elth_cli.digests import Sha256Beside, digests_ahead, file_key
from elth_cli.errors import TicketError, UsageError
from elth_cli.fileio import STDIO, check_output_path, read_buffer, write_atomic
from elth_cli.masks import kept_and_total, layer_counts
from elth_cli.ticket_checks import expected_tensors, validate

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

# What a loaded ticket's tensors are: torch tensors (every command that trains or evaluates) or numpy arrays
# (the commands that only read, check, transform and write tickets, which then never import torch).
Arrays = Literal["torch", "numpy"]

FORMAT = "elth.ticket"
# 2: the digest covers the whole file (file_sha256); 1: the tensor bytes only (payload_sha256), or nothing.
FORMAT_VERSION = 2
WHOLE_FILE_DIGEST_SINCE = 2
MASK, INIT, TRAINED = "mask/", "init/", "trained/"
# Metadata keys that have a field of their own; anything else round-trips through Ticket.extra.
_KNOWN_META = {
    "format", "format_version", "elth_version", "created", "arch", "family", "input_shape", "num_classes",
    "dataset", "sparsity", "method", "rewind_step", "parents", "transform", "hparams", "metrics", "cost", "config",
    "family_provider", *DIGEST_KEYS,
}
# Bounds that no real network reaches; past them a value is damage, not a design.
MAX_DIMENSION = 65_536  # per input dimension (channels, height, width)
MAX_CLASSES = 10_000_000
MAX_STEP = 2**53  # steps are counted exactly in a float64 too

_COUNT = schema.integer(0, MAX_STEP)
_SECONDS = schema.number(0)
_POSITIVE = schema.integer(1, MAX_STEP)
_FRACTION = schema.optional(schema.number(0, 1, nan=True))  # an accuracy; NaN or null: never measured
_LOSS = schema.optional(schema.number(nan=True))
# The fields of a trained ticket's hparams and metrics that elth reads back (eval's batch size, the cost of
# an IMP round, compare's FLOPs): typed, so a damaged value is refused on load rather than crashing a command.
_HPARAMS = schema.obj({
    "dataset": schema.text, "recipe": schema.text, "epochs": _POSITIVE, "batch_size": _POSITIVE,
    "eval_batch_size": _POSITIVE, "lr": schema.number(0), "momentum": schema.number(0, 1), "weight_decay": schema.number(0),
    "schedule": schema.text, "milestones": schema.list_of(schema.text), "gamma": schema.number(0), "warmup": schema.text,
    "seed": schema.integer(), "augment": schema.boolean, "eval_every": _COUNT, "device": schema.text,
    "precision": schema.text, "compile": schema.boolean, "deterministic": schema.boolean, "train_scale": _POSITIVE,
    "resize": schema.optional(schema.integer(1, MAX_DIMENSION)), "sync_bn": schema.boolean,
    "steps_per_epoch": _POSITIVE, "total_steps": _COUNT, "start_step": _COUNT, "warmup_steps": _COUNT,
    "milestone_steps": schema.list_of(_COUNT), "world_size": _POSITIVE,
    # find --pretrained FILE: the weights file a fresh ticket started from (its name, not its path).
    "pretrained": schema.obj({"file": schema.text, "sha256": schema.text}),
    # Optional (a ticket trained before elth had AdamW lacks them: SGD): the optimizer and AdamW's constants.
    "optimizer": schema.text, "nesterov": schema.boolean, "betas": schema.list_of(schema.number(0, 1), length=2),
    "eps": schema.number(0),
})
_METRICS = schema.obj({
    "test_acc": _FRACTION, "best_test_acc": _FRACTION, "train_acc": _FRACTION, "test_top5": _FRACTION,
    "test_loss": _LOSS, "train_loss": _LOSS, "epochs": _COUNT, "start_step": _COUNT, "steps": _COUNT,
    "total_steps": _COUNT, "round": _COUNT, "world_size": _POSITIVE, "wall_time_s": _SECONDS,
    "images_per_s": schema.optional(_SECONDS), "train_flops": _SECONDS, "dense_train_flops": _SECONDS,
    "dense_run_flops": _SECONDS, "device": schema.text, "precision": schema.text,
})
# The schema of the metadata (docs/ticket-format.md, "Metadata"): every known field's type and range.
METADATA_RULES: dict[str, schema.Check] = {
    "format_version": schema.integer(1),
    "elth_version": schema.text,
    "created": schema.text,
    "arch": schema.text,
    "family": schema.text,
    # A family registered from outside elth: the module that provides it and that module's version.
    "family_provider": schema.json_text(schema.obj({"module": schema.text, "version": schema.text})),
    "input_shape": schema.json_text(schema.list_of(schema.integer(1, MAX_DIMENSION), length=3)),
    "num_classes": schema.integer(1, MAX_CLASSES),
    "dataset": schema.text,
    "sparsity": schema.number(0, 1, below_hi=True),
    "method": schema.text,
    "rewind_step": _COUNT,
    "parents": schema.json_text(schema.list_of(schema.obj({
        "sha256": schema.optional(schema.text), "arch": schema.text, "method": schema.text,
        "sparsity": schema.optional(schema.number(0, 1))}))),
    "transform": schema.json_text(schema.obj({
        "kind": schema.text, "strategy": schema.optional(schema.text), "source_arch": schema.text,
        "target_arch": schema.text, "mapping_string": schema.text, "source_method": schema.text,
        "reference_mapping": schema.optional(schema.text), "reference_mapping_note": schema.optional(schema.text),
        "source_sparsity": schema.optional(schema.number(0, 1)),
        "source_blocks_per_stage": schema.list_of(_COUNT), "target_blocks_per_stage": schema.list_of(_COUNT),
        "mapping": schema.list_of(schema.list_of(_COUNT))})),
    "cost": schema.json_text(schema.obj({"train_steps": _COUNT, "trainings": _COUNT}, values=_SECONDS)),
    "hparams": schema.json_text(_HPARAMS),
    "metrics": schema.json_text(_METRICS),
    "config": schema.json_text(schema.obj({"command": schema.text, "hparams": schema.obj(),
                                           "environment": schema.obj()})),
    **dict.fromkeys(DIGEST_KEYS, schema.text),
}


# What obtaining a ticket cost (its ``cost`` field), summed along its provenance (docs/ticket-format.md).
COST_KEYS = ("train_steps", "train_seconds", "trainings", "train_flops", "dense_train_flops")


def add_costs(base: dict[str, Any], *parts: dict[str, Any]) -> dict[str, Any]:
    """``base`` plus every numeric :data:`COST_KEYS` field of ``parts`` (a missing field counts 0)."""
    out = dict(base)
    for part in parts:
        for key in COST_KEYS:
            value = part.get(key, 0)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Ticket:
    """A sparse subnetwork: masks over the prunable weights, the weights it starts from, provenance.

    ``masks`` maps each prunable state-dict key to a bool tensor; ``init`` is the whole state
    dict (pruned entries zero) at training step ``rewind_step``; ``trained`` the state dict
    after training, when the ticket has been trained.
    """

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    masks: dict[str, Tensor]
    init: dict[str, Tensor]
    trained: dict[str, Tensor] | None = None
    method: str = "unknown"
    rewind_step: int = 0
    dataset: str | None = None
    parents: list[dict[str, Any]] = field(default_factory=list)
    transform: dict[str, Any] | None = None
    hparams: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    # The run that made the weights or the mask: command, hyperparameters, versions, device, processes, host.
    config: dict[str, Any] | None = None
    # Compute spent to obtain this ticket's mask and init (not to train it): summed along its provenance.
    cost: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_utc)
    elth_version: str = __version__
    extra: dict[str, str] = field(default_factory=dict)
    # sha256 of the file this ticket was loaded from or last saved to (not stored in the file).
    sha256: str | None = field(default=None, compare=False)
    # The format version of the file it was loaded from, and how that file was checked
    # (container.WHOLE_FILE, PAYLOAD_ONLY, UNCHECKED); a ticket made in memory is written at the current version.
    format_version: int = field(default=FORMAT_VERSION, compare=False)
    integrity: str = field(default=WHOLE_FILE, compare=False)

    # ----- derived properties -------------------------------------------------------------
    @property
    def spec(self) -> ArchSpec:
        return archs.resolve_arch(self.arch)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def is_trained(self) -> bool:
        return self.trained is not None

    def layer_sparsity(self) -> dict[str, tuple[int, int]]:
        """Per prunable key: (pruned count, total count)."""
        return {key: (total - kept, total) for key, (kept, total) in layer_counts(self.masks).items()}

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights that are pruned (not the density)."""
        kept, total = kept_and_total(self.masks)
        return (total - kept) / total if total else 0.0

    def state(self, weights: str = "init") -> dict[str, Tensor]:
        """The ``init`` or ``trained`` state dict."""
        if weights == "init":
            return self.init
        if weights == "trained":
            if self.trained is None:
                raise UsageError("this ticket has no trained weights; train it first (elth train) or use --weights init")
            return self.trained
        raise UsageError(f"weights must be 'init' or 'trained', not {weights!r}")

    def build_model(self, weights: str = "init", device: str | torch.device = "cpu") -> nn.Module:
        """A model of the ticket's architecture holding its ``init`` or ``trained`` weights."""
        model = archs.build_model(self.spec, self.input_shape, self.num_classes)
        model.load_state_dict(self.state(weights), strict=True)
        return model.to(device)

    def masks_only(self) -> "Ticket":
        """This ticket with its masks (copied) and records, its weights let go: what a comparison of many big
        tickets keeps of each once it has been read and checked, so that one file at a time is held. It says
        whether it is trained, but it holds no weights and cannot be saved."""
        return dataclasses.replace(self, masks={k: m.copy() if isinstance(m, np.ndarray) else m.clone()
                                                for k, m in self.masks.items()},
                                   init={}, trained=None if self.trained is None else {})

    def identity(self) -> dict[str, Any]:
        """What a ticket is, as JSON-ready fields (shared by ``elth info`` and ``elth compare``)."""
        return {
            "sha256": self.sha256,
            "arch": self.arch,
            "family": self.family,
            "blocks_per_stage": list(self.spec.depths),
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "sparsity": self.sparsity,
            "method": self.method,
            "rewind_step": self.rewind_step,
            "trained": self.is_trained,
        }

    def parent_record(self) -> dict[str, Any]:
        """How a child ticket refers to this one in its ``parents`` list."""
        return {
            "sha256": self.sha256,
            "arch": self.arch,
            "method": self.method,
            "sparsity": self.sparsity,
        }

    # ----- serialisation --------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        meta = dict(self.extra)
        meta.update(
            {
                "format": FORMAT,
                "format_version": str(FORMAT_VERSION),
                "elth_version": self.elth_version,
                "created": self.created,
                "arch": self.arch,
                "family": self.family,
                "input_shape": json.dumps(list(self.input_shape)),
                "num_classes": str(self.num_classes),
                "sparsity": repr(self.sparsity),
                "method": self.method,
                "rewind_step": str(self.rewind_step),
                "parents": json.dumps(self.parents),
                "cost": json.dumps(self.cost, sort_keys=True),
            }
        )
        if self.dataset is not None:
            meta["dataset"] = self.dataset
        family = archs.family_of(self.spec)
        if family.provider != archs.BUILTIN_PROVIDER:
            meta["family_provider"] = json.dumps({"module": family.provider, "version": family.provider_version})
        for name in ("transform", "hparams", "metrics", "config"):
            value = getattr(self, name)
            if value is not None:
                meta[name] = json.dumps(value, sort_keys=True)
        return meta

    def to_bytes(self) -> bytes:
        """The ticket as safetensors bytes (validated first, so an invalid ticket is never written)."""
        buffer = io.BytesIO()
        self.write_to(buffer)
        return buffer.getvalue()

    def write_to(self, out: BinaryIO) -> str:
        """Validate the ticket and write it to the stream ``out``; return the sha256 of what was written."""
        validate(self)
        tensors: dict[str, Any] = {}
        for prefix, state in ((MASK, self.masks), (INIT, self.init), (TRAINED, self.trained or {})):
            for key, t in state.items():
                tensors[prefix + key] = t
        return write_tensors(out, tensors, self.metadata())

    def save(self, path: str | Path, force: bool = False) -> str:
        """Write the ticket atomically (``-`` for stdout); return the file's sha256."""
        check_output_path(path, force)
        self.sha256 = write_atomic(path, self.write_to)
        return self.sha256

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, source: str = "<bytes>", arrays: Arrays = "torch",
                   digests: tuple[str, str | None] | None = None) -> "Ticket":
        """Parse and validate ticket bytes; raise TicketError naming ``source`` when they are not a valid ticket.

        ``arrays="numpy"`` keeps the tensors as numpy arrays over ``data`` and never imports torch (a
        bfloat16 tensor, which numpy cannot hold, makes it read them as torch tensors after all).
        ``digests``: the sha256 and the file digest of ``data``, worked out already
        (:func:`elth_cli.digests.both_digests`).
        """
        meta = _typed_metadata(read_header(data, source), source)
        whole_file = meta["format_version"] >= WHOLE_FILE_DIGEST_SINCE
        if digests is not None:
            sha256, integrity = digests[0], check_integrity(data, meta, source, whole_file, digest=digests[1])
        else:
            whole = Sha256Beside(data)  # the digest check and the file's sha256 side by side, on two cores
            try:
                integrity = check_integrity(data, meta, source, whole_file)
            finally:
                sha256 = whole.result()
        masks, init, trained = _split_tensors(_arrays(read_tensors(data, source), arrays), source)
        _require_family(meta, source)
        ticket = cls(
            arch=meta["arch"], input_shape=tuple(meta["input_shape"]), num_classes=meta["num_classes"],
            masks=masks, init=init, trained=trained or None, method=meta.get("method", "unknown"),
            rewind_step=meta.get("rewind_step", 0), dataset=meta.get("dataset"), parents=meta.get("parents", []),
            transform=meta.get("transform"), hparams=meta.get("hparams"), metrics=meta.get("metrics"),
            config=meta.get("config"), cost=meta.get("cost", {}), created=meta.get("created", ""),
            elth_version=meta.get("elth_version", ""), extra={k: v for k, v in meta.items() if k not in _KNOWN_META},
        )
        validate(ticket, source)
        _check_recorded(ticket, meta, source)
        # safetensors stores tensors sorted by name; restore the model's own order.
        order = list(expected_tensors(ticket.spec, ticket.input_shape, ticket.num_classes)[0])
        ticket.masks = {k: ticket.masks[k] for k in order if k in ticket.masks}
        ticket.init = {k: ticket.init[k] for k in order}
        if ticket.trained is not None:
            ticket.trained = {k: ticket.trained[k] for k in order}
        ticket.sha256 = sha256
        ticket.format_version, ticket.integrity = meta["format_version"], integrity
        return ticket

    @classmethod
    def load(cls, path: str | Path, arrays: Arrays = "torch") -> "Ticket":
        """Read and validate a ticket file (``-`` for stdin); ``arrays`` as in :meth:`from_bytes`."""
        source = "stdin" if str(path) == STDIO else str(path)
        key = file_key(path) if str(path) != STDIO else None
        data = read_buffer(path, writable=arrays == "torch")
        # Digests worked out while the command started (digests.hash_ahead), if they are of these bytes.
        ahead = digests_ahead(key) if key is not None and file_key(path) == key else None
        return cls.from_bytes(data, source, arrays, ahead)


def _arrays(file: TensorFile, arrays: Arrays) -> dict[str, Any]:
    """A file's tensors as numpy arrays, or as torch tensors sharing their memory (bfloat16 forces torch)."""
    if arrays == "numpy" and not file.bf16:
        return file.arrays
    import torch

    out = {}
    for name, array in file.arrays.items():
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
        out[name] = t.view(torch.bfloat16) if name in file.bf16 else t
    return out


def _check_recorded(ticket: Ticket, meta: dict[str, Any], source: str) -> None:
    """The metadata's family and sparsity agree with what the tensors say."""
    if "family" in meta and meta["family"] != ticket.family:
        raise TicketError(f"{source}: metadata 'family' is {meta['family']!r} but {ticket.arch} is a "
                          f"{ticket.family}; the file is inconsistent")
    if "sparsity" in meta and not math.isclose(meta["sparsity"], ticket.sparsity, abs_tol=1e-9):
        raise TicketError(f"{source}: metadata says sparsity {meta['sparsity']} but the masks have "
                          f"{ticket.sparsity:.6f}; the file is inconsistent")


def _typed_metadata(meta: dict[str, str], source: str) -> dict[str, Any]:
    """The metadata with every known field checked against :data:`METADATA_RULES` and converted to its
    type (JSON decoded, numbers parsed); unknown keys pass unchanged (they round-trip)."""
    if meta.get("format") != FORMAT:
        fmt = meta.get("format")
        what = f"format={fmt!r}" if fmt else "no elth metadata"
        raise TicketError(f"{source} is a safetensors file but not an elth ticket ({what})")
    version = meta.get("format_version", "")
    if not (version.isascii() and version.isdigit()):  # '¹'.isdigit() is True, int('¹') fails
        raise TicketError(f"{source}: format_version {version!r} is not a number")
    if int(version) > FORMAT_VERSION:
        raise TicketError(f"{source} uses ticket format version {version}, newer than this elth ({__version__}) "
                          f"reads (version {FORMAT_VERSION}); upgrade elth")
    for key in ("arch", "input_shape", "num_classes"):
        if key not in meta:
            raise TicketError(f"{source}: metadata lacks {key!r}; the file was not written by elth or is damaged")
    return schema.check_fields(meta, METADATA_RULES, lambda field, expected: TicketError(
        f"{source}: metadata {field!r} must be {expected}; the file is damaged or was not written by elth"))


def _require_family(meta: dict[str, Any], source: str) -> None:
    """Refuse a ticket whose family this process does not know, naming the module that provides it."""
    family = meta.get("family")
    if family is None or family in archs.families():
        return
    provider = meta.get("family_provider")
    if provider is None:
        raise TicketError(f"{source}: its family {family!r} is not registered here and the ticket does not say which "
                          f"module provides it; name that module with --family-module or {archs.ENV_VAR}")
    module, version = provider["module"], provider["version"]
    if module.endswith(".py"):  # a file named by --family-module: its version is a digest of its bytes
        raise TicketError(f"{source}: its family {family!r} comes from the file {module} ({version}), which is not "
                          f"registered here; name it with --family-module {module} (or {archs.ENV_VAR}={module})")
    raise TicketError(f"{source}: its family {family!r} comes from {module}{f' {version}' if version else ''}, which "
                      f"is not registered here; install the package that provides it (pip install ...) or name the "
                      f"module with --family-module {module} (or {archs.ENV_VAR}={module})")


def _split_tensors(tensors: dict[str, Tensor], source: str) -> tuple[dict, dict, dict]:
    """``mask/``, ``init/`` and ``trained/`` tensors by key; anything else is refused."""
    masks, init, trained = {}, {}, {}
    for name, t in tensors.items():
        for prefix, target in ((MASK, masks), (INIT, init), (TRAINED, trained)):
            if name.startswith(prefix):
                target[name[len(prefix):]] = t
                break
        else:
            raise TicketError(f"{source}: unexpected tensor {name!r} (tensors must start with mask/, init/ or trained/)")
    return masks, init, trained


def apply_masks(state: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with every masked weight zeroed where its mask is 0."""
    import torch

    out = dict(state)
    for key, m in masks.items():
        # where() rather than a product, so pruned entries are +0.0 and not -0.0.
        out[key] = torch.where(m, state[key], torch.zeros((), dtype=state[key].dtype))
    return out


def apply_masks_(state: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero every masked weight of ``state`` where its mask is 0, in place (+0.0, as :func:`apply_masks`);
    return ``state``."""
    for key, m in masks.items():
        state[key].masked_fill_(~m, 0.0)
    return state
