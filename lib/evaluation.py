"""Evaluate trained students: accuracy in and out of distribution, explanation quality and faithfulness.

Per item, the student writes its rationale and answer with the prompt of the condition it was
trained on (MT answers from its `[answer]` task and explains from its `[rationale]` task; CFD is
asked with the `[Direct election]` strategy token). The answer is read only from the answer sentence the condition
was trained to write (lib.metrics.extract_answer); any other output is unparseable, counts as wrong and is flagged
(the parse rate is reported). The lenient reader's answer is kept beside it, labelled. Beside that generative accuracy:

- log-likelihood accuracy in the condition's own prompt (lib.scoring, scored as lm-evaluation-harness scores multiple
  choice): `loglik_pred` is the option with the highest summed log-likelihood after the prompt (lm-eval's `acc`),
  `loglik_norm_pred` the highest per character (`acc_norm`);
- the standard readings (lib.standard_readings): every student, BASE first, asked zero-shot in lm-eval's own
  formulations, `cloze_*` (arc_easy's "Question: ...\nAnswer:" and the option's text) and `lettered_*`
  (commonsense_qa's listed options and the letter), so the study's numbers stand beside a model card's;
- CEC, BLEU, ROUGE-L and BERTScore of the student's rationale against the teacher's rationale
  for the same question, where the teacher wrote one (in-distribution test questions);
- faithfulness (lib.scoring, after SCOTT): whether the answer read by log-likelihood changes when the student's
  rationale is replaced by a perturbed one (another item's rationale, or its own sentences shuffled) or by a
  counterfactual rationale for a wrong option (03_counterfactuals/cf_rationales.jsonl, when present).

Generated outputs and option scores are cached (lib.student_cache) under the student's weights hash and how they
are loaded (`finetune`: a QLoRA student keeps the 4-bit base it was trained on), so rerunning step 05 regenerates
only what changed.

Every student is evaluated on every test set of step 01 (the tables of step 05: lib.evaluation_tables). Two
rows frame the conditions: BASE, the untrained student (a runs.jsonl row with `adapter: null`) asked with FT's
prompt, is the floor; TEACHER, the teacher's own answers to the in-distribution test questions
(02_teacher/rationales.jsonl), is the ceiling. Each row keeps the rationale source (unrevised or critique-revised
teacher rationales) its student was trained on.

Longer than 500 lines: it is the one place that turns a trained run into its per-item rows, and each part (loading a
student as it was trained, its cached outputs, its readings, the reference metrics) is short but reads the others.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lib.conditions import eval_prompts, TEACHER
from lib.files import read_json, write_jsonl
from lib.metrics import cec_batch, extract_answer, extract_answer_lenient, rationale_length
from lib.models import ADDED_TOKENS
from lib.params import StudyParams
from lib.precision import autocast
from lib.questions import MCQuestion, NEXT_QUESTION
from lib.response_cache import ResponseCache
from lib.scoring import continuation_logliks, faithfulness, loglik_choices, OptionPick, perturbed_rationales, Scorer
from lib.standard_readings import reading_columns, standard_picks, StandardPicks
from lib.student_cache import (
    cached_scorer,
    discard_student_cache,
    generate_cached,
    open_cache,
    student_cache_path,
    student_weights_hash,
)
from lib.teacher import split_rationale

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
    cec: float  # CEC against the teacher's rationale (0 when the student wrote none; NaN when there is no reference)
    cec_fc: float
    cec_bf: float
    seconds: float  # generation time per item (batch time / items generated); NaN when the output came from the cache
    train_set: str = ""  # the data set the student was trained on (rows of the OOD matrix; "" for BASE and TEACHER)
    rationale_source: str = "unrevised"  # the teacher rationales it was trained on: "unrevised" or "revised"
    bleu: float = math.nan  # sentence BLEU (sacrebleu, 0-100) against the teacher's rationale (0 without a rationale)
    rouge_l: float = math.nan  # ROUGE-L F-measure (0-1) against the teacher's rationale
    bertscore: float = math.nan  # BERTScore F1 against the teacher's rationale
    gold: int | None = None  # the correct option's index
    lenient_prediction: int | None = None  # the lenient reader's option (lib.metrics.extract_answer_lenient; labelled)
    lenient_correct: int | None = None  # 1 when lenient_prediction == gold
    loglik_scoring: str = ""  # evaluation.loglik_scoring that made the loglik picks ("" = not scored)
    loglik_pred: int | None = None  # option with the highest summed log-likelihood after the prompt (lm-eval acc)
    loglik_correct: int | None = None  # 1 when loglik_pred == gold
    loglik_norm_pred: int | None = None  # option with the highest log-likelihood per character (lm-eval acc_norm)
    loglik_norm_correct: int | None = None  # 1 when loglik_norm_pred == gold
    # the standard readings (lib.standard_readings): lm-eval's zero-shot cloze (acc, acc_norm) and lettered (acc) picks
    cloze_pred: int | None = None
    cloze_correct: int | None = None
    cloze_norm_pred: int | None = None
    cloze_norm_correct: int | None = None
    lettered_pred: int | None = None
    lettered_correct: int | None = None
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
    seconds: float  # generation time per pair; NaN when the explanation came from the student cache
    cec: float = math.nan
    cec_fc: float = math.nan
    cec_bf: float = math.nan
    bleu: float = math.nan
    rouge_l: float = math.nan
    bertscore: float = math.nan


def items_frame(rows: Sequence[ItemResult]) -> Any:
    """Per-item results as a table (the input of the statistics step)."""
    return _frame(rows, ItemResult)


def explanations_frame(rows: Sequence[ExplanationResult]) -> Any:
    """CAUSAL explanations as a table (the input of `causal_table`)."""
    return _frame(rows, ExplanationResult)


def _frame(rows: Sequence[Any], row_type: type) -> Any:
    """Dataclass rows as a table with one column per field of `row_type`, also when there are no rows."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(row_type)])


