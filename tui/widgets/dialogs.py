"""Modal questions and the failure notice."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question answered with y or n (enter = yes, escape = no)."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, classes="dialog-title")
            yield Static("y / enter: yes    n / escape: no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ErrorScreen(ModalScreen[None]):
    """The worker failed: say why and where the checkpoint is; q quits."""

    BINDINGS = [Binding("escape,enter", "dismiss", "close")]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static("Training failed", classes="dialog-title")
            yield Static(self.message)
            yield Static("q: quit    escape: look at the dashboard")
