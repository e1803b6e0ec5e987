"""Conditions: the students the study compares (METHOD.md), what each is trained on and how each is asked.

One place names every condition, its loss terms, its prompts at test time and which are untrained or trained on
teacher rationales; params validation, training, evaluation and the statistics all read it.
"""

from __future__ import annotations

from lib.questions import format_question, MCQuestion

CONDITIONS = ("BASE", "FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD", "CAUSAL")  # BASE: the untrained student
TEACHER = "TEACHER"  # the row of the teacher's own answers, beside the conditions in every comparison
ANSWER_PREFIX, RATIONALE_PREFIX = "[answer]", "[rationale]"
FACTUAL_PREFIX, COUNTERFACTUAL_PREFIX = "[factual]", "[counterfactual]"
MC_CONDITIONS = ("BASE", "FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD")  # students asked multiple-choice questions
UNTRAINED = ("BASE",)  # conditions without a training run: the student as loaded, asked like FT
# Conditions whose targets hold teacher rationales: each is trained once per training.rationale_sources level (CF: its
# factual rationale; its counterfactual rationales are the same in both). The others are trained once, as "unrevised".
RATIONALE_CONDITIONS = ("FT-CoT", "MT", "CF", "MT+CF")


def task_weights(condition: str, alpha: float) -> dict[str, float]:
    """The loss weight of each task (loss term, `term` in losses.jsonl) of a condition."""
    return {
        "BASE": {},  # not trained
        "FT": {"answer": 1.0},
        # two targets, two names: FT-CoT's `cot` target is the rationale and then the answer sentence; MT's `rationale`
        # target (prompt `[rationale]`) is the rationale alone, its answer learnt apart under `answer`
        "FT-CoT": {"cot": 1.0},
        "MT": {"answer": alpha, "rationale": 1.0 - alpha},
        "CF": {"factual": 1.0, "counterfactual": 1.0},
        "MT+CF": {"answer": alpha * alpha, "rationale": alpha * (1.0 - alpha),
                  "factual": 1.0 - alpha, "counterfactual": 1.0 - alpha},
        "CFD": {"cfd": 1.0},
        "CAUSAL": {"explanation": 1.0},
    }[condition]


def condition_task(condition: str) -> str:
    """What a student of `condition` is asked at test time: `mc` (questions) or `causal` (claim-evidence pairs)."""
    return "causal" if condition == "CAUSAL" else "mc"


def condition_sources(condition: str, sources: list[str]) -> list[str]:
    """The rationale sources a condition is trained on: `sources` for RATIONALE_CONDITIONS, else `["unrevised"]`."""
    return list(sources) if condition in RATIONALE_CONDITIONS else ["unrevised"]


def qa_prompt(q: MCQuestion, prefix: str = "") -> str:
    """The student's input: an optional task or strategy prefix, the question and `A:`."""
    return f"{prefix + ' ' if prefix else ''}{format_question(q)}\nA:"


def eval_prompts(condition: str, q: MCQuestion, strategy_positive: str) -> dict[str, str]:
    """The prompts a student trained under `condition` is asked with at test time, by role (answer / rationale).

    BASE (the untrained student) is asked like FT: the plain question and `A:`. MT+CF is asked like MT, its answer
    from `[answer]` and its explanation from `[rationale]`, as Hendriks et al. read MT+CF (their `[predict]` task).
    """
    if condition in ("MT", "MT+CF"):
        return {"answer": qa_prompt(q, ANSWER_PREFIX), "rationale": qa_prompt(q, RATIONALE_PREFIX)}
    if condition == "CFD":
        return {"answer": qa_prompt(q, strategy_positive)}
    if condition == "CF":
        return {"answer": qa_prompt(q, FACTUAL_PREFIX)}
    if condition == "CAUSAL":
        raise ValueError("CAUSAL students answer claim-evidence pairs, not questions: use "
                         "lib.prompts.causal_student_prompt(row) on the test rows of 02_teacher/causal.jsonl "
                         "(runs.jsonl task == 'causal')")
    return {"answer": qa_prompt(q)}
