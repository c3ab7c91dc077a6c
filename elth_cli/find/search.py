"""A search: one training whose hooks make the ticket (early-bird, RigL, SET, DPF), from the request to the
saved file. ``elth find`` and the demo run it; the method's module (the registry's ``module``) gives
its options (``options_from``) and its training (``search``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elth_cli import archs, data
from elth_cli.errors import ElthError, UsageError
from elth_cli.fileio import STDIO, check_output_path
from elth_cli.find.methods import SEARCH, FindRequest, method, require
from elth_cli.ticket import Ticket
from elth_cli.train.job import Setup
from elth_cli.train.options import RunOptions

# Where each search method records its options in the ticket's hparams.
RECORD_KEYS = ("dst", "early_bird")


@dataclass(frozen=True)
class SearchJob:
    """A search to run: what was asked, the output file ('-': stdout; its checkpoint is ``OUT.ckpt``), the
    set-up of its training, how the training runs, and whether to overwrite an output that is another."""

    request: FindRequest
    output: str
    setup: Setup = Setup()
    run: RunOptions = RunOptions()
    force: bool = False


@dataclass
class SearchResult:
    ticket: Ticket
    sha256: str | None
    reused: bool


def search_job(job: SearchJob) -> SearchResult:
    """Run ``job``: check the output before any work, train with the method's hooks (resuming its checkpoint),
    save the ticket, drop the checkpoint. An output that already is this search's ticket is kept (a re-run
    of a finished command); another ticket there is refused unless ``force``."""
    from elth_cli.train.checkpoint import checkpoint_path_for

    request, setup = job.request, job.setup
    found = method(request.method)
    if found.kind != SEARCH:
        raise UsageError(f"{request.method} is not a search method")
    require(request.method, {"--arch": request.arch, "--dataset": setup.data.dataset, "--sparsity": request.sparsity})
    spec = archs.resolve_arch(request.arch)
    info = data.get_dataset_info(setup.data.dataset, setup.data.data_dir)
    module = found.implementation()
    opts = module.options_from(request, spec.name, info.name)
    check_output_path(job.output, force=True)
    ckpt = None if job.output == STDIO else checkpoint_path_for(job.output)
    with setup.session() as session, session.exclusive(ckpt and job.output, f"the {found.name} run writing {job.output}"):
        session.on_main(lambda: _refuse_other_output(job.output, job.force))
        cfg, bundle = setup.prepare(session, spec, info.name)
        existing = session.on_main(lambda: _this_search(job, opts, cfg, bundle))
        if existing is not None:
            return SearchResult(existing, existing.sha256, True)
        ticket = module.search(opts, cfg, bundle, run=job.run.replace(checkpoint_path=ckpt))
        sha = session.save(ticket, job.output, ckpt, force=True)
    return SearchResult(ticket, sha, False)


def _refuse_other_output(output: str, force: bool) -> None:
    """Before any work: an existing output that is not even a ticket is refused unless ``force``."""
    from elth_cli.container import peek_format
    from elth_cli.ticket import FORMAT

    if output != STDIO and Path(output).exists() and not force and peek_format(output) != FORMAT:
        raise UsageError(f"output {output} already exists; pass --force to overwrite it or choose another path")


def _this_search(job: SearchJob, opts: Any, cfg: Any, bundle: Any) -> Ticket | None:
    """The existing output when it is this search's ticket (the same method, options and recipe)."""
    from elth_cli.runtime import distributed
    from elth_cli.train.identity import run_differences

    if job.output == STDIO or job.force or not Path(job.output).exists():
        return None
    try:
        existing = Ticket.load(job.output)
    except ElthError as e:
        raise UsageError(f"{job.output} exists and is not a readable ticket ({e}); pass --force to overwrite it or "
                         "choose another path") from None
    hp = dict(existing.hparams or {})
    recorded = next((hp.pop(k) for k in RECORD_KEYS if k in hp), {})
    wanted = opts.as_dict()
    ws = distributed.ranks()[1]
    diffs = [] if existing.method == job.request.method else [f"method {existing.method} -> {job.request.method}"]
    # An exclude not given means the family's default, which the ticket records resolved.
    diffs += [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in wanted.items()
              if recorded.get(k) != v and not (k == "exclude" and v is None)]
    diffs += run_differences({"config": hp}, {"config": cfg.resolved(bundle.steps_per_epoch(cfg.batch_size, ws), 0, ws)})
    if diffs:
        raise UsageError(f"{job.output} exists and is not this search's ticket (differs in: {'; '.join(diffs)}); pass "
                         "--force to overwrite it or choose another path")
    return existing