def load_student(base_spec: str, adapter_dir: Path | None, device: str, finetune: str) -> tuple[Any, Any]:
    """A student and its tokenizer as it was trained (`finetune`: the run's training.finetune).

    No adapter (BASE): the untrained base model. `lora`: the base with the adapter merged in. `qlora`: the same 4-bit
    NF4 base it was trained on with the adapter applied, not merged (merging into 4-bit weights would round the
    update away). `full`: the saved weights. A QLoRA study's BASE is its 4-bit base.
    """
    from lib.models import load_student_lm, load_tokenizer

    if adapter_dir is None:
        return load_student_lm(base_spec, device, load_in_4bit=finetune == "qlora"), load_tokenizer(base_spec)
    tokenizer = adapter_tokenizer(base_spec, Path(adapter_dir))
    if finetune == "full":
        _require_saved(adapter_dir, "config.json", "model weights")
        return load_student_lm(str(adapter_dir), device), tokenizer
    from peft import PeftModel

    _require_saved(adapter_dir, "adapter_config.json", "LoRA adapter")
    base = load_student_lm(base_spec, device, load_in_4bit=finetune == "qlora")
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # CFD added its strategy tokens in training
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter holds their trained rows
    student = PeftModel.from_pretrained(base, str(adapter_dir))
    if finetune == "qlora":
        return student, tokenizer
    # merged into the base weights: generation then costs what the base model costs (no adapter or
    # trainable-token wrappers rebuilding weights at every step)
    return student.merge_and_unload(), tokenizer


def adapter_tokenizer(base_spec: str, adapter_dir: Path) -> Any:
    """The tokenizer saved with a run; a published adapter (lib.publish) has the base's plus its added tokens."""
    from lib.models import load_tokenizer

    if (adapter_dir / "tokenizer_config.json").exists():
        return load_tokenizer(str(adapter_dir))
    tokenizer = load_tokenizer(base_spec)
    added = adapter_dir / ADDED_TOKENS
    if added.exists():  # in training order, so they get the ids they were trained with
        tokenizer.add_special_tokens({"extra_special_tokens": read_json(added)}, replace_extra_special_tokens=False)
    return tokenizer


def _require_saved(folder: Path, marker: str, what: str) -> None:
    """Raise when a run's saved folder lacks the file that marks its weights (step 04 did not finish it)."""
    if not (folder / marker).exists():
        raise FileNotFoundError(f"{folder} holds no {what} ({marker}); rerun step 04_training "
                                f"(python -m lib.study PARAMS --steps 04 --force)")


