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

A `Watchdog` keeps every rank from waiting forever on one that stopped answering
(frozen, cut off, or gone with its machine): each rank beats once a second in the
group's store; rank 0 watches every rank, the others watch rank 0 and the store.
A rank silent for the stall timeout (``--stall-timeout``, 120 s by default) ends
the group with one line that names it; a collective that breaks because a peer
died is explained the same way within seconds. The collectives' own timeout is the
stall timeout plus a margin: the backstop, should the watchdog itself be stuck.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.config import SYNC_BN_NEEDS_CUDA, check_shared_device
from core.control import Control
from core.errors import ConfigError
from core.jobenv import from_slurm
from core.vocab import STALLED, Command, Exit, StopReason

SYNC_EVERY_S = 0.2
PAUSED_SYNC_S = 0.1
MAX_AHEAD = 1000  # steps between exchanges, at most
STALL_TIMEOUT_S = 120  # default --stall-timeout: a rank silent this long ends the group
BEAT_S = 1.0  # heartbeat period
GONE_S = 2.5  # after a collective broke: a rank with no heartbeat over this span is the one that went
STORE_OP_S = 10.0  # the store client's own timeout (a cut link may still hold a call longer: see Watchdog)
SAY_S = 15.0  # for the line, the run directory's failure and the launcher's error file, before the exit


