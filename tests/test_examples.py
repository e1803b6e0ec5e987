"""Training examples: each condition's format, the rationale filter, the Revised factor and tokenisation."""

import dataclasses
import logging

import pytest

from lib.conditions import eval_prompts, task_weights
from lib.examples import collate, condition_examples, load_condition_examples, revised_rationales, tokenize_examples
from lib.files import write_jsonl
from lib.models import load_causal_lm, load_tokenizer, TINY_GEMMA, TINY_T5
from lib.prompts import causal_student_prompt, claim_evidence_text
from lib.questions import MCQuestion

STRATEGY = {"positive": "[Direct election]", "negative": "[Elimination method]"}


def questions():
    return [MCQuestion(id=f"q{i}", question=f"Where is thing {i} kept?", choices=["box", "sky", "sea"],
                       labels=list("ABC"), answer=i % 3) for i in range(3)]


RATIONALES = {"q0": "Things are kept in boxes.", "q1": "Birds fly in the sky.", "q2": "Fish swim in the sea."}
CF_RATIONALES = [{"id": "q0", "option": 1, "text": "Things float up to the sky.", "teacher_model": "t", "template_sha256": "x"},
                 {"id": "q1", "option": 2, "text": "Birds live under the sea.", "teacher_model": "t", "template_sha256": "x"},
                 {"id": "q2", "option": 2, "text": "This one names the gold option and is dropped.",
                  "teacher_model": "t", "template_sha256": "x"}]
CAUSAL_ROWS = [{"id": "c0", "split": "train", "claim": "Ice melts.", "evidence": "Warming raises temperature.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Warming causes melting.",
                "failure": None},
               {"id": "c1", "split": "train", "claim": "Seas rise.", "evidence": "Water expands when heated.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Heat expands water.",
                "failure": None},
               {"id": "c2", "split": "train", "claim": "x", "evidence": "y", "claim_label": "REFUTES",
                "evidence_label": "REFUTES", "explanation": "", "failure": "empty"},
               {"id": "c3", "split": "test", "claim": "CO2 warms.", "evidence": "CO2 traps heat.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Trapping heat warms.",
                "failure": None}]
ALL_CONDITIONS = ["FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD", "CAUSAL"]


def all_examples(condition):
    return condition_examples(condition, questions(), RATIONALES, VIEWS, STRATEGY, None, CF_RATIONALES, CAUSAL_ROWS)


VIEWS = [{"id": "q0", "strategy": "positive", "text": "Boxes hold things."},
         {"id": "q1", "strategy": "negative", "text": "A box is not the sky."}]


def test_condition_formats():
    qs = questions()
    ft = condition_examples("FT", qs, RATIONALES)
    assert ft[0].target == " So the answer is (a) box." and ft[0].prompt.endswith("\nA:")
    cot = condition_examples("FT-CoT", qs, RATIONALES)
    assert cot[1].target == " Birds fly in the sky. So the answer is (b) sky."
    mt = condition_examples("MT", qs, RATIONALES)
    assert sorted({e.task for e in mt}) == ["answer", "rationale"] and len(mt) == 6
    assert mt[0].prompt.startswith("[answer] Q:") and mt[1].prompt.startswith("[rationale] Q:")
    cfd = condition_examples("CFD", qs, RATIONALES, VIEWS, STRATEGY)
    assert cfd[0].prompt.startswith("[Direct election]") and cfd[1].prompt.startswith("[Elimination method]")
    assert cfd[1].target.endswith("So the answer is (b) sky.")
    with pytest.raises(ValueError, match="multi-view artifacts of step 03"):
        condition_examples("CFD", qs, RATIONALES)


def test_cf_formats_follow_scott():
    cf = all_examples("CF")
    fact = [e for e in cf if e.task == "factual"]
    counter = [e for e in cf if e.task == "counterfactual"]
    assert len(fact) == 3 and len(counter) == 2  # q2's row argues for the gold option: dropped
    assert fact[0].prompt.startswith("[factual] Q:") and fact[0].target == " Things are kept in boxes. So the answer is (a) box."
    assert counter[0].prompt.startswith("[counterfactual] Q:")
    assert counter[0].prompt.endswith("\nA: Things float up to the sky.")  # the wrong option's rationale is read
    assert counter[0].target == " So the answer is (b) sky." and counter[0].closing == "So the answer is (b) sky."
    again = [dict(CF_RATIONALES[0], option=2, text="Things sink to the sea.")]  # a second row for q0
    cf_two = condition_examples("CF", questions(), RATIONALES, cf_rationales=CF_RATIONALES + again)
    assert [e.target for e in cf_two if e.task == "counterfactual" and e.qid == "q0"] == [" So the answer is (b) sky."]
    both = all_examples("MT+CF")
    assert {e.task for e in both} == {"answer", "rationale", "factual", "counterfactual"} and len(both) == 11
    assert eval_prompts("CF", questions()[0], "[Direct election]")["answer"].startswith("[factual] Q:")
    with pytest.raises(ValueError, match="cf_rationales.jsonl"):
        condition_examples("CF", questions(), RATIONALES)
    with pytest.raises(ValueError, match="rerun step 03"):
        condition_examples("CF", questions(), RATIONALES, cf_rationales=CF_RATIONALES[2:])


