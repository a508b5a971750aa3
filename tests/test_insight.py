"""What the dashboard shows beyond the loss: the machine (with a fake NVML), per-class
results, CBAM attention, learning rates and gradient norms, the evaluation under way,
time left in hours, and torchinfo's totals per stage."""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest
import torch

from core.events import (
    AttentionMaps,
    BatchLogged,
    ClassAccuracy,
    EpochEnded,
    Evaluating,
    Event,
    GpuProcess,
    GpuSample,
    IterLosses,
    Progress,
    RunStarted,
    StageStarted,
    SystemSample,
)
from core.hardware import Nvml, SystemMonitor
from core.plan import PlanOptions
from core.state import RunState, fmt_seconds
from core.vocab import Status
from tests.conftest import tiny_config, train
from tests.helpers import screen_rows, until
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.links import InProcessLink
from tui.widgets.attention_view import AttentionView
from tui.widgets.curves import LossCurve
from tui.widgets.hardware import sparkline
from tui.widgets.model_tree import totals


def fake_nvml(devices: int = 2) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's pynvml: two boards, one that hides its power."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: devices
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=90 - 40 * h)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H200"

    def power(h: int) -> int:
        if h == 1:
            raise RuntimeError("Not Supported")
        return 250_000  # mW

    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h

    def processes(h: int) -> list[types.SimpleNamespace]:
        if h == 1:
            raise RuntimeError("Not Supported")
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30),  # this process: not an "other"
                types.SimpleNamespace(pid=NOWHERE_PID, usedGpuMemory=None),  # another container's, memory unknown
                types.SimpleNamespace(pid=os.getppid(), usedGpuMemory=3 * 2**30)]

    nvml.nvmlDeviceGetComputeRunningProcesses = processes
    return nvml


NOWHERE_PID = 4_000_000  # above Linux's largest pid: no process here has it


def test_the_machine_is_read_through_nvml_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = Nvml()
    gpus = nvml.sample()
    assert [(g.index, g.utilization, g.memory_used, g.power, g.temperature) for g in gpus] == [
        (0, 90.0, 2**30, 250.0, 60.0), (1, 50.0, 2 * 2**30, -1.0, 61.0)]
    assert gpus[0].name == "NVIDIA H200" and nvml.note == ""
    # The neighbours on each GPU, largest first, named where this process can see them.
    parent = psutil.Process(os.getppid()).name()
    assert gpus[0].others == (GpuProcess(os.getppid(), parent, 3 * 2**30), GpuProcess(NOWHERE_PID, "", -1))
    assert gpus[1].others == ()  # a board that does not say
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in Nvml().sample()] == [1]
    sample = SystemMonitor(lambda e: None).sample()
    assert sample.rss > 10 * 2**20 and sample.cpu_percent >= 0


def test_the_process_figures_are_current_not_peak() -> None:
    """Resident memory falls when memory is given back (a peak figure would not), and the CPU
    share counts this process's work since the last sample."""
    monitor = SystemMonitor(lambda e: None)
    block = bytearray(b"\x01") * (128 * 2**20)  # written, so resident
    held = monitor.sample().rss
    del block  # a block this size is unmapped when freed
    assert held - monitor.sample().rss > 100 * 2**20
    deadline = time.thread_time() + 0.2
    while time.thread_time() < deadline:
        pass
    assert monitor.sample().cpu_percent > 5  # 0.2 s of CPU in this thread, in however long it took


def test_without_nvml_the_gpu_figures_give_way_to_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    nvml = Nvml()
    assert nvml.sample() == () and "pip install nvidia-ml-py" in nvml.note
    broken = fake_nvml()

    def no_driver() -> None:
        raise RuntimeError("Driver Not Loaded")

    broken.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert Nvml().note == "no GPU figures: NVML says Driver Not Loaded"


