"""Evaluate trained students: accuracy in and out of distribution, explanation quality and faithfulness.

Per item, the student writes its rationale and answer with the prompt of the condition it was
trained on (MT answers from its `[answer]` task and explains from its `[rationale]` task; CFD is
asked with the `[Direct election]` strategy token). The answer is extracted from the text;
unparseable outputs count as wrong and are flagged. Beside that generative accuracy:

- log-likelihood accuracy, as lm-evaluation-harness scores multiple choice: each option's continuation
  (`evaluation.loglik_scoring`, LOGLIK_SCORINGS) is scored right after the prompt (no rationale); the
  option with the highest summed log-likelihood is `loglik_pred` (lm-eval's `acc`), the highest per
  character `loglik_norm_pred` (`acc_norm`). Scoring the whole answer sentence ("So the answer is (b)
  text.") let the letter decide: the untrained Gemma 3 270M picked (a) for most questions
  (benchmarks/loglik_bias.py); `pick_distribution` shows each run's share of picks per letter;
- CEC, BLEU, ROUGE-L and BERTScore of the student's rationale against the teacher's rationale
  for the same question, where the teacher wrote one (in-distribution test questions);
- faithfulness (after SCOTT): the student's rationale is replaced by a perturbed one (another
  item's rationale, or its own sentences shuffled) or by a counterfactual rationale for a wrong
  option (03_counterfactuals/cf_rationales.jsonl, when present), fed back as a forced prefix after
  the prompt; the answer is then read by log-likelihood (the same scoring, per character) and compared
  with the answer read the same way after the student's own rationale. The answer-change rate is the
  faithfulness measure.

Generated outputs and option scores are cached in `<run_dir>/student_cache.sqlite` (lib.response_cache),
keyed by the student's weights hash (its saved folder and base model), how they are loaded (`finetune`: a
QLoRA student keeps the 4-bit base it was trained on), item, prompt and generation settings, so rerunning
step 05 regenerates only what changed.

Every student is evaluated on every test set of step 01, so each condition gets a train-set x test-set
accuracy matrix (`ood_matrix`). Two rows frame the conditions: BASE, the untrained student (a runs.jsonl row
with `adapter: null`) asked with FT's prompt, is the floor; TEACHER, the teacher's own answers to the
in-distribution test questions (02_teacher/rationales.jsonl), is the ceiling. Each row keeps the
rationale source (unrevised or critique-revised teacher rationales) its student was trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lib.questions import MCQuestion, NEXT_QUESTION
from lib.metrics import cec_batch, extract_answer, rationale_length, split_sentences
from lib.params import StudyParams
from lib.prompts import answer_sentence
from lib.response_cache import ResponseCache, request_key
from lib.conditions import TEACHER
from lib.teacher import split_rationale
from lib.conditions import eval_prompts
from lib.models import bos_ids

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
    loglik_scoring: str = ""  # evaluation.loglik_scoring that made the loglik picks ("" = not scored)
    loglik_pred: int | None = None  # option with the highest summed log-likelihood after the prompt (lm-eval acc)
    loglik_correct: int | None = None  # 1 when loglik_pred == gold
    loglik_norm_pred: int | None = None  # option with the highest log-likelihood per character (lm-eval acc_norm)
    loglik_norm_correct: int | None = None  # 1 when loglik_norm_pred == gold
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

def load_student(base_spec: str, adapter_dir: Path | None, device: str, finetune: str) -> tuple[Any, Any]:
    """A student and its tokenizer as it was trained (`finetune`: the run's training.finetune).

    No adapter (BASE): the untrained base model. `lora`: the base with the adapter merged in. `qlora`: the same 4-bit
    NF4 base it was trained on with the adapter applied, not merged (merging into 4-bit weights would round the
    update away). `full`: the saved weights. A QLoRA study's BASE is its 4-bit base.
    """
    from lib.models import load_student_lm, load_tokenizer

    if adapter_dir is None:
        return load_student_lm(base_spec, device, load_in_4bit=finetune == "qlora"), load_tokenizer(base_spec)
    tokenizer = load_tokenizer(str(adapter_dir))
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


# ---------------------------------------------------------------- log-likelihood scoring


def continuation_logliks(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                         desc: str = "scoring options") -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation), tokenised as in training.

    The LM head runs only at the continuation's positions (Gemma's 262k-token vocabulary would make
    full logits the dominant cost on a CPU), through `lib.head_loss.target_nll`.
    """
    import torch
    from tqdm.auto import tqdm

    from lib.head_loss import target_nll

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    bos = bos_ids(tokenizer)
    encoded = [(bos + tokenizer(c, add_special_tokens=False)["input_ids"], tokenizer(t, add_special_tokens=False)["input_ids"])
               for c, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    out = [0.0] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cap = getattr(base.config, "final_logit_softcapping", None)
    model.eval()
    for lo in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=len(order) <= batch_size):
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


Scorer = Callable[[Sequence[tuple[str, str]]], list[float]]  # (context, continuation) pairs -> summed log-likelihoods

# What is scored for each option after the prompt (params evaluation.loglik_scoring):
LOGLIK_SCORINGS = {
    "answer_sentence": "the whole answer sentence, letter included: ' So the answer is (b) bed.'",
    "option_text": "the option's text right after the prompt: ' bed' (lm-evaluation-harness's multiple_choice)",
    "answer_text": "the option's text after the answer frame: context + ' So the answer is', continuation ' bed.'",
}


@dataclasses.dataclass(frozen=True)
class OptionPick:
    """The option with the highest summed log-likelihood (lm-eval `acc`) and per character (`acc_norm`)."""

    total: int
    per_char: int


def option_continuations(context: str, q: MCQuestion, scoring: str) -> list[tuple[str, str]]:
    """The (context, continuation) pair scored for each option of `q` under `scoring` (LOGLIK_SCORINGS)."""
    if scoring == "answer_sentence":
        return [(context, " " + answer_sentence(q, k)) for k in range(len(q.choices))]
    if scoring == "option_text":
        return [(context, " " + choice) for choice in q.choices]
    if scoring == "answer_text":
        return [(context + " So the answer is", f" {choice}.") for choice in q.choices]
    raise ValueError(f"unknown log-likelihood scoring {scoring!r}; use one of {', '.join(LOGLIK_SCORINGS)} "
                     "(params evaluation.loglik_scoring)")


def loglik_choices(score: Scorer, contexts: Sequence[str], questions: Sequence[MCQuestion],
                   scoring: str) -> list[OptionPick]:
    """For each (context, question): the most likely option, by summed and by per-character log-likelihood."""
    pairs, spans = [], []
    for context, q in zip(contexts, questions):
        spans.append((len(pairs), len(q.choices)))
        pairs.extend(option_continuations(context, q, scoring))
    scores = score(pairs)
    picks = []
    for start, n in spans:
        total = scores[start:start + n]
        per_char = [v / max(1, len(pairs[start + k][1])) for k, v in enumerate(total)]
        picks.append(OptionPick(total=_argmax(total), per_char=_argmax(per_char)))
    return picks


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value (the first on ties)."""
    return max(range(len(values)), key=values.__getitem__)


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


def faithfulness(score: Scorer, prompts: list[str], questions: list[MCQuestion], own: list[str], perturbed: list[str],
                 counterfactual: list[tuple[int, str] | None], scoring: str) -> list[dict[str, int | None]]:
    """Per item: whether the answer changed with a perturbed / counterfactual rationale as a forced prefix.

    Each answer is read by log-likelihood (`scoring`, per character: `OptionPick.per_char`) after
    `prompt + " " + rationale`; the baseline is the answer read the same way after the student's own
    rationale. Items without an own rationale are not measured.
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
    contexts = [f"{prompts[i]} {r}" for i, _, r in jobs]
    picks = loglik_choices(score, contexts, [questions[i] for i, _, _ in jobs], scoring)
    got: dict[tuple[int, str], int] = {(i, kind): p.per_char for (i, kind, _), p in zip(jobs, picks)}
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
    from lib.files import read_jsonl

    if path is None or not Path(path).exists():
        return {}
    out: dict[str, tuple[int, str]] = {}
    for lineno, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("option"), int) or not str(row.get("text", "")).strip():
            continue  # a failed counterfactual rationale has no option or text; nothing to feed back
        out.setdefault(str(row["id"]), (row["option"], str(row["text"]).strip()))
    return out


