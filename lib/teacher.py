"""The teacher: produces chain-of-thought rationales for questions, from a local model or recorded outputs.

Backends (params `teacher.backend`):
- `local`: an in-process transformers causal LM (Gemma 3 270M by default), batched generation;
- `replay`: the PaLM-540B few-shot CoT completions published with "Distilling step-by-step"
  (Hsieh et al. 2023) for CommonsenseQA, joined to the questions by id.
Every output row records the backend, the model, the prompt template and its hash.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol

from lib.data import MCQuestion, load_palm_rationales
from lib.metrics import extract_answer
from lib.models import Completion, generate_texts, load_causal_lm, load_tokenizer, pick_device
from lib.params import TeacherParams, resolve_path
from lib.prompts import cot_prompt, load_template
from lib.runs import read_jsonl

log = logging.getLogger(__name__)

_ANSWER_SENTENCE = re.compile(r"\s*(so|therefore|thus)?,?\s*the answer is\b.*$", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass
class Rationale:
    """One teacher rationale for one question (a row of 02_teacher/rationales.jsonl)."""

    id: str  # question id
    split: str  # "train" or "test"
    view: str  # "cot" (standard few-shot chain of thought)
    rationale: str  # the reasoning, without the closing "So the answer is ..." sentence
    answer: int | None  # option the teacher chose; None when unparseable
    correct: bool  # answer == gold
    failure: str | None  # None, "empty", "unparseable" or "truncated"; a failed row is kept, never dropped
    raw: str  # the completion as generated (cut at the next "Q:")
    backend: str
    model: str
    template: str
    template_sha256: str
    prompt_tokens: int
    completion_tokens: int


def split_rationale(text: str) -> str:
    """The reasoning part of a completion: everything before its `So the answer is` sentence."""
    return _ANSWER_SENTENCE.sub("", text).strip()


def judge_completion(q: MCQuestion, c: Completion) -> tuple[str, int | None, str | None]:
    """Rationale, chosen option and failure reason (None when valid) of one completion."""
    answer = extract_answer(c.text, q.choices)
    rationale = split_rationale(c.text)
    if not rationale:
        return rationale, answer, "empty"
    if answer is None:
        return rationale, None, "truncated" if c.finish_reason == "length" else "unparseable"
    return rationale, answer, None


class Teacher(Protocol):
    """What steps 03 and later need from a generative teacher."""

    name: str

    def complete(self, prompts: list[str], max_new_tokens: int | None = None, temperature: float | None = None,
                 n: int = 1, desc: str = "teacher") -> list[list[Completion]]:
        """`n` completions for each prompt."""


class LocalTeacher:
    """A transformers causal LM used as the teacher, loaded once per step."""

    def __init__(self, params: TeacherParams, device: str = "auto"):
        self.params = params
        self.name = params.model
        self.tokenizer = load_tokenizer(params.model)
        self.model = load_causal_lm(params.model, pick_device(device))

    def complete(self, prompts: list[str], max_new_tokens: int | None = None, temperature: float | None = None,
                 n: int = 1, desc: str = "teacher") -> list[list[Completion]]:
        """`n` completions for each prompt."""
        return generate_texts(
            self.model, self.tokenizer, prompts, max_new_tokens or self.params.max_new_tokens,
            batch_size=self.params.batch_size,
            temperature=self.params.temperature if temperature is None else temperature, n=n, desc=desc,
        )


def cot_rationales(questions: dict[str, list[MCQuestion]], params: TeacherParams, device: str = "auto") -> list[Rationale]:
    """Standard CoT rationales for every question of every split, from the configured backend."""
    if params.backend == "replay":
        return _replay_rationales(questions, params)
    teacher = LocalTeacher(params, device)
    template = load_template("cot")
    rows = []
    for split, qs in questions.items():
        t0 = time.perf_counter()
        completions = teacher.complete([cot_prompt(q, params.n_shots) for q in qs], desc=f"teacher CoT ({split})")
        for q, (c,) in zip(qs, completions):
            rationale, answer, failure = judge_completion(q, c)
            rows.append(Rationale(id=q.id, split=split, view="cot", rationale=rationale, answer=answer,
                                  correct=answer == q.answer, failure=failure, raw=c.text, backend="local",
                                  model=params.model, template=template.name, template_sha256=template.sha256,
                                  prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens))
        log.info("%s: %d rationales in %.1f s", split, len(qs), time.perf_counter() - t0)
    return rows


def _replay_rationales(questions: dict[str, list[MCQuestion]], params: TeacherParams) -> list[Rationale]:
    """Rationales read from the recorded PaLM completions; a question with none is a recorded failure."""
    folder = str(resolve_path(params.replay_dir or ""))
    recorded = {**load_palm_rationales(folder, "train"), **load_palm_rationales(folder, "test")}
    rows = []
    for split, qs in questions.items():
        for q in qs:
            text = recorded.get(q.id)
            if text is None:
                rows.append(Rationale(id=q.id, split=split, view="cot", rationale="", answer=None, correct=False,
                                      failure="not recorded", raw="", backend="replay", model="PaLM-540B",
                                      template="distilling-step-by-step few-shot CoT", template_sha256="",
                                      prompt_tokens=0, completion_tokens=0))
                continue
            c = Completion(text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=len(text.split()))
            rationale, answer, failure = judge_completion(q, c)
            rows.append(Rationale(id=q.id, split=split, view="cot", rationale=rationale, answer=answer,
                                  correct=answer == q.answer, failure=failure, raw=text, backend="replay",
                                  model="PaLM-540B", template="distilling-step-by-step few-shot CoT",
                                  template_sha256="", prompt_tokens=0, completion_tokens=c.completion_tokens))
    missing = sum(r.failure == "not recorded" for r in rows)
    if missing:
        log.warning("%d of %d questions have no recorded rationale in %s", missing, len(rows), folder)
    return rows


def summarize(rows: list[Rationale]) -> dict[str, Any]:
    """Teacher quality per split: accuracy against gold, failures by reason, lengths and tokens."""
    out: dict[str, Any] = {}
    for split in sorted({r.split for r in rows}):
        rs = [r for r in rows if r.split == split]
        failures: dict[str, int] = {}
        for r in rs:
            if r.failure:
                failures[r.failure] = failures.get(r.failure, 0) + 1
        words = sorted(len(r.rationale.split()) for r in rs)
        out[split] = {
            "n": len(rs),
            "accuracy": sum(r.correct for r in rs) / len(rs),
            "failures": failures,
            "median_rationale_words": words[len(words) // 2],
            "prompt_tokens": sum(r.prompt_tokens for r in rs),
            "completion_tokens": sum(r.completion_tokens for r in rs),
        }
    return out


def keep_rationale(row: dict, keep: str) -> bool:
    """Whether a rationale row passes the filter: `any` non-empty, `parsed` (an answer was read), `correct`."""
    if not row["rationale"]:
        return False
    if keep == "any":
        return True
    return not row["failure"] and (keep == "parsed" or row["correct"])


def read_rationales(path: str | Path, split: str | None = None, keep: str = "parsed") -> dict[str, str]:
    """Question id -> rationale from 02_teacher/rationales.jsonl, for rows that pass `keep`."""
    return {r["id"]: r["rationale"] for r in read_jsonl(path)
            if keep_rationale(r, keep) and (split is None or r["split"] == split)}


def examples_frame(rows: list[Rationale], n: int = 3) -> Any:
    """A few rationales per split for display: question id, teacher answer, correctness, rationale."""
    import pandas as pd

    df = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    return df.groupby("split").head(n)[["split", "id", "answer", "correct", "failure", "rationale"]]