def test_causal_format_uses_train_rows_without_failure():
    ex = all_examples("CAUSAL")
    assert [e.qid for e in ex] == ["c0", "c1"] and {e.task for e in ex} == {"explanation"}
    assert ex[0].prompt == ("Claim: Ice melts.\nEvidence: Warming raises temperature.\nEvidence label: SUPPORTS\n"
                            "Explanation:")
    assert ex[0].target == " Warming causes melting."
    assert causal_student_prompt(CAUSAL_ROWS[3]).startswith("Claim: CO2 warms.")
    with pytest.raises(ValueError, match="step 02_teacher"):
        condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[2:3])
    with pytest.raises(ValueError, match="causal_student_prompt"):
        eval_prompts("CAUSAL", questions()[0], "[Direct election]")


def test_causal_rationale_filter_any_trains_on_a_failed_explanation_as_written():
    failed = [{**CAUSAL_ROWS[2], "raw": "Heat comes first {not json"}]
    assert condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[:2] + failed,
                              rationale_filter="parsed")[-1].qid == "c1"
    ex = condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[:2] + failed, rationale_filter="any")
    assert [e.qid for e in ex] == ["c0", "c1", "c2"] and ex[-1].target == " Heat comes first {not json"


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(TINY_GEMMA, padding_side="right"), load_causal_lm(TINY_GEMMA)


def test_collate_pads_to_longest_and_masks_prompt(tiny):
    tok, _ = tiny
    rows = tokenize_examples(condition_examples("MT", questions(), RATIONALES), tok, 512, ["answer", "rationale"])
    batch = collate(rows[:3], tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows[:3])
    first = rows[0]
    n_prompt = sum(1 for x in first["labels"] if x == -100)
    assert n_prompt > 0 and all(x != -100 for x in first["labels"][n_prompt:])


LONG_RATIONALES = {q: " ".join([text] * 12) for q, text in RATIONALES.items()}


def _closing_length(tok, text):
    """Tokens of an answer sentence after a space, and EOS."""
    return len(tok(" " + text, add_special_tokens=False)["input_ids"]) + 1


