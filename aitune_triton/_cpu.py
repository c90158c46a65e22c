"""What the host CPU can run natively: the instruction set flags that decide whether bf16 and int8
candidates are worth building on the CPU (read once from ``/proc/cpuinfo`` on Linux).

A CPU without AVX512-BF16 or AMX still runs bf16 code, emulated and slower than fp32, so a bf16
candidate there is reported unavailable instead of built; int8 runs everywhere, but only the VNNI
instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8) make u8 x s8 products exact without a reduced
weight range, so quantizers are told to reduce the range where they are missing.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "native_bf16", "native_bf16_reason", "native_int8_dot"]

#: Flags (as ``/proc/cpuinfo`` spells them) of native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Flags of the int8 dot-product instructions (VNNI) int8 kernels rely on.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` of the first processor in ``/proc/cpuinfo``; empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor(), frozenset()
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name or platform.processor(), flags


def cpu_flags() -> frozenset[str]:
    """The instruction set flags of the host CPU (``/proc/cpuinfo``'s ``flags``); empty where unknown."""
    return _cpuinfo()[1]


def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), or what :func:`platform.processor` says."""
    return _cpuinfo()[0]


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def native_int8_dot() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def native_bf16_reason(backend: str) -> str | None:
    """Why ``backend`` does not build bf16 on this CPU, or None when the CPU computes bf16 natively."""
    if native_bf16():
        return None
    return (
        f"{backend}: precision 'bf16' on the CPU needs AVX512-BF16 or AMX (flags {' / '.join(BF16_FLAGS)}); "
        f"this CPU ({cpu_name() or 'unknown'}) has neither, so bf16 would run emulated and slower than fp32; "
        "use precision='fp32', or 'int8' where the backend builds it"
    )
