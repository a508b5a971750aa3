"""Steering the learning itself, and many runs: live learning rates, longer or shorter
stages, schedules, --resume auto, pruning, compare and export."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.control import Control
from core.errors import ConfigError
from core.events import (
    BatchLogged,
    CommandRefused,
    CommandTaken,
    EpochEnded,
    Paused,
    PlanChanged,
    RatesChanged,
    Resumed,
    StageStarted,
)
from core.inbox import Inbox, send, wait_taken
from core.plan import PlanOptions
from core.schedule import factor
from core.state import describe
from core.vocab import Command, Status, StopReason
from tests.conftest import cli, tiny_config, train
from tests.helpers import STAMP_0, Seen, fake_run, stopped_run, until

SLOW = pytest.mark.slow


# --- schedules ------------------------------------------------------------------


def lr_by_step(rec) -> dict[int, tuple[float, ...]]:
    return {e.global_step: e.lrs for e in rec.of(BatchLogged)}


@pytest.mark.parametrize(
    ("schedule", "stop_at"),
    [
        ("warmup-cosine:20", 7),  # mid-epoch: the resume cuts the epoch where it stopped
        pytest.param("onecycle", 2, marks=SLOW),  # in the warm-up
        pytest.param("cosine", 13, marks=SLOW),  # after stage 2's first batch
    ],
)
def test_a_schedule_steps_every_batch_and_a_resume_gets_the_same_rates(tmp_path: Path, schedule: str, stop_at: int) -> None:
    plan = PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3", schedule=schedule)
    _, whole = train(tiny_config(tmp_path / "a", log_every=1, plan_opts=plan))
    rates = lr_by_step(whole)
    assert len(rates) == 18
    for step, lrs in rates.items():  # 12 batches in stage 1, 6 in stage 2: each at its rate times the shape
        peak, at, total = (1e-2, step - 1, 12) if step <= 12 else (1e-3, step - 13, 6)
        assert lrs == pytest.approx((peak * factor(schedule, at, total),) * len(lrs), rel=1e-12)
        assert all(0 <= lr <= peak for lr in lrs)
    control = Control()

    def react(e):
        return control.stop(StopReason.QUIT) if isinstance(e, BatchLogged) and e.global_step == stop_at else None

    _, first = train(tiny_config(tmp_path / "b", log_every=1, plan_opts=plan), react, control)
    _, second = train(tiny_config(tmp_path / "b", log_every=1, resume=str(first.run_dir)))
    assert max(lr_by_step(first)) == stop_at and min(lr_by_step(second)) == stop_at + 1
    assert {**lr_by_step(first), **lr_by_step(second)} == rates  # every rate, exactly


def test_schedule_errors_are_one_sentence(capsys) -> None:
    for bad, message in (("cosy", "unknown schedule 'cosy'"), ("cosine:3", "only warmup-cosine takes a number"),
                         ("warmup-cosine:150", "more than 0 and less than 100 percent")):
        code, _, err = cli(capsys, "demo", "--schedule", bad)
        assert code == 1 and message in err and err.count("\n") == 1


# --- live learning rates and stage lengths -----------------------------------------


def test_a_live_rate_change_takes_the_next_batch_survives_a_resume_and_ends_with_the_stage(tmp_path: Path) -> None:
    plan = PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3")
    run = tmp_path / "run"
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.global_step == 3:
            # From another process, as `cbam-tui ctl RUN lr x0.5` would.
            threading.Thread(target=lambda: wait_taken(run, send(run, Command("lr", "x0.5"), "ctl pid 7"), 10)).start()
        if isinstance(e, RatesChanged):
            control.stop(StopReason.QUIT)

    _, first = train(tiny_config(tmp_path, log_every=1, run_dir=str(run), plan_opts=plan), react, control)
    (change,) = first.of(RatesChanged)
    assert (change.origin, change.groups, change.before, change.after) == ("ctl pid 7", ("new",), (1e-2,), (5e-3,))
    assert first.of(CommandTaken)[0].value == "x0.5"
    _, second = train(tiny_config(tmp_path, log_every=1, resume=str(run)))
    rates = lr_by_step(second)
    stage1 = [lrs for step, lrs in rates.items() if step <= 12]
    assert stage1 and all(lrs == (5e-3,) for lrs in stage1)  # the resumed run keeps the edited rate
    assert all(lrs == (1e-3, 1e-3) for step, lrs in rates.items() if step > 12)  # the next stage: its plan
    resumed, nxt = second.of(StageStarted)  # each banner shows the rates in force, not the plan's
    assert resumed.groups == (("new", 5e-3),) and {m.lr for m in resumed.modules if m.group} == {5e-3}
    assert describe(resumed)[-1].startswith("    learning rates: new=5e-3 · ")
    assert nxt.groups == (("new", 1e-3), ("layer3-4", 1e-3))


def test_one_group_by_name_and_an_unknown_group(tmp_path: Path) -> None:
    control = Control()
    sent: list[int] = []

    def react(e) -> None:
        if isinstance(e, StageStarted) and e.stage == 2 and not sent:
            sent.append(1)
            control.apply(Command("lr", "2e-4", "layer3-4"))
            control.apply(Command("lr", "x2", "nope"))

    _, rec = train(tiny_config(tmp_path, log_every=1, plan_opts=PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")),
                   react, control)
    (named,) = rec.of(RatesChanged)
    assert named.groups == ("new", "layer3-4") and named.after == (1e-3, 2e-4)
    (unknown,) = rec.of(CommandRefused)  # refused, said, and nothing changed
    assert (unknown.verb, unknown.value, unknown.group) == ("lr", "x2", "nope")
    assert unknown.reason == "this stage has no group 'nope' (it has new, layer3-4)"
    assert rec.of(BatchLogged)[-1].lrs == (1e-3, 2e-4)


def test_a_stage_made_longer_then_shorter_and_the_plan_is_resumed(tmp_path: Path) -> None:
    control = Control()
    run = tmp_path / "run"

    def react(e) -> None:
        if isinstance(e, BatchLogged) and (e.epoch, e.batch) == (1, 2):
            control.apply(Command("epochs", "+2"))
        if isinstance(e, BatchLogged) and (e.epoch, e.batch) == (2, 2):
            control.apply(Command("epochs", "-5"))  # more than there is: the epoch in progress becomes the last
        if isinstance(e, EpochEnded) and e.epoch == 2:
            control.stop(StopReason.QUIT)

    _, rec = train(tiny_config(tmp_path, run_dir=str(run), plan_opts=PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")),
                   react, control)
    longer, shorter = rec.of(PlanChanged)
    assert (longer.epochs, longer.last_epoch, longer.total_epochs) == (3, 3, 4)
    assert (shorter.epochs, shorter.last_epoch, shorter.total_epochs, shorter.note) == (
        2, 2, 3, "the epoch in progress is now the stage's last")
    _, again = train(tiny_config(tmp_path, resume=str(run)))
    assert [e.epoch for e in again.of(EpochEnded)] == [3]  # stage 2 is epoch 3 of 3
    assert again.of(StageStarted)[0].stage == 2


@pytest.mark.parametrize("verb", ["epochs", "lr"])
def test_a_change_asked_on_a_stages_last_batch(tmp_path: Path, verb: str) -> None:
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and (e.epoch, e.batch) == (1, 6):  # the stage's last batch: its test pass next
            control.apply(Command("epochs", "+1") if verb == "epochs" else Command("lr", "x0.5"))

    plan = PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")
    _, rec = train(tiny_config(tmp_path, log_every=1, plan_opts=plan), react, control)
    if verb == "epochs":  # lengthens the stage in progress, as the key says
        (change,) = rec.of(PlanChanged)
        assert describe(change) == ["stage 1 +1 epoch: now has 2 epochs (epochs 1-2), the run 3 epochs"]
        assert [(e.stage, e.epoch, e.stage_epochs) for e in rec.of(EpochEnded)] == [(1, 1, 2), (1, 2, 2), (2, 3, 1)]
    else:  # a rate waits for the next batch, which is the next stage's (its log line says so)
        (change,) = rec.of(RatesChanged)
        assert change.stage == 2 and change.after == (5e-4, 5e-4)
        assert describe(change)[0].endswith("5e-4") and change.last_stage  # stage 3 has no epochs: no plan follows


def test_bad_values_for_ctl_are_one_sentence(capsys, tmp_path: Path) -> None:
    for args, message in ((("lr",), "lr needs a value"), (("lr", "fast"), "lr takes a rate"),
                          (("epochs", "3"), "epochs takes +N or -N"), (("pause", "3"), "pause takes no value"),
                          (("lr", "x2", "--group", "a b"), "--group names an optimizer group"),
                          (("pause", ""), "pause was given an empty value"),  # an unset shell variable
                          (("lr", "x0.5", "--group", ""), "--group was given an empty name"),  # never every group
                          (("epochs", "+1", "--group", "new"), "--group applies to lr alone, not to epochs"),
                          (("save", "--group", "new"), "--group applies to lr alone, not to save")):
        code, _, err = cli(capsys, "ctl", str(tmp_path), *args)
        assert code == 1 and message in err and err.count("\n") == 1, err
    with pytest.raises(ConfigError):
        Command("epochs", "-0")


async def test_the_l_dialog_and_the_epoch_keys_steer_a_live_run(tmp_path: Path) -> None:
    from tui.app import make_app
    from tui.links import InProcessLink
    from tui.widgets.dialogs import RatesScreen

    seen = Seen()
    config = tiny_config(tmp_path, limit_train=160, plan_opts=PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3"))
    app = make_app(InProcessLink(config, trainer=seen))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.stage is not None and app.state.status is Status.RUNNING)
        await pilot.press("p")
        await until(pilot, lambda: app.state.status is Status.PAUSED and seen.of(type(seen.events[0])) is not None)
        await pilot.press("l")
        assert isinstance(app.screen, RatesScreen)
        await pilot.press(*"fast", "enter")  # not a rate: said in the dialog, which stays
        assert isinstance(app.screen, RatesScreen)
        await pilot.press(*("backspace",) * 4, *"x0.1", "enter")
        await until(pilot, lambda: seen.of(RatesChanged))
        assert seen.of(RatesChanged)[0].after == pytest.approx((1e-3,))
        await pilot.press("plus")
        await until(pilot, lambda: seen.of(PlanChanged))
        assert seen.of(PlanChanged)[0].epochs == 3 and app.state.stage.last_epoch == 3
        await pilot.press("minus", "minus", "minus")  # 3 -> 2 -> 1, then the epoch in progress is the last
        await until(pilot, lambda: seen.of(CommandRefused))
        assert [e.epochs for e in seen.of(PlanChanged)] == [3, 2, 1] and app.state.refused == 1
        assert describe(seen.of(CommandRefused)[0]) == [
            "command epochs -1 from keys refused: stage 1 cannot end before the epoch in progress: epoch 1 is already "
            "its last (1 epoch)"]
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


# --- every way in checks a value the same way; ctl says what the run did -------------

BAD_VALUES = [
    ("lr", "nan", ""), ("lr", "inf", ""), ("lr", "0", ""), ("lr", "-3e-4", ""), ("lr", "1e308", ""),
    ("lr", "x0", ""), ("lr", "x1e-300", ""), ("lr", "x1e300", ""), ("lr", "1" * 41, ""),
    ("lr", "x2", "a b"), ("lr", "x2", "a,b"), ("lr", "x2", "größe"), ("lr", "x2", "\x1b]0;pwned\x07"),
    ("epochs", "+100001", ""), ("epochs", "+²", ""), ("epochs", "3", ""), ("pause", "now", ""),
]


@pytest.mark.parametrize(("verb", "value", "group"), BAD_VALUES)
def test_ctl_and_the_inbox_refuse_a_bad_value_with_the_same_sentence(
    tmp_path: Path, capsys, verb: str, value: str, group: str
) -> None:
    from core.rundir import RunDir

    with pytest.raises(ConfigError) as info:
        Command(verb, value, group)
    said = str(info.value)
    assert said.isprintable() and len(said) < 200, said  # one line, no control character, no echo of a long value
    code, _, err = cli(capsys, "ctl", str(tmp_path), verb, value, *(("--group", group) if group else ()))
    assert code == 1 and err == f"cbam-tui: error: {said}\n"
    # A command file from a sender that checks nothing: claimed, refused with the same sentence, never applied.
    run = RunDir.create_at(tmp_path / "run")
    try:
        name = f"{time.time_ns():020d}-{os.getpid()}-{verb}"
        (run.path / "control" / name).write_text(json.dumps({"origin": "a script", "value": value, "group": group}))
        refused: list[CommandRefused] = []
        Inbox(run, lambda c, o: pytest.fail(f"{c} was applied"), refused.append).poll(force=True)
        assert [(e.reason, e.command_id, e.origin) for e in refused] == [(said, name, "a script")]
    finally:
        run.close()


def test_ctl_never_echoes_a_long_value(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "ctl", str(tmp_path), "lr", "1" * 100_000)
    assert code == 1 and err.count("\n") == 1 and len(err) < 300 and "(of 100,000 characters)" in err


async def test_the_l_dialog_refuses_what_ctl_refuses_in_the_same_words() -> None:
    from textual.app import App
    from textual.widgets import Input, Static

    from tui.widgets.dialogs import RatesScreen

    chosen: list[Command | None] = []

    class Host(App[None]):
        def on_mount(self) -> None:
            self.push_screen(RatesScreen([("new", 1e-3)]), chosen.append)

    app = Host()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        for verb, value, group in BAD_VALUES:
            if verb != "lr":
                continue
            with pytest.raises(ConfigError) as info:
                Command(verb, value, group)
            app.screen.query_one(Input).value = f"{group} {value}" if group else value
            await pilot.press("enter")  # refused in the dialog, which stays, saying why
            assert isinstance(app.screen, RatesScreen) and not chosen
            if group and " " in group:
                continue  # the dialog splits on spaces: "a b x2" is three words, said otherwise
            assert str(app.screen.query_one("#rates-error", Static).render()) == str(info.value)
        app.screen.query_one(Input).value = "new x0.5"
        await pilot.press("enter")
        assert chosen == [Command("lr", "x0.5", "new")]


class LiveRun:
    """A real tiny run in a thread, paused at its first loss line (or by a non-finite loss)."""

    def __init__(self, tmp_path: Path, **overrides) -> None:
        from core.train import Trainer
        from tests.conftest import Recorder

        self.control = Control()
        self.paused = threading.Event()

        def react(e) -> None:
            if isinstance(e, BatchLogged) and e.global_step == 2:
                self.control.pause()
            if isinstance(e, Paused):
                self.paused.set()

        self.rec = Recorder(react)
        self.run = tmp_path / "run"
        plan = PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")
        config = tiny_config(tmp_path, run_dir=str(self.run), plan_opts=plan, **overrides)
        self.outcome: list[StopReason] = []
        self.thread = threading.Thread(target=lambda: self.outcome.append(Trainer(config, self.rec, self.control).run()))

    def __enter__(self) -> LiveRun:
        self.thread.start()
        assert self.paused.wait(120), "the run did not pause"
        return self

    def __exit__(self, *exc: object) -> None:
        self.control.stop(StopReason.QUIT)
        self.thread.join(120)
        assert not self.thread.is_alive()


def test_ctl_waits_for_what_the_run_did_and_exits_nonzero_with_its_reason(tmp_path: Path, capsys) -> None:
    from core.checkpoint import read
    from core.rundir import EventReader, open_run

    with LiveRun(tmp_path) as live:
        def ctl(*args: str) -> tuple[int, str, str]:
            return cli(capsys, "ctl", str(live.run), *args)

        code, out, err = ctl("epochs", "-1")  # stage 1 has one epoch, the one in progress: nothing to take away
        assert (code, out, err) == (1, "", "cbam-tui: error: the run refused epochs -1: stage 1 cannot end before "
                                           "the epoch in progress: epoch 1 is already its last (1 epoch)\n")
        code, _, err = ctl("lr", "x2", "--group", "nosuch")
        assert (code, err) == (1, "cbam-tui: error: the run refused lr x2 (group nosuch): this stage has no group "
                                  "'nosuch' (it has new)\n")
        code, out, _ = ctl("lr", "1e-12")
        assert code == 0 and out == f"cbam-tui: lr 1e-12 taken by {live.run}: learning rates (ctl pid {os.getpid()}): " \
                                     "new 1e-2 → 1e-12; the next stage starts from its plan\n"
        code, _, err = ctl("lr", "x0.5")  # 5e-13 would no longer be a rate a resume takes (x1e-300 made 0 for good)
        assert code == 1 and "it would take group 'new' to 5e-13, outside the rates a run takes (1e-12 to 10)" in err
        for _ in range(9):  # ten times +10000 made 110,007 epochs, which no resume took
            code, out, _ = ctl("epochs", "+10000")
            assert code == 0 and "taken by" in out
        assert "stage 1 +10,000 epochs: now has 90,001 epochs (epochs 1-90001), the run 90,002 epochs" in out
        code, _, err = ctl("epochs", "+10000")
        assert code == 1 and "stage 1 would have 100,001 epochs, and a stage has at most 100,000 epochs (it has " \
                             "90,001 epochs)" in err
        assert ctl("save")[0] == 0
    config = read(live.run / "checkpoints" / "last.pt").config  # what ctl changed, a resume takes
    assert config.plan.stages[0].epochs == 90_001
    with open_run(live.run) as run:
        events = [e for e, _ in EventReader(run).read_all()]
    refused = [e for e in events if isinstance(e, CommandRefused)]
    assert [e.verb for e in refused] == ["epochs", "lr", "lr", "epochs"] and all(e.command_id for e in refused)
    assert not [e for e in events if isinstance(e, PlanChanged) and e.change < 0]  # the refused -1 changed nothing


def test_ctl_resume_of_a_run_paused_by_a_non_finite_loss_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    import core.train as train_mod

    real = train_mod.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if kwargs.get("reduction") is None else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    with LiveRun(tmp_path, on_nonfinite="pause") as live:
        for verb in ("resume", "next"):
            code, _, err = cli(capsys, "ctl", str(live.run), verb)
            assert code == 1 and f"the run refused {verb}: the loss is no longer finite" in err
        assert cli(capsys, "ctl", str(live.run), "stop")[0] == 0
    assert live.outcome == [StopReason.NONFINITE]
    paused = live.rec.of(Paused)
    assert paused and not any(e.resumable for e in paused)  # the fact travels typed, not in the reason's words


def test_whether_a_pause_may_be_resumed_is_the_events_fact_not_its_wording() -> None:
    from core.state import RunState

    state = RunState()
    state.apply(Paused(1, 1, 3, "the loss is no longer finite", resumable=False))
    assert not state.may_resume
    state.apply(Resumed(1, 1, 3))
    state.apply(Paused(1, 1, 4, "paused for a non-finite check of the disk"))  # words alone decide nothing
    assert state.may_resume


SENDER = """
import sys
from tui.cli import main

