"""Ratings of student explanations: an LLM judge, and a blinded sheet for human raters (seed 001).

Each explanation is rated on three Likert scales from 1 to 7: completeness (every step needed to
reach the answer), contrastiveness (why the other options are wrong) and soundness (true statements,
valid reasoning), with a short justification. Judge and human ratings share one schema, `Rating`;
the rater is `judge:<model spec>` or the human rater's id. They live in two files: step 05 writes the
judge's to `05_evaluation/judge_ratings.jsonl` (JUDGE_RATINGS), and human ratings are imported into
`<run_dir>/human_ratings.jsonl` (HUMAN_RATINGS, by `add_human_ratings`), outside every step folder, so
that rerunning step 05 cannot erase them. Step 06 reads both.

The human sheet is blinded: rows are shuffled and carry only a sheet row id, the question, the
options and the explanation; which run wrote which explanation is kept in a separate key file that
the raters do not see. `import_sheet` reads a filled sheet back, rejecting out-of-range and missing
scores with the row named.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Sequence

from lib.files import atomic_write_text, read_jsonl, read_text, write_jsonl
from lib.prompts import load_template
from lib.questions import format_question, MCQuestion, option_letters

log = logging.getLogger(__name__)

DIMENSIONS = ("completeness", "contrastiveness", "soundness")
LIKERT = (1, 7)
SHEET_COLUMNS = ("sheet_row", "question", "answer", "explanation", "rater", *DIMENSIONS, "justification")
KEY_COLUMNS = ("sheet_row", "run", "item_id")
JUDGE_RATINGS = "judge_ratings.jsonl"  # in 05_evaluation/: the judge's ratings, rewritten by every run of step 05
HUMAN_RATINGS = "human_ratings.jsonl"  # in the run folder: imported human ratings, an input of step 06


@dataclasses.dataclass
class Rating:
    """One rater's scores of one explanation (a row of judge_ratings.jsonl or human_ratings.jsonl); None on failure."""

    run: str
    item_id: str
    rater: str  # "judge:<model spec>" or a human rater's id
    completeness: int | None
    contrastiveness: int | None
    soundness: int | None
    justification: str
    template_sha256: str  # the judge template's hash; "" for human ratings (the sheet has no prompt)
    failure: str | None = None  # why a judgement has no scores ("unparseable: ..."); None when valid
    raw: str = ""  # the judge's completion as generated


# ---------------------------------------------------------------- LLM judge


def judge_prompt(q: MCQuestion, prediction: int | None, explanation: str) -> str:
    """The judge prompt for one explanation of the student's chosen answer."""
    if prediction is None or not 0 <= prediction < len(q.choices):
        answer = "(no answer given)"
    else:
        answer = f"({option_letters(len(q.choices))[prediction]}) {q.choices[prediction]}"
    return load_template("judge").render(question=format_question(q), answer=answer, explanation=explanation)


_SCORE = {dim: re.compile(rf"{dim}\s*[:=\-]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*7)?", re.IGNORECASE)
          for dim in DIMENSIONS}
_JUSTIFICATION = re.compile(r"justification\s*[:=\-]\s*(.+)", re.IGNORECASE | re.DOTALL)


def parse_judgement(text: str) -> tuple[dict[str, int] | None, str, str | None]:
    """(scores by dimension or None, justification, failure) from a judge completion.

    The completion continues the prompt's closing "Completeness:", so the text is read with it put
    back. Every dimension needs a whole number from 1 to 7 (the first one given counts); anything
    else is a failure, never a guessed number.
    """
    full = "Completeness:" + text
    scores: dict[str, int] = {}
    problems = []
    for dim in DIMENSIONS:
        m = _SCORE[dim].search(full)
        if m is None:
            problems.append(f"no {dim} score")
            continue
        value = float(m.group(1))
        if value != int(value) or not LIKERT[0] <= value <= LIKERT[1]:
            problems.append(f"{dim} {m.group(1)} is not a whole number from {LIKERT[0]} to {LIKERT[1]}")
            continue
        scores[dim] = int(value)
    j = _JUSTIFICATION.search(full)
    justification = j.group(1).strip().split("\n")[0].strip() if j else ""
    if problems:
        return None, justification, "unparseable: " + "; ".join(problems)
    return scores, justification, None


