"""Finding tickets: random tickets now; iterative magnitude pruning builds on the same pieces."""

from __future__ import annotations

import torch

from elth_cli import archs, data
from elth_cli.prune import check_sparsity, random_masks
from elth_cli.ticket import Ticket, apply_masks

FIND_METHODS = ("random",)


def random_ticket(
    arch: str, input_shape: tuple[int, int, int], num_classes: int, sparsity: float, seed: int = 0,
    distribution: str = "layerwise", dataset: str | None = None,
) -> Ticket:
    """A randomly initialised network (open_lth init, seeded) with a random mask at exactly ``sparsity``."""
    check_sparsity(sparsity)
    spec = archs.resolve_arch(arch)
    model = archs.build_model(spec, input_shape, num_classes, seed=seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shapes = {k: tuple(state[k].shape) for k in archs.prunable_keys(spec, input_shape, num_classes)}
    # The mask stream is seeded apart from the weights, so one seed gives the same init at any sparsity.
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    masks = random_masks(shapes, sparsity, gen, distribution)
    return Ticket(
        arch=spec.name,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        masks=masks,
        init=apply_masks(state, masks),
        method="random",
        rewind_step=0,
        dataset=dataset,
        hparams={"seed": seed, "distribution": distribution, "init": "kaiming_normal, bn uniform (open_lth)"},
        cost={"train_steps": 0, "train_seconds": 0.0, "trainings": 0},
    )


def find_random(
    arch: str, dataset: str, sparsity: float, seed: int = 0, distribution: str = "layerwise",
    data_dir: str | None = None,
) -> Ticket:
    """The paper's random-pruning baseline for ``arch`` on ``dataset`` (which fixes input shape and classes)."""
    check_sparsity(sparsity)
    info = data.get_dataset_info(dataset, data_dir)
    return random_ticket(arch, info.input_shape, info.num_classes, sparsity, seed, distribution, dataset=info.name)