p, wait, run = int(sys.argv[1]), sys.argv[2], sys.argv[3]
codes = []
for i in range(10):
    sys.argv = ["cbam-tui", "ctl", run, "lr", f"{p * 10 + i + 1}e-5", wait]
    try:
        main()
    except SystemExit as exc:
        codes.append(int(exc.code))
print("codes", codes)
"""


@SLOW
def test_fifty_ctl_commands_at_once_from_five_processes_each_apply_once_in_order(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with LiveRun(tmp_path) as live:
        senders = [
            subprocess.Popen([sys.executable, "-c", SENDER, str(p), "--wait" if p < 3 else "--no-wait", str(live.run)],
                             cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for p in range(5)
        ]
        outputs = [s.communicate(timeout=300)[0] for s in senders]
        assert all("codes [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in out for out in outputs), outputs
        deadline = time.monotonic() + 60
        while len(live.rec.of(RatesChanged)) < 50:
            assert time.monotonic() < deadline, f"{len(live.rec.of(RatesChanged))} of 50 applied"
            time.sleep(0.05)
        changes = live.rec.of(RatesChanged)
    assert len(changes) == 50 and len({c.command_id for c in changes}) == 50  # each once, none lost
    for p, sender in enumerate(senders):
        mine = [c.after[0] for c in changes if c.origin == f"ctl pid {sender.pid}"]
        assert mine == [float(f"{p * 10 + i + 1}e-5") for i in range(10)], p  # in the order sent


# --- many runs -------------------------------------------------------------------------


def test_resume_auto_goes_on_with_the_newest_unfinished_run_of_that_name(tmp_path: Path, capsys, monkeypatch) -> None:
    import tui.launch

    root = tmp_path / "runs"
    mine = stopped_run(tmp_path)  # runs/<stamp>-t
    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    base = ("demo", "--headless", "--runs-root", str(root), "--image-size", "8", "--batch-size", "8")
    code, _, err = cli(capsys, *base, "--name", "t", "--resume", "auto")
    assert code == 0, err
    assert started[-1].resume == str(mine / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, *base, "--name", "other", "--resume", "auto")  # none of that name: a new run
    assert code == 0, err
    assert started[-1].resume is None and started[-1].name == "other"


def test_runs_prune_removes_only_runs_that_failed_before_their_first_epoch(tmp_path: Path, capsys) -> None:
    from core.events import RunFailed
    from tests.scripted import events

    script = list(events(epochs=1, batches=4, log_every=2))
    root = tmp_path / "runs"
    early, _ = fake_run(root, "early", [*script[:3], RunFailed("no data")])
    late, _ = fake_run(root, "late", [*script, RunFailed("boom")])
    fine, _ = fake_run(root, "fine", script[:3])
    code, _, err = cli(capsys, "runs", "--runs-root", str(root), "--prune", "failed")
    assert code == 1 and "answer in a terminal, or add --yes" in err and early.exists()
    code, out, _ = cli(capsys, "runs", "--runs-root", str(root), "--prune", "failed", "--yes")
    assert code == 0 and "early: no data" in out and "removed 1 run directory" in out
    assert not early.exists() and late.exists() and fine.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, rec = train(tiny_config(tmp_path_factory.mktemp("export"), log_every=1))
    return rec.run_dir


def test_tensorboard_files_read_back_with_the_values_of_metrics_csv(tmp_path: Path, finished_run: Path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _out, err = cli(capsys, "export", str(finished_run), "--tensorboard", str(tmp_path / "tb"))
    assert code == 0, err
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    rows = list(csv.DictReader((finished_run / "metrics.csv").open()))
    for tag, column in (("accuracy/test", "test_acc"), ("loss/train", "train_loss"), ("accuracy/train", "train_acc")):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == {int(r["epoch"]): pytest.approx(float(r[column]), abs=1e-3) for r in rows}
    assert len(acc.Scalars("loss/iteration")) == 18 and acc.Scalars("lr/new")
    assert {t.split("/")[1] for t in acc.Tags()["scalars"] if t.startswith("accuracy_per_class/")} >= {"disk", "ring"}


def test_the_png_has_the_stated_size_and_a_finished_run_draws_its_own(tmp_path: Path, finished_run: Path, capsys) -> None:
    from PIL import Image

    code, out, _ = cli(capsys, "export", str(finished_run), "--png", str(tmp_path / "curves.png"))
    assert code == 0 and "(1600x600 pixels)" in out
    assert Image.open(tmp_path / "curves.png").size == (1600, 600)
    assert Image.open(finished_run / "curves.png").size == (1600, 600)


def test_exporting_again_gives_the_same_files_and_every_point_once(tmp_path: Path, finished_run: Path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, image = tmp_path / "tb", tmp_path / "curves.png"
    seen = []
    for _ in range(2):
        code, _, err = cli(capsys, "export", str(finished_run), "--tensorboard", str(tb), "--png", str(image))
        assert code == 0, err
        seen.append(({p.name: p.read_bytes() for p in tb.iterdir()}, image.read_bytes()))
    assert seen[0] == seen[1] and len(seen[0][0]) == 1  # one event file, the same bytes; the same PNG
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy/test")] == [1, 2, 3]  # twice before: 1, 1, 2, 2, 3, 3


def test_export_writes_no_file_it_did_not_make_and_says_why_in_one_sentence(
    tmp_path: Path, finished_run: Path, capsys
) -> None:
    import shutil

    from PIL import Image

    def export(*args: str, run: Path = finished_run) -> str:
        code, _, err = cli(capsys, "export", str(run), *args)
        assert code == 1 and err.count("\n") == 1 and "internal error" not in err, err
        return err

    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert f"--tensorboard {a_file}/" in (said := export("--tensorboard", str(a_file))) and "is not a directory" in said
    other = tmp_path / "other-tb"
    other.mkdir()
    (other / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    assert "already holds the TensorBoard events of something else" in export("--tensorboard", str(other))
    link_tb = tmp_path / "link-tb"
    link_tb.mkdir()
    (link_tb / f"events.out.tfevents.cbam-tui.{finished_run.name}").symlink_to(victim)
    assert "is a symbolic link: export writes only regular files, never through a link" in export(
        "--tensorboard", str(link_tb))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    assert "photo.png exists and is not a cbam-tui export: not overwritten" in export("--png", str(photo))
    (tmp_path / "link.png").symlink_to(victim)
    assert "link.png is a symbolic link" in export("--png", str(tmp_path / "link.png"))
    assert "is not a directory" in export("--png", str(a_file / "x.png"))
    assert victim.read_text() == "someone else's" and Image.open(photo).size == (4, 4)
    broken = tmp_path / "broken-run"
    shutil.copytree(finished_run, broken)
    (broken / "events.jsonl").unlink()
    os.mkfifo(broken / "events.jsonl")
    assert "cannot read the events of" in export("--png", str(tmp_path / "new.png"), run=broken)
    code, _, err = cli(capsys, "export", str(finished_run), "--png", str(tmp_path / "new" / "dir" / "c.png"))
    assert code == 0 and (tmp_path / "new" / "dir" / "c.png").exists(), err  # a missing directory is made


def test_export_without_the_extra_says_what_to_install(finished_run: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli(capsys, "export", str(finished_run), "--png", "x.png")
    root = Path(__file__).resolve().parent.parent  # a source tree: the hint installs from it
    assert code == 1 and f"export --png needs matplotlib: pip install -e '{root}[export]'" in err


def test_compare_renders_finished_and_live_runs(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import comparison
    from core.events import RunFinished
    from tests.scripted import events
    from tui.app import make_app
    from tui.links import CompareLink

    script = list(events(epochs=4, batches=4, log_every=2))
    a, _ = fake_run(tmp_path, "20260101-120000-default", [*script, RunFinished(60.0, 61.0, 3, 12.0)], step_s=5.0)
    b, _ = fake_run(tmp_path, "20260101-130000-seed", [*script[:-8], RunFinished(50.0, 52.0, 2, 10.0)], step_s=5.0)
    c, holder = fake_run(tmp_path, "20260101-140000-live", script[:-12], hold=True, step_s=5.0)
    # a live run's time runs to now, as `runs` gives it: now is 10 minutes after its first event
    monkeypatch.setattr(comparison, "time", SimpleNamespace(time=lambda: STAMP_0 + 600.0))
    try:
        assert snap_compare(make_app(CompareLink([a, b, c])), terminal_size=(110, 32))
    finally:
        assert holder is not None
        holder.close()


async def test_compare_refreshes_while_a_run_trains(tmp_path: Path) -> None:
    from tests.scripted import events
    from tui.app import make_app
    from tui.links import CompareLink
    from tui.widgets.compare_view import CompareView

    script = list(events(epochs=3, batches=4, log_every=2))
    cut = next(i for i, e in enumerate(script) if isinstance(e, EpochEnded))
    a, _ = fake_run(tmp_path, "a", script)
    b, holder = fake_run(tmp_path, "b", script[: cut + 1], hold=True)
    assert holder is not None
    app = make_app(CompareLink([a, b]))
    async with app.run_test(size=(110, 32)) as pilot:
        view = app.query_one(CompareView)
        await until(pilot, lambda: len(view.runs[1].state.epochs) == 1 and view.runs[1].live)
        for e in script[cut + 1 :]:
            holder.write(e)
        await until(pilot, lambda: len(view.runs[1].state.epochs) == 3, timeout=10)
        holder.close()
        await until(pilot, lambda: not view.runs[1].live, timeout=10)
        await pilot.press("q")
    assert app.exit_code == 0


def compared_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two finished runs whose configurations differ in the batch size and the first stage's rate."""
    from core.events import RunFinished
    from tests.scripted import events

    script = list(events(epochs=4, batches=4, log_every=2))
    a, _ = fake_run(tmp_path, "20260101-120000-bs64", [*script, RunFinished(60.0, 61.0, 3, 12.0)], step_s=5.0)
    b, _ = fake_run(tmp_path, "20260101-130000-bs32", [*script[:-8], RunFinished(50.0, 52.0, 2, 10.0)], step_s=5.0)
    for run, batch, lr in ((a, 64, 1e-3), (b, 32, 3e-4)):
        (run / "config.json").write_text(json.dumps({"batch_size": batch, "seed": 0, "plan": {"stages": [
            {"name": "warm up", "epochs": 5, "groups": [{"name": "new", "lr": lr}]}]}}))
    return a, b