def judge_ratings(items: Sequence[Any], questions: dict[str, MCQuestion], teacher: Any, max_items: int,
                  max_new_tokens: int = 64) -> list[Rating]:
    """Rate up to `max_items` explanations per run with `teacher` (a lib.teacher.Teacher), greedy.

    `items` are ItemResult rows; rows without a rationale are not judged. One batched call for all.
    """
    chosen, per_run = [], {}
    for it in items:
        if it.rationale.strip() and it.item_id in questions and per_run.get(it.run, 0) < max_items:
            chosen.append(it)
            per_run[it.run] = per_run.get(it.run, 0) + 1
    if not chosen:
        log.warning("judge: no explanation to rate (no item has a rationale)")
        return []
    prompts = [judge_prompt(questions[it.item_id], it.prediction, it.rationale) for it in chosen]
    outs = teacher.complete(prompts, max_new_tokens=max_new_tokens, temperature=0.0, n=1, desc="judge")
    sha = load_template("judge").sha256
    rows = []
    for it, completions in zip(chosen, outs):
        text = completions[0].text if completions else ""
        scores, justification, failure = parse_judgement(text)
        rows.append(Rating(run=it.run, item_id=it.item_id, rater=f"judge:{teacher.name}",
                           completeness=scores and scores["completeness"],
                           contrastiveness=scores and scores["contrastiveness"],
                           soundness=scores and scores["soundness"], justification=justification,
                           template_sha256=sha, failure=failure, raw=text))
    failed = sum(r.failure is not None for r in rows)
    if failed:
        log.warning("judge: %d of %d judgements unparseable (recorded as failures, no scores)", failed, len(rows))
    return rows


