"""What ``info`` and ``compare`` print: their JSON documents and their text, built from the core's records
and testable without typer (each function returns what it prints, or prints to the console it is
given)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from elth_cli.report import fmt_flops, fmt_int, fmt_pct, make_table, plural

if TYPE_CHECKING:
    from rich.console import Console

    from elth_cli.ticket import Ticket

LABEL = 12  # the width of the labels of `elth info`'s lines ("metrics     ")
WIDTH = 100  # where a long line of `elth info` wraps


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    """Everything ``elth info`` shows of a ticket, as a JSON-ready dict."""
    # A list, in the model's order (a JSON object's keys would be sorted by name).
    layers = [{"key": k, "pruned": p, "total": t, "sparsity": p / t if t else 0.0}
              for k, (p, t) in ticket.layer_sparsity().items()]
    return {
        **ticket.identity(), "parents": ticket.parents, "transform": ticket.transform, "hparams": ticket.hparams,
        "metrics": ticket.metrics, "cost": ticket.cost, "config": ticket.config, "created": ticket.created,
        "elth_version": ticket.elth_version, "format_version": ticket.format_version, "integrity": ticket.integrity,
        "layers": layers,
    }


def fmt_value(key: str, value: Any) -> str:
    """A metric, cost or hyperparameter as a reader wants it: accuracies in %, FLOPs with a unit, seconds
    with one decimal, lists and objects by their size."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value) if not isinstance(value, str) else value
    if isinstance(value, list):
        return f"[{len(value)} entr{'y' if len(value) == 1 else 'ies'}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {fmt_value(k, v)}" for k, v in sorted(value.items())) + "}"
    if "acc" in key and isinstance(value, float):
        return fmt_pct(value)
    if "flops" in key:
        return fmt_flops(value)
    if key.endswith("_per_s"):  # a rate (images_per_s), not a duration
        return f"{value:,.1f}/s"
    if key.endswith(("_s", "seconds")):
        return f"{value:.1f} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    return fmt_int(value) if isinstance(value, int) else str(value)


