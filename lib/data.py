"""Datasets and step 01's splits: multiple-choice questions and Climate-FEVER claim-evidence pairs.

Every loader reads either a local file in the dataset's ORIGINAL published format or a Hugging Face hub id
(through `datasets.load_dataset`), and maps rows to the small dataclasses below. Local files are UTF-8, with or
without a byte-order mark. A malformed local row, or bytes that are not UTF-8, are reported as `file:line`; every
such error is a `DataError` (a ValueError).

Multiple-choice formats (`MC_FORMATS`); the local file is always the AI2-style jsonl
`{"id", "answerKey", "question": {"stem", "choices": [{"label", "text"}], "question_concept"?}}`:
- `commonsenseqa`: CommonsenseQA v1.11 (`train_rand_split.jsonl` ...), 5 options A-E; keeps `question_concept`.
  Hub: `tau/commonsense_qa` (id, question, question_concept, choices{label,text}, answerKey).
- `arc`: AI2 Reasoning Challenge (`ARC-Easy-Train.jsonl` ...), 3-5 options labelled A-E or 1-5.
  Hub: `allenai/ai2_arc:ARC-Easy` or `allenai/ai2_arc:ARC-Challenge` (id, question, choices{text,label}, answerKey).
- `qasc`: QASC (`QASC_Dataset/train.jsonl` ...), 8 options A-H; the facts are not used.
  Hub: `allenai/qasc` (id, question, choices{text,label}, answerKey).
- `openbookqa`: OpenBookQA (`Main/train.jsonl` ...), 4 options A-D; the open book is not used.
  Hub: `allenai/openbookqa:main` (id, question_stem, choices{text,label}, answerKey).
- `quarel`: QuaRel v1 (`quarel-v1/quarel_v1_test.jsonl` ...), 2 options written into the question text
  ("... because _____ is smoother. (A) snow (B) ice") with `answer_index` 0 or 1; the logical forms are not used.
  Hub: `allenai/quarel` (same fields).
A hub id may carry its config after a colon (`name:config`). Missing or empty answerKey means no key: answer = -1
(the loaders keep such questions; step 01, `prepare_splits`, refuses them, as it refuses empty sets and test
questions that are also training questions: the checks are `lib.question_checks`).

Step 01 loads, checks and splits the sets the params name (`prepare_splits`), writes them (`write_splits`), and
later steps read them back (`read_splits`, `read_test_sets`). The recorded teacher outputs (CoS-E, PaLM) are read
by `lib.recorded`, with this module's file readers (`numbered_jsonl`, `read_data_json`, `get_field`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, TYPE_CHECKING

from lib.files import DataError, read_text, resolve_path, write_json, write_jsonl
from lib.question_checks import check_answer_keys, check_disjoint, check_not_empty, check_questions, check_set_name
from lib.questions import CLAIM_LABELS, ClaimEvidence, EVIDENCE_LABELS, MC_FORMATS, MCQuestion, option_letters
from lib.runs import MissingArtifact

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_LOCAL_SUFFIXES = {".json", ".jsonl"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line ends a file opened in text mode splits on


# ---------------------------------------------------------------- sources


def _is_local(source: str) -> bool:
    """True when `source` names a local file; a path-like source that does not exist is an error."""
    path = Path(source).expanduser()
    if path.is_file():
        return True
    if path.exists():
        raise DataError(f"{source} is a folder; give the data file inside it")
    if source.startswith((".", "/", "~")) or path.suffix in _LOCAL_SUFFIXES:
        raise FileNotFoundError(f"data file not found: {source} "
                                f"(relative paths start at the working directory {Path.cwd()})")
    return False


def read_data_json(path: str | Path) -> Any:
    """One JSON document from a data file; a syntax error names the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix the file") from exc