def adapter_path(ctx: Any, run_info: dict) -> Path | None:
    """The saved folder of a run of 04_training/runs.jsonl (its `adapter` field), or None for BASE (no training)."""
    return None if run_info["adapter"] is None else ctx.artifact("04_training", run_info["adapter"])


def clean_rationale(text: str) -> str:
    """The reasoning part of a student's output: cut at a hallucinated next question, without the answer sentence."""
    return split_rationale(text.split("\nQ:", 1)[0])


def read_cf_rationales(path: Path | None) -> dict[str, tuple[int, str]]:
    """Question id -> (option index, counterfactual rationale) from 03_counterfactuals/cf_rationales.jsonl (first per id)."""
    from lib.files import read_jsonl

    if path is None or not Path(path).exists():
        return {}
    out: dict[str, tuple[int, str]] = {}
    for row in read_jsonl(path):
        if not isinstance(row.get("option"), int) or not str(row.get("text", "")).strip():
            continue  # a failed counterfactual rationale has no option or text; nothing to feed back
        out.setdefault(str(row["id"]), (row["option"], str(row["text"]).strip()))
    return out


# ---------------------------------------------------------------- one run


def output_code_sha256(kind: str) -> str:
    """sha256 of the code a cached "generation" or "scoring" output depends on (apart: a fix to one keeps the other)."""
    import inspect

    from lib.files import sha256_file, sha256_json

    files = {"generation": ("models.py", "head_loss.py"), "scoring": ("models.py", "head_loss.py", "scoring.py")}[kind]
    return sha256_json({"files": {name: sha256_file(Path(__file__).resolve().parent / name) for name in files},
                        "functions": [inspect.getsource(load_student)]})


@dataclasses.dataclass
class _Student:
    """A trained student as evaluation sees it: loaded on first need, its outputs and scores cached."""

    info: dict  # the run's row of 04_training/runs.jsonl
    load: Callable[[], tuple[Any, Any]]  # (model, tokenizer), loaded once and only on a cache miss
    settings: dict[str, Any]  # what keys its generated outputs besides item and prompt
    score: Scorer  # option log-likelihoods, cached
    scorable: bool  # option scoring and forced rationales are defined for causal LMs only
    train_set: str  # the data set it was trained on; "" when untrained (BASE)


def _prepare_student(run_info: dict, adapter_dir: Path | None, params: StudyParams, device: str,
                     cache: ResponseCache | None) -> _Student:
    """Wrap one run for evaluation: lazy loading, its weights hash and its cached scorer, in run.precision's formats."""
    from lib.models import is_encoder_decoder, number_formats

    ev = params.evaluation
    finetune = run_info["finetune"]
    load = functools.cache(functools.partial(load_student, run_info["student"], adapter_dir, device, finetune))
    # finetune decides how the weights are loaded (a 4-bit base for qlora), so it is part of what an output depends on
    identity = {"weights": student_weights_hash(run_info["student"], adapter_dir), "finetune": finetune, "device": device}
    plan = number_formats(params.run)

    def scored(pairs: Sequence[tuple[str, str]]) -> list[float]:
        with autocast(plan["scoring"], device):
            return continuation_logliks(*load(), pairs, ev.batch_size)

    score = cached_scorer(scored, cache, {**identity, "code": output_code_sha256("scoring"), "precision": plan["scoring"]})
    return _Student(info=run_info, load=load, score=score, scorable=not is_encoder_decoder(run_info["student"]),
                    settings={**identity, "code": output_code_sha256("generation"), "precision": plan["decoding"],
                              "max_new_tokens": ev.max_new_tokens, "stop": NEXT_QUESTION},
                    train_set="" if adapter_dir is None else params.data.train.name)


