"""The machine under a run, sampled once a second in a thread of its own: each GPU
through NVML (nvidia-ml-py, imported when first needed), and on any device this
process's CPU share and current resident memory (psutil), and its peak CUDA memory.

Without NVML or a GPU the GPU figures are absent and a one-line note says why.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from core.events import GpuProcess, GpuSample, SystemSample
from core.threads import cpu_jiffies

EVERY_S = 1.0


class Nvml:
    """The GPUs NVML can see (those in CUDA_VISIBLE_DEVICES, when it names indices)."""

    def __init__(self) -> None:
        self.note = ""
        self.handles: list[tuple[int, Any]] = []
        try:
            self.nvml: Any = importlib.import_module("pynvml")
            self.nvml.nvmlInit()
            count = self.nvml.nvmlDeviceGetCount()
        except ImportError:
            self.note = "GPU figures need NVML: pip install nvidia-ml-py"
            return
        except Exception as exc:  # NVML's own error classes: no driver, no GPU
            self.note = f"no GPU figures: NVML says {str(exc).strip() or type(exc).__name__}"
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible.strip() else list(range(count))
        self.handles = [(i, self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices if i < count]
        if not self.handles:
            self.note = "no GPU figures: NVML sees no GPU"

    def sample(self) -> tuple[GpuSample, ...]:
        out = []
        for index, h in self.handles:
            try:
                util = float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
                name = self.nvml.nvmlDeviceGetName(h)
            except Exception:
                continue
            power = self._maybe("nvmlDeviceGetPowerUsage", h) / 1000.0  # mW
            temperature = self._maybe("nvmlDeviceGetTemperature", h, self.nvml.NVML_TEMPERATURE_GPU)
            out.append(GpuSample(
                index, name.decode() if isinstance(name, bytes) else str(name), util, int(mem.used), int(mem.total),
                max(power, -1.0), temperature, self._others(h),
            ))
        return tuple(out)

    def _others(self, handle: Any) -> tuple[GpuProcess, ...]:
        """The other processes computing on this GPU, largest first (a shared box's neighbours)."""
        try:
            found = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # an old driver or a board that does not say
            return ()
        mine, out = os.getpid(), []
        for p in found:
            pid = int(getattr(p, "pid", 0))
            if pid in (0, mine):
                continue
            used = getattr(p, "usedGpuMemory", None)
            out.append(GpuProcess(pid, _process_name(pid), int(used) if isinstance(used, int) else -1))
        return tuple(sorted(out, key=lambda p: -p.memory))

    def _maybe(self, call: str, *args: Any) -> float:
        try:
            return float(getattr(self.nvml, call)(*args))
        except Exception:  # not every board reports power or temperature
            return -1000.0 if call == "nvmlDeviceGetPowerUsage" else -1.0


def _process_name(pid: int) -> str:
    """A process's name, or "" where it is not visible from here (another container's)."""
    try:
        return str(psutil.Process(pid).name())
    except (psutil.Error, OSError):
        return ""


class SystemMonitor:
    """Emits a SystemSample every second from its own thread until stopped."""

    def __init__(self, emit: Callable[[SystemSample], None], cuda_device: Any = None, cpus: float = 0.0) -> None:
        self.emit = emit
        self.cuda_device = cuda_device
        self.cpus = cpus  # CPUs the process may use: other processes' load is measured against them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cbam-tui system monitor", daemon=True)
        self._nvml: Nvml | None = None
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call starts psutil's interval; its 0.0 means nothing
        self._last = (time.monotonic(), cpu_jiffies())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _run(self) -> None:
        self._nvml = Nvml()
        while not self._stop.wait(EVERY_S):
            try:
                self.emit(self.sample())
            except Exception:  # never let a reading of the machine end a run
                return

    def sample(self) -> SystemSample:
        now, busy, own = time.monotonic(), cpu_jiffies(), self._process.cpu_percent(None)
        then, busy_then = self._last
        self._last = (now, busy)
        elsewhere = 0.0
        if busy is not None and busy_then is not None:  # all busy time on our CPUs, less our own
            wall = max(now - then, 1e-6)
            elsewhere = max(0.0, (busy - busy_then) / os.sysconf("SC_CLK_TCK") / wall - own / 100.0)
        peak = 0
        if self.cuda_device is not None:
            import torch

            peak = int(torch.cuda.max_memory_allocated(self.cuda_device))
        nvml = self._nvml or Nvml()
        return SystemSample(
            cpu_percent=own, rss=self._process.memory_info().rss, gpus=nvml.sample(),
            cuda_peak=peak, note=nvml.note, cpus=self.cpus, busy_elsewhere=elsewhere,
        )