def test_compare_shows_a_step_metric_and_the_config_that_differs(snap_compare, tmp_path: Path) -> None:
    from tui.app import make_app
    from tui.links import CompareLink

    assert snap_compare(make_app(CompareLink(list(compared_pair(tmp_path)), "lr/new")), terminal_size=(110, 32))


def on_screen(widget) -> str:
    """What a Static shows, as plain text."""
    import io

    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def test_m_cycles_every_scalar_the_runs_recorded(tmp_path: Path) -> None:
    from textual.widgets import Static

    from tui.app import make_app
    from tui.links import CompareLink
    from tui.widgets.compare_view import CompareCurve, CompareView

    app = make_app(CompareLink(list(compared_pair(tmp_path))))
    async with app.run_test(size=(110, 32)) as pilot:
        view, curve = app.query_one(CompareView), app.query_one(CompareCurve)
        await until(pilot, lambda: "test accuracy % per epoch" in curve.text)
        assert all(run.lines is None for run in view.runs)  # the loss lines are read only when shown
        config = on_screen(app.query_one("#compare-config", Static))
        assert "batch_size" in config and "plan.stages.0.groups.0.lr" in config and "seed" not in config
        assert config.splitlines()[2].split() == ["plan.stages.0.groups.0.lr", "0.001", "0.0003"]
        assert "m" in app.screen.active_bindings and "M" in app.screen.active_bindings  # in the footer
        for want in ("test_loss", "train_acc", "train_loss", "images_per_second", "seconds", "batch_loss"):
            await pilot.press("m")  # the next scalar
            assert view.metric == want
        await until(pilot, lambda: "train loss of each loss line per step" in curve.text)
        assert all(run.lines is not None and run.series("batch_loss").x for run in view.runs)
        assert "batch_loss" in on_screen(app.query_one("#status", Static))
        await pilot.press("m", "m", "m")  # lr/new, grad_norm/new, and round to the first
        assert view.metric == "test_acc"
        await pilot.press("M")  # back: the last one
        assert view.metric == "grad_norm/new"
        await until(pilot, lambda: "gradient norm of new per step" in curve.text)
        await pilot.press("q")
    assert app.exit_code == 0


