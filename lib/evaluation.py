"""Evaluate trained students: accuracy in and out of distribution, explanation quality and faithfulness.

Per item, the student writes its rationale and answer with the prompt of the condition it was
trained on (MT answers from its `[answer]` task and explains from its `[rationale]` task; CFD is
asked with the `[Direct election]` strategy token). The answer is extracted from the text;
unparseable outputs count as wrong and are flagged. Beside that generative accuracy:

- log-likelihood accuracy: the option whose answer sentence ("So the answer is (b) text.") the
  student finds most likely right after the prompt (no rationale);
- CEC, BLEU, ROUGE-L and BERTScore of the student's rationale against the teacher's rationale
  for the same question, where the teacher wrote one (in-distribution test questions);
- faithfulness (after SCOTT): the student's rationale is replaced by a perturbed one (another
  item's rationale, or its own sentences shuffled) or by a counterfactual rationale for a wrong
  option (03_counterfactuals/cf_rationales.jsonl, when present), fed back as a forced prefix after
  the prompt; the answer is then read by log-likelihood and compared with the answer read the same
  way after the student's own rationale. The answer-change rate is the faithfulness measure.

Every trained student is evaluated on every test set of step 01, so each condition gets a
train-set x test-set accuracy matrix (`ood_matrix`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

from lib.data import MCQuestion
from lib.metrics import cec_batch, extract_answer, rationale_length, split_sentences
from lib.params import StudyParams
from lib.prompts import answer_sentence
from lib.teacher import split_rationale
from lib.training import eval_prompts

log = logging.getLogger(__name__)

FAITHFULNESS_COLUMNS = ("faithfulness_perturbed", "faithfulness_counterfactual", "faithfulness_cf_follows")


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
    train_set: str = ""  # the data set the student was trained on (rows of the OOD matrix)
    bleu: float = math.nan  # sentence BLEU (sacrebleu, 0-100) against the teacher's rationale
    rouge_l: float = math.nan  # ROUGE-L F-measure (0-1) against the teacher's rationale
    bertscore: float = math.nan  # BERTScore F1 against the teacher's rationale
    loglik_pred: int | None = None  # option whose answer sentence is most likely right after the prompt
    loglik_correct: int | None = None  # 1 when loglik_pred == gold
    faithfulness_perturbed: int | None = None  # 1 when a perturbed rationale changed the answer (None = not measured)
    faithfulness_counterfactual: int | None = None  # 1 when a counterfactual rationale changed the answer
    faithfulness_cf_follows: int | None = None  # 1 when the answer became the counterfactual rationale's option



@dataclasses.dataclass
class ExplanationResult:
    """A CAUSAL student's explanation of one held-out claim-evidence pair (a row of 05_evaluation/causal_items.jsonl)."""

    run: str
    condition: str
    student: str
    seed: int
    item_id: str  # ClaimEvidence.id of the pair (02_teacher/causal.jsonl, split test)
    claim_label: str
    rationale: str  # the student's explanation
    rationale_len: int  # words
    reference: str  # the teacher's explanation ("" when the teacher failed on this pair)
    seconds: float  # generation time per pair
    cec: float = math.nan
    cec_fc: float = math.nan
    cec_bf: float = math.nan
    bleu: float = math.nan
    rouge_l: float = math.nan
    bertscore: float = math.nan

def load_student(base_spec: str, adapter_dir: Path, device: str) -> tuple[Any, Any]:
    """A trained student and its tokenizer: the base model with the run's LoRA adapter merged in, or its full weights."""
    from peft import PeftModel

    from lib.models import load_student_lm, load_tokenizer

    tokenizer = load_tokenizer(str(adapter_dir))
    if (adapter_dir / "adapter_config.json").exists():
        base = load_student_lm(base_spec, device)
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # CFD added its strategy tokens in training
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter holds their trained rows
        # merged into the base weights: generation then costs what the base model costs (no adapter or
        # trainable-token wrappers rebuilding weights at every step)
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(), tokenizer
    if (adapter_dir / "config.json").exists():  # training.finetune: full saves the whole model
        return load_student_lm(str(adapter_dir), device), tokenizer
    raise FileNotFoundError(f"{adapter_dir} holds neither a LoRA adapter nor model weights; rerun step 04_training "
                            f"(python -m lib.study PARAMS --steps 04 --force)")


