"""Checks that refuse question sets which would give wrong numbers, each naming the set and what to do.

Step 01 (`lib.data.prepare_splits`, `write_splits`) runs them on every set it loads or writes: problems in a
question list (`validate_questions`: repeated ids, empty texts, too few options, an answer out of range),
missing answer keys, empty sets, test questions that are also training questions (`find_overlap`: the same id,
or the same text and options) and test-set names that cannot be file names.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

from lib.files import DataError
from lib.questions import MCQuestion

log = logging.getLogger(__name__)

_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a test-set name is also its file name in 01_data/tests/


def _normal(text: str) -> str:
    """Text compared case- and whitespace-insensitively."""
    return " ".join(text.split()).casefold()


def validate_questions(questions: list[MCQuestion]) -> list[str]:
    """Human-readable problems in a question list; an empty list means none were found."""
    problems = []
    for qid, n in Counter(q.id for q in questions).items():
        if n > 1:
            problems.append(f"id {qid!r} appears {n} times")
    for q in questions:
        if not q.question.strip():
            problems.append(f"{q.id}: empty question text")
        if len(q.choices) < 2:
            problems.append(f"{q.id}: only {len(q.choices)} choice(s)")
        if len(q.labels) != len(q.choices):
            problems.append(f"{q.id}: {len(q.labels)} labels for {len(q.choices)} choices")
        if not -1 <= q.answer < len(q.choices):
            problems.append(f"{q.id}: answer {q.answer} out of range for {len(q.choices)} choices")
        for i, choice in enumerate(q.choices):
            if not choice.strip():
                problems.append(f"{q.id}: choice {i} is empty")
        repeated = [c for c, n in Counter(_normal(c) for c in q.choices if c.strip()).items() if n > 1]
        if repeated:
            problems.append(f"{q.id}: duplicate choice text {', '.join(repr(c) for c in repeated)}")
    return problems


def check_questions(questions: list[MCQuestion], where: str) -> None:
    """Raise on problems that break the study; log repeated option texts, which real CommonsenseQA has."""
    problems = validate_questions(questions)
    minor = [p for p in problems if "duplicate choice text" in p]
    if minor:
        log.warning("%s: %d questions repeat an option text (the gold index still decides), e.g. %s",
                    where, len(minor), minor[0])
    serious = [p for p in problems if p not in minor]
    if serious:
        shown = "\n  ".join(serious[:10])
        raise DataError(f"{where}: {len(serious)} problems, fix the data or choose another source:\n  {shown}")


def check_answer_keys(questions: list[MCQuestion], where: str, fmt: str = "") -> None:
    """Refuse questions without a gold answer (an unkeyed test item scores as wrong), naming `where` and the count."""
    unkeyed = [q.id for q in questions if q.answer < 0]
    if unkeyed:
        field = "answer_index" if fmt == "quarel" else "answerKey"
        shown = ", ".join(repr(i) for i in unkeyed[:3]) + (", ..." if len(unkeyed) > 3 else "")
        raise DataError(f"{where}: {len(unkeyed)} of {len(questions)} questions have no answer key (field {field!r}; "
                        f"ids {shown}). Every question the study trains on or scores needs its gold answer; use a "
                        "labelled file (official test splits such as CommonsenseQA's test_rand_split_no_answers.jsonl "
                        "have none: use the dev split) or remove the unlabelled rows")


def check_not_empty(questions: list[Any], where: str, what: str) -> None:
    """Refuse an empty set, saying which set and what to do."""
    if not questions:
        raise DataError(f"{where}: no {what}; the file is empty, holds only blank lines, or the hub split has no rows. "
                        "Point it at a file with questions, or remove it from the params")


def _overlap_key(q: MCQuestion) -> tuple[str, tuple[str, ...]]:
    """What makes two questions the same item: the normalised question text and the set of option texts."""
    return _normal(q.question), tuple(sorted(_normal(c) for c in q.choices))


def find_overlap(train: list[MCQuestion], test: list[MCQuestion]) -> tuple[list[str], list[str]]:
    """Test questions that are training ones (same id, or same text and options), and those sharing only the text."""
    ids = {q.id for q in train}
    items = {_overlap_key(q): q.id for q in train}
    stems = {_normal(q.question): q.id for q in train}
    same, same_text = [], []
    for q in test:
        if q.id in ids:
            same.append(f"id {q.id!r}")
        elif _overlap_key(q) in items:
            same.append(f"{q.id!r} = train {items[_overlap_key(q)]!r} ({q.question[:60]!r}, same options)")
        elif _normal(q.question) in stems:
            same_text.append(f"{q.id!r} ~ train {stems[_normal(q.question)]!r} ({q.question[:60]!r})")
    return same, same_text


def check_disjoint(train: list[MCQuestion], test: list[MCQuestion], train_where: str, test_where: str) -> None:
    """Refuse a test set that shares questions with the training set; log questions that share only their text."""
    same, same_text = find_overlap(train, test)
    if same_text:
        log.warning("%s: %d questions have the text of a training question but other options (kept as different "
                    "questions), e.g. %s", test_where, len(same_text), same_text[0])
    if same:
        shown = "; ".join(same[:5]) + ("; ..." if len(same) > 5 else "")
        raise DataError(f"{test_where} shares {len(same)} questions with the training set {train_where}: {shown}. "
                        "A test question seen in training inflates its accuracy; remove those questions from one of "
                        "the two files or choose sets that do not overlap")


def check_set_name(name: str, key: str) -> None:
    """A test-set name is a file name in 01_data/tests/: letters, digits, '.', '_' and '-', not starting with a dot."""
    if not _SET_NAME.fullmatch(name):
        hint = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
        raise DataError(f"{key}: test-set name {name!r} must be letters, digits, '.', '_' or '-' (it names the file "
                        f"01_data/tests/<name>.jsonl); rename it, e.g. {hint!r}")
