"""Tests of lib.scoring: continuation log-likelihoods, option picks per scoring, perturbations and faithfulness."""

from __future__ import annotations

import pytest

from lib.params import EvaluationParams
from lib.questions import MCQuestion
from lib.scoring import (
    continuation_logliks,
    faithfulness,
    loglik_choices,
    LOGLIK_SCORINGS,
    option_continuations,
    OptionPick,
    perturbed_rationales,
)
from tests.test_evaluation import q


@pytest.fixture(scope="module")
def tiny():
    from lib.models import load_causal_lm, load_tokenizer, TINY_GEMMA

    return load_causal_lm(TINY_GEMMA), load_tokenizer(TINY_GEMMA)


def test_continuation_logliks_match_a_direct_computation(tiny):
    import torch

    model, tok = tiny
    pairs = [("Q: Where is ice?\nA:", " So the answer is (a) cold."), ("Q: Hi\nA:", " So the answer is (b) hot place.")]
    got = continuation_logliks(model, tok, pairs, batch_size=2)
    for (ctx, cont), value in zip(pairs, got):
        c = tok(ctx)["input_ids"]  # the tokenizer's own encoding, <bos> and all
        t = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + t])).logits[0].float(), -1)
        want = sum(float(logp[len(c) - 1 + k, tok_id]) for k, tok_id in enumerate(t))
        assert value == pytest.approx(want, abs=1e-3)
    # batching and order do not change the scores
    assert continuation_logliks(model, tok, pairs[::-1], batch_size=1) == pytest.approx(got[::-1], abs=1e-4)


def _joint(model, tok, pairs):
    """Each pair scored as one sequence, one at a time: the reference the shared-context path must agree with."""
    from lib.scoring import _joint_logliks, encode_pairs

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _joint_logliks(base, tok, encode_pairs(tok, pairs), batch_size=1, desc="")


def test_options_sharing_a_context_score_as_if_each_were_read_whole(tiny):
    # contexts of different lengths in one batch, options of different lengths, one context over the tiny
    # Gemma's sliding window (128 tokens: read whole instead), one pair alone, an empty continuation
    model, tok = tiny
    long = "Q: " + " ".join(f"word{i}" for i in range(80)) + "\nA: So the answer is"
    contexts = ["Q: Where is ice?\nA: So the answer is", "Q: Hi\nA: Ice is cold, so the answer is", long]
    pairs = [(c, o) for c in contexts for o in (" cold.", " a very hot place.", " bed.", "")] + [("Q: x\nA:", " y.")]
    got = continuation_logliks(model, tok, pairs, batch_size=2)
    assert got == pytest.approx(_joint(model, tok, pairs), abs=1e-4)
    assert got[3] == 0.0  # nothing to score


def test_a_shared_context_is_read_once(tiny, monkeypatch):
    model, tok = tiny
    read = []
    forward = model.model.forward

    def counting(*args, **kwargs):
        read.append(int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1]:].sum()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", counting)
    pairs = [("Q: Where would you find ice on a winter morning?\nA: So the answer is", o)
             for o in (" cold.", " hot.", " bed.", " sofa.", " lake.")]
    continuation_logliks(model, tok, pairs, batch_size=8)
    context = len(tok(pairs[0][0])["input_ids"])  # <bos> and the context
    options = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for _, o in pairs)
    assert read[0] == context and len(read) == 2 and read[1] < options  # not 5 x context; the options on its cache


def test_flash_attention_reads_each_pair_whole(tiny, monkeypatch):
    import lib.scoring

    model, tok = tiny
    calls = []

    def joint(base, tokenizer, encoded, *args):
        calls.append(("joint", len(encoded)))
        return [0.0] * len(encoded)

    def shared(base, tokenizer, groups, *args):
        calls.append(("shared", len(groups)))
        return [[0.0] * len(g) for g in groups]

    monkeypatch.setattr(lib.scoring, "_joint_logliks", joint)
    monkeypatch.setattr(lib.scoring, "_shared_context_logliks", shared)
    pairs = [("Q: a\nA:", " one."), ("Q: a\nA:", " two.")]
    continuation_logliks(model, tok, pairs)
    assert calls == [("shared", 1), ("joint", 0)]
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    calls.clear()
    continuation_logliks(model, tok, pairs)  # flash attention takes no padding between context and continuation
    assert calls == [("shared", 0), ("joint", 2)]


def test_shared_context_scoring_agrees_through_a_lora_adapter(tiny):
    import torch
    from peft import get_peft_model, LoraConfig

    model, tok = tiny
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    try:
        pairs = [(c, o) for c in ("Q: a b c\nA:", "Q: d\nA:") for o in (" one.", " two three.")]
        assert continuation_logliks(lora, tok, pairs, batch_size=4) == pytest.approx(_joint(lora, tok, pairs),
                                                                                       abs=1e-4)
    finally:
        lora.unload()


