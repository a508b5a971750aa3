"""What started this process: torchrun or srun, as one rank of several, or a person.
Read from the environment alone, so that the command line asks it before importing
torch (a `run --detach` returns without ever loading it)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def in_job(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun (RANK) or srun (several SLURM tasks and a MASTER_ADDR) started this
    process as one of several."""
    env = os.environ if env is None else env
    return "RANK" in env or (int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "MASTER_ADDR" in env)


def from_slurm(env: dict[str, str] | os._Environ[str]) -> None:
    """Under srun (and not torchrun), the variables torch.distributed reads, from SLURM's:
    SLURM_PROCID -> RANK, SLURM_NTASKS -> WORLD_SIZE, SLURM_LOCALID -> LOCAL_RANK; the
    port defaults to 29500 (MASTER_ADDR is the script's to set)."""
    if "RANK" in env or not in_job(env):
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_PORT", "29500")