def ratings_frame(ratings: Sequence[Rating]) -> Any:
    """Ratings as a table (one row per rater x explanation)."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in ratings], columns=[f.name for f in dataclasses.fields(Rating)])


def ratings_summary(ratings: Sequence[Rating], items: Sequence[Any]) -> Any:
    """Mean score per condition and rater for each dimension, with counts of rated and failed judgements."""
    import pandas as pd

    df = ratings_frame(ratings)
    if df.empty:
        return pd.DataFrame(columns=["condition", "rater", "n", "failed", *DIMENSIONS])
    cond = {it.run: it.condition for it in items}
    df["condition"] = df["run"].map(cond)
    df["failed"] = df["failure"].notna().astype(int)
    return (df.groupby(["condition", "rater"], as_index=False)
              .agg(n=("item_id", "size"), failed=("failed", "sum"),
                   **{d: (d, "mean") for d in DIMENSIONS}))


# ---------------------------------------------------------------- blinded human sheet


def export_sheet(items: Sequence[Any], questions: dict[str, MCQuestion], folder: str | Path, n_items: int,
                 seed: int = 0) -> dict[str, Path]:
    """Write human_sheet.csv, human_sheet.html (a form that saves the filled CSV) and human_sheet_key.csv.

    Up to `n_items` explanations (items with a rationale), shuffled with `seed` and stripped of run and
    condition, so raters cannot tell which student wrote which. The key file maps sheet rows back.
    """
    pool = [it for it in items if it.rationale.strip() and it.item_id in questions]
    chosen = random.Random(seed).sample(pool, min(n_items, len(pool)))
    rows, key = [], []
    for k, it in enumerate(chosen, 1):
        q = questions[it.item_id]
        answer = ("(no answer)" if it.prediction is None
                  else f"({option_letters(len(q.choices))[it.prediction]}) {q.choices[it.prediction]}")
        rows.append({"sheet_row": k, "question": format_question(q), "answer": answer, "explanation": it.rationale,
                     "rater": "", **{d: "" for d in DIMENSIONS}, "justification": ""})
        key.append({"sheet_row": k, "run": it.run, "item_id": it.item_id})
    folder = Path(folder)
    paths = {"csv": atomic_write_text(folder / "human_sheet.csv", _csv_text(rows, SHEET_COLUMNS)),
             "html": atomic_write_text(folder / "human_sheet.html", sheet_html(rows)),
             "key": atomic_write_text(folder / "human_sheet_key.csv", _csv_text(key, KEY_COLUMNS))}
    log.info("human rating sheet: %d explanations in %s", len(rows), paths["csv"])
    return paths


def _csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def sheet_html(rows: list[dict]) -> str:
    """A self-contained HTML form (no network) that rates each explanation and downloads the filled CSV."""
    cards = []
    for r in rows:
        selects = "".join(
            f'<label>{d.capitalize()} <select data-dim="{d}"><option value=""></option>'
            + "".join(f"<option>{v}</option>" for v in range(LIKERT[0], LIKERT[1] + 1)) + "</select></label> "
            for d in DIMENSIONS)
        cards.append(
            f'<div class="card" data-row="{r["sheet_row"]}"><h3>Explanation {r["sheet_row"]}</h3>'
            f'<pre>{html.escape(r["question"])}</pre><p><b>Answer given:</b> {html.escape(r["answer"])}</p>'
            f'<p><b>Explanation:</b> {html.escape(r["explanation"])}</p><p>{selects}</p>'
            f'<p><label>Justification <input type="text" size="80" data-dim="justification"></label></p></div>')
    data = json.dumps(rows).replace("</", "<\\/")
    columns = json.dumps(list(SHEET_COLUMNS))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Rate the explanations</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}.card{{border:1px solid #ccc;padding:0.5em 1em;margin:1em 0}}
pre{{white-space:pre-wrap}}</style></head><body>
<h1>Rate the explanations</h1>
<p>For each explanation give three scores from 1 (very poor) to 7 (excellent): <b>completeness</b> (every step needed
to reach the answer is there), <b>contrastiveness</b> (it says why the other options are wrong) and <b>soundness</b>
(every statement is true and the reasoning follows). Add a one-sentence justification. Then press <i>Save CSV</i>
and send the file back.</p>
<p><label>Your rater id <input id="rater" type="text"></label></p>
{''.join(cards)}
<p><button id="save">Save CSV</button> <span id="msg"></span></p>
<script>
const ROWS = {data};
const COLUMNS = {columns};
function cell(v) {{ v = String(v ?? ""); return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
document.getElementById("save").onclick = () => {{
  const rater = document.getElementById("rater").value.trim();
  if (!rater) {{ document.getElementById("msg").textContent = "Enter your rater id first."; return; }}
  const lines = [COLUMNS.join(",")];
  for (const row of ROWS) {{
    const card = document.querySelector('.card[data-row="' + row.sheet_row + '"]');
    const out = Object.assign({{}}, row, {{rater: rater}});
    card.querySelectorAll("[data-dim]").forEach(el => {{ out[el.dataset.dim] = el.value; }});
    lines.push(COLUMNS.map(c => cell(out[c])).join(","));
  }}
  const blob = new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "human_sheet_" + rater.replace(/[^A-Za-z0-9_-]/g, "_") + ".csv";
  a.click();
  document.getElementById("msg").textContent = "Saved " + a.download;
}};
</script></body></html>
"""


class SheetError(ValueError):
    """A filled rating sheet that cannot be imported; the message names every bad row."""


