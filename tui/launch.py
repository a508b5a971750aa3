"""Starting what the CLI was asked for: a run under the dashboard, headless or
detached, or a dashboard attached to a run. These are the CLI's entry points, the
only code that installs signal handlers; each returns the process's exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import RunConfig
from core.control import Control
from core.errors import CbamError, RunDirError
from core.events import Event, RunFailed, RunStarted, Watching
from core.rundir import CONFIG, TRAIN_LOG, EventReader, RunDir, read_config
from core.runs import inspect_run
from core.state import RunState, fmt_seconds
from core.vocab import Exit, Status, StopReason
from tui.signals import stop_on_signals

if TYPE_CHECKING:
    from core.dist import Group, Watchdog
    from core.train import Trainer
    from tui.workers import Workers

LOCK_FD_ENV = "CBAM_TUI_LOCK_FD"  # a detached child inherits its parent's lock on the run
LOCKED_AT_ENV = "CBAM_TUI_LOCKED_AT"  # when the parent (a detaching run, a launcher) took the run's lock
DETACH_WAIT_S = 120.0  # for the child to start training (a first decode of 60,000 JPEGs takes ~30 s)
LEADER_LOCK_WAIT_S = 5.0  # a survivor waits this long for a gone rank 0's lock before it gives up writing


def say_where(config: RunConfig) -> None:
    """One line (stderr) for each thing about the runs root that lets other users in, or
    keeps the run's group out with --group-control."""
    from core.rundir import home_of_checkpoint, root_notes

    home = home_of_checkpoint(Path(config.resume)) if config.resume else None
    root = home.parent if home else Path(config.run_dir).parent if config.run_dir else Path(config.runs_root)
    for note in root_notes(root, config.group_control):
        with contextlib.suppress(OSError):  # a stderr nobody reads is no reason not to train
            print(f"cbam-tui: warning: {note}", file=sys.stderr, flush=True)


def dashboard(config: RunConfig) -> int:
    from tui.app import make_app
    from tui.links import InProcessLink

    say_where(config)
    link = InProcessLink(config.replace(on_nonfinite="pause"))
    app = make_app(link, stall_guard=True)
    with stop_on_signals(app.stop_signal):
        app.run()
    link.stop(StopReason.QUIT)  # a no-op unless the app ended some unexpected way
    print_outcome(app.state, app.error)
    return app.exit_code


def watch(run: Path) -> int:
    from tui.app import make_app
    from tui.links import DirectoryLink

    link = DirectoryLink(run)
    app = make_app(link, stall_guard=True)
    link.on_gone = lambda: app.call_from_thread(app.exit, Exit.ERROR)
    with stop_on_signals(app.stop_signal):
        app.run()
    if link.gone:
        print(f"cbam-tui: {run} was deleted while it was watched", file=sys.stderr)
        return Exit.ERROR
    info = inspect_run(run)
    if info.live:
        print(f"cbam-tui: left {run}; training goes on ({info.state.word}, pid {info.pid}). "
              f"Back with: cbam-tui watch {run}")
    else:
        best = f" | best test acc {info.best_acc:.2f}%" if info.best_acc is not None else ""
        print(f"cbam-tui: {run}: {info.state.word}{best}")
    if app.error:
        print(f"cbam-tui: error: {app.error}", file=sys.stderr)
    return app.exit_code


def compare(runs: list[Path], metric: str) -> int:
    from tui.app import make_app
    from tui.links import CompareLink

    link = CompareLink(runs, metric)
    app = make_app(link, stall_guard=True)
    with stop_on_signals(app.stop_signal):
        app.run()
    return app.exit_code


def headless(config: RunConfig, rundir: RunDir | None = None) -> int:
    from tui.headless import run_headless

    if rundir is None:
        say_where(config)
    control = Control()
    with stop_on_signals(control.stop):
        reason = run_headless(config, control, rundir=rundir)
    return reason.exit_code


