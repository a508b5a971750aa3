"""--nproc-per-node N: this process launches N training processes with torch's elastic
launcher (the code behind torchrun) and follows them through the run directory.

It holds the run directory's lock for the whole run (rank 0 joins it and writes), and
hands that same lock to every rank it starts (`Lifeline`), so the run counts as live
while this process or any of its ranks lives: a resume is refused until the last one
is gone. Each rank dies with it (a parent-death signal), so a `kill -9` of this
process leaves no rank writing the run. It is the one that sees a rank die: it then
appends the run's failure, naming the rank. Its stop signals become a ``stop``
command in the inbox (with the signal's name, so SIGUSR1 still means "checkpoint and
requeue"), which every rank takes at the same step; ranks that have not stopped
within the stall timeout are killed. The workers' own output goes to
``<run>/workers/``, reached through the run's directory, never through a link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.events import Event, RunFailed, RunStopped, Watching
from core.follow import Follower
from core.inbox import send
from core.rundir import LOCK, WORKERS, EventReader, RunDir, open_run
from core.safefs import Dir
from core.state import RunState
from core.vocab import STALLED, Command, Exit, Status, StopReason
from tui.launch import LOCKED_AT_ENV

OWNER_ENV = "CBAM_TUI_RUN_OWNER"  # the launcher's pid: rank 0 joins the run it holds
LIFELINE_ENV = "CBAM_TUI_LIFELINE"  # the launcher's socket, where each rank takes the run's lock
SHUTDOWN_S = 10  # after one rank failed, the others have this long to end before SIGKILL


class Lifeline:
    """Hands the run's lock to each rank that asks (SCM_RIGHTS over a unix socket in a
    private directory): one open file, so the kernel keeps the lock until the launcher
    and every rank holding it are gone. Records the ranks' pids, for a stop that must
    come to killing."""

    def __init__(self, lock_fd: int) -> None:
        self.lock_fd = lock_fd
        self.pids: set[int] = set()
        self._dir = tempfile.mkdtemp(prefix="cbam-tui-")  # 0700: only this user reaches the socket
        self.path = os.path.join(self._dir, "lock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(64)
        threading.Thread(target=self._serve, name="cbam-lifeline", daemon=True).start()

    def _serve(self) -> None:
        creds = struct.Struct("3i")  # pid, uid, gid
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                pid, uid, _gid = creds.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, creds.size))
                if uid != os.getuid():
                    continue
                self.pids.add(pid)
                with contextlib.suppress(OSError):
                    socket.send_fds(conn, [b"L"], [self.lock_fd])

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def take_lock(run: Path) -> int:
    """In a rank: the run's lock, from the launcher that started it; kept open (never
    inherited) for as long as this process lives. CbamError-free: OSError if it fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(os.environ[LIFELINE_ENV])
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if len(fds) != 1:
        raise OSError("the launcher did not hand over the run's lock")
    fd = fds[0]
    os.set_inheritable(fd, False)
    with open_run(run) as d:
        mine, theirs = os.fstat(fd), d.lstat(LOCK)
    if theirs is None or (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        os.close(fd)
        raise OSError(f"the lock handed over is not {run}'s")
    return fd


def die_with_parent(parent: int | None) -> None:
    """This process gets SIGKILL the moment the process that started it ends, however
    it ends (Linux's parent-death signal): a rank never outlives its launcher. Exits at
    once if that process is already gone (``parent``: its pid, when known)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(Exit.ERROR)  # the launcher died before we could ask to die with it


def _children() -> set[int]:
    """This process's child processes (the ranks the elastic agent started)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    found.add(int(entry.name))
    return found


class Workers:
    def __init__(self, rundir: RunDir, nproc: int, stall_s: float = 120.0) -> None:
        self.rundir = rundir
        self.run = rundir.path.resolve()
        self.nproc = nproc
        self.stall_s = stall_s
        self.done = threading.Event()
        self.failure: str | None = None  # the first rank that failed, and how
        self.appended: RunFailed | None = None  # the failure this process added to the run's events
        self.killed: str | None = None  # why the ranks had to be killed (they did not stop in time)
        self.signalled = False  # the first rank to fail was killed by a signal: only this process knows it
        self.first_failed = ""  # "rank N (pid P)": the first rank to fail, as the launcher saw it
        self._stop_reason: StopReason | None = None
        self._logs: Dir | None = None
        self._lifeline: Lifeline | None = None
        self._thread = threading.Thread(target=self._launch, name="cbam-launcher", daemon=True)

    def start(self) -> None:
        self._logs = self.rundir.open_workers()  # refuses a link planted there
        self._lifeline = Lifeline(self.rundir.lock_fd)
        os.environ[OWNER_ENV] = str(os.getpid())
        os.environ[LOCKED_AT_ENV] = str(self.rundir.locked_at_ns)
        os.environ[LIFELINE_ENV] = self._lifeline.path
        os.environ["PYTHONUNBUFFERED"] = "1"
        # As torchrun does, unless the user chose: the ranks share the CPU cores, not each take all.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.nproc)))
        self._thread.start()

    @property
    def _log_root(self) -> str:
        """workers/ as torch's launcher (and each rank, for its error file) reaches it:
        through this process's open descriptor of it, so a link swapped in under the
        name leads nowhere."""
        assert self._logs is not None
        return f"/proc/{os.getpid()}/fd/{self._logs.fd}"

    def _shown(self, path: str) -> Path:
        return Path(path.replace(self._log_root, str(self.run / WORKERS), 1))

    def _launch(self) -> None:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        for name in list(logging.root.manager.loggerDict):  # its lines would tear the screen: we report
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        extra: dict[str, Any] = {}
        if "shutdown_timeout" in {f.name for f in fields(LaunchConfig)}:  # torch 2.10 on; 30 s before
            extra["shutdown_timeout"] = SHUTDOWN_S
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=self.nproc, run_id=f"cbam-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=self._log_root, redirects=Std.ALL, tee=Std.NONE), **extra,
        )
        try:
            elastic_launch(config, sys.executable)("-m", "tui.cli", "_rank", str(self.run))
        except ChildFailedError as exc:
            rank, first = exc.get_first_failure()
            said = first.message.get("message") if isinstance(first.message, dict) else first.message
            if first.exitcode < 0:
                how = f"was killed by {first.signal_name()}"
                self.signalled = True
            elif first.error_file_data.get("message") and isinstance(said, str):
                how = f"failed: {said.removeprefix('CbamError: ')}"
            else:
                how = f"exited with code {first.exitcode}"
            log = self._shown(first.error_file).with_name("stderr.log")
            self.first_failed = f"rank {rank} (pid {first.pid})"
            self.failure = f"{self.first_failed} {how}" + (f" (its output: {log})" if log.is_file() else "")
        except Exception as exc:  # the launcher itself: rendezvous, a port, a spawn
            self.failure = f"the launcher failed: {type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def stop(self, reason: StopReason) -> None:
        """Ask every rank to stop at its next exchange, with a checkpoint; those still
        running after the stall timeout are killed."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        with contextlib.suppress(Exception):  # no inbox (the run is ending anyway): the timer still acts
            send(self.run, Command.stopping(reason), f"launcher pid {os.getpid()}")
        threading.Thread(target=self._kill_after, args=(reason, self.stall_s), name="cbam-stop", daemon=True).start()

    def _kill_after(self, reason: StopReason, grace: float) -> None:
        if self.done.wait(grace):
            return
        self.kill(f"the training processes did not stop within {grace:.0f} s of {reason.value} and were killed")

    def kill(self, why: str) -> None:
        """SIGKILL every rank (their checkpoints are atomic: the last complete one stays)."""
        self.killed = self.killed or why
        pids = _children() | (self._lifeline.pids if self._lifeline else set())
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def finish(self) -> StopReason:
        """After the workers ended: how the run ended, with a failure the ranks could not
        write (a rank killed, or failed before rank 0 could say) appended to its events."""
        self.done.wait()
        if self._lifeline is not None:
            self._lifeline.close()
        if self._logs is not None:
            self._logs.close()
        state = final_state(self.run)
        if state.status is Status.FINISHED:
            return StopReason.FINISHED
        stopped = StopReason.of_text(state.ended.reason) if isinstance(state.ended, RunStopped) else None
        if stopped is not None:
            return stopped
        # A failure the ranks wrote already is not said twice; a signal that killed one is news,
        # unless what they wrote names that rank (a sibling's watchdog killed one that stopped answering).
        ended = state.ended
        explained = isinstance(ended, RunFailed) and killed_by_sibling(ended.message, self.first_failed)
        if self.killed is not None or (self.signalled and not explained) or not state.status.ended:
            kept = self.rundir.checkpoint_path() if self.rundir.has_checkpoint() else None
            why = self.killed or self.failure or "the training processes ended without a final event"
            self.appended = RunFailed(why + "; the group stopped", str(kept) if kept else None)
            with contextlib.suppress(OSError):
                self.rundir.write(self.appended)
        if self.killed is not None and self._stop_reason is not None:
            return self._stop_reason  # it stopped as the signal asked, though not with a checkpoint
        return StopReason.FAILED


def killed_by_sibling(message: str, rank: str) -> bool:
    """Whether the ranks wrote that ``rank`` ("rank N (pid P)", as the launcher names it)
    stopped answering, the verdict after which a sibling kills it. The ranks name each
    other "rank N (pid P on HOST)", perhaps with a node. A rank killed from outside is
    only "gone" to them: its signal is the news."""
    name = re.escape(rank.removesuffix(")")) + r"(?: on [^)]*)?\) "
    return bool(rank) and re.search(name + re.escape(STALLED), message) is not None


def final_state(run: Path) -> RunState:
    with open_run(run) as d:
        return RunState(keep_losses=False).fold(EventReader(d).events(final=True))


class LaunchLink:
    """The dashboard's link to a run it launched as several processes: it follows the
    run directory like `watch`, and leaving stops the run, as with one process."""

    leaving_stops_run = True

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.origin = f"dashboard pid {os.getpid()}"
        self._follower = Follower(workers.run, lambda _event: None)

    def start(self, on_event: Callable[[Event], None]) -> StopReason:
        # Our own run: the keys always reach it, so "attached" or "watching only" would mislead.
        self._follower.emit = lambda e: None if isinstance(e, Watching) else on_event(e)
        self.workers.start()
        ender = threading.Thread(target=self._end_when_done, daemon=True)
        ender.start()
        self._follower.run()
        reason = self.workers.finish()
        if self.workers.appended is not None:
            on_event(self.workers.appended)
        return reason

    def _end_when_done(self) -> None:
        self.workers.done.wait()
        self._follower.finish()

    def send(self, command: Command) -> str:
        send(self.workers.run, command, self.origin)
        return f"{command} sent: every process takes it at the same step"

    def stop(self, reason: StopReason) -> None:
        self.workers.stop(reason)

