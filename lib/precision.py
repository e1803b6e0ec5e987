"""Number formats: which operations run in bfloat16 on this device (`run.precision: auto | fp32 | bf16`).

bfloat16 keeps float32's exponent range with an 8-bit mantissa; where the hardware multiplies it natively (CUDA
GPUs from Ampere on, CPUs with AVX512-BF16 or AMX) matrix products run about twice as fast. Elsewhere torch
emulates it, more slowly than float32. Weights stay float32 throughout: bf16 operations run under
`torch.autocast`, which computes matrix products in bf16 and keeps reductions (softmax, losses) in float32.

`auto` chooses per operation, from what was measured (benchmarks/precision.py):
- training, scoring (log-likelihoods) and embedding (CEC, BERTScore): bf16 where the device computes it natively;
- decoding (generation): bf16 on CUDA only; on CPUs decoding small batches measured slower in bf16.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

OPERATIONS = ("training", "scoring", "embedding", "decoding")
PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matrix arithmetic


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of this machine's CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: str, flags: set[str] | None = None) -> bool:
    """Whether `device` (cpu / cuda) multiplies bf16 matrices in hardware."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(f in (cpu_flags() if flags is None else flags) for f in _CPU_BF16_FLAGS)


def precision_plan(requested: str, device: str, flags: set[str] | None = None) -> dict[str, str]:
    """The format (`fp32` or `bf16`) of each operation for `run.precision` on `device`."""
    if requested not in PRECISIONS:
        raise ValueError(f"run.precision is {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return {op: requested for op in OPERATIONS}
    native = native_bf16(device, flags)
    plan = {op: "bf16" if native else "fp32" for op in OPERATIONS}
    plan["decoding"] = "bf16" if native and device.startswith("cuda") else "fp32"
    return plan


@contextlib.contextmanager
def autocast(fmt: str, device: str) -> Iterator[None]:
    """Run the block's matrix products in `fmt` (`bf16` under torch.autocast; `fp32` as it is)."""
    if fmt == "fp32":
        yield
        return
    import torch

    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
        yield
