"""The teacher: every teacher output the study needs, from a generative model or recorded outputs.

Backends (params `teacher.backend`):
- `local`: an in-process transformers causal LM (Gemma 3 270M by default), batched generation;
- `openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server);
- `replay`: recorded outputs joined to the questions by id: the PaLM-540B few-shot CoT completions
  published with "Distilling step-by-step" (Hsieh et al. 2023, `replay_source: palm`), the CoS-E
  human explanations (`replay_source: cose`) or Hendriks et al.'s LLaMA-2-13B explanations, revisions and
  counterfactual rationales (`replay_source: hendriks`).
`local` and `openai` go through `lib.teacher_engine.CachedTeacher` (cache, validation with re-asks,
budget; `lib.openai_api` adds rate limits and retries for `openai`); `make_teacher` builds it. Step 02
makes the CoT rationales, the critique-revision rows (seed 001) and the causal explanations of
claim-evidence pairs (seed 000). Replay (its files read by `lib.recorded`) has no model to critique or
explain with, so those rows are recorded as failures ("not available from replay"), except the critique-revisions
that Hendriks et al. recorded. Their explanations rationalise the gold answer the teacher was shown: those rows have
`answer` None and `answer_given` True, as they are no predictions. Every output row records the backend, the model,
the prompt template(s) and their hashes, and a replayed one the file it was read from (`source`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from lib.files import read_jsonl, resolve_path
from lib.metrics import extract_answer
from lib.models import cache_dir, Completion
from lib.openai_api import OpenAIBackend
from lib.params import TeacherParams
from lib.prompts import causal_prompt, cot_prompt, load_template, revision_prompt
from lib.questions import ClaimEvidence, MCQuestion
from lib.recorded import (
    HENDRIKS_MODEL,
    HendriksRecord,
    load_cose,
    load_hendriks_outputs,
    load_palm_rationales,
    match_hendriks,
    NEGATIVE,
    REVISED,
    UNREVISED,
)
from lib.response_cache import ResponseCache
from lib.teacher_engine import Ask, CachedTeacher, LocalBackend, Validator

log = logging.getLogger(__name__)

# A concluding answer clause at the very end of a text: it starts the text, a line, or a sentence or clause
# (after . ! ? ; : or a comma), names the answer ("So the answer is (b) bed.", "Thus the answer would be b",
# "The answer is bed.", "Answer: (b)", "So the answer must be b") and runs to the end without starting another
# sentence. "The answer must be a place where ..." opens PaLM's rationales: "must/should be" concludes only after
# "so" and the like.
_SO, _THE_ANSWER = r"(?:so|thus|therefore|hence)\b,?\s*", r"(?:the\s+)?(?:(?:correct|final|right|best)\s+)?answer\s+"
_CONCLUDING_ANSWER = re.compile(
    r"(?:^|(?<=[.!?;:,])[ \t]+|\n\s*)"
    rf"(?:(?:{_SO})?{_THE_ANSWER}(?:is|would\s+be)\b|{_SO}{_THE_ANSWER}(?:should|must)\s+be\b"
    r"|(?:the\s+)?answer\s*:)"
    r"(?:[^.!?\n]|[.!?](?=\S))*[.!?]*[\"')\]]*\s*$",
    re.IGNORECASE,
)


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
    responses: int = 1  # teacher responses used (1 + re-asks; 0 when none came back)
    answer_given: bool = False  # the teacher was shown the gold answer and explained it: answer None, no prediction
    source: str = ""  # replay: the recorded file (or shard) the row was read from; "" for generated rows


def split_rationale(text: str) -> str:
    """The reasoning part of a completion: the text without its concluding answer sentence(s) at the end.

    "So / Thus / Therefore / Hence the answer is / would be (x) ...", "The answer is x." and "Answer: (x)"
    are removed only as the last sentence or clause (repeatedly, for a repeated conclusion); an answer
    named earlier, followed by more reasoning, stays, and no word is ever cut.
    """
    text = text.strip()
    while (m := _CONCLUDING_ANSWER.search(text)) is not None:
        text = text[:m.start()].rstrip(" \t\n,;:")
    return text


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


REPLAY_ONLY = "not available from replay"
TEACHER_CACHE = "teacher_cache.sqlite"  # a run folder's teacher response cache, outside the step folders


def teacher_cache_path(cache: str | None, run_dir: str | Path | None) -> Path:
    """The teacher's response cache: params `teacher.cache`, else the run folder's, else the shared cache's."""
    if cache:
        return resolve_path(cache)
    return Path(run_dir) / TEACHER_CACHE if run_dir else cache_dir() / TEACHER_CACHE


