"""The worked examples of every command: one list that ``--help`` prints, docs/cli.md shows and a test
runs (tests/test_examples.py, in this order, in one folder, each on the files the earlier ones wrote).

Every example runs as written on the embedded digits set; the test only shortens trainings
(``Example.short``: ``--epochs 3``) and leaves out the demo (tests/test_demo.py runs its code). No torch here: ``--help``
reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A command line as a user types it, and what it does."""

    command: str
    what: str
    short: str = ""  # what the test appends to make its training short (--epochs 3, ...)


# Each command's line in `elth --help`, whole (click would cut its docstring's first sentence at 45 characters).
SUMMARIES: dict[str, str] = {
    "archs": "The architectures: families, depths, parameters, MACs.",
    "info": "A ticket's sparsity, provenance and metrics; an IMP run's rounds.",
    "stretch": "A ticket to a deeper network of its family.",
    "squeeze": "A ticket to a shallower network of its family.",
    "align": "A ticket's mask onto another initialisation, unit-matched.",
    "widen": "A ticket to a wider network of its family.",
    "narrow": "A ticket to a narrower network of its family.",
    "compare": "Tickets side by side: accuracy, cost, overlap, interpolation.",
    "import": "An open_lth / ElasticLTH run folder to a ticket.",
    "export": "A ticket to an open_lth run folder or a plain state dict.",
    "train": "Train tickets from their rewind point (resumable, one or many).",
    "eval": "A ticket's test (or train) accuracy and loss.",
    "find": "Find a ticket: IMP, early-bird, RigL/SET/DPF or a baseline.",
    "demo": "The E-LTH experiment in miniature on the digits set.",
    "run": "An experiment file: its jobs on this machine or on SLURM.",
}

