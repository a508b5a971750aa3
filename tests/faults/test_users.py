"""Other users on the machine, for real: a run started with --group-control by one user,
then a member of its group and a stranger each try to read it, steer it, delete it
and plant files in it. The member reads and steers and can do nothing else; the
stranger can do nothing at all.

Needs root (it adds three users and a group, kept for later runs) and a mount
namespace: the interpreter lives under /root, which other users cannot enter, so each
of their commands sees /root through a bind mount of its own (nothing changes for
anyone else)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import of, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("runuser") is None,
                       reason="needs root, unshare and runuser"),
]
CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
TEAM, OWNER, MEMBER, STRANGER = "cbamteam", "cbamowner", "cbammember", "cbamstranger"
SEE_ROOT = Path("/tmp/cbam-user-root")  # /root as other users see it here: the interpreter's tree only
AS_USER = """mount --bind /root/.pyenv "$1/.pyenv" && mount --rbind "$1" /root && shift && exec runuser -u "$0" -- "$@" """


def ensure_users() -> None:
    if not any(g.gr_name == TEAM for g in grp.getgrall()):
        subprocess.run(["groupadd", TEAM], check=True)
    for user, groups in ((OWNER, [TEAM]), (MEMBER, [TEAM]), (STRANGER, [])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            extra = ["-G", ",".join(groups)] if groups else []
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, user], check=True)


def as_user(user: str, *cmd: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    (SEE_ROOT / ".pyenv").mkdir(parents=True, exist_ok=True)
    SEE_ROOT.chmod(0o711)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", AS_USER, user, str(SEE_ROOT),
                           *cmd], cwd=cwd, capture_output=True, text=True, timeout=180, **kw)  # type: ignore[call-overload]


@pytest.fixture
def team_dir() -> Path:
    """A directory of the team: root:cbamteam, set-group-ID, 2770, as a shared box has one."""
    ensure_users()
    base = Path(f"/tmp/cbam-users-{os.getpid()}-{time.monotonic_ns()}")
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    team = base / "team"
    team.mkdir()
    os.chown(team, 0, grp.getgrnam(TEAM).gr_gid)
    team.chmod(0o2770)
    try:
        yield team
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_group_member_reads_and_steers_a_group_controlled_run_and_a_stranger_does_nothing(team_dir: Path) -> None:
    started = as_user(OWNER, CBAM_TUI, "demo", "--detach", "--group-control", "--runs-root", str(team_dir / "runs"),
                      "--device", "cpu", "--image-size", "8", "--limit-train", "40000", "--limit-test", "16",
                      "--batch-size", "8", "--stage-epochs", "1,0,0", "--log-every", "2", cwd=team_dir.parent)
    assert started.returncode == 0, started.stderr
    (run,) = (team_dir / "runs").iterdir()
    trainer = int((run / "run.pid").read_text())
    try:
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        runs_root = str(team_dir / "runs")
        # Read: the member lists it as live and reads its events; the stranger cannot get in.
        listed = as_user(MEMBER, CBAM_TUI, "runs", "--runs-root", runs_root, cwd=Path("/tmp"))
        assert listed.returncode == 0 and " running " in listed.stdout, listed.stdout + listed.stderr
        assert as_user(MEMBER, "cat", str(run / "events.jsonl"), cwd=Path("/tmp")).stdout.count("\n") > 5
        assert as_user(STRANGER, "cat", str(run / "events.jsonl"), cwd=Path("/tmp")).returncode != 0
        # Steer: taken from the member (through the group), refused to the stranger.
        paused = as_user(MEMBER, CBAM_TUI, "ctl", str(run), "pause", cwd=Path("/tmp"))
        assert paused.returncode == 0 and "taken" in paused.stdout, paused.stdout + paused.stderr
        wait_for("the pause", lambda: of(run, "paused"))
        (command,) = of(run, "command")
        assert command["verb"] == "pause" and "ctl pid" in command["origin"]
        refused = as_user(STRANGER, CBAM_TUI, "ctl", str(run), "resume", cwd=Path("/tmp"))
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        # Delete and plant: neither can remove the run or put a file where the run reads.
        for user in (MEMBER, STRANGER):
            assert as_user(user, "rm", "-rf", str(run), cwd=Path("/tmp")).returncode != 0
            assert as_user(user, "touch", str(run / "checkpoints" / "last.pt"), cwd=Path("/tmp")).returncode != 0
            assert as_user(user, "ln", "-s", "/etc/passwd", str(run / "curves.png"), cwd=Path("/tmp")).returncode != 0
        assert run.is_dir()
        # What the member may drop in the inbox that is not a command is never read nor applied.
        assert as_user(MEMBER, "ln", "-s", "/etc/shadow", str(run / "control" / "1-2-resume"),
                       cwd=Path("/tmp")).returncode == 0
        stopped = as_user(MEMBER, CBAM_TUI, "ctl", str(run), "stop", cwd=Path("/tmp"))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        wait_for("the stop", lambda: of(run, "run_stopped"))
        assert not of(run, "resumed")  # the planted "resume" was left alone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer, 9)