def make_teacher(params: TeacherParams, device: str = "auto", run_dir: str | Path | None = None,
                 seed: int = 0, progress: Callable[[str], None] | None = None) -> CachedTeacher:
    """The cached generative teacher (a `Teacher`) for params: `local` or `openai`; `replay` uses the local `model`.

    The response cache is `teacher.cache`, else `<run_dir>/teacher_cache.sqlite` (outside the step folders,
    so cache hits never change a step's artifacts), else `<DISTILL_CACHE>/teacher_cache.sqlite`. `seed` (params
    run.seed) seeds sampled requests and is part of their cache key. `progress` (a step's `ctx.progress`) gets a line
    per minute of a long task and one when it ends, for the run's progress.log.
    """
    path = teacher_cache_path(params.cache, run_dir)
    if params.backend == "replay":
        log.info("backend replay has no generative model; generative steps use the local model %s", params.model)
    backend = OpenAIBackend(params) if params.backend == "openai" else LocalBackend(params, device)
    log.info("teacher %s (%s), response cache %s", params.model, backend.name, path)
    return CachedTeacher(backend, ResponseCache(path), params, usage_log=path.with_name(path.stem + "_usage.jsonl"),
                         seed=seed, progress=progress)


def cot_rationales(questions: dict[str, list[MCQuestion]], params: TeacherParams, device: str = "auto",
                   engine: CachedTeacher | None = None) -> list[Rationale]:
    """Standard CoT rationales for every question of every split, from the configured backend.

    `engine` is a `make_teacher` teacher (one with the default cache is made when none is given).
    A completion without a readable answer is re-asked up to `teacher.max_reasks` times.
    """
    if params.backend == "replay":
        return _replay_rationales(questions, params)
    engine = engine or make_teacher(params, device)
    template = load_template("cot")
    rows = []
    for split, qs in questions.items():
        t0 = time.perf_counter()
        asks = [Ask(prompt=cot_prompt(q, params.n_shots), max_new_tokens=params.max_new_tokens,
                    temperature=params.temperature, template=template.name, template_sha256=template.sha256,
                    validate=_cot_validator(q)) for q in qs]
        for q, a in zip(qs, engine.ask(asks, desc=f"teacher CoT ({split})")):
            c = a.completion
            rationale, answer, _ = judge_completion(q, c)
            rows.append(Rationale(id=q.id, split=split, view="cot", rationale=rationale, answer=answer,
                                  correct=answer == q.answer, failure=a.failure,
                                  raw=c.text, backend=params.backend, model=engine.name, template=template.name,
                                  template_sha256=template.sha256, prompt_tokens=c.prompt_tokens,
                                  completion_tokens=c.completion_tokens, responses=a.responses))
        log.info("%s: %d rationales in %.1f s", split, len(qs), time.perf_counter() - t0)
    return rows


def _cot_validator(q: MCQuestion) -> Validator:
    """A validator for one question's CoT completion: its failure reason, None when usable."""
    return lambda c: judge_completion(q, c)[2]


def text_failure(c: Completion) -> str | None:
    """Why a free-text completion is unusable: empty, or truncated at the token limit; None when usable."""
    if not c.text.strip():
        return "empty"
    return "truncated" if c.finish_reason == "length" else None