def evaluate_run(run_info: dict, adapter_dir: Path | None, test_sets: dict[str, list[MCQuestion]],
                 params: StudyParams, device: str, cf_rationales: dict[str, tuple[int, str]] | None = None,
                 cache: ResponseCache | str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> list[ItemResult]:
    """Generate and score one student (a run of step 04, or BASE without `adapter_dir`) on every test set.

    Faithfulness is measured on the first (in-distribution) test set only, where counterfactual rationales can
    exist; log-likelihood accuracy on every set. Both score every option of an item (its prompt read once, each
    option on the prompt's cache), so only the first `evaluation.score_max_items` items of a set get them (null = all).
    `cache` (a ResponseCache or its path, e.g. <run_dir>/student_cache.sqlite; None = none) keeps every generated
    output and option score under the student's weights hash: a rerun loads the student only for what the cache
    lacks. `progress` receives a line as each test set's generation and scoring finish. Reference-based metrics
    (CEC, text metrics) come later, over every run at once.
    """
    store, opened = open_cache(cache)
    try:
        student = _prepare_student(run_info, adapter_dir, params, device, store)
        return [row for t, (name, qs) in enumerate(test_sets.items())
                for row in _evaluate_set(student, name, qs, params, t == 0, cf_rationales or {}, store,
                                         progress or (lambda _: None))]
    finally:
        if opened:
            store.close()


def _evaluate_set(student: _Student, name: str, qs: list[MCQuestion], params: StudyParams, in_distribution: bool,
                  cf_rationales: dict[str, tuple[int, str]], cache: ResponseCache | None,
                  progress: Callable[[str], None]) -> list[ItemResult]:
    """One student on one test set: generated answers and rationales, option scores and faithfulness."""
    ev, info = params.evaluation, student.info
    prompts = [eval_prompts(info["condition"], q, params.counterfactual.strategy_tokens.positive) for q in qs]
    outs, seconds = {}, [math.nan] * len(qs)
    for role in sorted({r for p in prompts for r in p}):
        outs[role], took = generate_cached(student.load, [p[role] for p in prompts], [q.id for q in qs],
                                           student.settings, ev.batch_size, cache, f"{info['run']} on {name} ({role})")
        seconds = [_add_seconds(a, b) for a, b in zip(seconds, took)]
        cached = [math.isnan(t) for t in took]  # NaN: taken from the cache
        progress(f"{info['run']} on {name}: {len(qs)} {role} outputs, {sum(cached)} from the cache "
                 f"({math.fsum(t for t, c in zip(took, cached) if not c):.0f} s generating)")
    answer_prompts = [p["answer"] for p in prompts]
    k = len(qs) if ev.score_max_items is None else min(len(qs), ev.score_max_items)  # scoring reads every option
    k = k if student.scorable else 0
    picks: list[OptionPick | None] = []
    if ev.loglik:
        t0 = time.perf_counter()
        picks = loglik_choices(student.score, answer_prompts[:k], qs[:k], ev.loglik_scoring)
        progress(f"{info['run']} on {name}: options of {k} items scored in {time.perf_counter() - t0:.0f} s")
    picks += [None] * (len(qs) - len(picks))
    standard: list[StandardPicks | None] = []
    if ev.standard_readings and k:
        t0 = time.perf_counter()
        standard = standard_picks(student.score, qs[:k])
        progress(f"{info['run']} on {name}: {k} items read in lm-eval's cloze and lettered formulations "
                 f"in {time.perf_counter() - t0:.0f} s")
    standard += [None] * (len(qs) - len(standard))
    rows = []
    for i, q in enumerate(qs):
        answer_text = outs["answer"][i]
        rationale_text = outs["rationale"][i] if "rationale" in outs else answer_text
        pred, lenient = extract_answer(answer_text, q.choices), extract_answer_lenient(answer_text, q.choices)
        rationale = clean_rationale(rationale_text)
        rows.append(ItemResult(
            run=info["run"], condition=info["condition"], student=info["student"], seed=info["seed"], test_set=name,
            item_id=q.id, prediction=pred, correct=int(pred == q.answer), unparseable=int(pred is None),
            rationale=rationale, rationale_len=rationale_length(rationale),
            output=answer_text if "rationale" not in outs else f"{rationale_text}\n---\n{answer_text}",
            cec=math.nan, cec_fc=math.nan, cec_bf=math.nan, seconds=seconds[i], train_set=student.train_set,
            rationale_source=info["rationale_source"], gold=q.answer, lenient_prediction=lenient,
            lenient_correct=int(lenient == q.answer),
            **_loglik_columns(picks[i], q.answer, ev.loglik_scoring), **reading_columns(standard[i], q.answer),
        ))
    if ev.faithfulness and in_distribution and k:
        own = [r.rationale for r in rows]
        found = [cf_rationales.get(q.id) for q in qs]
        found = [c if c is not None and 0 <= c[0] < len(q.choices) else None for c, q in zip(found, qs)]
        perturbed = perturbed_rationales(own, ev.perturbation, params.run.seed)
        faith = faithfulness(student.score, answer_prompts[:k], qs[:k], own[:k], perturbed[:k], found[:k],
                             ev.loglik_scoring)
        for r, f in zip(rows, faith):
            for column, value in f.items():
                setattr(r, column, value)
    return rows


def _add_seconds(a: float, b: float) -> float:
    """Generation seconds of an item over two roles; NaN (taken from the cache) only when both are."""
    return b if math.isnan(a) else a if math.isnan(b) else a + b


def _loglik_columns(pick: OptionPick | None, gold: int, scoring: str) -> dict[str, Any]:
    """The ItemResult columns of one item's log-likelihood picks (all None / "" when it was not scored)."""
    if pick is None:
        return {}
    return {"loglik_scoring": scoring, "loglik_pred": pick.total, "loglik_correct": int(pick.total == gold),
            "loglik_norm_pred": pick.per_char, "loglik_norm_correct": int(pick.per_char == gold)}


# ---------------------------------------------------------------- reference-based metrics


def add_cec(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str], embed: Any) -> None:
    """Fill each row's CEC against the teacher rationale of its item, wherever that reference exists.

    A student that wrote no rationale scores 0 (CEC, FC and BF: nothing of the reference is covered), so every
    condition is averaged over the same items; rows without a reference stay NaN.
    """
    scored = [r for r in rows if references.get(r.item_id)]
    for r, s in zip(scored, cec_batch([(r.rationale, references[r.item_id]) for r in scored], embed)):
        r.cec, r.cec_fc, r.cec_bf = s.cec, s.fc, s.bf