# --- export several runs ------------------------------------------------------------------------


@pytest.fixture
def two_finished(tmp_path: Path, finished_run: Path) -> tuple[Path, Path]:
    import shutil

    other = tmp_path / "runs" / "other"
    shutil.copytree(finished_run, other)
    return finished_run, other


def test_exporting_several_runs_gives_each_its_directory_and_again_the_same_files(
    tmp_path: Path, two_finished: tuple[Path, Path], capsys
) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, b = two_finished
    tb, image = tmp_path / "tb", tmp_path / "both.png"
    seen = []
    for _ in range(2):
        code, out, err = cli(capsys, "export", str(a), str(b), "--tensorboard", str(tb), "--png", str(image))
        assert code == 0, err
        seen.append(({str(p.relative_to(tb)): p.read_bytes() for p in tb.rglob("*") if p.is_file()},
                     image.read_bytes()))
    assert seen[0] == seen[1]  # the same files, the same bytes
    assert sorted(seen[0][0]) == [f"{a.name}/events.out.tfevents.cbam-tui.{a.name}",
                                  f"{b.name}/events.out.tfevents.cbam-tui.{b.name}"]
    for run in (a, b):
        acc = EventAccumulator(str(tb / run.name))
        acc.Reload()
        assert [e.step for e in acc.Scalars("accuracy/test")] == [1, 2, 3]  # every point once
    assert Image.open(image).size == (1600, 600) and f"tensorboard --logdir {tb}" in out


