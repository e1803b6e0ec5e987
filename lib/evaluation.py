"""Evaluate trained students: generate rationale and answer, score accuracy and explanation quality (CEC).

Per item, the student writes its rationale and answer with the prompt of the condition it was
trained on (MT answers from its `[answer]` task and explains from its `[rationale]` task; CFD is
asked with the `[Direct election]` strategy token). The answer is extracted from the text;
unparseable outputs count as wrong and are flagged. CEC compares the student's rationale with the
teacher's rationale for the same test question, where the teacher wrote one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from lib.data import MCQuestion
from lib.metrics import cec_batch, extract_answer, rationale_length
from lib.params import StudyParams
from lib.teacher import split_rationale
from lib.training import eval_prompts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ItemResult:
    """One student's answer to one test item (a row of 05_evaluation/items.jsonl)."""

    run: str
    condition: str
    student: str
    seed: int
    test_set: str
    item_id: str
    prediction: int | None  # option index the student chose; None when unparseable
    correct: int  # 1 when prediction == gold
    unparseable: int  # 1 when no answer could be extracted
    rationale: str
    rationale_len: int  # words
    output: str  # the raw generated text
    cec: float  # CEC against the teacher's rationale (NaN when there is no reference or no rationale)
    cec_fc: float
    cec_bf: float
    seconds: float  # generation time per item (batch time / batch size)


def load_student(base_spec: str, adapter_dir: Path, device: str) -> tuple[Any, Any]:
    """The base model with a run's LoRA adapter (or full weights) and its tokenizer."""
    from peft import PeftModel

    from lib.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(adapter_dir))
    model = load_causal_lm(base_spec, device)
    if (adapter_dir / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model, tokenizer


def evaluate_run(run_info: dict, adapter_dir: Path, test_sets: dict[str, list[MCQuestion]], params: StudyParams,
                 device: str) -> list[ItemResult]:
    """Generate and score one trained student on every test set (no CEC yet)."""
    from lib.models import generate_texts

    model, tokenizer = load_student(run_info["student"], adapter_dir, device)
    ev = params.evaluation
    rows = []
    for name, qs in test_sets.items():
        prompts = [eval_prompts(run_info["condition"], q, params.counterfactual.strategy_tokens.positive) for q in qs]
        roles = sorted({r for p in prompts for r in p})
        t0 = time.perf_counter()
        outs = {role: generate_texts(model, tokenizer, [p[role] for p in prompts], ev.max_new_tokens,
                                     batch_size=ev.batch_size, desc=f"{run_info['run']} on {name} ({role})")
                for role in roles}
        per_item = (time.perf_counter() - t0) / max(1, len(qs))
        for i, q in enumerate(qs):
            answer_text = outs["answer"][i][0].text
            rationale_text = outs["rationale"][i][0].text if "rationale" in outs else answer_text
            pred = extract_answer(answer_text, q.choices)
            rationale = split_rationale(rationale_text)
            rows.append(ItemResult(
                run=run_info["run"], condition=run_info["condition"], student=run_info["student"],
                seed=run_info["seed"], test_set=name, item_id=q.id, prediction=pred, correct=int(pred == q.answer),
                unparseable=int(pred is None), rationale=rationale, rationale_len=rationale_length(rationale),
                output=answer_text if "rationale" not in outs else f"{rationale_text}\n---\n{answer_text}",
                cec=math.nan, cec_fc=math.nan, cec_bf=math.nan, seconds=round(per_item, 3),
            ))
    return rows


def add_cec(rows: list[ItemResult], references: dict[str, str], embed: Any) -> None:
    """Fill each row's CEC against the teacher rationale of its item, where both texts exist."""
    scored = [r for r in rows if r.rationale and references.get(r.item_id)]
    for r, s in zip(scored, cec_batch([(r.rationale, references[r.item_id]) for r in scored], embed)):
        r.cec, r.cec_fc, r.cec_bf = s.cec, s.fc, s.bf


def summary_table(rows: list[ItemResult]) -> Any:
    """Per run and test set: n, accuracy, unparseable share, mean CEC and rationale length."""
    return (items_frame(rows).groupby(["condition", "student", "seed", "test_set"], as_index=False)
              .agg(n=("correct", "size"), accuracy=("correct", "mean"), unparseable=("unparseable", "mean"),
                   cec=("cec", "mean"), rationale_words=("rationale_len", "mean"), seconds_per_item=("seconds", "mean")))


def evaluate_grid(ctx: Any) -> list[ItemResult]:
    """Evaluate every trained run of step 04 on every test set of step 01, with CEC."""
    from lib.data import read_test_sets
    from lib.models import load_embedder, pick_device
    from lib.runs import read_jsonl
    from lib.teacher import read_rationales

    device = pick_device(ctx.params.run.device)
    tests = read_test_sets(ctx.run_dir / "01_data")
    runs = read_jsonl(ctx.artifact("04_training", "runs.jsonl"))
    rows: list[ItemResult] = []
    for info in runs:
        rows.extend(evaluate_run(info, ctx.artifact("04_training", info["run"]) / "adapter", tests, ctx.params, device))
    references = read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "test",
                                 ctx.params.training.rationale_filter)
    embedder = load_embedder(ctx.params.evaluation.embedder, device)
    add_cec(rows, references, lambda s: embedder.encode(s, batch_size=64, show_progress_bar=False))
    return rows


def items_frame(rows: list[ItemResult]) -> Any:
    """Per-item results as a table (the input of the statistics step)."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows])
