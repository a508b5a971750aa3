"""Where and in which precision the model trains."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from core.config import parse_device
from core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    name = parse_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto = bf16 autocast where the hardware computes bf16 natively (CUDA devices that
    support it; CPUs with AVX512-BF16 or AMX), else fp32: on a CPU without them bf16 is
    emulated, and was 17x slower per step than fp32 on an AVX2-only CPU."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use fp32 or bf16)")
    return name


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware: the kernel's flags for AVX512-BF16 or
    AMX-BF16 (Linux /proc/cpuinfo), and oneDNN's own check. Elsewhere: no."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if not any(flag in flags for flag in CPU_BF16_FLAGS):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


def autocast(device: torch.device, precision: str) -> Callable[[], Any]:
    """A factory of autocast contexts for the step and the evaluation."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def prefers_channels_last(device: torch.device) -> bool:
    """NHWC activations: faster convolutions with cuDNN, and with oneDNN on the CPU
    (bench/train_step.py: about 11% on a 2-core AVX2 CPU); not measured on MPS."""
    return device.type in ("cuda", "cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
