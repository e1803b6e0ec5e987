"""Counterfactual questions (lib.counterfactual): masking every located phrase, refill rules, new options, the
self-consistency vote and its bars; and multi-view CoT (lib.multiview: positive views that reach the gold answer, a
refutation per wrong option)."""

import json
import random

import pytest

from lib.counterfactual import (
    acceptance_by_bar,
    acceptance_summary,
    accepted_questions,
    build_cf_rationales,
    build_counterfactuals,
    choose_spans,
    clean_refill,
    Counterfactual,
    fill_masks,
    locate_spans,
    MASK,
    mask_spans,
    new_option_problem,
    non_overlapping,
    pick_new_target,
    refill_problem,
    refill_prompt,
    side_by_side,
    split_fills,
    vote,
)
from lib.models import Completion
from lib.multiview import build_views, positive_rationale, read_step02_rows, view_text, views_summary, wrong_options
from lib.params import CounterfactualParams
from lib.prompts import view_prompt
from lib.questions import MCQuestion


def q(qid="q1", text="Where would you keep a spare umbrella?", concept="umbrella", answer=0):
    return MCQuestion(id=qid, question=text, choices=["closet", "oven", "pond", "fridge", "lake"],
                      labels=list("ABCDE"), answer=answer, concept=concept, source="test")


def done(text: str, reason: str = "stop") -> Completion:
    return Completion(text, reason, 1, 1)


class ScriptedTeacher:
    """Answers each kind of prompt of step 03 with a scripted text; CoT prompts get the scripted vote letters."""

    name = "scripted"

    def __init__(self, fill: str, letters: list[str], topic: str = "nothing here", new_option: str = "garage",
                 refutation: str = "it does not fit.", positive: str = "Because it fits. So the answer is (a)."):
        self.fill, self.letters, self.topic, self.new_option = fill, letters, topic, new_option
        self.refutation, self.positive, self.calls, self.prompts = refutation, positive, [], []
        self.max_new_tokens = {}  # by desc: the token budget each kind of call was given

    def complete(self, prompts, max_new_tokens=None, temperature=None, n=1, desc=""):
        self.calls.append((desc, len(prompts), n))
        self.max_new_tokens[desc] = max_new_tokens
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            if p.startswith("Name the words"):
                out.append([done(self.topic)])
            elif p.startswith(("Replace [MASK]", "Replace each [MASK]")):
                out.append([done(self.fill)])
            elif p.startswith("Give a new answer"):
                out.append([done(self.new_option)])
            elif p.startswith("Say why an option"):
                out.append([done(self.refutation)])
            elif "Explain step by step" in p or "Write the reasoning" in p:
                out.append([done(self.positive)])
            else:
                out.append([done(f"It must be that. So the answer is ({l}).") for l in self.letters[:n]])
        return out


def step02(qid: str, raw: str, answer: int | None, rationale: str = "Umbrellas live in closets.",
           failure: str | None = None) -> dict:
    """A row of 02_teacher/rationales.jsonl."""
    return {"id": qid, "split": "train", "view": "cot", "rationale": rationale, "answer": answer,
            "correct": answer == 0, "failure": failure, "raw": raw, "backend": "local", "model": "teacher-x",
            "template": "cot", "template_sha256": "abc"}


# ---------------------------------------------------------------- masking


def test_locate_spans_finds_every_whole_word_occurrence_in_any_case():
    text = "An Umbrella stand holds umbrellas, and one umbrella."
    assert locate_spans(text, "umbrella") == [(3, 11), (43, 51)]
    assert locate_spans("umbrellas only", "umbrella") == []
    assert locate_spans(text, "") == []


def test_overlapping_spans_keep_the_earlier_then_the_longer():
    assert non_overlapping([(29, 37), (23, 37), (40, 44), (23, 28)]) == [(23, 37), (40, 44)]


