"""`compare` and `runs` as text, JSON and CSV when piped: the numbers, the configuration
values that differ, and damaged runs told on stderr while the others still print."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from core.events import RunFinished
from core.rundir import RunDir
from tests.conftest import cli
from tests.helpers import restamp
from tests.scripted import events

SCRIPT = list(events(epochs=4, batches=4, log_every=2))
STEP_S = 5.0  # between two events of a scripted run: its time is not the sum of its epochs' (42 s each)


def config(batch_size: int, lr: float) -> dict:
    return {"batch_size": batch_size, "seed": 0, "dataset": "synthetic",
            "plan": {"label": "default", "stages": [{"name": "warm up", "epochs": 4, "groups": [{"name": "new", "lr": lr}]}]}}


def finished_run(root: Path, name: str, cfg: dict, epochs: int) -> Path:
    """A finished run of ``epochs`` epochs (the scripted test accuracy rises every epoch)."""
    cut = [i for i, e in enumerate(SCRIPT) if type(e).__name__ == "EpochEnded"][epochs - 1] + 1
    run = RunDir.create_at(root / name)
    run.write_config(cfg)
    for e in [*SCRIPT[:cut], RunFinished(60.0, 61.0, 3, 12.0)]:
        run.write(e)
    run.close()
    restamp(run.path / "events.jsonl", STEP_S)
    return run.path



@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "runs"
    return finished_run(root, "fast", config(64, 1e-3), 4), finished_run(root, "slow", config(32, 3e-4), 2)


def test_compare_piped_prints_the_table_and_the_config_that_differs(two, capsys) -> None:
    a, b = two
    code, out, err = cli(capsys, "compare", str(a), str(b))  # capsys: stdout is no terminal
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].split() == ["run", "state", "best", "test", "acc", "at", "epoch", "epochs", "img/s", "time"]
    assert lines[2].split() == ["fast", "finished", "57.54%", "4", "4/50", "1,190", "2m30s"]
    assert lines[3].split() == ["slow", "finished", "45.48%", "2", "2/50", "1,190", "1m20s"]
    assert "differs: fast | slow" in lines
    assert "  batch_size: 64 | 32" in lines
    assert "  plan.stages.0.groups.0.lr: 0.001 | 0.0003" in lines
    assert len(lines) == 7 and "seed" not in out and "dataset" not in out  # equal values are not listed
    _, same, _ = cli(capsys, "compare", str(a), str(a.parent / "fast"), str(a), "--format", "text")
    assert same.count("fast") == 1  # one run named twice is one row


def test_compare_json_is_one_document_with_each_epoch(two, capsys) -> None:
    a, _ = two
    code, out, err = cli(capsys, "compare", str(a), "slow", "--runs-root", str(a.parent), "--format", "json")
    assert code == 0 and err == "", err
    doc = json.loads(out)
    fast, slow = doc["runs"]
    assert (fast["run"], fast["state"], fast["best_epoch"], fast["epochs_done"], fast["total_epochs"]) == (
        "fast", "finished", 4, 4, 50)
    assert fast["epochs"] == [1, 2, 3, 4] and slow["epochs"] == [1, 2]
    assert fast["best_test_acc"] == pytest.approx(57.5428538) == fast["test_acc"][-1]
    assert slow["test_loss"] == pytest.approx(fast["test_loss"][:2]) and fast["test_loss"][0] > fast["test_loss"][-1]
    assert doc["differs"] == {"batch_size": [64, 32], "plan.stages.0.groups.0.lr": [1e-3, 3e-4]}


def test_compare_csv_is_one_table_with_a_column_per_difference(two, capsys) -> None:
    a, b = two
    code, out, err = cli(capsys, "compare", str(a), str(b), "--format", "csv")
    assert code == 0 and err == "", err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["run"] for r in rows] == ["fast", "slow"]
    assert [r["batch_size"] for r in rows] == ["64", "32"]
    assert [r["plan.stages.0.groups.0.lr"] for r in rows] == ["0.001", "0.0003"]
    assert [r["epochs_done"] for r in rows] == ["4", "2"] and float(rows[1]["best_test_acc"]) == pytest.approx(45.4839452)
    assert "seed" not in rows[0]


def test_a_damaged_run_is_one_line_on_stderr_and_the_others_print(two, tmp_path: Path, capsys) -> None:
    a, b = two
    with open(b / "events.jsonl", "ab") as f:
        f.write(b'{"event":"epoch_ended","stage":"\x1b[31m"}\n\xff\xfe garbage\n')
    (b / "config.json").write_bytes(b"[1, 2")
    gone = finished_run(tmp_path / "runs", "gone", config(64, 1e-3), 1)
    (gone / "events.jsonl").unlink()
    os.mkfifo(gone / "events.jsonl")
    code, out, err = cli(capsys, "compare", str(a), str(b), str(gone))
    assert code == 1  # one run could not be read at all
    lines = out.splitlines()
    assert lines[2].split()[:3] == ["fast", "finished", "57.54%"]
    assert lines[3].split()[:3] == ["slow", "finished", "45.48%"]  # its valid lines still count
    assert lines[4].split()[:2] == ["gone", "unreadable"]
    notes = err.splitlines()
    assert len(notes) == 2 and all(n.startswith("cbam-tui: ") for n in notes), err
    assert "slow: cannot read" in notes[0] and "2 unreadable lines in events.jsonl" in notes[0]
    assert notes[1].startswith("cbam-tui: gone: ") and "\x1b" not in err
    assert "differs" not in out  # only one run's config could be read
    code, out, _ = cli(capsys, "compare", str(a), str(gone), "--format", "json")
    assert code == 1 and [r["state"] for r in json.loads(out)["runs"]] == ["finished", "unreadable"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("fast", "slow", "--format", "xml"), "--format takes text, json or csv, not 'xml'"),
        (("fast", "--format", "json"), "compare needs at least two runs"),
        (("fast", "nosuch"), "nosuch is neither a run directory nor the name of a run under"),
    ],
)
def test_bad_arguments_are_one_line(two, capsys, args: tuple[str, ...], said: str) -> None:
    a, _ = two
    code, out, err = cli(capsys, "compare", *args, "--runs-root", str(a.parent))
    assert code != 0 and out == "" and len(err.splitlines()) == 1 and said in err, err


def test_runs_takes_the_same_formats(two, capsys) -> None:
    a, _ = two
    root = str(a.parent)
    code, out, _ = cli(capsys, "runs", "--runs-root", root, "--format", "json")
    assert code == 0
    listed = {r["run"]: r for r in json.loads(out)["runs"]}
    assert set(listed) == {"fast", "slow"} and listed["fast"]["state"] == "finished"
    assert listed["fast"]["epochs_done"] == 4 and listed["slow"]["best_acc"] == pytest.approx(45.4839452)
    code, out, _ = cli(capsys, "runs", "--runs-root", root, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {(r["run"], r["state"], r["epochs_done"]) for r in rows} == {
        ("fast", "finished", "4"), ("slow", "finished", "2")}
    code, out, _ = cli(capsys, "runs", "--runs-root", root)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["run", "state"] and "fast" in out
    code, _, err = cli(capsys, "runs", "--runs-root", root, "--format", "yaml")
    assert code == 1 and "--format takes text, json or csv" in err


def test_compare_and_runs_give_a_run_the_same_time(two, capsys) -> None:
    """One owner of a run's time (`RunState.run_seconds`): compare summed its epochs' seconds
    (4 x 42 s = 2m48s) where runs gave the time from its first event to its last (30 x 5 s)."""
    a, b = two
    root = str(a.parent)
    _, out, _ = cli(capsys, "runs", "--runs-root", root, "--format", "json")
    listed = {r["run"]: r["seconds"] for r in json.loads(out)["runs"]}
    _, out, _ = cli(capsys, "compare", str(a), str(b), "--format", "json")
    compared = {r["run"]: r["seconds"] for r in json.loads(out)["runs"]}
    assert listed == compared == {"fast": 30 * STEP_S, "slow": 16 * STEP_S}
    rows = list(csv.DictReader(io.StringIO(cli(capsys, "compare", str(a), str(b), "--format", "csv")[1])))
    assert [float(r["seconds"]) for r in rows] == [30 * STEP_S, 16 * STEP_S]
    runs_text = cli(capsys, "runs", "--runs-root", root)[1].splitlines()
    compare_text = cli(capsys, "compare", str(a), str(b))[1].splitlines()
    assert [line.split()[-2] for line in runs_text[2:4]] == [line.split()[-1] for line in compare_text[2:4]] == [
        "2m30s", "1m20s"]


def test_csv_spells_booleans_as_json_does(two, capsys) -> None:
    """`runs` wrote Python's True/False; both tables now say true/false, as their JSON does."""
    a, b = two
    for run, compiled in ((a, True), (b, False)):
        (run / "config.json").write_text(json.dumps({**config(64, 1e-3), "compile": compiled}))
    _, out, _ = cli(capsys, "runs", "--runs-root", str(a.parent), "--format", "csv")
    assert [r["resumable"] for r in csv.DictReader(io.StringIO(out))] == ["false", "false"]
    _, out, _ = cli(capsys, "compare", str(a), str(b), "--format", "csv")
    assert [r["compile"] for r in csv.DictReader(io.StringIO(out))] == ["true", "false"]
    _, out, _ = cli(capsys, "compare", str(a), str(b), "--format", "json")
    assert json.loads(out)["differs"]["compile"] == [True, False]