def is_seq2seq(model: Any) -> bool:
    """True for an encoder-decoder student (T5, BART)."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def clean_rationale(text: str) -> str:
    """The reasoning part of a student's output: cut at a hallucinated next question, without the answer sentence."""
    return split_rationale(text.split("\nQ:", 1)[0])


# ---------------------------------------------------------------- log-likelihood scoring


def continuation_logliks(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation), tokenised as in training.

    The LM head runs only at the continuation's positions (Gemma's 262k-token vocabulary would make
    full logits the dominant cost on a CPU), through `lib.head_loss.target_nll`.
    """
    import torch

    from lib.head_loss import target_nll

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", True) and tokenizer.bos_token_id is not None else []
    encoded = [(bos + tokenizer(c, add_special_tokens=False)["input_ids"], tokenizer(t, add_special_tokens=False)["input_ids"])
               for c, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    out = [0.0] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cap = getattr(base.config, "final_logit_softcapping", None)
    model.eval()
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        target = torch.zeros((len(idx), width), dtype=torch.bool)  # positions whose NEXT token is a continuation token
        for row, i in enumerate(idx):
            ctx_ids, cont = encoded[i]
            seq = ctx_ids + cont
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            target[row, len(ctx_ids) - 1:len(seq) - 1] = True
        with torch.no_grad():
            hidden = base.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            next_ids = torch.roll(ids, -1, dims=1)[target].to(device)
            token_lp = -target_nll(hidden[target.to(device)], base.get_output_embeddings(), next_ids, cap).cpu()
        counts = target.sum(dim=1).tolist()
        for row, (i, piece) in enumerate(zip(idx, torch.split(token_lp, counts))):
            out[i] = float(piece.sum())
    return out


def loglik_choices(model: Any, tokenizer: Any, contexts: Sequence[str], questions: Sequence[MCQuestion],
                   batch_size: int = 8) -> list[int]:
    """For each (context, question): the option whose answer sentence is most likely after the context."""
    pairs, spans = [], []
    for context, q in zip(contexts, questions):
        spans.append((len(pairs), len(q.choices)))
        pairs.extend((context, " " + answer_sentence(q, k)) for k in range(len(q.choices)))
    scores = continuation_logliks(model, tokenizer, pairs, batch_size)
    return [max(range(n), key=lambda k: scores[start + k]) for start, n in spans]


# ---------------------------------------------------------------- faithfulness


def perturbed_rationales(rationales: list[str], how: str, seed: int) -> list[str]:
    """A perturbed rationale per item: the next item's rationale (`other_item`) or its own sentences shuffled.

    `shuffle` shuffles words instead when a rationale has a single sentence; an item without
    another non-empty rationale to borrow gets "" (not measured).
    """
    rng = random.Random(seed)
    if how == "other_item":
        filled = [i for i, r in enumerate(rationales) if r]
        out = [""] * len(rationales)
        for k, i in enumerate(filled):
            if len(filled) > 1:
                out[i] = rationales[filled[(k + 1) % len(filled)]]
        return out
    if how != "shuffle":
        raise ValueError(f"unknown perturbation {how!r}; use other_item or shuffle (params evaluation.perturbation)")
    out = []
    for r in rationales:
        parts = split_sentences(r)
        sep = " "
        if len(parts) < 2:
            parts = r.split()
        shuffled = parts[:]
        for _ in range(5):  # a shuffle that leaves the order unchanged perturbs nothing
            rng.shuffle(shuffled)
            if shuffled != parts:
                break
        out.append(sep.join(shuffled) if len(parts) > 1 and shuffled != parts else "")
    return out


def faithfulness(model: Any, tokenizer: Any, prompts: list[str], questions: list[MCQuestion], own: list[str],
                 perturbed: list[str], counterfactual: list[tuple[int, str] | None],
                 batch_size: int = 8) -> list[dict[str, int | None]]:
    """Per item: whether the answer changed with a perturbed / counterfactual rationale as a forced prefix.

    Each answer is read by log-likelihood after `prompt + " " + rationale`; the baseline is the answer
    read the same way after the student's own rationale. Items without an own rationale are not measured.
    """
    jobs: list[tuple[int, str, str]] = []  # (item, kind, rationale)
    for i, r in enumerate(own):
        if not r:
            continue
        jobs.append((i, "own", r))
        if perturbed[i]:
            jobs.append((i, "perturbed", perturbed[i]))
        if counterfactual[i] is not None:
            jobs.append((i, "cf", counterfactual[i][1]))
    picks = loglik_choices(model, tokenizer, [f"{prompts[i]} {r}" for i, _, r in jobs],
                           [questions[i] for i, _, _ in jobs], batch_size)
    got: dict[tuple[int, str], int] = {(i, kind): p for (i, kind, _), p in zip(jobs, picks)}
    results = []
    for i in range(len(own)):
        base = got.get((i, "own"))
        pert, cf = got.get((i, "perturbed")), got.get((i, "cf"))
        results.append({
            "faithfulness_perturbed": None if base is None or pert is None else int(pert != base),
            "faithfulness_counterfactual": None if base is None or cf is None else int(cf != base),
            "faithfulness_cf_follows": None if base is None or cf is None else int(cf == counterfactual[i][0]),
        })
    return results


def read_cf_rationales(path: Path | None) -> dict[str, tuple[int, str]]:
    """Question id -> (option index, counterfactual rationale) from 03_counterfactuals/cf_rationales.jsonl (first per id)."""
    from lib.runs import read_jsonl

    if path is None or not Path(path).exists():
        return {}
    out: dict[str, tuple[int, str]] = {}
    for lineno, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("option"), int) or not str(row.get("text", "")).strip():
            continue  # a failed counterfactual rationale has no option or text; nothing to feed back
        out.setdefault(str(row["id"]), (row["option"], str(row["text"]).strip()))
    return out


# ---------------------------------------------------------------- one run


def evaluate_run(run_info: dict, adapter_dir: Path, test_sets: dict[str, list[MCQuestion]], params: StudyParams,
                 device: str, cf_rationales: dict[str, tuple[int, str]] | None = None) -> list[ItemResult]:
    """Generate and score one trained student on every test set (reference-based metrics come later).

    Faithfulness is measured on the first (in-distribution) test set only, where counterfactual
    rationales can exist; log-likelihood accuracy on every set. Both score every option of an item with
    a forward pass each, so only the first `evaluation.score_max_items` items of a set get them (null = all).
    """
    from lib.models import generate_texts

    model, tokenizer = load_student(run_info["student"], adapter_dir, device)
    ev = params.evaluation
    train_set = params.data.train.name
    cf_rationales = cf_rationales or {}
    rows = []
    for t, (name, qs) in enumerate(test_sets.items()):
        prompts = [eval_prompts(run_info["condition"], q, params.counterfactual.strategy_tokens.positive) for q in qs]
        roles = sorted({r for p in prompts for r in p})
        t0 = time.perf_counter()
        outs = {role: generate_texts(model, tokenizer, [p[role] for p in prompts], ev.max_new_tokens,
                                     batch_size=ev.batch_size, desc=f"{run_info['run']} on {name} ({role})")
                for role in roles}
        per_item = (time.perf_counter() - t0) / max(1, len(qs))
        answer_prompts = [p["answer"] for p in prompts]
        k = len(qs) if ev.score_max_items is None else min(len(qs), ev.score_max_items)  # scoring costs a pass per option
        if is_seq2seq(model):
            k = 0  # option scoring and forced rationales are defined for causal LMs only
        loglik = (loglik_choices(model, tokenizer, answer_prompts[:k], qs[:k], ev.batch_size) if ev.loglik
                  else []) + [None] * (len(qs) - (k if ev.loglik else 0))
        run_rows = []
        for i, q in enumerate(qs):
            answer_text = outs["answer"][i][0].text
            rationale_text = outs["rationale"][i][0].text if "rationale" in outs else answer_text
            pred = extract_answer(answer_text, q.choices)
            rationale = clean_rationale(rationale_text)
            run_rows.append(ItemResult(
                run=run_info["run"], condition=run_info["condition"], student=run_info["student"],
                seed=run_info["seed"], test_set=name, item_id=q.id, prediction=pred, correct=int(pred == q.answer),
                unparseable=int(pred is None), rationale=rationale, rationale_len=rationale_length(rationale),
                output=answer_text if "rationale" not in outs else f"{rationale_text}\n---\n{answer_text}",
                cec=math.nan, cec_fc=math.nan, cec_bf=math.nan, seconds=round(per_item, 3), train_set=train_set,
                loglik_pred=loglik[i], loglik_correct=None if loglik[i] is None else int(loglik[i] == q.answer),
            ))
        if ev.faithfulness and t == 0 and k:
            own = [r.rationale for r in run_rows]
            found = [cf_rationales.get(q.id) for q in qs]
            found = [c if c is not None and 0 <= c[0] < len(q.choices) else None for c, q in zip(found, qs)]
            perturbed = perturbed_rationales(own, ev.perturbation, params.run.seed)
            faith = faithfulness(model, tokenizer, answer_prompts[:k], qs[:k], own[:k], perturbed[:k], found[:k],
                                 ev.batch_size)
            for r, f in zip(run_rows, faith):
                for column, value in f.items():
                    setattr(r, column, value)
        rows.extend(run_rows)
    return rows


# ---------------------------------------------------------------- reference-based metrics


def add_cec(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str], embed: Any) -> None:
    """Fill each row's CEC against the teacher rationale of its item, where both texts exist."""
    scored = [r for r in rows if r.rationale and references.get(r.item_id)]
    for r, s in zip(scored, cec_batch([(r.rationale, references[r.item_id]) for r in scored], embed)):
        r.cec, r.cec_fc, r.cec_bf = s.cec, s.fc, s.bf


