"""What a run writes besides its events, and with which modes: curves.png and workers/
go through the run's directory without following a link; every file and directory
gets the mode the README promises whatever the umask (owner-only, or the group's
with --group-control); a runs root that lets others in is said in one line; a run
directory that belongs to another user is never written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.control import Control
from core.errors import RunDirError
from core.events import Event, RunStarted
from core.plan import PlanOptions
from core.rundir import RunDir, root_notes
from core.runs import inspect_run, unfinished_run
from core.safefs import UnsafeFile
from core.vocab import Status, StopReason
from tests.conftest import cli, tiny_config, train
from tests.helpers import spec, write_folder


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask: without explicit modes, files would be 0644 and directories 0755."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def plant_at_start(name: str, target: Path) -> object:
    """A reaction that swaps a link into the run directory once the run has started."""

    def react(event: Event) -> None:
        if isinstance(event, RunStarted):
            os.symlink(target, Path(event.run_dir) / name)

    return react


def test_a_curves_png_link_planted_while_the_run_trains_is_replaced_never_followed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes")
    # A finished run of one short epoch: curves.png is written when a run finishes.
    outcome, rec = train(tiny_config(tmp_path, limit_train=16, plan_opts=PlanOptions(stage_epochs="1,0,0")),
                         react=plant_at_start("curves.png", victim))
    assert outcome == StopReason.FINISHED
    assert victim.read_text() == "my notes"
    curves = rec.run_dir / "curves.png"
    assert stat.S_ISREG(curves.lstat().st_mode) and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mode(curves) == 0o600


def test_a_workers_link_stops_a_resume_before_anything_is_written(tmp_path: Path, capsys) -> None:
    control = Control()
    control.stop(StopReason.COMMAND)
    train(tiny_config(tmp_path, run_dir=str(tmp_path / "run")), control=control)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "run" / "workers")
    code, _, err = cli(capsys, "run", "--resume", str(tmp_path / "run"), "--headless", "--nproc-per-node", "2",
                       "--device", "cpu")
    assert code == 1 and err.count("\n") == 1 and "workers is not a directory of this run" in err, err
    assert os.listdir(elsewhere) == []
    os.unlink(tmp_path / "run" / "workers")
    run = RunDir.open(tmp_path / "run")
    try:  # a link swapped in later is refused where it is opened
        os.symlink(elsewhere, tmp_path / "run" / "workers")
        with pytest.raises(UnsafeFile, match="is a symbolic link"):
            run.open_workers()
    finally:
        run.close()
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("group", [False, True])
def test_modes_are_what_the_readme_says_whatever_the_umask(tmp_path: Path, umask_022: None, group: bool) -> None:
    pytest.importorskip("matplotlib")
    outcome, rec = train(tiny_config(tmp_path, group_control=group, limit_train=16,
                                     plan_opts=PlanOptions(stage_epochs="1,0,0")))  # every file a finished run has
    assert outcome == StopReason.FINISHED
    run = rec.run_dir
    d, f = (0o750, 0o640) if group else (0o700, 0o600)
    assert mode(tmp_path / "runs") == d  # a runs root it made
    assert mode(run) == d and mode(run / "checkpoints") == d
    assert mode(run / "control") == (0o2770 if group else 0o700)
    for name in ("config.json", "events.jsonl", "metrics.csv", ".lock", "curves.png", "checkpoints/last.pt"):
        assert mode(run / name) == f, name
    held = RunDir.open(run, group)
    assert mode(run / "run.pid") == f
    held.open_workers().close()
    held.close()
    assert mode(run / "workers") == d
    held = RunDir.open(run, not group)  # resumed the other way round: the modes follow the flag
    held.close()
    assert mode(run) == (0o700 if group else 0o750) and mode(run / "events.jsonl") == (0o600 if group else 0o640)


def test_the_decode_cache_it_makes_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    from core.data import load_data

    write_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    load_data(spec(tmp_path / "imgs", tmp_path / "cache"), lambda m, d, t: None)
    assert mode(tmp_path / "cache") == 0o700
    assert {mode(p) for p in (tmp_path / "cache").iterdir()} == {0o600}


def test_a_runs_root_open_to_others_or_closed_to_the_group_is_said(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (note,) = root_notes(shared, group_control=False)
    assert "writable by every user (mode 1777)" in note
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    mine.chmod(0o700)
    assert root_notes(mine, group_control=False) == []
    (note,) = root_notes(mine, group_control=True)
    assert "keeps the group out" in note and f"chmod g+rx {mine}" in note


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_run_of_another_user_is_never_resumed_or_picked_up(tmp_path: Path, capsys) -> None:
    control = Control()
    control.stop(StopReason.COMMAND)
    train(tiny_config(tmp_path, name="mine"), control=control)
    (planted,) = (tmp_path / "runs").iterdir()
    assert unfinished_run("mine", tmp_path / "runs") == planted
    for path in (planted, *planted.rglob("*")):
        os.lchown(path, 4242, 4242)  # as if another user had made it look like one of ours
    assert unfinished_run("mine", tmp_path / "runs") is None  # --resume auto starts a new run instead
    with pytest.raises(RunDirError, match="belongs to another user"):
        RunDir.open(planted)
    assert inspect_run(planted).state is Status.STOPPED  # still listed: reading is harmless
