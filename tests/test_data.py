"""Tests for lib.data, lib.recorded and lib.question_checks: loaders on tiny fixtures (incl. error paths), splitting,
validation, and the real data."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lib import data, files, recorded
from lib.data import load_climate_fever, load_multiple_choice, questions_to_frame, split_questions
from lib.files import read_jsonl, write_jsonl
from lib.params import DataParams
from lib.question_checks import find_overlap, validate_questions
from lib.questions import ClaimEvidence, format_question, MCQuestion, option_letters
from lib.recorded import load_cose, load_palm_rationales
from lib.runs import MissingArtifact

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def write_lines(path: Path, rows: list) -> Path:
    """Write rows as JSON lines; a None row becomes a blank line (to check file line numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def csqa_row(qid: str, key: str | None = "B", n: int = 5, concept: str = "dog", labels: str = "ABCDE") -> dict:
    """A CommonsenseQA/ARC original-schema row."""
    row = {"id": qid, "question": {"question_concept": concept, "stem": f"Where is the {concept} {qid}?",
                                   "choices": [{"label": labels[i], "text": f"opt{i}"} for i in range(n)]}}
    if key is not None:
        row["answerKey"] = key
    return row


def q(qid: str, choices: list[str] | None = None, answer: int = 0, text: str = "Why?") -> MCQuestion:
    """A small in-memory question."""
    choices = choices or ["x", "y", "z"]
    return MCQuestion(id=qid, question=text, choices=choices, labels=list("ABCDE"[: len(choices)]), answer=answer)


# ---------------------------------------------------------------- multiple choice, tiny fixtures


def test_load_commonsenseqa_local(tmp_path):
    path = write_lines(tmp_path / "csqa.jsonl", [csqa_row("q1", "B"), csqa_row("q2", "E", concept="cat"), csqa_row("q3", None)])
    qs = load_multiple_choice(str(path), "commonsenseqa", split="ignored")
    assert [x.id for x in qs] == ["q1", "q2", "q3"]
    assert qs[0].choices == [f"opt{i}" for i in range(5)] and qs[0].labels == list("ABCDE")
    assert [x.answer for x in qs] == [1, 4, -1]
    assert qs[1].concept == "cat" and qs[1].question == "Where is the cat q2?"
    assert {x.source for x in qs} == {"commonsenseqa"}
    assert [x.id for x in load_multiple_choice(str(path), "commonsenseqa", limit=2)] == ["q1", "q2"]


def test_load_arc_local_digit_labels_and_option_counts(tmp_path):
    rows = [csqa_row("a1", "3", n=4, labels="1234"), csqa_row("a2", "C", n=3), csqa_row("a3", "E", n=5)]
    for r in rows:
        del r["question"]["question_concept"]  # ARC has none
    qs = load_multiple_choice(str(write_lines(tmp_path / "arc.jsonl", rows)), "arc")
    assert [len(x.choices) for x in qs] == [4, 3, 5]
    assert qs[0].labels == ["1", "2", "3", "4"] and qs[0].answer == 2
    assert [x.answer for x in qs[1:]] == [2, 4]
    assert all(x.concept is None and x.source == "arc" for x in qs)


def _drop_stem(r: dict) -> None:
    del r["question"]["stem"]


def _bad_key(r: dict) -> None:
    r["answerKey"] = "F"


def _one_choice(r: dict) -> None:
    r["question"]["choices"] = r["question"]["choices"][:1]


def _choice_without_text(r: dict) -> None:
    del r["question"]["choices"][1]["text"]


def _drop_concept(r: dict) -> None:
    del r["question"]["question_concept"]


@pytest.mark.parametrize("corrupt, field", [
    (_drop_stem, "question.stem"),
    (_bad_key, "answerKey"),
    (_one_choice, "question.choices"),
    (_choice_without_text, "question.choices[1]"),
    (_drop_concept, "question.question_concept"),
])
def test_load_multiple_choice_bad_row_names_line_and_field(tmp_path, corrupt, field):
    bad = csqa_row("q3")
    corrupt(bad)
    path = write_lines(tmp_path / "bad.jsonl", [csqa_row("q1"), None, bad])  # blank line 2: bad row is on line 3
    with pytest.raises(ValueError) as err:
        load_multiple_choice(str(path), "commonsenseqa")
    assert f"{path}:3" in str(err.value) and field in str(err.value)


def test_load_multiple_choice_bad_json_and_unknown_format_and_missing_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(csqa_row("q1")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        load_multiple_choice(str(path), "commonsenseqa")
    with pytest.raises(ValueError, match="unknown multiple-choice format 'mmlu'"):
        load_multiple_choice(str(path), "mmlu")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_multiple_choice(str(tmp_path / "nope.jsonl"), "arc")


class FakeHub:
    """Stands in for datasets.load_dataset and records its arguments."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def __call__(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        return self.rows


def test_load_multiple_choice_hub_schemas(monkeypatch):
    import datasets

    csqa = FakeHub([
        {"id": "h1", "question": "Q1?", "question_concept": "c", "answerKey": "C",
         "choices": {"label": list("ABCDE"), "text": list("vwxyz")}},
        {"id": "h2", "question": "Q2?", "question_concept": "c", "answerKey": "",  # hub test split: no key
         "choices": {"label": list("ABCDE"), "text": list("vwxyz")}},
    ])
    monkeypatch.setattr(datasets, "load_dataset", csqa)
    qs = load_multiple_choice("tau/commonsense_qa", "commonsenseqa", split="validation")
    assert csqa.calls == [("tau/commonsense_qa", None, "validation")]
    assert [(x.answer, x.concept, x.choices[x.answer]) for x in qs] == [(2, "c", "x"), (-1, "c", "z")]

    arc = FakeHub([{"id": "e1", "question": "Q?", "answerKey": "2", "choices": {"text": ["p", "q", "r"], "label": ["1", "2", "3"]}}])
    monkeypatch.setattr(datasets, "load_dataset", arc)
    (x,) = load_multiple_choice("allenai/ai2_arc:ARC-Easy", "arc", split="test")
    assert arc.calls == [("allenai/ai2_arc", "ARC-Easy", "test")]
    assert (x.question, x.choices, x.answer, x.concept) == ("Q?", ["p", "q", "r"], 1, None)

    obqa = FakeHub([{"id": "o1", "question_stem": "Stem?", "answerKey": "D", "choices": {"text": list("abcd"), "label": list("ABCD")}}])
    monkeypatch.setattr(datasets, "load_dataset", obqa)
    assert load_multiple_choice("allenai/openbookqa:main", "openbookqa")[0].question == "Stem?"

    monkeypatch.setattr(datasets, "load_dataset", FakeHub([{"id": "z", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}]))
    with pytest.raises(ValueError, match=r"row 0: missing field 'question'"):
        load_multiple_choice("allenai/qasc", "qasc")


# ---------------------------------------------------------------- Climate-FEVER, CoS-E, PaLM


def claim_row(cid: str, label: str = "SUPPORTS", ev_labels: tuple[str, ...] = ("SUPPORTS", "NOT_ENOUGH_INFO")) -> dict:
    """A Climate-FEVER original-schema row."""
    return {"claim_id": cid, "claim": f"claim {cid}", "claim_label": label, "evidences": [
        {"evidence_id": f"Art {cid}:{i}", "evidence_label": el, "article": f"Art {cid}", "evidence": f"ev {cid}.{i}",
         "entropy": 0.0, "votes": [el, None]} for i, el in enumerate(ev_labels)]}


def test_load_climate_fever_local(tmp_path):
    path = write_lines(tmp_path / "cf.jsonl", [claim_row("7"), claim_row("9", "DISPUTED", ("REFUTES", "SUPPORTS", "NOT_ENOUGH_INFO")), claim_row("11")])
    pairs = load_climate_fever(str(path))
    assert len(pairs) == 7
    assert [p.id for p in pairs[:5]] == ["7:0", "7:1", "9:0", "9:1", "9:2"]
    assert pairs[2] == ClaimEvidence(id="9:0", claim_id="9", claim="claim 9", claim_label="DISPUTED",
                                     evidence="ev 9.0", evidence_label="REFUTES", article="Art 9")
    assert [p.id for p in load_climate_fever(str(path), limit_claims=1)] == ["7:0", "7:1"]


def test_load_climate_fever_bad_rows(tmp_path):
    path = write_lines(tmp_path / "cf.jsonl", [claim_row("1"), claim_row("2", "MAYBE")])
    with pytest.raises(ValueError, match=r"cf.jsonl:2: field 'claim_label' is 'MAYBE'"):
        load_climate_fever(str(path))
    row = claim_row("3")
    del row["evidences"][1]["article"]
    path = write_lines(tmp_path / "cf2.jsonl", [row])
    with pytest.raises(ValueError, match=r"cf2.jsonl:1: evidences\[1\].*'article'"):
        load_climate_fever(str(path))


def test_load_climate_fever_hub_decodes_class_labels(monkeypatch):
    import datasets
    from datasets import ClassLabel, Dataset, Features, Value

    ev = {"evidence_id": Value("string"), "evidence_label": ClassLabel(names=["SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO"]),
          "article": Value("string"), "evidence": Value("string")}
    features = Features({"claim_id": Value("string"), "claim": Value("string"),
                         "claim_label": ClassLabel(names=["SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO", "DISPUTED"]),
                         "evidences": [ev]})
    ds = Dataset.from_list([{"claim_id": "0", "claim": "c", "claim_label": 3, "evidences": [
        {"evidence_id": "a:1", "evidence_label": 1, "article": "a", "evidence": "e1"},
        {"evidence_id": "a:2", "evidence_label": 2, "article": "a", "evidence": "e2"}]}], features=features)
    hub = FakeHub(ds)
    monkeypatch.setattr(datasets, "load_dataset", hub)
    pairs = load_climate_fever("climate_fever")
    assert hub.calls == [("climate_fever", None, "test")]
    assert [(p.id, p.claim_label, p.evidence_label) for p in pairs] == [("0:0", "DISPUTED", "REFUTES"), ("0:1", "DISPUTED", "NOT_ENOUGH_INFO")]


def test_load_cose(tmp_path):
    rows = [{"id": f"c{i}", "explanation": {"open-ended": f"because {i}", "selected": "x"}} for i in range(3)]
    assert load_cose(str(write_lines(tmp_path / "cose.jsonl", rows))) == {"c0": "because 0", "c1": "because 1", "c2": "because 2"}
    with pytest.raises(ValueError, match=r"dup.jsonl:3: id 'c0' appears twice"):
        load_cose(str(write_lines(tmp_path / "dup.jsonl", rows[:2] + [rows[0]])))
    with pytest.raises(ValueError, match=r"miss.jsonl:2: missing field 'explanation.open-ended'"):
        load_cose(str(write_lines(tmp_path / "miss.jsonl", [rows[0], {"id": "c9", "explanation": {"selected": "x"}}])))


def palm_folder(root: Path, completions: list[list[str]], n_rows: int = 3) -> Path:
    """A distilling-step-by-step style folder: cqa_test.json plus llm/test_CoT_<k>.json batches."""
    write_lines(root / "cqa_test.json", [{"id": f"p{i}", "question": "?", "choices": [], "answer": ""} for i in range(n_rows)])
    (root / "llm").mkdir(parents=True, exist_ok=True)
    for k, batch in enumerate(completions):
        (root / "llm" / f"test_CoT_{k}.json").write_text(json.dumps(batch), encoding="utf-8")
    return root


def test_load_palm_rationales_joins_batches_and_cuts_hallucinated_questions(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded, "PALM_BATCH", 2)  # so 3 rows span two files, as 1221 rows span two upstream
    folder = palm_folder(tmp_path, [[" R0. So the answer is (a) x.\n\nQ: made up?\nA: y", "R1. So the answer is (b) y."],
                                    ["R2. So the answer is (c) z.\n\nQ: more\n\nQ: again"]])
    got = load_palm_rationales(str(folder), "test")
    assert got == {"p0": "R0. So the answer is (a) x.", "p1": "R1. So the answer is (b) y.", "p2": "R2. So the answer is (c) z."}
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_palm_rationales(str(folder), "dev")
    with pytest.raises(FileNotFoundError, match="cqa_train.json"):
        load_palm_rationales(str(folder), "train")


def test_load_palm_rationales_count_mismatch_and_short_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded, "PALM_BATCH", 2)
    with pytest.raises(ValueError, match="2 test completions for 3 rows"):
        load_palm_rationales(str(palm_folder(tmp_path / "a", [["x", "y"]])), "test")
    with pytest.raises(ValueError, match="every file but the last must hold exactly 2"):
        load_palm_rationales(str(palm_folder(tmp_path / "b", [["x"], ["y", "z"]])), "test")


# ---------------------------------------------------------------- round trip, splitting, validation, display


def test_dataclasses_round_trip_through_jsonl(tmp_path):
    qs = [q("a", answer=2), MCQuestion("b", "Q?", ["u", "v"], ["1", "2"], -1, concept="c", source="arc")]
    pairs = [ClaimEvidence("1:0", "1", "c", "SUPPORTS", "e", "REFUTES", "art")]
    write_jsonl(tmp_path / "q.jsonl", qs)
    write_jsonl(tmp_path / "p.jsonl", pairs)
    assert [MCQuestion.from_dict(d) for d in read_jsonl(tmp_path / "q.jsonl")] == qs
    assert [ClaimEvidence.from_dict(d) for d in read_jsonl(tmp_path / "p.jsonl")] == pairs
    with pytest.raises(ValueError, match="missing field.*answer"):
        MCQuestion.from_dict({"id": "a", "question": "?", "choices": [], "labels": []})


def test_split_questions_is_seeded_disjoint_and_complete():
    qs = [q(f"q{i}") for i in range(50)]
    train, test = split_questions(qs, 0.3, seed=1)
    assert (len(train), len(test)) == (35, 15)
    assert {x.id for x in train}.isdisjoint({x.id for x in test})
    assert {x.id for x in train} | {x.id for x in test} == {x.id for x in qs}
    assert split_questions(qs, 0.3, seed=1) == (train, test)
    assert {x.id for x in split_questions(qs, 0.3, seed=2)[1]} != {x.id for x in test}
    assert [x.id for x in qs] == [f"q{i}" for i in range(50)]  # input untouched


@pytest.mark.parametrize("n, fraction", [(3, 0.1), (3, 0.9), (1, 0.5)])
def test_split_questions_refuses_an_empty_side(n, fraction):
    with pytest.raises(ValueError, match="leaves"):
        split_questions([q(f"q{i}") for i in range(n)], fraction, seed=0)


def test_split_questions_rejects_bad_fraction():
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_questions([q("a"), q("b")], 1.0, seed=0)


def test_validate_questions_finds_each_problem():
    assert validate_questions([q("a"), q("b", answer=-1)]) == []
    problems = validate_questions([
        q("dup"), q("dup"),
        q("range", answer=3),
        q("empty-q", text="  "),
        q("empty-c", choices=["x", " ", "z"]),
        q("same", choices=["red car", "Red  car", "bus"]),
        q("one", choices=["only"]),
    ])
    text = "\n".join(problems)
    assert "id 'dup' appears 2 times" in text
    assert "range: answer 3 out of range for 3 choices" in text
    assert "empty-q: empty question text" in text
    assert "empty-c: choice 1 is empty" in text
    assert "same: duplicate choice text 'red car'" in text
    assert "one: only 1 choice(s)" in text
    assert len(problems) == 6


def test_option_letters_and_format_question():
    assert option_letters(5) == ["a", "b", "c", "d", "e"]
    assert option_letters(0) == []
    with pytest.raises(ValueError):
        option_letters(27)
    assert format_question(q("a", choices=["pen", "ink"])) == "Q: Why?\nAnswer Choices:\n(a) pen\n(b) ink"


def test_questions_to_frame():
    frame = questions_to_frame([q("a", answer=2), MCQuestion("b", "Q?", ["u", "v"], ["1", "2"], -1, concept="c", source="arc")])
    assert list(frame.columns) == ["id", "question", "n_choices", "answer", "answer_text", "concept", "source"]
    assert frame.iloc[0][["answer", "answer_text", "n_choices"]].tolist() == ["c", "z", 3]
    assert frame.iloc[1][["answer", "answer_text"]].isna().all() and frame.iloc[1]["concept"] == "c"


# ---------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="module")
def csqa(shared) -> dict[str, list[MCQuestion]]:
    folder = shared / "commonsenseqa"
    return {split: load_multiple_choice(str(folder / name), "commonsenseqa") for split, name in
            [("train", "train_rand_split.jsonl"), ("dev", "dev_rand_split.jsonl"), ("test", "test_rand_split_no_answers.jsonl")]}


def test_real_commonsenseqa(csqa):
    assert {k: len(v) for k, v in csqa.items()} == {"train": 9741, "dev": 1221, "test": 1140}
    for split, qs in csqa.items():
        assert all(len(x.choices) == 5 and x.labels == list("ABCDE") and x.concept for x in qs), split
    assert all(x.answer == -1 for x in csqa["test"])
    assert all(0 <= x.answer < 5 for x in csqa["train"] + csqa["dev"])
    # the only problems in the real set are repeated option texts (e.g. 'pantry' twice)
    problems = {split: validate_questions(qs) for split, qs in csqa.items()}
    assert all("duplicate choice text" in p for ps in problems.values() for p in ps)
    assert {k: len(v) for k, v in problems.items()} == {"train": 122, "dev": 24, "test": 20}


def test_real_arc_easy_dev(shared):
    qs = load_multiple_choice(str(shared / "arc" / "ARC-Easy" / "ARC-Easy-Dev.jsonl"), "arc")
    assert len(qs) == 570
    assert Counter(len(x.choices) for x in qs) == {4: 567, 3: 1, 5: 2}
    digit = [x for x in qs if x.labels[0] == "1"]
    assert len(digit) == 21 and all(x.labels == ["1", "2", "3", "4"] for x in digit)
    assert all(0 <= x.answer < len(x.choices) for x in qs)
    assert validate_questions(qs) == []


def test_real_climate_fever(shared):
    pairs = load_climate_fever(str(shared / "climate_fever" / "climate-fever.jsonl"))
    assert len(pairs) == 7675 and len({p.claim_id for p in pairs}) == 1535 and len({p.id for p in pairs}) == 7675
    claims = {p.claim_id: p.claim_label for p in pairs}
    assert Counter(claims.values()) == {"SUPPORTS": 654, "NOT_ENOUGH_INFO": 474, "REFUTES": 253, "DISPUTED": 154}
    assert Counter(p.evidence_label for p in pairs) == {"NOT_ENOUGH_INFO": 4930, "SUPPORTS": 1943, "REFUTES": 802}


def test_real_cose_ids_match_commonsenseqa(shared, csqa):
    for split in ("train", "dev"):
        cose = load_cose(str(shared / "cos_e" / "v1.11" / f"cose_{split}_v1.11.jsonl"))
        assert set(cose) == {x.id for x in csqa[split]}, split


def teacher_accuracy(rationales: dict[str, str], questions: list[MCQuestion]) -> float:
    """Share of rationales whose text after 'So the answer is (x)' equals the gold choice text."""
    right = 0
    for x in questions:
        said = rationales[x.id].rsplit("So the answer is", 1)[-1].strip().rstrip(".")
        said = re.sub(r"^\([a-e]\)\s*", "", said)
        right += said == x.choices[x.answer]
    return right / len(questions)


@pytest.mark.parametrize("split, csqa_split, n, accuracy", [("test", "dev", 1221, 77.2), ("train", "train", 9741, 74.3)])
def test_real_palm_rationales_join(shared, csqa, split, csqa_split, n, accuracy):
    rationales = load_palm_rationales(str(shared / "teacher_rationales" / "distilling_step_by_step_cqa"), split)
    assert len(rationales) == n
    assert set(rationales) == {x.id for x in csqa[csqa_split]}
    assert all("So the answer is" in r and "\n\nQ:" not in r for r in rationales.values())
    assert round(100 * teacher_accuracy(rationales, csqa[csqa_split]), 1) == accuracy


def test_shipped_samples_load_cleanly():
    if not (SAMPLE / "commonsenseqa_sample.jsonl").exists() or not (SAMPLE / "climate_fever_sample.jsonl").exists():
        pytest.skip("data/sample files not written yet")
    qs = load_multiple_choice(str(SAMPLE / "commonsenseqa_sample.jsonl"), "commonsenseqa")
    assert len(qs) == 60 and validate_questions(qs) == []
    pairs = load_climate_fever(str(SAMPLE / "climate_fever_sample.jsonl"))
    assert len(pairs) == 50 and len({p.claim_id for p in pairs}) == 10


# ---------------------------------------------------------------- step 01: what it refuses, what it writes, what is read


def mc_file(path: Path, ids: list[str], key: str | None = "B", fmt_rows: list[dict] | None = None) -> Path:
    """A CommonsenseQA-schema file of questions with these ids (each its own text)."""
    return write_lines(path, fmt_rows if fmt_rows is not None else [csqa_row(i, key) for i in ids])


def data_params(train: Path, test: Path | None = None, ood: tuple[Path, ...] = (), names: tuple[str, ...] = (),
                **extra):
    """A validated params `data` section over local commonsenseqa-format files."""
    def src(name: str, path: Path) -> dict:
        return {"name": name, "format": "commonsenseqa", "source": str(path)}

    names = names or tuple(f"ood{i}" for i in range(len(ood)))
    return DataParams.model_validate({"train": src("tr", train), "test": src("te", test) if test else None,
                                      "ood": [src(n, p) for n, p in zip(names, ood)], **extra})


def test_write_splits_replaces_old_test_sets_and_readers_follow_the_index(tmp_path):
    out = tmp_path / "01_data"
    data.write_splits(out, data.Splits(train=[q("t1"), q("t2")], tests={"csqa": [q("a")], "old-ood": [q("b")]}), [])
    current = data.Splits(train=[q("t1"), q("t2")], tests={"csqa": [q("a")], "zeta": [q("z")], "arc": [q("c"), q("d")]})
    data.write_splits(out, current, [])
    write_jsonl(out / "tests" / "by-hand.jsonl", [q("x")])  # a file nobody listed is never evaluated
    assert not (out / "tests" / "old-ood.jsonl").exists()
    assert list(data.read_test_sets(out)) == ["csqa", "zeta", "arc"]  # params order, in-distribution first
    assert data.read_test_sets(out) == current.tests
    assert data.read_splits(out).tests == current.tests and data.read_splits(out).train == current.train
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [(e["name"], e["file"], e["questions"]) for e in summary["test_sets"]] == [
        ("csqa", "tests/csqa.jsonl", 1), ("zeta", "tests/zeta.jsonl", 1), ("arc", "tests/arc.jsonl", 2)]
    assert summary["in_distribution"] == "csqa"


def test_readers_refuse_an_old_or_changed_01_data_folder(tmp_path):
    out = tmp_path / "01_data"
    data.write_splits(out, data.Splits(train=[q("t1"), q("t2")], tests={"csqa": [q("a")], "arc": [q("c")]}), [])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    write_jsonl(out / "tests" / "arc.jsonl", [q("c"), q("e")])
    with pytest.raises(ValueError, match=r"arc.jsonl holds 2 questions but .*summary.json lists 1.*rerun step 01"):
        data.read_test_sets(out)
    (out / "tests" / "arc.jsonl").unlink()
    with pytest.raises(MissingArtifact, match=r"arc.jsonl is listed in .*summary.json but missing"):
        data.read_test_sets(out)
    del summary["test_sets"]  # as an older step 01 wrote it
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    with pytest.raises(files.DataError, match=r"no 'test_sets' index.*Rerun step 01"):
        data.read_splits(out)


@pytest.mark.parametrize("role, key", [("train", "data.train.source"), ("test", "data.test.source"),
                                       ("ood", r"data.ood\[0\].source")])
def test_prepare_splits_refuses_a_set_without_answer_keys(tmp_path, role, key):
    files = {"train": mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(6)]),
             "test": mc_file(tmp_path / "test.jsonl", ["s1", "s2"]), "ood": mc_file(tmp_path / "ood.jsonl", ["o1"])}
    unkeyed = ["u1", "u2", "u3"] if role != "train" else ["t0", "u1", "u2", "u3"]
    files[role] = write_lines(tmp_path / f"{role}-nokey.jsonl",
                              [csqa_row(i, None if i.startswith("u") else "B") for i in unkeyed])
    with pytest.raises(ValueError, match=rf"{key} \('\w+': .*{role}-nokey.jsonl\): 3 of {len(unkeyed)} questions have "
                                         r"no answer key \(field 'answerKey'; ids 'u1', 'u2', 'u3'\)"):
        data.prepare_splits(data_params(files["train"], files["test"], (files["ood"],)), seed=0)


@pytest.mark.parametrize("role, key", [("train", "data.train.source"), ("test", "data.test.source"),
                                       ("ood", r"data.ood\[0\].source")])
@pytest.mark.parametrize("text", ["", "\n \n"])
def test_prepare_splits_refuses_an_empty_set(tmp_path, role, key, text):
    files = {"train": mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(6)]),
             "test": mc_file(tmp_path / "test.jsonl", ["s1", "s2"]), "ood": mc_file(tmp_path / "ood.jsonl", ["o1"])}
    files[role] = tmp_path / f"{role}-empty.jsonl"
    files[role].write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{key} \('\w+': .*{role}-empty.jsonl\): no questions; the file is empty"):
        data.prepare_splits(data_params(files["train"], files["test"], (files["ood"],)), seed=0)


def test_empty_claims_and_empty_sets_to_write_are_refused(tmp_path):
    (tmp_path / "claims.jsonl").write_text("", encoding="utf-8")
    params = DataParams.model_validate({"train": {"name": "tr", "format": "commonsenseqa",
                                                  "source": str(mc_file(tmp_path / "t.jsonl", ["t1", "t2"]))},
                                        "claims": {"source": str(tmp_path / "claims.jsonl")}})
    with pytest.raises(ValueError, match=r"data.claims.source \(.*claims.jsonl\): no claims"):
        data.load_claims(params)
    with pytest.raises(ValueError, match=r"set 'arc': no questions to write"):
        data.write_splits(tmp_path / "01_data", data.Splits(train=[q("t1")], tests={"csqa": [q("a")], "arc": []}), [])


@pytest.mark.parametrize("name", ["arc/easy", "../up", ".hidden", "a b"])
def test_prepare_splits_refuses_a_test_set_name_that_is_not_a_file_name(tmp_path, name):
    files = [mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(6)]), mc_file(tmp_path / "ood.jsonl", ["o1"])]
    with pytest.raises(ValueError, match=r"data.ood\[0\].name: test-set name .* must be letters, digits"):
        data.prepare_splits(data_params(files[0], ood=(files[1],), names=(name,)), seed=0)


def _same_id_other_text(rows: list[dict]) -> None:
    rows[1]["question"]["stem"] = "A different question?"  # id t1 of the train file


def _same_text_and_options(rows: list[dict]) -> None:
    rows[1]["id"] = "new-id"
    rows[1]["question"]["choices"] = rows[1]["question"]["choices"][::-1]  # the order of options does not matter


@pytest.mark.parametrize("role, key", [("test", "data.test.source"), ("ood", r"data.ood\[0\].source")])
@pytest.mark.parametrize("leak, shown", [(_same_id_other_text, "id 't1'"), (_same_text_and_options, "'new-id' = train 't1'")])
def test_prepare_splits_refuses_test_questions_seen_in_training(tmp_path, role, key, leak, shown):
    train = mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(4)])
    rows = [csqa_row("s0"), csqa_row("t1")]
    leak(rows)
    files = {"test": mc_file(tmp_path / "test.jsonl", ["s1"]), "ood": mc_file(tmp_path / "ood.jsonl", ["o1"])}
    files[role] = write_lines(tmp_path / f"{role}-leak.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{key} \(.*{role}-leak.jsonl\) shares 1 questions with the training set "
                                         rf"data.train.source \(.*train.jsonl\): {re.escape(shown)}"):
        data.prepare_splits(data_params(train, files["test"], (files["ood"],)), seed=0)


def test_prepare_splits_keeps_questions_that_share_only_their_text(tmp_path, caplog):
    train = mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(4)])
    other = csqa_row("s9")
    other["question"]["stem"] = csqa_row("t2")["question"]["stem"]
    other["question"]["choices"][0]["text"] = "something else"  # as ARC-Easy test repeats train stems with new options
    ood = write_lines(tmp_path / "ood.jsonl", [csqa_row("o1"), other])
    splits = data.prepare_splits(data_params(train, mc_file(tmp_path / "test.jsonl", ["s1"]), (ood,)), seed=0)
    assert [x.id for x in splits.tests["ood0"]] == ["o1", "s9"]
    assert "1 questions have the text of a training question but other options" in caplog.text


def test_held_out_split_is_checked_and_written_with_its_sources(tmp_path):
    train = mc_file(tmp_path / "train.jsonl", [f"t{i}" for i in range(10)])
    splits = data.prepare_splits(data_params(train, test_fraction=0.3, max_test=2), seed=1)
    assert (len(splits.train), len(splits.tests["tr"])) == (7, 2)
    assert splits.sources == {"train": str(train), "tr": f"{train} (held out: data.test_fraction=0.3)"}
    data.write_splits(tmp_path / "01_data", splits, [])
    assert data.read_splits(tmp_path / "01_data") == splits


# ---------------------------------------------------------------- encodings


def test_files_with_a_byte_order_mark_load(tmp_path, monkeypatch):
    path = tmp_path / "excel.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(csqa_row(i)) + "\r\n" for i in ("q1", "q2")).encode())
    assert [x.id for x in load_multiple_choice(str(path), "commonsenseqa")] == ["q1", "q2"]
    monkeypatch.setattr(recorded, "PALM_BATCH", 2)
    folder = palm_folder(tmp_path / "palm", [["R0.", "R1."]], n_rows=2)
    for f in (folder / "cqa_test.json", folder / "llm" / "test_CoT_0.json"):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert load_palm_rationales(str(folder), "test") == {"p0": "R0.", "p1": "R1."}


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(csqa_row(i)) for i in ("q1", "q2")] + ['{"id": "q3", "question": {"stem": "Caf\u00e9?"}}']
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: byte 0xe9 at byte 39 of the line is not UTF-8; "
                                         r"re-save the file as UTF-8"):
        load_multiple_choice(str(path), "commonsenseqa")
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_text(lines[0] + "\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"utf16.jsonl:1: the file is UTF-16 or UTF-32.*re-save it as UTF-8"):
        load_cose(str(utf16))
    folder = palm_folder(tmp_path / "palm", [["R0\u00e9."]], n_rows=1)
    (folder / "llm" / "test_CoT_0.json").write_bytes(json.dumps(["R0\u00e9."], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"test_CoT_0.json:1: byte 0xe9 .* not UTF-8"):
        load_palm_rationales(str(folder), "test")


# ---------------------------------------------------------------- step 01 on the real data


def test_real_commonsenseqa_test_split_without_answers_is_refused(shared):
    folder = shared / "commonsenseqa"
    params = data_params(folder / "dev_rand_split.jsonl", ood=(folder / "test_rand_split_no_answers.jsonl",))
    with pytest.raises(ValueError, match=r"data.ood\[0\].source .*test_rand_split_no_answers.jsonl\): "
                                         r"1140 of 1140 questions have no answer key"):
        data.prepare_splits(params, seed=0)


def test_real_arc_easy_test_repeats_train_questions(shared):
    """Three ARC-Easy test questions repeat a training question (text and options); four more repeat only the text."""
    folder = shared / "arc" / "ARC-Easy"
    params = DataParams.model_validate({
        "train": {"name": "arc-easy", "format": "arc", "source": str(folder / "ARC-Easy-Train.jsonl")},
        "test": {"name": "arc-easy", "format": "arc", "source": str(folder / "ARC-Easy-Test.jsonl")}})
    with pytest.raises(ValueError, match=r"data.test.source .*ARC-Easy-Test.jsonl\) shares 3 questions with the "
                                         r"training set data.train.source .*ARC-Easy-Train.jsonl\)"):
        data.prepare_splits(params, seed=0)
    same, same_text = find_overlap(load_multiple_choice(str(folder / "ARC-Easy-Train.jsonl"), "arc"),
                                   load_multiple_choice(str(folder / "ARC-Easy-Dev.jsonl"), "arc"))
    assert (len(same), len(same_text)) == (0, 1)


def test_real_commonsenseqa_train_dev_and_arc_ood_pass(shared):
    params = data_params(shared / "commonsenseqa" / "train_rand_split.jsonl",
                         shared / "commonsenseqa" / "dev_rand_split.jsonl", max_test=50)
    params.ood = [{"name": "arc-easy", "format": "arc", "source": str(shared / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl")}]
    splits = data.prepare_splits(params, seed=0)
    assert (len(splits.train), list(splits.tests), len(splits.tests["arc-easy"])) == (9741, ["tr", "arc-easy"], 50)