def numbered_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Rows of a JSON-lines file with their 1-based line numbers; blank lines are skipped."""
    for lineno, line in enumerate(_LINE_BREAK.split(read_text(path)), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); "
                            "fix or remove that line") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def _load_hub(source: str, split: str) -> Any:
    """`datasets.load_dataset` for `name` or `name:config`."""
    import datasets  # slow import; only hub sources need it

    name, _, config = source.partition(":")
    log.info("loading hub dataset %s (config %s, split %s)", name, config or "default", split)
    return datasets.load_dataset(name, config or None, split=split)


def get_field(row: dict, dotted: str, where: str) -> Any:
    """Field `a.b.c` of a row; a missing one is an error naming it and where."""
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise DataError(f"{where}: missing field {dotted!r}; the row must follow the dataset's original schema")
        value = value[key]
    return value


# ---------------------------------------------------------------- multiple choice


def _build_question(qid: Any, stem: Any, labels: list[Any], texts: list[Any], answer_key: Any,
                    concept: str | None, fmt: str, where: str, prefix: str) -> MCQuestion:
    """Check one question's parts and map its answer key to an index; `prefix` locates fields in messages."""
    if not isinstance(stem, str):
        raise DataError(f"{where}: field '{prefix}stem' must be a string, got {type(stem).__name__}")
    if len(labels) != len(texts) or len(texts) < 2:
        raise DataError(f"{where}: field '{prefix}choices' needs at least 2 options with a label and a text each "
                        f"(got {len(texts)} texts, {len(labels)} labels)")
    labels, texts = [str(x) for x in labels], [str(x) for x in texts]
    if answer_key is None or str(answer_key).strip() == "":
        answer = -1
    elif str(answer_key).strip() in labels:
        answer = labels.index(str(answer_key).strip())
    else:
        raise DataError(f"{where}: field 'answerKey' is {answer_key!r}, not one of the option labels {labels}")
    return MCQuestion(id=str(qid), question=stem, choices=texts, labels=labels, answer=answer,
                      concept=concept, source=fmt)


def _question_from_original(row: dict, fmt: str, where: str) -> MCQuestion:
    """Map a row of the original AI2-style jsonl (CommonsenseQA, ARC, QASC, OpenBookQA)."""
    choices = get_field(row, "question.choices", where)
    if not isinstance(choices, list):
        raise DataError(f"{where}: field 'question.choices' must be a list of {{label, text}} objects")
    labels = [get_field(c, "label", f"{where}: question.choices[{i}]") for i, c in enumerate(choices)]
    texts = [get_field(c, "text", f"{where}: question.choices[{i}]") for i, c in enumerate(choices)]
    concept = get_field(row, "question.question_concept", where) if fmt == "commonsenseqa" else None
    return _build_question(get_field(row, "id", where), get_field(row, "question.stem", where), labels, texts,
                           row.get("answerKey"), concept, fmt, where, "question.")


# QuaRel writes its options into the question: "... stem (A) first option (B) second option".
_QUAREL_OPTIONS = re.compile(r"\(([A-Z])\)\s*")


def _question_from_quarel(row: dict, where: str) -> MCQuestion:
    """Map a QuaRel row (the same fields locally and on the hub): options are split out of the question text."""
    text = get_field(row, "question", where)
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'question' must be a string, got {type(text).__name__}")
    marks = list(_QUAREL_OPTIONS.finditer(text))
    if len(marks) < 2:
        raise DataError(f"{where}: field 'question' must end with its options '(A) ... (B) ...', got {text[-80:]!r}")
    labels = [m.group(1) for m in marks]
    texts = [text[m.end():nxt.start() if nxt else len(text)].strip() for m, nxt in zip(marks, [*marks[1:], None])]
    index = row.get("answer_index")
    if index is not None and not (isinstance(index, int) and 0 <= index < len(labels)):
        raise DataError(f"{where}: field 'answer_index' is {index!r}, expected an option index 0..{len(labels) - 1}")
    return _build_question(get_field(row, "id", where), text[:marks[0].start()].strip(), labels, texts,
                           None if index is None else labels[index], None, "quarel", where, "")