def add_text_metrics(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str], bertscore_model: str,
                     bertscore_layers: int | None = None, device: str = "cpu") -> None:
    """Fill BLEU, ROUGE-L and BERTScore against the teacher rationale of each item, wherever that reference exists.

    As for CEC, a missing rationale scores 0 on all three (the same items for every condition).
    """
    from lib.metrics import bertscore_scores, bleu_scores, rouge_l_scores
    from lib.models import resolve_embedder

    referenced = [r for r in rows if references.get(r.item_id)]
    if not referenced:
        log.info("text metrics: no item has a teacher reference")
        return
    for r in referenced:
        if not r.rationale.strip():  # bert-score cannot encode an empty text; nothing of the reference is matched
            r.bleu, r.rouge_l, r.bertscore = 0.0, 0.0, 0.0
    scored = [r for r in referenced if r.rationale.strip()]
    pairs = [(r.rationale, references[r.item_id]) for r in scored]
    bert = bertscore_scores(pairs, resolve_embedder(bertscore_model), bertscore_layers, device=device)
    for r, b, rl, bs in zip(scored, bleu_scores(pairs), rouge_l_scores(pairs), bert):
        r.bleu, r.rouge_l, r.bertscore = b, rl, bs



def score_against_references(rows: Sequence[ItemResult | ExplanationResult], references: dict[str, str],
                             ev: Any, device: str, fmt: str = "fp32") -> None:
    """Fill CEC (and, with evaluation.text_metrics, BLEU, ROUGE-L, BERTScore) of each row against its reference.

    `fmt` is the number format of the sentence encoders (run.precision's choice for embedding).
    """
    from lib.models import encode_sentences, load_embedder

    embedder = load_embedder(ev.embedder, device)
    with autocast(fmt, device):
        add_cec(rows, references,
                lambda s: encode_sentences(embedder, s, ev.embed_batch_size, desc="CEC: embedding sentences"))
        if ev.text_metrics:
            add_text_metrics(rows, references, ev.bertscore_model, ev.bertscore_layers, device)


