"""Recorded teacher outputs for the `replay` backend: CoS-E, PaLM-540B and Hendriks et al.'s LLaMA-2-13B.

- CoS-E v1.11 (`cose_{train,dev}_v1.11.jsonl`): one open-ended human explanation per CommonsenseQA question.
- The PaLM-540B few-shot CoT completions published with "Distilling step-by-step" (Hsieh et al. 2023): the
  `cqa_{train,test}.json` question rows and their completions in `llm/<split>_CoT_<k>.json`, PALM_BATCH per file.
- The LLaMA-2-13B outputs of "Honey, I Shrunk the Language Model" (Hendriks et al. 2025; data/SOURCES.md section 6):
  `cqa-llama-{train,test}/shard_<k>/`, Hugging Face `datasets` folders with, per CommonsenseQA question, the
  teacher's explanation of the gold answer it was shown (unrevised), a deliberately poor one, the critique-revised
  one, and one arguing for each option (the counterfactual rationales).
All are read in their original published format and joined to the questions by id (`lib.teacher`); a malformed
row is a `DataError` naming `file:line` (or the shard and id), as in `lib.data`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections import Counter
from pathlib import Path

from lib.data import get_field, numbered_jsonl, read_data_json
from lib.files import DataError, PROJECT_ROOT
from lib.questions import MCQuestion, NEXT_QUESTION

log = logging.getLogger(__name__)

PALM_BATCH = 1000  # completions per llm/<split>_CoT_<k>.json file, as in upstream `load_llm_preds`


def load_cose(source: str) -> dict[str, str]:
    """CoS-E v1.11 human explanations: question id -> open-ended explanation."""
    explanations: dict[str, str] = {}
    for lineno, row in numbered_jsonl(source):
        where = f"{source}:{lineno}"
        qid = str(get_field(row, "id", where))
        if qid in explanations:
            raise DataError(f"{where}: id {qid!r} appears twice; each question has one explanation")
        explanations[qid] = get_field(row, "explanation.open-ended", where)
    log.info("%s: %d CoS-E explanations", source, len(explanations))
    return explanations


def _palm_completions(folder: Path, split: str) -> list[str]:
    """All raw completions of llm/<split>_CoT_<k>.json in batch order, checked for gaps."""
    files = {}
    for path in (folder / "llm").glob(f"{split}_CoT_*.json"):
        k = path.stem.rsplit("_", 1)[1]
        if k.isdigit():
            files[int(k)] = path
    if not files:
        raise FileNotFoundError(f"no {split}_CoT_<k>.json files in {folder / 'llm'}; "
                                f"is {folder} the distilling-step-by-step cqa folder?")
    if sorted(files) != list(range(len(files))):
        raise DataError(f"{folder / 'llm'}: {split}_CoT files are numbered {sorted(files)}, "
                        f"expected 0..{len(files) - 1} without gaps")
    completions: list[str] = []
    for k in range(len(files)):
        batch = read_data_json(files[k])
        if not isinstance(batch, list) or not all(isinstance(c, str) for c in batch):
            raise DataError(f"{files[k]}: expected a JSON list of completion strings")
        # completion i of file k belongs to row k*PALM_BATCH+i, so every file but the last must be full
        if len(batch) > PALM_BATCH or (k < len(files) - 1 and len(batch) != PALM_BATCH):
            raise DataError(f"{files[k]}: {len(batch)} completions; "
                            f"every file but the last must hold exactly {PALM_BATCH}")
        completions.extend(batch)
    return completions


def load_palm_rationales(folder: str, split: str) -> dict[str, str]:
    """Recorded PaLM-540B CoT rationales of distilling-step-by-step CQA: question id -> rationale."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (test = the CommonsenseQA dev set), got {split!r}")
    root = Path(folder).expanduser()
    questions_file = root / f"cqa_{split}.json"
    if not questions_file.is_file():
        raise FileNotFoundError(f"{questions_file} not found; the folder must hold cqa_{split}.json "
                                f"and llm/{split}_CoT_<k>.json")
    ids = [str(get_field(row, "id", f"{questions_file}:{lineno}")) for lineno, row in numbered_jsonl(questions_file)]
    completions = _palm_completions(root, split)
    if len(completions) != len(ids):
        raise DataError(f"{root}: {len(completions)} {split} completions for {len(ids)} rows of {questions_file.name}; "
                        "the files must come from the same release")
    duplicates = [qid for qid, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise DataError(f"{questions_file}: {len(duplicates)} ids appear more than once, e.g. {duplicates[0]!r}")
    # PaLM kept writing invented few-shot examples after the answer; upstream cuts at the first "\n\nQ:"
    rationales = {qid: text.split(NEXT_QUESTION, 1)[0].strip() for qid, text in zip(ids, completions)}
    log.info("%s: %d PaLM %s rationales", root, len(rationales), split)
    return rationales


# ---------------------------------------------------------------- Hendriks et al. (2025), LLaMA-2-13B

HENDRIKS_MODEL = "LLaMA-2-13B (Hendriks et al., replayed)"
HENDRIKS_SPLITS = {"train": "cqa-llama-train", "test": "cqa-llama-test"}  # test = the CommonsenseQA dev set
UNREVISED, NEGATIVE, REVISED = "few_shot_positive_rationale", "few_shot_negative_rationale", "few_shot_revision"
N_OPTIONS = 5  # counterfactual_prompt_answer_<k>_rationale, k = 1 (A) ... 5 (E)
HENDRIKS_TEXTS = (UNREVISED, NEGATIVE, REVISED, *(f"counterfactual_prompt_answer_{k}_rationale" for k in range(1, 6)))


def option_column(option: int) -> str:
    """The column of the rationale that argues for option index `option` (0 = A)."""
    return f"counterfactual_prompt_answer_{option + 1}_rationale"


def first_line(text: str | None) -> str:
    """A recorded text as upstream's training reads it: its first line, stripped (later lines are chatter)."""
    return (text or "").strip().split("\n", 1)[0].strip()


@dataclasses.dataclass(frozen=True)
class HendriksRecord:
    """One question's recorded LLaMA-2-13B outputs (a row of a Hendriks et al. shard)."""

    id: str
    question: str
    choices: tuple[str, ...]  # the 5 options in CommonsenseQA's A-E order
    answer: str  # the gold option's text, which the teacher was shown
    texts: dict[str, str]  # column of HENDRIKS_TEXTS -> first line of the text ("" when the teacher wrote none)
    source: str  # the shard folder the row was read from (relative to the project root where it can be)


def _shown(path: Path) -> str:
    """A path for provenance: relative to the project root when it lies beside the checkout, else absolute."""
    path = path.resolve()
    return os.path.relpath(path, PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT.parent) else str(path)


def _hendriks_shards(folder: Path) -> list[Path]:
    """The shard_<k> folders of one split in order, checked for gaps."""
    shards = {int(p.name.split("_", 1)[1]): p for p in folder.glob("shard_*")
              if p.is_dir() and p.name.split("_", 1)[1].isdigit()}
    if not shards:
        raise FileNotFoundError(f"no shard_<k> folders in {folder}; teacher.replay_dir must be the folder holding "
                                f"{' and '.join(HENDRIKS_SPLITS.values())} (upstream's llm_outputs/consolidated)")
    if sorted(shards) != list(range(len(shards))):
        raise DataError(f"{folder}: shards are numbered {sorted(shards)}, expected 0..{len(shards) - 1} without gaps")
    return [shards[k] for k in range(len(shards))]


def _hendriks_record(row: dict, where: str, source: str) -> HendriksRecord:
    """One shard row as a record; a missing id, answer or option list is a DataError naming the shard and row."""
    qid, choices = row.get("id"), row.get("choices")
    if not qid or not row.get("answer") or not isinstance(choices, list) or len(choices) != N_OPTIONS:
        raise DataError(f"{where} (id {qid!r}): needs an id, an answer and {N_OPTIONS} choices; "
                        "is this a Hendriks et al. CommonsenseQA shard?")
    return HendriksRecord(id=str(qid), question=str(row.get("question") or ""), choices=tuple(map(str, choices)),
                          answer=str(row["answer"]), texts={c: first_line(row.get(c)) for c in HENDRIKS_TEXTS},
                          source=source)


def load_hendriks(folder: str | Path, split: str) -> dict[str, HendriksRecord]:
    """Hendriks et al.'s LLaMA-2-13B outputs of one split (train, or test = CommonsenseQA dev): question id -> record.

    Each shard is loaded with `datasets.load_from_disk`, in order, and concatenated; empty texts are counted per
    column and logged as dropped (the replay uses none of them).
    """
    import datasets  # slow import; only this replay needs it

    if split not in HENDRIKS_SPLITS:
        raise ValueError(f"split must be 'train' or 'test' (test = the CommonsenseQA dev set), got {split!r}")
    shards = _hendriks_shards(Path(folder).expanduser() / HENDRIKS_SPLITS[split])
    parts = [datasets.load_from_disk(str(s)) for s in shards]
    for shard, part in zip(shards, parts):
        missing = [c for c in ("id", "question", "choices", "answer", *HENDRIKS_TEXTS) if c not in part.column_names]
        if missing:
            raise DataError(f"{shard}: columns {', '.join(missing)} are missing; expected Hendriks et al.'s "
                            "consolidated CommonsenseQA outputs (data/SOURCES.md section 6)")
    origin = [(shard, i) for shard, part in zip(shards, parts) for i in range(len(part))]
    records: dict[str, HendriksRecord] = {}
    for (shard, i), row in zip(origin, datasets.concatenate_datasets(parts).to_list()):
        r = _hendriks_record(row, f"{shard} row {i}", _shown(shard))
        if r.id in records:
            raise DataError(f"{shard} row {i}: id {r.id!r} appears twice in {split} (also in {records[r.id].source})")
        records[r.id] = r
    empty = hendriks_empty_counts(records)
    log.info("%s: %d Hendriks et al. %s rows from %d shards", folder, len(records), split, len(shards))
    if empty:
        log.warning("%s %s: empty texts, dropped: %s", folder, split, ", ".join(f"{c} {n}" for c, n in empty.items()))
    return records


def hendriks_empty_counts(records: dict[str, HendriksRecord]) -> dict[str, int]:
    """Column -> how many records have an empty text there (columns without one left out)."""
    counts = Counter(c for r in records.values() for c in HENDRIKS_TEXTS if not r.texts[c])
    return {c: counts[c] for c in HENDRIKS_TEXTS if counts[c]}


def load_hendriks_outputs(folder: str | Path) -> dict[str, HendriksRecord]:
    """Both splits' records by id (a study's test questions may be held out of CommonsenseQA train).

    Read once per process while the shard files stay as they are (steps 02 and 03 ask several times).
    """
    root = Path(folder).expanduser()
    files = sorted(root.glob("cqa-llama-*/shard_*/*"))
    return _both_splits(str(root), tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.lru_cache(maxsize=4)
def _both_splits(folder: str, signature: tuple) -> dict[str, HendriksRecord]:
    """`load_hendriks_outputs` for one state of the files (`signature`: their paths, times and sizes)."""
    train, test = load_hendriks(folder, "train"), load_hendriks(folder, "test")
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(f"{folder}: id {both[0]!r} is in both {HENDRIKS_SPLITS['train']} ({train[both[0]].source}) "
                        f"and {HENDRIKS_SPLITS['test']} ({test[both[0]].source}); the splits must be disjoint")
    return {**train, **test}


def match_hendriks(records: dict[str, HendriksRecord], questions: dict[str, list[MCQuestion]],
                   ) -> dict[str, HendriksRecord]:
    """The records of the study's questions, by id; a record whose answer or options are not the question's is refused.

    A question without a record is left out (the replay records it as "not recorded") and the count is logged.
    """
    matched, missing = {}, 0
    for split, qs in questions.items():
        for q in qs:
            r = records.get(q.id)
            if r is None:
                missing += 1
                continue
            gold = q.choices[q.answer] if 0 <= q.answer < len(q.choices) else None
            if r.answer != gold or list(r.choices) != list(q.choices):
                raise DataError(
                    f"{r.source}: id {q.id!r}: the recorded answer {r.answer!r} and options {list(r.choices)} are not "
                    f"the {split} question's (gold {gold!r}, options {q.choices}, from {q.source or 'step 01'}); the "
                    "outputs explain another question: point teacher.replay_dir at the outputs of these questions")
            matched[q.id] = r
    if missing:
        log.warning("%d of %d questions have no Hendriks et al. record", missing, sum(map(len, questions.values())))
    return matched
