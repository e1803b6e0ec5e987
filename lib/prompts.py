"""Prompt templates: one text file per teacher task in lib/templates/, identified by a content hash."""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

from lib.files import sha256_text
from lib.questions import ClaimEvidence, format_question, MCQuestion, option_letters

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt template file and the sha256 recorded with every output made from it."""

    name: str
    text: str
    sha256: str

    def render(self, **fields: str) -> str:
        """Fill the template's {fields}; a missing field is an error naming it."""
        try:
            return self.text.format(**fields)
        except KeyError as exc:
            raise KeyError(f"template {self.name} needs field {exc.args[0]!r}") from None


@lru_cache(maxsize=None)
def load_template(name: str) -> Template:
    """Read lib/templates/<name>.txt."""
    path = TEMPLATES / f"{name}.txt"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATES.glob("*.txt"))
        raise FileNotFoundError(f"no prompt template {name!r} in {TEMPLATES}; known: {', '.join(known)}")
    # the file's final newline is not part of the prompt: the completion must continue right after the last label
    text = path.read_text(encoding="utf-8").removesuffix("\n")
    return Template(name=name, text=text, sha256=sha256_text(text))


@lru_cache(maxsize=None)
def few_shot_examples() -> tuple[tuple[MCQuestion, str], ...]:
    """The worked examples of the few-shot CoT prompt (written for this project)."""
    shots = []
    for i, line in enumerate((TEMPLATES / "cot_shots.jsonl").read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        q = MCQuestion(id=f"shot-{i}", question=row["question"], choices=row["choices"],
                       labels=option_letters(len(row["choices"])), answer=row["answer"])
        shots.append((q, row["rationale"]))
    return tuple(shots)


def answer_sentence(q: MCQuestion, index: int, answer_format: str = "letter") -> str:
    """The closing sentence of every answer: `So the answer is (b) bed.` (letter) or `So the answer is bed.` (text)."""
    if answer_format == "text":
        return f"So the answer is {q.choices[index]}."
    return f"So the answer is ({option_letters(len(q.choices))[index]}) {q.choices[index]}."


def cot_prompt(q: MCQuestion, n_shots: int) -> str:
    """Standard few-shot CoT prompt: worked examples, then the question and `A:`."""
    shots = "".join(
        f"{format_question(s)}\nA: {rationale} {answer_sentence(s, s.answer)}\n\n"
        for s, rationale in few_shot_examples()[:n_shots]
    )
    return load_template("cot").render(shots=shots, question=format_question(q))


def view_prompt(q: MCQuestion, option: int, positive: bool, template: str | None = None) -> str:
    """Ask for a rationale for (positive view) or against (negative view) one option, or another option template."""
    name = template or ("positive_view" if positive else "negative_view")
    letter = option_letters(len(q.choices))[option]
    return load_template(name).render(question=format_question(q), letter=letter, option=q.choices[option])


def revision_prompt(stage: str, q: MCQuestion, explanation: str = "", critique: str = "") -> str:
    """One stage of critique-revision (seed 001) for the gold answer: `explain`, `critique` or `revise`."""
    if stage not in ("explain", "critique", "revise"):
        raise ValueError(f"unknown critique-revision stage {stage!r}; stages are explain, critique, revise")
    letter = option_letters(len(q.choices))[q.answer]
    return load_template(stage).render(question=format_question(q), letter=letter, option=q.choices[q.answer],
                                       explanation=explanation, critique=critique)


def claim_evidence_text(pair: ClaimEvidence | dict) -> str:
    """The claim-evidence block of every causal prompt (teacher and CAUSAL student): claim, evidence, evidence label.

    The label is the evidence's own (SUPPORTS / REFUTES / NOT_ENOUGH_INFO for this pair), not the claim's verdict
    over all its evidence. `pair` is a `ClaimEvidence` or a row of 02_teacher/causal.jsonl.
    """
    row = dataclasses.asdict(pair) if isinstance(pair, ClaimEvidence) else pair
    missing = [k for k in ("claim", "evidence", "evidence_label") if k not in row]
    if missing:
        raise ValueError(f"claim-evidence row {row.get('id', '?')!r} lacks {', '.join(missing)}; rows of "
                         "02_teacher/causal.jsonl carry them: rerun step 02_teacher")
    return f"Claim: {row['claim']}\nEvidence: {row['evidence']}\nEvidence label: {row['evidence_label']}"


def causal_prompt(pair: ClaimEvidence | dict) -> str:
    """The teacher's prompt: a structured causal explanation (cause, mechanism, effect) of one claim-evidence pair."""
    return load_template("causal").render(claim_evidence=claim_evidence_text(pair))


def causal_student_prompt(row: ClaimEvidence | dict) -> str:
    """The CAUSAL student's input (training and evaluation): the teacher's claim-evidence block, then `Explanation:`."""
    return claim_evidence_text(row) + "\nExplanation:"