def _replay_rationales(questions: dict[str, list[MCQuestion]], params: TeacherParams) -> list[Rationale]:
    """Rationales read from recorded outputs; a question with none is a recorded failure.

    PaLM completions end with the teacher's answer, which is judged like any completion. CoS-E explanations
    are written by people for the gold answer, so their answer is the gold one.
    """
    if params.replay_source == "hendriks":
        return _hendriks_rationales(questions, hendriks_records(questions, params))
    folder = resolve_path(params.replay_dir or "")
    if params.replay_source == "cose":
        recorded = {**load_cose(str(folder / "cose_train_v1.11.jsonl")),
                    **load_cose(str(folder / "cose_dev_v1.11.jsonl"))}
        model, template = "CoS-E v1.11 (human)", "CoS-E open-ended explanation"
    else:
        recorded = {**load_palm_rationales(str(folder), "train"), **load_palm_rationales(str(folder), "test")}
        model, template = "PaLM-540B", "distilling-step-by-step few-shot CoT"
    rows = []
    for split, qs in questions.items():
        for q in qs:
            text = recorded.get(q.id)
            if text is None:
                rows.append(Rationale(id=q.id, split=split, view="cot", rationale="", answer=None, correct=False,
                                      failure="not recorded", raw="", backend="replay", model=model,
                                      template=template, template_sha256="", prompt_tokens=0, completion_tokens=0))
                continue
            c = Completion(text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=len(text.split()))
            if params.replay_source == "cose":
                rationale, answer = text.strip(), q.answer
                failure = None if rationale else "empty"
            else:
                rationale, answer, failure = judge_completion(q, c)
            rows.append(Rationale(id=q.id, split=split, view="cot", rationale=rationale, answer=answer,
                                  correct=answer == q.answer, failure=failure, raw=text, backend="replay",
                                  model=model, template=template, template_sha256="", prompt_tokens=0,
                                  completion_tokens=c.completion_tokens))
    missing = sum(r.failure == "not recorded" for r in rows)
    if missing:
        log.warning("%d of %d questions have no recorded rationale in %s", missing, len(rows), folder)
    return rows


def hendriks_records(questions: dict[str, list[MCQuestion]], params: TeacherParams) -> dict[str, HendriksRecord]:
    """Hendriks et al.'s records of the questions (both splits of teacher.replay_dir), checked against them by id."""
    return match_hendriks(load_hendriks_outputs(resolve_path(params.replay_dir or "")), questions)


def _hendriks_rationales(questions: dict[str, list[MCQuestion]], records: dict[str, HendriksRecord]) -> list[Rationale]:
    """The unrevised explanations (few_shot_positive_rationale): the gold answer was given, so `answer` is None.

    A question without a record is a "not recorded" row; an empty explanation an "empty" one (kept, never trained on).
    """
    rows = []
    for split, qs in questions.items():
        for q in qs:
            r = records.get(q.id)
            raw = r.texts[UNREVISED] if r else ""
            text = split_rationale(raw)
            failure = "not recorded" if r is None else None if text else "empty"
            rows.append(Rationale(id=q.id, split=split, view="cot", rationale=text, answer=None, correct=False,
                                  failure=failure, raw=raw, backend="replay", model=HENDRIKS_MODEL,
                                  template=f"Hendriks et al. {UNREVISED}", template_sha256="", prompt_tokens=0,
                                  completion_tokens=len(raw.split()), answer_given=True, source=r.source if r else ""))
    empty = sum(r.failure == "empty" for r in rows)
    if empty:
        log.warning("%s: %d empty of %d, kept as failures 'empty'", UNREVISED, empty, len(rows))
    return rows


