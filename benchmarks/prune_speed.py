"""How long pruning takes: a global magnitude threshold over a large network, and IMP's own
overhead per round (pruning, rewinding, saving) against the round's training time.

    python benchmarks/prune_speed.py                 # imagenet-resnet50, 1 CPU thread
    python benchmarks/prune_speed.py --threads 2 --device cuda

Targets (docs/find.md): under 2 s for imagenet-resnet50 (25 M weights) on a CPU; IMP's overhead
under 1 % of a round's training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from elth_cli.train.options import RunOptions
from elth_cli import archs, data, train
from elth_cli.find import random_ticket
from elth_cli.masks import kept_and_total
from elth_cli.prune import magnitude_scores, prune_lowest, prune_to_sparsity
from elth_cli.ticket import Ticket, apply_masks


def time_global_threshold(arch: str, device: str, repeats: int) -> dict:
    ticket = random_ticket(arch, (3, 224, 224), 1000, 0.0, seed=0)
    weights = {k: ticket.init[k].to(device) for k in ticket.masks}
    masks = {k: m.to(device) for k, m in ticket.masks.items()}
    n = kept_and_total(masks)[1]
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = prune_to_sparsity(magnitude_scores(weights, list(masks)), masks, 0.2)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del out
    return {"arch": arch, "weights": n, "device": device, "seconds_median": sorted(times)[len(times) // 2],
            "seconds_min": min(times)}


def time_imp_overhead(arch: str, epochs: int) -> dict:
    bundle = data.load_dataset("digits")
    spec = archs.resolve_arch(arch)
    cfg = train.default_recipe(spec, bundle.info).replace(epochs=epochs)
    ticket = random_ticket(arch, bundle.info.input_shape, bundle.info.num_classes, 0.0, seed=0, dataset="digits")
    result = train.train_state(ticket.build_model(), ticket.masks, bundle, cfg, 0, run=RunOptions(handle_signals=False))
    trained = ticket.__class__(**{**ticket.__dict__, "trained": result.state})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        remaining = kept_and_total(trained.masks)[0]
        masks = prune_lowest(magnitude_scores(trained.trained, trained.masks), trained.masks, round(0.2 * remaining))
        child = Ticket(arch=ticket.arch, input_shape=ticket.input_shape, num_classes=ticket.num_classes, masks=masks,
                       init=apply_masks(ticket.init, masks), trained=apply_masks(result.state, masks), method="imp")
        child.save(Path(tmp) / "round.safetensors")
        overhead = time.perf_counter() - t0
    return {"arch": arch, "epochs": epochs, "train_seconds": result.metrics["wall_time_s"],
            "overhead_seconds": round(overhead, 4),
            "overhead_fraction": round(overhead / result.metrics["wall_time_s"], 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="imagenet-resnet50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imp-arch", default="resnet20-w4")
    parser.add_argument("--imp-epochs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threshold = time_global_threshold(args.arch, args.device, args.repeats)
    overhead = time_imp_overhead(args.imp_arch, args.imp_epochs)
    if args.json:
        print(json.dumps({"global_threshold": threshold, "imp_overhead": overhead}, indent=2))
        return
    print(f"global magnitude threshold, {threshold['arch']} ({threshold['weights']:,} weights) on "
          f"{threshold['device']} with {args.threads} thread(s): {threshold['seconds_median']:.3f} s (median of "
          f"{args.repeats}), min {threshold['seconds_min']:.3f} s")
    print(f"IMP overhead per round, {overhead['arch']} on digits ({overhead['epochs']} epochs): prune + rewind + save "
          f"{overhead['overhead_seconds']:.3f} s vs training {overhead['train_seconds']:.2f} s "
          f"= {100 * overhead['overhead_fraction']:.2f} %")


if __name__ == "__main__":
    main()