def add_text_metrics(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str], bertscore_model: str,
                     bertscore_layers: int | None = None, device: str = "cpu") -> None:
    """Fill BLEU, ROUGE-L and BERTScore against the teacher rationale of each item, where both texts exist."""
    from lib.metrics import bertscore_scores, bleu_scores, rouge_l_scores
    from lib.models import resolve_embedder

    scored = [r for r in rows if r.rationale and references.get(r.item_id)]
    if not scored:
        log.info("text metrics: no item has both a rationale and a teacher reference")
        return
    pairs = [(r.rationale, references[r.item_id]) for r in scored]
    bert = bertscore_scores(pairs, resolve_embedder(bertscore_model), bertscore_layers, device=device)
    for r, b, rl, bs in zip(scored, bleu_scores(pairs), rouge_l_scores(pairs), bert):
        r.bleu, r.rouge_l, r.bertscore = b, rl, bs



def score_against_references(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str],
                             ev: Any, device: str) -> None:
    """Fill CEC (and, with evaluation.text_metrics, BLEU, ROUGE-L, BERTScore) of each row against its reference."""
    from lib.models import encode_sentences, load_embedder

    embedder = load_embedder(ev.embedder, device)
    add_cec(rows, references, lambda s: encode_sentences(embedder, s, ev.embed_batch_size, desc="CEC: embedding sentences"))
    if ev.text_metrics:
        add_text_metrics(rows, references, ev.bertscore_model, ev.bertscore_layers, device)

