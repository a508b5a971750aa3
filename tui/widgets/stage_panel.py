"""Stage, epoch and batch (or evaluation) progress, speed, and the time left, whole: a line
that does not fit drops whole parts rather than wrap or be cut."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar

from core.state import RunState, fmt_seconds
from core.vocab import Status
from tui.widgets.text_panel import TextPanel


class StagePanel(Vertical):
    def compose(self) -> ComposeResult:
        yield TextPanel(id="stage-title")
        yield TextPanel(id="stage-epoch")
        yield ProgressBar(total=1, show_eta=False, id="batch-progress")
        yield TextPanel(id="stage-speed")
        yield TextPanel(id="stage-left")

    def update_from(self, state: RunState) -> None:
        title = self.query_one("#stage-title", TextPanel)
        epoch = self.query_one("#stage-epoch", TextPanel)
        speed = self.query_one("#stage-speed", TextPanel)
        left_text = self.query_one("#stage-left", TextPanel)
        bar = self.query_one("#batch-progress", ProgressBar)
        if state.status in (Status.STARTING, Status.LOADING) or state.started is None:
            title.show(Text(f"Loading: {state.loading}", style="bold"))
            epoch.show(f"{state.loading_done:,}/{state.loading_total:,}" if state.loading_total else "")
            bar.update(total=max(state.loading_total, 1), progress=state.loading_done)
            speed.show("")
            left_text.show("")
            return
        st = state.stage
        if st is None:
            title.show("waiting for the first stage")
            return
        title.show(Text(f"Stage {st.stage}/{st.num_stages} · {st.name}", style="bold"))
        in_stage = f"{state.epoch - st.first_epoch + 1}/{st.last_epoch - st.first_epoch + 1} in stage"
        ev = state.evaluating
        if state.status is Status.EVALUATING and ev is not None:
            epoch.show(
                Text.assemble(f"Epoch {state.epoch}/{st.total_epochs} · ",
                              (f"evaluating {ev.done:,}/{ev.total:,} test images", "bold yellow"))
            )
            bar.update(total=max(ev.total, 1), progress=ev.done)
        else:
            head, batch = f"Epoch {state.epoch}/{st.total_epochs}", f"batch {state.batch}/{state.batches}"
            epoch.show_first_fitting(f"{head} · {in_stage} · {batch}", f"{head} · {batch}", head)
            bar.update(total=max(state.batches, 1), progress=state.batch)
        rate = f"{state.images_per_second:,.0f} img/s"
        group = (f" · global batch {state.started.batch_size * state.started.world_size}"
                 if state.started.world_size > 1 else "")
        best = state.best_acc
        best_text = f" · best {best:.2f}% (epoch {state.best_epoch})" if best is not None else ""
        speed.show_first_fitting(rate + group + best_text, rate + best_text, rate + (f" · best {best:.2f}%" if best
                                                                                      is not None else ""), rate)
        left = state.seconds_left()
        if left is not None and state.status is not Status.FAILED:
            e, s, r = (fmt_seconds(v) for v in left)
            left_text.show_first_fitting(f"left: epoch {e} · stage {s} · run {r}", f"left: stage {s} · run {r}",
                                         f"left: run {r}")
        else:
            left_text.show("")
