"""Reusing a published part: its trained runs and cached outputs count only where exactly the same is asked."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import sqlite3

import pytest

from lib.evaluation import load_student
from lib.files import read_json, read_jsonl, write_json
from lib.models import TINY_GEMMA
from lib.params import TeacherParams, TrainingParams
from lib.publish import publish
from lib.response_cache import PUBLISHED_KEY_CHARS, request_key, ResponseCache
from lib.reuse import export_answers, reuse_published, STUDENT_ANSWERS, TEACHER_ANSWERS
from lib.student_cache import generate_cached, STUDENT_CACHE, student_weights_hash
from lib.study import main as study_main
from lib.teacher import make_teacher, TEACHER_CACHE
from lib.training import StudentRun, train_run
from tests.test_examples import all_examples
from tests.test_publish import finished_run, STRATEGY

PROMPTS, ITEMS = ["Q: Where do you keep a boat? A:", "Q: What holds water? A:"], ["q0", "q1"]


def answers(adapter, cache, load):
    """The student's cached greedy answers to PROMPTS, keyed as step 05 keys them (weights hash, device, format)."""
    settings = {"weights": student_weights_hash(TINY_GEMMA, adapter), "finetune": "lora", "device": "cpu",
                "precision": "fp32", "max_new_tokens": 4, "stop": None}
    texts, _ = generate_cached(load, PROMPTS, ITEMS, settings, batch_size=2, cache=cache, desc="test")
    return texts


def published_part(tmp_path):
    """A run with one trained CFD run whose answers are in its student cache, published to tmp_path/part."""
    run_dir, row = finished_run(tmp_path)
    adapter = run_dir / "04_training" / row["adapter"]
    cache = ResponseCache(run_dir / STUDENT_CACHE)
    texts = answers(adapter, cache, lambda: load_student(TINY_GEMMA, adapter, "cpu", "lora"))
    cache.close()
    publish(run_dir, tmp_path / "part")
    return tmp_path / "part", row, texts


def never_loaded():
    raise AssertionError("the student was loaded: an output the part holds was generated again")


def test_a_reused_run_is_neither_trained_nor_asked_again(tmp_path, caplog):
    part, row, texts = published_part(tmp_path)
    assert len(read_jsonl(part / STUDENT_ANSWERS)) == len(PROMPTS)
    fresh = tmp_path / "fresh"
    reused = reuse_published(part, fresh)
    assert reused.runs == [row["run"]] and reused.outputs == len(PROMPTS)
    params = TrainingParams(students=[TINY_GEMMA], conditions=["CFD"], max_steps=1, batch_size=2, save_steps=0)
    with caplog.at_level(logging.INFO, logger="lib.training"):
        again = train_run(StudentRun("CFD", TINY_GEMMA, 0), all_examples("CFD"), params,
                          fresh / "04_training" / row["run"], "cpu", strategy_tokens=STRATEGY)
    assert "finished earlier with the same config, skipped" in caplog.text
    assert again["config_sha256"] == row["config_sha256"] and again["reused_from"] == str(part)
    cache = ResponseCache(fresh / STUDENT_CACHE)
    assert answers(fresh / "04_training" / row["adapter"], cache, never_loaded) == texts
    cache.close()
    assert reuse_published(part, fresh).outputs == 0  # a second reuse adds nothing and keeps the seeded run
    assert "reuse reused from" in (fresh / "progress.log").read_text()


def test_a_reused_run_of_another_config_is_trained_again(tmp_path, caplog):
    part, row, _ = published_part(tmp_path)
    fresh = tmp_path / "fresh"
    reuse_published(part, fresh)
    params = TrainingParams(students=[TINY_GEMMA], conditions=["CFD"], max_steps=1, batch_size=2, save_steps=0,
                            lr=1e-3)  # not the part's learning rate
    with caplog.at_level(logging.INFO, logger="lib.training"):
        again = train_run(StudentRun("CFD", TINY_GEMMA, 0), all_examples("CFD"), params,
                          fresh / "04_training" / row["run"], "cpu", strategy_tokens=STRATEGY)
    assert "written under another config" in caplog.text and "reused_from" not in again
    assert again["config_sha256"] != row["config_sha256"]


def test_published_answers_hold_key_prefixes_and_outputs_not_requests(tmp_path):
    part, _, texts = published_part(tmp_path)
    answers = read_jsonl(part / STUDENT_ANSWERS)
    assert sorted(a[1] for a in answers) == sorted(texts)
    assert all(len(a[0]) == PUBLISHED_KEY_CHARS for a in answers)
    assert not any(p in (part / STUDENT_ANSWERS).read_bytes().decode("latin-1") for p in PROMPTS)  # gzip: never plain


def test_only_answers_asked_in_the_run_are_published_and_another_request_misses(tmp_path):
    part, row, texts = published_part(tmp_path)
    fresh = tmp_path / "fresh"
    reuse_published(part, fresh)
    cache = ResponseCache(fresh / STUDENT_CACHE)
    other = {"kind": "student_generation", "prompt": PROMPTS[0], "item": "q9"}  # same prompt, another item
    assert cache.get(request_key(other)) is None
    cache.put(request_key(other), other, "new", "stop", 1, 1)
    assert cache.answers() == [[request_key(other)[:PUBLISHED_KEY_CHARS], "new", "stop", 1, 1]]
    cache.close()