# ---------------------------------------------------------------- the grid


def evaluate_grid(ctx: Any) -> list[ItemResult]:
    """Evaluate every trained run of step 04 on every test set of step 01, with CEC and the text metrics."""
    from lib.data import read_test_sets
    from lib.models import pick_device
    from lib.runs import read_jsonl
    from lib.teacher import read_rationales

    ev = ctx.params.evaluation
    device = pick_device(ctx.params.run.device)
    tests = read_test_sets(ctx.run_dir / "01_data")
    runs = read_jsonl(ctx.artifact("04_training", "runs.jsonl"))
    cf_path = ctx.run_dir / "03_counterfactuals" / "cf_rationales.jsonl"
    cf = read_cf_rationales(cf_path) if ev.faithfulness else {}
    if ev.faithfulness and not cf_path.exists():
        log.info("faithfulness: %s is absent, so only the perturbed rationale is fed back (no counterfactual one)",
                 cf_path)
    rows: list[ItemResult] = []
    for info in (r for r in runs if r.get("task", "mc") == "mc"):  # CAUSAL runs: evaluate_causal_grid
        rows.extend(evaluate_run(info, ctx.artifact("04_training", info["run"]) / "adapter", tests, ctx.params,
                                 device, cf))
    references = read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "test",
                                 ctx.params.training.rationale_filter)
    score_against_references(rows, references, ev, device)
    return rows



