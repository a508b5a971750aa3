"""The benchmark scripts cannot rot: the GPU check's and the transfer study's dry runs (tiny
sizes, whatever device there is) run here."""

from __future__ import annotations

import json
import os
import re
import shutil
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
    for heading in ("== 1a.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.", "== done"):
        assert heading in out
    # What the machine is, from the one interpreter that also picks the device (kept off the screen).
    assert re.search(r"^== machine\npython [\d.]+, torch \S+, cuda \S+\nno CUDA device: .*\n== 1a\.", out, re.M), out
    rows = {name: re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M) for name in
            ("seed loop", "cbam-tui default", "cbam-tui fp32")}
    assert all(rows.values()), out  # every contender measured in every stage
    assert all(float(x) > 0 for m in rows.values() for x in m.groups())
    assert re.search(r"one epoch of 64 images, batch 16", out)
    assert "0 elsewhere" in out
    # One graph per stage: flipping requires_grad between stages recompiles once, not in a storm.
    assert "graphs compiled over the three stages: 3 " in out


def test_the_transfer_study_runs_every_plan_in_its_dry_mode_and_writes_nowhere_near_the_study() -> None:
    recorded = {p: p.read_bytes() for p in (ROOT / "bench").glob("transfer-results*")}
    done = subprocess.run(
        [sys.executable, "bench/transfer.py", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p: p.read_bytes() for p in (ROOT / "bench").glob("transfer-results*")} == recorded  # overwritten before
    found = re.search(r"^results: (\S+) and (\S+)$", done.stdout, re.M)
    assert found, done.stdout[-2000:]
    out = Path(found[1])
    try:
        assert ROOT not in out.parents  # a temporary directory of its own
        rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith("| plan")]
        assert len(rows) == 9 and any(r.startswith("| --preset seed |") for r in rows)
        raw = json.loads(Path(found[2]).read_text())
        for plan in raw["plans"]:
            (result,) = plan["results"]  # one seed in a dry run
            assert 0 <= result["final"] <= 100 and result["after_stage"], plan
        staged = {p["name"]: p["results"][0] for p in raw["plans"]}
        assert staged["default, --precision fp32"]["precision"] == "fp32"
    finally:
        shutil.rmtree(out.parent)


def test_a_dry_run_refuses_to_write_where_the_study_lives() -> None:
    recorded = {p: p.read_bytes() for p in (ROOT / "bench").glob("transfer-results*")}
    done = subprocess.run([sys.executable, "bench/transfer.py", "--dry-run", "--out", "bench/transfer-results.md"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--dry-run writes nowhere the recorded results live" in done.stderr
    assert {p: p.read_bytes() for p in (ROOT / "bench").glob("transfer-results*")} == recorded


def test_the_stand_in_is_the_same_for_a_seed_and_never_saved_with_non_finite_weights(tmp_path: Path, monkeypatch) -> None:
    import torch

    from bench.train_step import fake_image_folder
    from bench.transfer import SOURCE, TARGET, pretrain

    data = fake_image_folder(tmp_path / "data", 4, 8, SOURCE + TARGET)
    for name in ("a.pth", "b.pth"):
        torch.manual_seed(int.from_bytes(name.encode(), "big"))  # whatever the global generator holds
        pretrain(data, tmp_path / name, 8, 1, None, tmp_path / "cache", "cpu")
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pth", "b.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # a dry run that fails can be run again, exactly
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(SystemExit, match=r"the stand-in's .* is not finite after epoch 1 \(\w+, seed 0\)"):
        pretrain(data, tmp_path / "nan.pth", 8, 1, None, tmp_path / "cache", "cpu")
    assert not (tmp_path / "nan.pth").exists()


def test_the_stand_in_is_saved_as_torchvisions_resnet18_file_and_loads_the_same_way(tmp_path: Path) -> None:
    import torch
    import torchvision

    from bench.train_step import fake_image_folder
    from bench.transfer import SOURCE, TARGET, pretrain
    from core.model import build_model

    data = fake_image_folder(tmp_path / "data", 4, 8, SOURCE + TARGET)
    pretrain(data, tmp_path / "standin.pth", 8, 1, None, tmp_path / "cache", "cpu")
    saved = torch.load(tmp_path / "standin.pth", weights_only=True)
    real = torchvision.models.resnet18(weights=None).state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in real.items()}
    model = build_model(5, str(tmp_path / "standin.pth"))  # the path --weights PATH takes
    assert torch.equal(model.state_dict()["backbone.layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