def test_examples_that_fit_are_not_cut(tiny):
    tok, _ = tiny
    examples = condition_examples("FT-CoT", questions(), RATIONALES)
    rows = tokenize_examples(examples, tok, 512, ["cot"])
    for e, r in zip(examples, rows):
        prompt = tok(e.prompt)["input_ids"]  # <bos> and the prompt, as generation reads it
        assert prompt[0] == tok.bos_token_id
        assert r["input_ids"] == prompt + tok(e.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert r["labels"][:len(prompt)] == [-100] * len(prompt) and not r["truncated"]


def test_truncation_shortens_the_rationale_and_keeps_the_answer_sentence_and_eos(tiny):
    tok, _ = tiny
    examples = condition_examples("FT-CoT", questions(), LONG_RATIONALES)
    rows = tokenize_examples(examples, tok, 96, ["cot"])
    assert len(rows) == 3
    for e, r in zip(examples, rows):
        prompt = tok(e.prompt)["input_ids"]  # <bos> and the prompt
        assert r["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(r["input_ids"][:-1]).endswith(" So the answer is " + e.target.rsplit("is ", 1)[1])
        assert len(r["input_ids"]) == len(r["labels"]) == 96 and r["truncated"]
        assert r["input_ids"][:len(prompt)] == prompt  # the whole prompt
        assert tok.decode(r["labels"][len(prompt):len(prompt) + 6]) == tok.decode(
            tok(e.target, add_special_tokens=False)["input_ids"][:6])  # the rationale's start is kept


def test_truncation_cuts_the_prompt_start_when_the_prompt_alone_is_too_long(tiny):
    tok, _ = tiny
    e = condition_examples("FT-CoT", questions(), RATIONALES)[0]
    prompt = tok(e.prompt, add_special_tokens=False)["input_ids"]
    n_closing = _closing_length(tok, "So the answer is (a) box.")
    (row,) = tokenize_examples([e], tok, n_closing + 10, ["cot"])
    target = [x for x in row["labels"] if x != -100]
    assert tok.decode(target[:-1]).strip() == "So the answer is (a) box." and target[-1] == tok.eos_token_id
    assert row["input_ids"][:10] == [tok.bos_token_id] + prompt[-9:]  # <bos> stays, then the prompt's end
    assert len(row["input_ids"]) == 10 + len(target) and row["truncated"]
    assert tokenize_examples([e], tok, n_closing + 1, ["cot"]) == []  # <bos> and no prompt token: skipped


def test_truncation_of_a_target_without_answer_sentence_keeps_its_eos(tiny):
    tok, _ = tiny
    examples = [e for e in condition_examples("MT", questions(), LONG_RATIONALES) if e.task == "rationale"]
    rows = tokenize_examples(examples, tok, 80, ["answer", "rationale"])
    assert len(rows) == 3 and all(len(r["input_ids"]) == 80 and r["labels"][-1] == tok.eos_token_id for r in rows)
    assert all(r["truncated"] for r in rows)
    room = len(tok(examples[0].prompt)["input_ids"]) + 1
    assert tokenize_examples(examples, tok, room, ["answer", "rationale"]) == []  # only EOS would be left: skipped


def test_seq2seq_truncation_keeps_the_answer_sentence_and_eos():
    tok = load_tokenizer(TINY_T5, padding_side="right")
    examples = condition_examples("FT-CoT", questions(), LONG_RATIONALES)
    rows = tokenize_examples(examples, tok, 40, ["cot"], seq2seq=True)
    for e, r in zip(examples, rows):
        assert len(r["labels"]) == 40 and r["labels"][-1] == tok.eos_token_id
        assert tok.decode(r["labels"][:-1]).endswith(" So the answer is " + e.target.rsplit("is ", 1)[1])
        assert r["truncated"]
        head, prompt = tok(e.prompt)["input_ids"][:1], tok(e.prompt)["input_ids"][1:]  # the tiny T5 adds <bos>
        assert head == [tok.bos_token_id]
        assert r["input_ids"] == head + prompt[-39:]  # its special tokens, then the end of the prompt


REVISIONS = [{"id": "q0", "split": "train", "revised": "Boxes are made to keep things. So the answer is (a) box.",
              "failure": None},
             {"id": "q1", "split": "train", "revised": "The sky is where birds fly", "failure": "revise: truncated"},
             {"id": "q2", "split": "train", "revised": "", "failure": "explain: empty"}]


def test_revised_rationales_keep_rows_without_failure_and_any_keeps_failed_text():
    assert revised_rationales(REVISIONS) == {"q0": "Boxes are made to keep things."}  # concluding sentence removed
    assert revised_rationales(REVISIONS, "correct") == {"q0": "Boxes are made to keep things."}
    assert revised_rationales(REVISIONS, "any") == {"q0": "Boxes are made to keep things.",
                                                     "q1": "The sky is where birds fly"}


def _write_run(tmp_path):
    """Steps 01-03's artifacts for the three test questions, as a step context of the smoke params."""
    from lib.files import PROJECT_ROOT
    from lib.params import load_params
    from lib.runs import StepContext

    write_jsonl(tmp_path / "01_data" / "train.jsonl", [dataclasses.asdict(q) for q in questions()])
    write_jsonl(tmp_path / "02_teacher" / "rationales.jsonl",
                [{"id": q, "split": "train", "rationale": text, "failure": None, "correct": True}
                 for q, text in RATIONALES.items()])
    write_jsonl(tmp_path / "02_teacher" / "revisions.jsonl", REVISIONS)
    write_jsonl(tmp_path / "02_teacher" / "causal.jsonl", CAUSAL_ROWS)
    write_jsonl(tmp_path / "03_counterfactuals" / "cf_rationales.jsonl", CF_RATIONALES)
    write_jsonl(tmp_path / "03_counterfactuals" / "multiview.jsonl", VIEWS)
    write_jsonl(tmp_path / "03_counterfactuals" / "cf_questions.jsonl", [])
    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"training.rationale_filter": "parsed"})
    return StepContext("04_training", params, tmp_path)


