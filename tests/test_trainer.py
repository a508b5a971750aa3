"""The Trainer on tiny synthetic data: events, control, checkpoints and exact resume."""

from __future__ import annotations

import csv
import gc
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from core.control import Control
from core.errors import CbamError, CheckpointError
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
    SystemSample,
    from_dict,
)
from core.plan import PlanOptions
from core.vocab import StopReason
from tests.conftest import tiny_config, train

FINISHED = StopReason.FINISHED


def test_a_full_run_emits_events_in_order_and_keeps_everything(tmp_path: Path) -> None:
    outcome, rec = train(tiny_config(tmp_path))
    assert outcome == FINISHED
    kinds = rec.kinds(skip=("loading", "progress", "iter_losses", "checkpoint_saved", "system"))
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("stage_started") == 3 and kinds.count("epoch_ended") == 3
    # 6 batches per epoch, logged every 2: three loss lines per epoch; then the test pass,
    # what it found per class and in the attention maps, and the epoch's record last.
    assert kinds[1:9] == [
        "stage_started", "batch_logged", "batch_logged", "batch_logged",
        "evaluating", "class_accuracy", "attention", "epoch_ended",
    ]
    losses = [v for e in rec.of(IterLosses) for v in e.losses]
    assert len(losses) == 18 and all(isinstance(v, float) for v in losses)
    steps = [e.first_step for e in rec.of(IterLosses)]
    assert steps == sorted(steps) and steps[0] == 1
    # A loss line is the mean of its batches, not the last batch's loss.
    first_line = rec.of(BatchLogged)[0]
    assert first_line.loss == pytest.approx(sum(losses[:2]) / 2, rel=1e-5)
    stages = rec.of(StageStarted)
    assert [s.stage for s in stages] == [1, 2, 3]
    assert stages[0].modules[0].name == "conv1" and stages[0].modules[0].trainable == "yes"
    assert stages[0].trainable_params < stages[1].trainable_params < stages[2].trainable_params == stages[2].total_params
    assert stages[2].row_trainable[0] == stages[2].total_params
    # The run directory: every persistent event, one row per epoch, both checkpoints.
    home = rec.run_dir
    lines = (home / "events.jsonl").read_text().splitlines()
    persisted = [e for e in rec.events if not e.transient and e.kind != "loading"]
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
            # Time itself is what is tested: the pause lasts half a second, and nothing trains in it.
            threading.Timer(0.5, lambda: (resumed_at.append(1), control.resume())).start()

    outcome, rec = train(tiny_config(tmp_path), react, control)
    assert outcome == FINISHED and resumed_at
    kinds = [e.kind for e in rec.events]
    p, r = kinds.index("paused"), kinds.index("resumed")
    # The machine's readings go on while paused (a sampler of its own); nothing else may come, not even progress.
    between = [e.kind for e in rec.events[p + 1 : r] if not isinstance(e, SystemSample)]
    assert p < r and between == []  # nothing trained while paused
    assert rec.of(Paused)[0].batch == 2 and rec.of(Resumed)[0].batch == 2


