"""The tables of a run folder that step 06 reads (`load_run_tables`), and the study's design laid on them.

`RunTables` holds what steps 03-05 wrote: the per-item results (05_evaluation/items.jsonl, with each student's size
from 04_training/runs.jsonl), the judge's and human ratings joined to the items they rate, the loss curves and the
counterfactual acceptance; an input a run lacks is None. Each item is read several ways (`READINGS`: the generated
answer, the study's option scoring, lm-evaluation-harness's formulations); the paired tests run over every reading a
run has. Two rows frame the conditions: BASE (the untrained student) is a condition like any other; TEACHER (the
teacher's own answers to the in-distribution questions) takes part in the accuracy table and McNemar, but not in the
tests between training conditions (`compared_conditions`). Neither depends on a training seed, so the paired tests,
which pair within one seed, see them beside every seed (`beside_every_seed`). A condition that writes no rationale
(FT, BASE) has no CEC to compare, so the tests of a rationale's scores leave it out (`without_silent`). When the
students were trained on both unrevised and critique-revised teacher rationales (`rationale_source`), each condition
is compared per source (`with_arms`: "MT:revised"), and the condition x revision design keeps the conditions trained
on both (`crossed`). Analyses across run folders (lib.data_size, lib.teacher_comparison) read each folder's items
(`read_items`) and first check that the folders are runs of one study, differing only where the comparison allows
(`check_same_study`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd

from lib.conditions import TEACHER, UNTRAINED
from lib.files import read_json, read_jsonl
from lib.ratings import DIMENSIONS, HUMAN_RATINGS, JUDGE_RATINGS
from lib.stats import has_values, require_columns

log = logging.getLogger(__name__)


SOURCE = "rationale_source"  # the revision factor: "unrevised" or "revised" teacher rationales
UNREVISED = "unrevised"  # its reference level
TEXT_METRICS = ("bleu", "rouge_l", "bertscore")
FAITHFULNESS = {  # column of items.jsonl: what a 1 means, for the report's sentences
    "faithfulness_perturbed": "answer changed with a perturbed rationale",
    "faithfulness_counterfactual": "answer changed with a counterfactual rationale",
    "faithfulness_cf_follows": "answer followed the counterfactual rationale to its option",
}
# the 0/1 readings of an item's answer (column of items.jsonl -> how a sentence names it); a run may lack the later ones
READINGS = {
    "correct": "the generated answer",
    "loglik_correct": "the option log-likelihood (summed, lm-eval's acc)",
    "loglik_norm_correct": "the option log-likelihood per character (lm-eval's acc_norm)",
    "cloze_correct": "lm-eval's arc_easy cloze formulation (acc)",
    "cloze_norm_correct": "lm-eval's arc_easy cloze formulation (acc_norm)",
    "lettered_correct": "lm-eval's commonsense_qa lettered formulation",
}
RATIONALE_OUTCOMES = ("cec", "cec_fc", "cec_bf", *TEXT_METRICS)  # scores of the student's rationale
ITEM_COLUMNS = ("run", "condition", SOURCE, "student", "seed", "test_set", "item_id", "correct", "rationale_len", "cec")
NUMERIC_COLUMNS = ("rationale_len", "cec", "cec_fc", "cec_bf", *TEXT_METRICS, *READINGS,
                   *FAITHFULNESS)  # all-null when their part of step 05 is off; read as NaN


@dataclasses.dataclass
class RunTables:
    """The tables of a run folder that the statistics read; an input a run lacks is None."""

    items: pd.DataFrame  # 05_evaluation/items.jsonl, with student_size joined from 04_training/runs.jsonl
    runs: pd.DataFrame | None  # 04_training/runs.jsonl
    ratings: pd.DataFrame | None  # the judge's and human ratings joined to items (condition, rationale_len)
    losses: pd.DataFrame | None  # 04_training/<run>/losses.jsonl, all runs
    acceptance: dict | None  # 03_counterfactuals/acceptance.json
    causal: pd.DataFrame | None = None  # 05_evaluation/causal_items.jsonl (CAUSAL students' explanations)


def read_table(path: Path) -> pd.DataFrame | None:
    """A jsonl file as a table; None when it is absent or has no rows (an optional part of the study is off)."""
    rows = read_jsonl(path) if path.exists() else []
    return pd.DataFrame(rows) if rows else None


def read_items(run_dir: str | Path) -> pd.DataFrame:
    """A run folder's per-item results (05_evaluation/items.jsonl, or items.jsonl.gz in a published folder), the
    NUMERIC_COLUMNS read as numbers (NaN where missing); the ITEM_COLUMNS without rows when the file has none."""
    items_path = Path(run_dir) / "05_evaluation" / "items.jsonl"
    if not items_path.exists() and items_path.with_suffix(".jsonl.gz").exists():
        items_path = items_path.with_suffix(".jsonl.gz")  # a published run (lib.publish)
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path} is missing: step 05_evaluation makes it; run it first")
    items = read_table(items_path)
    items = pd.DataFrame(columns=list(ITEM_COLUMNS)) if items is None else items
    return items.assign(**{c: pd.to_numeric(items[c], errors="coerce") for c in NUMERIC_COLUMNS if c in items})


def load_run_tables(run_dir: str | Path) -> RunTables:
    """Read what steps 03-05 wrote and the run's human ratings; every input but items.jsonl may be absent or empty.

    Ratings are the judge's (05_evaluation/judge_ratings.jsonl) and the human raters' (human_ratings.jsonl in the
    run folder, outside every step folder so that no rerun erases them), concatenated.
    """
    run_dir = Path(run_dir)
    runs = read_table(run_dir / "04_training" / "runs.jsonl")
    items = with_student_size(read_items(run_dir), runs)
    rated = [t for t in (read_table(run_dir / "05_evaluation" / JUDGE_RATINGS), read_table(run_dir / HUMAN_RATINGS))
             if t is not None]
    ratings = join_ratings(pd.concat(rated, ignore_index=True), items) if rated else None
    losses = [t for t in map(read_table, sorted((run_dir / "04_training").glob("*/losses.jsonl"))) if t is not None]
    acc_path = run_dir / "03_counterfactuals" / "acceptance.json"
    return RunTables(items=items, runs=runs, ratings=ratings if ratings is not None and len(ratings) else None,
                     losses=pd.concat(losses, ignore_index=True) if losses else None,
                     acceptance=read_json(acc_path) if acc_path.exists() else None,
                     causal=read_table(run_dir / "05_evaluation" / "causal_items.jsonl"))


def _study_params(run_dir: Path, free_keys: Collection[str], free_sections: Collection[str]) -> dict[str, Any]:
    """A folder's params.json as dotted key ("training.lr") -> value, without the keys and sections free to differ."""
    path = run_dir / "params.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: give run folders (or published ones), which keep the params "
                                "they ran with in params.json")
    return {f"{section}.{key}": value for section, block in read_json(path).items() if section not in free_sections
            for key, value in (block or {}).items() if f"{section}.{key}" not in free_keys}