# ---------------------------------------------------------------- the grid


def evaluate_grid(ctx: Any) -> list[ItemResult]:
    """Evaluate every run of step 04 (BASE included) on every test set of step 01, with CEC and the text metrics,
    and add the TEACHER rows (the teacher's own answers to the in-distribution test questions).

    Generated outputs and option scores are cached in <run_dir>/student_cache.sqlite: a rerun generates only
    for students, items or generation settings it has not seen.
    """
    from lib.data import read_test_sets
    from lib.files import read_jsonl
    from lib.models import number_formats, pick_device
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
    discard_student_cache(ctx)
    cache = ResponseCache(student_cache_path(ctx))
    try:
        mc_runs = [r for r in runs if r.get("task", "mc") == "mc"]  # CAUSAL runs: evaluate_causal_grid
        for i, info in enumerate(mc_runs, 1):
            t0 = time.perf_counter()
            rows.extend(evaluate_run(info, adapter_path(ctx, info), tests, ctx.params, device, cf, cache, ctx.progress))
            ctx.progress(f"run {i}/{len(mc_runs)} {info['run']} evaluated on {', '.join(tests)} "
                         f"in {time.perf_counter() - t0:.0f} s")
    finally:
        cache.close()
    rationales_path = ctx.artifact("02_teacher", "rationales.jsonl")
    score_against_references(rows, read_rationales(rationales_path, "test", ctx.params.training.rationale_filter),
                             ev, device, number_formats(ctx.params.run)["embedding"])
    in_distribution, questions = next(iter(tests.items()))
    return rows + teacher_rows(read_jsonl(rationales_path), in_distribution, questions)


NOT_RECORDED = "not recorded"  # lib.teacher's failure for a question the replayed teacher has no output for


def teacher_rows(rationales: Sequence[dict], test_set: str, questions: Sequence[MCQuestion]) -> list[ItemResult]:
    """The teacher's answers to the in-distribution test questions it answered (rows of 02_teacher/rationales.jsonl,
    split test) as TEACHER rows, the ceiling of the students; no CEC or text metric, as its rationale is the reference.

    An unparseable or failed answer counts as wrong, as a student's does; a question a replayed teacher has no
    recorded output for is left out, and so is every row of a teacher that was shown the answer (`answer_given`:
    Hendriks et al.'s LLaMA-2-13B rationalised the gold option, so it is no predictor and has no TEACHER row).
    """
    by_id = {q.id: q for q in questions}
    rows = []
    for r in rationales:
        q = by_id.get(str(r["id"]))
        if r["split"] != "test" or q is None or r.get("failure") == NOT_RECORDED or r.get("answer_given"):
            continue
        rows.append(ItemResult(
            run=f"{TEACHER}__unrevised__{r['model']}__seed0", condition=TEACHER, student=r["model"], seed=0,
            test_set=test_set, item_id=q.id, prediction=r["answer"], correct=int(bool(r["correct"])),
            unparseable=int(r["answer"] is None), rationale=r["rationale"],
            rationale_len=rationale_length(r["rationale"]), output=r["raw"], cec=math.nan, cec_fc=math.nan,
            cec_bf=math.nan, seconds=math.nan, train_set="", rationale_source="unrevised", gold=q.answer))
    return rows


def evaluate_causal_run(run_info: dict, adapter_dir: Path, pairs: list[dict], params: StudyParams,
                        device: str, cache: ResponseCache | str | Path | None = None) -> list[ExplanationResult]:
    """Let one CAUSAL student explain every held-out claim-evidence pair (metrics are filled later; cached as evaluate_run)."""
    from lib.prompts import causal_student_prompt

    store, opened = open_cache(cache)
    try:
        student = _prepare_student(run_info, adapter_dir, params, device, store)
        texts, seconds = generate_cached(student.load, [causal_student_prompt(p) for p in pairs],
                                         [str(p["id"]) for p in pairs], student.settings,
                                         params.evaluation.batch_size, store, f"{run_info['run']} on claims")
    finally:
        if opened:
            store.close()
    rows = []
    for p, generated, took in zip(pairs, texts, seconds):
        text = generated.split("\nClaim:", 1)[0].strip()  # cut a hallucinated next pair
        rows.append(ExplanationResult(
            run=run_info["run"], condition=run_info["condition"], student=run_info["student"], seed=run_info["seed"],
            item_id=str(p["id"]), claim_label=str(p["claim_label"]), rationale=text, rationale_len=rationale_length(text),
            reference=str(p.get("explanation") or "") if p.get("failure") is None else "", seconds=took))
    return rows


