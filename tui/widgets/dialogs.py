"""Modal questions and the failure notice."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from core.errors import ConfigError
from core.state import lr_text
from core.vocab import Command


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


class RatesScreen(ModalScreen[Command | None]):
    """`l`: change the learning rates now. ``x0.5`` scales every group, ``3e-4`` sets them
    all, ``new 3e-4`` (or ``new x2``) one group."""

    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, groups: list[tuple[str, float]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        now = ", ".join(f"{name} {lr_text(lr)}" for name, lr in self.groups) or "no stage yet"
        with Vertical(id="dialog"):
            yield Static("Learning rates", classes="dialog-title")
            yield Static(f"now: {now}")
            yield Static("x0.5 scales every group · 3e-4 sets them all · GROUP 3e-4 (or GROUP x2) one group\n"
                         "The change holds until the next stage, which starts from its plan.")
            yield Input(placeholder="x0.5", id="rates-input")
            yield Static("", id="rates-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        words = event.value.split()
        try:
            if len(words) == 1:
                self.dismiss(Command("lr", words[0]))
            elif len(words) == 2:
                self.dismiss(Command("lr", words[1], words[0]))
            else:
                raise ConfigError("type x0.5, 3e-4, or a group and one of those")
        except ConfigError as exc:
            self.query_one("#rates-error", Static).update(Text(str(exc), style="bold red"))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
