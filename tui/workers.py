"""--nproc-per-node N: this process launches N training processes with torch's elastic
launcher (the code behind torchrun) and follows them through the run directory.

It holds the run directory's lock for the whole run (rank 0 joins it and writes), so
the run is live exactly as long as this process, and it is the one that sees a rank
die: it then appends the run's failure, naming the rank. Its stop signals become a
``stop`` command in the inbox (with the signal's name, so SIGUSR1 still means
"checkpoint and requeue"), which every rank takes at the same step. The workers'
own output goes to ``<run>/workers/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from core.events import Event, RunFailed, RunStopped
from core.follow import Follower
from core.rundir import STOP_VALUES, Command, EventReader, RunDir, StopReason, open_run, send
from core.state import ENDED, FINISHED, RunState

OWNER_ENV = "CBAM_TUI_RUN_OWNER"  # the launcher's pid: rank 0 joins the run it holds
LOCKED_AT_ENV = "CBAM_TUI_LOCKED_AT"
WORKERS = "workers"


class Workers:
    def __init__(self, rundir: RunDir, nproc: int) -> None:
        self.rundir = rundir
        self.run = rundir.path.resolve()
        self.nproc = nproc
        self.done = threading.Event()
        self.failure: str | None = None  # the first rank that failed, and how
        self.appended: RunFailed | None = None  # the failure this process added to the run's events
        self._thread = threading.Thread(target=self._launch, name="cbam-launcher", daemon=True)

    def start(self) -> None:
        os.environ[OWNER_ENV] = str(os.getpid())
        os.environ[LOCKED_AT_ENV] = str(self.rundir.locked_at_ns)
        os.environ["PYTHONUNBUFFERED"] = "1"
        # As torchrun does, unless the user chose: the ranks share the CPU cores, not each take all.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.nproc)))
        self._thread.start()

    def _launch(self) -> None:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        for name in list(logging.root.manager.loggerDict):  # its lines would tear the screen: we report
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=self.nproc, run_id=f"cbam-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=str(self.run / WORKERS), redirects=Std.ALL, tee=Std.NONE),
        )
        try:
            elastic_launch(config, sys.executable)("-m", "tui.cli", "_rank", str(self.run))
        except ChildFailedError as exc:
            rank, first = exc.get_first_failure()
            if first.exitcode < 0:
                how = f"was killed by {first.signal_name()}"
            elif first.error_file_data.get("message"):
                how = f"failed: {first.message}"
            else:
                how = f"exited with code {first.exitcode}"
            log = Path(first.error_file).with_name("stderr.log")
            self.failure = f"rank {rank} (pid {first.pid}) {how}" + (f" (its output: {log})" if log.is_file() else "")
        except Exception as exc:  # the launcher itself: rendezvous, a port, a spawn
            self.failure = f"the launcher failed: {type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def stop(self, reason: StopReason) -> None:
        """Ask every rank to stop at its next exchange, with a checkpoint."""
        value = reason.value if reason.value in STOP_VALUES else ""
        try:
            send(self.run, Command("stop", value), f"launcher pid {os.getpid()}")
        except Exception:
            return  # the run is ending anyway

    def finish(self) -> StopReason:
        """After the workers ended: how the run ended, with a failure the ranks could not
        write (a rank killed, or failed before rank 0 could say) appended to its events."""
        self.done.wait()
        state = final_state(self.run)
        if state.status == FINISHED:
            return StopReason.FINISHED
        if isinstance(state.ended, RunStopped) and state.ended.reason in {r.value for r in StopReason}:
            return StopReason(state.ended.reason)
        if self.failure is not None or state.status not in ENDED:
            kept = self.rundir.checkpoint_path() if self.rundir.has_checkpoint() else None
            why = self.failure or "the training processes ended without a final event"
            self.appended = RunFailed(why + "; the group stopped", str(kept) if kept else None)
            with contextlib.suppress(OSError):
                self.rundir.write(self.appended)
        return StopReason.FAILED


def final_state(run: Path) -> RunState:
    state = RunState(keep_losses=False)
    with open_run(run) as d:
        for event, t in EventReader(d).read_all(final=True):
            state.apply(event, t)
    return state


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
        self._follower.emit = lambda e: None if e.kind == "watching" else on_event(e)
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

