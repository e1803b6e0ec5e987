"""run.precision: which operations run in bf16, by device and CPU flags."""

from __future__ import annotations

import pytest
import torch

from lib.precision import autocast, cpu_flags, native_bf16, OPERATIONS, precision_plan

ZEN1 = {"avx2", "fma", "sse4_2"}
ZEN4 = ZEN1 | {"avx512f", "avx512_bf16"}


def test_auto_keeps_float32_everywhere_on_a_cpu_without_native_bf16():
    assert precision_plan("auto", "cpu", ZEN1) == {op: "fp32" for op in OPERATIONS}


def test_auto_uses_bf16_on_a_bf16_cpu_except_for_decoding():
    plan = precision_plan("auto", "cpu", ZEN4)
    assert plan == {"training": "bf16", "scoring": "bf16", "embedding": "bf16", "decoding": "fp32"}


def test_explicit_formats_apply_to_every_operation():
    assert set(precision_plan("bf16", "cpu", ZEN1).values()) == {"bf16"}
    assert set(precision_plan("fp32", "cpu", ZEN4).values()) == {"fp32"}


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision_plan("fp16", "cpu", ZEN1)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert native_bf16("cpu", cpu_flags(info))
    assert cpu_flags(tmp_path / "absent") == set()


def test_autocast_bf16_computes_matrix_products_in_bf16_and_fp32_leaves_them():
    a = torch.randn(4, 8)
    with autocast("bf16", "cpu"):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (a @ a.T).dtype == torch.float32
