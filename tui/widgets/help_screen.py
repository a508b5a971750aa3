"""The `?` screen: every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("p / space", "pause or resume at the next batch boundary"),
    ("n", "end this stage now: evaluate, then start the next (asks on the last stage)"),
    ("s", "save a checkpoint now"),
    ("q / ctrl+c", "quit: stops training with a checkpoint (asks while training)"),
    ("tab", "next view"),
    ("1 / 2 / 3", "dashboard / model tree / log"),
    ("?", "this help"),
    ("escape", "close a dialog"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        text = "\n".join(f"  {key:<12} {what}" for key, what in KEYS)
        with Vertical(id="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(text + "\n\n  ◆ marks CBAM blocks · * marks modules new to the pretrained net")
