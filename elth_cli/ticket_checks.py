"""Checking a ticket's tensors against its architecture: keys, shapes, dtypes, 0/1 masks, finite values, zeros
where pruned. Every check is a whole-array operation that reads each byte about once, on numpy arrays and torch
tensors alike (:mod:`elth_cli.ticket` reads and writes the file; this is what it runs on every ticket it loads
or saves)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from elth_cli import archs
from elth_cli.archs import ArchSpec
from elth_cli.errors import TicketError, UsageError


class TicketTensors(Protocol):
    """What :func:`validate` reads of a ticket (:class:`elth_cli.ticket.Ticket` has it)."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    masks: Mapping[str, Any]
    init: Mapping[str, Any]
    trained: Mapping[str, Any] | None


def expected_tensors(spec: ArchSpec, input_shape: tuple[int, ...], num_classes: int
              ) -> tuple[dict[str, tuple[tuple[int, ...], bool]], list[str]]:
    """Every state-dict key of the architecture with its shape and whether it is floating point, and the
    prunable keys (from the family's own description: no torch, no network built, where it has one)."""
    layout = archs.state_shapes(spec, tuple(input_shape), num_classes)
    floating = {k: np.dtype(d).kind == "f" for k, d in layout.dtypes.items()}
    return {k: (shape, floating[k]) for k, shape in layout.shapes.items()}, list(layout.prunable)


def as_array(t: Any) -> np.ndarray:
    """A tensor's values as a numpy array: shared with a CPU tensor or array, copied from a GPU; bfloat16,
    which numpy lacks, widened to float32 (every value exactly)."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach()
    if not t.dtype.is_floating_point or t.dtype.itemsize >= 4 or str(t.dtype) == "torch.float16":
        return t.cpu().numpy()
    return t.float().cpu().numpy()


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _is_floating(t: Any) -> bool:
    return t.dtype.is_floating_point if not isinstance(t, np.ndarray) else t.dtype.kind == "f"


def validate(ticket: TicketTensors, source: str = "ticket") -> None:
    """Check a ticket against its architecture: keys, shapes, dtypes, 0/1 masks, zeros where pruned.

    Every check is a whole-array operation that reads each byte about once; numpy arrays and torch tensors
    alike (a GPU tensor is copied to the host for it).
    """
    try:
        spec = archs.resolve_arch(ticket.arch)
    except UsageError as e:
        raise TicketError(f"{source}: {e}") from None
    shape = tuple(ticket.input_shape)
    if len(shape) != 3 or any(int(d) < 1 for d in shape) or ticket.num_classes < 1:
        raise TicketError(f"{source}: input_shape {list(shape)} / num_classes {ticket.num_classes} are not valid")
    expected, prunable = expected_tensors(spec, shape, ticket.num_classes)
    where = f"{source} ({spec.name}, input {'x'.join(map(str, shape))}, {ticket.num_classes} classes)"
    masks = _validate_masks(ticket.masks, expected, prunable, where, spec.name)
    for label, state in (("init", ticket.init), ("trained", ticket.trained)):
        if state is not None:
            _validate_state(label, state, masks, expected, where, spec.name)


def _validate_masks(masks: dict[str, Any], expected: dict[str, tuple[tuple[int, ...], bool]], prunable: list[str],
                    where: str, arch: str) -> dict[str, np.ndarray]:
    """Check the masks' keys, shapes, dtype and values; return them as numpy arrays."""
    missing = [k for k in prunable if k not in masks]
    extra = [k for k in masks if k not in expected or k not in prunable]
    if missing:
        raise TicketError(f"{where}: mask/{missing[0]} is missing ({len(missing)} mask(s) missing); is this a mask for another architecture?")
    if extra:
        raise TicketError(f"{where}: mask/{extra[0]} is not a prunable weight of {arch}; is this a mask for another architecture?")
    out = {}
    for key, m in masks.items():
        want = expected[key][0]
        if tuple(m.shape) != want:
            raise TicketError(f"{where}: mask/{key} has shape {list(m.shape)} but {arch} needs {list(want)}; is this a mask for another architecture?")
        a = as_array(m)
        if a.dtype != np.bool_:
            raise TicketError(f"{where}: mask/{key} has dtype {_dtype_name(m)} but masks must be bool (0/1)")
        if a.size and int(a.view(np.uint8).max()) > 1:
            raise TicketError(f"{where}: mask/{key} holds values other than 0 and 1")
        out[key] = a
    if out and not any(a.any() for a in out.values()):
        raise TicketError(f"{where}: its masks keep no weight at all; a ticket keeps at least one (sparsity below 1)")
    return out


def _validate_state(label: str, state: dict[str, Any], masks: dict[str, np.ndarray],
                    expected: dict[str, tuple[tuple[int, ...], bool]], where: str, arch: str) -> None:
    """Check one state dict's keys, shapes and dtypes, that it is finite, and zero where the masks prune."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise TicketError(f"{where}: {label}/{missing[0]} is missing ({len(missing)} tensor(s) missing)")
    if extra:
        raise TicketError(f"{where}: {label}/{extra[0]} is not in the state dict of {arch}")
    for key, (want, floating) in expected.items():
        t = state[key]
        if tuple(t.shape) != want:
            raise TicketError(f"{where}: {label}/{key} has shape {list(t.shape)} but {arch} needs {list(want)}")
        if _is_floating(t) != floating:
            raise TicketError(f"{where}: {label}/{key} has dtype {_dtype_name(t)} but {arch} needs "
                              f"{'a floating-point dtype' if floating else 'an integer dtype'}")
    for key, t in state.items():
        # Every float tensor, BatchNorm statistics included: a NaN running_var trains at chance. min and max
        # carry a NaN through and meet any infinity, without an array of flags as big as the tensor.
        a = as_array(t) if _is_floating(t) else None
        if a is not None and a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
            raise TicketError(f"{where}: {label}/{key} holds NaN or infinite values; the file is damaged")
    for key, m in masks.items():
        if np.logical_and(as_array(state[key]), ~m).any():
            raise TicketError(f"{where}: {label}/{key} is nonzero where its mask is 0; pruned weights must be zero")
