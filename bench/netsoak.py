"""Two machines on one, and the ways they fail: a scripted soak of the README's
multi-node commands (run as root).

Two network namespaces are the two "nodes" (a veth pair, 10.77.0.1/24 and
10.77.0.2/24, nothing else reachable), each with a host name of its own; the run
directory is on the file system both see, as a shared file system would be. Each
node runs the README's torchrun command (c10d rendezvous at 10.77.0.1, gloo, CPU, one
process per node) on tiny synthetic data, or, for the SIGUSR1 faults, the README's
SLURM script's command as srun would start it (SLURM's variables, one task per node,
requeued when every task exits 75). Each fault is one scenario:

    a1  node 2 killed mid-epoch (kill -9 of every process in its namespace); resume on node 1 alone
    a2  node 1 killed (the rendezvous store's and rank 0's machine); resume on both
    b   the link cut (veth down) mid-epoch; link up, resume on both
    c   one rank frozen with SIGSTOP; later continued with SIGCONT; resume on both
    d1  SIGUSR1 twice in quick succession to every task; the job requeued
    d2  SIGUSR1 during the evaluation
    d3  SIGUSR1 while rank 0 writes a checkpoint (the write slowed by a fault point)
    e   rank 0's disk full (a small tmpfs as the runs root, filled while the ranks train)

For each: seconds from the fault to each process's end, the exit codes, the line the
survivors print, what the run directory says, and the epochs in metrics.csv after the
resume (each must appear once). The results go to bench/netsoak-results.json and a
table on stdout (the README's Reliability table quotes the last run).

    sudo .venv/bin/python bench/netsoak.py                   # every scenario, --stall-timeout 10
    sudo .venv/bin/python bench/netsoak.py --only a1,c --stall-timeout 20
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
TAG = f"{os.getpid() % 100000}"
NS = (f"cbam{TAG}n1", f"cbam{TAG}n2")
VETH = (f"cb{TAG}v1", f"cb{TAG}v2")
ADDR = ("10.77.0.1", "10.77.0.2")
PORT = 29500
END_S = 300.0  # a process still running this long after a fault is reported as not ending (and killed)
# What defines the run (typed again on a requeue, so equal to the run's: no --lrs, which a resume refuses).
TRAIN = ["--dataset", "synthetic", "--weights", "none", "--device", "cpu", "--precision", "fp32", "--image-size", "8",
         "--limit-train", "1600", "--limit-test", "400", "--batch-size", "8", "--log-every", "5",
         "--stage-epochs", "3,0,0"]
EPOCHS = [1, 2, 3]
MID_BATCH = 30  # of 100 in an epoch: "mid-epoch"
QUICK = {"--limit-train": "480", "--limit-test": "64", "--stage-epochs": "2,0,0"}  # --quick: the test suite's size
RDZV_CONF: list[str] = os.environ.get("NETSOAK_RDZV_CONF", "").split()


def run(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


@dataclass
class Outcome:
    """One scenario's figures."""

    fault: str
    stop_s: dict[str, float | None] = field(default_factory=dict)  # process -> seconds from the fault to its end
    exit: dict[str, int | None] = field(default_factory=dict)
    line: str = ""  # what a survivor printed (its cbam-tui: error: line)
    run_says: str = ""  # the run's last event
    resume_exit: dict[str, int | None] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)  # metrics.csv after the resume
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the expectations that did not hold

    def expect(self, what: str, holds: bool) -> None:
        if not holds:
            self.failed.append(what)

    @property
    def ok(self) -> bool:
        return not self.failed and self.epochs == EPOCHS and all(v is not None for v in self.stop_s.values())


