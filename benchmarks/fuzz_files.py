"""File fuzzing: damage real tickets and checkpoints in every way a disk, a copy or a hand edit does,
and count what elth lets through.

Two files are made first: a rich ticket (resnet14-w4 trained one epoch on digits, then stretched to
resnet20-w4: it has hparams, metrics, config, cost, parents and a transform) and a real checkpoint
(resnet8-w4 on digits, stopped at step 30 of 46 by ``stop_at_step``: model, momentum buffers, RNG,
running statistics, masks). Mutants of each, by kind:

* ``bytes``      (a) 1-4 byte edits (anywhere, in the header, or in a metadata value's characters;
  the new byte random or a printable one) and/or a truncation anywhere;
* ``meta``       (b) 1-3 metadata values replaced, the file re-written with safetensors keeping the
  old digest value (what an edit by hand does);
* ``meta-redigest`` (c) the same, re-written with ``container.save_with_digest`` (a valid digest:
  only the schema stands between the values and the commands; these may legitimately load);
* ``swap``       (d) two same-shaped tensors of different content exchange names (masks, init
  weights, conv1/conv2 of a block, momentum buffers ``optim/<i>/momentum_buffer``), digest kept;
* ``targeted``   (e) checkpoints only: ``step``, and lr, momentum, weight_decay, nesterov, maximize
  and dampening inside ``param_groups``, edited by hand (digest kept).

A ticket mutant goes through what the commands do with a ticket (``Ticket.from_bytes``, ``elth
info``'s summary and config lines, the model built from its weights, a stretch and a re-save); a
checkpoint mutant through a resume (``read_checkpoint``, the run-identity check, ``restore_checkpoint``
into ``build_parts``' model and optimizer, the masks) and, when that accepts it, one training step
from it (``train_ticket``). Counted per kind: refused with elth's one-line error (``ElthError``),
crashes (anything else: the CLI would print a traceback), accepted, and the failures that matter:
a damaged file (kinds a, b, d, e, bytes changed) accepted, and for tickets a load that returned other
tensors than were written. Expected: 0 crashes, 0 damaged files accepted.

    python benchmarks/fuzz_files.py                         # 9,000 ticket and 215 checkpoint mutants
    python benchmarks/fuzz_files.py --cases 2000 --seed 1 --json
    python benchmarks/fuzz_files.py --only checkpoints --checkpoint-cases 400 --save-dir fuzz-out
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import hashlib
import io
import json
import platform
import random
import re
import string
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from elth_cli import __version__, container, data, elastic, train
from elth_cli.cli import render
from elth_cli.runtime.device import device_setup
from elth_cli.errors import ElthError
from elth_cli.find import random_ticket
from elth_cli.masks import same_layout
from elth_cli.ticket import Ticket

# Values of the wrong type or range (and a few right ones), as the metadata's strings.
POOL = [
    "0", "1", "2", "-1", "3", "1e400", "100000000000000000000", "-0.5", "1.5", "0.5", "nan", "inf", "", "x",
    "resnet20", "true", "false", "null", '"text"', "[]", "{}", "[1, 8]", "[1, 8, 8, 8]", '["a", "b", "c"]',
    "[0, 8, 8]", "[100000000, 8, 8]", '{"a": 1}', "[[1]]", "[1]", '{"train_steps": "x"}', '{"train_seconds": -5}',
    '[{"sha256": 5}]', '[{"arch": []}]', '["p"]', '{"environment": []}', '{"hparams": 3}', '{"kind": 1}',
    '{"mapping": "x"}', '{"mapping": [["a"]]}', "7.5", "12", "1000000000000", '"resnet56"', "[3, 32, 32]",
    "elth.ticket", "elth.checkpoint", "resnet8-w4", "resnet26-w4", "digits", "imp", "0" * 64, "f" * 64,
]
# What replaces one value inside a JSON metadata value (hparams.eval_batch_size, param_groups[0].lr, ...).
LEAVES: list[Any] = [0, 1, -1, 2, 3, 0.5, 1.5, -0.5, 1e30, 10**20, 2**53 + 1, True, False, None, "", "x", [], {}, [1],
                     {"a": 1}, "nan", "cpu"]
PRINTABLE = string.digits + string.ascii_letters + '{}[]":,.-_ '
DAMAGE_KINDS = ("bytes", "meta", "swap", "targeted")  # a, b, d, e: every changed file of these kinds is damaged
ORIGINAL_STEP = 30  # the checkpoint's step (of 2 epochs x 23 = 46)


# ----- the two files ------------------------------------------------------------------------------
# What differs from one making of a file to the next (times, the host): fixed, so that a seed gives the same
# mutants on every run on one machine.
_STEADY = {"wall_time_s": 1.0, "images_per_s": 1.0, "train_seconds": 1.0, "prune_seconds": 1.0, "seconds": 1.0,
           "wall_seconds": 1.0, "created": "2026-01-01T00:00:00Z", "hostname": "host", "sha256": "0" * 64}


def _steady_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _STEADY[k] if k in _STEADY and value[k] is not None else _steady_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_steady_value(v) for v in value]
    return value


def steady(raw: bytes) -> bytes:
    """``raw`` with its times, host and parents' digests fixed and its metadata in key order (safetensors
    writes it in a random one), with a valid digest: the same bytes from every run on one machine."""
    n, header, meta = split(raw)
    for key, value in meta.items():
        if key in _STEADY:
            meta[key] = str(_STEADY[key])
        elif value[:1] in ("{", "["):
            meta[key] = json.dumps(_steady_value(json.loads(value)))
    zeros = {**meta, container.FILE_DIGEST_KEY: "0" * 64}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    text = json.dumps({"__metadata__": dict(sorted(zeros.items())), **entries}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # as safetensors pads it
    data = len(text).to_bytes(8, "little") + text + raw[8 + n:]
    field = f'"{container.FILE_DIGEST_KEY}":"{{}}"'
    return data.replace(field.format("0" * 64).encode(), field.format(hashlib.sha256(data).hexdigest()).encode())


def rich_ticket(bundle: Any) -> bytes:
    """A resnet14-w4 ticket trained for one epoch on digits, stretched to resnet20-w4."""
    ticket = random_ticket("resnet14-w4", (1, 8, 8), 10, 0.5, seed=0, dataset="digits")
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = train.train_ticket(ticket, bundle, cfg, handle_signals=False)
    source = Ticket.from_bytes(trained.to_bytes(), "trained")
    return steady(elastic.stretch(source, "resnet20-w4").to_bytes())


@dataclass
class CheckpointRun:
    """A resnet8-w4 run on digits stopped at step 30, and what resuming it needs."""

    bundle: Any
    ticket: Ticket
    cfg: Any
    raw: bytes
    identity: dict[str, Any]
    folder: Path


def stopped_run(bundle: Any, folder: Path) -> CheckpointRun:
    ticket = random_ticket("resnet8-w4", (1, 8, 8), 10, 0.5, seed=0, dataset="digits")  # tests/conftest make_ticket
    cfg = train.default_recipe(ticket.spec, bundle.info).replace(epochs=2)
    ckpt = folder / "run.ckpt"
    with contextlib.suppress(train.TrainingStopped):
        train.train_ticket(ticket, bundle, cfg, checkpoint_path=ckpt, stop_at_step=ORIGINAL_STEP, handle_signals=False)
    spe = bundle.steps_per_epoch(cfg.batch_size)
    identity = train.run_identity(cfg, ticket.rewind_step, spe, 1, ticket.build_model("init").state_dict(),
                                  ticket.masks)
    return CheckpointRun(bundle, ticket, cfg, steady(ckpt.read_bytes()), identity, folder)


# ----- mutants ------------------------------------------------------------------------------------
def split(raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Header length, header, metadata."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return n, header, dict(header.get("__metadata__", {}))


def value_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where each metadata value's characters lie in the file (inside its JSON string's quotes)."""
    n, _, meta = split(raw)
    spans = []
    for key in meta:
        at = raw.find(json.dumps(key).encode() + b':"', 8, 8 + n)
        if at < 0:
            continue
        start = end = at + len(json.dumps(key)) + 2
        while end < 8 + n and raw[end] != ord('"'):
            end += 2 if raw[end] == ord("\\") else 1
        if end > start:
            spans.append((start, end))
    return spans


