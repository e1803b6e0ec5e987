"""Tests of lib.evaluation: students evaluated on the test sets, the student cache in use, metrics and TEACHER rows."""

from __future__ import annotations

import json
import math

import pytest

from lib.data import load_multiple_choice
from lib.evaluation import add_cec, clean_rationale, evaluate_run, ItemResult, read_cf_rationales
from lib.evaluation_tables import ood_matrix, summary_table
from lib.files import PROJECT_ROOT
from lib.params import load_params
from lib.questions import MCQuestion


def q(i: int, n: int = 3, answer: int = 0) -> MCQuestion:
    return MCQuestion(id=f"q{i}", question=f"Question {i}?", choices=[f"opt{i}{k}" for k in range(n)],
                      labels=[chr(65 + k) for k in range(n)], answer=answer)


def item(run: str, cond: str, test_set: str, qid: str, correct: int, **kw) -> ItemResult:
    base = dict(run=run, condition=cond, student="s", seed=0, test_set=test_set, item_id=qid, prediction=0,
                correct=correct, unparseable=0, rationale="R.", rationale_len=1, output="", cec=math.nan,
                cec_fc=math.nan, cec_bf=math.nan, seconds=0.1, train_set="csqa")
    base.update(kw)
    return ItemResult(**base)


def test_clean_rationale_cuts_next_question_and_answer_sentence():
    assert clean_rationale("Ice is cold. So the answer is (a) ice.\nQ: What next?") == "Ice is cold."
    assert clean_rationale("Fire is hot.\nQ: Another?\nAnswer Choices:\n(a) x") == "Fire is hot."


def test_read_cf_rationales_skips_failed_rows(tmp_path):
    p = tmp_path / "cf_rationales.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q1", "option": 2, "text": "Because fire."}, {"id": "q1", "option": 1, "text": "later"},
        {"id": "q2", "option": None, "text": ""}]) + "\n")
    assert read_cf_rationales(p) == {"q1": (2, "Because fire.")}
    assert read_cf_rationales(tmp_path / "absent.jsonl") == {}


def test_arc_sample_loads_with_digit_labels_and_three_options():
    qs = load_multiple_choice(str(PROJECT_ROOT / "data" / "sample" / "arc_sample.jsonl"), "arc")
    assert len(qs) == 20
    assert any(x.labels == ["1", "2", "3", "4"] for x in qs)
    assert any(len(x.choices) == 3 for x in qs)
    assert all(0 <= x.answer < len(x.choices) for x in qs)


