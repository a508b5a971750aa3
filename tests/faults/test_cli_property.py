"""Property test: whatever a user types, the CLI answers with one line or starts a run; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tui.launch
from tests.conftest import cli
from tests.helpers import run_flags

VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "3", "1e-3", "nan", "inf", "-5.5", "abc", "1,2", "1,2,3", "0,0,0",
                     "a,b,c", "/nonexistent", "/", ".", "..", "cifar10", "synthetic", "imagefolder", "seed", "none",
                     "imagenet", "cpu", "cuda:9", "train", "eval", "keep", "fresh", "fp16", "bf16", "x" * 300, "1,,2",
                     " ", "1e20", "9" * 30]),
    st.text(max_size=12),
    st.integers(-10**6, 10**6).map(str),
)
FLAGS = [*run_flags(), "--bogus", "-h"]
SWITCHES = {"--download", "--no-download", "--compile", "--no-compile", "--headless", "--detach", "--group-control",
            "--bogus", "-h", "--help"}


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    args = [draw(st.sampled_from(["run", "demo", "summary", "runs", "watch", "ctl", "nope"]))]
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.sampled_from(FLAGS))
        args.append(flag)
        if flag not in SWITCHES:
            args.append(draw(VALUES))
    return args


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=argv())
def test_no_input_produces_a_traceback(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    # A valid command line would start training: record it instead (the run itself is tested elsewhere).
    for entry in ("headless", "dashboard"):
        monkeypatch.setattr(tui.launch, entry, lambda config: started.append(config) or 0)
    monkeypatch.setattr(tui.launch, "detach", lambda config, home: started.append(config) or 0)
    # --nproc-per-node N launches N training processes: as much a start as the others.
    monkeypatch.setattr(tui.launch, "processes", lambda config, home, show_dashboard, rundir=None: started.append(config) or 0)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *args)
    assert "Traceback" not in out + err
    if code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cbam-tui: error: "), (args, err)
    elif "-h" not in args and args[0] in ("run", "demo"):
        assert started, args
