"""Inputs as the model was trained to see them, and readings as lm-evaluation-harness computes them.

lm-eval runs here as it is (tests/lm_eval_reference.py): its own task YAML renders the prompts and computes acc and
acc_norm, its HFLM scores the pairs; lib.standard_readings and lib.scoring must agree with it on the same items.
"""

from __future__ import annotations

import pytest
import torch

from lib.data import load_multiple_choice
from lib.examples import condition_examples, tokenize_examples
from lib.files import PROJECT_ROOT
from lib.models import input_ids, load_causal_lm, load_tokenizer, prefix_ids, TINY_GEMMA
from lib.scoring import continuation_logliks, encode_pairs
from lib.standard_readings import reading_pairs, standard_picks
from tests.lm_eval_reference import hflm, hflm_logliks, lm_eval_requests, lm_eval_scores, lm_eval_task

SAMPLE = PROJECT_ROOT / "data" / "sample"


@pytest.fixture(scope="module")
def questions():
    """Sample CommonsenseQA (five options) and ARC (four) questions."""
    csqa = load_multiple_choice(str(SAMPLE / "commonsenseqa_sample.jsonl"), "commonsenseqa")[:6]
    arc = load_multiple_choice(str(SAMPLE / "arc_sample.jsonl"), "arc")[:6]
    return csqa, arc


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(TINY_GEMMA), load_tokenizer(TINY_GEMMA)


def test_the_prompts_are_the_ones_lm_evals_own_tasks_render(questions, tmp_path):
    csqa, arc = questions
    for qs in (csqa, arc):
        assert lm_eval_requests(lm_eval_task("arc_easy", qs, tmp_path / "cloze")) == [reading_pairs(q)[0] for q in qs]
    # commonsense_qa's template lists exactly five options
    assert lm_eval_requests(lm_eval_task("commonsense_qa", csqa, tmp_path / "lettered")) == [
        reading_pairs(q)[1] for q in csqa]


def test_the_scorer_gives_lm_evals_log_likelihoods(questions, tiny):
    """The same (context, continuation) pairs, within 1e-3 nats: both read <bos> first, as the tokenizer adds it."""
    model, tok = tiny
    pairs = [p for qs in questions for q in qs[:3] for p in (*reading_pairs(q)[0], *reading_pairs(q)[1])]
    ours = continuation_logliks(model, tok, pairs, batch_size=4)
    theirs = hflm_logliks(hflm(model, tok, batch_size=4), pairs)
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_acc_and_acc_norm_are_lm_evals_from_the_same_log_likelihoods(questions, tiny, tmp_path):
    model, tok = tiny

    def score(pairs):
        return continuation_logliks(model, tok, pairs)

    for name, qs in (("arc_easy", questions[1]), ("commonsense_qa", questions[0])):
        task = lm_eval_task(name, qs, tmp_path / name)
        theirs = lm_eval_scores(task, [score(pairs) for pairs in lm_eval_requests(task)])
        picks = standard_picks(score, qs)
        share = {reading: sum(getattr(p, reading) == q.answer for p, q in zip(picks, qs)) / len(qs)
                 for reading in ("cloze", "cloze_norm", "lettered")}
        if name == "arc_easy":
            assert (share["cloze"], share["cloze_norm"]) == (theirs["acc"], theirs["acc_norm"])
        else:
            assert share["lettered"] == theirs["acc"]


def test_gemmas_bos_comes_from_its_post_processor_and_every_stage_reads_it(gemma_tokenizer):
    """Gemma's tokenizer adds <bos> through its post-processor while `add_bos_token` is False: training, scoring and
    generation must all start with it, as Gemma was trained (without it, each option lost ~18 nats)."""
    tok = gemma_tokenizer
    assert tok("x")["input_ids"][0] == tok.bos_token_id and not getattr(tok, "add_bos_token", False)
    assert prefix_ids(tok) == [tok.bos_token_id]
    prompt = "Q: Where is ice?\nAnswer Choices:\n(a) fire\n(b) freezer\nA:"
    assert input_ids(tok, prompt) == tok(prompt)["input_ids"]
    ((context, _),) = encode_pairs(tok, [(prompt, " freezer")])
    assert context == tok(prompt)["input_ids"]


def test_every_conditions_prompt_reaches_the_model_identically_in_training_scoring_and_generation(tiny, monkeypatch):
    """Each prompt a condition is asked at test time is one it trained on, and its token ids (<bos> first) are the same
    in the training example, the scored context and the generation input."""
    import lib.models
    from lib.conditions import eval_prompts
    from tests.test_examples import all_examples, questions as example_questions, STRATEGY

    model, tok = tiny
    generated = []
    monkeypatch.setattr(model, "generate", lambda input_ids, attention_mask, **kw: generated.append(
        [t for t, m in zip(input_ids[0].tolist(), attention_mask[0].tolist()) if m]) or input_ids)
    for condition in ("FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD"):
        trained = {}
        for e in all_examples(condition):
            (row,) = tokenize_examples([e], tok, 4096, [e.task])
            trained.setdefault(e.prompt, row["input_ids"][:next(i for i, x in enumerate(row["labels"]) if x != -100)])
        asked = [(role, prompt) for q in example_questions()
                 for role, prompt in eval_prompts(condition, q, STRATEGY["positive"]).items() if prompt in trained]
        assert {role for role, _ in asked} == set(eval_prompts(condition, example_questions()[0], "[Direct election]"))
        for role, prompt in asked:  # (the fixture's CFD has a positive view for one question only)
            ((scored, _),) = encode_pairs(tok, [(prompt, " x")])
            lib.models.generate_texts(model, tok, [prompt], max_new_tokens=1, progress=False)
            assert trained[prompt] == scored == generated[-1] == input_ids(tok, prompt), (condition, role)
            assert scored[0] == tok.bos_token_id