def test_every_located_teacher_phrase_is_masked_at_every_occurrence():
    question = q(text="Where would you keep a spare umbrella near the umbrella stand by the door?")
    spans, source = choose_spans(question, "spare umbrella, umbrella and door")
    assert source == "teacher"
    assert [question.question[s:e] for s, e in spans] == ["spare umbrella", "umbrella", "door"]
    masked = mask_spans(question.question, spans)
    assert masked == f"Where would you keep a {MASK} near the {MASK} stand by the {MASK}?"
    assert choose_spans(question, "raincoat") == ([(29, 37), (47, 55)], "question_concept")
    assert choose_spans(q(concept="zzz"), "raincoat") == ([], "question_concept")
    # a phrase that is the whole question is never masked
    assert choose_spans(q(text="umbrella", concept=""), "umbrella") == ([], "question_concept")


def test_several_masks_are_refilled_one_phrase_each_in_order():
    masked = f"Where would you keep a {MASK} near the {MASK}?"
    assert refill_prompt(f"Where is the {MASK}?", "oven").startswith("Replace [MASK] with a short phrase")
    prompt = refill_prompt(masked, "oven")
    assert prompt.startswith("Replace each [MASK]") and prompt.endswith(f"Question: {masked} Target: oven\nPhrases:")
    assert split_fills("frozen pizza; stove", 2) == ["frozen pizza", "stove"]
    assert split_fills("frozen pizza; stove", 1) == ["frozen pizza; stove"]
    assert fill_masks(masked, ["frozen pizza", "stove"]) == "Where would you keep a frozen pizza near the stove?"


def test_build_masks_every_phrase_and_fills_each_mask():
    question = q(text="Where would you keep a spare umbrella near the umbrella stand by the door?")
    params = CounterfactualParams(max_questions=1, votes=1, accept_threshold=1.0)
    teacher = ScriptedTeacher('"frozen pizza"; stove; garden door.', ["b"], topic="umbrella, door")
    [row] = build_counterfactuals([question], teacher, params, n_shots=0, seed=0)
    assert row.span_texts == ["umbrella", "umbrella", "door"] and row.masked.count(MASK) == 3
    assert row.fills == ["frozen pizza", "stove", "garden door"]
    assert row.question == "Where would you keep a spare frozen pizza near the stove stand by the garden door?"
    assert row.accepted and set(row.templates) == {"topic_words", "refill_masks", "cot"}
    assert side_by_side([row])[0]["counterfactual"].count("**") == 6


# ---------------------------------------------------------------- refill rules, targets, votes


def test_refill_rules():
    question = q()
    one = ["umbrella"]
    assert refill_problem(question, one, [""]) == "empty refill"
    assert refill_problem(question, one, ["Umbrella"]) == "refill leaves the question unchanged"
    assert refill_problem(question, one, ["coat from the closet"]) == "refill names the old answer"
    assert refill_problem(question, one, [f"{MASK} cake"]) == "refill still contains [MASK]"
    assert refill_problem(question, one, ["frozen pizza"]) is None
    assert refill_problem(question, one, ["box for the freezer"], new_answer="freezer") == "refill names the new answer"
    assert refill_problem(question, one, ["frozen pizza"], new_answer="freezer") is None
    masked = f"Where would you keep a spare {MASK}?"
    assert refill_problem(question, one, ["Where would you keep a spare pizza"], masked) == \
        "refill rewrites words outside the mask"
    assert refill_problem(question, one, ["frozen pizza"], masked) is None
    assert clean_refill('"frozen pizza".\nmore text') == "frozen pizza"


def test_refill_rules_with_several_masks():
    question, spans = q(), ["umbrella", "door"]
    assert refill_problem(question, spans, ["frozen pizza"]) == "refill has 1 phrases for 2 masks"
    assert refill_problem(question, spans, ["frozen pizza", ""]) == "refill leaves a mask empty"
    assert refill_problem(question, spans, ["Umbrella", "DOOR"]) == "refill leaves the question unchanged"
    assert refill_problem(question, spans, ["umbrella", "stove"]) is None  # one mask keeps its words: still changed
    assert refill_problem(question, spans, ["pizza", "closet shelf"]) == "refill names the old answer"


def test_vote_threshold():
    assert vote([1, 1, 2], target=1, threshold=0.6) == (pytest.approx(2 / 3), True)
    assert vote([1, None, 2], target=1, threshold=0.6) == (pytest.approx(1 / 3), False)
    assert vote([], target=1, threshold=0.5) == (0.0, False)