@pytest.fixture
def unfrozen_heap() -> Iterator[None]:
    """The heap as a process that never froze it has it (the test process froze what its
    tests share: tests/conftest.py); frozen again afterwards."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.freeze()


def freeze_counts_while_training(tmp_path: Path) -> list[int]:
    counts: list[int] = []

    def react(e) -> None:
        if isinstance(e, BatchLogged):
            counts.append(gc.get_freeze_count())

    outcome, _ = train(tiny_config(tmp_path), react)
    assert outcome == FINISHED and counts
    return counts


def test_what_was_built_before_training_is_kept_from_the_collector_while_it_trains(
    tmp_path: Path, unfrozen_heap: None
) -> None:
    built_before = [object() for _ in range(3)]  # alive when training starts, as the model and a dashboard are
    assert gc.get_freeze_count() == 0
    frozen_while_training = freeze_counts_while_training(tmp_path)
    assert built_before
    # Frozen: a full collection mid-run walks only what training made (bench/README.md).
    assert min(frozen_while_training) > 1000
    assert gc.get_freeze_count() == 0  # and released with the loop, for whatever the process does next


def test_a_process_that_froze_its_heap_itself_keeps_its_freeze_through_a_run(
    tmp_path: Path, unfrozen_heap: None
) -> None:
    mine = [object() for _ in range(3)]
    gc.freeze()
    try:
        before = gc.get_freeze_count()  # frozen objects that die leave it: it may only shrink
        counts = freeze_counts_while_training(tmp_path)
        assert before - 5000 < min(counts) and max(counts) <= before  # neither undone nor widened mid-run
        assert before - 5000 < gc.get_freeze_count() <= before and mine  # nor at its end
    finally:
        gc.unfreeze()


def test_next_stage_ends_the_epoch_early_and_on_the_last_stage_ends_the_run(tmp_path: Path) -> None:
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.batch == 2 and e.stage in (1, 3):
            control.next_stage()

    outcome, rec = train(tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs="2,1,2")), react, control)
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

    outcome, rec = train(tiny_config(tmp_path), react, control)
    saved = [e for e in rec.of(CheckpointSaved) if e.reason == "save"]
    assert outcome == FINISHED and len(saved) == 1
    assert (saved[0].stage, saved[0].epoch, saved[0].batch) == (1, 1, 4)


def test_a_failure_names_the_checkpoint_it_wrote_even_when_its_report_fails(tmp_path: Path) -> None:
    """A consumer that raises (a closed stdout did) fails the run; the failure checkpoint is
    written before its report, which raises again: the run_failed event still names it (it said null)."""

    def react(e) -> None:
        if (isinstance(e, BatchLogged) and e.global_step == 8) or (
                isinstance(e, CheckpointSaved) and e.reason == "failure"):
            raise RuntimeError("the reader left")

    with pytest.raises(RuntimeError):
        train(tiny_config(tmp_path), react)
    (events,) = (tmp_path / "runs").glob("*/events.jsonl")
    written = [json.loads(line) for line in events.read_text().splitlines()]
    saved = [e for e in written if e["event"] == "checkpoint_saved" and e["reason"] == "failure"]
    assert len(saved) == 1 and (saved[0]["epoch"], saved[0]["batch"]) == (2, 2)
    assert written[-1]["event"] == "run_failed" and written[-1]["checkpoint"] == saved[0]["path"]


def test_a_stage_with_zero_epochs_is_skipped(tmp_path: Path) -> None:
    outcome, rec = train(tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs="1,0,1")))
    assert outcome == FINISHED
    assert [(e.stage, e.reason) for e in rec.of(StageSkipped)] == [(2, "0 epochs")]
    assert [s.stage for s in rec.of(StageStarted)] == [1, 3]


def test_a_last_batch_of_one_image_joins_the_one_before(tmp_path: Path) -> None:
    # 17 images in batches of 8: 8 + 9, never a batch of 1 (BatchNorm in train mode needs 2).
    outcome, rec = train(tiny_config(tmp_path, limit_train=17, plan_opts=PlanOptions(stage_epochs="1,0,1")))
    assert outcome == FINISHED
    assert {e.batches_done for e in rec.of(EpochEnded)} == {2}
    assert rec.of(BatchLogged)[-1].batches == 2


def final_weights(home: Path) -> dict[str, torch.Tensor]:
    return torch.load(home / "checkpoints" / "last.pt", weights_only=True)["model"]


# Bit-for-bit equal weights need the same reduction order in every run, so the same number
# of threads: chosen, it follows the load at each start (one core busy elsewhere: one thread).
EXACT_THREADS = 1
# The resume tests' runs have 3 batches of 8 per epoch: each stop point below (mid-epoch, an
# epoch's last batch, a stage's start) exists in them, at half the compute of 6.
RESUME_IMAGES = 24
RESUME_BATCHES = 3


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[PlanOptions], Path]:
    """A whole run of a plan, made once per test process and shared by the tests that resume it."""
    made: dict[PlanOptions, Path] = {}

    def whole(plan: PlanOptions) -> Path:
        if plan not in made:
            outcome, full = train(tiny_config(tmp_path_factory.mktemp("whole"), limit_train=RESUME_IMAGES,
                                              plan_opts=plan, threads=EXACT_THREADS))
            assert outcome == FINISHED
            made[plan] = full.run_dir
        return made[plan]

    return whole


def stop_and_resume(tmp_path: Path, plan: PlanOptions, stop_at: tuple[int, int, int]) -> Path:
    """The run stopped at (stage, epoch, batch), then resumed to its end; its directory."""
    control = Control()
    stage, epoch, batch = stop_at

    def react(e) -> None:
        if batch and isinstance(e, BatchLogged) and (e.stage, e.epoch) == (stage, epoch) and e.batch >= batch:
            control.stop(StopReason.QUIT)
        if not batch and isinstance(e, StageStarted) and e.stage == stage:
            control.stop(StopReason.QUIT)

    outcome, first = train(tiny_config(tmp_path / "b", limit_train=RESUME_IMAGES, plan_opts=plan, threads=EXACT_THREADS),
                           react, control)
    assert outcome == StopReason.QUIT
    stopped = first.of(RunStopped)[0]
    assert stopped.checkpoint is not None and (stopped.stage, stopped.epoch) == (stage, epoch)
    position = torch.load(stopped.checkpoint, weights_only=True)["position"]
    assert position["trained"] == (batch == RESUME_BATCHES)  # a stop during evaluation leaves only the evaluation
    outcome, second = train(tiny_config(tmp_path / "b", resume=str(first.run_dir), threads=EXACT_THREADS))
    assert outcome == FINISHED and second.events[0].kind == "loading" and second.of(RunFinished)
    return first.run_dir


# (stage, run epoch, batch): mid-epoch in a later stage, at a stage's start, at the end of
# an epoch (the stop lands during its evaluation), and during the last evaluation of a stage.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "stop_at", [(2, 3, 2), pytest.param((1, 1, 0), marks=SLOW), pytest.param((2, 2, 3), marks=SLOW),
                pytest.param((1, 1, 3), marks=SLOW)],
)
def test_stop_then_resume_gives_the_same_final_weights(
    tmp_path: Path, uninterrupted: Callable[[PlanOptions], Path], stop_at: tuple[int, int, int]
) -> None:
    plan = PlanOptions(stage_epochs="1,2,1", lrs="1e-2,1e-3,1e-3")
    a, b = uninterrupted(plan), stop_and_resume(tmp_path, plan, stop_at)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The resumed run appended to the same directory: one metrics row per epoch, as uninterrupted.
    rows = [(r["epoch"], r["train_loss"], r["test_acc"]) for r in csv.DictReader((b / "metrics.csv").open())]
    assert rows == [(r["epoch"], r["train_loss"], r["test_acc"]) for r in csv.DictReader((a / "metrics.csv").open())]


@pytest.mark.parametrize("stop_batch", [5, 6])  # mid-epoch; on its last batch (the stop lands in its test pass)
def test_an_epoch_resumed_part_way_reports_its_whole_time_and_rate(tmp_path: Path, stop_batch: int) -> None:
    import time

    from core.checkpoint import read
    from core.runs import inspect_run

    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.batch == 1:
            time.sleep(0.5)  # inside the step loop: training time of the first process
        if isinstance(e, BatchLogged) and e.batch == stop_batch:
            control.stop(StopReason.QUIT)

    plan = PlanOptions(stage_epochs="1,0,0", lrs="1e-2,1e-3,1e-3")
    _, first = train(tiny_config(tmp_path, log_every=1, plan_opts=plan), react, control)
    before = read(first.run_dir / "checkpoints" / "last.pt").sums
    assert before.seen == 8 * stop_batch and before.seconds is not None and before.seconds >= 0.5
    _, second = train(tiny_config(tmp_path, resume=str(first.run_dir)))
    (epoch,) = second.of(EpochEnded)
    assert epoch.seconds > before.seconds  # the first process's part, and the rest
    assert 0 < epoch.images_per_second < 48 / before.seconds  # all 48 images over all their training time
    row = next(csv.DictReader((first.run_dir / "metrics.csv").open()))
    assert (float(row["seconds"]), float(row["images_per_second"])) == (
        pytest.approx(epoch.seconds, abs=1e-3), pytest.approx(epoch.images_per_second, abs=0.1))
    # The run's time is both processes', as `runs` lists it (not the last one's alone).
    (finished,) = second.of(RunFinished)
    assert finished.seconds > epoch.seconds and finished.seconds == pytest.approx(
        inspect_run(first.run_dir).seconds, abs=0.1)


@pytest.mark.parametrize("moments", ["keep", pytest.param("fresh", marks=SLOW)])
def test_the_moment_policy_at_a_stage_switch_survives_a_resume(
    tmp_path: Path, uninterrupted: Callable[[PlanOptions], Path], moments: str
) -> None:
    # Stopped right as stage 2 starts: the checkpoint holds stage 1's optimizer, whose
    # moments the resumed run must hand on (keep) or drop (fresh) exactly as an uninterrupted one.
    plan = PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3", moments=moments)
    a, b = uninterrupted(plan), stop_and_resume(tmp_path, plan, (2, 2, 0))
    opt_a = torch.load(a / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    opt_b = torch.load(b / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    steps = {float(s["step"]) for s in opt_a["state"].values()}
    n = RESUME_BATCHES
    assert steps == ({2.0 * n, 1.0 * n} if moments == "keep" else {1.0 * n})  # new modules trained in both stages
    assert all(torch.equal(opt_a["state"][k]["exp_avg"], opt_b["state"][k]["exp_avg"]) for k in opt_a["state"])
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@SLOW
def test_the_gradient_scaler_is_checkpointed_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 needs CUDA; its GradScaler's state (scale, growth tracker) must come back on resume.
    Here a scaler whose state moves with every step stands in for the real one."""

    class MovingScaler(torch.amp.GradScaler):
        def __init__(self, device: str, enabled: bool = True) -> None:
            super().__init__(device, enabled=False)
            self.n = 0

        def update(self, new_scale=None) -> None:
            self.n += 1

        def state_dict(self) -> dict:
            return {"n": self.n}

        def load_state_dict(self, state: dict) -> None:
            self.n = state["n"]

    monkeypatch.setattr(torch.amp, "GradScaler", MovingScaler)
    plan = PlanOptions(stage_epochs="1,1,1", lrs="1e-2,1e-3,1e-3")
    outcome, whole = train(tiny_config(tmp_path / "a", limit_train=RESUME_IMAGES, plan_opts=plan))  # its own scaler
    assert outcome == FINISHED
    a, b = whole.run_dir, stop_and_resume(tmp_path, plan, (2, 2, 2))
    sa = torch.load(a / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    sb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert sa == sb == {"n": 3 * RESUME_BATCHES}


def test_resume_refuses_a_finished_run_without_writing_to_it(tmp_path: Path) -> None:
    _, rec = train(tiny_config(tmp_path, limit_train=16))  # a finished run: 2 batches an epoch are enough
    home = rec.run_dir
    before = (home / "events.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="already finished"):
        train(tiny_config(tmp_path, resume=str(home)))
    assert (home / "events.jsonl").read_bytes() == before
    from core.checkpoint import serialize

    ckpt = torch.load(home / "checkpoints" / "last.pt", weights_only=True)
    ckpt.pop("digest")
    ckpt["position"] = {"stage": 2, "epoch": 3, "batch": 0, "trained": False}  # not finished
    for change, match in [({"arch": "vgg16"}, "architecture 'vgg16'"), ({"classes": ["a", "b"]}, "2 classes")]:
        (tmp_path / "other.pt").write_bytes(serialize({**ckpt, **change}))
        with pytest.raises(CheckpointError, match=match):
            train(tiny_config(tmp_path, resume=str(tmp_path / "other.pt")))
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cbam-tui checkpoint"):
        train(tiny_config(tmp_path, resume=str(tmp_path / "plain.pt")))
    with pytest.raises(CheckpointError, match="no such run"):
        train(tiny_config(tmp_path, resume=str(tmp_path / "missing")))


def _nested(depth: int) -> list:
    deep: list = []
    for _ in range(depth):
        deep = [deep]
    return deep


@pytest.mark.parametrize(
    ("forge", "match"),
    [
        (lambda c: c["position"].update(epoch=10**6), "its position's epoch 1000000 is not one of the plan's"),
        (lambda c: c["position"].update(batch=10**6), "its position's batch 1000000 lies beyond an epoch"),
        (lambda c: c.update(best_epoch=-7), "its best epoch is not one it trained"),
        (lambda c: c.update(optimizer_stage=99), "its optimizer's stage 99 is not one the run has reached"),
        (lambda c: c.update(optimizer_stage=0, optimizer={"state": {}, "param_groups": []}),
         "its optimizer does not hold stage 1's groups"),
        (lambda c: c.update(rng=torch.zeros(3, dtype=torch.uint8)), "its random state is not torch's"),
        (lambda c: c["sums"].update(correct=10**30), "its running sums are malformed"),
        (lambda c: c.update(history=_nested(5000)), "nested too deeply"),
    ],
)
def test_a_checkpoint_whose_digest_matches_but_whose_fields_no_run_saved_is_one_sentence(
    tmp_path: Path, stopped_copy: Callable[[Path], Path], forge: Callable[[dict], object], match: str
) -> None:
    """The digest proves the bytes whole, not who wrote them: a forged field is refused
    before anything is written, never an internal error or a run that trains nonsense."""
    from core.checkpoint import serialize

    ckpt = torch.load(stopped_copy(tmp_path) / "checkpoints" / "last.pt", weights_only=True)
    ckpt.pop("digest")
    forge(ckpt)
    forged = tmp_path / "forged.pt"
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the forger's digest reaches as deep as the forgery
    try:
        forged.write_bytes(serialize(ckpt))
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=re.escape(match)):
        train(tiny_config(tmp_path / "new", resume=str(forged)))
    assert not (tmp_path / "new").exists()


def test_a_flipped_byte_in_a_checkpoint_is_one_sentence(tmp_path: Path) -> None:
    control = Control()
    _, rec = train(tiny_config(tmp_path), lambda e: control.stop(StopReason.QUIT) if e.kind == "epoch_ended" else None,
                   control)
    last = rec.run_dir / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)  # garbled inside the tensor data
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its digest") as info:
        train(tiny_config(tmp_path, resume=str(rec.run_dir)))
    assert "\n" not in str(info.value)
    from core.checkpoint import read_config

    with pytest.raises(CheckpointError, match="does not match its digest"):  # --resume's config read checks it too
        read_config(last)


