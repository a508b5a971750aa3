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
    """auto = bf16 autocast on CUDA devices that have it, else fp32 (bf16 is slow on CPUs)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use fp32 or bf16)")
    return name


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