def evaluate_causal_grid(ctx: Any) -> list[ExplanationResult]:
    """Every CAUSAL run of step 04 explains the test pairs of 02_teacher/causal.jsonl, scored against the teacher."""
    from lib.files import read_jsonl
    from lib.models import number_formats, pick_device

    ev = ctx.params.evaluation
    causal_runs = [r for r in read_jsonl(ctx.artifact("04_training", "runs.jsonl")) if r.get("task") == "causal"]
    if not causal_runs:
        log.info("no CAUSAL run in training.conditions: no claim-evidence pairs to explain")
        return []
    device = pick_device(ctx.params.run.device)
    pairs = [r for r in read_jsonl(ctx.artifact("02_teacher", "causal.jsonl")) if r["split"] == "test"]
    rows: list[ExplanationResult] = []
    cache = ResponseCache(student_cache_path(ctx))
    try:
        for info in causal_runs:
            rows.extend(evaluate_causal_run(info, adapter_path(ctx, info), pairs, ctx.params, device, cache))
    finally:
        cache.close()
    references = {r.item_id: r.reference for r in rows if r.reference}
    score_against_references(rows, references, ev, device, number_formats(ctx.params.run)["embedding"])
    write_jsonl(ctx.out / "causal_items.jsonl", rows)
    return rows


def causal_table(causal: Any) -> Any:
    """Per CAUSAL run: explanations, how many had a teacher reference, and the mean length and metrics."""
    metrics = [c for c in ("rationale_len", "cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore")
               if c in causal.columns]
    import pandas as pd

    df = causal.assign(**{c: pd.to_numeric(causal[c], errors="coerce") for c in metrics})
    return (df.groupby(["condition", "student", "seed"], as_index=False, dropna=False)
              .agg(n=("item_id", "size"), n_scored=("cec", "count"), **{c: (c, "mean") for c in metrics}))


def judge_grid(ctx: Any, rows: Sequence[ItemResult]) -> list[Any]:
    """LLM-judge ratings (lib.ratings.Rating) of up to evaluation.judge_max_items student explanations per run (the
    teacher's are the reference, not rated), written to judge_ratings.jsonl; [] when off."""
    from lib.data import read_test_sets
    from lib.ratings import JUDGE_RATINGS, judge_ratings
    from lib.teacher import make_teacher

    ev = ctx.params.evaluation
    if not ev.judge:
        log.info("judge: off (evaluation.judge: false)")
        write_jsonl(ctx.out / JUDGE_RATINGS, [])
        return []
    tests = read_test_sets(ctx.run_dir / "01_data")
    first = next(iter(tests))
    questions = {q.id: q for q in tests[first]}
    in_dist = [r for r in rows if r.test_set == first and r.condition != TEACHER]  # the students' explanations
    teacher = make_teacher(ctx.params.teacher, ctx.params.run.device, run_dir=ctx.run_dir)  # step 02's cache
    try:
        judged = judge_ratings(in_dist, questions, teacher, ev.judge_max_items, ev.judge_max_new_tokens)
    finally:
        teacher.close()
    write_jsonl(ctx.out / JUDGE_RATINGS, judged)
    return judged


def export_human_sheet(ctx: Any, rows: Sequence[ItemResult]) -> dict[str, Path]:
    """The blinded human rating sheet (CSV, HTML form, key) of the students' in-distribution explanations."""
    from lib.data import read_test_sets
    from lib.ratings import export_sheet

    tests = read_test_sets(ctx.run_dir / "01_data")
    first = next(iter(tests))
    return export_sheet([r for r in rows if r.test_set == first and r.condition != TEACHER],
                        {q.id: q for q in tests[first]}, ctx.out, ctx.params.evaluation.human_sheet_items,
                        ctx.params.run.seed)