def check_same_study(run_dirs: Sequence[Path], free_keys: Collection[str], free_sections: Collection[str],
                     what: str) -> None:
    """Raise unless every folder's params equal the first's outside `free_keys` (dotted: "data.max_train") and
    `free_sections`; the error names the first differing key and `what` the comparison is ("a data-size curve")."""
    free = ", ".join([*sorted(free_keys), *(f"the {s} section" for s in sorted(free_sections))])
    first = _study_params(Path(run_dirs[0]), free_keys, free_sections)
    for other in map(Path, run_dirs[1:]):
        params = _study_params(other, free_keys, free_sections)
        for key in sorted(set(first) | set(params)):
            if first.get(key) != params.get(key):
                raise ValueError(f"{other}/params.json differs from {run_dirs[0]}/params.json at {key} "
                                 f"({params.get(key)!r} vs {first.get(key)!r}): {what} compares runs of one study, "
                                 f"whose params differ only in {free}; give folders that agree on {key}")


def with_student_size(items: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Add `student_size` (parameters, from 04_training/runs.jsonl joined on run); the student name when unknown."""
    if runs is not None and {"run", "n_params"} <= set(runs.columns):
        sizes = runs.drop_duplicates("run").set_index("run")["n_params"]
        labels = sizes.map(lambda n: _size_label(float(n)) if pd.notna(n) else None)
        return items.assign(student_size=items["run"].map(labels).fillna(items.get("student", "unknown")).astype(str))
    return items.assign(student_size=items["student"].astype(str) if "student" in items else "unknown")


def _size_label(n: float) -> str:
    """268466816 -> '268M params', 1.1e9 -> '1.1B params', 98304 -> '98,304 params'."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B params"
    return f"{n / 1e6:.0f}M params" if n >= 1e6 else f"{n:,.0f} params"


def join_ratings(ratings: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Ratings (run, item_id, rater, dimensions) with the rated item's condition, rationale source, student, test set
    and rationale_len."""
    require_columns(ratings, ["run", "item_id", "rater"], "the ratings (judge_ratings.jsonl, human_ratings.jsonl)")
    keep = [c for c in ("run", "item_id", "test_set", "condition", SOURCE, "student", "student_size", "rationale_len")
            if c in items.columns]
    meta = items[keep].drop_duplicates(["run", "item_id"])
    ratings = ratings.assign(**{d: pd.to_numeric(ratings[d], errors="coerce") for d in DIMENSIONS
                                if d in ratings.columns})  # a failed judge call leaves null scores
    joined = ratings.drop(columns=[c for c in keep if c not in ("run", "item_id")], errors="ignore").merge(
        meta, on=["run", "item_id"], how="inner")
    if len(joined) < len(ratings):
        log.info("ratings: %d of %d rate no evaluated item of this run and are left out", len(ratings) - len(joined),
                 len(ratings))
    return joined


def rated_dimensions(ratings: pd.DataFrame | None, dimensions: Sequence[str] = DIMENSIONS) -> list[str]:
    """The rating dimensions with at least one numeric score."""
    if ratings is None:
        return []
    return [d for d in dimensions if has_values(ratings, d) and pd.api.types.is_numeric_dtype(ratings[d])]


def ratings_absent_note(ratings: pd.DataFrame | None, dimensions: Sequence[str] = DIMENSIONS) -> str:
    """Why there is nothing to analyse in the ratings: none at all, or no usable score (with the failures counted)."""
    if ratings is None:
        return ("no ratings in this run: neither the judge's (05_evaluation/judge_ratings.jsonl; evaluation.judge) "
                "nor human ones (human_ratings.jsonl in the run folder; lib.ratings.add_human_ratings); "
                "this input is absent.")
    failed = int(ratings["failure"].fillna("").astype(str).ne("").sum()) if "failure" in ratings else 0
    why = f" ({failed} of {len(ratings)} ratings failed, e.g. an unparseable judge reply)" if failed else ""
    return f"the ratings have no usable score for {', '.join(dimensions)}{why}; this input is absent."


def has_revision(data: pd.DataFrame) -> bool:
    """True when the table holds students trained on unrevised and on revised teacher rationales."""
    return SOURCE in data.columns and data[SOURCE].nunique() > 1


def with_arms(data: pd.DataFrame) -> pd.DataFrame:
    """`data` with each condition trained on both rationale sources named with its source ("MT:revised"), so that no
    comparison pools a condition's two sources; a condition with one source (BASE, FT, TEACHER) keeps its name."""
    if not has_revision(data):
        return data
    several = data.groupby("condition")[SOURCE].transform("nunique") > 1
    named = data["condition"].astype(str) + ":" + data[SOURCE].astype(str)
    return data.assign(condition=data["condition"].where(~several, named))


def compared_conditions(data: pd.DataFrame) -> pd.DataFrame:
    """The rows that the tests between training conditions compare: without TEACHER (not a training condition),
    each condition named with its rationale source when there are two (`with_arms`)."""
    return with_arms(data[data["condition"] != TEACHER])


def crossed(data: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of the conditions trained on every rationale source present (the condition x revision design), and
    the conditions left out (one source only: BASE, FT, CFD)."""
    sources = data.groupby("condition")[SOURCE].nunique()
    full = set(sources.index[sources == data[SOURCE].nunique()])
    return data[data["condition"].isin(full)], sorted(set(data["condition"].astype(str)) - set(map(str, full)))


def teacher_beside_students(items: pd.DataFrame) -> pd.DataFrame:
    """The items with TEACHER's rows repeated under the student and seed of every run of the same test set, so that
    McNemar (which pairs within a test set, student and seed) pairs the teacher with every condition."""
    teacher, students = items[items["condition"] == TEACHER], items[items["condition"] != TEACHER]
    if teacher.empty:
        return items
    keys = [k for k in ("student", "seed") if k in items.columns]
    cells = students[["test_set", *keys]].drop_duplicates()
    return pd.concat([students, teacher.drop(columns=keys).merge(cells, on="test_set")], ignore_index=True)


def beside_every_seed(items: pd.DataFrame) -> pd.DataFrame:
    """The items with the rows no training seed made repeated under every seed they are paired with: TEACHER's under
    every student and seed of its test set (`teacher_beside_students`), an untrained condition's (BASE, one run per
    student) under every seed of its test set and student. The paired tests pair within one seed."""
    items = teacher_beside_students(items)
    untrained = items["condition"].isin(UNTRAINED)
    if "seed" not in items.columns or not untrained.any():
        return items
    keys = [k for k in ("test_set", "student") if k in items.columns]
    cells = items.loc[~untrained, [*keys, "seed"]].drop_duplicates()
    repeated = items[untrained].drop(columns="seed").merge(cells, on=keys)
    same = [k for k in (*keys, "condition", SOURCE, "run", "item_id", "seed") if k in items.columns]
    return pd.concat([items[~untrained], items[untrained], repeated], ignore_index=True).drop_duplicates(same)


def silent_conditions(data: pd.DataFrame, outcome: str) -> list[str]:
    """The conditions that write no rationale: on every item, `outcome` missing or the rationale empty (the
    `rationale` text, else `rationale_len` 0)."""
    values = pd.to_numeric(data[outcome], errors="coerce") if outcome in data.columns else pd.Series(np.nan, data.index)
    if "rationale" in data.columns:
        empty = data["rationale"].fillna("").astype(str).str.strip().eq("")
    elif "rationale_len" in data.columns:
        empty = pd.to_numeric(data["rationale_len"], errors="coerce").fillna(0).eq(0)
    else:
        empty = pd.Series(False, index=data.index)
    silent = (values.isna() | empty).groupby(data["condition"].astype(str)).all()
    return sorted(silent.index[silent])


def without_silent(data: pd.DataFrame, outcome: str) -> tuple[pd.DataFrame, list[str]]:
    """For a score of the rationale (RATIONALE_OUTCOMES: CEC, BLEU, ...), the rows without the conditions that write
    no rationale (FT's CEC is 0 or missing by construction), and those conditions; other outcomes keep every row."""
    if outcome not in RATIONALE_OUTCOMES or data.empty:
        return data, []
    silent = silent_conditions(data, outcome)
    return data[~data["condition"].astype(str).isin(silent)], silent
