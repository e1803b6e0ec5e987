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
from lib.models import prefix_ids
from lib.prompts import answer_sentence
from lib.questions import MCQuestion


def continuation_logliks(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                         desc: str = "scoring options") -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation), tokenised as in training.

    The options of a question share their context, so a context is read once and its key/value cache serves
    each of its continuations (`_shared_context_logliks`); a context of a single pair, one too long for a
    sliding-window layer to see whole, or any under flash attention, is read with its continuation as one
    sequence (`_joint_logliks`).
    The LM head runs only at the continuation's positions (Gemma's 262k-token vocabulary would make
    full logits the dominant cost on a CPU), through `lib.head_loss.target_nll`.
    """
    encoded = encode_pairs(tokenizer, pairs)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    window = getattr(base.config, "sliding_window", None) or float("inf")
    if str(getattr(base.config, "_attn_implementation", "")).startswith("flash"):
        window = 0  # flash attention takes no padding between a context and its continuation: read each pair whole
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx_ids, _) in enumerate(encoded):
        by_context.setdefault(tuple(ctx_ids), []).append(i)
    shared = [idx for ctx, idx in by_context.items()
              if len(idx) > 1 and len(ctx) + max(len(encoded[i][1]) for i in idx) <= window]
    alone = sorted(set(range(len(pairs))) - {i for idx in shared for i in idx})
    out = [0.0] * len(pairs)
    model.eval()
    out_shared = _shared_context_logliks(base, tokenizer, [[encoded[i] for i in idx] for idx in shared], batch_size,
                                         window, desc)
    for idx, values in zip(shared, out_shared):
        for i, v in zip(idx, values):
            out[i] = v
    for i, v in zip(alone, _joint_logliks(base, tokenizer, [encoded[i] for i in alone], batch_size, desc)):
        out[i] = v
    return out


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per pair, tokenised apart as in training: <bos> + context, continuation.

    The prefix is the tokenizer's own (lib.models.prefix_ids), so a context reads as lib.models.input_ids builds it.
    """
    bos = prefix_ids(tokenizer)
    ids = [(tokenizer(c, add_special_tokens=False)["input_ids"], tokenizer(t, add_special_tokens=False)["input_ids"])
           for c, t in pairs]
    return [(bos + c, t) for c, t in ids]


def _joint_logliks(base: Any, tokenizer: Any, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                   desc: str) -> list[float]:
    """Summed continuation log-likelihoods, each (context ids, continuation ids) read as one sequence."""
    import torch
    from tqdm.auto import tqdm

    from lib.head_loss import target_nll

    device = next(base.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    out = [0.0] * len(encoded)
    pad = _pad_id(tokenizer)
    cap = getattr(base.config, "final_logit_softcapping", None)
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
        for i, piece in zip(idx, torch.split(token_lp, counts)):
            out[i] = float(piece.sum())
    return out


def _shared_context_logliks(base: Any, tokenizer: Any, groups: list[list[tuple[list[int], list[int]]]],
                            batch_size: int, window: float, desc: str) -> list[list[float]]:
    """Per group of pairs sharing one context: each continuation's summed log-likelihood, the context read once.

    A batch of contexts (right-padded) is run once with a key/value cache; the cache's rows are repeated per
    continuation, and the continuations (but their last token, which predicts nothing scored) run on it at their
    true positions (context length onwards). The first continuation token is predicted from the context's last
    hidden state, the others from the continuation's.
    `window`: a batch is split further until padded context plus continuation fit a sliding-window layer whole.
    """
    import torch
    from tqdm.auto import tqdm

    from lib.head_loss import target_nll

    device = next(base.parameters()).device
    pad = _pad_id(tokenizer)
    cap = getattr(base.config, "final_logit_softcapping", None)
    head = base.get_output_embeddings()
    order = sorted(range(len(groups)), key=lambda g: -len(groups[g][0][0]))
    batches, current = [], []
    for g in order:  # longest contexts first, so a batch's padding stays small
        trial = current + [g]
        width = max(len(groups[k][0][0]) for k in trial) + max(len(t) for k in trial for _, t in groups[k])
        if current and (len(trial) > batch_size or width > window):
            batches.append(current)
            trial = [g]
        current = trial
    if current:
        batches.append(current)
    out: list[list[float]] = [[] for _ in groups]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
        contexts = [groups[g][0][0] for g in batch]
        lengths = torch.tensor([len(c) for c in contexts])
        ids = torch.full((len(batch), int(lengths.max())), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, c in enumerate(contexts):
            ids[row, :len(c)] = torch.tensor(c)
            mask[row, :len(c)] = 1
        rows = torch.tensor([row for row, g in enumerate(batch) for _ in groups[g]])
        conts = [t for g in batch for _, t in groups[g]]
        cont_ids = torch.full((len(conts), max(1, max(map(len, conts)))), pad, dtype=torch.long)
        cont_mask = torch.zeros_like(cont_ids)
        for r, t in enumerate(conts):
            cont_ids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
            cont_mask[r, :len(t)] = 1
        with torch.no_grad():
            first = base.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True)
            last = first.last_hidden_state[torch.arange(len(batch)), lengths - 1][rows.to(device)]
            predicting = last[:, None, :]  # the state before each continuation token: first the context's last
            if cont_ids.shape[1] > 1:  # the last continuation token predicts nothing scored, so it is not read
                cache = first.past_key_values
                cache.batch_select_indices(rows.to(device))
                positions = lengths[rows][:, None] + torch.arange(cont_ids.shape[1] - 1)[None, :]
                hidden = base.base_model(input_ids=cont_ids[:, :-1].to(device), position_ids=positions.to(device),
                                         attention_mask=torch.cat([mask[rows], cont_mask[:, :-1]], dim=1).to(device),
                                         past_key_values=cache, use_cache=True).last_hidden_state
                predicting = torch.cat([predicting, hidden], dim=1)
            target = cont_mask.bool().to(device)
            token_lp = -target_nll(predicting[target], head, cont_ids.to(device)[target], cap).cpu()
        sums = [float(piece.sum()) for piece in torch.split(token_lp, cont_mask.sum(dim=1).tolist())]
        k = 0
        for g in batch:
            out[g] = sums[k:k + len(groups[g])]
            k += len(groups[g])
    return out


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 where it has none): padded slots are masked, so any id serves."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


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