EXAMPLES: dict[str, tuple[Example, ...]] = {
    "archs": (
        Example("elth archs", "every architecture with its blocks per stage, parameters and forward MACs"),
        Example("elth archs --json", "the same as JSON, for scripts"),
    ),
    "find": (
        Example("elth find --method imp --arch resnet20-w4 --dataset digits --rounds 4 --rewind 1ep --out-dir runs/r20 "
                "-o r20.safetensors", "IMP: 4 rounds of 20 % (59 % sparsity), one ticket per round in runs/r20, the "
                "last also as r20.safetensors", short="--epochs 3"),
        Example("elth find --method imp --arch resnet20-w4 --dataset digits --rounds 0 --rewind 1ep --seed 1 "
                "--out-dir runs/r20-s1", "the dense network from another initialisation (seed 1): round 0 alone",
                short="--epochs 3"),
        Example("elth find --method random --from runs/r20/round-00.safetensors --like r20.safetensors "
                "-o r20-random.safetensors", "the random baseline at the IMP ticket's sparsity, at its rewind weights"),
        Example("elth find --method reinit --like r20.safetensors --seed 1 -o r20-reinit.safetensors",
                "the random reinitialisation control: the IMP ticket's mask with new init weights drawn from seed 1"),
        Example("elth find --method rigl --arch resnet20-w4 --dataset digits --sparsity 0.9 -o r20-rigl.safetensors",
                "RigL from scratch at 90 % sparsity: a trained ticket", short="--epochs 3 --update-every 10"),
    ),
    "info": (
        Example("elth info r20.safetensors", "a ticket: sparsity per layer, provenance, metrics, configuration"),
        Example("elth info runs/r20", "an IMP run: its rounds"),
        Example("elth info r20.safetensors r20-random.safetensors --json", "several tickets in one table, as JSON"),
    ),
    "stretch": (
        Example("elth stretch r20.safetensors --target resnet32 -o r32.safetensors",
                "resnet20 -> resnet32 with append: each stage's blocks B0 B1 B2 become B0 B1 B2 B1 B2"),
    ),
    "squeeze": (
        Example("elth squeeze r32.safetensors --target resnet20 --strategy spaced -o r20-back.safetensors",
                "resnet32 -> resnet20 keeping evenly spaced blocks: B0 B2 B4 of each stage"),
    ),
    "align": (
        Example("elth align runs/r20/round-04.safetensors --to runs/r20-s1 -o r20-aligned.safetensors",
                "round 4's mask permuted onto the seed-1 network's units (weight matching of the two dense round 0s), "
                "on its init weights"),
        Example("elth align runs/r20/round-04.safetensors --to runs/r20-s1 --by none -o r20-naive.safetensors",
                "the same mask moved as it is: the naive control"),
    ),
    "widen": (
        Example("elth widen r20.safetensors --target resnet20-w8 -o r20-w8.safetensors",
                "width 4 -> 8: every unit's mask twice, fresh init weights (seed 1)"),
    ),
    "narrow": (
        Example("elth narrow r20-w8.safetensors --target resnet20-w4 -o r20-w4.safetensors",
                "back to width 4: the first half of every layer's units, r20's own mask"),
    ),
    "train": (
        Example("elth train r32.safetensors --dataset digits -o r32-trained.safetensors",
                "train the stretched ticket from its rewind point (stopped by SIGTERM/SIGUSR1: exit 75; the same "
                "command resumes)", short="--epochs 3"),
        Example("elth train r32.safetensors r20-random.safetensors --out-dir trained --jobs 2 --seed 1",
                "two trainings side by side, one per core, into trained/, with another data order (seed 1)",
                short="--epochs 3"),
    ),
    "eval": (
        Example("elth eval r32-trained.safetensors --json", "the test accuracy that elth train recorded, measured again"),
    ),
    "compare": (
        Example("elth compare r20.safetensors r20-random.safetensors",
                "two tickets: accuracy, cost, mask overlap against chance"),
        Example("elth compare r32-trained.safetensors trained/r32.safetensors --interpolate --dataset digits",
                "two trainings of one ticket with different data orders (seeds 0 and 1): the error along the "
                "straight line between them (linear mode connectivity)"),
    ),
    "export": (
        Example("elth export r32-trained.safetensors exported/r32",
                "an open_lth run folder: mask.pth, model_ep{E}_it{I}.pth at the rewind and final steps, "
                "sparsity_report.json"),
        Example("elth export r32-trained.safetensors r32-weights.safetensors --format state-dict",
                "the trained weights, masks applied, as the plain state dict the model loads with "
                "load_state_dict(strict=True); the masks in r32-weights.masks.safetensors (elth find --pretrained "
                "reads such a file)"),
    ),
    "import": (
        Example("elth import exported/r32 --arch resnet32-w4 --dataset digits --steps-per-epoch 23 "
                "-o r32-imported.safetensors", "an open_lth / ElasticLTH run folder back to a ticket (23 steps per "
                "epoch: digits at batch 64)"),
    ),
    "demo": (
        Example("elth demo --out-dir demo-out", "the E-LTH comparison on digits (docs/demo.md); --full adds "
                "early-bird IMP and RigL, --quick checks an installation"),
    ),
    "run": (
        Example("elth run --show cifar10-table3", "print a shipped experiment file (the paper's Table 3), to copy and "
                "edit"),
        Example("elth run demo --out-dir demo-out --plan", "the demo's 78 jobs and what a run would do with each, "
                "running nothing"),
    ),
}

# The root command's example: a pipe, which the test runs through a shell.
PIPELINE = Example("elth find --method random --arch resnet20 --dataset digits --sparsity 0.8 -o - "
                   "| elth stretch - --target resnet56 -o r56.safetensors",
                   "a random ticket straight into a stretch, through a pipe")


def epilog(command: str | None) -> str:
    """The examples of ``command`` (None: the root command) as a help epilog; ``\\b`` keeps click from
    re-flowing the lines."""
    examples = EXAMPLES[command] if command is not None else (PIPELINE,)
    lines = ["Examples:", "", "\b"]
    for e in examples:
        lines += [f"  {e.command}", f"      {e.what}"]
    return "\n".join(lines)