def test_several_runs_are_not_mixed_with_one_run_in_one_directory(
    tmp_path: Path, two_finished: tuple[Path, Path], capsys
) -> None:
    a, b = two_finished

    def export(*args: str) -> tuple[int, str]:
        code, _, err = cli(capsys, "export", *args)
        assert err.count("\n") <= 1 and "internal error" not in err, err
        return code, err

    assert export(str(a), "--tensorboard", str(tmp_path / "one"))[0] == 0
    code, err = export(str(a), str(b), "--tensorboard", str(tmp_path / "one"))
    assert code == 1 and "holds TensorBoard events at its top" in err
    assert export(str(a), str(b), "--tensorboard", str(tmp_path / "many"))[0] == 0
    code, err = export(str(a), "--tensorboard", str(tmp_path / "many"))
    assert code == 1 and "holds runs exported into its subdirectories" in err
    import shutil

    shutil.copytree(a, tmp_path / "copy" / a.name)
    code, err = export(str(a), str(tmp_path / "copy" / a.name), "--tensorboard", str(tmp_path / "twins"))
    assert code == 1 and f"two of the runs are named {a.name}" in err and not (tmp_path / "twins").exists()


def test_the_install_hint_names_the_published_package_outside_a_source_tree(tmp_path: Path, monkeypatch) -> None:
    import core.export

    installed = tmp_path / "site-packages" / "core"
    installed.mkdir(parents=True)
    monkeypatch.setattr(core.export, "__file__", str(installed / "export.py"))
    assert core.export.install_hint("export") == "pip install 'cbam-tui[export]'"
