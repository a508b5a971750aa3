"""The Trainer on tiny synthetic data: events, control, checkpoints and exact resume."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest
import torch

from core.control import Control
from core.errors import CbamError, CheckpointError, RunDirError
from core.events import (
    BatchLogged,
    CheckpointSaved,
    EpochEnded,
    IterLosses,
    Paused,
    Resumed,
    RunFinished,
    RunStopped,
    StageSkipped,
    StageStarted,
    from_dict,
)
from core.plan import PlanOptions
from core.run_dir import RunDir
from core.train import FINISHED, STOPPED, Trainer
from tests.conftest import Recorder, tiny_config


def run(config, react=None, control=None):
    control = control or Control()
    rec = Recorder(react)
    outcome = Trainer(config, rec, control).run()
    return outcome, rec


def run_dir_of(rec: Recorder) -> Path:
    return Path(rec.events[0].run_dir if hasattr(rec.events[0], "run_dir") else next(e.run_dir for e in rec.events if hasattr(e, "run_dir")))


def test_a_full_run_emits_events_in_order_and_keeps_everything(tmp_path: Path) -> None:
    outcome, rec = run(tiny_config(tmp_path))
    assert outcome == FINISHED
    kinds = rec.kinds()
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("stage_started") == 3 and kinds.count("epoch_ended") == 3
    # 6 batches per epoch, logged every 2: three loss lines per epoch.
    assert kinds[1:6] == ["stage_started", "batch_logged", "batch_logged", "batch_logged", "epoch_ended"]
    losses = [v for e in rec.of(IterLosses) for v in e.losses]
    assert len(losses) == 18 and all(isinstance(v, float) for v in losses)
    steps = [e.first_step for e in rec.of(IterLosses)]
    assert steps == sorted(steps) and steps[0] == 1
    stages = rec.of(StageStarted)
    assert [s.stage for s in stages] == [1, 2, 3]
    assert stages[0].modules[0].name == "conv1" and stages[0].modules[0].trainable == "yes"
    assert stages[0].trainable_params < stages[1].trainable_params < stages[2].trainable_params == stages[2].total_params
    # The run directory: every persistent event, one row per epoch, both checkpoints.
    home = run_dir_of(rec)
    lines = (home / "events.jsonl").read_text().splitlines()
    persisted = [e for e in rec.events if not e.transient]
    assert [json.loads(line)["event"] for line in lines] == [e.kind for e in persisted]
    assert from_dict(json.loads(lines[-1])) == persisted[-1]
    rows = list(csv.DictReader((home / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["test_acc"]) == pytest.approx(rec.of(EpochEnded)[2].test_acc, abs=1e-3)
    assert json.loads((home / "config.json").read_text())["plan"]["stages"][0]["epochs"] == 1
    assert (home / "checkpoints" / "last.pt").is_file() and (home / "checkpoints" / "best.pt").is_file()
    assert not (home / "run.pid").exists()
    finished = rec.of(RunFinished)[0]
    assert finished.best_acc == max(e.test_acc for e in rec.of(EpochEnded))


def test_pause_stops_training_until_resume(tmp_path: Path) -> None:
    control = Control()
    resumed_at: list[int] = []

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.global_step == 2:
            control.pause()
        if isinstance(e, Paused):
            threading.Timer(0.5, lambda: (resumed_at.append(1), control.resume())).start()

    outcome, rec = run(tiny_config(tmp_path), react, control)
    assert outcome == FINISHED and resumed_at
    kinds = [e.kind for e in rec.events]
    p, r = kinds.index("paused"), kinds.index("resumed")
    assert p < r and set(kinds[p + 1 : r]) == set()  # nothing trained while paused
    assert rec.of(Paused)[0].batch == 2 and rec.of(Resumed)[0].batch == 2


def test_next_stage_ends_the_epoch_early_and_on_the_last_stage_ends_the_run(tmp_path: Path) -> None:
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.batch == 2 and e.stage in (1, 3):
            control.next_stage()

    outcome, rec = run(tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs="2,1,2")), react, control)
    assert outcome == FINISHED
    ended = rec.of(EpochEnded)
    # Stage 1 (2 epochs) is cut after 2 batches of epoch 1; epoch 2 never runs.
    assert [(e.stage, e.epoch, e.batches_done) for e in ended] == [(1, 1, 2), (2, 3, 6), (3, 4, 2)]
    assert [s.first_epoch for s in rec.of(StageStarted)] == [1, 3, 4]
    assert rec.kinds()[-1] == "run_finished"


def test_save_now_writes_a_mid_epoch_checkpoint(tmp_path: Path) -> None:
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.global_step == 4:
            control.save()

    outcome, rec = run(tiny_config(tmp_path), react, control)
    saved = [e for e in rec.of(CheckpointSaved) if e.reason == "save"]
    assert outcome == FINISHED and len(saved) == 1
    assert (saved[0].stage, saved[0].epoch, saved[0].batch) == (1, 1, 4)


def test_a_stage_with_zero_epochs_is_skipped(tmp_path: Path) -> None:
    outcome, rec = run(tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs="1,0,1")))
    assert outcome == FINISHED
    assert [(e.stage, e.reason) for e in rec.of(StageSkipped)] == [(2, "0 epochs")]
    assert [s.stage for s in rec.of(StageStarted)] == [1, 3]


def final_weights(home: Path) -> dict[str, torch.Tensor]:
    return torch.load(home / "checkpoints" / "last.pt", weights_only=True)["model"]


# (stage, run epoch, batch): mid-epoch in a later stage, at a stage's start, at the end of
# an epoch (the stop lands during its evaluation), and during the last evaluation of a stage.
@pytest.mark.parametrize("stop_at", [(2, 3, 3), (1, 1, 0), (2, 2, 6), (1, 1, 6)])
def test_stop_then_resume_gives_the_same_final_weights(tmp_path: Path, stop_at: tuple[int, int, int]) -> None:
    plan = PlanOptions(stage_epochs="1,2,1", lrs="1e-2,1e-3,1e-3")
    outcome, full = run(tiny_config(tmp_path / "a", plan_opts=plan))
    assert outcome == FINISHED

    control = Control()
    stage, epoch, batch = stop_at

    def react(e) -> None:
        if batch and isinstance(e, BatchLogged) and (e.stage, e.epoch) == (stage, epoch) and e.batch >= batch:
            control.stop("test")
        if not batch and isinstance(e, StageStarted) and e.stage == stage:
            control.stop("test")

    outcome, first = run(tiny_config(tmp_path / "b", plan_opts=plan), react, control)
    assert outcome == STOPPED
    stopped = first.of(RunStopped)[0]
    assert stopped.checkpoint is not None and (stopped.stage, stopped.epoch) == (stage, epoch)
    position = torch.load(stopped.checkpoint, weights_only=True)["position"]
    assert position["trained"] == (batch == 6)  # a stop during evaluation leaves only the evaluation
    home = run_dir_of(first)
    outcome, second = run(tiny_config(tmp_path / "b", resume=str(home)))
    assert outcome == FINISHED
    assert second.events[0].kind == "loading" and second.of(RunFinished)
    a, b = final_weights(run_dir_of(full)), final_weights(home)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The resumed run appended to the same directory: one metrics row per epoch, as uninterrupted.
    rows = list(csv.DictReader((home / "metrics.csv").open()))
    full_rows = list(csv.DictReader((run_dir_of(full) / "metrics.csv").open()))
    assert [(r["epoch"], r["train_loss"], r["test_acc"]) for r in rows] == [
        (r["epoch"], r["train_loss"], r["test_acc"]) for r in full_rows
    ]


def test_resume_refuses_a_finished_run_and_foreign_checkpoints(tmp_path: Path) -> None:
    _, rec = run(tiny_config(tmp_path))
    home = run_dir_of(rec)
    with pytest.raises(CheckpointError, match="already finished"):
        run(tiny_config(tmp_path, resume=str(home)))
    ckpt = torch.load(home / "checkpoints" / "last.pt", weights_only=True)
    ckpt["arch"] = "vgg16"
    torch.save(ckpt, tmp_path / "other-arch.pt")
    with pytest.raises(CheckpointError, match="architecture 'vgg16'"):
        run(tiny_config(tmp_path, resume=str(tmp_path / "other-arch.pt")))
    ckpt["arch"] = "resnet18-cbam"
    ckpt["classes"] = ["a", "b"]
    torch.save(ckpt, tmp_path / "other-classes.pt")
    with pytest.raises(CheckpointError, match="2 classes"):
        run(tiny_config(tmp_path, resume=str(tmp_path / "other-classes.pt")))
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cbam-tui checkpoint"):
        run(tiny_config(tmp_path, resume=str(tmp_path / "plain.pt")))
    with pytest.raises(CheckpointError, match="no such run"):
        run(tiny_config(tmp_path, resume=str(tmp_path / "missing")))


def test_a_non_finite_loss_stops_without_overwriting_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.train as train_mod

    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if kwargs.get("reduction") is None:
            calls["n"] += 1
            if calls["n"] > 8:  # epoch 2, batch 3
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    outcome, rec = run(tiny_config(tmp_path))
    assert outcome == STOPPED
    stopped = rec.of(RunStopped)[0]
    assert "non-finite loss at epoch 2, batch 4" in stopped.reason
    assert stopped.checkpoint is not None and stopped.checkpoint.endswith("last.pt")
    kept = torch.load(stopped.checkpoint, weights_only=True)
    assert kept["position"]["epoch"] == 2 and kept["position"]["batch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_failures_are_recorded_in_the_run_directory(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "images" / split).mkdir(parents=True)
    with pytest.raises(CbamError, match="no class folders"):
        run(tiny_config(tmp_path, dataset="imagefolder", data_dir=str(tmp_path / "images")))
    (home,) = (tmp_path / "runs").iterdir()
    last = json.loads((home / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "run_failed" and "no class folders" in last["message"]


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    first = RunDir.create(tmp_path, "x", explicit=tmp_path / "run")
    try:
        (tmp_path / "run" / "events.jsonl").write_text("")
        with pytest.raises(RunDirError, match="in use by another cbam-tui process"):
            RunDir.open(tmp_path / "run")
    finally:
        first.close()
    RunDir.open(tmp_path / "run").close()
