"""Finding tickets, one module per way:

* :mod:`.methods`: the registry of find methods (their kind and the options each uses);
* :mod:`.imp`: iterative magnitude pruning with rewinding, with :mod:`.runfolder`, its run folder;
* :mod:`.earlybird`: early-bird tickets (prune once when the mask settles);
* :mod:`.dst`: dynamic sparse training (RigL, SET, DPF);
* :mod:`.baselines`: one-shot pruning baselines; :mod:`.tickets`: fresh and random tickets.

The names below are re-exported lazily (on first use), so that reading the method registry for
``--help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("NO_COST", "fresh_ticket", "dense_ticket"), "tickets"),
    **dict.fromkeys(("BASELINE_METHODS", "MATCH_MODES", "BaselineOptions", "default_exclude", "prune_baseline",
                     "layer_distribution", "random_ticket"), "baselines"),
    **dict.fromkeys(("ImpOptions", "imp_sparsities", "check_imp_options", "find_imp"), "imp"),
    **dict.fromkeys(("RoundRecord", "RunFolder", "round_path", "rounds_for_sparsity", "run_summary"), "runfolder"),
    **dict.fromkeys(("DstOptions", "DST_METHODS", "find_dst", "check_dst_options"), "dst"),
    **dict.fromkeys(("EarlyBirdOptions", "find_early_bird"), "earlybird"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'elth_cli.find' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"elth_cli.find.{where}"), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