class Node:
    """One process tree started in a node's namespace (a torchrun agent or an srun task)."""

    def __init__(self, index: int, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.index, self.name = index, f"node{index + 1}"
        self.log = log
        self.ended_at: float | None = None
        out = log.open("w")
        command = ["ip", "netns", "exec", NS[index], "unshare", "--uts", "sh", "-c",
                   f'hostname {self.name} && exec "$@"', self.name, *argv]
        self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                                     env={**os.environ, "GLOO_SOCKET_IFNAME": VETH[index], "OMP_NUM_THREADS": "1",
                                          "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **env})
        out.close()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        self.proc.wait()
        self.ended_at = time.monotonic()

    def error_line(self) -> str:
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.startswith("cbam-tui: error:")]
        return lines[0] if lines else ""


class Machines:
    """The two namespaces and the link between them."""

    def __enter__(self) -> Machines:
        for ns in NS:
            run("ip", "netns", "add", ns)
            # Each node's host name resolves to its address there (ip netns exec mounts this over /etc/hosts):
            # the rendezvous host knows itself, and gloo finds the interface to use.
            hosts = Path("/etc/netns") / ns / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(f"127.0.0.1 localhost\n{ADDR[0]} node1\n{ADDR[1]} node2\n")
        run("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        for i, ns in enumerate(NS):
            run("ip", "link", "set", VETH[i], "netns", ns)
            run("ip", "-n", ns, "addr", "add", f"{ADDR[i]}/24", "dev", VETH[i])
            run("ip", "-n", ns, "link", "set", VETH[i], "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for i in range(2):
            self.kill_all(i)
        for ns in NS:
            run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def pids(self, i: int) -> list[int]:
        return [int(p) for p in run("ip", "netns", "pids", NS[i], check=False).split()]

    def kill_all(self, i: int, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids(i):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def link(self, up: bool) -> None:
        run("ip", "-n", NS[0], "link", "set", VETH[0], "up" if up else "down")

    def worker(self, i: int) -> int | None:
        """The training process (it has RANK in its environment) of node ``i``."""
        for pid in self.pids(i):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(v.startswith(b"RANK=") for v in env) and b"tui.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        return None


def events(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "events.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_for(what: str, found: Callable[[], Any], timeout: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"never saw {what}")


def mid_epoch_2(run_dir: Path) -> bool:
    return any(e["event"] == "batch_logged" and e["epoch"] == 2 and e["batch"] >= MID_BATCH for e in events(run_dir))


def evaluating(run_dir: Path, epoch: int) -> bool:
    try:
        progress = json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(progress.get("event") == "evaluating" and progress.get("epoch") == epoch)


def metrics_epochs(run_dir: Path) -> list[int]:
    try:
        with (run_dir / "metrics.csv").open() as f:
            return [int(row["epoch"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


def last_word(run_dir: Path) -> str:
    for e in reversed(events(run_dir)):
        if e["event"] in ("run_failed", "run_stopped", "run_finished"):
            return f"{e['event']}: " + str(e.get("message") or e.get("detail") or e.get("reason") or "")
    return "(no final event)"


class Soak:
    def __init__(self, machines: Machines, work: Path, stall: int) -> None:
        self.m, self.work, self.stall = machines, work, stall

    # --- the two command forms -------------------------------------------------------
    def torchrun(self, name: str, nodes: tuple[int, ...], run_dir: Path, resume: bool = False) -> list[Node]:
        """The README's multi-node command, on each of ``nodes`` (``resume``: --resume the run)."""
        started = []
        what = ["--resume", str(run_dir), "--device", "cpu"] if resume else ["--run-dir", str(run_dir), *TRAIN]
        for i in nodes:
            argv = [PY, "-m", "torch.distributed.run", "--nnodes", str(len(nodes)), "--nproc-per-node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{ADDR[nodes[0]]}:{PORT}", "--rdzv-id", name,
                    "--local-addr", ADDR[i], *RDZV_CONF, "-m", "tui.worker", *what, "--stall-timeout", str(self.stall)]
            started.append(Node(i, argv, {}, self.work / f"{name}-node{i + 1}.log"))
        return started

    def srun(self, name: str, root: Path, attempt: int, env: dict[str, str] | None = None) -> list[Node]:
        """The README's SLURM script's command, one task per node, as srun starts it."""
        tasks = []
        for i in range(2):
            slurm = {"SLURM_PROCID": str(i), "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": str(i),
                     "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": f"{TAG}{name}", "SLURM_RESTART_COUNT": str(attempt),
                     "SLURMD_NODENAME": f"node{i + 1}", "MASTER_ADDR": ADDR[0], "MASTER_PORT": str(PORT)}
            argv = [PY, "-m", "tui.worker", "--name", name, "--runs-root", str(root), "--resume", "auto", *TRAIN,
                    "--stall-timeout", str(self.stall)]
            tasks.append(Node(i, argv, {**slurm, **(env or {})}, self.work / f"{name}-{attempt}-task{i}.log"))
        return tasks

    # --- measuring -----------------------------------------------------------------------
    def ended(self, out: Outcome, nodes: list[Node], since: float, label: str = "") -> None:
        """Wait for each node's process to end; seconds from ``since``, exit codes."""
        for node in nodes:
            deadline = since + END_S
            while node.ended_at is None and time.monotonic() < deadline:
                time.sleep(0.05)
            key = node.name + label
            if node.ended_at is None:
                out.stop_s[key], out.exit[key] = None, None
                out.notes.append(f"{key} did not end within {END_S:.0f} s: killed")
                self.m.kill_all(node.index)
                node.proc.wait()
            else:
                out.stop_s[key], out.exit[key] = round(node.ended_at - since, 1), node.proc.returncode
            out.line = out.line or node.error_line()

    def gone(self, out: Outcome, pid: int, since: float, key: str) -> None:
        """Wait for one process (a node's worker) to end; seconds from ``since``."""
        deadline = since + END_S
        while time.monotonic() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.05)
        else:
            out.stop_s[key] = None
            out.notes.append(f"{key} did not end within {END_S:.0f} s")
            return
        out.stop_s[key] = round(time.monotonic() - since, 1)

    def failed_as_said(self, out: Outcome, run_dir: Path) -> None:
        """The survivors' line names the silent rank (or the store), and the run says the same."""
        out.run_says = last_word(run_dir)
        said = out.line.removeprefix("cbam-tui: error: ")
        out.expect("a survivor's line naming a rank or the store", "rank " in said or "store" in said)
        out.expect("the run directory says it", bool(said) and said in out.run_says)

    def resume(self, out: Outcome, run_dir: Path, nodes: tuple[int, ...], name: str) -> None:
        started = self.torchrun(f"{name}-resume", nodes, run_dir, resume=True)
        for node in started:
            node.proc.wait(timeout=600)
            out.resume_exit[node.name] = node.proc.returncode
        out.epochs = metrics_epochs(run_dir)
        out.expect("the resume ends with exit 0", all(c == 0 for c in out.resume_exit.values()))

    # --- the scenarios -----------------------------------------------------------------
    def node_killed(self, name: str, victim: int, resume_on: tuple[int, ...]) -> Outcome:
        out = Outcome(f"node {victim + 1} killed mid-epoch (kill -9 of every process in its namespace)")
        run_dir = self.work / name / "run"
        nodes = self.torchrun(name, (0, 1), run_dir)
        wait_for("the middle of epoch 2", lambda: mid_epoch_2(run_dir))
        out.notes.append(f"killed node{victim + 1}'s worker, rank {self.rank_of(victim)}")
        t = time.monotonic()
        self.m.kill_all(victim)
        self.ended(out, [n for n in nodes if n.index != victim], t)
        nodes[victim].proc.wait()
        self.failed_as_said(out, run_dir)
        self.resume(out, run_dir, resume_on, name)
        return out

    def rank_of(self, i: int) -> str:
        pid = self.m.worker(i)
        if pid is None:
            return "?"
        env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
        return env.get(b"RANK", b"?").decode()

    def link_cut(self) -> Outcome:
        """Both sides end on their own; torchrun's agent on the cut-off node waits in a
        call to its rendezvous store until the link is back (measured after that)."""
        out = Outcome("the link cut (veth down) mid-epoch")
        run_dir = self.work / "b" / "run"
        nodes = self.torchrun("b", (0, 1), run_dir)
        wait_for("the middle of epoch 2", lambda: mid_epoch_2(run_dir))
        worker = self.m.worker(1)
        assert worker is not None
        t = time.monotonic()
        self.m.link(up=False)
        self.ended(out, [nodes[0]], t)
        self.gone(out, worker, t, "node2's worker")
        line = nodes[1].error_line()
        out.notes.append(f"node2's worker said: {line.removeprefix('cbam-tui: error: ')}")
        out.expect("node2's worker names the store or a rank", "store" in line or "rank " in line)
        time.sleep(2)
        t = time.monotonic()
        self.m.link(up=True)
        self.ended(out, [nodes[1]], t, "'s agent after the link came back")
        self.failed_as_said(out, run_dir)
        self.resume(out, run_dir, (0, 1), "b")
        return out

    def frozen(self) -> Outcome:
        out = Outcome("a rank frozen with SIGSTOP (node 2's worker), continued later")
        run_dir = self.work / "c" / "run"
        nodes = self.torchrun("c", (0, 1), run_dir)
        wait_for("the middle of epoch 2", lambda: mid_epoch_2(run_dir))
        worker = self.m.worker(1)
        assert worker is not None
        out.notes.append(f"froze node2's worker, rank {self.rank_of(1)}")
        t = time.monotonic()
        os.kill(worker, signal.SIGSTOP)
        self.ended(out, [nodes[0]], t)
        time.sleep(5)
        t = time.monotonic()
        os.kill(worker, signal.SIGCONT)
        self.ended(out, [nodes[1]], t, " after SIGCONT")
        self.failed_as_said(out, run_dir)
        self.resume(out, run_dir, (0, 1), "c")
        return out

    def sigusr1(self, when: str) -> Outcome:
        """SLURM's warning to every task: twice at once, during the evaluation, or while
        rank 0 writes a checkpoint. Every task exits 75, the job is requeued."""
        name = {"twice": "d1", "evaluation": "d2", "checkpoint": "d3"}[when]
        out = Outcome({"twice": "SIGUSR1 twice in quick succession (srun tasks)",
                       "evaluation": "SIGUSR1 during the evaluation (srun tasks)",
                       "checkpoint": "SIGUSR1 while rank 0 writes a checkpoint (srun tasks)"}[when])
        root = self.work / name / "runs"
        env = {"CBAM_TUI_FAULTS": "write:best.pt=sleep:3@1"} if when == "checkpoint" else {}
        tasks = self.srun(name, root, 0, env)

        def run_dir() -> Path | None:
            found = [p for p in root.glob(f"*-{name}") if p.is_dir()] if root.is_dir() else []
            return found[0] if found else None

        home = wait_for("the run directory", run_dir)
        if when == "twice":
            wait_for("the middle of epoch 2", lambda: mid_epoch_2(home))
        else:
            wait_for("epoch 1's evaluation", lambda: evaluating(home, 1))
            if when == "checkpoint":
                time.sleep(1.0)  # inside the 3 s the fault point holds best.pt's write open
        t = time.monotonic()
        for _ in range(2 if when == "twice" else 1):
            for task in tasks:  # the task is the process srun started (SLURM signals it, not its children)
                os.kill(task.proc.pid, signal.SIGUSR1)
            time.sleep(0.05)
        self.ended(out, tasks, t)
        stops = [e for e in events(home) if e["event"] == "checkpoint_saved" and e["reason"] == "stop"]
        out.notes.append(f"{len(stops)} stop checkpoint(s)")
        out.run_says = last_word(home)
        out.expect("every task exits 75", all(code == 75 for code in out.exit.values()))
        out.expect("one stop checkpoint", len(stops) == 1)
        if all(code == 75 for code in out.exit.values()):  # the script's: if [ $? -eq 75 ]; then scontrol requeue
            again = self.srun(name, root, 1)
            for task in again:
                task.proc.wait(timeout=600)
                out.resume_exit[task.name] = task.proc.returncode
            out.expect("the requeued tasks exit 0", all(c == 0 for c in out.resume_exit.values()))
        out.epochs = metrics_epochs(home)
        return out

    def disk_full(self) -> Outcome:
        out = Outcome("rank 0's disk full (a 150 MB tmpfs as the runs root, filled while the ranks train)")
        disk = self.work / "e"
        disk.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=150m,mode=0700", "tmpfs", str(disk))
        try:
            run_dir = disk / "run"
            nodes = self.torchrun("e", (0, 1), run_dir)
            wait_for("epoch 1's end", lambda: any(e["event"] == "epoch_ended" for e in events(run_dir)))
            t = time.monotonic()
            filler = disk / "filler"
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass
            self.ended(out, nodes, t)
            out.run_says = last_word(run_dir)
            out.expect("the run says the disk was full", "No space left on device" in out.run_says)
            out.expect("every node exits 1", all(code == 1 for code in out.exit.values()))
            filler.unlink()
            self.resume(out, run_dir, (0, 1), "e")
        finally:
            run("umount", "-l", str(disk), check=False)
        return out


SCENARIOS: dict[str, Callable[[Soak], Outcome]] = {
    "a1": lambda s: s.node_killed("a1", 1, (0,)),
    "a2": lambda s: s.node_killed("a2", 0, (0, 1)),
    "b": Soak.link_cut,
    "c": Soak.frozen,
    "d1": lambda s: s.sigusr1("twice"),
    "d2": lambda s: s.sigusr1("evaluation"),
    "d3": lambda s: s.sigusr1("checkpoint"),
    "e": Soak.disk_full,
}


def table(results: dict[str, Outcome]) -> str:
    rows = ["| | fault | ended after (s) | exit codes | the survivors' line, or the run's last event | resume "
            "| epochs after |", "|---|---|---|---|---|---|---|"]
    for key, o in results.items():
        stop = ", ".join(f"{k} {v if v is not None else 'never'}" for k, v in o.stop_s.items())
        codes = ", ".join(f"{k} {v}" for k, v in o.exit.items())
        said = (o.line.removeprefix("cbam-tui: error: ") or o.run_says).replace("|", "/")
        resumed = ", ".join(f"{k} {v}" for k, v in o.resume_exit.items())
        rows.append(f"| {key} | {o.fault} | {stop} | {codes} | {said} | {resumed} | {o.epochs} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios (default: all)")
    parser.add_argument("--stall-timeout", type=int, default=10, help="--stall-timeout of the runs (seconds)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "netsoak-results.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, runs)")
    parser.add_argument("--quick", action="store_true", help="smaller runs (2 epochs of 30 batches), for the tests")
    args = parser.parse_args()
    if args.quick:
        global EPOCHS, MID_BATCH
        for flag, value in QUICK.items():
            TRAIN[TRAIN.index(flag) + 1] = value
        EPOCHS, MID_BATCH = [1, 2], 5
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        print("netsoak: needs root, ip (iproute2) and unshare: skipped")
        return 0
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in SCENARIOS]
    if unknown:
        print(f"netsoak: unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cbam-netsoak-"))
    work.chmod(0o755)
    results: dict[str, Outcome] = {}
    try:
        for key in wanted:
            with Machines() as machines:
                started = time.monotonic()
                try:
                    results[key] = SCENARIOS[key](Soak(machines, work, args.stall_timeout))
                except Exception as exc:
                    results[key] = Outcome(key, notes=[f"the scenario broke: {type(exc).__name__}: {exc}"])
                results[key].notes.append(f"scenario took {time.monotonic() - started:.0f} s")
            verdict = "ok" if results[key].ok else f"NOT OK ({'; '.join(results[key].failed) or 'epochs or an end'})"
            print(f"{key}: {verdict} {json.dumps(asdict(results[key]))}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps({"stall_timeout": args.stall_timeout,
                                    "results": {k: {**asdict(o), "ok": o.ok} for k, o in results.items()}},
                                   indent=2) + "\n")
    print(table(results))
    return 0 if all(o.ok for o in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