@dataclass
class Original:
    """A valid file and what its mutants are made from."""

    raw: bytes
    tensors: dict[str, Any]
    meta: dict[str, str]
    header_end: int
    spans: list[tuple[int, int]]
    pairs: list[tuple[str, str]]  # same shape and dtype, different content


def original(raw: bytes) -> Original:
    import torch

    n, _, meta = split(raw)
    tensors = st_load(raw)
    groups: dict[tuple, list[str]] = collections.defaultdict(list)
    for name, t in sorted(tensors.items()):
        groups[(tuple(t.shape), t.dtype)].append(name)
    pairs = [(a, b) for names in groups.values() for i, a in enumerate(names) for b in names[i + 1:]
             if not torch.equal(tensors[a], tensors[b])]
    return Original(raw, tensors, meta, 8 + n, value_spans(raw), pairs)


def byte_damage(o: Original, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(o.raw)
    mode = rng.choice(("edits", "edits", "cut", "edits+cut"))
    notes = []
    if "edits" in mode:
        for _ in range(rng.randint(1, 4)):
            where = rng.random()
            if where < 0.5 or not o.spans:
                pos = rng.randrange(len(out))
            elif where < 0.75:
                pos = rng.randrange(o.header_end)
            else:
                lo, hi = rng.choice(o.spans)
                pos = rng.randrange(lo, hi)
            out[pos] = rng.randrange(256) if rng.random() < 0.5 else ord(rng.choice(PRINTABLE))
            notes.append(f"byte {pos} {o.raw[pos]:#04x}->{out[pos]:#04x}")
    if "cut" in mode:
        cut = rng.randrange(len(out))
        out = out[:cut]
        notes.append(f"cut at {cut} of {len(o.raw)}")
    return bytes(out), ", ".join(notes)


def _edit_json(value: str, rng: random.Random) -> str | None:
    """``value`` (a JSON object or list) with one nested value replaced, added or removed; None when it is no
    such JSON."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, (dict, list)) or not doc:
        return None
    node = doc
    while True:  # walk down to a random container
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            node = child
            continue
        action = rng.random()
        if action < 0.8:
            node[key] = rng.choice(LEAVES)
        elif isinstance(node, dict) and action < 0.9:
            del node[key]
        elif isinstance(node, dict):
            node[rng.choice(("x", "lr", "step", "epochs", "sha256"))] = rng.choice(LEAVES)
        else:
            node.append(rng.choice(LEAVES))
        break
    return json.dumps(doc)


def new_value(old: str, rng: random.Random) -> str:
    if rng.random() < 0.4:
        edited = _edit_json(old, rng)
        if edited is not None:
            return edited
    return rng.choice(POOL)


def metadata_edit(o: Original, rng: random.Random, redigest: bool) -> tuple[bytes, str]:
    meta = dict(o.meta)
    keys = sorted(k for k in meta if not (redigest and k in container.DIGEST_KEYS))
    changes = {key: new_value(meta[key], rng) for key in rng.sample(keys, rng.randint(1, 3))}
    meta.update(changes)
    raw = container.save_with_digest(o.tensors, meta) if redigest else st_save(o.tensors, metadata=meta)
    return raw, json.dumps(changes)[:300]


def name_swap(o: Original, rng: random.Random) -> tuple[bytes, str]:
    a, b = rng.choice(o.pairs)
    tensors = dict(o.tensors)
    tensors[a], tensors[b] = o.tensors[b], o.tensors[a]
    return st_save(tensors, metadata=o.meta), f"{a} <-> {b}"


def targeted_edits(o: Original) -> list[tuple[str, bytes]]:
    """Hand edits of a checkpoint's step and optimizer hyperparameters (digest kept): 15 of them."""
    step = int(o.meta["step"])
    groups = json.loads(o.meta["param_groups"])
    edits: list[tuple[str, Callable[[dict, list], None]]] = [
        (f"step {step} -> {step - 1}", lambda m, g: m.__setitem__("step", str(step - 1))),
        (f"step {step} -> {step + 1}", lambda m, g: m.__setitem__("step", str(step + 1))),
        (f"step {step} -> 0", lambda m, g: m.__setitem__("step", "0")),
    ]
    for key, first, second in (("lr", 0.5, 0.0), ("momentum", 0.5, 0.0), ("weight_decay", 0.0, 0.01),
                               ("nesterov", None, None), ("maximize", None, None), ("dampening", 0.5, 0.9)):
        flip = isinstance(groups[0].get(key), bool)
        for label, value, every in (("group 0", first, False), ("every group", second, True)):
            def edit(m: dict, g: list, key=key, value=value, every=every, flip=flip) -> None:
                for group in (g if every else g[:1]):
                    group[key] = (not group.get(key)) if flip else value
            shown = "flipped" if flip else value
            edits.append((f"param_groups {label}: {key} {groups[0].get(key)} -> {shown}", edit))
    out = []
    for label, edit in edits:
        meta, g = dict(o.meta), json.loads(o.meta["param_groups"])
        edit(meta, g)
        meta["param_groups"] = json.dumps(g)  # as save_checkpoint writes it: unchanged by the step edits
        out.append((label, st_save(o.tensors, metadata=meta)))
    return out


# ----- what the commands do -----------------------------------------------------------------------
def exercise_ticket(raw: bytes) -> Ticket:
    """What `elth info`, `elth eval`, `elth stretch` and a re-save do with a ticket."""
    ticket = Ticket.from_bytes(raw, "mutant.safetensors")
    json.dumps(render.ticket_summary(ticket))
    render.config_lines(ticket.config)
    ticket.build_model("trained" if ticket.is_trained else "init")
    elastic.stretch(ticket, "resnet26-w4").to_bytes()
    ticket.to_bytes()
    return ticket


def same_tensors(ticket: Ticket, o: Original) -> bool:
    import torch

    loaded = {f"mask/{k}": v for k, v in ticket.masks.items()}
    loaded.update({f"init/{k}": v for k, v in ticket.init.items()})
    loaded.update({f"trained/{k}": v for k, v in (ticket.trained or {}).items()})
    return loaded.keys() == o.tensors.keys() and all(
        v.dtype == o.tensors[k].dtype and torch.equal(v, o.tensors[k]) for k, v in loaded.items())


def resume(run: CheckpointRun, raw: bytes) -> None:
    """Resume from ``raw`` as ``elth train`` does, then train one step from it."""
    path = run.folder / "mutant.ckpt"
    path.write_bytes(raw)
    ckpt = train.read_checkpoint(path)
    diff = train.run_differences(ckpt.identity, run.identity)
    if diff:  # train_state's own words
        raise ElthError(f"checkpoint {path} belongs to a different run (differs in: {'; '.join(diff)})")
    parts = train.build_parts(run.ticket.build_model("init"), run.ticket.masks, run.cfg, device_setup("cpu"))
    state = train.restore_checkpoint(ckpt, parts.model, parts.optimizer, parts.scaler, parts.step.stats)
    masks = ckpt.masks()
    if masks is not None:
        if not same_layout(masks, parts.masks.masks):
            raise ElthError(f"cannot resume from {path}: its masks do not fit this run")
        parts.masks.load(masks)
        parts.masks.load_extra(state.extra_tensors)
    # Accepted: train on from it, through the whole resume path of train_ticket.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            train.train_ticket(run.ticket, run.bundle, run.cfg, checkpoint_path=path, handle_signals=False,
                               stop_at_step=max(state.step, 0) + 1)
        except train.TrainingStopped:
            pass