# ---------------------------------------------------------------- the student cache


def student_weights_hash(base_spec: str, adapter_dir: Path | None) -> str:
    """sha256 over the base model's provenance and every file of a run's saved folder (adapter or full weights,
    tokenizer); without a saved folder (BASE), of the base model's provenance alone."""
    from lib.models import model_provenance
    from lib.files import sha256_file, sha256_json

    if adapter_dir is None:
        return sha256_json({"base": model_provenance(base_spec)})
    files = {p.relative_to(adapter_dir).as_posix(): sha256_file(p) for p in sorted(Path(adapter_dir).rglob("*"))
             if p.is_file()}
    if not files:
        raise FileNotFoundError(f"{adapter_dir} is empty or missing: no trained student to evaluate; rerun step "
                                f"04_training (python -m lib.study PARAMS --steps 04 --force)")
    return sha256_json({"base": model_provenance(base_spec), "files": files})


def output_code_sha256() -> str:
    """sha256 of the code a cached student output depends on: loading, generation, the LM head and option scoring."""
    import inspect

    from lib.files import sha256_file, sha256_json

    here = Path(__file__).resolve().parent
    return sha256_json({"files": {name: sha256_file(here / name) for name in ("models.py", "head_loss.py")},
                        "functions": [inspect.getsource(f) for f in (load_student, continuation_logliks)]})


