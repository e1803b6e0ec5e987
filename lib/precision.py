"""Number formats: which operations run in bfloat16 on this device (`run.precision: auto | fp32 | bf16`).

bfloat16 keeps float32's exponent range with an 8-bit mantissa; where the hardware multiplies it natively (CUDA
GPUs from Ampere on, CPUs with AVX512-BF16 or AMX) matrix products can run about twice as fast. Elsewhere torch
emulates it, more slowly than float32. Weights stay float32 throughout: bf16 operations run under
`torch.autocast`, which computes matrix products in bf16 and keeps reductions (softmax, losses) in float32.

`auto` chooses per operation, from what is measured (benchmarks/precision.py):
- on a GPU with bf16, every operation in bf16;
- on a CPU without native bf16 flags, float32 everywhere (emulated bf16 measured 6-30x slower on a Zen 1 EPYC);
- on a CPU with them, training, scoring (log-likelihoods) and embedding (CEC, BERTScore) in bf16 only where a probe
  of each operation's typical matrix product measures bf16 at least SPEEDUP_NEEDED times faster on this machine
  (`measure_speedups`, once per CPU model, bf16 flags, torch version and thread count, cached): native flags are no
  promise of speed. Measured with benchmarks/precision.py, 2 threads, cores idle: on a Zen 5 EPYC (avx512_bf16)
  training 1.80x, scoring 2.08x, CEC 2.56x, decoding 1.98x faster in bf16 (issue 27); on a 2-core Intel Xeon with
  avx512_bf16 and no AMX exposed (family 6 model 207, 2026-12-02) training 0.60x, scoring 0.65x, CEC 0.64x, i.e.
  slower, and the probe agrees there (about 0.6x for every operation), so `auto` keeps float32 on that CPU;
  on a 2-core Intel Xeon with avx512_bf16 and amx_bf16 (family 6 model 167, 2026-12-02) the probe measured training
  4.0x, scoring 2.98x, embedding 3.05x, and benchmarks/train_throughput.py --steps 8 trained 1.64x faster end to end
  in bf16 (15.5 vs 25.4 s), so `auto` takes bf16 there;
- decoding (generation) stays float32 on every CPU. On that Xeon, greedy decoding of 8 short prompts x 32 tokens was
  1.55x faster in bf16 but changed 62% of the outputs; 2-shot chain-of-thought answers of the untrained Gemma 3 270M
  to 200 CommonsenseQA dev questions (48 tokens, prompts of about 300 tokens) took 285 s in float32 and 282 s in bf16
  (1.01x), changed 85 of the 200 outputs, and were right 5 vs 4 times (read strictly; too few to show an effect on
  accuracy). With no speed to gain on prompts of real length and most outputs changed, the generated answers of a
  study do not depend on the CPU's flags.
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


def precision_plan(requested: str, device: str, flags: set[str] | None = None,
                   speedups: dict[str, float] | None = None) -> dict[str, str]:
    """The format (`fp32` or `bf16`) of each operation for `run.precision` on `device`.

    `speedups` (bf16 over float32 per operation, `measure_speedups`) decides `auto` on a CPU with native bf16: bf16
    only where it measured at least SPEEDUP_NEEDED times faster. Without them, the flags alone decide (bf16 but for
    decoding).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"run.precision is {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return {op: requested for op in OPERATIONS}
    native = native_bf16(device, flags)
    if native and not device.startswith("cuda") and speedups is not None:
        return {op: "bf16" if speedups.get(op, 0.0) >= SPEEDUP_NEEDED and op in CPU_BF16_OPERATIONS else "fp32"
                for op in OPERATIONS}
    plan = {op: "bf16" if native else "fp32" for op in OPERATIONS}
    plan["decoding"] = "bf16" if native and device.startswith("cuda") else "fp32"
    return plan


SPEEDUP_NEEDED = 1.2  # `auto` on a CPU takes bf16 for an operation only where it measured this much faster
CPU_BF16_OPERATIONS = ("training", "scoring", "embedding")  # decoding stays float32 on CPUs (module docstring)
# The matrix product that dominates each operation on a CPU, as (rows, inner, columns): a batch's tokens through a
# Gemma 3 270M projection (training, scoring) and a batch of sentences through MiniLM's feed-forward (embedding).
PROBE_SHAPES = {"training": (1024, 640, 2048), "scoring": (1024, 640, 2048), "embedding": (2048, 384, 1536)}
PROBE_VERSION = 1


def probe_key() -> str:
    """What a probe's result depends on: the CPU's model name and bf16 flags, torch's version and the probe itself."""
    import torch

    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "?")
    bf16 = sorted(cpu_flags() & set(_CPU_BF16_FLAGS))
    return f"{name} | {','.join(bf16)} | torch {torch.__version__} | threads {torch.get_num_threads()} | v{PROBE_VERSION}"


def _cpuinfo_lines() -> list[str]:
    """The lines of /proc/cpuinfo ([] where it is absent)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def measure_speedups(cache: Path | None = None, repeats: int = 5) -> dict[str, float]:
    """bf16's speed-up over float32 of each operation's matrix product (PROBE_SHAPES) on this CPU, best of `repeats`.

    Measured once per `probe_key` and kept in `cache` (a JSON file), so that every step of a study, and every rerun
    on this machine, resolves `auto` the same way. About a second.
    """
    import json

    key = probe_key()
    stored = json.loads(cache.read_text(encoding="utf-8")) if cache is not None and cache.is_file() else {}
    if key in stored:
        return stored[key]
    import time

    import torch

    speedups = {}
    for op, (rows, inner, cols) in PROBE_SHAPES.items():
        a, b = torch.randn(rows, inner), torch.randn(inner, cols)
        seconds = {}
        for fmt in ("fp32", "bf16"):
            with autocast(fmt, "cpu"):
                torch.mm(a, b)  # warm-up: kernels chosen, memory touched
                best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    torch.mm(a, b)
                    best = min(best, time.perf_counter() - start)
            seconds[fmt] = best
        speedups[op] = round(seconds["fp32"] / seconds["bf16"], 2)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stored[key] = speedups
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1), encoding="utf-8")
        tmp.replace(cache)
    return speedups


@contextlib.contextmanager
def autocast(fmt: str, device: str) -> Iterator[None]:
    """Run the block's matrix products in `fmt` (`bf16` under torch.autocast; `fp32` as it is)."""
    if fmt == "fp32":
        yield
        return
    import torch

    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
        yield
