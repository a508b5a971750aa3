"""torch's threads fit the CPUs this process may use and that others leave free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core import threads as th
from core.events import RunStarted, SystemSample
from core.plan import PlanOptions
from core.state import RunState
from tests.conftest import cli, tiny_config, train
from tests.helpers import wait_until
from tui.widgets.hardware import cpu_line


def fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_cgroup_v2_quota_is_the_smallest_of_the_group_and_its_parents(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/jobs/one\n", {
        "cpu.max": "max 100000\n", "jobs/cpu.max": "300000 100000\n", "jobs/one/cpu.max": "150000 100000\n",
    })
    assert th.cgroup_quota(root) == 1.5
    assert th.usable_cpus(root) == min(1.5, len(th.os.sched_getaffinity(0)))


def test_no_quota_and_a_cgroup_v1_quota(tmp_path: Path) -> None:
    assert th.cgroup_quota(fake_root(tmp_path / "a", "0::/\n", {"cpu.max": "max 100000\n"})) is None
    v1 = fake_root(tmp_path / "b", "4:cpu,cpuacct:/\n",
                   {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert th.cgroup_quota(v1) == 0.5
    unlimited = fake_root(tmp_path / "c", "4:cpu,cpuacct:/\n",
                          {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert th.cgroup_quota(unlimited) is None
    assert th.cgroup_quota(tmp_path / "nothing") is None


@pytest.mark.parametrize(("cpus", "busy", "reserve", "want"), [
    (2, 0.0, 0, 2), (2, 1.0, 0, 1), (2, 1.9, 0, 1), (2, 0.0, 1, 2),  # on 2 cores no core is kept back
    (8, 0.0, 1, 7), (8, 3.2, 1, 4), (8, 5.0, 1, 3), (1.5, 0.0, 0, 1), (16, 0.4, 0, 16),
])
def test_the_choice_takes_the_free_cores(monkeypatch: pytest.MonkeyPatch, cpus: float, busy: float, reserve: int,
                                         want: int) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(th, "busy_elsewhere", lambda: busy)
    choice = th.choose_threads(0, reserve, "the dashboard")
    assert choice.threads == want
    assert choice.why.startswith(f"{want} on {cpus:g} CPU")
    assert ("left for the dashboard" in choice.why) == (want < max(1, int(cpus) - round(busy)))


def test_threads_asked_for_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th, "busy_elsewhere", lambda: pytest.fail("nothing is measured when the number is given"))
    assert th.choose_threads(3).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert th.choose_threads(0).why.startswith("5 (OMP_NUM_THREADS)")
    assert th.choose_threads(2).threads == 2


def cpu_ticks(pid: int) -> int:
    """The CPU time a process has used so far, in clock ticks (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_busy_core_elsewhere_is_seen() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        wait_until(lambda: cpu_ticks(spinner.pid) >= 5)  # it is spinning, not still starting
        assert th.busy_elsewhere(0.5) >= 0.5
    finally:
        spinner.kill()


def test_a_run_says_how_many_threads_it_took_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        # One epoch of 2 batches: the choice is made, said and kept before the first batch.
        _, rec = train(tiny_config(tmp_path, threads=1, limit_train=16, plan_opts=PlanOptions(stage_epochs="1,0,0")))
        started = rec.of(RunStarted)[0]
        assert started.threads == 1 and started.threads_why.startswith("1 (--threads)")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_is_checked_like_any_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "demo", "--headless", "--threads", "-1")
    assert code == 1 and "--threads must be at least 0" in err
    code, _, err = cli(capsys, "demo", "--headless", "--threads", "5000")
    assert code == 1 and "--threads must be at most 1024" in err


def test_the_machine_panel_says_when_the_cpu_is_oversubscribed() -> None:
    state = RunState()
    state.started = RunStarted("r", "d", "synthetic", "cpu", "fp32", 1, 1, ("a",), 1, 1, 1, (), "default", "train",
                               "keep", 1, (), {}, threads=2, threads_why="2 on 2 CPUs")
    state.system = SystemSample(100.0, 1, cpus=2.0, busy_elsewhere=1.1)
    line = cpu_line(state)
    assert line is not None and "other processes 1.1 of 2 CPUs" in line.plain
    assert "oversubscribed: try --threads 1" in line.plain
    state.system = SystemSample(100.0, 1, cpus=2.0, busy_elsewhere=0.2)
    line = cpu_line(state)
    assert line is not None and "oversubscribed" not in line.plain
