"""The machine under a run, sampled once a second in a thread of its own: each GPU
through NVML (nvidia-ml-py, imported when first needed), and on any device this
process's CPU share and resident memory, and its peak CUDA memory.

Without NVML or a GPU the GPU figures are absent and a one-line note says why.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from core.events import GpuSample, SystemSample

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
                max(power, -1.0), temperature,
            ))
        return tuple(out)

    def _maybe(self, call: str, *args: Any) -> float:
        try:
            return float(getattr(self.nvml, call)(*args))
        except Exception:  # not every board reports power or temperature
            return -1000.0 if call == "nvmlDeviceGetPowerUsage" else -1.0


class SystemMonitor:
    """Emits a SystemSample every second from its own thread until stopped."""

    def __init__(self, emit: Callable[[SystemSample], None], cuda_device: Any = None) -> None:
        self.emit = emit
        self.cuda_device = cuda_device
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cbam-tui system monitor", daemon=True)
        self._nvml: Nvml | None = None
        self._last = (time.monotonic(), _cpu_seconds())

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
        now, cpu = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._last
        self._last = (now, cpu)
        peak = 0
        if self.cuda_device is not None:
            import torch

            peak = int(torch.cuda.max_memory_allocated(self.cuda_device))
        nvml = self._nvml or Nvml()
        return SystemSample(
            cpu_percent=100.0 * (cpu - cpu_then) / max(now - then, 1e-6), rss=_rss(), gpus=nvml.sample(),
            cuda_peak=peak, note=nvml.note,
        )


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