def test_load_condition_examples_builds_each_condition_and_source(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lib.examples"):
        examples = load_condition_examples(_write_run(tmp_path))
    assert set(examples) == {("FT", "unrevised"), ("CFD", "unrevised"), ("CAUSAL", "unrevised")} | {
        (c, s) for c in ("FT-CoT", "MT", "CF", "MT+CF") for s in ("unrevised", "revised")}  # BASE is not trained
    assert [e.target for e in examples[("FT-CoT", "revised")]] == [" Boxes are made to keep things. So the answer is (a) box."]
    assert [e.target for e in examples[("FT-CoT", "unrevised")]][0] == " Things are kept in boxes. So the answer is (a) box."
    assert {e.qid for e in examples[("MT", "revised")]} == {"q0"}  # q1, q2 have no usable revision: left out entirely
    assert len(examples[("MT", "revised")]) == 2 and len(examples[("MT", "unrevised")]) == 6
    cf = examples[("CF", "revised")]
    assert [(e.task, e.target) for e in cf] == [("factual", " Boxes are made to keep things. So the answer is (a) box."),
                                                ("counterfactual", " So the answer is (b) sky.")]
    assert "MT (revised): 1 of 3 training questions have a revised explanation; the other 2 are left out" in caplog.text
    assert examples[("CAUSAL", "unrevised")][0].prompt.endswith("Evidence label: SUPPORTS\nExplanation:")


def test_a_revised_run_without_any_usable_revision_says_what_to_change(tmp_path):
    ctx = _write_run(tmp_path)
    write_jsonl(tmp_path / "02_teacher" / "revisions.jsonl", REVISIONS[1:])
    with pytest.raises(ValueError, match="FT-CoT \\(revised\\): no training question.*rationale_filter: any"):
        load_condition_examples(ctx)


def test_causal_student_prompt_shows_the_evidence_label_the_teacher_saw():
    row = {**CAUSAL_ROWS[0], "claim_label": "DISPUTED", "evidence_label": "REFUTES"}
    (ex,) = condition_examples("CAUSAL", [], {}, causal_rows=[row])
    assert ex.prompt == claim_evidence_text(row) + "\nExplanation:" and "Evidence label: REFUTES" in ex.prompt
    assert "DISPUTED" not in ex.prompt


def test_base_is_asked_like_ft_and_has_no_training_examples():
    q = questions()[0]
    assert eval_prompts("BASE", q, "[Direct election]") == eval_prompts("FT", q, "[Direct election]")
    assert list(eval_prompts("BASE", q, "x")) == ["answer"] and eval_prompts("BASE", q, "x")["answer"].endswith("\nA:")
    assert task_weights("BASE", 0.5) == {}
    with pytest.raises(ValueError, match="untrained"):
        condition_examples("BASE", questions(), RATIONALES)


def test_text_answers_close_every_target_with_the_option_text_and_read_back():
    """training.answer_format: text: "So the answer is bed." (no letter), and the answer reader finds the option."""
    from lib.metrics import extract_answer

    qs = questions()
    for condition in ("FT", "FT-CoT", "MT", "CFD"):
        letters = condition_examples(condition, qs, RATIONALES, VIEWS, STRATEGY)
        texts = condition_examples(condition, qs, RATIONALES, VIEWS, STRATEGY, answer_format="text")
        for lx, tx in zip(letters, texts):
            q = next(q for q in qs if q.id == tx.qid)
            if not tx.closing:
                continue  # MT's [rationale] examples have no answer sentence
            assert tx.closing == f"So the answer is {q.choices[q.answer]}." and "(" not in tx.closing
            assert lx.closing.startswith("So the answer is (")
            assert extract_answer(tx.target, q.choices) == q.answer


def test_text_answers_are_not_scored_with_a_lettered_sentence():
    from lib.params import ParamsError, validate_params

    with pytest.raises(ParamsError, match="answer_text"):
        validate_params({"data": {"train": {"name": "s", "format": "commonsenseqa",
                                            "source": "data/sample/commonsenseqa_sample.jsonl"}},
                         "training": {"answer_format": "text"}, "evaluation": {"loglik_scoring": "answer_sentence"}},
                        "test")


def test_mt_cf_is_asked_like_mt_and_cf_with_its_factual_prefix():
    """Hendriks et al. read MT+CF through its multitask answer head ([predict]); CF through [factual]."""
    from lib.conditions import eval_prompts

    q = questions()[0]
    assert eval_prompts("MT+CF", q, "[Direct election]") == eval_prompts("MT", q, "[Direct election]")
    assert eval_prompts("CF", q, "[Direct election]")["answer"].startswith("[factual] Q:")
