"""Counterfactual questions (counterfactual distillation, EMNLP 2024) and counterfactual rationales (SCOTT).

Counterfactual questions (`build_counterfactuals`), for each of the first `counterfactual.max_questions`
training questions:

1. **Mask.** The teacher names the words that decide the answer (`topic_words.txt`). Every occurrence of every
   named phrase found in the question (whole words, case-insensitive; of two that overlap, the earlier, then the
   longer) becomes a `[MASK]`, so a question may carry several; when none is found, every occurrence of
   CommonsenseQA's `question_concept` is masked instead (`span_source`).
2. **New target** (`counterfactual.new_target`): a former distractor (`first_distractor`, `random_distractor`) or,
   with `new_option`, a new answer the teacher proposes for the masked question (`new_option.txt`). The new option
   takes the place of a distractor drawn with the seed, so the option count and the other options' letters stay as
   they were, and the new answer's letter is not always the last (which would teach a positional shortcut).
3. **Refill.** The teacher refills the masks so that the new target becomes right: one mask with `refill.txt`
   (one phrase), several with `refill_masks.txt` (one phrase per mask, in order, separated by ";"). Refilling
   mask by mask, rather than rewriting the whole question, keeps every word outside the masks provably unchanged.
   A refill is rejected when it is empty, has a phrase count other than the mask count, leaves the question
   unchanged, rewrites words outside the masks, or names the old or the new answer (`refill_problem`).
4. **Vote.** `votes` sampled teacher reasoning paths (up to `vote_max_new_tokens` each) answer the new question;
   it is accepted when at least `accept_threshold` of them reach the new target (self-consistency). A path cut off
   before its answer sentence names no option and counts against acceptance, so `acceptance_summary` counts those
   (`votes_unparsed`) beside what every other bar (1/k ... k/k) would accept, from the recorded votes.

Counterfactual rationales (`build_cf_rationales`): for a question, a rationale written as if a randomly drawn wrong
option were right; the Hendriks replay (`teacher.replay_source: hendriks`) gives the ones it recorded, one per wrong
option. The multi-view CoT of the originals and the accepted counterfactuals is `lib.multiview`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections import Counter
from typing import Any

from lib.metrics import extract_answer
from lib.params import CounterfactualParams, TeacherParams
from lib.prompts import cot_prompt, load_template, view_prompt
from lib.questions import MCQuestion
from lib.recorded import HENDRIKS_MODEL, option_column
from lib.teacher import hendriks_records, split_rationale, Teacher

log = logging.getLogger(__name__)

MASK = "[MASK]"


@dataclasses.dataclass
class Counterfactual:
    """One attempted counterfactual question (a row of 03_counterfactuals/counterfactuals.jsonl)."""

    source_id: str  # the original question's id
    id: str  # id of the counterfactual question ("<source_id>-cf")
    original: str
    spans: list[tuple[int, int]]  # character offsets of every masked phrase in the original, in order, non-overlapping
    span_texts: list[str]  # the original's words under each mask, in order
    span_source: str  # "teacher" (the teacher's topic words) or "question_concept" (CommonsenseQA's concept)
    topic_words: str  # what the teacher named as the deciding words ("" when not asked)
    concept: str  # CommonsenseQA's question_concept, kept as a baseline signal
    masked: str  # the original with each span replaced by [MASK] ("" when nothing was located)
    choices: list[str]  # the counterfactual's options: the original's, or with one distractor replaced by new_option
    new_target: int  # index (in `choices`) of the option that should become the answer
    new_option: str  # the teacher's new answer option (new_target policy `new_option`), else ""
    refill: str  # the teacher's answer to the refill prompt (first line, cleaned)
    fills: list[str]  # the phrase put in each [MASK], in order (refill split at ";" when there are several masks)
    question: str  # the counterfactual question text ("" when no refill was possible)
    votes: list[int | None]  # answers of the k sampled teacher reasoning paths
    vote_share: float  # share of votes for new_target
    accepted: bool
    reason: str  # "accepted" or why it was rejected
    teacher_model: str
    templates: dict[str, str]  # template name -> sha256, of the templates this attempt used


# ---------------------------------------------------------------- masking


def locate_spans(text: str, phrase: str) -> list[tuple[int, int]]:
    """Character offsets of every whole-word, case-insensitive occurrence of `phrase` in `text`."""
    if not phrase.strip():
        return []
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, flags=re.IGNORECASE)]


def non_overlapping(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans in text order without overlaps: where two overlap, the earlier one wins, the longer on a tie."""
    kept: list[tuple[int, int]] = []
    for start, end in sorted(set(spans), key=lambda s: (s[0], -s[1])):
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    return kept


def mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace the characters of each (non-overlapping) span with [MASK]."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + MASK + text[end:]
    return text


def topic_phrases(words: str) -> list[str]:
    """The phrases in the teacher's topic-word answer: split at commas, semicolons and " and "."""
    return [w.strip() for w in re.split(r"[,;]| and ", words) if w.strip()]


def choose_spans(q: MCQuestion, words: str) -> tuple[list[tuple[int, int]], str]:
    """What to mask: every occurrence of every teacher phrase found in the question, else of the concept."""
    whole = len(q.question)
    found = [s for p in topic_phrases(words) for s in locate_spans(q.question, p) if s[1] - s[0] < whole]
    if found:
        return non_overlapping(found), "teacher"
    return non_overlapping([s for s in locate_spans(q.question, q.concept or "") if s[1] - s[0] < whole]), \
        "question_concept"


# ---------------------------------------------------------------- new target and refill


def pick_new_target(q: MCQuestion, policy: str, rng: random.Random) -> int:
    """The distractor that becomes the new answer (new_option: the distractor the new option replaces)."""
    distractors = [i for i in range(len(q.choices)) if i != q.answer]
    return distractors[0] if policy == "first_distractor" else rng.choice(distractors)


def clean_refill(text: str) -> str:
    """The teacher's fill-in: its first line, without quotes or a trailing full stop."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.strip().rstrip(".").strip().strip("\"'`").strip()


def split_fills(refill: str, n_masks: int) -> list[str]:
    """One phrase per mask: the whole refill for one mask, else its ";"-separated parts, each cleaned."""
    if n_masks <= 1:
        return [refill]
    return [clean_refill(part) for part in refill.split(";")]


def refill_prompt(masked: str, target: str) -> str:
    """The prompt that asks the teacher to refill the masks of `masked` so that `target` becomes right."""
    name = "refill" if masked.count(MASK) <= 1 else "refill_masks"
    return load_template(name).render(target=target, masked=masked)


def new_option_prompt(masked: str, choices: list[str]) -> str:
    """The prompt that asks the teacher for a new answer option to the masked question."""
    return load_template("new_option").render(masked=masked, options="; ".join(choices))


def new_option_problem(option: str, choices: list[str]) -> str | None:
    """Why a proposed new option cannot be used (empty, a mask, or repeating an option's words); None when it can."""
    if not option:
        return "empty new option"
    if MASK in option:
        return "new option contains [MASK]"
    words = option.lower().split()
    for choice in choices:
        other = choice.lower().split()
        if any(words == other[i:i + len(words)] for i in range(len(other) - len(words) + 1)) or \
                any(other == words[i:i + len(other)] for i in range(len(words) - len(other) + 1)):
            return "new option repeats an option"
    return None


def refill_problem(q: MCQuestion, span_texts: list[str], fills: list[str], masked: str = "",
                   new_answer: str = "") -> str | None:
    """Why a refill (one phrase per mask) cannot make a counterfactual, or None when it can.

    A refill that spells out the new answer is rejected too: the question would give its answer away by word
    overlap, the very shortcut counterfactual data is meant to break.
    """
    if not any(fills):
        return "empty refill"
    if len(fills) != len(span_texts):
        return f"refill has {len(fills)} phrases for {len(span_texts)} masks"
    if not all(fills):
        return "refill leaves a mask empty"
    if any(MASK in f for f in fills):
        return "refill still contains [MASK]"
    context = [part.strip().lower() for part in masked.split(MASK)]
    if any(len(part.split()) >= 3 and part in f.lower() for part in context for f in fills):
        return "refill rewrites words outside the mask"
    if [f.lower() for f in fills] == [s.lower() for s in span_texts]:
        return "refill leaves the question unchanged"
    if any(q.choices[q.answer].lower() in f.lower() for f in fills):
        return "refill names the old answer"
    if new_answer and any(new_answer.lower() in f.lower() for f in fills):
        return "refill names the new answer"
    return None


def fill_masks(masked: str, fills: list[str]) -> str:
    """The masked text with each [MASK], left to right, replaced by its phrase."""
    parts = masked.split(MASK)
    return parts[0] + "".join(f + rest for f, rest in zip(fills, parts[1:]))


def vote(votes: list[int | None], target: int, threshold: float) -> tuple[float, bool]:
    """Share of votes for `target` and whether it reaches the acceptance threshold."""
    share = sum(v == target for v in votes) / len(votes) if votes else 0.0
    return share, share >= threshold


def topic_words(questions: list[MCQuestion], teacher: Teacher) -> list[str]:
    """The teacher's words that decide each question's answer (its first line, cleaned)."""
    template = load_template("topic_words")
    outs = teacher.complete([template.render(question=q.question) for q in questions], max_new_tokens=12,
                            temperature=0.0, desc="topic words")
    return [clean_refill(c.text) for (c,) in outs]


def _draft(q: MCQuestion, words: str, params: CounterfactualParams, rng: random.Random,
           teacher_name: str) -> Counterfactual:
    """An attempt with its masks and new target located, before the teacher refills it."""
    spans, source = choose_spans(q, words)
    target = pick_new_target(q, params.new_target, rng)
    masked = mask_spans(q.question, spans) if spans else ""
    asked = ("topic_words", "cot") if params.topic_source == "teacher" else ("cot",)
    return Counterfactual(
        source_id=q.id, id=f"{q.id}-cf", original=q.question, spans=spans,
        span_texts=[q.question[s:e] for s, e in spans], span_source=source, topic_words=words, concept=q.concept or "",
        masked=masked, choices=list(q.choices), new_target=target, new_option="", refill="", fills=[], question="",
        votes=[], vote_share=0.0, accepted=False, reason="pending" if spans else "no topic words found in the question",
        teacher_model=teacher_name, templates={name: load_template(name).sha256 for name in asked})


def _add_new_options(drafts: list[Counterfactual], teacher: Teacher) -> None:
    """Policy new_option: the teacher's new answer takes the place of each pending draft's drawn distractor."""
    pending = [d for d in drafts if d.reason == "pending"]
    outs = teacher.complete([new_option_prompt(d.masked, d.choices) for d in pending], max_new_tokens=12,
                            temperature=0.0, desc="new options")
    for d, (c,) in zip(pending, outs):
        d.new_option = clean_refill(c.text)
        d.templates["new_option"] = load_template("new_option").sha256
        problem = new_option_problem(d.new_option, d.choices)
        if problem:
            d.reason = problem
        else:
            d.choices[d.new_target] = d.new_option


def _refill(drafts: list[Counterfactual], originals: dict[str, MCQuestion], teacher: Teacher) -> None:
    """Ask the teacher to refill each pending draft's masks and check its phrases (`refill_problem`)."""
    pending = [d for d in drafts if d.reason == "pending"]
    most = max((len(d.spans) for d in pending), default=1)
    outs = teacher.complete([refill_prompt(d.masked, d.choices[d.new_target]) for d in pending],
                            max_new_tokens=16 * most, temperature=0.0, desc="refill masks")
    for d, (c,) in zip(pending, outs):
        name = "refill" if len(d.spans) == 1 else "refill_masks"
        d.templates[name] = load_template(name).sha256
        d.refill = clean_refill(c.text)
        d.fills = split_fills(d.refill, len(d.spans))
        problem = refill_problem(originals[d.source_id], d.span_texts, d.fills, d.masked, d.choices[d.new_target])
        d.reason = problem or "pending"
        d.question = "" if problem else fill_masks(d.masked, d.fills)


def build_counterfactuals(questions: list[MCQuestion], teacher: Teacher, params: CounterfactualParams,
                          n_shots: int, seed: int) -> list[Counterfactual]:
    """Find topic words, mask them all, pick the new target, refill and vote; every attempt comes back with its outcome."""
    rng = random.Random(seed)
    picked = questions[: params.max_questions]
    words = topic_words(picked, teacher) if params.topic_source == "teacher" else [""] * len(picked)
    rows = [_draft(q, w, params, rng, teacher.name) for q, w in zip(picked, words)]
    if params.new_target == "new_option":
        _add_new_options(rows, teacher)
    by_id = {q.id: q for q in questions}
    _refill(rows, by_id, teacher)
    pending = [r for r in rows if r.reason == "pending"]
    cf_qs = [as_question(r, by_id[r.source_id]) for r in pending]
    paths = teacher.complete([cot_prompt(q, n_shots) for q in cf_qs], max_new_tokens=params.vote_max_new_tokens,
                             temperature=params.vote_temperature, n=params.votes, desc="self-consistency votes")
    for r, q, completions in zip(pending, cf_qs, paths):
        r.votes = [extract_answer(c.text, q.choices) for c in completions]
        r.vote_share, r.accepted = vote(r.votes, r.new_target, params.accept_threshold)
        r.reason = "accepted" if r.accepted else f"votes below threshold ({r.vote_share:.2f} < {params.accept_threshold})"
    masks = Counter(len(r.spans) for r in rows)
    log.info("counterfactuals: %d of %d accepted; masks per question %s; outcomes %s", sum(r.accepted for r in rows),
             len(rows), dict(sorted(masks.items())), dict(Counter(_reason_kind(r.reason) for r in rows)))
    return rows


def as_question(cf: Counterfactual, original: MCQuestion) -> MCQuestion:
    """The counterfactual as a multiple-choice question: its options (`cf.choices`), the new target as gold."""
    return dataclasses.replace(original, id=cf.id, question=cf.question, choices=list(cf.choices),
                               answer=cf.new_target, source=f"{original.source}+counterfactual")


@dataclasses.dataclass
class CounterfactualRationale:
    """A rationale that argues for a wrong option (a row of 03_counterfactuals/cf_rationales.jsonl)."""

    id: str  # question id
    option: int  # the wrong option the rationale argues for
    text: str
    teacher_model: str
    template_sha256: str
    split: str = "train"  # train rows feed CF training; test rows feed the faithfulness probe of step 05
    source: str = ""  # replay: the recorded shard the rationale was read from; "" for generated rows


def build_cf_rationales(questions: dict[str, list[MCQuestion]], teacher: Teacher, params: CounterfactualParams,
                        seed: int) -> list[CounterfactualRationale]:
    """Per split, for each question a rationale written as if a randomly chosen wrong option were right (after SCOTT).

    At most `cf_rationale_questions` per split; the wrong option is drawn with `seed`. A Hendriks replay teacher
    (`teacher.params`) asks no model: `replay_cf_rationales`.
    """
    replay = getattr(teacher, "params", None)
    if isinstance(replay, TeacherParams) and replay.backend == "replay" and replay.replay_source == "hendriks":
        return replay_cf_rationales(questions, replay, params, seed)
    rng = random.Random(seed)
    template = load_template("counterfactual_rationale")
    cap = params.cf_rationale_questions
    picked = [(split, q) for split, qs in questions.items() for q in (qs if cap is None else qs[:cap])]
    options = [rng.choice([i for i in range(len(q.choices)) if i != q.answer]) for _, q in picked]
    prompts = [view_prompt(q, o, positive=True, template="counterfactual_rationale") for (_, q), o in zip(picked, options)]
    outs = teacher.complete(prompts, max_new_tokens=params.max_new_tokens, temperature=0.0,
                            desc="counterfactual rationales")
    rows = [CounterfactualRationale(id=q.id, option=o, text=split_rationale(c.text), teacher_model=teacher.name,
                                    template_sha256=template.sha256, split=split)
            for (split, q), o, (c,) in zip(picked, options, outs)]
    empty = sum(not r.text for r in rows)
    if empty:
        log.warning("%d of %d counterfactual rationales came back empty and are dropped", empty, len(rows))
    return [r for r in rows if r.text]


def replay_cf_rationales(questions: dict[str, list[MCQuestion]], teacher: TeacherParams, params: CounterfactualParams,
                         seed: int) -> list[CounterfactualRationale]:
    """Hendriks et al.'s recorded rationale for every wrong option of each question (at most `cf_rationale_questions`
    per split). CF trains on the first row of each question (lib.examples), one counterfactual per factual example
    as their collator pairs them; the other rows are kept for reading.

    A question's rows start with the wrong option drawn with `seed` as `build_cf_rationales` draws it (step 05's
    faithfulness probe feeds back the first row per question), then the others in option order. Empty rationales and
    questions without a record are dropped and counted in the log, by column.
    """
    rng = random.Random(seed)
    cap = params.cf_rationale_questions
    picked = {split: qs if cap is None else qs[:cap] for split, qs in questions.items()}
    records = hendriks_records(picked, teacher)
    rows, empty, missing = [], Counter(), 0
    for split, qs in picked.items():
        for q in qs:
            wrong = [i for i in range(len(q.choices)) if i != q.answer]
            first = rng.choice(wrong)
            r = records.get(q.id)
            if r is None:
                missing += 1
                continue
            for o in [first] + [i for i in wrong if i != first]:
                text = split_rationale(r.texts[option_column(o)])
                if not text:
                    empty[option_column(o)] += 1
                    continue
                rows.append(CounterfactualRationale(id=q.id, option=o, text=text, teacher_model=HENDRIKS_MODEL,
                                                    template_sha256="", split=split, source=r.source))
    if empty or missing:
        log.warning("counterfactual rationales dropped: %d questions without a record; empty: %s", missing,
                    ", ".join(f"{c} {n}" for c, n in sorted(empty.items())) or "none")
    return rows


def _reason_kind(reason: str) -> str:
    """A rejection reason without its numbers ("votes below threshold (0.33 < 0.6)" -> "votes below threshold")."""
    return "votes below threshold" if reason.startswith("votes below") else \
        re.sub(r"^refill has \d+ phrases for \d+ masks$", "refill phrase count differs from mask count", reason)


def _target_rank(r: Counterfactual, original: MCQuestion) -> str:
    """Which former distractor became the new target ("1" = the first wrong option), or "new option"."""
    return "new option" if r.new_option else str(r.new_target - (r.new_target > original.answer) + 1)


def acceptance_by_bar(rows: list[Counterfactual]) -> dict[str, int]:
    """How many voted counterfactuals each bar j/k (j = 1 ... k votes for the new target) would accept."""
    voted = [r for r in rows if r.votes]
    k = max((len(r.votes) for r in voted), default=0)
    hits = [sum(v == r.new_target for v in r.votes) for r in voted]
    return {f"{j}/{k}": sum(h >= j for h in hits) for j in range(1, k + 1)}


def acceptance_summary(rows: list[Counterfactual], questions: list[MCQuestion]) -> dict[str, Any]:
    """Acceptance rate, rejection reasons, acceptance at every vote bar, masks per question and the new target's origin.

    `new_target_distractor_rank` counts, over the attempts with masks, which former distractor (1 = the first wrong
    option) became the answer, or "new option" (policy new_option). `acceptance_by_bar` counts, over the voted
    attempts, how many j of k votes for the new target would accept ({"1/3": n, "2/3": n, "3/3": n}); `votes_cast`,
    `votes_unparsed` (paths that named no option) and `votes_for_target` count the votes themselves.
    """
    by_id = {q.id: q for q in questions}
    voted = [r for r in rows if r.votes]
    return {
        "attempted": len(rows),
        "accepted": sum(r.accepted for r in rows),
        "acceptance_rate": sum(r.accepted for r in rows) / len(rows) if rows else 0.0,
        "reasons": dict(Counter(_reason_kind(r.reason) for r in rows)),
        "voted": len(voted),
        "votes_cast": sum(len(r.votes) for r in voted),
        "votes_unparsed": sum(v is None for r in voted for v in r.votes),
        "votes_for_target": sum(v == r.new_target for r in voted for v in r.votes),
        "acceptance_by_bar": acceptance_by_bar(rows),
        "masks_per_question": {str(k): n for k, n in sorted(Counter(len(r.spans) for r in rows).items())},
        "new_target_distractor_rank": dict(sorted(Counter(_target_rank(r, by_id[r.source_id]) for r in rows
                                                          if r.spans).items())),
        "mean_vote_share": sum(r.vote_share for r in voted) / max(1, len(voted)),
    }


def side_by_side(rows: list[Counterfactual]) -> list[dict[str, str]]:
    """Original / masked / counterfactual rows for display, the masked and the refilled words in **bold**."""
    out = []
    for r in rows:
        original = _bold_spans(r.original, r.spans)
        cf = fill_masks(r.masked, [f"**{f}**" for f in r.fills]) if r.question else ""
        target = f"{r.new_option} (new option)" if r.new_option else r.choices[r.new_target]
        out.append({"original": original, "masked": r.masked, "counterfactual": cf, "new target": target,
                    "outcome": r.reason})
    return out


def _bold_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span in **bold**."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + f"**{text[start:end]}**" + text[end:]
    return text


def accepted_questions(rows: list[Counterfactual], originals: list[MCQuestion]) -> list[MCQuestion]:
    """The accepted counterfactuals as multiple-choice questions (training data for CFD)."""
    by_id = {q.id: q for q in originals}
    return [as_question(r, by_id[r.source_id]) for r in rows if r.accepted]


def cf_rationales_frame(rows: list[CounterfactualRationale]) -> Any:
    """Counterfactual rationales as a table for display; empty input keeps the columns."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows],
                        columns=[f.name for f in dataclasses.fields(CounterfactualRationale)])
