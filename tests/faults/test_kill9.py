"""kill -9 at every write step of an epoch's end (a fault point, not a timer), then
--resume: every epoch exactly once in metrics.csv and in the events, no temp file left,
and the same final weights as a run nobody interrupted."""

from __future__ import annotations

import csv
import json
import multiprocessing
import signal
from pathlib import Path

import pytest
import torch

from core.control import Control
from core.plan import PlanOptions
from core.vocab import StopReason
from tests.conftest import tiny_config, train

pytestmark = pytest.mark.slow
PLAN = PlanOptions(stage_epochs="1,1,1", lrs="1e-2,1e-3,1e-3")
IMAGES = 24  # 3 batches of 8 per epoch: a stop mid-epoch 1, then every epoch end, at half the compute of 6
POINTS = [
    "epoch-end:before-best.pt", "write:best.pt", "rename:best.pt",  # the best checkpoint
    "epoch-end:before-last.pt", "write:last.pt", "rename:last.pt",  # the last checkpoint
    "epoch-end:before-event",  # both written, the epoch not yet reported
    "append:events.jsonl",  # the first event after the resume
]


@pytest.fixture(scope="module")
def fork() -> multiprocessing.context.ForkServerContext:
    """Processes forked from a server that imported torch once (and never ran it): a real
    process to kill per case, without paying for the import each time."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["core.train", "tests.faults.test_kill9"])
    return context


def resume_until_killed(home: str, point: str) -> None:
    """In the forked process: resume the run with a kill -9 waiting at ``point``."""
    from core import faults

    faults._SPEC[point] = "kill"
    train(tiny_config(Path(home), resume=home))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    outcome, rec = train(tiny_config(tmp_path_factory.mktemp("ref"), limit_train=IMAGES, plan_opts=PLAN))
    assert outcome == StopReason.FINISHED
    return torch.load(rec.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_an_epoch_end_write_then_resume_gives_each_epoch_once(
    tmp_path: Path, point: str, reference: dict[str, torch.Tensor], fork: multiprocessing.context.ForkServerContext
) -> None:
    # A run stopped in epoch 1, so a checkpoint exists before the kill.
    control = Control()
    outcome, rec = train(
        tiny_config(tmp_path, limit_train=IMAGES, plan_opts=PLAN),
        lambda e: control.stop(StopReason.QUIT) if e.kind == "batch_logged" and e.global_step == 2 else None,
        control,
    )
    home = rec.run_dir
    killed = fork.Process(target=resume_until_killed, args=(str(home), point))
    killed.start()
    killed.join(300)
    assert killed.exitcode == -signal.SIGKILL

    outcome, _ = train(tiny_config(tmp_path, resume=str(home)))
    assert outcome == StopReason.FINISHED
    rows = list(csv.DictReader((home / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    events = [json.loads(x) for x in (home / "events.jsonl").read_text().splitlines() if x.startswith("{") and x.endswith("}")]
    assert [e["epoch"] for e in events if e["event"] == "epoch_ended"] == [1, 2, 3]
    leftovers = [p.name for p in (*home.iterdir(), *(home / "checkpoints").iterdir()) if ".tmp-" in p.name]
    assert leftovers == []
    final = torch.load(home / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], reference[k]) for k in reference)