def _question_from_hub(row: dict, fmt: str, where: str) -> MCQuestion:
    """Map a row of the hub version (choices as {label: [...], text: [...]})."""
    stem = get_field(row, "question_stem" if fmt == "openbookqa" else "question", where)
    concept = get_field(row, "question_concept", where) if fmt == "commonsenseqa" else None
    return _build_question(get_field(row, "id", where), stem, list(get_field(row, "choices.label", where)),
                           list(get_field(row, "choices.text", where)), row.get("answerKey"), concept, fmt, where, "")


def load_multiple_choice(source: str, fmt: str, split: str = "train", limit: int | None = None) -> list[MCQuestion]:
    """Questions from a local original-format jsonl or a hub id; `split` applies to hub ids only."""
    if fmt not in MC_FORMATS:
        raise DataError(f"unknown multiple-choice format {fmt!r}; supported: {', '.join(MC_FORMATS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    questions: list[MCQuestion] = []
    if _is_local(source):
        for lineno, row in numbered_jsonl(source):
            if limit is not None and len(questions) >= limit:
                break
            where = f"{source}:{lineno}"
            questions.append(_question_from_quarel(row, where) if fmt == "quarel" else
                             _question_from_original(row, fmt, where))
    else:
        for i, row in enumerate(_load_hub(source, split)):
            if limit is not None and len(questions) >= limit:
                break
            where = f"{source} [{split}] row {i}"
            questions.append(_question_from_quarel(row, where) if fmt == "quarel" else _question_from_hub(row, fmt, where))
    if not questions:
        log.warning("no questions in %s", source)
    log.info("%s: %d %s questions", source, len(questions), fmt)
    return questions


# ---------------------------------------------------------------- Climate-FEVER


def _label_name(value: Any, names: tuple[str, ...], field: str, where: str) -> str:
    """A label as its name; the hub stores ClassLabel ints in the order of `names`."""
    if isinstance(value, int) and 0 <= value < len(names):
        value = names[value]
    if value not in names:
        raise DataError(f"{where}: field {field!r} is {value!r}, expected one of {', '.join(names)}")
    return value


def _class_names(feature: Any, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The names of a hub ClassLabel feature, or `fallback` when the feature is not one."""
    names = getattr(feature, "names", None)
    return tuple(names) if names else fallback


def _pairs_from_claim(row: dict, where: str, claim_names: tuple[str, ...],
                      evidence_names: tuple[str, ...]) -> list[ClaimEvidence]:
    """The claim-evidence pairs of one Climate-FEVER claim."""
    claim_id = str(get_field(row, "claim_id", where))
    claim = get_field(row, "claim", where)
    claim_label = _label_name(get_field(row, "claim_label", where), claim_names, "claim_label", where)
    evidences = get_field(row, "evidences", where)
    if not isinstance(evidences, list) or not evidences:
        raise DataError(f"{where}: field 'evidences' must be a non-empty list")
    pairs = []
    for i, ev in enumerate(evidences):
        at = f"{where}: evidences[{i}]"
        pairs.append(ClaimEvidence(
            id=f"{claim_id}:{i}", claim_id=claim_id, claim=claim, claim_label=claim_label,
            evidence=get_field(ev, "evidence", at),
            evidence_label=_label_name(get_field(ev, "evidence_label", at), evidence_names, "evidence_label", at),
            article=get_field(ev, "article", at)))
    return pairs


def _hub_evidence_names(features: Any) -> tuple[str, ...]:
    """Evidence label names from the hub features (a list, Sequence or List of dicts)."""
    evidences = features.get("evidences") if features else None
    inner = evidences[0] if isinstance(evidences, list) else getattr(evidences, "feature", None)
    return _class_names(inner.get("evidence_label") if isinstance(inner, dict) else None, EVIDENCE_LABELS)


def load_climate_fever(source: str, limit_claims: int | None = None) -> list[ClaimEvidence]:
    """Climate-FEVER claim-evidence pairs from the original jsonl or the hub id (split "test")."""
    pairs: list[ClaimEvidence] = []
    n_claims = 0
    if _is_local(source):
        rows: Any = ((f"{source}:{lineno}", row) for lineno, row in numbered_jsonl(source))
        claim_names, evidence_names = CLAIM_LABELS, EVIDENCE_LABELS
    else:
        ds = _load_hub(source, "test")
        rows = ((f"{source} [test] row {i}", row) for i, row in enumerate(ds))
        claim_names = _class_names(ds.features.get("claim_label"), CLAIM_LABELS)
        evidence_names = _hub_evidence_names(ds.features)
    for where, row in rows:
        if limit_claims is not None and n_claims >= limit_claims:
            break
        pairs.extend(_pairs_from_claim(row, where, claim_names, evidence_names))
        n_claims += 1
    log.info("%s: %d claims, %d claim-evidence pairs", source, n_claims, len(pairs))
    return pairs


# ---------------------------------------------------------------- splitting


def split_questions(questions: list[MCQuestion], test_fraction: float,
                    seed: int) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """Seeded shuffle-split into (train, test); both sides keep the shuffled order."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    shuffled = list(questions)
    random.Random(seed).shuffle(shuffled)
    n_test = round(len(shuffled) * test_fraction)
    if n_test == 0 or n_test == len(shuffled):
        raise DataError(f"splitting {len(shuffled)} questions with test_fraction={test_fraction} leaves "
                        f"{len(shuffled) - n_test} train and {n_test} test; use more questions or another fraction")
    return shuffled[n_test:], shuffled[:n_test]


# ---------------------------------------------------------------- display


def questions_to_frame(questions: list[MCQuestion]) -> pd.DataFrame:
    """One row per question for notebook display: id, text, option count, answer letter and text, concept, source."""
    import pandas as pd  # noqa: F811 - imported here so lib.data stays light for the prompt and training code

    rows = []
    for q in questions:
        keyed = 0 <= q.answer < len(q.choices)
        rows.append({"id": q.id, "question": q.question, "n_choices": len(q.choices),
                     "answer": option_letters(len(q.choices))[q.answer] if keyed else None,
                     "answer_text": q.choices[q.answer] if keyed else None,
                     "concept": q.concept, "source": q.source})
    columns = ["id", "question", "n_choices", "answer", "answer_text", "concept", "source"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- the study's splits (step 01)


@dataclasses.dataclass
class Splits:
    """The questions of a run: training questions and every test set, the in-distribution one first."""

    train: list[MCQuestion]
    tests: dict[str, list[MCQuestion]]  # test-set name -> questions; the first is in distribution
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # "train" or a test-set name -> params source

    @property
    def in_distribution(self) -> str:
        """Name of the in-distribution test set."""
        return next(iter(self.tests))

    def teacher_questions(self) -> dict[str, list[MCQuestion]]:
        """What the teacher explains: the training questions and the in-distribution test questions."""
        return {"train": self.train, "test": self.tests[self.in_distribution]}


def _where(src: Any, key: str) -> str:
    """A params data source in messages: its params key, name and resolved file (or hub id and split)."""
    local = resolve_path(src.source)
    place = str(local) if local.exists() else f"hub {src.source} [split {getattr(src, 'split', 'test')}]"
    return f"{key}.source ({getattr(src, 'name', 'claims')!r}: {place})"


def _load_source(src: Any, key: str, limit: int | None = None) -> list[MCQuestion]:
    """Load one params data source (`key`, e.g. data.ood[0]): checked, keyed, non-empty, capped at `limit`."""
    local = resolve_path(src.source)
    where = _where(src, key)
    questions = load_multiple_choice(str(local) if local.exists() else src.source, src.format, src.split)
    check_not_empty(questions, where, "questions")
    check_questions(questions, where)
    check_answer_keys(questions, where, src.format)
    return questions[:limit] if limit else questions


def prepare_splits(params: Any, seed: int) -> Splits:
    """Load, check and split the questions named by the params `data` section, refusing sets that give wrong numbers."""
    keys = {params.train.name: "data.train.name", **{s.name: f"data.ood[{i}].name" for i, s in enumerate(params.ood)}}
    for name, key in keys.items():
        check_set_name(name, key)
    train_where = _where(params.train, "data.train")
    pool = _load_source(params.train, "data.train")
    if params.test is None:
        try:
            train, test = split_questions(pool, params.test_fraction, seed)
        except DataError as exc:
            raise DataError(f"{train_where} with data.test_fraction: {exc}") from exc
        test_where = f"the test split held out of {train_where} (data.test_fraction)"
    else:
        train, test = pool, _load_source(params.test, "data.test")
        test_where = _where(params.test, "data.test")
    train = train[: params.max_train] if params.max_train else train
    cap = params.max_test
    tests = {params.train.name: test[:cap] if cap else test}
    wheres = {params.train.name: test_where}
    held_out = f"{params.train.source} (held out: data.test_fraction={params.test_fraction})"
    sources = {"train": params.train.source, params.train.name: params.test.source if params.test else held_out}
    for i, src in enumerate(params.ood):
        if src.name in tests:
            raise DataError(f"data.ood[{i}].name: test-set name {src.name!r} is used twice; give each set its own name")
        tests[src.name] = _load_source(src, f"data.ood[{i}]", cap)
        wheres[src.name], sources[src.name] = _where(src, f"data.ood[{i}]"), src.source
    for name, questions in tests.items():
        check_disjoint(train, questions, train_where, wheres[name])
    return Splits(train=train, tests=tests, sources=sources)


def split_table(splits: Splits) -> pd.DataFrame:
    """Questions, options and answer-letter balance per split."""
    import pandas as pd

    rows = []
    for name, qs in [("train", splits.train), *splits.tests.items()]:
        letters = Counter(option_letters(len(q.choices))[q.answer] for q in qs if q.answer >= 0)
        rows.append({"split": name, "questions": len(qs), "options": sorted({len(q.choices) for q in qs}),
                     "gold letters": dict(sorted(letters.items())),
                     "in distribution": name in ("train", splits.in_distribution)})
    return pd.DataFrame(rows)


def load_claims(params: Any) -> list[ClaimEvidence]:
    """The claim-evidence pairs named by the params `data.claims` (empty when none are configured)."""
    if params.claims is None:
        return []
    local = resolve_path(params.claims.source)
    pairs = load_climate_fever(str(local) if local.exists() else params.claims.source, params.max_claims)
    check_not_empty(pairs, _where(params.claims, "data.claims"), "claims")
    return pairs


def claims_frame(claims: list[ClaimEvidence]) -> pd.DataFrame:
    """Claim-evidence pairs as a table."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(c) for c in claims], columns=[f.name for f in dataclasses.fields(ClaimEvidence)])


def split_claims(claims: list[ClaimEvidence], test_fraction: float, seed: int) -> tuple[list[ClaimEvidence], list[ClaimEvidence]]:
    """Split claim-evidence pairs by claim (all five evidences of a claim stay together), seeded."""
    ids = sorted({c.claim_id for c in claims})
    if len(ids) < 2:
        return claims, []
    random.Random(seed).shuffle(ids)
    n_test = min(len(ids) - 1, max(1, round(len(ids) * test_fraction)))
    test_ids = set(ids[:n_test])
    return [c for c in claims if c.claim_id not in test_ids], [c for c in claims if c.claim_id in test_ids]


def _remove_stale_tests(folder: Path, names: set[str]) -> None:
    """Delete test files an earlier step 01 wrote for sets that are no longer in the params."""
    for path in sorted(folder.glob("*.jsonl")):
        if path.stem not in names:
            log.info("removing %s: not a test set of these params", path)
            path.unlink()


def write_splits(out: Path, splits: Splits, claims: list[ClaimEvidence], test_fraction: float = 0.3,
                 seed: int = 0) -> list[str]:
    """Write train.jsonl, tests/<name>.jsonl, claims_{train,test}.jsonl and summary.json, and remove old test files."""
    for name, qs in [("train", splits.train), *splits.tests.items()]:
        check_not_empty(qs, f"set {name!r}", "questions to write")
    for name in splits.tests:
        check_set_name(name, "test set")
    paths = [write_jsonl(out / "train.jsonl", splits.train)]
    paths += [write_jsonl(out / "tests" / f"{name}.jsonl", qs) for name, qs in splits.tests.items()]
    claims_train, claims_test = split_claims(claims, test_fraction, seed)
    paths += [write_jsonl(out / "claims_train.jsonl", claims_train),
              write_jsonl(out / "claims_test.jsonl", claims_test)]
    index = [{"name": name, "file": f"tests/{name}.jsonl", "questions": len(qs), "source": splits.sources.get(name)}
             for name, qs in splits.tests.items()]
    summary = {"train": len(splits.train), "train_source": splits.sources.get("train"),
               "tests": {k: len(v) for k, v in splits.tests.items()}, "test_sets": index,
               "in_distribution": splits.in_distribution,
               "claim_evidence_pairs": {"train": len(claims_train), "test": len(claims_test)}}
    paths.append(write_json(out / "summary.json", summary))  # the index: readers read only the sets it lists
    _remove_stale_tests(out / "tests", set(splits.tests))
    return [str(p) for p in paths]


def read_questions(path: str | Path) -> list[MCQuestion]:
    """Questions written by `write_splits` (or any `write_jsonl` of MCQuestion rows)."""
    questions = []
    for lineno, row in numbered_jsonl(path):
        try:
            questions.append(MCQuestion.from_dict(row))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from exc
    return questions


def _summary(folder: Path) -> dict[str, Any]:
    """Step 01's summary.json, which indexes its test sets; a missing or old one says to rerun step 01."""
    path = folder / "summary.json"
    if not path.exists():
        raise MissingArtifact(f"{folder} has no summary.json: run step 01 first (`python -m lib.study ... --steps 01`)")
    summary = read_data_json(path)
    if not isinstance(summary, dict) or not summary.get("test_sets"):
        raise DataError(f"{path} has no 'test_sets' index: an older step 01 wrote it. Rerun step 01 "
                        "(`python -m lib.study PARAMS.yaml --steps 01 --force`)")
    return summary


def _read_set(path: Path, expected: int, summary: Path) -> list[MCQuestion]:
    """One set listed in summary.json, checked to be there with as many questions as listed."""
    if not path.exists():
        raise MissingArtifact(f"{path} is listed in {summary} but missing: rerun step 01 (`--steps 01 --force`)")
    questions = read_questions(path)
    if len(questions) != expected:
        raise DataError(f"{path} holds {len(questions)} questions but {summary} lists {expected}: the folder changed "
                        "after step 01 wrote it; rerun step 01 (`--steps 01 --force`)")
    return questions


def read_test_sets(folder: Path) -> dict[str, list[MCQuestion]]:
    """The test sets listed in the run's 01_data/summary.json, in its order (in-distribution first); no others."""
    summary = _summary(folder)
    return {entry["name"]: _read_set(folder / "tests" / f"{entry['name']}.jsonl", entry["questions"],
                                     folder / "summary.json") for entry in summary["test_sets"]}


def read_splits(folder: Path) -> Splits:
    """The splits step 01 wrote; a missing folder says to run step 01."""
    summary = _summary(folder)
    sources = {"train": summary.get("train_source")} | {e["name"]: e.get("source") for e in summary["test_sets"]}
    return Splits(train=_read_set(folder / "train.jsonl", summary["train"], folder / "summary.json"),
                  tests=read_test_sets(folder), sources={k: v for k, v in sources.items() if v is not None})