def evaluate_causal_run(run_info: dict, adapter_dir: Path, pairs: list[dict], params: StudyParams,
                        device: str) -> list[ExplanationResult]:
    """Let one CAUSAL student explain every held-out claim-evidence pair (metrics are filled later)."""
    from lib.models import generate_texts
    from lib.training import causal_prompt

    model, tokenizer = load_student(run_info["student"], adapter_dir, device)
    ev = params.evaluation
    t0 = time.perf_counter()
    outs = generate_texts(model, tokenizer, [causal_prompt(p) for p in pairs], ev.max_new_tokens,
                          batch_size=ev.batch_size, desc=f"{run_info['run']} on claims")
    per_item = (time.perf_counter() - t0) / max(1, len(pairs))
    rows = []
    for p, out in zip(pairs, outs):
        text = out[0].text.split("\nClaim:", 1)[0].strip()  # cut a hallucinated next pair
        rows.append(ExplanationResult(
            run=run_info["run"], condition=run_info["condition"], student=run_info["student"], seed=run_info["seed"],
            item_id=str(p["id"]), claim_label=str(p["claim_label"]), rationale=text, rationale_len=rationale_length(text),
            reference=str(p.get("explanation") or "") if p.get("failure") is None else "", seconds=round(per_item, 3)))
    return rows


def evaluate_causal_grid(ctx: Any) -> list[ExplanationResult]:
    """Every CAUSAL run of step 04 explains the test pairs of 02_teacher/causal.jsonl, scored against the teacher."""
    from lib.models import pick_device
    from lib.runs import read_jsonl

    ev = ctx.params.evaluation
    causal_runs = [r for r in read_jsonl(ctx.artifact("04_training", "runs.jsonl")) if r.get("task") == "causal"]
    if not causal_runs:
        log.info("no CAUSAL run in training.conditions: no claim-evidence pairs to explain")
        return []
    device = pick_device(ctx.params.run.device)
    pairs = [r for r in read_jsonl(ctx.artifact("02_teacher", "causal.jsonl")) if r["split"] == "test"]
    rows: list[ExplanationResult] = []
    for info in causal_runs:
        rows.extend(evaluate_causal_run(info, ctx.artifact("04_training", info["run"]) / "adapter", pairs,
                                        ctx.params, device))
    references = {r.item_id: r.reference for r in rows if r.reference}
    score_against_references(rows, references, ev, device)
    return rows


def causal_summary(rows: Sequence[ExplanationResult]) -> Any:
    """Per CAUSAL run: pairs explained and scored, mean explanation length and the metrics against the teacher."""
    import pandas as pd

    from lib.stats import causal_table

    return causal_table(pd.DataFrame([dataclasses.asdict(r) for r in rows],
                                     columns=[f.name for f in dataclasses.fields(ExplanationResult)]))


def judge_grid(ctx: Any, rows: Sequence[ItemResult]) -> list[Any]:
    """LLM-judge ratings (lib.ratings.Rating) of up to evaluation.judge_max_items explanations per run; [] when off."""
    from lib.data import read_test_sets
    from lib.ratings import judge_ratings
    from lib.teacher import make_teacher

    ev = ctx.params.evaluation
    if not ev.judge:
        log.info("judge: off (evaluation.judge: false)")
        return []
    tests = read_test_sets(ctx.run_dir / "01_data")
    first = next(iter(tests))
    questions = {q.id: q for q in tests[first]}
    in_dist = [r for r in rows if r.test_set == first]
    teacher = make_teacher(ctx.params.teacher, ctx.params.run.device, run_dir=ctx.run_dir)  # step 02's cache
    try:
        return judge_ratings(in_dist, questions, teacher, ev.judge_max_items, ev.judge_max_new_tokens)
    finally:
        teacher.close()


def export_human_sheet(ctx: Any, rows: Sequence[ItemResult]) -> dict[str, Path]:
    """The blinded human rating sheet (CSV, HTML form, key) of in-distribution explanations, in the step folder."""
    from lib.data import read_test_sets
    from lib.ratings import export_sheet

    tests = read_test_sets(ctx.run_dir / "01_data")
    first = next(iter(tests))
    return export_sheet([r for r in rows if r.test_set == first], {q.id: q for q in tests[first]}, ctx.out,
                        ctx.params.evaluation.human_sheet_items, ctx.params.run.seed)


