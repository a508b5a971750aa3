"""The words a run is steered and told with, each spelled once: why a run (or a process
attached to one) stopped and the exit status that follows, the exit statuses of the CLI
itself, the commands a run takes, and a run's status, with the one judge of whether a
run is dead. Plain Python: no torch, no UI; core/ and tui/ import these from here.
"""

from __future__ import annotations

import enum
import math
import signal
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.events import clean_text
from core.plan import GROUP_NAME, MAX_EPOCHS, MAX_LR, MIN_LR

# --- exit statuses --------------------------------------------------------------------


class Exit(enum.IntEnum):
    """What a shell, a scheduler or a launcher reads of how a process ended."""

    OK = 0
    ERROR = 1  # bad input (one sentence), a failed run, or one stopped with no good checkpoint
    USAGE = 2  # a command line the parser refused
    REQUEUE = 75  # EX_TEMPFAIL: stopped for preemption with a checkpoint; requeue and --resume
    SIGHUP = 128 + signal.SIGHUP
    SIGINT = 128 + signal.SIGINT  # also Ctrl-C at a prompt
    SIGTERM = 128 + signal.SIGTERM


# --- why a run (or a process attached to one) stopped ---------------------------------


class StopReason(enum.StrEnum):
    FINISHED = "finished"
    QUIT = "quit"  # q in the dashboard that owns the run
    COMMAND = "stop command"  # `ctl stop`, or x in an attached dashboard
    LEFT = "left"  # an attached dashboard left; the run goes on
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    SIGHUP = "SIGHUP"  # the terminal (an SSH connection) went away
    SIGUSR1 = "SIGUSR1"  # a scheduler's warning before preemption (SLURM --signal=USR1@90)
    NONFINITE = "non-finite loss"
    WRITE_FAILED = "write failed"  # a full or failing disk: no good checkpoint could be kept
    FAILED = "failed"

    @property
    def exit_code(self) -> Exit:
        return _EXIT_CODES[self]

    @property
    def signalled(self) -> bool:
        """A stop signal asked for it (the reason is the signal's name)."""
        return self in _SIGNALS

    @property
    def for_ranks(self) -> bool:
        """A launcher passes it on to its ranks as ``stop <reason>``, so that each stops the same way."""
        return self is StopReason.QUIT or self.signalled

    @classmethod
    def of_signal(cls, signum: int) -> StopReason:
        return cls(signal.Signals(signum).name)

    @classmethod
    def of_text(cls, text: str) -> StopReason | None:
        """The reason a `run_stopped` event gives, if it is one of ours (it was read from disk)."""
        try:
            return cls(text)
        except ValueError:
            return None


_SIGNALS = {
    StopReason.SIGINT: signal.SIGINT, StopReason.SIGTERM: signal.SIGTERM,
    StopReason.SIGHUP: signal.SIGHUP, StopReason.SIGUSR1: signal.SIGUSR1,
}
STOP_SIGNALS = tuple(_SIGNALS.values())  # each asks a run to stop at its next batch boundary, with a checkpoint
_EXIT_CODES = {
    StopReason.FINISHED: Exit.OK, StopReason.QUIT: Exit.OK, StopReason.COMMAND: Exit.OK, StopReason.LEFT: Exit.OK,
    StopReason.SIGINT: Exit.SIGINT, StopReason.SIGTERM: Exit.SIGTERM, StopReason.SIGHUP: Exit.SIGHUP,
    StopReason.SIGUSR1: Exit.REQUEUE,
    StopReason.NONFINITE: Exit.ERROR, StopReason.WRITE_FAILED: Exit.ERROR, StopReason.FAILED: Exit.ERROR,
}


# --- commands: what a run is asked to do ----------------------------------------------

VERBS = ("pause", "resume", "next", "save", "stop", "lr", "epochs")
STALLED = "stopped answering for"  # a group's verdict on a silent rank, which a sibling then kills
MAX_VALUE = 40  # characters of a command's value: longer is no rate, factor or epoch change
MIN_FACTOR, MAX_FACTOR = 1e-3, 1e3  # of `lr xF`; the rates it gives must stay within MIN_LR..MAX_LR too
_RANK_STOPS = tuple(r.value for r in StopReason if r.for_ranks)


def shown(text: str) -> str:
    """A value quoted for a one-line message: control characters escaped, cut when long."""
    return repr(clean_text(text[:MAX_VALUE])) + (f" (of {len(text):,} characters)" if len(text) > MAX_VALUE else "")


