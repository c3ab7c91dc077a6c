"""Tickets across initialisations and widths, with the lottery's own controls, on the digits set.

For resnet20-w4 (``--arch``; ``--wide``: the width it is widened to), IMP chains on seeds 0, 1, 2
(rewind to the end of epoch 1, a prune rate that reaches exactly 95 % in 13 rounds, so round 10 is
90.0 %), and at each level for each seed s, with t = the next seed (the new initialisation is seed t's dense round 0, at its rewind step):

* ``IMP ticket``: the ticket itself (its IMP round's training);
* ``naive``: its mask on seed t's init weights (``elth align --by none``);
* ``aligned (weights)``, ``aligned (activations)``: its mask permuted onto seed t's units (``elth align``);
* ``aligned + signs``: weight matching, and the ticket's own init signs with seed t's magnitudes;
* ``reinit``: its mask on fresh weights (``elth find --method reinit``, seed 100 + s);
* ``random layer-wise``: a random mask with its per-layer sparsity at its own init (``--match layerwise``).

And width: the width-4 ticket widened to width 8 (``elth widen --init-from`` the width-8 chain's round 0
of the same seed, so only the mask differs from that chain's own ticket), width 8's own IMP ticket, and
a random mask with the widened ticket's per-layer sparsity at the same init.

Every training uses the digits recipe at 15 epochs (the demo's), one thread per training, ``--jobs``
side by side. The table gives the test accuracy over the seeds (mean +- std, n).

    python benchmarks/lottery_controls.py --out runs/controls          # about 20 minutes on 2 cores
    python benchmarks/lottery_controls.py --out runs/controls --json
    python benchmarks/lottery_controls.py --seeds 0 1 --levels 4 --rounds 4 --epochs 3   # a quick look
    python benchmarks/lottery_controls.py --arch resnet20-w16 --wide resnet20-w32 --out runs/wider
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ELTH = [sys.executable, "-m", "elth_cli"]
ROOT = Path(__file__).resolve().parents[1]


def elth(*args: str, log: Path | None = None) -> None:
    """One ``elth`` command in a fresh single-threaded process; a failure stops the benchmark with its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with open(log or os.devnull, "w") as out:
        done = subprocess.run([*ELTH, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"elth {' '.join(args)} failed (exit {done.returncode}); see {log}")


def imp_chains(out: Path, archs: list[str], seeds: list[int], args: argparse.Namespace) -> None:
    """Every (arch, seed) IMP chain into ``out/imp-ARCH-sSEED`` (a finished one is reused), ``--jobs`` at once."""
    # Four decimals, rounded up: IMP then needs exactly --rounds rounds, the last pruned to exactly --sparsity.
    rate = math.ceil((1 - (1 - args.sparsity) ** (1 / args.rounds)) * 1e4) / 1e4
    jobs = [(a, s) for a in archs for s in seeds]

    def chain(job: tuple[str, int]) -> None:
        arch, seed = job
        elth("find", "--method", "imp", "--arch", arch, "--dataset", "digits", "--seed", str(seed),
             "--prune-rate", str(rate), "--sparsity", str(args.sparsity), "--rewind", "1ep",
             "--epochs", str(args.epochs), "--eval-every", "0", "--out-dir", str(out / f"imp-{arch}-s{seed}"), "-q",
             log=out / f"imp-{arch}-s{seed}.log")

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(chain, jobs))


