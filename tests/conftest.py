from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import RunConfig
from core.control import Control
from core.events import Event
from core.plan import PlanOptions, build_plan
from core.vocab import StopReason
from tui.cli import main


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most 4 (each imports torch, and the tests that
    start processes start several)."""
    return max(1, min(4, _cores()))


def pytest_configure(config: pytest.Config) -> None:
    """Workers share the cores instead of fighting over them: each worker, and every process
    a test starts, gets cores / workers threads (OpenMP threads that outnumber the cores
    spin, and a 2-core machine then runs at a fraction of its speed).

    Temporary directories go to memory where there is room: every tiny run fsyncs a few
    checkpoints of 50-140 MB (ResNet18's weights, and Adam's moments), which on this disk was
    about a second of waiting per run; on tmpfs an fsync costs nothing, and what is checked
    (the files, their contents) is the same.
    ``tmp_path_retention_policy = "failed"`` keeps only failed tests' directories there."""
    _temp_in_memory()
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):  # runs tests: not xdist's controller
        _settle_the_shared_heap()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, _cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def quick_rest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scripted run sends its history at once and then nothing; the dashboard's budget
    rests (every panel that moved draws) once no progress came for IDLE_S. A fifth of a
    second stands for a real run's three, so a test that waits for a settled screen does
    not wait three seconds for it. ``@pytest.mark.real_idle`` keeps the three seconds."""
    if request.node.get_closest_marker("real_idle") is None:
        monkeypatch.setattr("tui.dashboard.IDLE_S", 0.2)


# Modules that keep the sys.stdout of the moment they are imported (a global, a default
# argument). Imported lazily under a running app (a trainer's first run, a run's curves.png),
# they would keep Textual's print capture and, through it, that app with all its widgets,
# for the rest of the process.
STDOUT_KEEPERS = ("torchvision", "psutil", "matplotlib.figure")  # torch._dynamo's sympy; matplotlib's pyparsing


def _settle_the_shared_heap() -> None:
    """What every test shares (torch, torchvision, textual and the rest, over 400,000
    objects) imported now and frozen out of the collector's reach. Every full collection
    walked all of it, and each trainer starts with one: on machine E the two workers' full
    collections took 73 s of a 7.5-minute suite; frozen, 20 s. A trainer leaves a process's
    own freeze alone (core/train.py `settled_heap`)."""
    import gc
    import importlib

    for name in STDOUT_KEEPERS:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            importlib.import_module(name)
    import tui.app  # noqa: F401  (textual, rich, plotext: the dashboard's own imports)

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _textual_caches_released() -> Iterator[None]:
    """After a test, Textual's per-instance method cache (`StylesCache.get_inner_outer`, an
    lru_cache keyed on the instance) lets go of the test's widget caches and their rendered
    strips: held, up to 1,024 of them are some 380,000 objects for every collection to walk."""
    yield
    if "textual._styles_cache" in sys.modules:
        from textual._styles_cache import StylesCache

        clear = getattr(StylesCache.get_inner_outer, "cache_clear", None)
        if clear is not None:
            clear()


MEMORY_TEMP = Path("/dev/shm")
MEMORY_TEMP_ROOM = 8 << 30  # bytes free there before tests use it: a few runs at once, and room for the rest


def _temp_in_memory() -> None:
    """TMPDIR (for this process, its xdist workers and every process a test starts) on tmpfs,
    unless one is chosen already."""
    if "TMPDIR" in os.environ or not MEMORY_TEMP.is_dir() or not os.access(MEMORY_TEMP, os.W_OK | os.X_OK):
        return
    st = os.statvfs(MEMORY_TEMP)
    if st.f_bavail * st.f_frsize < MEMORY_TEMP_ROOM:
        return
    os.environ["TMPDIR"] = str(MEMORY_TEMP)
    tempfile.tempdir = None  # gettempdir() asks TMPDIR again


def tiny_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """Synthetic 8x8 data, 6 batches of 8 per epoch, one epoch per stage: seconds on a CPU."""
    plan_opts = overrides.pop("plan_opts", PlanOptions(stage_epochs="1,1,1", lrs="1e-2,1e-3,1e-3"))
    base: dict[str, Any] = dict(
        dataset="synthetic", weights="none", image_size=8, limit_train=48, limit_test=24,
        batch_size=8, log_every=2, device="cpu", precision="fp32", runs_root=str(tmp_path / "runs"), name="t",
        plan=build_plan(plan_opts),
    )
    base.update(overrides)
    return RunConfig(**base)


class Recorder:
    """An emit callback that keeps every event and can react to them."""

    def __init__(self, react: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self.react = react

    def __call__(self, e: Event) -> None:
        self.events.append(e)
        if self.react is not None:
            self.react(e)

    def kinds(self, skip: tuple[str, ...] = ("loading", "progress", "iter_losses", "checkpoint_saved", "system")) -> list[str]:
        return [e.kind for e in self.events if e.kind not in skip]

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    @property
    def run_dir(self) -> Path:
        return Path(next(e.run_dir for e in self.events if e.kind == "run_started"))


def train(config: RunConfig, react: Callable[[Event], None] | None = None,
          control: Control | None = None) -> tuple[StopReason, Recorder]:
    """Run the real Trainer in this thread; every event it emits is recorded."""
    from core.train import Trainer

    rec = Recorder(react)
    outcome = Trainer(config, rec, control or Control()).run()
    return outcome, rec


@pytest.fixture(scope="session")
def stopped_copy(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """A copy, in the test's own directory, of a real run stopped as its second stage starts
    (`tests.helpers.stopped_run`): trained once per test process, copied for every test that
    reads or changes one (a resume finds its run by where its checkpoint lies)."""
    from tests.helpers import stopped_run

    made: list[Path] = []

    def copy(tmp_path: Path) -> Path:
        if not made:
            made.append(stopped_run(tmp_path_factory.mktemp("stopped")))
        dest = tmp_path / "runs" / made[0].name
        shutil.copytree(made[0], dest, symlinks=True)
        return dest

    return copy


CIFAR_NAMES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny cifar-10-batches-py in torchvision's pickle format, with torchvision's table
    of published checksums pointed at these files for the length of the test."""
    from torchvision.datasets import CIFAR10

    root = tmp_path / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_NAMES:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["c"] * 10}))
    md5 = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in (*CIFAR_NAMES, "batches.meta")}
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n in CIFAR_NAMES[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["cbam-tui", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
