"""Decoding a long events.jsonl: msgspec (core.events.read_line) against the hand-written
validator it replaced (json.loads, then core/events.py's from_dict as of BEFORE, loaded
from git), line by line as the run directory's reader does, in alternating repeats.

The log is bench/history.py's long CIFAR-sized run (782 batches an epoch, iteration losses
in chunks of 50, a loss line every 100 batches, per-class results and attention maps every
epoch). Two legs: every line (what `watch` replays), and the lines a light fold parses
(what `runs` and `compare` read: no iteration losses, maps or per-class results).

    python bench/events_decode.py [--lines 20000] [--repeats 3] [--before REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from history import write_log

from core.events import read_line

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "e2d0d3c"  # the last commit whose events were checked by the hand-written validator
LIGHT_SKIP = (b'{"event":"iter_losses"', b'{"event":"attention"', b'{"event":"class_accuracy"')


def load_before(rev: str) -> ModuleType:
    """core/events.py as it was at ``rev``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:core/events.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("events_before", f.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["events_before"] = module  # its dataclasses resolve their hints through it
    spec.loader.exec_module(module)
    Path(f.name).unlink()
    return module


def log_lines(count: int) -> list[bytes]:
    """At least ``count`` lines of a long run, cut to ``count``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        write_log(path, "bench", count * 1500)  # about 1.45 KB a line in this mix
        lines = path.read_bytes().splitlines()
    if len(lines) < count:
        raise SystemExit(f"the generated log has {len(lines)} lines, fewer than {count}")
    return lines[:count]


def contenders(before: ModuleType) -> dict[str, Callable[[bytes], object]]:
    def hand_written(line: bytes) -> object:
        data = json.loads(line.decode("utf-8"))
        event = before.from_dict(data)
        t = data.get("t")
        return event, float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    return {"hand-written": hand_written, "msgspec": read_line}


def timed(decode: Callable[[bytes], object], lines: list[bytes]) -> float:
    start = time.perf_counter()
    for line in lines:
        decode(line)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=BEFORE, help="the commit whose core/events.py is the hand-written side")
    args = parser.parse_args()
    lines = log_lines(args.lines)
    light = [x for x in lines if not x.startswith(LIGHT_SKIP)]
    legs = {"every line (watch)": lines, "light fold (runs, compare)": light}
    decoders = contenders(load_before(args.before))
    for line in lines[:2000]:  # both read the same events
        (old, t_old), (new, t_new) = (decode(line) for decode in decoders.values())  # type: ignore[misc]
        assert old.to_dict() == new.to_dict() and t_old == t_new, line[:200]
    print(f"{len(lines):,} lines, {sum(map(len, lines)) / 2**20:.1f} MiB; median of {args.repeats}, alternating")
    print(f"{'leg':<28} {'lines':>8} {'hand-written s':>15} {'msgspec s':>10} {'ratio':>7}")
    for leg, chosen in legs.items():
        seconds: dict[str, list[float]] = {name: [] for name in decoders}
        for repeat in range(args.repeats):
            order = list(decoders.items()) if repeat % 2 == 0 else list(decoders.items())[::-1]
            for name, decode in order:
                seconds[name].append(timed(decode, chosen))
        before, after = (statistics.median(seconds[name]) for name in decoders)
        print(f"{leg:<28} {len(chosen):>8,} {before:>15.3f} {after:>10.3f} {before / after:>6.1f}x")


if __name__ == "__main__":
    main()
