"""The command line: one-line errors, no traceback, start-up hygiene, the README's options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, tiny_config, train
from tests.helpers import run_flags

ROOT = Path(__file__).resolve().parents[1]


TINY = ("--image-size", "8", "--limit-train", "16", "--limit-test", "8", "--batch-size", "8", "--stage-epochs", "1,0,0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dataset", "mnist"), "unknown data set 'mnist'"),
        (("--dataset", ""), "unknown data set ''"),
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--batch-size", "-3"), "--batch-size must be at least 1"),
        (("--batch-size", "abc"), "Invalid value for '--batch-size'"),
        (("--limit-train", "0"), "--limit-train must be at least 2"),
        (("--limit-test", "-1"), "--limit-test must be at least 1"),
        (("--log-every", "0"), "--log-every must be at least 1"),
        (("--image-size", "4"), "--image-size must be at least 8"),
        (("--image-size", "100000"), "--image-size must be at most 512"),
        (("--device", "tpu"), "unknown --device 'tpu'"),
        (("--device", "cuda:x"), "unknown --device"),
        (("--precision", "fp8"), "unknown --precision 'fp8'"),
        (("--augment", "wild"), "unknown --augment 'wild'"),
        (("--name", "a/b"), "--name must be one path component"),
        (("--name", ""), "--name must be"),
        (("--name", ".."), "--name must be"),
        (("--data-dir", " "), "--data-dir must be a path"),
        (("--batch-size", "1e20"), "Invalid value for '--batch-size'"),
        (("--batch-size", "100000000000000000000"), "--batch-size must be at most 65536"),
        (("--seed", "100000000000000000000000"), "--seed must be at most"),
        (("--moments", "sometimes"), "--moments must be one of keep, fresh"),
        (("--limit-train", "1"), "--limit-train must be at least 2"),
        (("--weights", "/no/such/file.pth"), "weights file /no/such/file.pth does not exist"),
        # Control characters typed into a value are shown escaped: the error stays one line.
        (("--weights", "w\x1e\n.pth"), "weights file w\\x1e\\n.pth does not exist"),
        (("--stage-epochs", "1,2"), "2 values but the plan has 3"),
        (("--stage-epochs", "0,0,0"), "nothing to train"),
        (("--stage-epochs", "1,-1,1"), "-1 epochs"),
        (("--lrs", "a,b,c"), "--lrs takes numbers"),
        (("--lrs", "1e-3,0,1e-5"), "learning rate must be a number from 1e-12 to 10, not 0"),
        (("--lrs", "1e-3,1e308,1e-5"), "learning rate must be a number from 1e-12 to 10, not 1e+308"),
        (("--new-lr-mult", "-1"), "positive"),
        (("--new-lr-mult", "x"), "Invalid value for '--new-lr-mult'"),
        (("--preset", "nope"), "unknown preset 'nope'"),
        (("--frozen-bn", "maybe"), "--frozen-bn must be one of train, eval"),
        (("--plan", "/no/plan.toml"), "plan file /no/plan.toml does not exist"),
        (("--bogus",), "No such option: --bogus"),
        (("--classes", "dog"), "--classes needs at least two classes"),
        (("--classes", "dog,,cat"), "--classes needs class names separated by commas"),
        (("--classes", "dog,cat,dog"), "--classes names 'dog' twice"),
        (("--preset", ""), "unknown preset ''"),
        (("--weights", ""), "--weights takes imagenet, none or a file's path, not ''"),
        (("--weights", "/dev/zero"), "weights file /dev/zero is not a regular file"),
        (("--schedule", "warmup-cosine:"), "the warm-up of 'warmup-cosine:' must be a percent"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(capsys, "run", "--weights", "none", "--runs-root", str(tmp_path / "runs"), *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cbam-tui: error: ") and message in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_missing_data_and_no_network_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli(capsys, "run", "--weights", "none", "--runs-root", str(tmp_path), "--no-download", "--data-dir", str(tmp_path / "c"))
    assert code == 1 and "CIFAR-10 is not in" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "run", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"), "--weights", "none", "--runs-root", str(tmp_path))
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1

    import urllib.error

    import torch.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    code, _, err = cli(capsys, "demo", "--weights", "imagenet", "--runs-root", str(tmp_path), *TINY)
    assert code == 1 and "cannot download the ImageNet weights" in err and "--weights none" in err
    assert len(err.strip().splitlines()) == 1


def test_a_class_the_data_lacks_is_one_line_naming_what_it_has(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "demo", "--runs-root", str(tmp_path), "--classes", "disk,unicorn", *TINY)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--classes names 'unicorn', which the" in err and "it has disk, square" in err
    assert not list(tmp_path.glob("*/checkpoints/*.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "demo", "--device", "cuda", "--runs-root", str(tmp_path), *TINY)
    assert code == 1 and "no CUDA device is available" in err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny run, stopped in its first stage."""
    from core.control import Control
    from core.vocab import StopReason

    tmp = tmp_path_factory.mktemp("resume")
    control = Control()
    outcome, rec = train(
        tiny_config(tmp), lambda e: control.stop(StopReason.QUIT) if e.kind == "batch_logged" else None, control
    )
    assert outcome == StopReason.QUIT
    return rec.run_dir


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batch-size", "16"), "--batch-size cannot be changed when resuming: the run continues with its saved settings (it has 8)"),
        (("--stage-epochs", "2,2,2"), "--stage-epochs cannot be changed when resuming"),
        (("--lrs", "1e-2,1e-3,1e-3"), "--lrs cannot be changed when resuming"),
        (("--preset", "seed"), "--preset cannot be changed"),
        (("--runs-root", "elsewhere"), "--runs-root does not apply when resuming a run directory"),
        (("--run-dir", "elsewhere"), "--run-dir does not apply when resuming a run directory"),
    ],
)
def test_resume_refuses_what_it_cannot_change(capsys, stopped_run: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = cli(capsys, "demo", "--resume", str(stopped_run), *args)
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_resume_takes_what_may_change_and_the_same_value_of_what_may_not(
    capsys, stopped_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tui.launch

    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    code, _, err = cli(capsys, "demo", "--headless", "--resume", str(stopped_run), "--batch-size", "8",
                       "--stage-epochs", "1,1,1", "--log-every", "50", "--no-download", "--device", "cpu")
    assert code == 0, err
    (config,) = started
    assert (config.batch_size, config.log_every, config.download, config.resume) == (
        8, 50, False, str(stopped_run / "checkpoints" / "last.pt"))


def test_resume_keeps_what_was_not_typed(capsys, stopped_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --resume` of a demo run keeps the demo's --log-every: only typed options change a run."""
    import tui.launch
    from core.checkpoint import read_config

    saved = read_config(stopped_run / "checkpoints" / "last.pt")
    assert saved.log_every != 100  # run's default: a resume that took it would show here
    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    code, _, err = cli(capsys, "run", "--headless", "--resume", str(stopped_run))
    assert code == 0, err
    (config,) = started
    assert (config.log_every, config.threads, config.device) == (saved.log_every, saved.threads, saved.device)


def test_resume_errors(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "run", "--resume", "/no/run")
    assert code == 1 and err.strip() == "cbam-tui: error: nothing to resume at /no/run: no such run directory or checkpoint"
    (tmp_path / "plain").mkdir()
    code, _, err = cli(capsys, "run", "--resume", str(tmp_path / "plain"))
    assert code == 1 and "is not a cbam-tui run directory" in err


def test_a_finished_run_is_refused_before_a_background_child_or_a_launcher_touches_it(capsys, tmp_path: Path) -> None:
    _, rec = train(tiny_config(tmp_path, limit_train=16))  # finished: 2 batches an epoch are enough
    home = rec.run_dir
    before = {p: p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}
    for how in (("--detach",), ("--nproc-per-node", "2", "--headless"), ("--headless",)):
        code, out, err = cli(capsys, "run", "--resume", str(home), *how)
        assert (code, err) == (1, f"cbam-tui: error: the run in {home} has already finished every stage; "
                                  "nothing to resume\n"), (how, out, err)
        assert {p: p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()} == before, how  # not one byte


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--device", "cuda:0"), "--device cuda:0 names one GPU; several processes take GPUs 0..N-1"),
        (("--device", "mps"), "--device mps cannot be shared by several processes: use cuda or cpu"),
        (("--device", "cpu", "--sync-bn"), "--sync-bn needs CUDA GPUs"),
        (("--device", "auto", "--sync-bn"), "--sync-bn needs CUDA GPUs"),
        (("--device", "cuda"), "no CUDA device is available here"),
    ],
)
def test_a_device_several_processes_cannot_share_is_one_line_before_anything_starts(
    capsys, tmp_path: Path, args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if args[1] in ("auto", "cuda"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a machine without CUDA says
    for how in ((), ("--detach",)):
        if how and args[1] not in ("cuda:0", "mps", "cpu"):
            continue  # the GPUs a detached launcher needs are counted by its child, which imports torch
        code, _, err = cli(capsys, "run", "--dataset", "synthetic", "--weights", "none", *TINY,
                           "--runs-root", str(tmp_path / "runs"), "--nproc-per-node", "2", *args, *how)
        assert code == 1 and err.count("\n") == 1 and message in err, (how, err)
        assert not (tmp_path / "runs").exists()  # no run directory, no process


def test_demo_takes_a_plan_file(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tui.launch

    plan = tmp_path / "plan.toml"
    plan.write_text('[[stage]]\nname = "all"\nepochs = 2\n[[stage.group]]\nmodules = ["all"]\nlr = 5e-4\n')
    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    code, _, err = cli(capsys, "demo", "--headless", "--plan", str(plan), "--runs-root", str(tmp_path))
    assert code == 0, err
    (config,) = started
    assert [(s.epochs, s.groups[0].lr) for s in config.plan.stages] == [(2, 5e-4)]
    assert config.dataset == "synthetic" and config.batch_size == 32  # the rest of demo's defaults hold


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and re.fullmatch(r"cbam-tui \d+\.\d+\.\d+\n", out)
    code, out, _ = cli(capsys, "-h")
    assert code == 0 and "demo" in out and "summary" in out
    code, out, _ = cli(capsys, "run", "--help")
    flat = " ".join(out.split())  # help text wraps with the terminal's width
    assert code == 0 and "--stage-epochs" in flat and "[default: 5,15,30]" in flat
    code, out, _ = cli(capsys, "demo", "--help")
    assert code == 0 and "[default: synthetic]" in " ".join(out.split())


def test_summary_prints_the_tree_and_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "summary", "--preset", "seed")
    assert code == 0
    assert "◆ CBAM (cbam1)" in out and "cbam_layer" not in out and "[1, 64, 32, 32]" in out
    assert "11,217,874" in out and "Params size (MB): 44.87" in out and "frozen" in out and "lr 1e-3" in out


def test_summary_run_and_demo_refuse_a_fifo_for_a_plan_at_once(capsys, tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "plan.toml"
    os.mkfifo(fifo)
    for command in ("summary", "run", "demo"):
        got: list[tuple[int, str, str]] = []
        worker = threading.Thread(target=lambda c=command, got=got: got.append(cli(capsys, c, "--plan", str(fifo))), daemon=True)
        worker.start()
        worker.join(30)
        if worker.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let it go, then fail
            pytest.fail(f"{command} --plan FIFO hangs")
        ((code, _, err),) = got
        assert code == 1 and err == f"cbam-tui: error: plan file {fifo} is a FIFO, not a regular file\n"


def test_summary_shows_a_plans_names_as_they_are(capsys, tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("[[stage]]\nname = '[bold]loud[/] [/nope]'\nepochs = 1\n[[stage.group]]\nmodules = ['fc']\nlr = 1e-3\n")
    code, out, err = cli(capsys, "summary", "--plan", str(path))
    assert code == 0, err
    assert "[bold]loud[/]" in "".join(out.split())  # never taken for rich markup (which "[/nope]" would break)


def _subprocess(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout


class _Planted:
    """Unpickled, it would run a command: what a hostile weights file or checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_file_that_is_more_than_tensors_is_one_sentence_that_never_advises_loading_it_unsafely(
    capsys, tmp_path: Path
) -> None:
    import pickle

    marker = tmp_path / "ran"
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))  # torch warns about its protocol
    torch.save({"x": _Planted(marker)}, tmp_path / "planted.pt")
    for name in ("plain.pt", "planted.pt"):
        for how in (("--resume", str(tmp_path / name)),
                    ("--weights", str(tmp_path / name), "--dataset", "synthetic", *TINY)):
            code, _, err = cli(capsys, "run", "--headless", "--runs-root", str(tmp_path / "runs"), *how)
            assert code == 1 and err.count("\n") == 1, (how, err)
            assert "cannot read" in err and "weights_only" not in err and "False" not in err, err
    assert not marker.exists()  # no code ran


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
@pytest.mark.parametrize("args", [("runs", "--runs-root", "."), ("--help",), ("--version",)])
def test_a_full_standard_output_is_one_line_naming_it(tmp_path: Path, args: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tui.cli", *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stderr) == (1, "cbam-tui: error: cannot write to standard output: "
                                                 "No space left on device\n")


def test_help_does_not_import_torch() -> None:
    out = _subprocess(
        "import sys\nsys.argv = ['cbam-tui', 'run', '--help']\nfrom tui.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)"
    )
    assert "TORCH False" in out


def test_core_imports_no_ui_code() -> None:
    out = _subprocess(
        "import sys, pkgutil, importlib, core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n    importlib.import_module('core.' + m.name)\n"
        "ui = sorted({n.split('.')[0] for n in sys.modules} & {'textual', 'textual_plotext', 'rich', 'tui', 'plotext'})\n"
        "print('UI', ui)"
    )
    assert "UI []" in out


def test_the_readme_documents_every_option() -> None:
    readme = (ROOT / "README.md").read_text()
    flags = [flag for flag in run_flags() if flag != "--help"]
    assert len(flags) > 25
    for flag in flags:
        assert f"`{flag}" in readme, f"{flag} is missing from the README's option table"
