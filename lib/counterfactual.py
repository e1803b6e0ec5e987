"""Counterfactual questions and multi-view chain of thought (counterfactual distillation, EMNLP 2024).

A counterfactual is made by masking the words that decide a question's answer, asking the teacher
to refill them so that a former distractor becomes the right answer, and keeping the new question
only when several sampled teacher reasoning paths agree on that new answer (self-consistency).
Multi-view CoT pairs each question with a positive view (why the answer is right, strategy token
`[Direct election]`) and negative views (why a wrong option is wrong, `[Elimination method]`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections import Counter
from typing import Any

from lib.data import MCQuestion
from lib.metrics import extract_answer
from lib.params import CounterfactualParams
from lib.prompts import cot_prompt, load_template, view_prompt
from lib.teacher import Teacher, split_rationale

log = logging.getLogger(__name__)

MASK = "[MASK]"


@dataclasses.dataclass
class Counterfactual:
    """One attempted counterfactual question (a row of 03_counterfactuals/counterfactuals.jsonl)."""

    source_id: str  # the original question's id
    id: str  # id of the counterfactual question ("<source_id>-cf")
    original: str
    span: tuple[int, int] | None  # character offsets of the masked words in the original
    span_text: str
    span_source: str  # "teacher" (the teacher's topic words) or "question_concept" (CommonsenseQA's concept)
    topic_words: str  # what the teacher named as the deciding words ("" when not asked)
    concept: str  # CommonsenseQA's question_concept, kept as a baseline signal
    masked: str
    new_target: int  # index of the option that should become the answer
    refill: str  # the teacher's words for [MASK]
    question: str  # the counterfactual question text ("" when no refill was possible)
    votes: list[int | None]  # answers of the k sampled teacher reasoning paths
    vote_share: float  # share of votes for new_target
    accepted: bool
    reason: str  # "accepted" or why it was rejected
    teacher_model: str
    templates: dict[str, str]  # template name -> sha256


@dataclasses.dataclass
class View:
    """One multi-view CoT target (a row of 03_counterfactuals/multiview.jsonl)."""

    id: str  # question id (original or counterfactual)
    origin: str  # "original" or "counterfactual"
    strategy: str  # "positive" or "negative"
    option: int  # the option argued for (positive) or refuted (negative)
    text: str  # the view's rationale
    teacher_model: str
    template_sha256: str


def locate_span(text: str, phrase: str) -> tuple[int, int] | None:
    """Character offsets of the first whole-word, case-insensitive occurrence of `phrase`."""
    if not phrase.strip():
        return None
    m = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


def mask_span(text: str, span: tuple[int, int]) -> str:
    """Replace the characters of `span` with [MASK]."""
    return text[: span[0]] + MASK + text[span[1]:]


def pick_new_target(q: MCQuestion, policy: str, rng: random.Random) -> int:
    """The former distractor that the counterfactual should make correct."""
    distractors = [i for i in range(len(q.choices)) if i != q.answer]
    return distractors[0] if policy == "first_distractor" else rng.choice(distractors)


def clean_refill(text: str) -> str:
    """The teacher's fill-in: its first line, without quotes or a trailing full stop."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.strip().rstrip(".").strip().strip("\"'`").strip()


def refill_problem(q: MCQuestion, span_text: str, refill: str, masked: str = "", new_answer: str = "") -> str | None:
    """Why a refill cannot make a counterfactual, or None when it can.

    A refill that spells out the new answer is rejected too: the question would give its answer away by word
    overlap, the very shortcut counterfactual data is meant to break.
    """
    if not refill:
        return "empty refill"
    if MASK in refill:
        return "refill still contains [MASK]"
    context = [part.strip().lower() for part in masked.split(MASK)]
    if any(len(part.split()) >= 3 and part in refill.lower() for part in context):
        return "refill rewrites words outside the mask"
    if refill.lower() == span_text.lower():
        return "refill leaves the question unchanged"
    if q.choices[q.answer].lower() in refill.lower():
        return "refill names the old answer"
    if new_answer and new_answer.lower() in refill.lower():
        return "refill names the new answer"
    return None


def vote(votes: list[int | None], target: int, threshold: float) -> tuple[float, bool]:
    """Share of votes for `target` and whether it reaches the acceptance threshold."""
    share = sum(v == target for v in votes) / len(votes) if votes else 0.0
    return share, share >= threshold


def topic_words(questions: list[MCQuestion], teacher: Teacher) -> list[str]:
    """The teacher's words that decide each question's answer (its first line, cleaned)."""
    template = load_template("topic_words")
    outs = teacher.complete([template.render(question=q.question) for q in questions], max_new_tokens=12,
                            temperature=0.0, desc="topic words")
    return [clean_refill(c.text) for (c,) in outs]


def choose_span(q: MCQuestion, words: str) -> tuple[tuple[int, int] | None, str]:
    """The span to mask: the teacher's words when they occur in the question, else the concept."""
    for phrase in [w for w in re.split(r"[,;]| and ", words) if w.strip()]:
        span = locate_span(q.question, phrase)
        if span and span[1] - span[0] < len(q.question):
            return span, "teacher"
    span = locate_span(q.question, q.concept or "")
    return span, "question_concept"


def build_counterfactuals(questions: list[MCQuestion], teacher: Teacher, params: CounterfactualParams,
                          n_shots: int, seed: int) -> list[Counterfactual]:
    """Find topic words, mask, refill and vote for each question; every attempt is returned with its outcome."""
    rng = random.Random(seed)
    refill_t, cot_t = load_template("refill"), load_template("cot")
    picked = questions[: params.max_questions]
    words = topic_words(picked, teacher) if params.topic_source == "teacher" else [""] * len(picked)
    drafts = []
    for q, w in zip(picked, words):
        span, source = choose_span(q, w)
        target = pick_new_target(q, params.new_target, rng)
        masked = mask_span(q.question, span) if span else ""
        drafts.append((q, span, source, w, target, masked))
    prompts = [refill_t.render(target=q.choices[t], masked=m) for q, s, _, _, t, m in drafts if s]
    fills = iter(teacher.complete(prompts, max_new_tokens=16, temperature=0.0, desc="refill masks"))
    rows = []
    for q, span, source, w, target, masked in drafts:
        span_text = q.question[span[0]:span[1]] if span else ""
        refill = clean_refill(next(fills)[0].text) if span else ""
        problem = ("no topic words found in the question" if not span
                   else refill_problem(q, span_text, refill, masked, q.choices[target]))
        rows.append(Counterfactual(
            source_id=q.id, id=f"{q.id}-cf", original=q.question, span=span, span_text=span_text,
            span_source=source, topic_words=w, concept=q.concept or "", masked=masked, new_target=target, refill=refill,
            question=masked.replace(MASK, refill) if not problem else "", votes=[], vote_share=0.0,
            accepted=False, reason=problem or "pending", teacher_model=teacher.name,
            templates={t.name: t.sha256 for t in (refill_t, cot_t, load_template("topic_words"))},
        ))
    pending = [r for r in rows if r.reason == "pending"]
    by_id = {q.id: q for q in questions}
    cf_qs = [as_question(r, by_id[r.source_id]) for r in pending]
    paths = teacher.complete([cot_prompt(q, n_shots) for q in cf_qs], max_new_tokens=params.max_new_tokens,
                             temperature=params.vote_temperature, n=params.votes, desc="self-consistency votes")
    for r, q, completions in zip(pending, cf_qs, paths):
        r.votes = [extract_answer(c.text, q.choices) for c in completions]
        r.vote_share, r.accepted = vote(r.votes, r.new_target, params.accept_threshold)
        r.reason = "accepted" if r.accepted else f"votes below threshold ({r.vote_share:.2f} < {params.accept_threshold})"
    log.info("counterfactuals: %d of %d accepted", sum(r.accepted for r in rows), len(rows))
    return rows


def as_question(cf: Counterfactual, original: MCQuestion) -> MCQuestion:
    """The counterfactual as a multiple-choice question: same options, the new target as gold."""
    return dataclasses.replace(original, id=cf.id, question=cf.question, answer=cf.new_target,
                               source=f"{original.source}+counterfactual")


def build_views(originals: list[MCQuestion], counterfactuals: list[MCQuestion], rationales: dict[str, str],
                teacher: Teacher, params: CounterfactualParams, seed: int) -> list[View]:
    """Positive and negative views: originals reuse the step-02 CoT rationale as their positive view."""
    rng = random.Random(seed)
    pos_t, neg_t = load_template("positive_view"), load_template("negative_view")
    views = [View(id=q.id, origin="original", strategy="positive", option=q.answer, text=rationales[q.id],
                  teacher_model="step 02 teacher", template_sha256="") for q in originals if rationales.get(q.id)]
    asks: list[tuple[MCQuestion, str, int]] = [(q, "counterfactual", q.answer) for q in counterfactuals]
    for q in originals[: params.max_questions] + counterfactuals:
        wrong = [i for i in range(len(q.choices)) if i != q.answer]
        rng.shuffle(wrong)
        asks.extend((q, "negative", i) for i in wrong[: params.negative_views])
    prompts = [view_prompt(q, opt, positive=kind != "negative") for q, kind, opt in asks]
    outs = teacher.complete(prompts, max_new_tokens=params.max_new_tokens, temperature=0.0, desc="multi-view CoT")
    for (q, kind, opt), (c,) in zip(asks, outs):
        text = split_rationale(c.text)
        if not text:
            continue
        negative = kind == "negative"
        views.append(View(id=q.id, origin="counterfactual" if q.id.endswith("-cf") else "original",
                          strategy="negative" if negative else "positive", option=opt, text=text,
                          teacher_model=teacher.name, template_sha256=(neg_t if negative else pos_t).sha256))
    return views


@dataclasses.dataclass
class CounterfactualRationale:
    """A rationale that argues for a wrong option (a row of 03_counterfactuals/cf_rationales.jsonl)."""

    id: str  # question id
    option: int  # the wrong option the rationale argues for
    text: str
    teacher_model: str
    template_sha256: str
    split: str = "train"  # train rows feed CF training; test rows feed the faithfulness probe of step 05


def build_cf_rationales(questions: dict[str, list[MCQuestion]], teacher: Teacher, params: CounterfactualParams,
                        seed: int) -> list[CounterfactualRationale]:
    """Per split, for each question a rationale written as if a randomly chosen wrong option were right (after SCOTT).

    At most `cf_rationale_questions` per split; the wrong option is drawn with `seed`.
    """
    rng = random.Random(seed)
    template = load_template("counterfactual_rationale")
    cap = params.cf_rationale_questions
    picked = [(split, q) for split, qs in questions.items() for q in (qs if cap is None else qs[:cap])]
    options = [rng.choice([i for i in range(len(q.choices)) if i != q.answer]) for _, q in picked]
    prompts = [view_prompt(q, o, positive=True, template="counterfactual_rationale") for (_, q), o in zip(picked, options)]
    outs = teacher.complete(prompts, max_new_tokens=params.max_new_tokens, temperature=0.0,
                            desc="counterfactual rationales")
    rows = [CounterfactualRationale(id=q.id, option=o, text=split_rationale(c.text), teacher_model=teacher.name,
                                    template_sha256=template.sha256, split=split)
            for (split, q), o, (c,) in zip(picked, options, outs)]
    empty = sum(not r.text for r in rows)
    if empty:
        log.warning("%d of %d counterfactual rationales came back empty and are dropped", empty, len(rows))
    return [r for r in rows if r.text]


def acceptance_summary(rows: list[Counterfactual], questions: list[MCQuestion]) -> dict[str, Any]:
    """Acceptance rate, rejection reasons and which former distractor position became the target."""
    reasons = Counter("votes below threshold" if r.reason.startswith("votes below") else r.reason for r in rows)
    by_id = {q.id: q for q in questions}
    positions = Counter(f"{r.new_target - (r.new_target > by_id[r.source_id].answer) + 1}" for r in rows)
    return {
        "attempted": len(rows),
        "accepted": sum(r.accepted for r in rows),
        "acceptance_rate": sum(r.accepted for r in rows) / len(rows) if rows else 0.0,
        "reasons": dict(reasons),
        "new_target_distractor_rank": dict(sorted(positions.items())),
        "mean_vote_share": (sum(r.vote_share for r in rows if r.votes) / max(1, sum(bool(r.votes) for r in rows))),
    }


def side_by_side(rows: list[Counterfactual]) -> list[dict[str, str]]:
    """Original / masked / counterfactual rows for display, the changed words in **bold**."""
    out = []
    for r in rows:
        cf = r.masked.replace(MASK, f"**{r.refill}**") if r.question else ""
        original = (r.original[: r.span[0]] + f"**{r.span_text}**" + r.original[r.span[1]:]) if r.span else r.original
        out.append({"original": original, "masked": r.masked, "counterfactual": cf, "outcome": r.reason})
    return out



def accepted_questions(rows: list[Counterfactual], originals: list[MCQuestion]) -> list[MCQuestion]:
    """The accepted counterfactuals as multiple-choice questions (training data for CFD)."""
    by_id = {q.id: q for q in originals}
    return [as_question(r, by_id[r.source_id]) for r in rows if r.accepted]


def views_frame(rows: list[View] | list[CounterfactualRationale], cls: type = View) -> Any:
    """Views (or counterfactual rationales, with cls) as a table for display; empty input keeps the columns."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(cls)])
