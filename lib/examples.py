"""Training examples: what the student of each condition reads and learns to write, as text and as token ids.

Every trained condition of METHOD.md becomes a list of `Example`s (prompt, target, task), built from the teacher's
artifacts of steps 01-03 (`load_condition_examples`); a `revised` run (Hendriks et al.'s Revised factor,
`training.rationale_sources`) takes its rationales from 02_teacher/revisions.jsonl. `tokenize_examples` turns them
into token ids with labels on target tokens only, fitted to `training.max_length`: an example longer than that keeps
the end of its target (the answer sentence and EOS) and loses the end of its rationale. `collate` pads a batch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from lib.conditions import (
    ANSWER_PREFIX,
    condition_sources,
    COUNTERFACTUAL_PREFIX,
    FACTUAL_PREFIX,
    MC_CONDITIONS,
    qa_prompt,
    RATIONALE_PREFIX,
    UNTRAINED,
)
from lib.data import read_questions
from lib.files import read_jsonl
from lib.models import prefix_ids, special_ends
from lib.prompts import answer_sentence, causal_student_prompt
from lib.questions import MCQuestion
from lib.teacher import read_rationales, split_rationale

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Example:
    """One training pair: the model reads `prompt` and learns to write `target`."""

    prompt: str
    target: str
    task: str  # loss term the example counts towards
    qid: str
    closing: str = ""  # the target's final answer sentence, kept whole when the example is cut to max_length


def revised_rationales(rows: list[dict], rationale_filter: str = "parsed") -> dict[str, str]:
    """Question id -> revised explanation from the rows of 02_teacher/revisions.jsonl (training split).

    A row with a failure is left out, unless `rationale_filter == "any"` (training.rationale_filter), which keeps a
    failed row's revised text as written when it has one. A concluding answer sentence is removed, as from CoT
    rationales.
    """
    out = {}
    for r in rows:
        text = split_rationale(r.get("revised") or "")
        if text and r.get("split", "train") == "train" and (not r.get("failure") or rationale_filter == "any"):
            out[str(r["id"])] = text
    return out


def _answer_example(prompt: str, rationale: str, answer: str, task: str, qid: str) -> Example:
    """An example whose target is ` rationale answer` (or ` answer` alone), with the answer sentence as its closing."""
    return Example(prompt, f" {rationale} {answer}" if rationale else f" {answer}", task, qid, closing=answer)


def _mt_examples(questions: list[MCQuestion], rationales: dict[str, str], fmt: str = "letter") -> list[Example]:
    """MT: one `[answer]` example per question and one `[rationale]` example per question with a rationale."""
    ex = []
    for q in questions:
        ex.append(_answer_example(qa_prompt(q, ANSWER_PREFIX), "", answer_sentence(q, q.answer, fmt), "answer", q.id))
        if rationales.get(q.id):
            ex.append(Example(qa_prompt(q, RATIONALE_PREFIX), " " + rationales[q.id], "rationale", q.id))
    return ex


def _cf_examples(questions: list[MCQuestion], rationales: dict[str, str], cf_rationales: list[dict] | None,
                 fmt: str = "letter") -> list[Example]:
    """CF (SCOTT, Hendriks et al.): `[factual]` question → gold rationale + gold answer; `[counterfactual]` question and
    a wrong option's rationale → that option's answer sentence (the rationale is read, not written).

    One counterfactual example per question, from its first usable row of cf_rationales.jsonl (step 03 writes the
    seeded wrong option first), as Hendriks et al.'s collator pairs each factual example with one counterfactual one.
    """
    if cf_rationales is None:
        raise ValueError("CF needs the counterfactual rationales of step 03 (03_counterfactuals/cf_rationales.jsonl)")
    by_id = {q.id: q for q in questions}
    ex = [_answer_example(qa_prompt(q, FACTUAL_PREFIX), rationales[q.id], answer_sentence(q, q.answer, fmt), "factual", q.id)
          for q in questions if rationales.get(q.id)]
    used: set[str] = set()
    for r in cf_rationales:
        q = by_id.get(r["id"])
        if q is None or not r.get("text") or not 0 <= int(r["option"]) < len(q.choices) or int(r["option"]) == q.answer:
            continue  # a question outside the training set, or a row that does not argue for a wrong option
        if q.id in used:
            continue
        used.add(q.id)
        ex.append(_answer_example(f"{qa_prompt(q, COUNTERFACTUAL_PREFIX)} {r['text'].strip()}", "",
                                  answer_sentence(q, int(r["option"]), fmt), "counterfactual", q.id))
    if not any(e.task == "counterfactual" for e in ex):
        raise ValueError("CF has no counterfactual examples: 03_counterfactuals/cf_rationales.jsonl has no usable row "
                         "for the training questions; rerun step 03 (03_counterfactuals)")
    return ex


def _causal_examples(causal_rows: list[dict] | None, rationale_filter: str = "parsed") -> list[Example]:
    """CAUSAL: claim; evidence; label → the teacher's causal explanation (train rows without failure).

    With `rationale_filter == "any"` (training.rationale_filter) a failed row's raw completion is kept too, as for
    rationales.
    """
    if causal_rows is None:
        raise ValueError("CAUSAL needs the causal explanations of step 02 (02_teacher/causal.jsonl)")
    out = []
    for r in causal_rows:
        text = (r.get("explanation") or "").strip() if not r.get("failure") else ""
        if not text and rationale_filter == "any":
            text = (r.get("raw") or "").strip()
        if r.get("split") == "train" and text:
            out.append(Example(causal_student_prompt(r), " " + text, "explanation", str(r["id"])))
    return out


def condition_examples(condition: str, questions: list[MCQuestion], rationales: dict[str, str],
                       views: list[dict] | None = None, strategy: dict[str, str] | None = None,
                       counterfactuals: list[MCQuestion] | None = None, cf_rationales: list[dict] | None = None,
                       causal_rows: list[dict] | None = None, rationale_filter: str = "parsed",
                       answer_format: str = "letter") -> list[Example]:
    """Training examples of one condition from the questions and the teacher's artifacts.

    `rationale_filter` (training.rationale_filter) decides which of `causal_rows` are kept; `rationales` come
    filtered already (`read_rationales`, `revised_rationales`). `answer_format` (training.answer_format) says whether
    the closing answer sentence names the option's letter and text or its text alone.
    """
    fmt = answer_format
    ex: list[Example] = []
    if condition in UNTRAINED:
        raise ValueError(f"{condition} is the untrained student: it has no training examples")
    if condition == "FT":
        ex = [_answer_example(qa_prompt(q), "", answer_sentence(q, q.answer, fmt), "answer", q.id) for q in questions]
    elif condition == "FT-CoT":
        ex = [_answer_example(qa_prompt(q), rationales[q.id], answer_sentence(q, q.answer, fmt), "cot", q.id)
              for q in questions if rationales.get(q.id)]
    elif condition == "MT":
        ex = _mt_examples(questions, rationales, fmt)
    elif condition == "CF":
        ex = _cf_examples(questions, rationales, cf_rationales, fmt)
    elif condition == "MT+CF":
        ex = _mt_examples(questions, rationales, fmt) + _cf_examples(questions, rationales, cf_rationales, fmt)
    elif condition == "CAUSAL":
        ex = _causal_examples(causal_rows, rationale_filter)
    elif condition == "CFD":
        if views is None or strategy is None:
            raise ValueError("CFD needs the multi-view artifacts of step 03 (03_counterfactuals/multiview.jsonl)")
        by_id = {q.id: q for q in questions + (counterfactuals or [])}
        for v in views:
            q = by_id.get(v["id"])
            if q is None:
                continue
            token = strategy["positive"] if v["strategy"] == "positive" else strategy["negative"]
            ex.append(_answer_example(qa_prompt(q, token), v["text"], answer_sentence(q, q.answer, fmt), "cfd", q.id))
    else:
        raise ValueError(f"unknown condition {condition!r}: not one of lib.conditions.CONDITIONS")
    if not ex:
        step = {"CAUSAL": "02_teacher (02_teacher/causal.jsonl)", "CFD": "03_counterfactuals (multiview.jsonl)"}.get(
            condition, "02_teacher (02_teacher/rationales.jsonl; check training.rationale_filter)")
        raise ValueError(f"condition {condition} has no training examples: step {step} produced too few usable rows")
    return ex


def load_condition_examples(ctx: Any) -> dict[tuple[str, str], list[Example]]:
    """The examples of each trained (condition, rationale source) of the grid, built from the artifacts of steps 01-03.

    A `revised` run keeps only the training questions that have a revised explanation in 02_teacher/revisions.jsonl
    (every example of a question left out goes, CF's counterfactual ones too); how many are left out is logged.
    """
    params = ctx.params
    tp = params.training
    keys = [(c, s) for c in tp.conditions if c not in UNTRAINED for s in condition_sources(c, tp.rationale_sources)]
    conds = {c for c, _ in keys}
    mc = bool(conds & set(MC_CONDITIONS))
    train = read_questions(ctx.artifact("01_data", "train.jsonl")) if mc else []
    rationales = {"unrevised": read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "train",
                                               tp.rationale_filter) if mc else {}}
    if any(s == "revised" for _, s in keys):
        rationales["revised"] = revised_rationales(read_jsonl(ctx.artifact("02_teacher", "revisions.jsonl")),
                                                   tp.rationale_filter)
    needs_views = "CFD" in conds
    views = read_jsonl(ctx.artifact("03_counterfactuals", "multiview.jsonl")) if needs_views else None
    cfs = read_questions(ctx.artifact("03_counterfactuals", "cf_questions.jsonl")) if needs_views else None
    cf_rows = read_jsonl(ctx.artifact("03_counterfactuals", "cf_rationales.jsonl")) if conds & {"CF", "MT+CF"} else None
    causal = read_jsonl(ctx.artifact("02_teacher", "causal.jsonl")) if "CAUSAL" in conds else None
    strategy = params.counterfactual.strategy_tokens.model_dump()
    out = {}
    for c, s in keys:
        questions = revised_questions(c, train, rationales["revised"]) if s == "revised" else train
        out[(c, s)] = condition_examples(c, questions, rationales[s], views, strategy, cfs, cf_rows, causal,
                                         tp.rationale_filter, tp.answer_format)
    return out


def revised_questions(condition: str, train: list[MCQuestion], revised: dict[str, str]) -> list[MCQuestion]:
    """The training questions of a `revised` run: those with a revised explanation; the count left out is logged."""
    kept = [q for q in train if q.id in revised]
    if not kept:
        raise ValueError(f"{condition} (revised): no training question has a usable revised explanation in "
                         "02_teacher/revisions.jsonl; raise teacher.revise_max_questions, set training.rationale_filter: "
                         "any to keep failed revisions as written, or drop 'revised' from training.rationale_sources")
    log.info("%s (revised): %d of %d training questions have a revised explanation; the other %d are left out of "
             "this run", condition, len(kept), len(train), len(train) - len(kept))
    return kept


def example_counts(examples: dict[tuple[str, str], list[Example]]) -> Any:
    """Examples and distinct questions (or claim-evidence pairs) per condition and rationale source, for display."""
    import pandas as pd

    rows = [{"condition": c, "rationale_source": s, "n_examples": len(exs), "n_questions": len({e.qid for e in exs})}
            for (c, s), exs in examples.items()]
    return pd.DataFrame(rows, columns=["condition", "rationale_source", "n_examples", "n_questions"])


def examples_frame(examples: dict[tuple[str, str], list[Example]]) -> Any:
    """One example per condition, rationale source and task, for display."""
    import pandas as pd

    cols = ["condition", "rationale_source", *(f.name for f in dataclasses.fields(Example))]
    rows = [{"condition": c, "rationale_source": s, **dataclasses.asdict(e)} for (c, s), exs in examples.items()
            for e in exs]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.groupby(["condition", "rationale_source", "task"], sort=False).head(1).reset_index(drop=True)


def tokenize_examples(examples: list[Example], tokenizer: Any, max_length: int, tasks: list[str],
                      seq2seq: bool = False) -> list[dict]:
    """Token ids with labels = -100 on prompt tokens, fitted to max_length, plus each example's task index and
    question id (`qid`: lib.batching keeps a question's examples in one batch).

    An example longer than `max_length` is cut in this order of sacrifice, and its row has `truncated: True`:
    1. the end of the rationale (the target's tokens just before its closing answer sentence);
    2. then, if the prompt with the closing sentence and EOS alone is too long, the start of the prompt (after
       BOS), so that its end (`A:`, the answer options) stays next to the target;
    never the closing answer sentence and EOS. A target without a closing sentence (an MT rationale, a CAUSAL
    explanation) keeps its EOS and loses the end of its text. An example whose closing sentence and EOS do not
    fit at all is skipped: `len(result) < len(examples)`.

    For an encoder-decoder (`seq2seq`) the prompt is the encoder's input (tokenised as at generation time) and the
    labels are the target tokens alone, each fitted to max_length on its own in the same way: the encoder input
    keeps its special tokens and the end of the prompt, the labels keep the closing sentence and EOS.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = prefix_ids(tokenizer)  # Gemma's <bos>, as generation and scoring start too (lib.models.input_ids)
    rows = []
    for e in examples:
        body, closing = _split_target(tokenizer, e.target, e.closing)
        if seq2seq:
            head, prompt, tail = special_ends(tokenizer, e.prompt)
            kept_prompt = _keep_end(prompt, max_length - len(head) - len(tail))
            kept_body = body[:max(max_length - len(closing) - len(eos), 0)]
        else:
            head, prompt, tail = bos, tokenizer(e.prompt, add_special_tokens=False)["input_ids"], []
            kept_prompt = _keep_end(prompt, max_length - len(bos) - len(closing) - len(eos))
            kept_body = body[:max(max_length - len(bos) - len(kept_prompt or []) - len(closing) - len(eos), 0)]
        if kept_prompt is None or len(closing) + len(eos) > max_length or (body and not kept_body and not closing):
            continue  # not even the answer sentence and EOS fit after one prompt token, or only EOS would be left
        target = kept_body + closing + eos
        enc = head + kept_prompt + tail
        rows.append({"input_ids": enc if seq2seq else enc + target,
                     "labels": target if seq2seq else [-100] * len(enc) + target,
                     "task_id": tasks.index(e.task), "qid": e.qid,
                     "truncated": len(kept_prompt) < len(prompt) or len(kept_body) < len(body)})
    return rows


def _split_target(tokenizer: Any, target: str, closing: str) -> tuple[list[int], list[int]]:
    """A target's token ids as (body, closing): the tokens that cover its closing sentence and the space before it.

    With a fast tokenizer the split follows the character offsets of the tokenisation of the whole target (the ids
    are those of the whole target); a token that straddles the boundary counts as the closing sentence's.
    """
    if not closing or not target.endswith(closing):
        return tokenizer(target, add_special_tokens=False)["input_ids"], []
    start = len(target[:len(target) - len(closing)].rstrip())
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
        n_body = sum(1 for _, end in enc["offset_mapping"] if end <= start)
        return enc["input_ids"][:n_body], enc["input_ids"][n_body:]
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    n_closing = len(tokenizer(target[start:], add_special_tokens=False)["input_ids"])
    return ids[:len(ids) - n_closing], ids[len(ids) - n_closing:]


def _keep_end(ids: list[int], room: int) -> list[int] | None:
    """The last `room` ids (all of them when they fit); None when not even one fits."""
    if room < 1 and ids:
        return None
    return ids[len(ids) - room:] if len(ids) > room else ids


def collate(batch: list[dict], pad_id: int) -> dict[str, Any]:
    """Pad a batch to its own longest example (right padding), never to a fixed length; labels to their own longest."""
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    label_width = max(len(b["labels"]) for b in batch)  # differs from width only for encoder-decoders
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), label_width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "task_ids": torch.tensor([b["task_id"] for b in batch], dtype=torch.long)}