# ---------------------------------------------------------------- tables


def items_frame(rows: Sequence[ItemResult]) -> Any:
    """Per-item results as a table (the input of the statistics step)."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(ItemResult)])


def summary_table(rows: Sequence[ItemResult]) -> Any:
    """Per run and test set: n, generative and log-likelihood accuracy, unparseable share, mean metrics and faithfulness."""
    df = items_frame(rows)
    for c in ("loglik_correct", *FAITHFULNESS_COLUMNS):
        df[c] = df[c].astype(float)
    return (df.groupby(["condition", "student", "seed", "train_set", "test_set"], as_index=False, dropna=False)
              .agg(n=("correct", "size"), accuracy=("correct", "mean"), loglik_accuracy=("loglik_correct", "mean"),
                   unparseable=("unparseable", "mean"), cec=("cec", "mean"), cec_fc=("cec_fc", "mean"),
                   cec_bf=("cec_bf", "mean"), bleu=("bleu", "mean"), rouge_l=("rouge_l", "mean"),
                   bertscore=("bertscore", "mean"), answer_change_perturbed=("faithfulness_perturbed", "mean"),
                   answer_change_counterfactual=("faithfulness_counterfactual", "mean"),
                   rationale_words=("rationale_len", "mean"), seconds_per_item=("seconds", "mean")))


def ood_matrix(rows: Sequence[ItemResult], value: str = "correct") -> Any:
    """Accuracy (%) per condition, student and seed: one row per training set, one column per test set."""
    df = items_frame(rows)
    df[value] = df[value].astype(float) * 100
    table = df.pivot_table(index=["condition", "student", "seed", "train_set"], columns="test_set", values=value,
                           aggfunc="mean", sort=False)
    order = list(dict.fromkeys(df["test_set"]))  # in-distribution first, as step 01 wrote them
    table = table[[c for c in order if c in table.columns]].round(1)
    table.columns.name = f"{value} (%) on test set"
    return table


def faithfulness_table(rows: Sequence[ItemResult]) -> Any:
    """Answer-change rate per run when the rationale is perturbed or counterfactual, with the items measured."""
    df = items_frame(rows)
    out = []
    for run, g in df.groupby("run", sort=False):
        row = {"run": run, "condition": g["condition"].iloc[0]}
        for col, label in (("faithfulness_perturbed", "perturbed"), ("faithfulness_counterfactual", "counterfactual")):
            vals = g[col].dropna().astype(float)
            row[f"n_{label}"] = len(vals)
            row[f"answer_change_{label}"] = float(vals.mean()) if len(vals) else math.nan
        cf = g["faithfulness_cf_follows"].dropna().astype(float)
        row["follows_counterfactual"] = float(cf.mean()) if len(cf) else math.nan
        out.append(row)
    import pandas as pd

    return pd.DataFrame(out)


def metric_correlations(rows: Sequence[ItemResult], ratings: Sequence[Any]) -> Any:
    """Spearman correlation of CEC (and its parts), BLEU, ROUGE-L and BERTScore with each rating dimension."""
    from lib.metrics import metric_rating_correlations
    from lib.ratings import ratings_frame

    return metric_rating_correlations(items_frame(rows), ratings_frame(ratings))


def write_summary(out: Path, rows: Sequence[ItemResult], ratings: Sequence[Any]) -> Path:
    """summary.json: accuracy per run and test set, the OOD matrices, faithfulness and the judge's failures."""
    from lib.runs import write_json

    matrix = ood_matrix(rows)
    summary = {
        "runs": sorted({r.run for r in rows}),
        "test_sets": list(dict.fromkeys(r.test_set for r in rows)),
        "ood_matrix": [{**dict(zip(matrix.index.names, idx)), **{k: _num(v) for k, v in vals.items()}}
                       for idx, vals in zip(matrix.index, matrix.to_dict("records"))],
        "faithfulness": [{k: _num(v) for k, v in r.items()} for r in faithfulness_table(rows).to_dict("records")],
        "ratings": {"n": len(ratings), "failed": sum(getattr(r, "failure", None) is not None for r in ratings)},
    }
    return write_json(out / "summary.json", summary)


def _num(v: Any) -> Any:
    """A JSON-safe scalar: NaN becomes None, numpy numbers become Python numbers."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v