def _hendriks_revisions(picked: list[MCQuestion], params: TeacherParams, split: str) -> list[Revision]:
    """The recorded critique-revisions (few_shot_revision; the critiques themselves are not in the files)."""
    records = hendriks_records({split: picked}, params)
    rows = []
    for q in picked:
        r = records.get(q.id)
        initial, revised = (r.texts[UNREVISED], r.texts[REVISED]) if r else ("", "")
        failure = "not recorded" if r is None else "explain: empty" if not initial else "revise: empty" if not revised \
            else None
        rows.append(Revision(q.id, split, initial, "", revised, failure, "replay", HENDRIKS_MODEL, {},
                             source=r.source if r else ""))
    empty = sum(bool(r.failure) and r.failure.endswith("empty") for r in rows)
    if empty:
        log.warning("%s: %d of %d revisions have an empty text, kept as failures", REVISED, empty, len(rows))
    return rows


def hendriks_side_by_side(questions: list[MCQuestion], params: TeacherParams, n: int = 1) -> Any:
    """Hendriks et al.'s unrevised, negative and revised explanation of the first `n` recorded questions, side by side.

    Empty (with the columns) unless the teacher is the Hendriks replay.
    """
    import pandas as pd

    cols = ["id", "question", "gold", "unrevised", "negative", "revised", "source"]
    if params.backend != "replay" or params.replay_source != "hendriks":
        return pd.DataFrame(columns=cols)
    records = hendriks_records({"train": questions}, params)
    picked = [records[q.id] for q in questions if q.id in records][:n]
    return pd.DataFrame([[r.id, r.question, r.answer, r.texts[UNREVISED], r.texts[NEGATIVE], r.texts[REVISED],
                          r.source] for r in picked], columns=cols)


@dataclasses.dataclass
class Revision:
    """Critique-revision of one training question's explanation (a row of 02_teacher/revisions.jsonl)."""

    id: str
    split: str
    initial: str  # the teacher's first explanation of the gold answer ("unrevised")
    critique: str  # the teacher's critique of it
    revised: str  # the explanation rewritten to meet the critique
    failure: str | None  # None, or "<stage>: <reason>" for the first stage that failed
    backend: str
    model: str
    templates: dict[str, str]  # template name -> sha256
    source: str = ""  # replay: the recorded file (or shard) the row was read from; "" for generated rows


def critique_revisions(questions: list[MCQuestion], params: TeacherParams, engine: CachedTeacher | None = None,
                       split: str = "train") -> list[Revision]:
    """Initial explanation -> critique -> revised explanation for the first `teacher.revise_max_questions` questions.

    A stage whose completion failed but is not empty (truncated at the token limit) still goes to the next stage, so
    a row keeps every text the teacher wrote; `failure` names the first stage that failed. An empty one ends the row.
    The Hendriks replay gives the revisions it recorded, and asks no model.
    """
    picked = questions[: params.revise_max_questions] if params.revise_max_questions else questions
    names = ("explain", "critique", "revise")
    templates = {n: load_template(n).sha256 for n in names}
    if params.backend == "replay" and params.replay_source == "hendriks":
        return _hendriks_revisions(picked, params, split)
    if params.backend == "replay":
        return [Revision(q.id, split, "", "", "", REPLAY_ONLY, "replay", "", templates) for q in picked]
    engine = engine or make_teacher(params)
    texts: dict[str, list[str]] = {n: [""] * len(picked) for n in names}
    failures: list[str | None] = [None] * len(picked)
    for n, stage in enumerate(names):
        todo = [i for i in range(len(picked)) if all(texts[s][i] for s in names[:n])]
        t = load_template(stage)
        asks = [Ask(prompt=revision_prompt(stage, picked[i], texts["explain"][i], texts["critique"][i]),
                    max_new_tokens=params.revise_max_new_tokens, temperature=params.temperature, template=t.name,
                    template_sha256=t.sha256, validate=text_failure, stop="\n\n") for i in todo]
        for i, a in zip(todo, engine.ask(asks, desc=f"critique-revision: {stage}")):
            texts[stage][i] = a.completion.text.strip()
            if a.failure and failures[i] is None:
                failures[i] = f"{stage}: {a.failure}"
    return [Revision(q.id, split, texts["explain"][i], texts["critique"][i], texts["revise"][i], failures[i],
                     params.backend, engine.name, templates) for i, q in enumerate(picked)]


