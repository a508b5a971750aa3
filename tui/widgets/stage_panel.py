"""Stage, epoch and batch progress, speed and time left."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from core.state import FAILED, LOADING, RunState, fmt_seconds


class StagePanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="stage-title")
        yield Static(id="stage-epoch")
        yield ProgressBar(total=1, show_eta=False, id="batch-progress")
        yield Static(id="stage-speed")
        yield Static(id="stage-left")

    def update_from(self, state: RunState) -> None:
        title = self.query_one("#stage-title", Static)
        epoch = self.query_one("#stage-epoch", Static)
        speed = self.query_one("#stage-speed", Static)
        left_text = self.query_one("#stage-left", Static)
        bar = self.query_one("#batch-progress", ProgressBar)
        if state.status == LOADING or state.started is None:
            title.update(Text(f"Loading: {state.loading}", style="bold"))
            done = f"{state.loading_done}/{state.loading_total}" if state.loading_total else ""
            epoch.update(done)
            bar.update(total=max(state.loading_total, 1), progress=state.loading_done)
            speed.update("")
            return
        st = state.stage
        if st is None:
            title.update("waiting for the first stage")
            return
        title.update(Text(f"Stage {st.stage}/{st.num_stages} · {st.name}", style="bold"))
        in_stage = state.epoch - st.first_epoch + 1
        epoch.update(
            f"Epoch {state.epoch}/{st.total_epochs} · {in_stage}/{st.last_epoch - st.first_epoch + 1} in stage"
            f" · batch {state.batch}/{state.batches}"
        )
        bar.update(total=max(state.batches, 1), progress=state.batch)
        text = f"{state.images_per_second:,.0f} img/s"
        best = state.best_acc
        if best is not None:
            text += f" · best test acc {best:.2f}%"
        speed.update(text)
        left = state.seconds_left()
        if left is not None and state.status not in (FAILED,):
            e, s, r = left
            left_text.update(f"left: epoch {fmt_seconds(e)} · stage {fmt_seconds(s)} · run {fmt_seconds(r)}")
        else:
            left_text.update("")