def test_a_part_made_with_reuse_exports_the_reused_answers_it_asked_for(tmp_path):
    """A part's export holds every answer its students gave, those served from an earlier part included, so a later
    study can reuse that part alone; the earlier part's answers nobody asked for stay out."""
    part, _, _ = published_part(tmp_path)
    exported = sorted(read_jsonl(part / STUDENT_ANSWERS))
    fresh = tmp_path / "fresh"
    reuse_published(part, fresh)
    cache = ResponseCache(fresh / STUDENT_CACHE)
    asked = exported[0]
    assert cache.get(asked[0] + "0" * 44)["text"] == asked[1]  # served by its key's prefix
    other = {"kind": "student_generation", "prompt": PROMPTS[0], "item": "q9"}
    cache.put(request_key(other), other, "new", "stop", 1, 1)
    cache.close()
    again = tmp_path / "again.jsonl.gz"
    export_answers(fresh / STUDENT_CACHE, again)
    assert sorted(read_jsonl(again)) == sorted([asked, [request_key(other)[:PUBLISHED_KEY_CHARS], "new", "stop", 1, 1]])


def test_an_edited_export_is_refused(tmp_path):
    part, _, _ = published_part(tmp_path)
    answers = read_jsonl(part / STUDENT_ANSWERS)
    answers[0] = answers[0][:2]  # a truncated line: no finish reason or token counts
    (part / STUDENT_ANSWERS).write_bytes(gzip.compress("".join(json.dumps(a) + "\n" for a in answers).encode()))
    with pytest.raises(ValueError, match="answer 1 is not"):
        reuse_published(part, tmp_path / "fresh")
    with sqlite3.connect(tmp_path / "fresh" / STUDENT_CACHE) as db:  # refused before any answer was stored
        assert db.execute("SELECT COUNT(*) FROM published").fetchone()[0] == 0


def test_the_study_refuses_a_folder_that_is_not_published_and_reuse_with_force(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="lib.study"):
        assert study_main(["params/smoke.yaml", "--reuse", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 2
    assert "not a published run folder" in caplog.text
    part, _, _ = published_part(tmp_path)
    with caplog.at_level(logging.ERROR, logger="lib.study"):
        assert study_main(["params/smoke.yaml", "--reuse", str(part), "--force", "--run-dir", str(tmp_path / "r")]) == 2
    assert "contradict" in caplog.text and not (tmp_path / "r").exists()


def test_a_part_trained_in_another_number_format_is_not_used_and_the_first_of_two_parts_wins(tmp_path, caplog):
    part, row, _ = published_part(tmp_path)
    manifest = read_json(part / "manifest.json")
    manifest["steps"]["04_training"]["precision"] = {"training": "bf16"}
    write_json(part / "manifest.json", manifest)
    fresh = tmp_path / "fresh"
    with caplog.at_level(logging.WARNING, logger="lib.reuse"):
        skipped = reuse_published(part, fresh, training_format="fp32")
    assert skipped.runs == [] and skipped.outputs == 0 and "trained in bf16" in caplog.text
    assert not (fresh / "04_training").exists() and not (fresh / STUDENT_CACHE).exists()
    assert reuse_published(part, fresh, training_format="bf16").runs == [row["run"]]  # its own format: used

    other = tmp_path / "other"  # a second part holding the same run under another config
    shutil.copytree(part, other)
    runs = read_jsonl(other / "04_training" / "runs.jsonl")
    runs[-1]["config_sha256"] = "another"
    (other / "04_training" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    with caplog.at_level(logging.WARNING, logger="lib.reuse"):
        second = reuse_published(other, fresh, training_format="bf16")
    assert second.kept == [row["run"]] and "under another config; that one is kept" in caplog.text
    assert read_json(fresh / "04_training" / row["run"] / "done.json")["reused_from"] == str(part)


def test_a_reused_part_gives_step_03_its_teachers_responses_on_any_machine(tmp_path):
    """The local model's counterfactuals are CFD's training data: published with the part and served to a study that
    reuses it, they make the same CFD examples there without loading the model; another request is generated."""
    run_dir, _ = finished_run(tmp_path)
    p = TeacherParams(model=TINY_GEMMA, max_new_tokens=8, max_reasks=0)
    prompts = ["Question: Where is a boat kept?\nAnother option:", "Question: What holds water?\nAnother option:"]
    votes = make_teacher(p, "cpu", run_dir, seed=0).complete(prompts, temperature=0.8, n=2, desc="votes")
    publish(run_dir, tmp_path / "part")
    assert len(read_jsonl(tmp_path / "part" / TEACHER_ANSWERS)) == 4
    fresh = tmp_path / "fresh"
    assert reuse_published(tmp_path / "part", fresh).teacher_outputs == 4
    engine = make_teacher(p, "cpu", fresh, seed=0)
    again = engine.complete(prompts, temperature=0.8, n=2, desc="votes")
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in votes]
    assert engine.backend._loaded is None  # every response came from the part
    engine.complete(["Question: Why?\nAnother option:"], temperature=0.0, desc="another")
    assert engine.backend._loaded is not None
    engine.cache.close()
    export_answers(fresh / TEACHER_CACHE, tmp_path / "again.jsonl.gz")  # a part made with reuse holds them too
    assert len(read_jsonl(tmp_path / "again.jsonl.gz")) == 5
