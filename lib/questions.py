"""Questions: the items every step passes around (multiple-choice questions, claim-evidence pairs) and how a
question is shown to a model. Loading them from files is lib.data's work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MC_FORMATS = ("commonsenseqa", "arc", "qasc", "openbookqa", "quarel")  # the multiple-choice files lib.data reads
CLAIM_LABELS = ("SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO", "DISPUTED")  # Climate-FEVER's verdicts on a claim
EVIDENCE_LABELS = ("SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO")  # and on one piece of evidence
# Where a question ends: models asked in the few-shot "Q: ... A: ..." layout go on with an invented next question;
# generation stops at this string and recorded completions are cut at it.
NEXT_QUESTION = "\n\nQ:"


@dataclasses.dataclass
class MCQuestion:
    """One multiple-choice question; `answer` indexes `choices` (-1 = no answer key)."""

    id: str
    question: str
    choices: list[str]
    labels: list[str]
    answer: int
    concept: str | None = None
    source: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MCQuestion:
        """Rebuild a question written with `write_jsonl`; extra keys are ignored."""
        return _from_dict(cls, d)


@dataclasses.dataclass
class ClaimEvidence:
    """One Climate-FEVER claim-evidence pair."""

    id: str
    claim_id: str
    claim: str
    claim_label: str
    evidence: str
    evidence_label: str
    article: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClaimEvidence:
        """Rebuild a pair written with `write_jsonl`; extra keys are ignored."""
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Construct dataclass `cls` from a dict, naming any missing required field."""
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in d]
    if missing:
        raise ValueError(f"{cls.__name__}.from_dict: missing field(s) {', '.join(missing)} in {sorted(d)}")
    return cls(**{f.name: d[f.name] for f in fields if f.name in d})


def option_letters(n: int) -> list[str]:
    """Positional option letters used in prompts: ["a", "b", ...]."""
    if not 0 <= n <= 26:
        raise ValueError(f"can letter 0 to 26 options, got {n}")
    return [chr(ord("a") + i) for i in range(n)]


def format_question(q: MCQuestion) -> str:
    """The distilling-step-by-step few-shot CoT layout: "Q: ...\\nAnswer Choices:\\n(a) ...\\n(b) ..."."""
    options = "\n".join(f"({letter}) {text}" for letter, text in zip(option_letters(len(q.choices)), q.choices))
    return f"Q: {q.question}\nAnswer Choices:\n{options}"
