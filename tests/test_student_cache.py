"""Tests of lib.student_cache (its use by evaluation is tested in test_evaluation.py)."""

from __future__ import annotations


def test_force_discards_the_student_cache_and_a_plain_rerun_keeps_it(tmp_path):
    from types import SimpleNamespace

    from lib.response_cache import ResponseCache
    from lib.student_cache import discard_student_cache, student_cache_path

    ctx = SimpleNamespace(run_dir=tmp_path, force=False)
    ResponseCache(student_cache_path(ctx)).close()
    assert not discard_student_cache(ctx) and student_cache_path(ctx).exists()
    ctx.force = True
    assert discard_student_cache(ctx) and not student_cache_path(ctx).exists()
