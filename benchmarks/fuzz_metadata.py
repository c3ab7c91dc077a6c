"""Metadata fuzzing: mutate one to three metadata values of a valid ticket and count the crashes.

A valid, rich ticket (trained, then stretched: it has hparams, metrics, config, cost, parents and
a transform) is re-written with one to three of its metadata values replaced by values of the
wrong type or range. Each mutant goes through what the commands do with a ticket: load (``elth
info``'s summary and its config lines), stretch, and re-save. Any exception that is not elth's own
error (``ElthError``, which the CLI prints as one line) is a crash: the CLI would print a traceback.

    python benchmarks/fuzz_metadata.py                  # 3,000 cases
    python benchmarks/fuzz_metadata.py --cases 500 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from elth_cli import data, elastic, train
from elth_cli.cli import render
from elth_cli.errors import ElthError
from elth_cli.find import random_ticket
from elth_cli.ticket import Ticket

# Values of the wrong type or range, as the metadata's strings.
POOL = [
    "0", "-1", "3", "1e400", "100000000000000000000", "-0.5", "1.5", "0.5", "nan", "inf", "", "x", "resnet20",
    "true", "null", '"text"', "[]", "{}", "[1, 8]", "[1, 8, 8, 8]", '["a", "b", "c"]', "[0, 8, 8]",
    "[100000000, 8, 8]", '{"a": 1}', "[[1]]", "[1]", '{"train_steps": "x"}', '{"train_seconds": -5}',
    '[{"sha256": 5}]', '[{"arch": []}]', '["p"]', '{"environment": []}', '{"hparams": 3}', '{"kind": 1}',
    '{"mapping": "x"}', '{"mapping": [["a"]]}', "7.5", "12", "1000000000000", '"resnet56"', "[3, 32, 32]",
]


def rich_ticket() -> bytes:
    """A resnet14-w4 ticket trained for one epoch on digits, stretched to resnet20-w4."""
    bundle = data.load_dataset("digits")
    ticket = random_ticket("resnet14-w4", (1, 8, 8), 10, 0.5, seed=0, dataset="digits")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=1)
    trained = train.train_ticket(ticket, bundle, cfg, handle_signals=False)
    source = Ticket.from_bytes(trained.to_bytes(), "trained")
    return elastic.stretch(source, "resnet20-w4").to_bytes()


def mutant(valid: bytes, rng: random.Random) -> tuple[bytes, dict[str, str]]:
    tensors = st_load(valid)
    n = int.from_bytes(valid[:8], "little")
    meta = dict(json.loads(valid[8:8 + n])["__metadata__"])
    changes = {key: rng.choice(POOL) for key in rng.sample(sorted(meta), rng.randint(1, 3))}
    meta.update(changes)
    return st_save(tensors, metadata=meta), changes


def exercise(raw: bytes) -> None:
    """What `elth info`, `elth stretch` and a re-save do with a ticket."""
    ticket = Ticket.from_bytes(raw, "mutant")
    render.ticket_summary(ticket)
    render.config_lines(ticket.config)
    json.dumps(render.ticket_summary(ticket))
    elastic.stretch(ticket, "resnet26-w4").to_bytes()
    ticket.to_bytes()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    valid = rich_ticket()
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    examples: dict[str, dict[str, str]] = {}
    t0 = time.perf_counter()
    for _ in range(args.cases):
        raw, changes = mutant(valid, rng)
        try:
            exercise(raw)
            outcomes["accepted"] += 1
        except ElthError:
            outcomes["refused (one line)"] += 1
        except Exception as e:  # noqa: BLE001 - counting crashes is the point
            kind = f"crash: {type(e).__name__}"
            outcomes[kind] += 1
            examples.setdefault(kind, changes)
    crashes = sum(v for k, v in outcomes.items() if k.startswith("crash"))
    result = {"cases": args.cases, "seed": args.seed, "crashes": crashes, "outcomes": dict(outcomes),
              "examples": examples, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{args.cases} mutants (seed {args.seed}): {crashes} crashes ({100 * crashes / args.cases:.1f} %)")
        for kind, count in outcomes.most_common():
            print(f"  {kind:<28} {count:6d}" + (f"   e.g. {examples[kind]}" if kind in examples else ""))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
