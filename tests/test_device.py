"""Where and in which precision a run trains: auto picks bf16 only where the hardware has it."""

from __future__ import annotations

import pytest
import torch

import core.device as device
from core.errors import ConfigError

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not device.cpu_has_native_bf16(AVX2_ONLY)
    assert not device.cpu_has_native_bf16("")
    assert device.cpu_has_native_bf16(WITH_BF16) == device.cpu_has_native_bf16(WITH_AMX)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_the_cpu_follows_the_hardware(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    assert device.resolve_precision("auto", torch.device("cpu")) == expected
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # asked for, always


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        device.resolve_precision("fp16", torch.device("cpu"))