def test_new_target_is_a_distractor():
    question = q(answer=2)
    assert pick_new_target(question, "first_distractor", random.Random(0)) == 0
    picks = {pick_new_target(question, "random_distractor", random.Random(s)) for s in range(20)}
    assert 2 not in picks and len(picks) > 1
    slots = {pick_new_target(question, "new_option", random.Random(s)) for s in range(20)}
    assert 2 not in slots and len(slots) > 1


def test_new_option_replaces_a_drawn_distractor_and_becomes_the_answer():
    params = CounterfactualParams(max_questions=1, votes=3, accept_threshold=0.6, new_target="new_option")
    question = q(answer=0)
    slot = pick_new_target(question, "new_option", random.Random(0))
    letter = "abcde"[slot]
    teacher = ScriptedTeacher("frozen pizza", [letter, letter, "a"], new_option="garage.")
    [row] = build_counterfactuals([question], teacher, params, n_shots=0, seed=0)
    assert row.new_option == "garage" and row.new_target == slot and row.choices[slot] == "garage"
    assert len(row.choices) == 5 and row.choices[0] == "closet"  # the old answer stays, as a distractor now
    assert row.accepted and "new_option" in row.templates
    assert any(p.startswith("Give a new answer") and "closet; oven; pond; fridge; lake" in p for p in teacher.prompts)
    cf = accepted_questions([row], [question])[0]
    assert cf.choices[cf.answer] == "garage" and cf.choices != question.choices and question.choices[slot] != "garage"
    assert acceptance_summary([row], [question])["new_target_distractor_rank"] == {"new option": 1}
    # a new option that repeats an option's words is rejected before any refill
    [bad] = build_counterfactuals([question], ScriptedTeacher("pizza", ["b"], new_option="Oven"), params, 0, 0)
    assert bad.reason == "new option repeats an option" and not bad.question and bad.choices == question.choices
    assert new_option_problem("hall closet", ["closet", "oven"]) == "new option repeats an option"
    assert new_option_problem("", ["closet"]) == "empty new option"
    assert new_option_problem("garage", ["closet", "oven"]) is None


def test_build_accepts_consistent_and_rejects_inconsistent():
    params = CounterfactualParams(max_questions=3, votes=3, accept_threshold=0.6)
    qs = [q("q1"), q("q2", text="Where do you bake bread?", concept="bread"), q("q3", concept="not in text")]
    # first distractor of every question is option (b); 2 of 3 votes say (b) -> accepted
    accepted = build_counterfactuals(qs, ScriptedTeacher("frozen pizza", ["b", "b", "c"]), params, n_shots=0, seed=0)
    assert [r.accepted for r in accepted] == [True, True, False]
    assert accepted[2].reason == "no topic words found in the question"
    assert accepted[0].span_source == "question_concept" and accepted[0].topic_words == "nothing here"
    assert accepted[0].question == "Where would you keep a spare frozen pizza?"
    assert accepted[0].spans == [(29, 37)] and accepted[0].votes == [1, 1, 2]
    rejected = build_counterfactuals(qs[:1], ScriptedTeacher("frozen pizza", ["b", "c", "c"]), params, 0, 0)
    assert not rejected[0].accepted and rejected[0].reason.startswith("votes below threshold")
    summary = acceptance_summary(accepted, qs)
    assert summary["attempted"] == 3 and summary["accepted"] == 2
    assert summary["reasons"] == {"accepted": 2, "no topic words found in the question": 1}
    assert summary["masks_per_question"] == {"0": 1, "1": 2}
    cf_qs = accepted_questions(accepted, qs)
    assert [c.id for c in cf_qs] == ["q1-cf", "q2-cf"] and cf_qs[0].answer == 1


