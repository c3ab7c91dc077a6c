"""Evaluating a ticket on a data set (``elth eval``): its data set, input size, precision and batch size
decided as its training recorded them, then top-1 (and top-5) accuracy and mean loss."""

from __future__ import annotations

from typing import Any

from elth_cli.errors import UsageError
from elth_cli.ticket import Ticket
from elth_cli.train.job import DataOptions, dataset_for

SPLITS = ("test", "train")


def evaluate_ticket(ticket: Ticket, data: DataOptions, split: str = "test", weights: str = "trained",
                    batch_size: int | None = None, device: str = "auto", precision: str = "auto",
                    resize: int | None = None) -> dict[str, Any]:
    """Accuracy and loss of ``ticket``'s ``weights`` on ``split`` (BatchNorm in eval mode).

    What is not given comes from the ticket's training: its data set, its ``--resize``, its precision
    (on the same kind of device) and its evaluation batch size.
    """
    from elth_cli import data as data_mod
    from elth_cli.runtime.device import device_name, device_setup, resolve_device, resolve_precision
    from elth_cli.train.parts import evaluate

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose test or train")
    ticket.state(weights)  # an untrained ticket with --weights trained fails here, before any data is read
    info = data_mod.get_dataset_info(dataset_for(ticket, data.dataset), data.data_dir)
    recorded = ticket.hparams or {}
    resize = data_mod.resize_to_fit(info, ticket.input_shape, resize, recorded.get("resize"))
    data_mod.check_compatible(data_mod.resized(info, resize), ticket.input_shape, ticket.num_classes)
    dev = resolve_device(device)
    if precision == "auto" and weights == "trained" and str(recorded.get("device", "")).split(":")[0] == dev.type:
        precision = str(recorded.get("precision", "auto"))
    prec = resolve_precision(precision, dev)
    if batch_size is None:
        batch_size = int(recorded.get("eval_batch_size") or (1000 if info.in_memory else 250))
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    setup = device_setup(dev, prec)
    bundle = data_mod.load_dataset(info.name, data.data_dir, download=data.download, device=setup,
                                   num_workers=data.workers)
    bundle.set_resize(resize)
    result = evaluate(setup.prepare_model(ticket.build_model(weights)), bundle, split, batch_size, prec)
    return {"sha256": ticket.sha256, "arch": ticket.arch, "dataset": info.name, "split": split, "weights": weights,
            "device": device_name(dev), "precision": prec, "batch_size": batch_size, "resize": resize, **result}
