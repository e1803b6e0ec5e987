"""How a student's options and continuations are scored by log-likelihood.

- `continuation_logliks`: the summed log-likelihood of each (context, continuation) pair, tokenised as in training;
- multiple choice, as lm-evaluation-harness scores it: each option's continuation (LOGLIK_SCORINGS, params
  evaluation.loglik_scoring) is scored right after the prompt (no rationale); the option with the highest summed
  log-likelihood is `OptionPick.total` (lm-eval's `acc`), the highest per character `OptionPick.per_char`
  (`acc_norm`). Scoring the whole answer sentence ("So the answer is (b) text.") let the letter decide: the
  untrained Gemma 3 270M picked (a) for most questions (benchmarks/loglik_bias.py);
- faithfulness (after SCOTT): the answer is read the same way (per character) after a perturbed or
  counterfactual rationale forced after the prompt, and compared with the answer read after the student's own
  rationale; the answer-change rate is the faithfulness measure.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Sequence

from lib.metrics import split_sentences
from lib.models import bos_ids
from lib.prompts import answer_sentence
from lib.questions import MCQuestion


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
