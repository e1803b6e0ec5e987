"""Multi-view chain of thought (counterfactual distillation, EMNLP 2024): why the answer is right, why others are not.

`build_views` makes views for every training question (all originals, not only the first `max_questions`, and
every accepted counterfactual): the positive view (strategy token `[Direct election]`, why the answer is right) and
negative views (`[Elimination method]`, one refutation per wrong option, at most `counterfactual.negative_views`).
An original question's positive view is its step-02 rationale, kept only when the teacher's full completion reaches
the gold option (`positive_rationale`); an accepted counterfactual's is asked for (`positive_view.txt`). An original
without a positive view still gets its negative views: a refutation is told which option is wrong, so it does not
depend on step 02, and its training target closes on the gold answer. Negative views are asked with
`refutation.txt`, whose answer opens with "(x) ... is not the answer because": asked with the bare
`negative_view.txt`, the 270M quickstart teacher answered "The answer is (x) ..." (naming the option it was told to
refute) and ran on into an invented next question, and cutting the answer sentence left nothing, so every negative
view was silently lost. Every view asked for is either kept (`multiview.jsonl`) or dropped with its reason
(`multiview_dropped.jsonl`, `views_summary`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from lib.files import read_jsonl
from lib.metrics import extract_answer, extract_answer_lenient
from lib.models import Completion
from lib.params import CounterfactualParams
from lib.prompts import load_template, view_prompt
from lib.questions import MCQuestion
from lib.teacher import split_rationale, Teacher

log = logging.getLogger(__name__)

NEGATIVE_TEMPLATE = "refutation"  # negative views' prompt; its answer opens "(x) option is not the answer because"


@dataclasses.dataclass
class View:
    """One multi-view CoT target (a row of 03_counterfactuals/multiview.jsonl)."""

    id: str  # question id (original or counterfactual)
    origin: str  # "original" or "counterfactual"
    strategy: str  # "positive" or "negative"
    option: int  # the option argued for (positive) or refuted (negative)
    text: str  # the view's rationale, without a concluding answer sentence
    teacher_model: str
    template_sha256: str


@dataclasses.dataclass
class DroppedView:
    """A view asked for but not trained on (a row of 03_counterfactuals/multiview_dropped.jsonl)."""

    id: str  # question id (original or counterfactual)
    origin: str  # "original" or "counterfactual"
    strategy: str  # "positive" or "negative"
    option: int  # the option the view was to argue for (positive) or refute (negative)
    reason: str  # why it was dropped
    text: str  # what the teacher wrote (for an original's positive view: step 02's raw completion)


def read_step02_rows(path: str | Path, split: str = "train") -> dict[str, dict]:
    """Question id -> its row of 02_teacher/rationales.jsonl (every row of `split`, failed ones too)."""
    return {r["id"]: r for r in read_jsonl(path) if r.get("split") == split}


def positive_rationale(q: MCQuestion, row: dict | None) -> tuple[str, str | None]:
    """An original's positive view from its step-02 row, and why it is dropped (None when kept).

    Kept only when the teacher's full completion (`raw`) reaches the gold option, read with `extract_answer`;
    a row whose text names no option (CoS-E's human explanations) falls back to step 02's recorded `answer`.
    """
    if row is None:
        return "", "no step-02 rationale"
    text = (row.get("rationale") or "").strip()
    if not text:
        return "", "empty step-02 rationale"
    reached = extract_answer(row.get("raw") or "", q.choices)
    reached = row.get("answer") if reached is None else reached
    if reached is None:
        return text, "step-02 rationale reaches no option"
    if reached != q.answer:
        return text, "step-02 rationale concludes another option"
    return text, None


def wrong_options(q: MCQuestion, cap: int | None, rng: random.Random) -> list[int]:
    """The wrong options to refute: all of them (cap None), else `cap` drawn with `rng`, in option order."""
    wrong = [i for i in range(len(q.choices)) if i != q.answer]
    if cap is None or cap >= len(wrong):
        return wrong
    return sorted(rng.sample(wrong, cap))


def prompt_lead(prompt: str) -> str:
    """The words the prompt already puts in the answer's mouth (after its last "A:"), or ""."""
    return prompt.rsplit("\nA:", 1)[-1].strip() if "\nA:" in prompt else ""


def view_text(strategy: str, option: int, choices: list[str], prompt: str, c: Completion) -> tuple[str, str | None]:
    """A view's text from the teacher's completion (the prompt's lead + the reasoning), and why it is dropped.

    The completion is cut at an invented next question ("\nQ:") or a blank line; its concluding answer sentence
    is removed (`split_rationale`). A negative view that concludes the option it should refute, and a positive
    view that concludes another option, are dropped, as are empty ones; any conclusion counts here, however it is
    phrased (`extract_answer_lenient`), since the filter must catch a view that argues the wrong way.
    """
    if c.finish_reason == "error":
        return "", "no teacher response"
    body = re.split(r"\nQ:|\n\s*\n", c.text.strip(), maxsplit=1)[0].strip()
    reasoning = split_rationale(body)
    tail = body[len(reasoning):] if body.startswith(reasoning) else body
    # a filter of teacher text: any conclusion it draws counts, so the lenient reader ("The answer is (c)" too)
    concluded = extract_answer_lenient(tail, choices) if tail.strip() else None
    text = " ".join(p for p in (prompt_lead(prompt), reasoning) if p)
    if strategy == "negative" and concluded == option:
        return text, "argues for the refuted option"
    if strategy == "positive" and concluded is not None and concluded != option:
        return text, "concludes another option"
    if not reasoning:
        return text, "empty after removing the answer sentence" if body else "empty"
    return text, None


def build_views(originals: list[MCQuestion], counterfactuals: list[MCQuestion], step02: dict[str, dict],
                teacher: Teacher, params: CounterfactualParams, seed: int) -> tuple[list[View], list[DroppedView]]:
    """Positive and negative views of every question CFD trains on, and the views dropped with their reasons.

    Originals: the step-02 rationale is the positive view when it reaches the gold option (`positive_rationale`;
    `step02` from `read_step02_rows`). Accepted counterfactuals: a positive view is asked for. Every original and
    every counterfactual: one refutation per wrong option (at most `negative_views`, drawn with `seed`).
    """
    rng = random.Random(seed)
    pos_t, neg_t = load_template("positive_view"), load_template(NEGATIVE_TEMPLATE)
    views: list[View] = []
    dropped: list[DroppedView] = []
    for q in originals:
        row = step02.get(q.id)
        text, problem = positive_rationale(q, row)
        if problem:
            dropped.append(DroppedView(q.id, "original", "positive", q.answer, problem, (row or {}).get("raw", "")))
            continue
        views.append(View(id=q.id, origin="original", strategy="positive", option=q.answer, text=text,
                          teacher_model=f"{row.get('model', '')} (step 02)", template_sha256=row.get("template_sha256", "")))
    asks = [(q, "counterfactual", "positive", q.answer) for q in counterfactuals]
    for origin, qs in (("original", originals), ("counterfactual", counterfactuals)):
        asks.extend((q, origin, "negative", i) for q in qs for i in wrong_options(q, params.negative_views, rng))
    prompts = [view_prompt(q, opt, positive=s == "positive", template=None if s == "positive" else NEGATIVE_TEMPLATE)
               for q, _, s, opt in asks]
    outs = teacher.complete(prompts, max_new_tokens=params.max_new_tokens, temperature=0.0, desc="multi-view CoT")
    for (q, origin, strategy, opt), prompt, (c,) in zip(asks, prompts, outs):
        text, problem = view_text(strategy, opt, q.choices, prompt, c)
        if problem:
            dropped.append(DroppedView(q.id, origin, strategy, opt, problem, c.text))
            continue
        views.append(View(id=q.id, origin=origin, strategy=strategy, option=opt, text=text, teacher_model=teacher.name,
                          template_sha256=(pos_t if strategy == "positive" else neg_t).sha256))
    summary = views_summary(views, dropped)
    log.info("multi-view CoT: %d positive and %d negative views kept, %d dropped", summary["positive"],
             summary["negative"], len(dropped))
    for line in summary["outcomes"]:
        if line["outcome"] != "kept":
            log.warning("dropped %d %s %s views: %s", line["n"], line["origin"], line["strategy"], line["outcome"])
    return views, dropped


def views_summary(views: list[View], dropped: list[DroppedView]) -> dict[str, Any]:
    """Views kept by strategy, and every (origin, strategy, outcome) with its count: "kept" or why dropped."""
    outcomes = Counter((v.origin, v.strategy, "kept") for v in views)
    outcomes.update((d.origin, d.strategy, d.reason) for d in dropped)
    return {
        "positive": sum(v.strategy == "positive" for v in views),
        "negative": sum(v.strategy == "negative" for v in views),
        "dropped": len(dropped),
        "questions": len({v.id for v in views}),
        "outcomes": [{"origin": o, "strategy": s, "outcome": r, "n": n} for (o, s, r), n in sorted(outcomes.items())],
    }


def views_frame(rows: list[View]) -> Any:
    """Views as a table for display; empty input keeps the columns."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(View)])