def test_loglik_choices_picks_the_most_likely_option(tiny):
    import functools

    questions = [q(1, 3), q(2, 5)]
    fake = {" So the answer is (c) opt12.": -1.0, " So the answer is (a) opt20.": -0.5}
    assert loglik_choices(lambda pairs: [fake.get(c, -9.0) for _, c in pairs], ["x", "y"], questions,
                          "answer_sentence") == [OptionPick(2, 2), OptionPick(0, 0)]
    model, tok = tiny  # the real scorer returns a valid index for every question and scoring
    for scoring in LOGLIK_SCORINGS:
        picks = loglik_choices(functools.partial(continuation_logliks, model, tok, batch_size=3),
                               ["Q: a\nA:", "Q: b\nA:"], questions, scoring)
        assert picks[0].total in range(3) and picks[1].per_char in range(5)


def test_option_continuations_per_scoring():
    x = MCQuestion(id="x", question="Where?", choices=["bed", "sofa bed"], labels=["A", "B"], answer=1)
    assert option_continuations("P", x, "answer_sentence") == [("P", " So the answer is (a) bed."),
                                                               ("P", " So the answer is (b) sofa bed.")]
    assert option_continuations("P", x, "option_text") == [("P", " bed"), ("P", " sofa bed")]
    assert option_continuations("P", x, "answer_text") == [("P So the answer is", " bed."),
                                                           ("P So the answer is", " sofa bed.")]
    with pytest.raises(ValueError, match="evaluation.loglik_scoring"):
        option_continuations("P", x, "letter")
    assert set(LOGLIK_SCORINGS) == set(EvaluationParams.model_fields["loglik_scoring"].annotation.__args__)


def test_a_letter_biased_model_does_not_decide_the_default_scoring():
    # a "model" that loves the letter (a) and otherwise prefers the right option's text by a little
    def score(pairs):
        return [(-1.0 if "opt" in t and t.strip(" .").endswith("1") else -2.0) + (5.0 if "(a)" in t else 0.0)
                for _, t in pairs]

    questions = [q(i, 3, answer=1) for i in range(4)]
    biased = loglik_choices(score, ["P"] * 4, questions, "answer_sentence")
    assert [p.total for p in biased] == [0, 0, 0, 0]  # the letter wins the old scoring
    default = loglik_choices(score, ["P"] * 4, questions, EvaluationParams().loglik_scoring)
    assert [p.total for p in default] == [1, 1, 1, 1] and [p.per_char for p in default] == [1, 1, 1, 1]


def test_per_char_pick_divides_by_the_continuation_length():
    x = MCQuestion(id="x", question="Q?", choices=["a", "much longer option"], labels=["A", "B"], answer=1)
    score = {" a": -3.0, " much longer option": -6.0}  # summed: the short option; per character: the long one
    assert loglik_choices(lambda pairs: [score[t] for _, t in pairs], ["P"], [x], "option_text") == [OptionPick(0, 1)]


def test_perturbed_rationales_other_item_and_shuffle():
    own = ["A one. A two.", "", "B one.", "C one. C two. C three."]
    assert perturbed_rationales(own, "other_item", 0) == ["B one.", "", "C one. C two. C three.", "A one. A two."]
    assert perturbed_rationales(["only"], "other_item", 0) == [""]
    shuffled = perturbed_rationales(own, "shuffle", 0)
    assert sorted(shuffled[0].split(" ")) == sorted(own[0].split(" ")) and shuffled[0] != own[0]
    assert shuffled[1] == ""
    assert shuffled[2] == "one. B" or shuffled[2] == ""  # one sentence: its words are shuffled
    with pytest.raises(ValueError, match="evaluation.perturbation"):
        perturbed_rationales(own, "reverse", 0)


def test_faithfulness_answer_change(monkeypatch):
    import lib.scoring

    # the "model": the answer (per character) is the option named by the rationale's last word (a digit), else 0
    def fake_choices(score, contexts, questions, scoring):
        assert scoring == "option_text"
        return [OptionPick(0, int(c.split()[-1]) if c.split()[-1].isdigit() else 0) for c in contexts]

    monkeypatch.setattr(lib.scoring, "loglik_choices", fake_choices)
    qs = [q(1), q(2), q(3)]
    res = faithfulness(None, ["P1", "P2", "P3"], qs, own=["r 1", "r 2", ""], perturbed=["p 1", "p 0", "p 2"],
                       counterfactual=[(2, "cf 2"), None, (1, "cf 1")], scoring="option_text")
    assert res[0] == {"faithfulness_perturbed": 0, "faithfulness_counterfactual": 1, "faithfulness_cf_follows": 1}
    assert res[1] == {"faithfulness_perturbed": 1, "faithfulness_counterfactual": None, "faithfulness_cf_follows": None}
    assert res[2] == dict.fromkeys(res[2], None)  # no own rationale: not measured