def print_outcome(state: RunState, error: str | None) -> None:
    """What stays in the terminal's scrollback after the dashboard is gone: the epochs,
    the best accuracy, the run directory and how to continue."""
    started = state.first
    if state.epochs:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("epoch", "stage", "train loss", "train acc", "test loss", "test acc", "time"):
            table.add_column(column, justify="right")
        top = max(state.epochs, key=lambda e: e.test_acc)
        for e in state.epochs:
            table.add_row(
                str(e.epoch), str(e.stage), f"{e.train_loss:.4f}", f"{e.train_acc:.2f}%", f"{e.test_loss:.4f}",
                f"{e.test_acc:.2f}%", fmt_seconds(e.seconds), style="bold" if e is top else None,
            )
        Console(highlight=False, soft_wrap=True).print(table)
    if started is not None:
        final = state.epochs[-1].test_acc if state.epochs else None
        best = state.best_acc
        print(
            f"cbam-tui: {state.status.word}"
            + (f" | final test acc {final:.2f}%" if final is not None else "")
            + (f" | best {best:.2f}% (epoch {state.best_epoch})" if best is not None else "")
            + f" | run directory: {started.run_dir}"
        )
        if state.status in (Status.STOPPED, Status.FAILED) and state.last_checkpoint:
            print(f"cbam-tui: continue with: cbam-tui run --resume {started.run_dir}")
    if error:
        print(f"cbam-tui: error: {error}", file=sys.stderr)


# --- detach: the same training in a process of its own ---------------------------


def _claim(config: RunConfig, home: Path | None) -> RunDir:
    """The run directory, claimed here so that a bad option or a busy run fails at once,
    with the run's config written for the process that will train it."""
    if config.resume and home is not None:
        rundir = RunDir.open(home, config.group_control)
    elif config.run_dir:
        rundir = RunDir.create_at(Path(config.run_dir), config.group_control)
    else:
        rundir = RunDir.create(Path(config.runs_root), config.name, config.group_control)
    try:
        rundir.write_config(config.to_dict())
    except RunDirError:
        rundir.close()
        raise
    return rundir


def detach(config: RunConfig, home: Path | None) -> int:
    """Claim the run here (so a bad option or a busy run fails in the foreground), hand
    its lock to a headless child in a new session, and return once it trains."""
    say_where(config)
    rundir = _claim(config, home)
    run = rundir.path.resolve()
    try:
        log = rundir.open_log()
    except OSError as exc:
        rundir.close()
        raise RunDirError(f"cannot write to {run}: {exc.strerror or exc}") from None
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "_child", str(run)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(rundir.lock_fd,),
            env={
                **os.environ, "PYTHONUNBUFFERED": "1",
                LOCK_FD_ENV: str(rundir.lock_fd), LOCKED_AT_ENV: str(rundir.locked_at_ns),
            },
        )
    finally:
        os.close(log)
    rundir.hand_over(child.pid)
    print(f"cbam-tui: starting in the background, pid {child.pid}; run directory {run}", flush=True)
    code = _wait_started(run, child)
    if code is not None:
        tail = _last_line(run / TRAIN_LOG).removeprefix("cbam-tui: error: ") or f"exit {code}"
        raise CbamError(f"the background run ended at once: {tail}")
    print(f"  output:    {run / TRAIN_LOG}")
    print(f"  dashboard: cbam-tui watch {run}")
    print(f"  control:   cbam-tui ctl {run} pause|resume|next|save|stop")
    return Exit.OK


def _wait_started(run: Path, child: subprocess.Popen[bytes]) -> int | None:
    """None once the child has started training (or is still loading after a while);
    its exit code if it ended first."""
    from core.rundir import open_run

    deadline = time.monotonic() + DETACH_WAIT_S
    with open_run(run) as d:
        reader = EventReader(d)
        while time.monotonic() < deadline:
            code = child.poll()
            events = [e for e, _ in reader.read()]
            if any(isinstance(e, RunStarted) for e in events):
                return None
            if code is not None or any(isinstance(e, RunFailed) for e in events):
                return child.wait()
            time.sleep(0.1)
    print(f"cbam-tui: still loading after {DETACH_WAIT_S:.0f} s; it goes on in the background")
    return None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _group_control_of(run: Path) -> bool:
    """Whether the run's config asks for --group-control (its modes depend on it), before
    the config is read in full."""
    from core.rundir import open_run

    try:
        with open_run(run) as d:
            return read_config(d).get("group_control") is True
    except CbamError:
        return False