# ----- counting -----------------------------------------------------------------------------------
@dataclass
class Tally:
    cases: int = 0
    unchanged: int = 0  # the mutant is the original file (a byte set to its own value)
    refused: int = 0
    crashes: int = 0
    accepted: int = 0
    damaged_accepted: int = 0  # kinds a, b, d, e with changed bytes that loaded / resumed
    other_tensors: int = 0  # tickets: loaded with other tensors than were written
    reasons: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, what: str, note: str, limit: int = 3) -> None:
        self.examples.setdefault(what, [])
        if len(self.examples[what]) < limit:
            self.examples[what].append(note)

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "unchanged": self.unchanged, "refused": self.refused, "crashes": self.crashes,
                "accepted": self.accepted, "damaged_accepted": self.damaged_accepted,
                "other_tensors": self.other_tensors, "top_refusals": dict(self.reasons.most_common(6)),
                "examples": self.examples}


def _reason(e: Exception) -> str:
    """The refusal's wording, without file names and numbers (to group them)."""
    text = str(e).replace("mutant.safetensors", "FILE")
    text = re.sub(r"\S*mutant\.ckpt", "FILE", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"\d+", "N", text)[:90]


def _save(save_dir: Path | None, what: str, index: int, raw: bytes, suffix: str) -> str:
    if save_dir is None:
        return ""
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"{what}-{index:05d}{suffix}"
    path.write_bytes(raw)
    return f" (saved {path})"


