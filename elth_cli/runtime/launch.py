"""Who started this process: one process, or one rank of several under torchrun or srun.

Reading the environment only, so the CLI can ask before importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from elth_cli.errors import UsageError


@dataclass(frozen=True)
class Launch:
    """How this process was started: its rank among ``world_size`` processes, its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not a whole number") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The launcher, rank and world size from the environment.

    torchrun's RANK / WORLD_SIZE / LOCAL_RANK come first. Otherwise an ``srun`` task is recognised
    by SLURM_PROCID together with a job step (SLURM_STEP_ID): the job script itself also sees
    SLURM_PROCID=0 and SLURM_NTASKS, but it is one process, so it runs alone.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        local = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank = _env_int(env, "SLURM_PROCID")
        world = _env_int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else _env_int(env, "SLURM_STEP_NUM_TASKS")
        local = _env_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "srun"
    else:
        return Launch()
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"{launcher} gave rank {rank} of world size {world} (local rank {local}); "
                         "that is not a valid rank")
    return Launch(rank, world, local, launcher)


def launcher_name(launch: Launch) -> str:
    """How the process was started, in words (for messages)."""
    return {"torchrun": "started by torchrun", "srun": "started by srun"}.get(launch.launcher, "one process")
