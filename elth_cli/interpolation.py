"""Linear interpolation between two trainings of one ticket (linear mode connectivity).

:func:`interpolate` evaluates the straight line between two trained tickets with one mask
(Frankle et al. 2020; section 4 of the E-LTH paper), BatchNorm statistics recomputed at every
point by default, and reports the error barrier: the ``interpolation`` entry of the
``elth compare`` document (docs/compare.md). It lives apart from :mod:`elth_cli.compare` because
it needs data and training (evaluation), which the comparison document itself never does.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from elth_cli import archs
from elth_cli.compare import comparable_masks
from elth_cli.data import DataBundle, check_compatible
from elth_cli.errors import ElthError, UsageError
from elth_cli.masks import hamming
from elth_cli.ticket import Ticket, apply_masks


def check_interpolable(a: Ticket, b: Ticket, names: tuple[str, str] = ("A", "B")) -> None:
    """Refuse what cannot be interpolated: untrained tickets, other architectures or masks."""
    for t, n in zip((a, b), names):
        if not t.is_trained:
            raise UsageError(f"{n} has no trained weights; --interpolate needs two trained tickets (elth train)")
    if a.spec != b.spec or tuple(a.input_shape) != tuple(b.input_shape) or a.num_classes != b.num_classes:
        raise UsageError(f"{names[0]} is {a.arch} and {names[1]} is {b.arch} "
                         f"({a.num_classes} vs {b.num_classes} classes); --interpolate needs one architecture")
    if not comparable_masks(a, b) or any(not torch.equal(a.masks[k], b.masks[k]) for k in a.masks):
        n_diff = hamming(a.masks, b.masks) if comparable_masks(a, b) else None
        what = f" ({n_diff} weights differ)" if n_diff is not None else ""
        raise UsageError(f"{names[0]} and {names[1]} have different masks{what}; --interpolate needs two trainings of one ticket")


def interpolate_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float,
                      masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """(1 - alpha) a + alpha b for every float tensor (BN buffers too); exact at alpha 0 and 1.

    torch.lerp returns ``a`` bit for bit at weight 0 and ``b`` at weight 1, so the end points are
    the tickets' own weights. Integer buffers (num_batches_tracked) come from the nearer end.
    Pruned weights are zero in both ends and stay zero.
    """
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.is_floating_point():
            out[key] = torch.lerp(ta, tb, float(alpha))
        else:
            out[key] = (ta if alpha < 0.5 else tb).clone()
    return apply_masks(out, masks)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, bundle: DataBundle, batches: int | None = None,
                       batch_size: int = 128, seed: int = 0) -> int:
    """Replace every BatchNorm's running statistics by their average over training batches.

    Running stats are reset, momentum set to None (a cumulative average, every batch weighted
    equally), then ``batches`` unaugmented training batches (None: one whole epoch) go forward in
    train mode without gradients, in the fixed order of epoch 0 of ``seed``: the same batches at
    every interpolation point. Weights are not touched. Returns the number of batches used.
    """
    bns = _batch_norms(model)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    used = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        it = bundle.train_batches(batch_size, 0, seed, augment=False)
        for x, _ in itertools.islice(it, batches):
            model(x)
            used += 1
        close = getattr(it, "close", None)
        if close is not None:
            close()
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ElthError(f"{bundle.info.name} gave no training batch of size {batch_size} to recompute BatchNorm "
                        "statistics; lower --batch-size")
    return used


def error_barriers(alphas: list[float], errors: list[float]) -> tuple[float, float]:
    """(barrier against the line between the end errors, barrier against their mean).

    The first is max over alpha of e(alpha) - ((1 - alpha) e(0) + alpha e(1)); the second is
    Frankle et al.'s (2020) error barrier height, max e(alpha) - (e(0) + e(1)) / 2. Both are
    taken over the evaluated points only.
    """
    e0, e1 = errors[0], errors[-1]
    linear = max(e - ((1 - a) * e0 + a * e1) for a, e in zip(alphas, errors))
    mean = max(errors) - (e0 + e1) / 2
    return linear, mean


def interpolate(
    a: Ticket, b: Ticket, bundle: DataBundle, points: int = 11, *, recompute_bn: bool = True,
    bn_batches: int | None = None, batch_size: int = 128, eval_batch_size: int = 1000, seed: int = 0,
    split: str = "test", names: tuple[str, str] = ("A", "B"),
    progress: Callable[[float, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Accuracy along the straight line between two trained tickets with one mask.

    ``points`` alphas evenly spaced in [0, 1] (0: ``a``'s trained weights, 1: ``b``'s). With
    ``recompute_bn`` (the default) each point's BatchNorm statistics are recomputed by
    :func:`recompute_bn_stats` before evaluation; without it the interpolated running statistics
    are used as they are, so alpha 0 is exactly ``evaluate`` of ``a``. Evaluation is
    :func:`elth_cli.train.evaluate` (top-1, BN in eval mode, fp32: reduced precision would blur
    small barriers) on ``split``. Returns the ``interpolation`` entry of the ``compare`` document.
    """
    from elth_cli.train.parts import evaluate  # training code is heavy; only interpolation needs it

    check_interpolable(a, b, names)
    check_compatible(bundle.info, a.input_shape, a.num_classes)
    if points < 2:
        raise UsageError(f"--points must be at least 2 (the two end points), got {points}")
    if bn_batches is not None and bn_batches < 1:
        raise UsageError(f"--bn-batches must be at least 1, got {bn_batches}")
    if batch_size < 1 or eval_batch_size < 1:
        raise UsageError("batch sizes must be at least 1")
    alphas = [i / (points - 1) for i in range(points)]
    # On the device, in the memory format the data's batches come in (the device's choice).
    model = bundle.setup.prepare_model(archs.build_model(a.spec, a.input_shape, a.num_classes))
    results = []
    used = 0
    for alpha in alphas:
        state = interpolate_state(a.trained, b.trained, alpha, a.masks)
        model.load_state_dict(state, strict=True)
        if recompute_bn:
            used = recompute_bn_stats(model, bundle, bn_batches, batch_size, seed)
        r = evaluate(model, bundle, split, eval_batch_size)
        point = {"alpha": alpha, "accuracy": r["accuracy"], "loss": r["loss"], "error": 1 - r["accuracy"]}
        results.append(point)
        if progress is not None:
            progress(alpha, point)
    barrier, barrier_mean = error_barriers(alphas, [p["error"] for p in results])
    return {
        "dataset": bundle.info.name,
        "split": split,
        "examples": r["examples"],
        "points": results,
        "recompute_bn": recompute_bn,
        "bn_batches": used if recompute_bn else None,
        "bn_batch_size": batch_size if recompute_bn else None,
        "bn_seed": seed if recompute_bn else None,
        "error_barrier": barrier,
        "error_barrier_vs_mean": barrier_mean,
    }
