"""How many threads torch computes with on the CPU: as many as the cores this process
can really have, not as many as the machine has.

`os.cpu_count()` counts the machine. A taskset affinity, a container's cgroup quota
or a scheduler's allocation gives a process fewer CPUs, and other processes may be
busy on them. OpenMP threads that outnumber the cores they get spin at every
barrier: on a 2-core machine with one core busy elsewhere, a small step ran 11.5x
slower with torch's default threads than with one thread.

The choice, unless `--threads N` (or OMP_NUM_THREADS) says otherwise: the usable
CPUs (affinity, then cgroup quota), less the cores other processes keep busy
(measured for a quarter of a second at start), less ``reserve`` for work this
process does beside training (the dashboard's thread) when there are cores to
spare, never below one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_S = 0.25  # how long other processes' load is measured at start
RESERVE_FROM = 4  # a core is kept for other threads only from this many free cores: on 2 cores the
# dashboard's thread (a few ms a second) cost less than a torch thread fewer (bench/README.md)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cpus: float  # CPUs this process may use (affinity and quota)
    busy: float  # cores other processes kept busy when it was chosen
    why: str  # one line for the screen: how the number came about


def usable_cpus(root: Path = Path("/")) -> float:
    """CPUs this process may run on: its affinity, capped by its cgroup's CPU quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(root)
    return min(float(affinity), quota) if quota is not None else float(affinity)


def cgroup_quota(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup and its parents, in CPUs (None: no quota)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max in the group and each parent
            group = root / "sys/fs/cgroup" / path.lstrip("/")
            base = root / "sys/fs/cgroup"
            while True:
                found += _v2(group / "cpu.max")
                if group == base or base not in group.parents:
                    break
                group = group.parent
        elif "cpu" in controllers.split(","):  # cgroup v1, as mounted in a container
            for mount in ("cpu,cpuacct", "cpu"):
                found += _v1(root / "sys/fs/cgroup" / mount)
    return min(found) if found else None


def _v2(path: Path) -> list[float]:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return []
    return [] if quota == "max" else [int(quota) / int(period)]


def _v1(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def busy_elsewhere(seconds: float = SAMPLE_S) -> float:
    """Cores that other processes kept busy over ``seconds``, on the CPUs this process may
    use (Linux /proc/stat; 0.0 where it cannot be read)."""
    first = cpu_jiffies()
    if first is None:
        return 0.0
    own, wall = _own_seconds(), time.monotonic()
    time.sleep(seconds)
    second = cpu_jiffies()
    if second is None:
        return 0.0
    elapsed = time.monotonic() - wall
    busy = (second - first) / os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy - (_own_seconds() - own)) / max(elapsed, 1e-3))


def cpu_jiffies() -> int | None:
    """Busy time (not idle, not waiting on I/O) of the CPUs in this process's affinity."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]
        total += sum(values) - values[3] - values[4]  # idle and iowait
    return total


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def choose_threads(requested: int = 0, reserve: int = 0, reserved_for: str = "other work") -> ThreadChoice:
    """``requested`` threads (0: choose), with ``reserve`` cores left for other work of
    this process (``reserved_for``, in the line shown) when choosing."""
    cpus = usable_cpus()
    if requested > 0:
        return ThreadChoice(requested, cpus, 0.0, f"{requested} (--threads) on {_cpus_text(cpus)}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), cpus, 0.0, f"{env} (OMP_NUM_THREADS) on {_cpus_text(cpus)}")
    busy = busy_elsewhere()
    free = max(1, math.floor(cpus + 1e-9) - round(busy))
    threads = free - reserve if free >= RESERVE_FROM else free
    why = [_cpus_text(cpus)]
    if round(busy):
        why.append(f"{busy:.1f} busy with other processes")
    if threads < free:
        why.append(f"{free - threads} left for {reserved_for}")
    return ThreadChoice(threads, cpus, busy, f"{threads} on " + ", ".join(why))


def _cpus_text(cpus: float) -> str:
    return f"{cpus:g} CPU" + ("" if cpus == 1 else "s")