@dataclass(frozen=True)
class Command:
    """One request to a run, from a key, `ctl` or a dashboard attached to its directory.

    ``lr``: ``value`` is a rate (``3e-4``) or a factor (``x0.5``), for every optimizer
    group of the stage or only ``group``. ``epochs``: ``value`` is ``+N`` or ``-N`` for
    this stage. Every way in (ctl, the `l` dialog, the keys, the inbox) is checked here,
    the same way.
    """

    verb: str
    value: str = ""
    group: str = ""  # an optimizer group's name (lr only)
    ref: str = ""  # the inbox file it came in, by which its sender finds what became of it; "" from keys

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ConfigError(f"unknown command {shown(self.verb)}: use one of {', '.join(VERBS)}")
        if len(self.value) > MAX_VALUE:
            raise ConfigError(f"{self.verb} takes a value of at most {MAX_VALUE} characters, not {shown(self.value)}")
        if self.group and self.verb != "lr":
            raise ConfigError(f"--group applies to lr alone, not to {self.verb}")
        if self.verb == "lr":
            self.lr_change()
        elif self.verb == "epochs":
            self.epoch_change()
        elif self.verb == "stop" and self.value:
            self.stop_reason()
        elif self.value:
            raise ConfigError(f"{self.verb} takes no value")
        if self.group and not GROUP_NAME.fullmatch(self.group):
            raise ConfigError(
                f"--group names an optimizer group (1 to 100 letters, digits, + . _ -), not {shown(self.group)}"
            )

    def lr_change(self) -> tuple[bool, float]:
        """(scale?, number): ``x0.5`` scales the rates, ``3e-4`` sets them."""
        scale = self.value.startswith("x")
        try:
            number = float(self.value[1:] if scale else self.value)
        except ValueError:
            number = math.nan
        low, high = (MIN_FACTOR, MAX_FACTOR) if scale else (MIN_LR, MAX_LR)
        if not (math.isfinite(number) and low <= number <= high):
            raise ConfigError(
                f"lr takes a rate from {MIN_LR:g} to {MAX_LR:g} (like 3e-4) or a factor from x{MIN_FACTOR:g} "
                f"to x{MAX_FACTOR:g} (like x0.5), not {shown(self.value)}"
            )
        return scale, number

    def epoch_change(self) -> int:
        text = self.value
        digits = text[1:]
        if not (text[:1] in "+-" and digits.isascii() and digits.isdigit() and 0 < int(digits) <= MAX_EPOCHS):
            raise ConfigError(f"epochs takes +N or -N with N from 1 to {MAX_EPOCHS} (like +2), not {shown(text)}")
        return int(text)

    def stop_reason(self) -> StopReason:
        """stop: why a launcher stops its ranks (``SIGUSR1``: checkpoint and requeue), else a command."""
        if not self.value:
            return StopReason.COMMAND
        if self.value not in _RANK_STOPS:
            raise ConfigError(f"stop takes no value or one of {', '.join(_RANK_STOPS)}, not {shown(self.value)}")
        return StopReason(self.value)

    def __str__(self) -> str:
        return " ".join(x for x in (self.verb, self.value, f"(group {self.group})" if self.group else "") if x)

    def to_body(self, origin: str) -> dict[str, Any]:
        return {"origin": origin, "value": self.value, "group": self.group}

    @classmethod
    def from_body(cls, verb: str, body: object, ref: str = "") -> tuple[Command, str]:
        """The command and its origin from a claimed file: ValueError if it is not one,
        ConfigError (one sentence) if it is one with a value no run takes."""
        if not isinstance(body, dict) or not isinstance(body.get("origin"), str):
            raise ValueError("not a command")
        value, group = body.get("value", ""), body.get("group", "")
        if not isinstance(value, str) or not isinstance(group, str):
            raise ValueError("not a command")
        return cls(verb, value, group, ref), clean_text(body["origin"][:200])

    @classmethod
    def stopping(cls, reason: StopReason) -> Command:
        """The stop a launcher sends its ranks for ``reason``: the same reason where they can take it."""
        return cls("stop", reason.value if reason.for_ranks else "")


# --- a run's status -------------------------------------------------------------------


class Status(enum.StrEnum):
    """A run's status: what its events leave it in (`core.state.RunState`), and, for
    DEAD and UNREADABLE, what a listing finds. Shown as is on the dashboard, as `word` in
    lists; kept in index.json, so a value never changes."""

    STARTING = "STARTING"
    LOADING = "LOADING"
    RUNNING = "RUNNING"
    EVALUATING = "EVALUATING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    REPLAYING = "REPLAYING"  # an attached dashboard folds the run's history; nothing of it is shown yet
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    GONE = "GONE"  # the followed run directory was deleted
    DEAD = "DEAD"  # not ended, and no live process holds it: see `judge`
    UNREADABLE = "UNREADABLE"  # a listing could not read its directory

    @property
    def word(self) -> str:
        """As a sentence or a list says it: ``finished``."""
        return self.value.lower()

    @property
    def ended(self) -> bool:
        """It ended with a final event: nothing more will happen to it until a resume."""
        return self in _ENDED

    @property
    def live(self) -> bool:
        """Its events say a process is at work on it."""
        return self in _LIVE

    @property
    def folded(self) -> bool:
        """Events can leave a run in it (DEAD and UNREADABLE are only ever judged)."""
        return self not in (Status.DEAD, Status.UNREADABLE)


_ENDED = frozenset({Status.FINISHED, Status.STOPPED, Status.FAILED})
_LIVE = frozenset({Status.STARTING, Status.LOADING, Status.RUNNING, Status.EVALUATING, Status.PAUSED,
                   Status.STOPPING, Status.REPLAYING})


def judge(status: Status, alive: bool) -> Status:
    """The one judge of a run's liveness: a run its events have not ended, which no live
    process holds (``alive``: its lock is held), is dead, whatever its last status says."""
    return Status.DEAD if not alive and status.folded and not status.ended else status