def import_sheet(sheet: str | Path, key: str | Path, rater: str | None = None) -> list[Rating]:
    """Ratings from a filled human sheet (CSV) joined to its key; bad rows are rejected, each named.

    Every row needs a rater id (the `rater` column, or the `rater` argument for the whole sheet) and
    whole-number scores from 1 to 7 for every dimension; a row id missing from the key, a repeated row
    or a missing column is an error. Nothing is imported when any row is bad.
    """
    sheet, key = Path(sheet), Path(key)
    key_rows = {r["sheet_row"].strip(): r for r in csv.DictReader(io.StringIO(read_text(key), newline=""))}
    # a sheet saved by Excel starts with a byte-order mark: read_text drops it (and names an undecodable line)
    reader = csv.DictReader(io.StringIO(read_text(sheet), newline=""))
    missing = [c for c in ("sheet_row", *DIMENSIONS) if c not in (reader.fieldnames or [])]
    if missing:
        raise SheetError(f"{sheet}: missing column(s) {', '.join(missing)}; export a fresh sheet with "
                         "lib.ratings.export_sheet and fill that one")
    filled = list(reader)
    problems, ratings, seen = [], [], set()
    for lineno, row in enumerate(filled, 2):
        where = f"{sheet}:{lineno} (sheet_row {row.get('sheet_row', '').strip() or '?'})"
        rid = (row.get("sheet_row") or "").strip()
        who = (rater or row.get("rater") or "").strip()
        errs = []
        if rid not in key_rows:
            errs.append(f"sheet_row {rid!r} is not in the key {key.name}")
        elif (who, rid) in seen:
            errs.append("rated twice by the same rater")
        if not who:
            errs.append("no rater id (fill the 'rater' column or pass rater=...)")
        scores = {}
        for dim in DIMENSIONS:
            value = (row.get(dim) or "").strip()
            if not value:
                errs.append(f"{dim} is missing")
            elif not re.fullmatch(r"\d+", value) or not LIKERT[0] <= int(value) <= LIKERT[1]:
                errs.append(f"{dim} {value!r} is not a whole number from {LIKERT[0]} to {LIKERT[1]}")
            else:
                scores[dim] = int(value)
        if errs:
            problems.append(f"{where}: " + "; ".join(errs))
            continue
        seen.add((who, rid))
        k = key_rows[rid]
        ratings.append(Rating(run=k["run"], item_id=k["item_id"], rater=who, justification=(row.get("justification") or "").strip(),
                              template_sha256="", **scores))
    if problems:
        raise SheetError(f"{len(problems)} bad row(s) in {sheet}; fix them and import again:\n  " + "\n  ".join(problems))
    log.info("imported %d ratings from %s", len(ratings), sheet)
    return ratings


def read_ratings(path: str | Path) -> list[Rating]:
    """Rows of a ratings file (judge_ratings.jsonl, human_ratings.jsonl)."""
    names = {f.name for f in dataclasses.fields(Rating)}
    return [Rating(**{k: v for k, v in r.items() if k in names}) for r in read_jsonl(path)]


def add_ratings(path: str | Path, new: Sequence[Rating]) -> Path:
    """Append ratings (e.g. an imported human sheet) to a ratings file; a (run, item, rater) already there is an error."""
    path = Path(path)
    old = read_ratings(path) if path.exists() else []
    have = {(r.run, r.item_id, r.rater) for r in old}
    clash = [r for r in new if (r.run, r.item_id, r.rater) in have]
    if clash:
        raise SheetError(f"{path} already holds {len(clash)} of these ratings, e.g. rater {clash[0].rater!r} on "
                         f"{clash[0].run} / {clash[0].item_id}; import each filled sheet once")
    return write_jsonl(path, [*old, *new])


def add_human_ratings(run_dir: str | Path, filled_csv: str | Path, key_csv: str | Path,
                      rater: str | None = None) -> Path:
    """Import a filled human sheet (checked by `import_sheet`) into <run_dir>/human_ratings.jsonl; returns its path."""
    return add_ratings(Path(run_dir) / HUMAN_RATINGS, import_sheet(filled_csv, key_csv, rater))
