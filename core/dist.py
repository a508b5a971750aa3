"""Several training processes, one run: torch.distributed underneath.

A `Group` is this process's place in a job that torchrun, srun or cbam-tui's own use
of torch's elastic launcher started: rank, world size, the device it trains on. The
gradients go through DistributedDataParallel on the default process group (NCCL on
GPUs, gloo on CPUs); the steering goes through a second, gloo group, so it never
touches a GPU stream.

A `Coordinator` makes every rank take the same decisions at the same step. Rank 0
reads the commands (its inbox); any rank may ask to stop (a signal). At agreed steps,
about every 0.2 s of training and never per batch on a fast device, all ranks
exchange what they have, and each applies the same list, in the same order, to its
copy of the agreed `Control`, which is all the training loop looks at. While paused
they exchange every 0.1 s, so a resume reaches every rank within that.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.control import Control
from core.errors import ConfigError
from core.rundir import Command, StopReason

SYNC_EVERY_S = 0.2
PAUSED_SYNC_S = 0.1
MAX_AHEAD = 1000  # steps between exchanges, at most
STEERING_TIMEOUT = timedelta(days=7)  # a paused group waits in the steering group, which may take long


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


@dataclass
class Group:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    steering: Any = field(repr=False, default=None)  # the gloo process group

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Group | None:
        """Join the job the environment describes (torchrun's RANK and WORLD_SIZE, or
        srun's SLURM_PROCID and SLURM_NTASKS with MASTER_ADDR set); None outside a job."""
        env = os.environ
        from_slurm(env)
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        local = int(env.get("LOCAL_RANK", "0"))
        if device.startswith("cuda:"):
            raise ConfigError(
                f"--device {device} names one GPU; several processes take GPUs 0..N-1 "
                "(choose them with CUDA_VISIBLE_DEVICES and use --device cuda)"
            )
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if local >= torch.cuda.device_count():
                raise ConfigError(f"process {local} of this node has no GPU: {torch.cuda.device_count()} visible")
            torch.cuda.set_device(local)
        elif device not in ("cpu", "auto"):
            raise ConfigError(f"--device {device} cannot be shared by several processes: use cuda or cpu")
        dist.init_process_group("nccl" if cuda else "gloo")
        steering = dist.new_group(backend="gloo", timeout=STEERING_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), local,
                   torch.device("cuda", local) if cuda else torch.device("cpu"), steering)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` added up over the ranks, in place (on the gradients' group and device)."""
        dist.all_reduce(t)
        return t

    def from_leader(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=self.steering)
        return box[0]

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's part [lo, hi) of n items cut into world nearly equal runs
        (the first ``n % world`` one longer), as ``torch.tensor_split`` cuts them."""
        q, r = divmod(n, self.world)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (1 if self.rank < r else 0)


class Coordinator:
    """The steering every rank agrees on; see the module's docstring."""

    def __init__(self, group: Group, local: Control) -> None:
        self.group = group
        self.local = local  # this process's signals (and write failures) stop it here
        self.agreed = Control()  # changed only by `exchange`, the same way on every rank
        self.next_sync = 0
        self._taken: list[tuple[Command, str]] = []  # rank 0: commands from its inbox, not yet shared
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None  # time and step of the last exchange

    def take(self, command: Command, origin: str) -> None:
        """Rank 0's inbox hands its commands here; they apply at the next exchange."""
        with self._lock:
            self._taken.append((command, origin))

    def due(self, step: int) -> bool:
        return step >= self.next_sync

    def exchange(self, step: int) -> tuple[list[tuple[Command, str]], tuple[int, ...]]:
        """All ranks together: gather what each has, apply the same list everywhere.
        Returns the commands applied and each rank's step."""
        with self._lock:
            taken, self._taken = self._taken, []
        now = time.monotonic()
        ahead = 1
        if self._last is not None and step > self._last[1]:
            per_step = (now - self._last[0]) / (step - self._last[1])
            ahead = max(1, min(MAX_AHEAD, round(SYNC_EVERY_S / max(per_step, 1e-6))))
        self._last = (now, step)
        stop = self.local.stop_reason
        mine: dict[str, Any] = {"step": step, "stop": stop.value if stop else None, "ahead": ahead,
                                "commands": [(c.verb, c.value, c.group, o) for c, o in taken]}
        gathered: list[Any] = [None] * self.group.world
        dist.all_gather_object(gathered, mine, group=self.group.steering)
        for other in gathered:  # rank order: the first stop reason wins everywhere
            if other["stop"]:
                self.agreed.stop(StopReason(other["stop"]))
        lead = gathered[0]
        commands = [(Command(v, value, g), o) for v, value, g, o in lead["commands"]]
        for command, origin in commands:
            self.agreed.apply(command, origin)
        self.next_sync = step + lead["ahead"]
        return commands, tuple(int(other["step"]) for other in gathered)