# --- compare --metric -------------------------------------------------------------------


def loss_lines() -> list:
    """The scripted run's loss lines (2 an epoch)."""
    return [e for e in SCRIPT if type(e).__name__ == "BatchLogged"]


def test_compare_metric_in_text_is_a_table_with_a_column_per_run(two, capsys) -> None:
    a, b = two
    code, out, err = cli(capsys, "compare", str(a), str(b), "--metric", "train_loss")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    at = lines.index("train_loss:")
    assert lines[at + 1].split() == ["epoch", "fast", "slow"]
    rows = [line.split() for line in lines[at + 3 :]]
    epochs = [e for e in SCRIPT if type(e).__name__ == "EpochEnded"]
    assert rows == [[str(e.epoch), f"{e.train_loss:.6g}", f"{e.train_loss:.6g}" if e.epoch <= 2 else "-"]
                    for e in epochs[:4]]
    assert "  batch_size: 64 | 32" in lines[:at]  # the table and the differences still come first


def test_compare_metric_in_csv_is_the_one_table_by_step(two, capsys) -> None:
    a, b = two
    code, out, err = cli(capsys, "compare", str(a), str(b), "--metric", "lr/new", "--format", "csv")
    assert code == 0 and err == "", err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["step", "fast", "slow"]
    logged = loss_lines()
    assert [int(r["step"]) for r in rows] == [e.global_step for e in logged[:8]]
    assert [float(r["fast"]) for r in rows] == pytest.approx([e.lrs[0] for e in logged[:8]])
    assert [r["slow"] for r in rows][4:] == [""] * 4 and float(rows[3]["slow"]) == pytest.approx(logged[3].lrs[0])


