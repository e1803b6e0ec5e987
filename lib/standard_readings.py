"""The standard readings: every student, the untrained one first, scored zero-shot the way lm-evaluation-harness
scores small models, so that a reader can place the study's numbers beside a model card's.

The study's own readings ask each student in the format it was trained on (options listed, "So the answer is ...").
These ask every student the same two questions lm-eval asks, whatever it was trained on:

- **cloze** (lm-eval's `arc_easy` task, used here for every test set): the context is "Question: {question}\\nAnswer:",
  each option's text is a continuation after a space, and no option list is shown. `acc` picks the option with the
  highest summed log-likelihood, `acc_norm` the highest log-likelihood per character of the option's text (lm-eval
  divides by `len(choice)`, the text without its leading space).
- **lettered** (lm-eval's `commonsense_qa` task): the options are listed "A. text" ... under the question, and the
  continuation is the letter (" A", " B", ...); `acc` only, as that task reports.

The log-likelihoods come from the same scorer as the study's own option scoring (lib.scoring.continuation_logliks:
the tokenizer's <bos>, then the context, then the continuation), and tests/test_standard_readings.py checks the
prompts against lm-eval's own task templates and the log-likelihoods against lm-eval's HFLM on the same pairs.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Sequence

from lib.questions import MCQuestion
from lib.scoring import Scorer

READINGS = {  # column stem in items.jsonl -> what it is
    "cloze": "lm-eval arc_easy cloze formulation, acc (summed log-likelihood of the option's text)",
    "cloze_norm": "lm-eval arc_easy cloze formulation, acc_norm (log-likelihood per character)",
    "lettered": "lm-eval commonsense_qa lettered formulation, acc (the option's letter after the listed options)",
}


@dataclasses.dataclass(frozen=True)
class StandardPicks:
    """One item's picks under each standard reading (option indices)."""

    cloze: int
    cloze_norm: int
    lettered: int


def cloze_context(q: MCQuestion) -> str:
    """lm-eval arc_easy's context: the question, then "Answer:" (no options shown)."""
    return f"Question: {q.question}\nAnswer:"


def lettered_context(q: MCQuestion) -> str:
    """lm-eval commonsense_qa's context: the question, its options as "A. text" lines, then "Answer:"."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, q.choices))
    return f"Question: {q.question.strip()}{options}\nAnswer:"


def reading_pairs(q: MCQuestion) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (context, continuation) pairs of one item: its cloze pairs and its lettered pairs, one per option."""
    cloze = [(cloze_context(q), " " + choice) for choice in q.choices]
    lettered = [(lettered_context(q), " " + letter) for letter in string.ascii_uppercase[:len(q.choices)]]
    return cloze, lettered


def standard_picks(score: Scorer, questions: Sequence[MCQuestion]) -> list[StandardPicks]:
    """Each question's picks under every standard reading, all its pairs scored in one call of `score`."""
    pairs, spans = [], []
    for q in questions:
        cloze, lettered = reading_pairs(q)
        spans.append((len(pairs), len(q.choices)))
        pairs.extend(cloze + lettered)
    values = score(pairs)
    picks = []
    for (start, n), q in zip(spans, questions):
        cloze, lettered = values[start:start + n], values[start + n:start + 2 * n]
        per_char = [v / max(1, len(choice)) for v, choice in zip(cloze, q.choices)]
        picks.append(StandardPicks(cloze=_argmax(cloze), cloze_norm=_argmax(per_char), lettered=_argmax(lettered)))
    return picks


def reading_columns(pick: StandardPicks | None, gold: int) -> dict[str, int]:
    """An item's ItemResult columns for its standard picks: `<reading>_pred` and `<reading>_correct` ({} unscored)."""
    if pick is None:
        return {}
    out = {}
    for reading in READINGS:
        choice = getattr(pick, reading)
        out[f"{reading}_pred"], out[f"{reading}_correct"] = choice, int(choice == gold)
    return out


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value (the first on ties, as numpy's argmax in lm-eval)."""
    return max(range(len(values)), key=values.__getitem__)