def cached_scorer(score: Scorer, cache: ResponseCache | None, identity: dict[str, Any]) -> Scorer:
    """`score` behind the cache: only pairs never scored for `identity` (weights hash, device) reach the model."""
    if cache is None:
        return score

    def scored(pairs: Sequence[tuple[str, str]]) -> list[float]:
        requests = [{"kind": "student_loglik", **identity, "context": c, "continuation": t} for c, t in pairs]
        keys = [request_key(r) for r in requests]
        found = [cache.get(k) for k in keys]
        todo = [j for j, hit in enumerate(found) if hit is None]
        fresh = dict(zip(todo, score([pairs[j] for j in todo]) if todo else []))
        for j, value in fresh.items():
            cache.put(keys[j], requests[j], repr(value), "loglik", 0, 0)  # repr round-trips a float exactly
        return [fresh[j] if hit is None else float(hit["text"]) for j, hit in enumerate(found)]

    return scored


def generate_cached(student: Callable[[], tuple[Any, Any]], prompts: list[str], item_ids: list[str],
                    settings: dict[str, Any], batch_size: int, cache: ResponseCache | None,
                    desc: str) -> tuple[list[str], list[float]]:
    """Greedy outputs of a student and generation seconds per item (NaN for an output the cache already held).

    `settings` (weights hash, device, max_new_tokens, stop) and the item and prompt key each output in the
    cache; `student()` loads the model, and is called only when some prompt is missing.
    """
    from lib.models import generate_texts

    requests = [{"kind": "student_generation", **settings, "temperature": 0.0, "item": i, "prompt": p}
                for i, p in zip(item_ids, prompts)]
    keys = [request_key(r) for r in requests]
    hits = [cache.get(k) for k in keys] if cache is not None else [None] * len(keys)
    texts: list[str | None] = [None if hit is None else hit["text"] for hit in hits]
    seconds = [math.nan] * len(prompts)
    todo = [j for j, t in enumerate(texts) if t is None]
    if todo:
        model, tokenizer = student()
        t0 = time.perf_counter()
        outs = generate_texts(model, tokenizer, [prompts[j] for j in todo], settings["max_new_tokens"],
                              batch_size=batch_size, stop=settings["stop"], desc=desc)
        per_item = round((time.perf_counter() - t0) / len(todo), 3)
        for j, (c,) in zip(todo, outs):
            texts[j], seconds[j] = c.text, per_item
            if cache is not None:
                cache.put(keys[j], requests[j], c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
    log.info("%s: %d outputs generated, %d from the student cache", desc, len(todo), len(prompts) - len(todo))
    return [t or "" for t in texts], seconds


def open_cache(cache: ResponseCache | str | Path | None) -> tuple[ResponseCache | None, bool]:
    """The cache to use and whether the caller opened it (and must close it): a path is opened here."""
    if cache is None or isinstance(cache, ResponseCache):
        return cache, False
    return ResponseCache(cache), True


# ---------------------------------------------------------------- one run


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
    """Wrap one run for evaluation: lazy loading, its weights hash and its cached scorer."""
    from lib.models import is_encoder_decoder

    ev = params.evaluation
    finetune = run_info["finetune"]
    load = functools.cache(functools.partial(load_student, run_info["student"], adapter_dir, device, finetune))
    # finetune decides how the weights are loaded (a 4-bit base for qlora), so it is part of what an output depends on
    identity = {"weights": student_weights_hash(run_info["student"], adapter_dir), "finetune": finetune,
                "device": device, "code": output_code_sha256()}
    score = cached_scorer(lambda pairs: continuation_logliks(*load(), pairs, ev.batch_size), cache, identity)
    return _Student(info=run_info, load=load, score=score, scorable=not is_encoder_decoder(run_info["student"]),
                    settings={**identity, "max_new_tokens": ev.max_new_tokens, "stop": NEXT_QUESTION},
                    train_set="" if adapter_dir is None else params.data.train.name)


def evaluate_run(run_info: dict, adapter_dir: Path | None, test_sets: dict[str, list[MCQuestion]],
                 params: StudyParams, device: str, cf_rationales: dict[str, tuple[int, str]] | None = None,
                 cache: ResponseCache | str | Path | None = None) -> list[ItemResult]:
    """Generate and score one student (a run of step 04, or BASE without `adapter_dir`) on every test set
    (reference-based metrics come later).

    Faithfulness is measured on the first (in-distribution) test set only, where counterfactual
    rationales can exist; log-likelihood accuracy on every set. Both score every option of an item with
    a forward pass each, so only the first `evaluation.score_max_items` items of a set get them (null = all).
    `cache` (a ResponseCache or its path, e.g. <run_dir>/student_cache.sqlite; None = none) keeps every
    generated output and option score under the student's weights hash: a rerun loads the student only
    for what the cache lacks.
    """
    store, opened = open_cache(cache)
    try:
        student = _prepare_student(run_info, adapter_dir, params, device, store)
        return [row for t, (name, qs) in enumerate(test_sets.items())
                for row in _evaluate_set(student, name, qs, params, t == 0, cf_rationales or {}, store)]
    finally:
        if opened:
            store.close()


def _evaluate_set(student: _Student, name: str, qs: list[MCQuestion], params: StudyParams, in_distribution: bool,
                  cf_rationales: dict[str, tuple[int, str]], cache: ResponseCache | None) -> list[ItemResult]:
    """One student on one test set: generated answers and rationales, option scores and faithfulness."""
    ev, info = params.evaluation, student.info
    prompts = [eval_prompts(info["condition"], q, params.counterfactual.strategy_tokens.positive) for q in qs]
    outs, seconds = {}, [math.nan] * len(qs)
    for role in sorted({r for p in prompts for r in p}):
        outs[role], took = generate_cached(student.load, [p[role] for p in prompts], [q.id for q in qs],
                                           student.settings, ev.batch_size, cache, f"{info['run']} on {name} ({role})")
        seconds = [_add_seconds(a, b) for a, b in zip(seconds, took)]
    answer_prompts = [p["answer"] for p in prompts]
    k = len(qs) if ev.score_max_items is None else min(len(qs), ev.score_max_items)  # scoring costs a pass per option
    k = k if student.scorable else 0
    picks: list[OptionPick | None] = []
    if ev.loglik:
        picks = loglik_choices(student.score, answer_prompts[:k], qs[:k], ev.loglik_scoring)
    picks += [None] * (len(qs) - len(picks))
    rows = []
    for i, q in enumerate(qs):
        answer_text = outs["answer"][i]
        rationale_text = outs["rationale"][i] if "rationale" in outs else answer_text
        pred = extract_answer(answer_text, q.choices)
        rationale = clean_rationale(rationale_text)
        rows.append(ItemResult(
            run=info["run"], condition=info["condition"], student=info["student"], seed=info["seed"], test_set=name,
            item_id=q.id, prediction=pred, correct=int(pred == q.answer), unparseable=int(pred is None),
            rationale=rationale, rationale_len=rationale_length(rationale),
            output=answer_text if "rationale" not in outs else f"{rationale_text}\n---\n{answer_text}",
            cec=math.nan, cec_fc=math.nan, cec_bf=math.nan, seconds=seconds[i], train_set=student.train_set,
            rationale_source=info["rationale_source"], gold=q.answer,
            **_loglik_columns(picks[i], q.answer, ev.loglik_scoring),
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
                             ev: Any, device: str) -> None:
    """Fill CEC (and, with evaluation.text_metrics, BLEU, ROUGE-L, BERTScore) of each row against its reference."""
    from lib.models import encode_sentences, load_embedder

    embedder = load_embedder(ev.embedder, device)
    add_cec(rows, references, lambda s: encode_sentences(embedder, s, ev.embed_batch_size, desc="CEC: embedding sentences"))
    if ev.text_metrics:
        add_text_metrics(rows, references, ev.bertscore_model, ev.bertscore_layers, device)

# ---------------------------------------------------------------- the grid


def student_cache_path(ctx: Any) -> Path:
    """The run's student cache, outside the step folders so that cache hits never change a step's artifacts."""
    return ctx.run_dir / "student_cache.sqlite"


def discard_student_cache(ctx: Any) -> bool:
    """With `--force` (ctx.force), delete the run's student cache so every output is generated again; True if deleted."""
    path = student_cache_path(ctx)
    if not getattr(ctx, "force", False) or not path.exists():
        return False
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
    log.info("force: deleted the student cache %s; every output is generated and scored again", path)
    return True


def evaluate_grid(ctx: Any) -> list[ItemResult]:
    """Evaluate every run of step 04 (BASE included) on every test set of step 01, with CEC and the text metrics,
    and add the TEACHER rows (the teacher's own answers to the in-distribution test questions).

    Generated outputs and option scores are cached in <run_dir>/student_cache.sqlite: a rerun generates only
    for students, items or generation settings it has not seen.
    """
    from lib.data import read_test_sets
    from lib.models import pick_device
    from lib.files import read_jsonl
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
        for info in (r for r in runs if r.get("task", "mc") == "mc"):  # CAUSAL runs: evaluate_causal_grid
            rows.extend(evaluate_run(info, adapter_path(ctx, info), tests, ctx.params, device, cf, cache))
    finally:
        cache.close()
    rationales_path = ctx.artifact("02_teacher", "rationales.jsonl")
    score_against_references(rows, read_rationales(rationales_path, "test", ctx.params.training.rationale_filter),
                             ev, device)
    in_distribution, questions = next(iter(tests.items()))
    return rows + teacher_rows(read_jsonl(rationales_path), in_distribution, questions)


NOT_RECORDED = "not recorded"  # lib.teacher's failure for a question the replayed teacher has no output for


def teacher_rows(rationales: Sequence[dict], test_set: str, questions: Sequence[MCQuestion]) -> list[ItemResult]:
    """The teacher's answers to the in-distribution test questions it answered (rows of 02_teacher/rationales.jsonl,
    split test) as TEACHER rows, the ceiling of the students; no CEC or text metric, as its rationale is the reference.

    An unparseable or failed answer counts as wrong, as a student's does; a question a replayed teacher has no
    recorded output for is left out.
    """
    by_id = {q.id: q for q in questions}
    rows = []
    for r in rationales:
        q = by_id.get(str(r["id"]))
        if r["split"] != "test" or q is None or r.get("failure") == NOT_RECORDED:
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
    from lib.models import pick_device
    from lib.files import read_jsonl

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
    score_against_references(rows, references, ev, device)
    return rows


def causal_table(causal: Any) -> Any:
    """Per CAUSAL run: explanations, how many had a teacher reference, and the mean length and metrics."""
    metrics = [c for c in ("rationale_len", "cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore")
               if c in causal.columns]
    import pandas as pd

    df = causal.assign(**{c: pd.to_numeric(causal[c], errors="coerce") for c in metrics})
    return (df.groupby(["condition", "student", "seed"], as_index=False, dropna=False)
              .agg(n=("item_id", "size"), n_scored=("cec", "count"), **{c: (c, "mean") for c in metrics}))


def causal_summary(rows: Sequence[ExplanationResult]) -> Any:
    """Per CAUSAL run: pairs explained and scored, mean explanation length and the metrics against the teacher."""
    import pandas as pd

    return causal_table(pd.DataFrame([dataclasses.asdict(r) for r in rows],
                                     columns=[f.name for f in dataclasses.fields(ExplanationResult)]))


def judge_grid(ctx: Any, rows: Sequence[ItemResult]) -> list[Any]:
    """LLM-judge ratings (lib.ratings.Rating) of up to evaluation.judge_max_items student explanations per run (the
    teacher's are the reference, not rated); [] when off."""
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
    in_dist = [r for r in rows if r.test_set == first and r.condition != TEACHER]  # the students' explanations
    teacher = make_teacher(ctx.params.teacher, ctx.params.run.device, run_dir=ctx.run_dir)  # step 02's cache
    try:
        return judge_ratings(in_dist, questions, teacher, ev.judge_max_items, ev.judge_max_new_tokens)
    finally:
        teacher.close()


def export_human_sheet(ctx: Any, rows: Sequence[ItemResult]) -> dict[str, Path]:
    """The blinded human rating sheet (CSV, HTML form, key) of the students' in-distribution explanations."""
    from lib.data import read_test_sets
    from lib.ratings import export_sheet

    tests = read_test_sets(ctx.run_dir / "01_data")
    first = next(iter(tests))
    return export_sheet([r for r in rows if r.test_set == first and r.condition != TEACHER],
                        {q.id: q for q in tests[first]}, ctx.out, ctx.params.evaluation.human_sheet_items,
                        ctx.params.run.seed)


# ---------------------------------------------------------------- tables


def items_frame(rows: Sequence[ItemResult]) -> Any:
    """Per-item results as a table (the input of the statistics step)."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=[f.name for f in dataclasses.fields(ItemResult)])


def summary_table(rows: Sequence[ItemResult]) -> Any:
    """Per condition, rationale source, student, seed and test set: n, generative and log-likelihood accuracy,
    unparseable share, mean metrics and faithfulness.

    `loglik_accuracy` is lm-evaluation-harness's `acc` (summed log-likelihood), `loglik_norm_accuracy` its
    `acc_norm` (per character), both under evaluation.loglik_scoring, over the items scored.
    """
    df = items_frame(rows)
    for c in ("loglik_correct", "loglik_norm_correct", *FAITHFULNESS_COLUMNS):
        df[c] = df[c].astype(float)
    return (df.groupby(["condition", "rationale_source", "student", "seed", "train_set", "test_set"], as_index=False,
                       dropna=False)
              .agg(n=("correct", "size"), accuracy=("correct", "mean"), loglik_accuracy=("loglik_correct", "mean"),
                   loglik_norm_accuracy=("loglik_norm_correct", "mean"),
                   unparseable=("unparseable", "mean"), cec=("cec", "mean"), cec_fc=("cec_fc", "mean"),
                   cec_bf=("cec_bf", "mean"), bleu=("bleu", "mean"), rouge_l=("rouge_l", "mean"),
                   bertscore=("bertscore", "mean"), answer_change_perturbed=("faithfulness_perturbed", "mean"),
                   answer_change_counterfactual=("faithfulness_counterfactual", "mean"),
                   rationale_words=("rationale_len", "mean"), seconds_per_item=("seconds", "mean")))


def pick_distribution(rows: Sequence[ItemResult], column: str = "loglik_norm_pred") -> Any:
    """Per run and test set: the share of each option letter among the picks in `column`, beside gold's shares.

    `column` is loglik_norm_pred, loglik_pred or prediction; only items with a pick count (gold over the same
    items). Two rows per run and test set, `of` = the column and `gold`, with `n` and `max_share` (the
    largest share of one letter): a scorer far above gold's max_share favours that letter.
    """
    import pandas as pd

    from lib.questions import option_letters

    df = items_frame(rows).dropna(subset=[column, "gold"])
    letters = option_letters(int(max(df[column].max(), df["gold"].max())) + 1) if len(df) else []
    out = []
    for (run, test_set), g in df.groupby(["run", "test_set"], sort=False):
        for of in (column, "gold"):
            shares = g[of].astype(int).value_counts(normalize=True)
            out.append({"run": run, "condition": g["condition"].iloc[0], "test_set": test_set, "of": of, "n": len(g),
                        **{f"({x})": float(shares.get(k, 0.0)) for k, x in enumerate(letters)},
                        "max_share": float(shares.max())})
    return pd.DataFrame(out, columns=["run", "condition", "test_set", "of", "n", *[f"({x})" for x in letters],
                                      "max_share"])


def ood_matrix(rows: Sequence[ItemResult], value: str = "correct") -> Any:
    """Accuracy (%) per condition, rationale source, student and seed: one row per training set, one column per test
    set (TEACHER answered the in-distribution set only)."""
    df = items_frame(rows)
    df[value] = df[value].astype(float) * 100
    table = df.pivot_table(index=["condition", "rationale_source", "student", "seed", "train_set"], columns="test_set",
                           values=value, aggfunc="mean", sort=False)
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
    from lib.files import write_json

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