def test_acceptance_is_reported_at_every_vote_bar():
    def row(votes):
        return Counterfactual("s", "s-cf", "o", [(0, 1)], ["o"], "teacher", "o", "", "[MASK]", ["x", "y"], 1, "",
                              "z", ["z"], "z", votes, 0.0, False, "", "t", {})

    rows = [row([1, 1, 1]), row([1, 1, 0]), row([1, None, 0]), row([0, 0, 0]), row([])]
    assert acceptance_by_bar(rows) == {"1/3": 3, "2/3": 2, "3/3": 1}
    assert acceptance_by_bar([row([])]) == {}
    summary = acceptance_summary(rows, [MCQuestion("s", "o", ["x", "y"], ["A", "B"], 0)])
    assert summary["acceptance_by_bar"] == {"1/3": 3, "2/3": 2, "3/3": 1} and summary["voted"] == 4
    assert (summary["votes_cast"], summary["votes_unparsed"], summary["votes_for_target"]) == (12, 1, 6)


def test_votes_get_their_own_token_budget_so_a_reasoning_path_reaches_its_answer():
    # the reference run's 270M teacher, voting within step 03's 40 tokens, hit the cap on 297 of 498 votes: a vote cut
    # off before its answer names no option and counts against acceptance
    params = CounterfactualParams(max_questions=1, votes=3, max_new_tokens=40, vote_max_new_tokens=96)
    teacher = ScriptedTeacher("frozen pizza", ["b", "b", "b"])
    build_counterfactuals([q("q1")], teacher, params, n_shots=0, seed=0)
    assert teacher.max_new_tokens["self-consistency votes"] == 96
    assert teacher.max_new_tokens["refill masks"] != 96


# ---------------------------------------------------------------- multi-view CoT


def test_positive_views_are_only_rationales_that_reach_the_gold_option(tmp_path):
    rows = [step02("q1", "Umbrellas live in closets. So the answer is (a) closet.", 0),
            step02("q2", "Ovens are hot. Of the choices, (b) oven is the answer.", 1, "Ovens are hot. Of the "
                   "choices, (b) oven is the answer."),
            step02("q3", "Hmm", None, "Hmm", failure="unparseable"),
            {**step02("t1", "x", 0), "split": "test"}]
    path = tmp_path / "rationales.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_step02_rows(path)
    assert set(read) == {"q1", "q2", "q3"}
    assert positive_rationale(q("q1"), read["q1"]) == ("Umbrellas live in closets.", None)
    assert positive_rationale(q("q2"), read["q2"])[1] == "step-02 rationale concludes another option"
    assert positive_rationale(q("q3"), read["q3"])[1] == "step-02 rationale reaches no option"
    assert positive_rationale(q("q4"), None)[1] == "no step-02 rationale"
    # a human explanation with no option in it (CoS-E replay) counts with step 02's recorded answer
    assert positive_rationale(q("q5"), step02("q5", "People keep them by the door.", 0))[1] is None
    params = CounterfactualParams(negative_views=0)
    views, dropped = build_views([q("q1"), q("q2"), q("q3")], [], read, ScriptedTeacher("", []), params, seed=0)
    assert [(v.id, v.strategy, v.text) for v in views] == [("q1", "positive", "Umbrellas live in closets.")]
    assert views[0].teacher_model == "teacher-x (step 02)" and views[0].template_sha256 == "abc"
    assert {(d.id, d.reason) for d in dropped} == {("q2", "step-02 rationale concludes another option"),
                                                   ("q3", "step-02 rationale reaches no option")}


def test_every_used_question_gets_a_refutation_of_every_wrong_option():
    originals = [q(f"q{i}") for i in range(4)]
    rows = {f"q{i}": step02(f"q{i}", "Closets hold things. So the answer is (a).", 0) for i in range(3)}
    cf = MCQuestion("q0-cf", "Where would you keep a frozen pizza?", ["closet", "oven", "pond", "fridge", "lake"],
                    list("ABCDE"), 3, source="test+counterfactual")
    params = CounterfactualParams(max_questions=1)  # does not limit the views: they cover every question used
    assert params.negative_views is None  # the default refutes every wrong option (seed 002)
    teacher = ScriptedTeacher("", [], positive="Pizza must stay cold. So the answer is (d) fridge.")
    views, dropped = build_views(originals, [cf], rows, teacher, params, seed=0)
    negatives = [(v.id, v.option) for v in views if v.strategy == "negative"]
    # every original is refuted, q3 too (it has no step-02 row, so no positive view), and the counterfactual
    assert negatives == [(f"q{i}", o) for i in range(4) for o in (1, 2, 3, 4)] + [("q0-cf", o) for o in (0, 1, 2, 4)]
    assert all(v.text == f"({'abcde'[v.option]}) {['closet', 'oven', 'pond', 'fridge', 'lake'][v.option]} is not "
               f"the answer because it does not fit." for v in views if v.strategy == "negative")
    assert [(v.id, v.origin) for v in views if v.strategy == "positive"] == [
        ("q0", "original"), ("q1", "original"), ("q2", "original"), ("q0-cf", "counterfactual")]
    assert [(d.id, d.reason) for d in dropped] == [("q3", "no step-02 rationale")]
    summary = views_summary(views, dropped)
    assert summary["positive"] == 4 and summary["negative"] == 20 and summary["dropped"] == 1
    capped, _ = build_views(originals, [cf], rows, teacher, CounterfactualParams(negative_views=2), seed=0)
    assert sum(v.strategy == "negative" for v in capped) == 10


