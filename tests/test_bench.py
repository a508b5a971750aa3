"""The GPU script cannot rot: its dry run (tiny sizes, whatever device there is) runs here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_end_to_end_in_its_dry_mode() -> None:
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    out = done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in ("== 1a.", "== 2.", "== 3.", "== 4.", "== done"):
        assert heading in out
    rows = {name: re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M) for name in
            ("seed loop", "cbam-tui default", "cbam-tui fp32")}
    assert all(rows.values()), out  # every contender measured in every stage
    assert all(float(x) > 0 for m in rows.values() for x in m.groups())
    assert re.search(r"one epoch of 64 images, batch 16", out)
    assert "0 elsewhere" in out
    # One graph per stage: flipping requires_grad between stages recompiles once, not in a storm.
    assert "graphs compiled over the three stages: 3 " in out
