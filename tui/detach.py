"""`cbam-tui run --detach`: the same training, in a background process of its own.

The child is this CLI again, headless, in a new session (so closing the
terminal or the SSH connection does not reach it), with its output in
<run dir>/train.log. The parent has already checked every option, so a bad
one still fails here, in the foreground, in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.channel import CONTROL_DIR
from core.checkpoint import find_checkpoint, run_dir_of
from core.config import RunConfig
from core.errors import ConfigError, RunDirError
from core.run_dir import RunDir
from core.runs import PID_FILE, owner_alive
from tui.options import OPTIONS

NOT_PASSED = {"detach", "headless", "run_dir"}  # the child gets its own values
EARLY_EXIT_S = 0.5


def child_args(given: dict[str, Any]) -> list[str]:
    """The options as typed, back to a command line (only those given)."""
    args: list[str] = []
    for o in OPTIONS:
        value = given.get(o.name)
        if value is None or o.name in NOT_PASSED:
            continue
        decl = o.decls[0]
        if o.type is bool:
            on, _, off = decl.partition("/")
            if value or off:
                args.append(on if value else off)
        else:
            args += [decl, str(value)]
    return args


def target_dir(config: RunConfig) -> Path:
    """Where the detached run will write: its own directory, made now so it can be printed."""
    if config.resume:
        home = run_dir_of(find_checkpoint(Path(config.resume)))
        if home is None:
            raise ConfigError("--detach with --resume needs a run directory, not a checkpoint outside one")
        pid = owner_alive(home)
        if pid is not None:
            raise RunDirError(f"run directory {home} is in use by another cbam-tui process (pid {pid})")
        return home
    explicit = Path(config.run_dir) if config.run_dir else None
    return RunDir.prepare(Path(config.runs_root), config.name, explicit)


def detach(given: dict[str, Any], demo: bool, config: RunConfig) -> int:
    run = target_dir(config).resolve()
    argv = [sys.executable, "-m", "tui.cli", "demo" if demo else "run", *child_args(given), "--headless"]
    if not config.resume:
        argv += ["--run-dir", str(run)]
    log_path = run / "train.log"
    try:
        log = log_path.open("ab")
    except OSError as exc:
        raise RunDirError(f"cannot write {log_path}: {exc.strerror or exc}") from None
    with log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    # The child writes the same pid once it holds the run; this covers its start-up,
    # and so does the control directory: commands sent now wait for its first batch.
    (run / PID_FILE).write_text(f"{child.pid}\n")
    (run / CONTROL_DIR).mkdir(exist_ok=True)
    time.sleep(EARLY_EXIT_S)
    code = child.poll()
    if code not in (None, 0):
        tail = log_path.read_text(errors="replace").strip().splitlines()
        raise RunDirError(f"the background run exited at once ({tail[-1] if tail else f'exit {code}'})")
    print(f"cbam-tui: training in the background, pid {child.pid}")
    print(f"  run directory: {run}")
    print(f"  output:        {log_path}")
    print(f"  dashboard:     cbam-tui watch {run}")
    print(f"  control:       cbam-tui ctl {run} pause|resume|next|save|stop")
    return 0
