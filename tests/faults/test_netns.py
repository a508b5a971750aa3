"""Two machines on one (network namespaces), as bench/netsoak.py sets them up: one node
killed mid-epoch with every process on it. The survivor stops within seconds with a
line naming the lost node and rank, the run directory says the same, and a resume on
the remaining node gives every epoch once. The other faults (a cut link, a frozen
rank, SIGUSR1 to srun tasks, a full disk) are in the soak: `sudo python bench/netsoak.py`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        return False
    name = f"cbamprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return made


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not namespaces_work(), reason="needs root and ip netns")]


def test_a_node_killed_mid_epoch_stops_the_survivor_with_a_line_naming_it_and_a_resume_gives_each_epoch_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "soak.json"
    soak = subprocess.run([sys.executable, str(REPO / "bench" / "netsoak.py"), "--only", "a1", "--quick",
                           "--stall-timeout", "10", "--out", str(out)], capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())["results"]["a1"]
    assert soak.returncode == 0 and result["ok"], soak.stdout + soak.stderr
    assert result["stop_s"]["node1"] < 10  # a peer that died is named within seconds, not at the stall timeout
    assert result["exit"] == {"node1": 1}
    line = result["line"]
    assert "(pid" in line and "on node2, node 1)" in line and "is gone" in line, line
    assert line.removeprefix("cbam-tui: error: ") in result["run_says"]
    assert result["resume_exit"] == {"node1": 0} and result["epochs"] == [1, 2]