def test_compare_json_holds_every_scalar_or_the_one_asked_for(two, capsys) -> None:
    a, b = two
    code, out, err = cli(capsys, "compare", str(a), str(b), "--format", "json")
    assert code == 0 and err == "", err
    fast = json.loads(out)["runs"][0]
    assert list(fast["metrics"]) == ["test_acc", "test_loss", "train_acc", "train_loss", "images_per_second",
                                     "seconds", "batch_loss", "lr/new", "grad_norm/new"]
    assert fast["metrics"]["test_acc"] == {"epoch": [1, 2, 3, 4], "value": fast["test_acc"]}
    logged = loss_lines()[:8]
    assert fast["metrics"]["batch_loss"]["step"] == [e.global_step for e in logged]
    assert fast["metrics"]["grad_norm/new"]["value"] == pytest.approx([e.grad_norms[0] for e in logged])
    code, out, _ = cli(capsys, "compare", str(a), str(b), "--format", "json", "--metric", "seconds")
    doc = json.loads(out)
    assert code == 0 and doc["metric"] == "seconds"
    assert [r["metrics"] for r in doc["runs"]] == [{"seconds": {"epoch": [1, 2, 3, 4], "value": [42.0] * 4}},
                                                  {"seconds": {"epoch": [1, 2], "value": [42.0] * 2}}]


def test_an_unknown_metric_is_one_line_naming_them_and_exit_2(two, capsys) -> None:
    a, b = two
    for fmt in ((), ("--format", "csv")):
        code, out, err = cli(capsys, "compare", str(a), str(b), "--metric", "acc\x1b[31m", *fmt)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and "\x1b" not in err, err
        assert "no metric 'acc" in err and "test_acc, test_loss, train_acc" in err and "lr/new, grad_norm/new" in err


def test_a_resumed_run_has_each_step_once(tmp_path: Path, capsys) -> None:
    """A resume redoes the steps after its checkpoint: the loss lines of the first try past it are dropped."""
    import msgspec

    from core.events import BatchLogged, RunStarted

    start = next(e for e in SCRIPT if isinstance(e, RunStarted))
    cut = [i for i, e in enumerate(SCRIPT) if type(e).__name__ == "EpochEnded"][1] + 1
    first_epoch_end = next(e for e in SCRIPT if type(e).__name__ == "EpochEnded")
    again = msgspec.structs.replace(start, start_epoch=2, global_step=first_epoch_end.global_step, resumed_from="x")
    redo = [e for e in SCRIPT[:cut] if isinstance(e, BatchLogged) and e.epoch == 2]
    run = RunDir.create_at(tmp_path / "resumed")
    run.write_config(config(64, 1e-3))
    for e in [*SCRIPT[:cut], again, *[msgspec.structs.replace(e, loss=e.loss + 1) for e in redo]]:
        run.write(e)
    run.close()
    other = finished_run(tmp_path, "other", config(64, 1e-3), 2)
    code, out, err = cli(capsys, "compare", str(run.path), str(other), "--metric", "batch_loss", "--format", "json")
    assert code == 0, err
    resumed = json.loads(out)["runs"][0]["metrics"]["batch_loss"]
    logged = loss_lines()[:4]
    assert resumed["step"] == [e.global_step for e in logged]  # each step once
    assert resumed["value"] == pytest.approx([e.loss + (e.epoch == 2) for e in logged])  # the redone ones
