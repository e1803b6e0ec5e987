"""Tests of lib.ratings: judge parsing, the judge with a fake teacher, the blinded sheet and its import."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass

import pytest

from lib.evaluation import ItemResult
from lib.questions import MCQuestion
from lib.ratings import (
    add_human_ratings,
    add_ratings,
    DIMENSIONS,
    export_sheet,
    HUMAN_RATINGS,
    import_sheet,
    judge_prompt,
    JUDGE_RATINGS,
    judge_ratings,
    parse_judgement,
    Rating,
    ratings_frame,
    ratings_summary,
    read_ratings,
    SheetError,
)

Q = MCQuestion(id="q1", question="Where is ice kept?", choices=["oven", "freezer", "desk"], labels=["A", "B", "C"],
               answer=1)
Q2 = MCQuestion(id="q2", question="What is hot?", choices=["fire", "snow"], labels=["A", "B"], answer=0)


def item(run: str, qid: str, rationale: str, prediction: int | None = 1, condition: str = "MT") -> ItemResult:
    return ItemResult(run=run, condition=condition, student="s", seed=0, test_set="csqa", item_id=qid,
                      prediction=prediction, correct=1, unparseable=0, rationale=rationale,
                      rationale_len=len(rationale.split()), output="", cec=math.nan, cec_fc=math.nan,
                      cec_bf=math.nan, seconds=0.0)


# --- judge ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, scores", [
    (" 5\nContrastiveness: 3\nSoundness: 6\nJustification: Clear.", (5, 3, 6)),
    (" **6**/7\ncontrastiveness = 2\nSOUNDNESS: 7 / 7\nJustification: fine", (6, 2, 7)),
    (" 4\nContrastiveness: 4\nSoundness: 4\nJustification: ok\nCompleteness: 1", (4, 4, 4)),  # first one counts
])
def test_parse_judgement_valid(text, scores):
    got, justification, failure = parse_judgement(text)
    assert failure is None and tuple(got[d] for d in DIMENSIONS) == scores and justification


@pytest.mark.parametrize("text, reason", [
    (" 8\nContrastiveness: 3\nSoundness: 6", "completeness 8 is not a whole number from 1 to 7"),
    (" 0\nContrastiveness: 3\nSoundness: 6", "completeness 0"),
    (" 4.5\nContrastiveness: 3\nSoundness: 6", "completeness 4.5"),
    (" 5\nContrastiveness: 3", "no soundness score"),
    (" The explanation is good.", "no completeness score"),
    ("", "no completeness score"),
])
def test_parse_judgement_failures_are_not_numbers(text, reason):
    scores, _, failure = parse_judgement(text)
    assert scores is None and failure.startswith("unparseable") and reason in failure


@dataclass
class FakeCompletion:
    text: str


class FakeTeacher:
    name = "fake-judge"

    def __init__(self, replies: list[str]):
        self.replies = replies
        self.prompts: list[str] = []

    def complete(self, prompts, max_new_tokens=None, temperature=None, n=1, desc="teacher"):
        self.prompts.extend(prompts)
        return [[FakeCompletion(self.replies[i % len(self.replies)])] for i in range(len(prompts))]


def test_judge_ratings_caps_items_per_run_and_records_failures():
    items = [item("A", "q1", "Ice melts in heat."), item("A", "q2", "Fire burns.", 0), item("A", "q1", ""),
             item("B", "q1", "Freezers are cold.", None, condition="FT"), item("B", "q2", "Snow.", 1, condition="FT")]
    teacher = FakeTeacher([" 6\nContrastiveness: 2\nSoundness: 5\nJustification: Good.", " great!"])
    rows = judge_ratings(items, {"q1": Q, "q2": Q2}, teacher, max_items=1, max_new_tokens=32)
    assert [(r.run, r.item_id) for r in rows] == [("A", "q1"), ("B", "q1")]
    assert (rows[0].completeness, rows[0].contrastiveness, rows[0].soundness) == (6, 2, 5)
    assert rows[0].rater == "judge:fake-judge" and rows[0].failure is None and len(rows[0].template_sha256) == 64
    assert rows[1].completeness is None and rows[1].failure.startswith("unparseable") and rows[1].raw == " great!"
    assert "(b) freezer" in teacher.prompts[0] and "Ice melts in heat." in teacher.prompts[0]
    assert "(no answer given)" in teacher.prompts[1]
    summary = ratings_summary(rows, items).set_index("condition")
    assert summary.loc["MT", "completeness"] == 6 and summary.loc["FT", "failed"] == 1


def test_judge_prompt_ends_where_the_first_score_goes():
    assert judge_prompt(Q, 1, "Because.").rstrip().endswith("Completeness:")


# --- human sheet ----------------------------------------------------------------------------------

@pytest.fixture
def sheet(tmp_path):
    items = [item("A", "q1", "Ice melts."), item("B", "q1", "Cold box."), item("A", "q2", "Fire.", 0),
             item("B", "q2", "")]
    paths = export_sheet(items, {"q1": Q, "q2": Q2}, tmp_path, n_items=10, seed=3)
    return paths


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_export_sheet_is_blinded_and_keyed(sheet):
    rows, key = read_rows(sheet["csv"]), read_rows(sheet["key"])
    assert len(rows) == 3 and len(key) == 3  # the item without a rationale is not rated
    assert "run" not in rows[0] and "condition" not in rows[0]
    assert {(k["run"], k["item_id"]) for k in key} == {("A", "q1"), ("B", "q1"), ("A", "q2")}
    html = sheet["html"].read_text()
    assert "<script>" in html and "http" not in html.replace("http-equiv", "")  # self-contained
    assert html.count('class="card"') == 3 and "Save CSV" in html


def test_import_sheet_roundtrip(sheet, tmp_path):
    rows = read_rows(sheet["csv"])
    for r, v in zip(rows, (1, 4, 7)):
        r.update(rater="r1", completeness=v, contrastiveness=v, soundness=v, justification="ok")
    filled = tmp_path / "filled.csv"
    write_rows(filled, rows)
    ratings = import_sheet(filled, sheet["key"])
    key = {k["sheet_row"]: k for k in read_rows(sheet["key"])}
    assert [(r.run, r.item_id, r.rater, r.completeness) for r in ratings] == [
        (key[row["sheet_row"]]["run"], key[row["sheet_row"]]["item_id"], "r1", v) for row, v in zip(rows, (1, 4, 7))]
    assert list(ratings_frame(ratings).columns)[:8] == ["run", "item_id", "rater", "completeness", "contrastiveness",
                                                        "soundness", "justification", "template_sha256"]


def test_import_sheet_reads_a_sheet_saved_by_excel_with_a_byte_order_mark(sheet, tmp_path):
    rows = read_rows(sheet["csv"])
    for r in rows:
        r.update(rater="r1", completeness=5, contrastiveness=5, soundness=5, justification="ok")
    filled = tmp_path / "filled.csv"
    write_rows(filled, rows)
    filled.write_bytes(b"\xef\xbb\xbf" + filled.read_bytes())  # Excel's "CSV UTF-8"
    assert [r.completeness for r in import_sheet(filled, sheet["key"])] == [5] * len(rows)
    filled.write_bytes(filled.read_bytes()[3:].replace(b"ok", b"caf\xe9"))  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"filled.csv:\d+: byte 0xe9 .*re-save the file as UTF-8"):
        import_sheet(filled, sheet["key"])


def test_import_sheet_rejects_bad_rows_naming_each(sheet, tmp_path):
    rows = read_rows(sheet["csv"])
    rows[0].update(rater="r1", completeness=8, contrastiveness=3, soundness=3)     # out of range
    rows[1].update(rater="r1", completeness=2, contrastiveness="", soundness=3)    # missing
    rows[2].update(rater="", completeness="x", contrastiveness=3, soundness="4.5")  # no rater, not whole numbers
    filled = tmp_path / "bad.csv"
    write_rows(filled, rows)
    with pytest.raises(SheetError) as err:
        import_sheet(filled, sheet["key"])
    msg = str(err.value)
    assert "3 bad row(s)" in msg
    assert f"bad.csv:2 (sheet_row {rows[0]['sheet_row']}): completeness '8' is not a whole number from 1 to 7" in msg
    assert f"bad.csv:3 (sheet_row {rows[1]['sheet_row']}): contrastiveness is missing" in msg
    assert "bad.csv:4" in msg and "no rater id" in msg and "completeness 'x'" in msg and "soundness '4.5'" in msg


def test_import_sheet_rejects_unknown_and_repeated_rows_and_missing_columns(sheet, tmp_path):
    rows = read_rows(sheet["csv"])
    good = dict(completeness=3, contrastiveness=3, soundness=3)
    rows = [dict(rows[0], **good), dict(rows[0], **good), dict(rows[1], sheet_row="99", **good)]
    filled = tmp_path / "dup.csv"
    write_rows(filled, rows)
    with pytest.raises(SheetError, match=r"(?s)rated twice.*sheet_row '99' is not in the key"):
        import_sheet(filled, sheet["key"], rater="r2")  # the rater argument stands in for an empty column
    no_col = tmp_path / "nocol.csv"
    write_rows(no_col, [{"sheet_row": "1", "completeness": "3"}])
    with pytest.raises(SheetError, match="missing column.*contrastiveness, soundness"):
        import_sheet(no_col, sheet["key"], rater="r2")


def test_add_ratings_appends_and_refuses_a_second_import(sheet, tmp_path):
    judged = Rating("A", "q1", "judge:x", None, None, None, "", "f" * 64, failure="unparseable: no completeness score")
    path = add_ratings(tmp_path / "ratings.jsonl", [judged])
    human = Rating("A", "q1", "r1", 3, 4, 5, "ok", "")
    add_ratings(path, [human])
    assert read_ratings(path) == [judged, human]
    with pytest.raises(SheetError, match="already holds 1"):
        add_ratings(path, [human])


def test_add_human_ratings_imports_a_sheet_into_the_run_folder_outside_every_step(sheet, tmp_path):
    assert (HUMAN_RATINGS, JUDGE_RATINGS) == ("human_ratings.jsonl", "judge_ratings.jsonl")
    rows = read_rows(sheet["csv"])
    for r in rows:
        r.update(completeness=5, contrastiveness=4, soundness=6, justification="ok")
    filled = tmp_path / "filled.csv"
    write_rows(filled, rows)
    run_dir = tmp_path / "run"
    path = add_human_ratings(run_dir, filled, sheet["key"], rater="r7")
    assert path == run_dir / HUMAN_RATINGS
    assert [(r.rater, r.completeness) for r in read_ratings(path)] == [("r7", 5)] * 3
    assert not (run_dir / "05_evaluation").exists()  # a rerun of step 05 cannot erase it
    with pytest.raises(SheetError, match="already holds 3"):
        add_human_ratings(run_dir, filled, sheet["key"], rater="r7")
    add_human_ratings(run_dir, filled, sheet["key"], rater="r8")
    assert len(read_ratings(path)) == 6