def test_quarel_original_format(tmp_path):
    p = tmp_path / "quarel.jsonl"
    rows = [{"id": "QuaRel_1", "question": "A car rolls farther on asphalt than on gravel because _____ has less "
             "friction. (A) asphalt (B) gravel", "answer_index": 0, "world_literals": {}},
            {"id": "QuaRel_2", "question": "Which is heavier? (A) a full bucket (B) an empty bucket", "answer_index": 0}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    qs = load_multiple_choice(str(p), "quarel")
    assert qs[0].choices == ["asphalt", "gravel"] and qs[0].answer == 0 and qs[0].labels == ["A", "B"]
    assert qs[0].question.endswith("has less friction.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "no options here", "answer_index": 0}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'question' must end with its options"):
        load_multiple_choice(str(bad), "quarel")
    bad.write_text(json.dumps({"id": "x", "question": "Q (A) a (B) b", "answer_index": 3}) + "\n")
    with pytest.raises(ValueError, match="answer_index"):
        load_multiple_choice(str(bad), "quarel")


def test_text_metrics_with_the_tiny_encoder():
    from lib.evaluation import add_text_metrics

    rows = [item("r", "MT", "csqa", "a", 1, rationale="Ice is cold so it melts in the sun."),
            item("r", "MT", "csqa", "b", 0, rationale="Totally unrelated words here."),
            item("r", "MT", "csqa", "c", 0, rationale="")]
    refs = {"a": "Ice is cold so it melts in the sun.", "b": "Ice is cold so it melts in the sun.",
            "c": "Something."}
    add_text_metrics(rows, refs, "tiny-random-minilm")
    assert rows[0].bleu == pytest.approx(100.0) and rows[0].rouge_l == pytest.approx(1.0)
    assert rows[0].bertscore == pytest.approx(1.0, abs=1e-4)
    assert rows[1].bleu < 10 and rows[1].rouge_l < 0.2 and rows[1].bertscore < rows[0].bertscore
    assert rows[2].bleu == 0.0 and rows[2].rouge_l == 0.0 and rows[2].bertscore == 0.0  # no rationale: 0, as CEC
    unreferenced = [item("r", "MT", "csqa", "z", 0, rationale="Ice.")]
    add_text_metrics(unreferenced, refs, "tiny-random-minilm")
    assert math.isnan(unreferenced[0].bleu)  # no reference: not scored


def test_cec_of_a_missing_rationale_is_zero_where_a_reference_exists():
    import numpy as np

    rows = [item("r", "FT", "csqa", "a", 0, rationale=""), item("r", "FT", "csqa", "b", 0, rationale=""),
            item("r", "FT", "csqa", "c", 0, rationale="Ice is cold.")]
    add_cec(rows, {"a": "Ice is cold.", "c": "Ice is cold."}, lambda s: np.ones((len(s), 3)))
    assert (rows[0].cec, rows[0].cec_fc, rows[0].cec_bf) == (0.0, 0.0, 0.0)
    assert math.isnan(rows[1].cec)  # no reference: not scored
    assert rows[2].cec == pytest.approx(1.0)


def run_info(condition: str, source: str = "unrevised", finetune: str = "lora", trained: bool = True) -> dict:
    """A row of 04_training/runs.jsonl for the tiny Gemma (BASE: trained=False, no adapter)."""
    from lib.models import TINY_GEMMA

    run = f"{condition}__{source}__tiny__seed0"
    return {"run": run, "condition": condition, "rationale_source": source, "student": TINY_GEMMA, "seed": 0,
            "finetune": finetune, "task": "causal" if condition == "CAUSAL" else "mc",
            "adapter": f"{run}/adapter" if trained else None}


def make_adapter(folder, seed: int) -> None:
    """A LoRA adapter (random, non-zero) on the tiny Gemma, saved with its tokenizer as step 04 saves a run."""
    import torch
    from peft import get_peft_model, LoraConfig

    from lib.models import load_causal_lm, load_tokenizer, TINY_GEMMA

    torch.manual_seed(seed)
    get_peft_model(load_causal_lm(TINY_GEMMA), LoraConfig(r=2, init_lora_weights=False)).save_pretrained(folder)
    load_tokenizer(TINY_GEMMA).save_pretrained(folder)


def test_a_rerun_is_answered_from_the_student_cache(tmp_path, monkeypatch):
    import lib.evaluation as ev
    import lib.models

    generated, loads, scored = [], [], []
    real_generate, real_load, real_score = lib.models.generate_texts, ev.load_student, ev.continuation_logliks

    def counting_generate(model, tokenizer, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return real_generate(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(lib.models, "generate_texts", counting_generate)
    monkeypatch.setattr(ev, "load_student", lambda *a: loads.append(a) or real_load(*a))
    monkeypatch.setattr(ev, "continuation_logliks", lambda m, t, pairs, *a: scored.append(len(pairs))
                        or real_score(m, t, pairs, *a))

    def params(max_new_tokens: int):
        return load_params(PROJECT_ROOT / "params" / "smoke.yaml",
                           {"evaluation.max_new_tokens": max_new_tokens, "evaluation.score_max_items": 2})

    adapter, cache = tmp_path / "adapter", tmp_path / "student_cache.sqlite"
    make_adapter(adapter, seed=0)
    info = run_info("MT")
    tests = {"csqa": [q(1), q(2), q(3)]}
    first = evaluate_run(info, adapter, tests, params(8), "cpu", cache=cache)
    assert generated == [3, 3] and len(loads) == 1  # MT: the answer and the rationale task
    said = []
    again = evaluate_run(info, adapter, tests, params(8), "cpu", cache=cache, progress=said.append)
    assert generated == [3, 3] and len(loads) == 1  # nothing generated, scored or even loaded
    run = info["run"]
    assert said[:2] == [f"{run} on csqa: 3 answer outputs, 3 from the cache (0 s generating)",
                        f"{run} on csqa: 3 rationale outputs, 3 from the cache (0 s generating)"]
    assert said[2].startswith(f"{run} on csqa: options of 2 items scored in ")
    assert [(r.output, r.loglik_pred, r.loglik_norm_pred, r.faithfulness_perturbed) for r in again] == \
           [(r.output, r.loglik_pred, r.loglik_norm_pred, r.faithfulness_perturbed) for r in first]
    assert all(not math.isnan(r.seconds) for r in first) and all(math.isnan(r.seconds) for r in again)
    evaluate_run(info, adapter, tests, params(9), "cpu", cache=cache)
    assert generated == [3, 3, 3, 3]  # another max_new_tokens is another output
    make_adapter(adapter, seed=1)
    evaluate_run(info, adapter, tests, params(8), "cpu", cache=cache)
    assert generated == [3, 3, 3, 3, 3, 3]  # other weights: everything is generated again
    before = len(scored)
    real_code = ev.output_code_sha256
    monkeypatch.setattr(ev, "output_code_sha256", lambda kind: "a fix" if kind == "scoring" else real_code(kind))
    evaluate_run(info, adapter, tests, params(8), "cpu", cache=cache)
    assert generated == [3] * 6 and len(scored) > before  # other scoring code: scored again, nothing generated
    monkeypatch.setattr(ev, "output_code_sha256", lambda kind: "another fix" if kind == "generation" else "a fix")
    evaluate_run(info, adapter, tests, params(8), "cpu", cache=cache)
    assert generated == [3] * 8  # other generation code: generated again


def test_causal_explanations_are_cached_too(tmp_path, monkeypatch):
    import lib.models
    from lib.evaluation import evaluate_causal_run

    generated = []
    real_generate = lib.models.generate_texts

    def counting_generate(model, tokenizer, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return real_generate(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(lib.models, "generate_texts", counting_generate)
    adapter = tmp_path / "adapter"
    make_adapter(adapter, seed=0)
    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"evaluation.max_new_tokens": 8})
    info = run_info("CAUSAL")
    pairs = [{"id": f"c{i}", "claim": "Ice melts.", "evidence": "It is warm.", "evidence_label": "SUPPORTS",
              "claim_label": "SUPPORTS", "explanation": "Warmth melts ice.", "failure": None} for i in range(2)]
    first = evaluate_causal_run(info, adapter, pairs, params, "cpu", cache=tmp_path / "student_cache.sqlite")
    again = evaluate_causal_run(info, adapter, pairs, params, "cpu", cache=tmp_path / "student_cache.sqlite")
    assert generated == [2] and [r.rationale for r in again] == [r.rationale for r in first]
    assert first[0].reference == "Warmth melts ice." and math.isnan(again[0].seconds)


def counting_generation(monkeypatch) -> list[list[str]]:
    """Record the prompts of every batch the students generate for."""
    import lib.models

    prompts, real = [], lib.models.generate_texts

    def generate(model, tokenizer, batch, *args, **kwargs):
        prompts.append(list(batch))
        return real(model, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(lib.models, "generate_texts", generate)
    return prompts


def test_base_is_the_untrained_student_asked_like_ft_and_cached(tmp_path, monkeypatch):
    import lib.evaluation as ev
    from lib.conditions import eval_prompts
    from lib.files import sha256_json
    from lib.models import model_provenance, TINY_GEMMA
    from lib.student_cache import student_weights_hash

    prompts, loads, real_load = counting_generation(monkeypatch), [], ev.load_student
    monkeypatch.setattr(ev, "load_student", lambda *a: loads.append(a) or real_load(*a))
    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"evaluation.max_new_tokens": 8,
                                                                   "evaluation.score_max_items": 2})
    tests, cache = {"csqa": [q(1), q(2)]}, tmp_path / "student_cache.sqlite"
    rows = evaluate_run(run_info("BASE", trained=False), None, tests, params, "cpu", cache=cache)
    assert loads == [(TINY_GEMMA, None, "cpu", "lora")]  # the base model itself, no adapter
    assert prompts == [[eval_prompts("FT", x, "")["answer"] for x in tests["csqa"]]]
    assert {(r.condition, r.train_set, r.rationale_source) for r in rows} == {("BASE", "", "unrevised")}
    assert rows[0].loglik_pred is not None
    again = evaluate_run(run_info("BASE", trained=False), None, tests, params, "cpu", cache=cache)
    assert len(prompts) == 1 and len(loads) == 1 and [r.output for r in again] == [r.output for r in rows]
    assert student_weights_hash(TINY_GEMMA, None) == sha256_json({"base": model_provenance(TINY_GEMMA)})


def test_a_qlora_student_is_evaluated_on_its_4bit_base_without_merging(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel

    from lib.evaluation import load_student
    from lib.models import TINY_GEMMA

    adapter = tmp_path / "adapter"
    make_adapter(adapter, seed=0)
    qlora, _ = load_student(TINY_GEMMA, adapter, "cpu", "qlora")
    assert isinstance(qlora, PeftModel) and any(isinstance(m, Linear4bit) for m in qlora.modules())
    assert any("lora_A" in name for name, _ in qlora.named_parameters())  # applied, not merged away
    lora, _ = load_student(TINY_GEMMA, adapter, "cpu", "lora")
    assert not isinstance(lora, PeftModel) and not any(isinstance(m, Linear4bit) for m in lora.modules())
    base, _ = load_student(TINY_GEMMA, None, "cpu", "qlora")  # a QLoRA study's BASE: the same 4-bit base
    assert any(isinstance(m, Linear4bit) for m in base.modules())
    prompts = counting_generation(monkeypatch)
    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"evaluation.max_new_tokens": 8,
                                                                   "evaluation.loglik": False})
    cache, tests = tmp_path / "student_cache.sqlite", {"csqa": [q(1)]}
    for finetune in ("lora", "qlora", "qlora"):
        evaluate_run(run_info("FT", finetune=finetune), adapter, tests, params, "cpu", cache=cache)
    assert len(prompts) == 2  # the same adapter loaded another way is another student in the cache


def test_teacher_rows_are_the_teachers_answers_to_the_in_distribution_questions():
    from lib.conditions import TEACHER
    from lib.evaluation import teacher_rows

    qs = [q(1, answer=1), q(2, answer=0), q(3, answer=2), q(4)]
    rationale = {"view": "cot", "backend": "replay", "model": "PaLM-540B", "template": "t", "template_sha256": "",
                 "prompt_tokens": 0, "completion_tokens": 3}
    recorded = [dict(rationale, id="q1", split="test", rationale="Because b.", answer=1, correct=True, failure=None,
                     raw="Because b. So the answer is (b)."),
                dict(rationale, id="q2", split="test", rationale="Hmm.", answer=None, correct=False,
                     failure="unparseable", raw="Hmm."),
                dict(rationale, id="q3", split="test", rationale="", answer=None, correct=False,
                     failure="not recorded", raw=""),
                dict(rationale, id="q4", split="train", rationale="x", answer=0, correct=True, failure=None, raw="x"),
                dict(rationale, id="zz", split="test", rationale="x", answer=0, correct=True, failure=None, raw="x")]
    rows = teacher_rows(recorded, "csqa", qs)
    assert [(r.item_id, r.prediction, r.correct, r.unparseable, r.gold) for r in rows] == \
           [("q1", 1, 1, 0, 1), ("q2", None, 0, 1, 0)]
    first = rows[0]
    assert (first.condition, first.student, first.seed, first.test_set, first.rationale_source) == \
           (TEACHER, "PaLM-540B", 0, "csqa", "unrevised")
    assert first.rationale == "Because b." and first.output.endswith("(b).") and first.rationale_len == 2
    assert all(math.isnan(v) for v in (first.cec, first.cec_fc, first.cec_bf, first.bleu, first.seconds))
    students = [item("MT__s", "MT", "csqa", "q1", 1), item("MT__s", "MT", "arc", "a1", 0)]
    m = ood_matrix(students + rows)
    assert m.loc[(TEACHER, "unrevised", "PaLM-540B", 0, "")].tolist()[0] == 50.0
    assert math.isnan(m.loc[(TEACHER, "unrevised", "PaLM-540B", 0, ""), "arc"])  # in-distribution column only
    assert summary_table(students + rows).set_index("condition").loc[TEACHER, "accuracy"] == 0.5


def test_evaluate_grid_reads_each_runs_adapter_field_and_adds_base_and_teacher(tmp_path, monkeypatch):
    from lib.data import Splits, write_splits
    from lib.evaluation import evaluate_grid
    from lib.files import write_jsonl
    from lib.runs import StepContext

    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml",
                         {"evaluation.max_new_tokens": 8, "evaluation.score_max_items": 2, "data.ood": [],
                          "evaluation.text_metrics": False, "evaluation.faithfulness": False})
    questions = [q(1), q(2, answer=1)]
    write_splits(tmp_path / "01_data", Splits(train=[q(9)], tests={"csqa": questions}, sources={}), [])
    trained = run_info("MT")
    make_adapter(tmp_path / "04_training" / "elsewhere" / "adapter", seed=0)  # not <run>/adapter
    write_jsonl(tmp_path / "04_training" / "runs.jsonl",
                [dict(trained, adapter="elsewhere/adapter"), run_info("BASE", trained=False)])
    write_jsonl(tmp_path / "02_teacher" / "rationales.jsonl",
                [{"id": x.id, "split": "test", "view": "cot", "rationale": "It is so.", "answer": 1,
                  "correct": x.answer == 1, "failure": None, "raw": "It is so. So the answer is (b).",
                  "backend": "local", "model": "teacher-lm", "template": "cot", "template_sha256": "",
                  "prompt_tokens": 1, "completion_tokens": 1} for x in questions])
    ctx = StepContext("05_evaluation", params, tmp_path)
    rows = evaluate_grid(ctx)
    by_condition = {c: [r for r in rows if r.condition == c] for c in ("MT", "BASE", "TEACHER")}
    assert {c: len(v) for c, v in by_condition.items()} == {"MT": 2, "BASE": 2, "TEACHER": 2}
    assert [r.correct for r in by_condition["TEACHER"]] == [0, 1]
    assert all(not math.isnan(r.cec) for r in by_condition["MT"] + by_condition["BASE"])  # scored against the teacher
    assert all(math.isnan(r.cec) for r in by_condition["TEACHER"])  # the reference itself


