"""The README's SLURM script, run as SLURM would run it, without SLURM: a stand-in
`srun` starts its tasks with SLURM's variables (and reports their exit codes), a
stand-in `scontrol` names the node and records a requeue. SIGUSR1 to every task (what
--signal=USR1@90 does): each checkpoints at the same step and exits 75, the script
requeues itself, and the requeued script (the same command, --resume auto) finishes the
run with every epoch once."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import of, wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

FAKE_SRUN = """#!/bin/bash
# srun: $SLURM_NTASKS copies of the command, each with its SLURM_PROCID; the highest exit code
codes=()
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURMD_NODENAME=node01 "$@" &
  pids+=($!)
done
worst=0
for pid in "${pids[@]}"; do
  wait "$pid"; code=$?
  echo "$code" >> "$FAKE_SLURM/task-exit-codes"
  (( code > worst )) && worst=$code
done
exit $worst
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "$2" >> "$FAKE_SLURM/requeued" ;;
esac
"""


def readme_script() -> str:
    readme = (REPO / "README.md").read_text()
    (script,) = re.findall(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", readme, re.S)
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_slurm_script_checkpoints_on_sigusr1_requeues_and_the_requeued_job_finishes(tmp_path: Path) -> None:
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / "bin" / name).write_text(body)
        (fake / "bin" / name).chmod(0o755)
    runs = tmp_path / "runs"
    tiny = ("--device cpu --precision fp32 --dataset synthetic --weights none --image-size 8 --limit-train 320 "
            "--limit-test 16 --batch-size 8 --stage-epochs 2,0,0 --log-every 2")
    script = readme_script()
    assert "--device cuda --batch-size 64" in script and "/shared/runs" in script and "MASTER_PORT=29500" in script
    # Only what a CPU test machine needs differs: the device and size of the run, where runs go, a free port.
    script = (script.replace("--device cuda --batch-size 64", tiny).replace("/shared/runs", str(runs))
              .replace("MASTER_PORT=29500", f"MASTER_PORT={free_port()}").replace("srun python", f"srun {sys.executable}"))
    (tmp_path / "job.sh").write_text(script)
    job_id = str(os.getpid())  # its tasks are told apart from any other test's
    env = {**os.environ, "PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE_SLURM": str(fake), "SLURM_JOB_ID": job_id,
           "SLURM_JOB_NODELIST": "node01", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "OMP_NUM_THREADS": "1"}

    job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run = wait_for("the run directory", lambda: next(runs.glob("*-cifar-16gpu"), None) if runs.is_dir() else None)
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        tasks = tasks_of(job_id)
        assert len(tasks) == 2
        for pid in tasks:  # --signal=USR1@90: every task is warned
            os.kill(pid, signal.SIGUSR1)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 0, err
    assert (fake / "task-exit-codes").read_text().split() == ["75", "75"]
    assert (fake / "requeued").read_text().split() == [job_id]
    (stopped,) = of(run, "run_stopped")
    assert stopped["reason"] == "SIGUSR1" and stopped["checkpoint"]

    (fake / "task-exit-codes").unlink()
    again = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"},
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert (fake / "task-exit-codes").read_text().split() == ["0", "0"]
    assert (fake / "requeued").read_text().split() == [job_id]  # finished: not requeued again
    assert [s["world_size"] for s in of(run, "run_started")] == [2, 2]
    with (run / "metrics.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]


def tasks_of(job_id: str) -> list[int]:
    """The training tasks of the job (srun's children, each with its SLURM_PROCID)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and b"tui.worker" in cmdline and any(
            v.startswith(b"SLURM_PROCID=") for v in env
        ):
            found.append(int(entry.name))
    return found