@dataclasses.dataclass
class CausalExplanation:
    """A structured causal explanation of one claim-evidence pair (a row of 02_teacher/causal.jsonl)."""

    id: str  # ClaimEvidence.id
    split: str  # "train" or "test"
    claim: str
    evidence: str
    claim_label: str
    evidence_label: str
    explanation: str  # "<cause> <mechanism> <effect>", one sentence each ("" on failure)
    failure: str | None
    backend: str
    model: str
    template: str
    template_sha256: str
    raw: str = ""  # the teacher's completion as written (kept on failure too, to see what went wrong)


CAUSAL_KEYS = ("cause", "mechanism", "effect")


def parse_causal(text: str) -> tuple[dict[str, str] | None, str | None]:
    """The cause / mechanism / effect of a JSON answer, or None and why it is unusable."""
    start = text.find("{")
    if start < 0:
        return None, "no JSON object"
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None, "invalid JSON"
    if not isinstance(obj, dict):
        return None, "invalid JSON"
    missing = [k for k in CAUSAL_KEYS if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        return None, f"JSON lacks {', '.join(missing)}"
    return {k: obj[k].strip() for k in CAUSAL_KEYS}, None


def causal_failure(c: Completion) -> str | None:
    """Why a causal-explanation completion is unusable (truncated, not JSON, missing keys); None when usable."""
    parts, problem = parse_causal(c.text)
    if parts is not None:
        return None
    return "truncated" if c.finish_reason == "length" else problem


def explanation_text(parts: dict[str, str]) -> str:
    """Cause, mechanism and effect as three sentences."""
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in (parts[k] for k in CAUSAL_KEYS))


def causal_explanations(pairs: dict[str, list[ClaimEvidence]], params: TeacherParams,
                        engine: CachedTeacher | None = None) -> list[CausalExplanation]:
    """A causal explanation for the first `teacher.causal_max_pairs` claim-evidence pairs of each split."""
    template = load_template("causal")
    picked = {split: ps[: params.causal_max_pairs] if params.causal_max_pairs else ps for split, ps in pairs.items()}

    def row(split: str, p: ClaimEvidence, explanation: str, failure: str | None, model: str,
            raw: str = "") -> CausalExplanation:
        return CausalExplanation(p.id, split, p.claim, p.evidence, p.claim_label, p.evidence_label, explanation,
                                 failure, params.backend, model, template.name, template.sha256, raw)

    if params.backend == "replay":
        return [row(s, p, "", REPLAY_ONLY, "") for s, ps in picked.items() for p in ps]
    engine = engine or make_teacher(params)
    rows = []
    for split, ps in picked.items():
        asks = [Ask(prompt=causal_prompt(p), max_new_tokens=params.causal_max_new_tokens,
                    temperature=params.temperature, template=template.name, template_sha256=template.sha256,
                    validate=causal_failure, stop="\n\n") for p in ps]
        for p, a in zip(ps, engine.ask(asks, desc=f"causal explanations ({split})")):
            parts, _ = parse_causal(a.completion.text)
            rows.append(row(split, p, explanation_text(parts) if parts and not a.failure else "", a.failure, engine.name,
                            a.completion.text))
    return rows