def test_wrong_options_all_or_a_seeded_sample():
    question = q(answer=2)
    assert wrong_options(question, None, random.Random(0)) == [0, 1, 3, 4]
    assert wrong_options(question, 9, random.Random(0)) == [0, 1, 3, 4]
    picked = wrong_options(question, 2, random.Random(0))
    assert len(picked) == 2 and 2 not in picked and picked == sorted(picked)
    assert wrong_options(question, 0, random.Random(0)) == []


def test_a_small_teacher_that_names_an_answer_instead_of_refuting_is_caught():
    """The quickstart's cause of zero negative views: asked with the bare template, the 270M teacher wrote
    "The answer is (c) ..." and an invented next question; cutting the answer sentence left nothing."""
    question = q()
    prompt = view_prompt(question, 2, positive=False, template="refutation")
    assert prompt.endswith("Why is (c) pond not the answer?\nA: (c) pond is not the answer because")
    run_on = done("ponds are wet.\nQ: What is a lake?\nAnswer Choices:\n(a) water", "length")
    assert view_text("negative", 2, question.choices, prompt, run_on) == (
        "(c) pond is not the answer because ponds are wet.", None)
    assert view_text("negative", 2, question.choices, prompt, done("The answer is (c) pond.\nQ: Where?"))[1] == \
        "argues for the refuted option"
    assert view_text("negative", 2, question.choices, prompt, done("So the answer is (a) closet."))[1] == \
        "empty after removing the answer sentence"
    assert view_text("negative", 2, question.choices, prompt, done("", "error"))[1] == "no teacher response"
    positive = view_prompt(question, 0, positive=True)
    assert view_text("positive", 0, question.choices, positive, done("Ponds are wet. So the answer is (c)."))[1] == \
        "concludes another option"
    assert view_text("positive", 0, question.choices, positive, done("Closets are dry. So the answer is (a)."))[1] is None
    # through build_views: the refutation that names the refuted option is dropped and counted
    rows = {"q1": step02("q1", "So the answer is (a).", 0, "Closets are dry.")}
    teacher = ScriptedTeacher("", [], refutation="The answer is (c) pond.")
    views, dropped = build_views([question], [], rows, teacher, CounterfactualParams(negative_views=None), seed=0)
    assert [v.strategy for v in views] == ["positive"]
    reasons = {(o["strategy"], o["outcome"]): o["n"] for o in views_summary(views, dropped)["outcomes"]}
    assert reasons == {("positive", "kept"): 1, ("negative", "argues for the refuted option"): 1,
                       ("negative", "empty after removing the answer sentence"): 3}


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
    assert choose_spans(question, "spare umbrella, door") == ([(23, 37), (47, 51)], "teacher")
    assert choose_spans(question, "raincoat") == ([(29, 37)], "question_concept")
    params = CounterfactualParams(max_questions=1, votes=1, accept_threshold=1.0)
    rows = build_counterfactuals([question], ScriptedTeacher("frozen pizza", ["b"], topic="Spare umbrella"),
                                 params, n_shots=0, seed=0)
    assert rows[0].span_source == "teacher" and rows[0].span_texts == ["spare umbrella"]
    assert rows[0].question == "Where would you keep a frozen pizza near the door?" and rows[0].accepted