def child(run: Path) -> int:
    """The detached process: adopt the run its parent claimed, read its config, train."""
    try:
        fd, locked_at = int(os.environ.pop(LOCK_FD_ENV)), int(os.environ.pop(LOCKED_AT_ENV))
    except (KeyError, ValueError):
        raise CbamError("the _child command is started by run --detach, not by hand") from None
    rundir = RunDir.adopt(run, fd, locked_at, _group_control_of(run))
    try:
        config = RunConfig.from_dict(read_config(rundir.dir), str(run / CONFIG))
        if config.nproc_per_node > 1:
            from core.dist import check_launch

            check_launch(config.device, config.nproc_per_node, config.sync_bn)  # the GPUs the parent did not count
    except CbamError as exc:
        rundir.write(RunFailed(str(exc)))
        rundir.close()
        raise
    if config.nproc_per_node > 1:
        return processes(config, None, show_dashboard=False, rundir=rundir)
    return headless(config, rundir)


# --- several training processes ------------------------------------------------------


def processes(config: RunConfig, home: Path | None, show_dashboard: bool, rundir: RunDir | None = None) -> int:
    """--nproc-per-node N: launch the ranks and follow them, with the dashboard or as lines."""
    from tui.workers import LaunchLink, Workers

    if rundir is None:
        from core.dist import check_launch

        check_launch(config.device, config.nproc_per_node, config.sync_bn)  # before the run is claimed
        say_where(config)
    rundir = rundir or _claim(config, home)
    workers = Workers(rundir, config.nproc_per_node, config.stall_timeout)
    try:
        if show_dashboard:
            from tui.app import make_app

            link = LaunchLink(workers)
            app = make_app(link, stall_guard=True)
            with stop_on_signals(app.stop_signal, lambda: workers.kill("a second stop signal")):
                app.run()
            print_outcome(app.state, app.error)
            return app.exit_code
        return _processes_as_lines(workers)
    finally:
        rundir.close()


def _processes_as_lines(workers: Workers) -> int:
    import threading

    from core.follow import Follower
    from tui.headless import OUTPUT_CLOSED, Reporter
    from tui.workers import final_state

    report = Reporter(sys.stdout, lambda: workers.stop(OUTPUT_CLOSED))
    follower = Follower(workers.run, lambda e: None if isinstance(e, Watching) else report(e))

    def end_when_done() -> None:
        workers.done.wait()
        follower.finish()

    with stop_on_signals(workers.stop, lambda: workers.kill("a second stop signal")):
        workers.start()
        threading.Thread(target=end_when_done, daemon=True).start()
        follower.run()
        reason = workers.finish()
    if reason == StopReason.FAILED:
        raise CbamError(final_state(workers.run).message or "the training processes failed")
    if workers.killed is not None:  # the exit code the signal asks for, and why there is no stop checkpoint
        print(f"cbam-tui: error: {workers.appended.message if workers.appended else workers.killed}", file=sys.stderr)
    return reason.exit_code