# Every key a checkpoint has had in format version 2, as the writer spelled them field by
# field before one function owned the format: a checkpoint written by any version since
# must still resume, so the writer may not drop or rename one.
FORMAT_KEYS = {
    "format", "version", "arch", "model", "optimizer", "optimizer_stage", "scaler", "config", "classes", "position",
    "sums", "best_acc", "best_epoch", "global_step", "rng", "history", "base_lrs", "world_size", "global_batch",
    "digest",
}


def test_checkpoints_keep_their_format_and_older_ones_without_the_later_keys_still_resume(tmp_path: Path) -> None:
    from core.checkpoint import read, read_config, serialize

    control = Control()
    plan = PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")

    def stop_mid_epoch(e) -> None:
        if isinstance(e, BatchLogged) and e.stage == 2 and e.batch >= 4:
            control.stop(StopReason.QUIT)

    _, first = train(tiny_config(tmp_path, plan_opts=plan), stop_mid_epoch, control)
    last = first.run_dir / "checkpoints" / "last.pt"
    raw = torch.load(last, weights_only=True)
    assert set(raw) == FORMAT_KEYS and (raw["format"], raw["version"], raw["arch"]) == ("cbam-tui", 2, "resnet18-cbam")
    assert raw["position"] == {"stage": 1, "epoch": 2, "batch": 4, "trained": False, "offset": 0}
    assert set(raw["sums"]) == {"loss_sum", "correct", "seen", "seconds"} and raw["world_size"] == 1
    assert raw["global_batch"] == 8
    saved = read(last)
    assert read_config(last) == saved.config and saved.position.batch == 4 and saved.sums.seen == 32

    # The first checkpoints of version 2 had no scaler, base rates, offset, world size or global batch.
    older = {k: v for k, v in raw.items() if k not in ("digest", "scaler", "base_lrs", "world_size", "global_batch")}
    older["position"] = {k: v for k, v in raw["position"].items() if k != "offset"}
    older["sums"] = {k: v for k, v in raw["sums"].items() if k != "seconds"}  # nor the epoch's time so far
    last.write_bytes(serialize(older))
    outcome, second = train(tiny_config(tmp_path, resume=str(first.run_dir)))
    assert outcome == FINISHED
    assert second.of(EpochEnded)[0].images_per_second > 0  # of the part this process timed
    started = second.events[[e.kind for e in second.events].index("run_started")]
    assert (started.start_stage, started.start_epoch, started.start_batch) == (2, 2, 4)
    assert [b.batch for b in second.of(BatchLogged)] == [6]  # the epoch's last two batches, then its end


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
    outcome, rec = train(tiny_config(tmp_path))
    assert outcome == StopReason.NONFINITE and outcome.exit_code == 1
    stopped = rec.of(RunStopped)[0]
    # Seen at the next log point (batch 4), or at batch 3 itself when the live curve's loss
    # read (once a second) lands on it, as it does on every batch of a slow, loaded machine.
    assert re.search(r"non-finite loss at epoch 2, batch [34]\b", stopped.detail), stopped.detail
    assert stopped.checkpoint is not None and stopped.checkpoint.endswith("last.pt")
    kept = torch.load(stopped.checkpoint, weights_only=True)
    assert kept["position"]["epoch"] == 2 and kept["position"]["batch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_a_failure_before_the_run_starts_leaves_no_run_directory(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "images" / split).mkdir(parents=True)
    with pytest.raises(CbamError, match="no class folders"):
        train(tiny_config(tmp_path, dataset="imagefolder", data_dir=str(tmp_path / "images")))
    assert not (tmp_path / "runs").exists()


def test_out_of_memory_suggests_a_smaller_batch_and_keeps_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.train as train_mod

    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def oom(*args, **kwargs):
        if kwargs.get("reduction") is None:
            calls["n"] += 1
            if calls["n"] == 9:  # in epoch 2, after epoch 1's checkpoint
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod.F, "cross_entropy", oom)
    from tests.conftest import Recorder

    rec = Recorder()
    from core.train import Trainer

    with pytest.raises(CbamError, match="try a smaller --batch-size"):
        Trainer(tiny_config(tmp_path), rec).run()
    failed = rec.events[-1]
    assert failed.kind == "run_failed" and failed.checkpoint is not None
    assert torch.load(failed.checkpoint, weights_only=True)["position"]["epoch"] == 2
    home = Path(failed.checkpoint).parents[1]
    assert json.loads((home / "events.jsonl").read_text().splitlines()[-1])["event"] == "run_failed"