def fuzz(target: str, o: Original, kinds: dict[str, int], rng: random.Random, exercise: Callable[[bytes], Any],
         save_dir: Path | None, targeted: list[tuple[str, bytes]] = ()) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    suffix = ".safetensors" if target == "tickets" else ".ckpt"
    for kind, count in kinds.items():
        tally = tallies[kind] = Tally()
        for i in range(count):
            if kind == "bytes":
                raw, note = byte_damage(o, rng)
            elif kind in ("meta", "meta-redigest"):
                raw, note = metadata_edit(o, rng, redigest=kind == "meta-redigest")
            elif kind == "swap":
                raw, note = name_swap(o, rng)
            else:
                note, raw = targeted[i % len(targeted)]
            tally.cases += 1
            changed = raw != o.raw
            tally.unchanged += not changed
            try:
                result = exercise(raw)
            except ElthError as e:
                tally.refused += 1
                tally.reasons[_reason(e)] += 1
                continue
            except Exception as e:  # noqa: BLE001 - counting crashes is the point
                tally.crashes += 1
                tally.example(f"crash: {type(e).__name__}: {str(e)[:120]}",
                              note + _save(save_dir, f"{target}-{kind}-crash", i, raw, suffix))
                continue
            tally.accepted += 1
            if changed and kind in DAMAGE_KINDS:
                tally.damaged_accepted += 1
                tally.example("damaged file accepted", note + _save(save_dir, f"{target}-{kind}-accepted", i, raw,
                                                                    suffix))
            if isinstance(result, Ticket) and not same_tensors(result, o):
                tally.other_tensors += 1
                tally.example("other tensors than were written", note)
    return tallies