def rank(config: RunConfig, run: Path | None = None) -> int:
    """One training process of several (torchrun, srun, or --nproc-per-node's launcher);
    rank 0 prints the run's lines. ``run``: the directory a launcher holds for us."""
    from core.dist import Group
    from core.train import Trainer
    from tui.headless import OUTPUT_CLOSED, Reporter
    from tui.workers import OWNER_ENV

    launched = run is not None
    if "TORCHELASTIC_RUN_ID" in os.environ and not launched:
        from tui.workers import die_with_parent

        die_with_parent(None)  # torchrun's agent started us: we end with it
    trainer: list[Trainer] = []
    try:
        group = Group.from_env(config.device, config.stall_timeout)
        if group is None:
            raise CbamError("no group to join: start it with torchrun or srun, or use cbam-tui run --nproc-per-node N")
        watchdog = group.watchdog
        if watchdog is not None:
            watchdog.on_stall = lambda verdict: _group_lost(f"{verdict}; the group stopped", group, trainer, launched)
        try:
            # Rank 0's reading of the options wins (--resume auto looks at the runs as they are
            # when each process starts, and rank 0 may already have taken the run up again).
            config = group.from_leader(config)
            if group.leader and not launched:
                say_where(config)
            rundir = None
            if run is not None and group.leader:
                owner, locked_at = int(os.environ[OWNER_ENV]), int(os.environ[LOCKED_AT_ENV])
                rundir = RunDir.join(run, owner, locked_at, config.group_control)
            control = Control()
            lines = Reporter(sys.stdout, lambda: control.stop(OUTPUT_CLOSED)) if group.leader else (lambda _e: None)

            def report(event: Event) -> None:
                if isinstance(event, RunStarted) and watchdog is not None:
                    watchdog.note("run", event.run_dir)  # where a survivor records rank 0's loss
                lines(event)

            trainer.append(Trainer(config, report, control, rundir, group))
            with stop_on_signals(control.stop):
                reason = trainer[0].run()
        except CbamError as exc:
            if not group.leader and not launched and watchdog is not None and watchdog.leader_gone:
                _record_for_leader(str(exc), watchdog)
            raise
        finally:
            group.close()
    except BaseException as exc:
        if isinstance(exc, Exception):  # the launcher names the first rank that failed, and why
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(exc)
        raise
    return reason.exit_code


def _group_lost(message: str, group: Group, trainer: list[Trainer], launched: bool) -> None:
    """The watchdog found a silent rank (this process ends right after): one line here,
    the failure in the run directory (by rank 0, or by a survivor if rank 0 is gone),
    and the error file the launcher reads."""
    print(f"cbam-tui: error: {message}", file=sys.stderr, flush=True)
    rundir = trainer[0].rundir if trainer and group.leader else None
    if rundir is not None:
        kept = str(rundir.checkpoint_path()) if rundir.has_checkpoint() else None
        with contextlib.suppress(Exception):
            rundir.write(RunFailed(message, kept))
    elif not group.leader and not launched and group.watchdog is not None and group.watchdog.leader_gone:
        _record_for_leader(message, group.watchdog)
    with contextlib.suppress(Exception):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(CbamError(message))
    _end_sibling(group)  # last: its death must not be the first failure the launcher sees


def _end_sibling(group: Group) -> None:
    """A silent rank started by the same launcher as this one (a frozen process on this
    machine) is killed, so that it does not hold its memory and devices until its
    launcher's shutdown grace runs out: the group is over either way."""
    watchdog = group.watchdog
    pid = watchdog.pid_of(watchdog.silent) if watchdog is not None and watchdog.silent is not None else None
    if pid is None or pid == os.getpid():
        return
    with contextlib.suppress(OSError, IndexError, ValueError):
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if parent == os.getppid() and parent > 1:
            os.kill(pid, signal.SIGKILL)


def _record_for_leader(message: str, watchdog: Watchdog) -> None:
    """Rank 0, the run's writer, is gone: say why in its run directory, if this process
    sees it and rank 0's lock has been let go (a frozen rank 0 still holds it)."""
    from core.rundir import record_failure

    where = watchdog.read_note("run")
    if where is not None:
        with contextlib.suppress(Exception):
            record_failure(Path(where), message, wait_s=LEADER_LOCK_WAIT_S)


def launched_rank(run: Path) -> int:
    """A rank started by --nproc-per-node's launcher: the run's config is in its directory.
    It dies with the launcher, and holds the run's lock with it, so that the run is live
    until the last of them is gone."""
    from core.rundir import open_run
    from tui.workers import OWNER_ENV, die_with_parent, take_lock

    if OWNER_ENV not in os.environ:
        raise CbamError("the _rank command is started by run --nproc-per-node, not by hand")
    die_with_parent(int(os.environ[OWNER_ENV]))
    try:
        take_lock(run)
    except OSError as exc:
        raise CbamError(f"cannot take the run's lock from the launcher: {exc.strerror or exc}") from None
    with open_run(run) as d:
        config = RunConfig.from_dict(read_config(d), str(run / CONFIG))
    return rank(config, run)
