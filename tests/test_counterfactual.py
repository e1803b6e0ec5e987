"""Counterfactual questions: span location, masking, refill rules and the self-consistency vote."""

import random

import pytest

from lib.counterfactual import (
    MASK, acceptance_summary, accepted_questions, build_cf_rationales, build_counterfactuals, build_views, choose_span, clean_refill,
    locate_span,
    mask_span, pick_new_target, refill_problem, vote,
)
from lib.data import MCQuestion
from lib.models import Completion
from lib.params import CounterfactualParams


def q(qid="q1", text="Where would you keep a spare umbrella?", concept="umbrella", answer=0):
    return MCQuestion(id=qid, question=text, choices=["closet", "oven", "pond", "fridge", "lake"],
                      labels=list("ABCDE"), answer=answer, concept=concept, source="test")


class ScriptedTeacher:
    """Answers refill prompts with a fixed fill and CoT prompts with scripted letters."""

    name = "scripted"

    def __init__(self, fill: str, letters: list[str], topic: str = "nothing here"):
        self.fill, self.letters, self.calls, self.topic = fill, letters, [], topic

    def complete(self, prompts, max_new_tokens=None, temperature=None, n=1, desc=""):
        self.calls.append((desc, len(prompts), n))
        out = []
        for p in prompts:
            if p.startswith("Name the words"):
                out.append([Completion(self.topic, "stop", 1, 1)])
            elif p.startswith("Replace [MASK]"):
                out.append([Completion(self.fill, "stop", 1, 1)])
            elif "Explain step by step" in p or "Write the reasoning" in p:
                out.append([Completion("Because it fits. So the answer is (a).", "stop", 1, 1)])
            else:
                out.append([Completion(f"It must be that. So the answer is ({l}).", "stop", 1, 1)
                            for l in self.letters[:n]])
        return out


def test_locate_span_is_whole_word_and_case_insensitive():
    text = "An Umbrella stand holds umbrellas."
    assert locate_span(text, "umbrella") == (3, 11)
    assert locate_span("umbrellas only", "umbrella") is None
    assert locate_span(text, "") is None


def test_mask_span_replaces_only_the_span():
    text = "Where would you keep a spare umbrella?"
    span = locate_span(text, "umbrella")
    assert mask_span(text, span) == f"Where would you keep a spare {MASK}?"


def test_refill_rules():
    question = q()
    assert refill_problem(question, "umbrella", "") == "empty refill"
    assert refill_problem(question, "umbrella", "Umbrella") == "refill leaves the question unchanged"
    assert refill_problem(question, "umbrella", "coat from the closet") == "refill names the old answer"
    assert refill_problem(question, "umbrella", f"{MASK} cake") == "refill still contains [MASK]"
    assert refill_problem(question, "umbrella", "frozen pizza") is None
    assert refill_problem(question, "umbrella", "box for the freezer", new_answer="freezer") == \
        "refill names the new answer"
    assert refill_problem(question, "umbrella", "frozen pizza", new_answer="freezer") is None
    masked = f"Where would you keep a spare {MASK}?"
    assert refill_problem(question, "umbrella", "Where would you keep a spare pizza", masked) == \
        "refill rewrites words outside the mask"
    assert refill_problem(question, "umbrella", "frozen pizza", masked) is None
    assert clean_refill('"frozen pizza".\nmore text') == "frozen pizza"


def test_vote_threshold():
    assert vote([1, 1, 2], target=1, threshold=0.6) == (pytest.approx(2 / 3), True)
    assert vote([1, None, 2], target=1, threshold=0.6) == (pytest.approx(1 / 3), False)
    assert vote([], target=1, threshold=0.5) == (0.0, False)


def test_new_target_is_a_distractor():
    question = q(answer=2)
    assert pick_new_target(question, "first_distractor", random.Random(0)) == 0
    picks = {pick_new_target(question, "random_distractor", random.Random(s)) for s in range(20)}
    assert 2 not in picks and len(picks) > 1


def test_build_accepts_consistent_and_rejects_inconsistent():
    params = CounterfactualParams(max_questions=3, votes=3, accept_threshold=0.6)
    qs = [q("q1"), q("q2", text="Where do you bake bread?", concept="bread"), q("q3", concept="not in text")]
    # first distractor of every question is option (b); 2 of 3 votes say (b) -> accepted
    accepted = build_counterfactuals(qs, ScriptedTeacher("frozen pizza", ["b", "b", "c"]), params, n_shots=0, seed=0)
    assert [r.accepted for r in accepted] == [True, True, False]
    assert accepted[2].reason == "no topic words found in the question"
    assert accepted[0].span_source == "question_concept" and accepted[0].topic_words == "nothing here"
    assert accepted[0].question == "Where would you keep a spare frozen pizza?"
    assert accepted[0].span == (29, 37) and accepted[0].votes == [1, 1, 2]
    rejected = build_counterfactuals(qs[:1], ScriptedTeacher("frozen pizza", ["b", "c", "c"]), params, 0, 0)
    assert not rejected[0].accepted and rejected[0].reason.startswith("votes below threshold")
    summary = acceptance_summary(accepted, qs)
    assert summary["attempted"] == 3 and summary["accepted"] == 2
    assert summary["reasons"] == {"accepted": 2, "no topic words found in the question": 1}
    cf_qs = accepted_questions(accepted, qs)
    assert [c.id for c in cf_qs] == ["q1-cf", "q2-cf"] and cf_qs[0].answer == 1


def test_views_reuse_step02_rationale_and_refute_wrong_options():
    params = CounterfactualParams(max_questions=2, negative_views=2)
    qs = [q("q1"), q("q2")]
    views = build_views(qs, [], {"q1": "Umbrellas live in closets."}, ScriptedTeacher("", []), params, seed=0)
    positives = [v for v in views if v.strategy == "positive"]
    negatives = [v for v in views if v.strategy == "negative"]
    assert [(v.id, v.text) for v in positives] == [("q1", "Umbrellas live in closets.")]
    assert len(negatives) == 4 and all(v.option != 0 for v in negatives)


def test_cf_rationales_argue_for_a_wrong_option():
    params = CounterfactualParams(cf_rationale_questions=2)
    qs = [q("q1"), q("q2", answer=3), q("q3")]
    rows = build_cf_rationales({"train": qs, "test": [q("t1", answer=1)]}, ScriptedTeacher("", []), params, seed=0)
    assert [(r.id, r.split) for r in rows] == [("q1", "train"), ("q2", "train"), ("t1", "test")]
    assert rows[2].option != 1
    assert rows[0].option != 0 and rows[1].option != 3
    assert rows[0].text == "Because it fits." and rows[0].template_sha256


def test_teacher_topic_words_are_located_and_preferred_to_the_concept():
    question = q(text="Where would you keep a spare umbrella near the door?")
    assert choose_span(question, "spare umbrella, door") == ((23, 37), "teacher")
    assert choose_span(question, "raincoat") == ((29, 37), "question_concept")
    assert choose_span(q(concept="zzz"), "raincoat") == (None, "question_concept")
    params = CounterfactualParams(max_questions=1, votes=1, accept_threshold=1.0)
    rows = build_counterfactuals([question], ScriptedTeacher("frozen pizza", ["b"], topic="Spare umbrella"),
                                 params, n_shots=0, seed=0)
    assert rows[0].span_source == "teacher" and rows[0].span_text == "spare umbrella"
    assert rows[0].question == "Where would you keep a frozen pizza near the door?" and rows[0].accepted