def _flat(items: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (``dst.sparsity``), so a long line wraps between items."""
    out: dict[str, Any] = {}
    for k, v in items.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def item_lines(label: str, items: dict[str, Any]) -> list[str]:
    """``label    a 1, b 2, ...`` wrapped at :data:`WIDTH`, continuation lines indented under the first item."""
    parts = [f"{k} {fmt_value(k, v)}" for k, v in sorted(_flat(items).items())]
    lines, current = [], label.ljust(LABEL)
    for part in parts:
        if len(current) + len(part) + 2 > WIDTH and current.strip() != label:
            lines.append(current.rstrip(", "))
            current = " " * LABEL
        current += part + ", "
    return lines + [current.rstrip(", ")]


def config_lines(config: Optional[dict[str, Any]]) -> list[str]:
    """The ``config`` section of ``elth info``: how the run that made the ticket was set up."""
    if not config:
        return []
    env = config.get("environment") or {}
    processes = env.get("world_size", 1)
    launch = "one process" if processes == 1 else f"{processes} processes ({env.get('launcher')}, {env.get('backend')})"
    lines = [f"config      elth {config.get('command')} on {env.get('device')}, {launch}, host {env.get('hostname')}",
             f"versions    elth {env.get('elth')}, torch {env.get('torch')}, CUDA {env.get('cuda') or '-'}, "
             f"cuDNN {env.get('cudnn') or '-'}, Python {env.get('python')}"]
    return lines + (item_lines("hparams", config.get("hparams") or {}) if config.get("hparams") else [])


def ticket_lines(ticket: Ticket, path: str) -> list[str]:
    """The text of ``elth info TICKET`` above its layer table."""
    from elth_cli.container import INTEGRITY_NOTES

    lines = [f"ticket      {path}  (sha256 {ticket.sha256[:16]}...)",
             f"arch        {ticket.arch}  ({ticket.family}, blocks/stage {ticket.spec.depth_label})",
             f"input       {'x'.join(map(str, ticket.input_shape))}, {ticket.num_classes} classes"
             + (f", dataset {ticket.dataset}" if ticket.dataset else ""),
             f"sparsity    {fmt_pct(ticket.sparsity)} pruned ({fmt_pct(1 - ticket.sparsity)} kept)",
             f"method      {ticket.method}, rewind step {ticket.rewind_step}, "
             f"{'trained' if ticket.is_trained else 'untrained'}"]
    lines += [f"parent      {p.get('arch')} ({p.get('method')}, {fmt_pct(p.get('sparsity'))}) sha256 "
              f"{str(p.get('sha256'))[:16]}..." for p in ticket.parents]
    lines += _transform_lines(ticket.transform)
    if ticket.metrics:
        lines += item_lines("metrics", ticket.metrics)
    if ticket.cost:
        lines += item_lines("cost", ticket.cost)
    lines += config_lines(ticket.config)
    return lines + [f"created     {ticket.created} by elth {ticket.elth_version}",
                    f"file        format {ticket.format_version}: {INTEGRITY_NOTES[ticket.integrity]}"]


def _short(record: Any) -> str:
    """A parent record as ``arch sha256[:16]...``."""
    return f"{record.get('arch')} {str(record.get('sha256'))[:16]}..." if isinstance(record, dict) else "-"


def _unit_transform_lines(t: dict[str, Any]) -> list[str]:
    """``align``, ``widen`` and ``narrow`` (docs/units.md)."""
    if t.get("kind") == "align":
        how = "unpermuted (--by none)" if t.get("by") == "none" else \
            f"by {t.get('by')} ({t.get('match_on')} weights), {t.get('units_moved')} of {t.get('units')} units moved"
        return [f"transform   align {how}{', signs kept' if t.get('signs') else ''}",
                f"            onto {_short(t.get('to'))}, matched with {_short(t.get('source'))}"]
    units = t.get("units") if isinstance(t.get("units"), dict) else {}
    ratios = sorted({f"x{m / n:g}" for n, m in units.values() if n and n != m})
    how = {"fresh": f"fresh, seed {t.get('seed')}", "from": f"from {_short(t.get('init_from'))}"}.get(t.get("init"),
                                                                                                     t.get("init"))
    return [f"transform   {t.get('kind')} {t.get('source_arch')} -> {t.get('target_arch')}, units {', '.join(ratios)}, "
            f"init {how}, select {t.get('select')}"]


def _transform_lines(t: Optional[dict[str, Any]]) -> list[str]:
    if not t:
        return []
    if t.get("kind") in ("align", "widen", "narrow", "rewidth"):
        return _unit_transform_lines(t)
    lines = [f"transform   {t.get('kind')} {t.get('source_arch')} -> {t.get('target_arch')}, strategy "
             f"{t.get('strategy')}, mapping {t.get('mapping_string')} (elth's numbering: --mapping)"]
    if "reference_mapping" in t:
        ref = t["reference_mapping"]
        lines.append(f"reference   --block_mapping '{ref}' (ElasticLTH's change_depth; elth: --reference-mapping)"
                     if ref else f"reference   no --block_mapping: {t.get('reference_mapping_note')}")
    return lines


def print_ticket(con: Console, ticket: Ticket, path: str) -> None:
    """``elth info TICKET`` as text: its lines, then one row per layer."""
    for line in ticket_lines(ticket, path):
        con.print(line, markup=False)
    rows = [(k, fmt_int(t), fmt_int(t - p), fmt_pct(p / t if t else 0.0)) for k, (p, t) in ticket.layer_sparsity().items()]
    con.print(make_table(["layer", "weights", "kept", "sparsity"], rows, right=["weights", "kept", "sparsity"]))


def print_run(con: Console, doc: dict[str, Any]) -> None:
    """``elth info RUN_DIR`` as text: the run's options and its rounds (the early-bird column for such runs)."""
    imp = doc["arguments"]["imp"]
    early = bool(imp.get("early_bird"))
    plan = f"--rounds {imp['rounds']}" if imp.get("rounds") is not None else f"--sparsity {imp['sparsity']}"
    con.print(f"run         {doc['run']}  (IMP {doc['arch']} on {doc['dataset']}; {doc['finished_rounds']} of its "
              f"{doc['total_rounds']} rounds 0..{doc['planned_rounds']} finished; {plan}, --prune-rate "
              f"{imp.get('prune_rate')}, --rewind {imp.get('rewind')}{', early-bird rounds' if early else ''})",
              markup=False)
    if doc["in_progress"]:
        p = doc["in_progress"]
        con.print(f"in progress round {p['round']}, step {p['step']} ({p['checkpoint']}); re-run the same find "
                  "command to resume", markup=False)
    columns = ["round", "sparsity", "test acc", "steps", "seconds", "file"] + (["early"] if early else [])
    rows = [(r["round"], fmt_pct(r["sparsity"]), fmt_pct(r["test_acc"]), fmt_int(r["steps"]), f"{r['seconds']:.1f}",
             r["path"], *(["yes" if r.get("stopped_early") else "no"] if early else [])) for r in doc["rounds"]]
    con.print(make_table(columns, rows, right=columns[:5]))


def print_many(con: Console, docs: list[dict[str, Any]]) -> None:
    """``elth info A B ...`` as text: one row per ticket (a run folder gives one per round)."""
    columns = ["ticket", "arch", "method", "sparsity", "rewind", "trained", "test acc", "sha256"]
    rows = [(d["path"], d["arch"], d["method"], fmt_pct(d["sparsity"]), d["rewind_step"], "yes" if d["trained"] else "no",
             fmt_pct((d.get("metrics") or {}).get("test_acc")), str(d.get("sha256") or "")[:12]) for d in docs]
    con.print(make_table(columns, rows, right=["sparsity", "rewind", "test acc"]))


# ----- compare --------------------------------------------------------------------------------------
def letter(i: int) -> str:
    """Tickets are A, B, C... in every table of ``compare``."""
    return chr(65 + i) if i < 26 else str(i)


def mean_std(s: dict[str, Any], pct: bool = True) -> str:
    """``96.94% +- 0.52`` (mean +- standard deviation over the replicates)."""
    if s["mean"] is None:
        return "-"
    mean = fmt_pct(s["mean"]) if pct else fmt_flops(s["mean"])
    if s["std"] is None:
        return mean
    return f"{mean} +- {100 * s['std']:.2f}" if pct else f"{mean} +- {fmt_flops(s['std'])}"


def _ticket_row(i: int, t: dict[str, Any]) -> tuple[Any, ...]:
    parents = ", ".join(f"{(p['sha256'] or '?')[:12]} {p['arch']}" for p in t["parents"]) or "-"
    cost = t["cost"]
    cost_text = "-" if all(cost.get(k) is None for k in ("train_steps", "train_seconds", "trainings")) else (
        f"{fmt_int(cost.get('train_steps') or 0)} steps, {float(cost.get('train_seconds') or 0):.0f} s, "
        f"{plural(cost.get('trainings') or 0, 'training')}")
    loss = "-" if t["test_loss"] is None else f"{t['test_loss']:.4f}"
    flops = t["flops"]
    relative = "-" if flops["relative"] is None else f"{flops['relative']:.2f}x"
    return (letter(i), t["name"], t["arch"], fmt_pct(t["sparsity"]), t["method"], t["rewind_step"], parents,
            "yes" if t["trained"] else "no", fmt_pct(t["test_acc"]), loss, cost_text, fmt_flops(flops["total"]), relative)


def compare_tables(doc: dict[str, Any]) -> list[Any]:
    """The tables of ``elth compare`` as text: tickets, replicates, per-layer overlap, pairs, the aligned
    profile (tickets of several depths) and the interpolation."""
    right = ["sparsity", "rewind", "test acc", "test loss", "FLOPs", "x dense"]
    out: list[Any] = [make_table(
        ["", "ticket", "arch", "sparsity", "method", "rewind", "parents (sha256 arch)", "trained", "test acc", "test loss",
         "cost to obtain", "FLOPs", "x dense"], [_ticket_row(i, t) for i, t in enumerate(doc["tickets"])],
        title="tickets (FLOPs: to obtain and train; x dense: over one dense training of the arch)", right=right)]
    for part in (_replicates, _layers, _pairs, _profile, _interpolation):
        out += part(doc)
    return out


def _replicates(doc: dict[str, Any]) -> list[Any]:
    if not doc["replicates"]:
        return []
    rows = [(" ".join(letter(i) for i in g["members"]), g["method"], g["arch"], g["test_acc"]["n"],
             ", ".join("/".join(map(str, s)) for s in g["seeds"]), mean_std(g["sparsity"]), mean_std(g["test_acc"]),
             mean_std(g["flops_total"], pct=False)) for g in doc["replicates"]]
    return [make_table(["tickets", "method", "arch", "n", "seeds", "sparsity", "test acc", "FLOPs"], rows,
                       right=["n", "sparsity", "test acc", "FLOPs"], title="replicates: tickets that differ only by seed "
                       "(mean +- standard deviation over n, n-1 in the denominator)")]


def _layers(doc: dict[str, Any]) -> list[Any]:
    if len(doc["tickets"]) != 2 or not doc["pairs"]:
        return []
    rows = [(l["key"], fmt_int(l["weights"]), fmt_pct(l["sparsity_a"]), fmt_pct(l["sparsity_b"]), f"{l['jaccard']:.4f}",
             f"{l['expected_random_jaccard']:.4f}", fmt_int(l["hamming"])) for l in doc["pairs"][0]["layers"]]
    columns = ["layer", "weights", "sparsity A", "sparsity B", "jaccard", "random", "hamming"]
    return [make_table(columns, rows, right=columns[1:], title="per layer (random: expected jaccard of independent "
                       "random masks, same densities)")]


def _pairs(doc: dict[str, Any]) -> list[Any]:
    if not doc["pairs"]:
        return []
    rows = [(f"{letter(p['a'])}-{letter(p['b'])}", f"{p['jaccard']:.4f}", f"{p['expected_random_jaccard']:.4f}",
             "-" if p["jaccard_over_random"] is None else f"{p['jaccard_over_random']:.2f}x",
             fmt_int(p["hamming"]), fmt_pct(p["hamming_fraction"])) for p in doc["pairs"]]
    columns = ["pair", "jaccard", "random", "vs random", "hamming", "hamming %"]
    return [make_table(columns, rows, right=columns[1:], title="mask overlap of kept weights (same architecture)")]


def _profile(doc: dict[str, Any]) -> list[Any]:
    if doc["same_arch"] and len(doc["tickets"]) <= 2:
        return []
    names = [f"{letter(i)} {t['arch']}" for i, t in enumerate(doc["tickets"])]

    def cell(s: float | None, src: str | None, here: str) -> str:
        return ("-" if s is None else fmt_pct(s)) + (f" (<- {src})" if src is not None and src != here else "")

    rows = [(r["label"], *(cell(s, src, f"s{r['stage']}.b{r['block']}") for s, src in zip(r["sparsity"], r["copied_from"])))
            for r in doc["profile"]]
    return [make_table(["position", *names], rows, right=names, title="sparsity by aligned position ('-': no such "
                       "layer; (<- sX.bY): copied from that source block)")]


def _interpolation(doc: dict[str, Any]) -> list[Any]:
    interp = doc.get("interpolation")
    if not interp:
        return []
    rows = [(f"{p['alpha']:.3f}", fmt_pct(p["accuracy"]), f"{p['loss']:.4f}") for p in interp["points"]]
    bn = (f"BN statistics recomputed on {interp['bn_batches']} training batches of {interp['bn_batch_size']}"
          if interp["recompute_bn"] else "BN statistics interpolated")
    columns = ["alpha", f"{interp['split']} acc", "loss"]
    return [make_table(columns, rows, right=columns, title=f"linear interpolation A -> B on {interp['dataset']} ({bn})"),
            f"error barrier {fmt_pct(interp['error_barrier'])} (max over alpha of the error above the line between the "
            f"end points); vs the end points' mean {fmt_pct(interp['error_barrier_vs_mean'])}"]


def print_compare(con: Console, doc: dict[str, Any]) -> None:
    """``elth compare`` as text on ``con``."""
    for part in compare_tables(doc):
        con.print(part, markup=False) if isinstance(part, str) else con.print(part)


def empty_layers_warning(ticket: Ticket, where: str) -> Optional[str]:
    """The warning of --allow-empty-layers: which layers of what was written keep no weight (None: none)."""
    from elth_cli.masks import describe_keys, empty_layers

    empty = empty_layers(ticket.masks)
    if not empty:
        return None
    return (f"{'stdout' if where == '-' else where}: {plural(len(empty), 'layer')} keep"
            f"{'s' if len(empty) == 1 else ''} no weight ({describe_keys(empty)}); nothing passes through "
            f"{'it' if len(empty) == 1 else 'them'}")