def split_cases(total: int, kinds: tuple[str, ...]) -> dict[str, int]:
    base, extra = divmod(total, len(kinds))
    return {k: base + (i < extra) for i, k in enumerate(kinds)}


def table(target: str, tallies: dict[str, Tally], seconds: float) -> str:
    damaged = "trained on damage" if target == "checkpoints" else "damaged loaded"
    cols = ["kind", "cases", "unchanged", "refused", "crashes", "accepted", damaged]
    if target == "tickets":
        cols.append("other tensors")
    rows = [cols]
    for kind, t in tallies.items():
        row = [kind, t.cases, t.unchanged, t.refused, t.crashes, t.accepted,
               t.damaged_accepted if kind in DAMAGE_KINDS else "-"]
        if target == "tickets":
            row.append(t.other_tensors)
        rows.append(row)
    total = [sum(getattr(t, f) for t in tallies.values()) for f in ("cases", "unchanged", "refused", "crashes",
                                                                       "accepted", "damaged_accepted")]
    rows.append(["all", *total] + ([sum(t.other_tensors for t in tallies.values())] if target == "tickets" else []))
    widths = [max(len(f"{r[i]:,}" if isinstance(r[i], int) else str(r[i])) for r in rows) for i in range(len(cols))]
    lines = [f"{target} ({seconds:.1f} s)"]
    for r in rows:
        cells = [(f"{v:,}" if isinstance(v, int) else str(v)) for v in r]
        lines.append("  " + "  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                      for j, (c, w) in enumerate(zip(cells, widths))))
    for kind, t in tallies.items():
        for what, notes in t.examples.items():
            for note in notes:
                lines.append(f"  {kind}: {what}: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=9000, help="ticket mutants, split over the kinds a-d (default 9,000)")
    p.add_argument("--checkpoint-cases", type=int, default=200,
                   help="random checkpoint mutants, split over the kinds a-d (default 200; the 15 targeted edits "
                   "come on top)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("tickets", "checkpoints"), default=None)
    p.add_argument("--save-dir", type=Path, default=None, help="write every crashing or accepted damaged mutant here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    bundle = data.load_dataset("digits")
    rng = random.Random(args.seed)
    results: dict[str, Any] = {}
    text = []
    if args.only in (None, "tickets"):
        o = original(rich_ticket(bundle))
        exercise_ticket(o.raw)  # the file as made passes (else every mutant would be refused for nothing)
        t0 = time.perf_counter()
        tallies = fuzz("tickets", o, split_cases(args.cases, ("bytes", "meta", "meta-redigest", "swap")),
                       random.Random(rng.random()), exercise_ticket, args.save_dir)
        seconds = time.perf_counter() - t0
        results["tickets"] = {"seconds": round(seconds, 1), "kinds": {k: t.as_dict() for k, t in tallies.items()}}
        text.append(table("tickets", tallies, seconds))
    if args.only in (None, "checkpoints"):
        with tempfile.TemporaryDirectory(prefix="elth-fuzz-") as tmp:
            run = stopped_run(bundle, Path(tmp))
            o = original(run.raw)
            resume(run, o.raw)
            kinds = split_cases(args.checkpoint_cases, ("bytes", "meta", "meta-redigest", "swap"))
            targeted = targeted_edits(o)
            kinds["targeted"] = len(targeted)
            t0 = time.perf_counter()
            tallies = fuzz("checkpoints", o, kinds, random.Random(rng.random()), lambda raw: resume(run, raw),
                           args.save_dir, targeted)
            seconds = time.perf_counter() - t0
        results["checkpoints"] = {"seconds": round(seconds, 1), "kinds": {k: t.as_dict() for k, t in tallies.items()}}
        text.append(table("checkpoints", tallies, seconds))
    every = [k for r in results.values() for k in r["kinds"].values()]
    results.update({
        "seed": args.seed, "crashes": sum(k["crashes"] for k in every),
        "damaged_accepted": sum(k["damaged_accepted"] for k in every),
        "other_tensors": sum(k["other_tensors"] for k in every), "seconds": round(time.perf_counter() - t_start, 1),
        "machine": f"{platform.machine()}, {platform.python_version()}", "elth": __version__,
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/fuzz_files.py", *(argv if argv is not None else sys.argv[1:])]),
    })
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print("\n\n".join(text))
        print(f"\n{results['crashes']} crashes, {results['damaged_accepted']} damaged files accepted, "
              f"{results['other_tensors']} tickets loaded with other tensors; {results['seconds']:.0f} s in all")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
