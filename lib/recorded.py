"""Recorded teacher outputs for the `replay` backend: CoS-E human explanations and PaLM-540B CoT rationales.

- CoS-E v1.11 (`cose_{train,dev}_v1.11.jsonl`): one open-ended human explanation per CommonsenseQA question.
- The PaLM-540B few-shot CoT completions published with "Distilling step-by-step" (Hsieh et al. 2023): the
  `cqa_{train,test}.json` question rows and their completions in `llm/<split>_CoT_<k>.json`, PALM_BATCH per file.
Both are read in their original published format and joined to the questions by id (`lib.teacher`); a malformed
row is a `DataError` naming `file:line`, as in `lib.data`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from lib.data import get_field, numbered_jsonl, read_data_json
from lib.files import DataError
from lib.questions import NEXT_QUESTION

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