def _on_gpus(device: str) -> bool:
    """Whether processes sharing ``device`` (one that they can share) train on GPUs."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def check_launch(device: str, nproc: int, sync_bn: bool) -> None:
    """Before a launcher claims a run: what each of its ``nproc`` ranks would find about
    ``device`` as it joins (`Group.from_env`), one sentence here instead of a failed run."""
    check_shared_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    gpus = _on_gpus(device)
    if gpus and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc-per-node {nproc} needs a GPU for each process: {torch.cuda.device_count()} visible")
    if sync_bn and not gpus:
        raise ConfigError(SYNC_BN_NEEDS_CUDA)


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

    watchdog: Watchdog | None = field(repr=False, default=None)

    @classmethod
    def from_env(cls, device: str, stall_s: float = STALL_TIMEOUT_S) -> Group | None:
        """Join the job the environment describes (torchrun's RANK and WORLD_SIZE, or
        srun's SLURM_PROCID and SLURM_NTASKS with MASTER_ADDR set); None outside a job.
        A rank silent for ``stall_s`` seconds ends the group (see `Watchdog`)."""
        env = os.environ
        from_slurm(env)
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        local = int(env.get("LOCAL_RANK", "0"))
        check_shared_device(device)
        cuda = _on_gpus(device)
        if cuda:
            if local >= torch.cuda.device_count():
                raise ConfigError(f"process {local} of this node has no GPU: {torch.cuda.device_count()} visible")
            torch.cuda.set_device(local)
        # The backstop: a collective gives up a margin after the watchdog would have named the rank.
        timeout = timedelta(seconds=stall_s + max(10.0, stall_s / 4))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        steering = dist.new_group(backend="gloo", timeout=timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        watchdog = Watchdog(rank, world, stall_s, env["MASTER_ADDR"], int(env["MASTER_PORT"]))
        watchdog.start()
        return cls(rank, world, local, torch.device("cuda", local) if cuda else torch.device("cpu"), steering,
                   watchdog)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if dist.is_initialized():
            dist.destroy_process_group()

    def lost(self, exc: BaseException) -> str | None:
        """After ``exc`` broke this rank's training: the rank (or store) of the group that
        went silent, in one sentence, when there is one; None when all are alive."""
        del exc  # any failure in a group may be a peer's: the heartbeats say
        return self.watchdog.explain() if self.watchdog is not None else None

    def leader_done(self, step: str) -> None:
        """Rank 0 has finished ``step`` (the others wait for it in `wait_leader`)."""
        if self.watchdog is not None:
            self.watchdog.mark(step)
        else:
            self.from_leader(None)

    def wait_leader(self, step: str) -> None:
        """Wait, as long as rank 0 keeps beating, for it to finish ``step`` (decoding a
        data set may take far longer than any collective should)."""
        if self.watchdog is not None:
            self.watchdog.wait_mark(step)
        else:
            self.from_leader(None)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` added up over the ranks, in place (on the gradients' group and device)."""
        dist.all_reduce(t)
        return t

    def from_leader(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=self.steering)
        return box[0]

    def wrap(self, model: torch.nn.Module, compile: bool) -> torch.nn.Module:
        """DistributedDataParallel over the model's trainable set: built again at each
        stage (it registers the parameters that need gradients when it is made), which
        also hands every rank rank 0's weights and buffers."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
        return torch.compile(ddp) if compile else ddp  # type: ignore[return-value]

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
                                "commands": [(c.verb, c.value, c.group, c.ref, o) for c, o in taken]}
        gathered: list[Any] = [None] * self.group.world
        dist.all_gather_object(gathered, mine, group=self.group.steering)
        for other in gathered:  # rank order: the first stop reason wins everywhere
            if other["stop"]:
                self.agreed.stop(StopReason(other["stop"]))
        lead = gathered[0]
        commands = [(Command(v, value, g, ref), o) for v, value, g, ref, o in lead["commands"]]
        for command, origin in commands:
            self.agreed.apply(command, origin)
        self.next_sync = step + lead["ahead"]
        return commands, tuple(int(other["step"]) for other in gathered)


def _who(rank: int) -> str:
    """How the other ranks name this one: its pid and host (and node, under torchrun or srun)."""
    env = os.environ
    node = env.get("GROUP_RANK") or env.get("SLURM_NODEID")
    several = env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE")) != env.get("WORLD_SIZE")
    where = env.get("SLURMD_NODENAME") or socket.gethostname()
    return f"rank {rank} (pid {os.getpid()} on {where}" + (f", node {node}" if node and several else "") + ")"


def _address_towards(host: str, port: int) -> str:
    """This machine's address on the way to ``host`` (no packet is sent), to tell which
    ranks share the store's machine."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


@dataclass
class _Peer:
    """What the beats have shown of one rank."""

    beats: int = -1
    changed: float = field(default_factory=time.monotonic)  # when its count last moved (or we began to look)
    name: str = ""
    addr: str = ""  # the address it reaches the store from
    pid: int | None = None
    left: bool = False  # it said it was leaving (its part of the run is over): its silence is no stall


class Watchdog:
    """Heartbeats in the group's store (see the module's docstring), in two threads: one
    talks to the store and may block there for as long as the network likes (a cut
    link can hold a store call forever); the other only looks at what the first has
    seen, so silence is noticed however the store behaves. ``on_stall`` is called once,
    with the sentence naming the silent rank (or the store); the process then ends with
    exit code 1, wherever its main thread waits."""

    def __init__(self, rank: int, world: int, stall_s: float, host: str, port: int) -> None:
        self.rank, self.world, self.stall_s = rank, world, stall_s
        self.address = f"{host}:{port}"
        self.on_stall: Callable[[str], None] = lambda _message: None
        self.leader_gone = False  # the silent one is rank 0 (or the store): the run's writer may be gone
        self.silent: int | None = None  # the rank found silent, once one is
        self._store: Any = None
        self._store_ip = host
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._watch_all = rank == 0  # the others watch rank 0, until a broken collective asks about everyone
        self._contact = time.monotonic()  # when a round of beats last went through
        self._verdict: str | None = None  # another rank's, read from the store
        self._notes: dict[str, str] = {}  # rank 0's notes, kept: they are wanted when the store may be gone
        self._stopped = threading.Event()
        self._fired = threading.Lock()
        self._beating: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.address.rsplit(":", 1)
        store = dist.TCPStore(  # type: ignore[attr-defined]
            host, int(port), is_master=False, wait_for_workers=False,
            timeout=timedelta(seconds=min(STORE_OP_S, self.stall_s)),
        )
        env = os.environ
        job = env.get("TORCHELASTIC_RUN_ID") or env.get("SLURM_JOB_ID", "")
        attempt = f"{env.get('TORCHELASTIC_RESTART_COUNT', '0')}-{env.get('SLURM_RESTART_COUNT', '0')}"
        self._store = dist.PrefixStore(f"cbam-tui/{job}/{attempt}/", store)  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            self._store_ip = socket.gethostbyname(host)
        self._store.set(f"who/{self.rank}", _who(self.rank))
        self._store.set(f"pid/{self.rank}", str(os.getpid()))
        self._store.set(f"addr/{self.rank}", _address_towards(host, int(port)))
        self._store.add(f"beat/{self.rank}", 1)
        self._beating = threading.Thread(target=self._beat, name="cbam-heartbeat", daemon=True)
        self._beating.start()
        threading.Thread(target=self._judge_loop, name="cbam-watchdog", daemon=True).start()

    def stop(self) -> None:
        """This rank leaves: it beats no more, and says so, so that a rank still busy (rank 0
        writing the stop checkpoint) does not take its silence for a stall. The store may not
        answer: asked in a thread of its own, for at most a beat."""
        self._stopped.set()
        if self._store is None:
            return

        def say() -> None:
            with contextlib.suppress(Exception):
                self._store.set(f"left/{self.rank}", b"1")

        saying = threading.Thread(target=say, daemon=True)
        saying.start()
        saying.join(BEAT_S)
        # A store call that returns while the interpreter shuts down aborts the process
        # ("terminate called without an active exception", SIGABRT): the beats end first.
        # A call held longer than a beat (a cut link) is not waited for.
        if self._beating is not None:
            self._beating.join(BEAT_S)

    # --- rank 0's marks and notes, for the others ------------------------------------
    def mark(self, step: str) -> None:
        self._store.set(f"mark/{step}", b"1")

    def wait_mark(self, step: str) -> None:
        while not self._store.check([f"mark/{step}"]):
            time.sleep(0.1)

    def note(self, key: str, value: str) -> None:
        """A value for the other ranks (rank 0's run directory), best effort."""
        try:
            self._store.set(f"note/{key}", value)
        except Exception:
            return

    def read_note(self, key: str) -> str | None:
        """Rank 0's note ``key`` as the beats last read it (no store call: it may be gone)."""
        with self._lock:
            return self._notes.get(key)

    def pid_of(self, rank: int) -> int | None:
        """The pid ``rank`` gave when it joined (on its own machine), if the beats read it."""
        with self._lock:
            peer = self._peers.get(rank)
            return peer.pid if peer else None

    # --- the store's side: beats out and in --------------------------------------------
    def _beat(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(Exception):  # the judge sees the silence
                self._beat_once()
            self._stopped.wait(BEAT_S)

    def _beat_once(self) -> None:
        store = self._store
        store.add(f"beat/{self.rank}", 1)
        verdict = bytes(store.get("verdict")).decode() if store.check(["verdict"]) else None
        watched = [r for r in (range(self.world) if self._watch_all else (0,)) if r != self.rank]
        counts = {r: int(store.add(f"beat/{r}", 0)) for r in watched}
        left = {r for r in watched if store.check([f"left/{r}"])}
        # A rank is named once all three of its facts are in (a beat may come before it joined).
        with self._lock:
            unnamed = [r for r in watched if r not in self._peers or not self._peers[r].name]
        new = [r for r in unnamed if store.check([f"who/{r}", f"pid/{r}", f"addr/{r}"])]
        facts = {r: [bytes(store.get(f"{k}/{r}")).decode() for k in ("who", "pid", "addr")] for r in new}
        run = None
        if self.rank != 0 and "run" not in self._notes and store.check(["note/run"]):
            run = bytes(store.get("note/run")).decode()  # kept for the day rank 0 and the store go together
        now = time.monotonic()
        with self._lock:
            for r, n in counts.items():
                peer = self._peers.setdefault(r, _Peer())
                if n != peer.beats:
                    peer.beats, peer.changed = n, now
                peer.left = r in left
            for r, (who, pid, addr) in facts.items():
                peer = self._peers[r]
                peer.name, peer.pid, peer.addr = who, int(pid) if pid.isdigit() else None, addr
            if run is not None:
                self._notes["run"] = run
            self._verdict = verdict
            self._contact = now

    # --- the judge: no store call, ever ---------------------------------------------------
    def _judge_loop(self) -> None:
        while not self._stopped.wait(BEAT_S):
            verdict = self._judge(self.stall_s, STALLED)
            if verdict is not None and not self._stopped.is_set():
                self._fire(verdict)
                return

    def _judge(self, silent_s: float, how: str, left_too: bool = False) -> str | None:
        """The sentence naming a rank silent for ``silent_s`` (or the store, or another
        rank's verdict), or None. A rank that said it left counts only with ``left_too``
        (after a broken collective, where the one that left is the one wanted)."""
        now = time.monotonic()
        with self._lock:
            if self._verdict is not None:  # another rank's: every rank ends with the same sentence
                self.leader_gone = self._verdict.startswith("rank 0 ")
                return self._verdict
            if now - self._contact >= silent_s:
                self.leader_gone = True
                there = "".join(f" and {p.name}" for _, p in sorted(self._peers.items())
                                if p.addr and p.addr == self._store_ip)
                return (f"the group's store at {self.address}{there} did not answer for {now - self._contact:.0f} s "
                        "(their machine is gone or cut off)")
            silent = [(r, p) for r, p in sorted(self._peers.items())
                      if (left_too or not p.left) and now - p.changed >= silent_s]
            if not silent:
                return None
            r, peer = silent[0]
            self.leader_gone, self.silent = r == 0, r
            verdict = f"{peer.name or f'rank {r}'} {how} {now - peer.changed:.0f} s"
        return self._publish(verdict)

    def _publish(self, verdict: str) -> str:
        """The first verdict stands (a frozen rank that wakes up reads why the group
        ended); asked in a thread of its own, since the store may not answer."""
        answer: list[str] = []

        def ask() -> None:
            with contextlib.suppress(Exception):
                answer.append(bytes(self._store.compare_set("verdict", "", verdict)).decode())

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(2 * BEAT_S)
        return answer[0] if answer else verdict

    def _fire(self, verdict: str) -> None:
        if not self._fired.acquire(blocking=False):
            return
        # Saying it may block too (a run directory on a cut-off network file system): bounded.
        saying = threading.Thread(target=self.on_stall, args=(verdict,), daemon=True)
        saying.start()
        saying.join(SAY_S)
        os._exit(Exit.ERROR)

    def explain(self) -> str | None:
        """After a broken collective: the rank whose heartbeat stopped (a peer that died
        closed its connections at once, so its beats stop counting while we look)."""
        if self._store is None:
            return None
        self._watch_all = True
        deadline = time.monotonic() + GONE_S + 3 * BEAT_S
        while time.monotonic() < deadline:
            verdict = self._judge(GONE_S, "is gone: no heartbeat for", left_too=True)
            if verdict is not None:
                return verdict
            time.sleep(BEAT_S / 4)
        return None