def summarize(rows: list[Rationale]) -> dict[str, Any]:
    """Teacher quality per split: accuracy against gold, failures by reason, lengths and tokens.

    Rows whose answer was given to the teacher (`answer_given`) are no predictions: the accuracy is over the others,
    None when there are none, and `answer_given` counts them.
    """
    out: dict[str, Any] = {}
    for split in sorted({r.split for r in rows}):
        rs = [r for r in rows if r.split == split]
        failures: dict[str, int] = {}
        for r in rs:
            if r.failure:
                failures[r.failure] = failures.get(r.failure, 0) + 1
        words = sorted(len(r.rationale.split()) for r in rs)
        predicted = [r for r in rs if not r.answer_given]
        out[split] = {
            "n": len(rs),
            "accuracy": sum(r.correct for r in predicted) / len(predicted) if predicted else None,
            "answer_given": len(rs) - len(predicted),
            "failures": failures,
            "median_rationale_words": words[len(words) // 2],
            "prompt_tokens": sum(r.prompt_tokens for r in rs),
            "completion_tokens": sum(r.completion_tokens for r in rs),
        }
    return out


def passes_rationale_filter(row: dict, rationale_filter: str) -> bool:
    """Whether a rationale row passes the filter: `any` non-empty, `parsed` (an answer was read), `correct`."""
    if not row["rationale"]:
        return False
    if rationale_filter == "any":
        return True
    return not row["failure"] and (rationale_filter == "parsed" or row["correct"])


def read_rationales(path: str | Path, split: str | None = None, rationale_filter: str = "parsed") -> dict[str, str]:
    """Question id -> rationale from 02_teacher/rationales.jsonl, for rows that pass `rationale_filter`."""
    return {r["id"]: r["rationale"] for r in read_jsonl(path)
            if passes_rationale_filter(r, rationale_filter) and (split is None or r["split"] == split)}


def rationale_examples_frame(rows: list[Rationale], n: int = 3) -> Any:
    """A few rationales per split for display: question id, teacher answer, correctness, rationale."""
    import pandas as pd

    df = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    return df.groupby("split").head(n)[["split", "id", "answer", "correct", "failure", "rationale"]]


def read_claim_pairs(train_path: str | Path, test_path: str | Path) -> dict[str, list[ClaimEvidence]]:
    """The claim-evidence pairs step 01 wrote (claims_train.jsonl, claims_test.jsonl), by split."""
    return {split: [ClaimEvidence.from_dict(r) for r in read_jsonl(path)]
            for split, path in (("train", train_path), ("test", test_path))}


def failures_frame(rationales: list[Rationale], revisions: list[Revision], causal: list[CausalExplanation]) -> Any:
    """Outputs and failures by task and reason (a failed output is kept with its reason, never dropped)."""
    import pandas as pd

    tasks = {"CoT rationales": rationales, "critique-revision": revisions, "causal explanations": causal}
    rows = [{"task": task, "split": r.split, "outcome": r.failure or "valid"} for task, rs in tasks.items() for r in rs]
    if not rows:
        return pd.DataFrame(columns=["task", "split", "outcome", "n"])
    return pd.DataFrame(rows).value_counts().rename("n").reset_index().sort_values(["task", "split", "n"],
                                                                                   ascending=[True, True, False])


def accounting(engine: CachedTeacher | None) -> dict[str, dict[str, Any]]:
    """Per task: items, failures, re-asks, prompt and completion tokens and cost of the responses used.

    These depend only on the stored responses, so a cached rerun writes the same numbers; how many
    requests were actually sent this session is in the notebook's table and the run's usage log.
    """
    keep = ("items", "failed", "reasks", "prompt_tokens", "completion_tokens", "cost_usd")
    return {task: {k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items() if k in keep}
            for task, stats in (engine.usage.items() if engine is not None else [])}


def revisions_frame(rows: list[Revision], n: int = 3) -> Any:
    """A few critique-revision rows for display: unrevised explanation, critique, revised explanation."""
    import pandas as pd

    cols = ["id", "initial", "critique", "revised", "failure"]
    return pd.DataFrame([dataclasses.asdict(r) for r in rows[:n]], columns=[f.name for f in dataclasses.fields(Revision)])[cols]


def causal_frame(rows: list[CausalExplanation], n: int = 3) -> Any:
    """A few causal explanations per split for display."""
    import pandas as pd

    df = pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(CausalExplanation)])
    return df.groupby("split").head(n)[["split", "claim", "evidence", "evidence_label", "explanation", "failure"]]
