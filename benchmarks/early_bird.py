"""Early-bird IMP against full IMP on digits: compute spent, and what the tickets are worth.

Reads a finished demo folder (``elth demo --out-dir DIR``: it holds a full IMP run and an
early-bird IMP run for each network, and every row of table.json), then for each network prints:

* the compute to obtain the ticket of each demo level and of the last round (training steps and
  FLOPs of the rounds before it), full IMP against early-bird IMP, and the saving;
* the test accuracy of the round tickets at the demo's levels, each trained in full with the same
  recipe (the full chain's own round, the early-bird chain's round trained anew by the demo);
* the test accuracy of a ticket transformed from an early-bird source against one transformed from
  the full IMP source (stretch append to the large network, squeeze keep-first to the small one),
  trained with the same recipe. The demo trains the ones from full sources; this script trains the
  ones from early-bird sources into ``DIR/early-bird-transfers`` (reused when re-run).

    elth demo --out-dir demo-out && python benchmarks/early_bird.py demo-out
    python benchmarks/early_bird.py demo-out --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from elth_cli import archs, elastic
from elth_cli.find.runfolder import round_path
from elth_cli.report import fmt_flops, fmt_pct
from elth_cli.ticket import Ticket
from elth_cli.train.session import save_result, training_session


def chain_cost(run_dir: Path, level: int) -> dict[str, Any]:
    """Steps and FLOPs that obtaining round ``level``'s ticket took (every training before it)."""
    cost = Ticket.load(round_path(run_dir, level)).cost
    return {"steps": int(cost["train_steps"]), "flops": float(cost["train_flops"])}


def transferred(session, out: Path, source: Path, target: str, op: str, strategy: str, cfg, bundle) -> Ticket:
    """``source`` stretched or squeezed to ``target`` and trained with ``cfg`` (cached in ``out``)."""
    path = out / f"{source.parent.name}-{source.stem}-{op}-{strategy}-{target}.safetensors"
    if path.exists():
        return Ticket.load(path)
    src = Ticket.load(source)
    fn = elastic.stretch if op == "stretch" else elastic.squeeze
    moved = fn(src, archs.resolve_target(src.spec, target), strategy=strategy)
    ckpt = path.with_name(path.name + ".ckpt")
    trained = session.train_ticket(moved, bundle, cfg, checkpoint_path=ckpt)
    save_result(trained, path, ckpt, force=True)
    return trained


def evidence(demo_dir: Path) -> dict[str, Any]:
    """Every figure of the comparison, from the demo folder (plus the early-bird transfers it trains)."""
    table = json.loads((demo_dir / "table.json").read_text())
    config = table["config"]
    small, large, levels, last = config["small"], config["large"], config["levels"], config["rounds"]
    rows = {(r["target"], r["level"], r["kind"]): r for r in table["rows"]}
    out = demo_dir / "early-bird-transfers"
    out.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"demo": str(demo_dir), "levels": levels, "networks": {}}
    started = time.perf_counter()
    with training_session("cpu") as session:
        for arch, other, op, strategy in ((small, large, "squeeze", "keep-first"),
                                          (large, small, "stretch", "append")):
            cfg, bundle = session.prepare(archs.resolve_arch(arch), "digits", seed=config["seed"],
                                          epochs=config["epochs"])
            entry: dict[str, Any] = {"cost": {}, "levels": {}}
            for level in sorted({*levels, last}):
                entry["cost"][level] = {"full": chain_cost(demo_dir / f"imp-{arch}", level),
                                        "early_bird": chain_cost(demo_dir / f"imp-eb-{arch}", level)}
            for level in levels:
                kind = f"{op} {strategy}"
                eb_source = round_path(demo_dir / f"imp-eb-{other}", level)
                moved = transferred(session, out, eb_source, arch, op, strategy, cfg, bundle)
                entry["levels"][level] = {
                    "own_full": rows[(arch, level, "IMP (own)")]["test_acc"],
                    "own_early_bird": rows[(arch, level, "IMP early-bird")]["test_acc"],
                    f"{kind} from full": rows[(arch, level, kind)]["test_acc"],
                    f"{kind} from early-bird": moved.metrics["test_acc"],
                }
            doc["networks"][arch] = entry
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


def render(doc: dict[str, Any]) -> str:
    lines = []
    for arch, entry in doc["networks"].items():
        lines.append(f"\n{arch}: compute to obtain the round's ticket (trainings before it)")
        lines.append("| round | full IMP steps | early-bird steps | full IMP FLOPs | early-bird FLOPs | saved |")
        lines.append("|---|---|---|---|---|---|")
        for level, c in entry["cost"].items():
            full, early = c["full"], c["early_bird"]
            saved = 1 - early["flops"] / full["flops"] if full["flops"] else 0.0
            lines.append(f"| {level} | {full['steps']:,} | {early['steps']:,} | {fmt_flops(full['flops'])} | "
                         f"{fmt_flops(early['flops'])} | {fmt_pct(saved, 1)} |")
        lines.append(f"\n{arch}: test accuracy, every ticket trained in full with the recipe")
        keys = list(next(iter(entry["levels"].values())))
        lines.append("| round | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        for level, accs in entry["levels"].items():
            lines.append(f"| {level} | " + " | ".join(fmt_pct(accs[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path, help="a finished `elth demo --out-dir` folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.demo_dir / "table.json").exists():
        print(f"error: {args.demo_dir} holds no finished demo (table.json); run elth demo --out-dir "
              f"{args.demo_dir} first", file=sys.stderr)
        return 2
    doc = evidence(args.demo_dir)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