def make_tickets(out: Path, seeds: list[int], levels: list[int], arch: str, wide: str) -> dict[tuple[str, int, int], Path]:
    """Every control ticket, by (row, level, seed), written under ``out/tickets``."""
    from elth_cli.align import AlignOptions, align_ticket, training_inputs
    from elth_cli.find.baselines import BaselineOptions, prune_baseline, reinit_ticket
    from elth_cli.ticket import Ticket
    from elth_cli.width import WidthOptions, widen

    folder = out / "tickets"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = training_inputs("digits", None, 10, 128, 0)
    made: dict[tuple[str, int, int], Path] = {}

    def rnd(arch: str, s: int, r: int) -> Ticket:
        return Ticket.load(out / f"imp-{arch}-s{s}" / f"round-{r:02d}.safetensors")

    for s in seeds:
        t = seeds[(seeds.index(s) + 1) % len(seeds)]
        own0, other0, wide0 = rnd(arch, s, 0), rnd(arch, t, 0), rnd(wide, s, 0)
        for level in levels:
            ticket = rnd(arch, s, level)
            rows = {
                "naive": align_ticket(ticket, None, other0, AlignOptions(by="none")),
                "aligned (weights)": align_ticket(ticket, own0, other0, AlignOptions(by="weights")),
                "aligned (activations)": align_ticket(ticket, own0, other0, AlignOptions(by="activations"), inputs),
                "aligned + signs": align_ticket(ticket, own0, other0, AlignOptions(by="weights", signs=True)),
                "reinit": reinit_ticket(ticket, 100 + s),
                "random layer-wise": prune_baseline(own0, BaselineOptions("random", like=ticket, match="layerwise",
                                                                          seed=s)),
            }
            widened = widen(ticket, wide, WidthOptions(init="from", init_from=wide0))
            rows["w4 widened to w8"] = widened
            rows["w8 random layer-wise"] = prune_baseline(wide0, BaselineOptions("random", like=widened,
                                                                                 match="layerwise", seed=s))
            for row, made_ticket in rows.items():
                path = folder / f"s{s}-r{level:02d}-{row.replace(' ', '_').replace('(', '').replace(')', '')}.safetensors"
                if not path.exists():
                    made_ticket.save(path)
                made[(row, level, s)] = path
    return made


def train_all(out: Path, made: dict[tuple[str, int, int], Path], seeds: list[int], args: argparse.Namespace) -> None:
    """Train every control ticket (data order: its chain's seed), ``--jobs`` side by side; finished ones are reused."""
    for s in seeds:
        paths = [str(p) for (row, level, seed), p in made.items() if seed == s]
        elth("train", *paths, "--dataset", "digits", "--out-dir", str(out / "trained"), "--jobs", str(args.jobs),
             "--seed", str(s), "--epochs", str(args.epochs), "--eval-every", "0", "-q", log=out / f"train-s{s}.log")


def table(out: Path, made: dict[tuple[str, int, int], Path], seeds: list[int], levels: list[int], arch: str,
          wide: str) -> list[dict]:
    """Rows of test accuracy over the seeds, per level."""
    from elth_cli.ticket import Ticket

    def acc(path: Path) -> tuple[float, float]:
        t = Ticket.load(path)
        return float(t.metrics["test_acc"]), t.sparsity

    rows = []
    order = ["IMP ticket", "naive", "aligned (weights)", "aligned (activations)", "aligned + signs", "reinit",
             "random layer-wise", "w8 IMP ticket", "w4 widened to w8", "w8 random layer-wise"]
    for level in levels:
        for row in order:
            found = []
            for s in seeds:
                if row in ("IMP ticket", "w8 IMP ticket"):
                    name = arch if row == "IMP ticket" else wide
                    found.append(acc(out / f"imp-{name}-s{s}" / f"round-{level:02d}.safetensors"))
                else:
                    found.append(acc(out / "trained" / made[(row, level, s)].name))
            accs = [a for a, _ in found]
            rows.append({"level": level, "row": row, "sparsity": statistics.mean(sp for _, sp in found),
                         "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "n": len(accs), "accs": accs})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default="resnet20-w4", help="the network whose tickets move")
    p.add_argument("--wide", default="resnet20-w8", help="the wider network of its family they are widened to")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--levels", type=int, nargs="+", default=[10, 13])
    p.add_argument("--rounds", type=int, default=13)
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    imp_chains(args.out, [args.arch, args.wide], args.seeds, args)
    t_imp = time.perf_counter() - t0
    made = make_tickets(args.out, args.seeds, args.levels, args.arch, args.wide)
    train_all(args.out, made, args.seeds, args)
    rows = table(args.out, made, args.seeds, args.levels, args.arch, args.wide)
    wall = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"rows": rows, "wall_s": wall, "imp_s": t_imp, "seeds": args.seeds, "epochs": args.epochs}))
        return
    print(f"test accuracy on digits, {args.arch} (width rows: {args.wide}), {len(args.seeds)} seeds, "
          f"{args.epochs} epochs; {wall:.0f} s ({t_imp:.0f} s of IMP chains)")
    print(f"{'level':>5}  {'row':<24} {'sparsity':>8}  {'test acc (mean +- std, n)':>26}")
    for r in rows:
        print(f"{r['level']:>5}  {r['row']:<24} {r['sparsity']:>8.2%}  {100 * r['mean']:>14.2f} +- "
              f"{100 * r['std']:.2f}, n={r['n']}")


if __name__ == "__main__":
    main()