def test_bf16_scores_and_generates_under_autocast_and_is_cached_apart_from_fp32(tmp_path, monkeypatch):
    """run.precision: a student's outputs and scores in bf16 are other cache entries than in fp32."""
    import torch

    import lib.models
    import lib.scoring

    seen = {"generate": [], "score": []}
    real_generate, real_score = lib.models.generate_texts, lib.scoring.continuation_logliks

    def generate(*args, **kwargs):
        seen["generate"].append(torch.is_autocast_enabled("cpu"))
        return real_generate(*args, **kwargs)

    def score(*args, **kwargs):
        seen["score"].append(torch.is_autocast_enabled("cpu"))
        return real_score(*args, **kwargs)

    monkeypatch.setattr(lib.models, "generate_texts", generate)
    monkeypatch.setattr("lib.evaluation.continuation_logliks", score)
    adapter, cache = tmp_path / "adapter", tmp_path / "student_cache.sqlite"
    make_adapter(adapter, seed=0)

    def run(precision: str) -> None:
        params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"run.precision": precision,
                                                                      "evaluation.max_new_tokens": 8,
                                                                      "evaluation.score_max_items": 2})
        evaluate_run(run_info("FT"), adapter, {"csqa": [q(1), q(2)]}, params, "cpu", cache=cache)

    run("fp32")
    assert seen["generate"] == [False] and seen["score"] and not any(seen["score"])
    scored = len(seen["score"])
    run("fp32")
    assert seen["generate"] == [False] and len(seen["score"]) == scored  # all from the cache
    run("bf16")
    assert seen["generate"] == [False, True] and len(seen["score"]) > scored and all(seen["score"][scored:])


def test_a_teacher_that_was_shown_the_answer_has_no_teacher_row():
    """Hendriks et al.'s LLaMA-2-13B rationalised the gold option: it is no predictor, so step 05 reports no TEACHER."""
    from lib.evaluation import teacher_rows

    row = {"view": "cot", "backend": "replay", "model": "LLaMA-2-13B (Hendriks et al., replayed)", "template": "t",
           "template_sha256": "", "prompt_tokens": 0, "completion_tokens": 3, "id": "q1", "split": "test",
           "rationale": "Because b.", "answer": None, "correct": False, "failure": None, "raw": "Because b.",
           "answer_given": True}
    assert teacher_rows([row], "csqa", [q(1, answer=1)]) == []
    assert len(teacher_rows([dict(row, answer_given=False)], "csqa", [q(1, answer=1)])) == 1