def test_a_run_reports_classes_attention_rates_norms_and_its_evaluation(tmp_path: Path) -> None:
    _, rec = train(tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")))
    reports, epochs = rec.of(ClassAccuracy), rec.of(EpochEnded)
    assert len(reports) == len(epochs) == 2
    for report, epoch in zip(reports, epochs, strict=True):
        assert sum(report.total) == 24 and 100 * sum(report.correct) / 24 == pytest.approx(epoch.test_acc)
        assert [sum(row) for row in report.confusion] == list(report.total)
        assert [report.confusion[i][i] for i in range(10)] == list(report.correct)
    maps = rec.of(AttentionMaps)
    assert [m.epoch for m in maps] == [1, 2] and 4 < len(maps[0].images) <= 10  # one a class
    image = maps[0].images[0]
    assert [b.block for b in image.blocks] == ["cbam1", "cbam2", "cbam3", "cbam4"]
    assert [b.size for b in image.blocks] == [8, 4, 2, 1]  # 8x8 input: the maps of each stage
    assert all(0 <= v <= 255 for b in image.blocks for v in b.spatial) and len(image.pixels) == 3 * 8 * 8
    assert all(0 <= b.channel_above_half <= 1 for b in image.blocks)
    lines = rec.of(BatchLogged)
    groups = [s.groups for s in rec.of(StageStarted)]
    assert all(len(x.lrs) == len(groups[x.stage - 1]) == len(x.grad_norms) for x in lines)
    assert lines[0].lrs == (1e-2,) and lines[-1].lrs == (1e-3, 1e-3) and all(g > 0 for x in lines for g in x.grad_norms)
    assert all(0 <= p.data_share <= 1 for p in rec.of(Progress))
    evaluating = rec.of(Evaluating)
    assert evaluating and evaluating[0].done == 0 and evaluating[0].total == 24
    state = RunState()
    for e in rec.events:
        state.apply(e)
        if e is evaluating[0]:
            assert state.status is Status.EVALUATING
    assert state.status is not Status.EVALUATING and len(state.class_reports) == 2 and state.group_curves


def test_the_loss_curve_moves_between_loss_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --log-every 1000, the iteration losses still reach the screen between loss lines: they are
    drained on a clock (at least once a second), not only at a line. The clock is made due at every batch,
    so what is counted is batches, not seconds: a loaded machine cannot make it pass or fail."""
    import core.train as train_module

    assert train_module.DRAIN_EVERY_S <= 1.0
    monkeypatch.setattr(train_module, "DRAIN_EVERY_S", 0.0)
    _, rec = train(tiny_config(tmp_path, log_every=1000, limit_train=160, plan_opts=PlanOptions(stage_epochs="1,0,0")))
    assert len(rec.of(BatchLogged)) == 1  # the epoch's last batch only: no loss line in between
    chunks = rec.of(IterLosses)
    assert [c.first_step for c in chunks] == list(range(1, 21)) and all(len(c.losses) == 1 for c in chunks)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_tree_totals_equal_torchinfos_for_each_stage(stage: int) -> None:
    import torchinfo

    from core.model import ResNet18CBAM
    from core.plan import assign_groups, build_plan
    from core.tree import summarize

    model = ResNet18CBAM()
    rows = summarize(model)
    assign_groups(model, build_plan(PlanOptions()).stages[stage])
    info = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    row_trainable = tuple(sum(v for n, v in trainable.items() if not r.path or n.startswith(r.path + ".")) for r in rows)
    state = RunState()
    for e in events(epochs=1, batches=2, log_every=2):
        state.apply(e)
    state.started = msgspec.structs.replace(state.started, model_rows=tuple(rows))
    state.stage = msgspec.structs.replace(state.stage, row_trainable=row_trainable)
    text = totals(state).plain
    assert f"Total params: {info.total_params:,}" in text
    assert f"Trainable params: {info.trainable_params:,}" in text
    assert f"Non-trainable params: {info.total_params - info.trainable_params:,}" in text
    assert f"Params size (MB): {info.to_megabytes(info.total_param_bytes):0.2f}" in text
    assert "Params size (MB): 44.87" in text  # torchinfo's figure for this model, 4-byte weights


async def test_hours_left_show_whole_at_80_columns(tmp_path: Path) -> None:
    def slow() -> list:
        out = []
        for e in events(epochs=1, batches=782, log_every=100):
            if isinstance(e, BatchLogged):
                e = msgspec.structs.replace(e, images_per_second=9.0)
            out.append(e)
        return out

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: iter(slow()))))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        text = str(app.query_one("#stage-left").render())
        run_left = fmt_seconds(49 * 782 * 64 / 9.0)  # 49 epochs of 782 batches of 64 at 9 img/s
        stage_left = fmt_seconds(4 * 782 * 64 / 9.0)
        assert run_left == "3d03h" and text == f"left: epoch 0s · stage {stage_left} · run {run_left}"
        await pilot.press("q", "y")


SHAPES = ("disk", "square", "triangle", "ring", "plus", "cross", "hbar", "vbar", "diamond", "frame")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.mark.parametrize("classes", [SHAPES, CIFAR10], ids=["demo", "cifar10"])
@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_the_confusion_matrix_names_classes_in_full_where_they_fit(
    tmp_path: Path, size: tuple[int, int], classes: tuple[str, ...]
) -> None:
    def named() -> Iterator[Event]:
        for e in events(epochs=1):
            yield msgspec.structs.replace(e, classes=classes) if isinstance(e, RunStarted) else e

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(named)))
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        await pilot.press("4")  # per-class accuracy and the confusion matrix
        await until(pilot, lambda: app.settled)
        await pilot.pause()
        view = app.query_one("#classes")
        lines = text_of(app.query_one("#class-body")).splitlines()
        matrix = lines[next(i for i, line in enumerate(lines) if line.startswith("confusion matrix")) + 1:]
        assert all(len(line.rstrip()) <= view.scrollable_content_region.width for line in matrix), matrix
        assert matrix[0].split() == list(classes)  # the heads, whole: they fit at these sizes
        assert [line.split()[0] for line in matrix[1:11]] == list(classes)
        await pilot.press("q", "y")


@pytest.mark.parametrize("width", range(30, 80, 3))
@pytest.mark.parametrize("classes", [SHAPES, CIFAR10], ids=["demo", "cifar10"])
def test_class_names_are_cut_only_where_they_must_be_and_all_alike(classes: tuple[str, ...], width: int) -> None:
    from tui.widgets.class_view import matrix_labels

    rows, heads = matrix_labels(classes, 3, width)
    for shown in (rows, heads):
        cut = {len(name) for name in shown if name.endswith("…")}
        assert len(cut) <= 1, shown  # all cut to one length, or none
        assert all(name == whole or (name.endswith("…") and whole.startswith(name[:-1]) and len(whole) > len(name))
                   for name, whole in zip(shown, classes, strict=True)), shown
    needed = max(map(len, rows)) + sum(max(len(head), 3) + 1 for head in heads)
    assert needed <= width or all(len(name) <= 4 for name in rows + heads)  # fits, or as short as names go
    if any(name.endswith("…") for name in rows):  # the row labels give way only when the heads alone cannot
        assert max(map(len, classes)) + sum(max(min(len(name), 4), 3) + 1 for name in classes) > width


def test_a_line_breaks_only_between_phrases() -> None:
    from rich.text import Text

    from tui.widgets.text_panel import wrap_phrases

    line = Text("process ", style="bold")
    line.append("cpu 200% · 1.0 GiB resident · batch prep 2% of a step")
    assert wrap_phrases(line, 80) is line  # fits: as it was
    assert wrap_phrases(line, 40, 8).plain == "process cpu 200% · 1.0 GiB resident\n        batch prep 2% of a step"
    assert wrap_phrases(line, 20, 8).plain == "process cpu 200%\n        1.0 GiB resident\n        batch prep 2% of a step"
    assert wrap_phrases(line, 40, 8).spans[0].style == "bold"  # the styles stay
    assert wrap_phrases(Text("a  ·  b  ·  c"), 9, separator="  ·  ").plain == "a  ·  b\nc"


def two_cpus() -> Iterator[Event]:
    """The scripted run on a 2-CPU laptop with torch on both."""
    for e in events(epochs=1, gpus=False):
        if isinstance(e, RunStarted):
            yield msgspec.structs.replace(e, threads=2)
        elif isinstance(e, SystemSample):
            yield msgspec.structs.replace(e, cpu_percent=200.0, rss=2**30, busy_elsewhere=0.0)
        else:
            yield e


def panel_rows(app, selector: str) -> list[str]:
    widget = app.query_one(selector)
    return [row.strip() for row in screen_rows(app, widget.content_region) if row.strip()]


async def test_the_machine_panel_breaks_its_lines_between_phrases(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(two_cpus)))
    async with app.run_test(size=(120, 40)) as pilot:  # the dashboard's machine panel, in the left column
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        await pilot.pause()
        rows = panel_rows(app, "#hardware")
        assert not [row for row in rows if row.endswith("·")], rows
        assert any(row.endswith("batch prep 0% of a step") for row in rows), rows
        assert any(row.endswith("other processes 0.0 of 2 CPUs") for row in rows), rows
        await pilot.press("q", "y")


async def test_the_model_trees_totals_break_between_phrases(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=1))))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        await pilot.press("2")  # the model tree
        await until(pilot, lambda: app.settled)
        await pilot.pause()
        rows = panel_rows(app, "#tree-totals")
        assert len(rows) > 1 and not [row for row in rows if row.endswith("·")], rows
        assert any(row.startswith("Params size (MB): ") for row in rows), rows
        await pilot.press("q", "y")


async def test_every_view_and_the_chart_keys(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=3))))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 3 and app.settled)
        for key, view, shown in (("4", "classes", "confusion matrix"), ("5", "attention", "attention after epoch 3"),
                                 ("3", "system", "gpu0"), ("6", "curves", "iteration loss")):
            await pilot.press(key)
            await until(pilot, lambda: app.settled)
            assert app.query_one("#views").current == view
            body = {"classes": "#class-body", "attention": "#attention", "system": "#hardware-full",
                    "curves": "#loss-big"}[view]
            widget = app.query_one(body)
            if view == "curves":
                text = widget.text
            elif view == "attention":
                text = "\n".join(widget.plain_lines)
            else:
                text = text_of(widget)
            assert shown in text, view
        await pilot.press("5", "left_square_bracket")  # an earlier epoch's attention
        assert "attention after epoch 2" in app.query_one("#attention", AttentionView).plain_lines[0]
        await pilot.press("1", "e", "y", "w")  # smoothing, log scale, this stage
        assert (app.screen.chart.smooth, app.screen.chart.log_scale, app.screen.chart.this_stage) == (True, True, True)
        await until(pilot, lambda: app.settled)
        assert "EMA · log · stage 1" in app.query_one("#loss-curve", LossCurve).text
        await pilot.press("q", "y")


async def test_this_stage_at_a_stage_start_shows_the_last_stage_with_losses(tmp_path: Path) -> None:
    def to_stage_two():  # type: ignore[no-untyped-def]
        for event in events(epochs=6, batches=200):
            yield event
            if isinstance(event, StageStarted) and event.stage == 2:
                return  # stage 2 has begun and has no loss yet

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(to_stage_two)))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.stage is not None and app.state.stage.stage == 2 and app.settled)
        await pilot.press("w")
        await until(pilot, lambda: app.settled)
        text = app.query_one("#loss-curve", LossCurve).text
        assert "(stage 1)" in text  # what it shows, said in its title
        plotted = [line for line in text.splitlines()[1:] if any(c in line for c in "⠁⠂⠄⡀⢀⠠⠐⠈⣀⣤⣶⣿▄▀█")]
        assert plotted, text  # stage 1's losses, not an empty chart
        await pilot.press("q", "y")


def test_sparklines_scale_to_their_top_and_keep_the_newest_readings() -> None:
    assert sparkline([0, 50, 100], 100) == "▁▅█"
    assert sparkline([2, 4], 0) == "▅█"  # no top: the largest is
    assert sparkline([0, 0], 0) == "▁▁" and sparkline([250], 100) == "█"


async def test_view_3_shows_the_last_minute_and_the_other_processes_on_each_gpu(tmp_path: Path) -> None:
    def busy_gpu():  # type: ignore[no-untyped-def]
        yield from events(epochs=1, batches=100)
        for i in range(90):  # a minute and a half of readings, utilisation climbing
            gpu = GpuSample(0, "NVIDIA H200", float(i % 101), (i + 1) * 2**30, 100 * 2**30, 300.0, 70.0,
                            (GpuProcess(4242, "python", 3 * 2**30), GpuProcess(77, "", -1)))
            yield SystemSample(cpu_percent=150.0, rss=2**30, gpus=(gpu,), cpus=2.0)

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(busy_gpu)))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.state.system_history) == 60 and app.settled)
        await pilot.press("3")
        await until(pilot, lambda: app.settled)
        text = text_of(app.query_one("#hardware-full"))
        util = next(line for line in text.splitlines() if "gpu0 util" in line)
        spark = util.split()[2]
        assert set(spark) <= set("▁▂▃▄▅▆▇█") and len(spark) == 60  # the last minute, one reading a second
        assert spark[0] < spark[-1]  # the newest on the right: 30% then 89%
        assert "also on gpu0: python (pid 4242) 3.0 GiB · pid 77" in text
        assert any("cpu" in line and "of 2 CPUs, last minute" in line for line in text.splitlines())
        await pilot.press("q", "y")


def text_of(widget) -> str:
    """What a Static shows, as plain text."""
    import io

    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def test_attention_maps_of_a_real_model_at_32_pixels() -> None:
    from core.attention import attention_maps, pick_images
    from core.augment import Augmenter
    from core.model import ResNet18CBAM

    model = ResNet18CBAM().eval()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2)
    ids = pick_images(labels, 10)
    assert ids == list(range(10))  # the first image of each class
    images = torch.randint(0, 256, (len(ids), 3, 32, 32), dtype=torch.uint8)
    maps = attention_maps(model, images, [int(labels[i]) for i in ids], tuple("abcdefghij"), Augmenter("none", torch.device("cpu")),
                          lambda: torch.autocast("cpu", enabled=False), False)
    assert [b.size for b in maps[0].blocks] == [16, 16, 8, 4] and maps[0].size == 16
    assert model.training is False and len(maps[0].blocks[0].spatial) == 256
