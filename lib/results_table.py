"""The README's results table of a published study: every reading of every condition, and BASE at its best.

    python -m lib.publish --table results/reference-csqa

One row per condition and test set (the teacher's test set first; conditions in study order) with each reading of
the answer that step 05 takes (lib.run_tables.READINGS), pooled over the condition's training seeds, with its 95%
interval (cluster bootstrap over items, 06_statistics/accuracy.csv):

- *generated (parse)*: the option the student's own output states, read strictly, and the share of outputs that state
  one; *answer text*: the option whose text after "So the answer is" it finds most likely per character (the
  trained format); *cloze*, *cloze norm*: lm-evaluation-harness's `arc_easy` formulation, acc and acc_norm (the
  standard readings);
- BASE's highest reading on a test set is in bold: the untrained student at its best, the bar a trained one must pass;
- *vs BASE at its best*: a trained condition at that same reading, its difference from BASE in points (the range over
  seeds in brackets) and McNemar's test against BASE on the same items, one p per seed (06_statistics/mcnemar.csv:
  exact binomial under 25 discordant items, else chi-square with continuity correction; unadjusted).

Values are checked against 05_evaluation/summary.csv, so a table of statistics computed on other items is refused.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lib.conditions import CONDITIONS, TEACHER, UNTRAINED
from lib.run_tables import with_arms

# (label, column of summary.csv / accuracy.csv, reading of mcnemar.csv), in the table's order
READINGS = (("generated", "accuracy", "correct"), ("answer text", "loglik_norm_accuracy", "loglik_norm_correct"),
            ("cloze", "cloze_accuracy", "cloze_correct"), ("cloze norm", "cloze_norm_accuracy", "cloze_norm_correct"))


def _pct(value: float | None) -> str:
    """A proportion in percent with one decimal, or `–` where it was not measured."""
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}"


def _cell(row: pd.Series, column: str, bold: bool = False) -> str:
    """`48.0 (43.6–52.4)`: a reading in percent with its 95% interval (bold: BASE at its best)."""
    value = row.get(column)
    if value is None or pd.isna(value):
        return "–"
    text = f"**{_pct(value)}**" if bold else _pct(value)
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    return text if low is None or pd.isna(low) else f"{text} ({_pct(low)}–{_pct(high)})"


def best_reading(base: pd.Series) -> tuple[str, str, str] | None:
    """The reading (label, column, mcnemar reading) at which BASE scores highest on a test set, or None."""
    scored = [(base[col], (label, col, name)) for label, col, name in READINGS
              if col in base.index and not pd.isna(base[col])]
    return max(scored, key=lambda s: s[0])[1] if scored else None


def versus_base(summary: pd.DataFrame, tests: pd.DataFrame, test_set: str, student: str, condition: str,
                reading: tuple[str, str, str]) -> str:
    """A trained condition against BASE at BASE's best reading: `cloze norm +4.4; 43 vs 21, p = 0.0081` (one seed),
    `cloze norm +4.4 [+3.8, +5.0]; seed 0 +5.0, p = 0.004; seed 1 +3.8, p = 0.02` (each seed's difference and test)."""
    label, column, name = reading
    rows = summary[(summary["test_set"] == test_set) & (summary["student"] == student)]
    base = rows.loc[rows["condition"] == "BASE", column].mean()
    per_seed = rows[rows["condition"] == condition].sort_values("seed")
    diffs = (per_seed[column] - base) * 100
    spread = f" [{diffs.min():+.1f}, {diffs.max():+.1f}]" if len(diffs) > 1 else ""
    text = f"{label} {diffs.mean():+.1f}{spread}"
    if tests is None or tests.empty:
        return text
    mine = tests[(tests["test_set"] == test_set) & (tests["student"] == student) & (tests["reading"] == name)
                 & (tests[["group1", "group2"]].isin(["BASE", condition]).all(axis=1))]
    if mine.empty:
        return text
    by_seed = dict(zip(per_seed["seed"], diffs))
    parts = []
    for _, t in mine.sort_values("seed").iterrows():
        wins, losses = (t["only2"], t["only1"]) if t["group1"] == "BASE" else (t["only1"], t["only2"])
        diff = by_seed.get(t["seed"])
        seed = f"seed {int(t['seed'])}" + (f" {diff:+.1f}" if diff is not None else "")
        parts.append(f"{int(wins)} vs {int(losses)}, p = {t['p']:.2g}" if len(mine) == 1
                     else f"{seed}, p = {t['p']:.2g}")
    return f"{text}; {'; '.join(parts)}"


def _load(dest: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """summary.csv, accuracy.csv (checked to agree with it) and mcnemar.csv (None if absent) of a published study."""
    summary = pd.read_csv(dest / "05_evaluation" / "summary.csv")
    if "rationale_source" in summary:  # a condition trained on both sources is two rows ("MT:revised"), as in 06
        summary = with_arms(summary)
    stats = pd.read_csv(dest / "06_statistics" / "accuracy.csv").rename(
        columns={"ci_low": "accuracy_ci_low", "ci_high": "accuracy_ci_high"})
    pooled = summary.groupby(["test_set", "student", "condition"], as_index=False).mean(numeric_only=True)
    merged = pooled.merge(stats, on=["test_set", "student", "condition"], suffixes=("", "_stats"), validate="1:1")
    for column in ("accuracy", "loglik_norm_accuracy"):
        if f"{column}_stats" not in merged:
            continue
        differ = (merged[column] - merged[f"{column}_stats"]).abs() > 1e-9
        if differ.any():
            raise ValueError(f"{dest}: {column} in 05_evaluation/summary.csv and 06_statistics/accuracy.csv differ for "
                             f"{merged.loc[differ, 'condition'].tolist()}: step 06 ran on other items; rerun it")
    path = dest / "06_statistics" / "mcnemar.csv"
    tests = pd.read_csv(path) if path.exists() else None
    if tests is not None and "reading" not in tests:
        tests = tests.assign(reading="correct")  # published before the other readings were tested
    if "seed" not in summary:
        summary = summary.assign(seed=0)
    return summary, stats, tests


def results_table(dest: Path) -> str:
    """The README's results table of a published study (module docstring), as markdown with its footnote."""
    dest = Path(dest)
    summary, stats, tests = _load(dest)
    teacher_sets = set(stats.loc[stats["condition"] == TEACHER, "test_set"])
    test_sets = sorted(set(stats["test_set"]), key=lambda t: (t not in teacher_sets, t))  # in distribution first
    order = {c: i for i, c in enumerate(CONDITIONS)}
    keys = stats[["condition", "student"]].drop_duplicates()
    keys = keys.assign(rank=keys["condition"].map(lambda c: order.get(c.split(":")[0], len(order)))).sort_values(["rank", "student"])
    head = ["condition", "student", "seeds", "test set", *[label for label, _, _ in READINGS[:1]], "parse",
            *[label for label, _, _ in READINGS[1:]], "vs BASE at its best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for condition, student in zip(keys["condition"], keys["student"]):
        for test_set in test_sets:
            found = stats[(stats["condition"] == condition) & (stats["student"] == student)
                          & (stats["test_set"] == test_set)]
            if found.empty:
                continue
            row = found.iloc[0]
            base = stats[(stats["condition"] == "BASE") & (stats["student"] == student) & (stats["test_set"] == test_set)]
            best = best_reading(base.iloc[0]) if len(base) else None
            trained = condition.split(":")[0] not in UNTRAINED and condition != TEACHER
            cells = [condition, student, str(int(row.get("n_seeds", 1))) if trained else "–", test_set]
            for i, (label, column, _) in enumerate(READINGS):
                cells.append(_cell(row, column, bold=condition == "BASE" and best is not None and best[1] == column))
                if i == 0:
                    cells.append("–" if pd.isna(row.get("parse_rate")) else f"{100 * row['parse_rate']:.0f}%")
            trained = condition.split(":")[0] not in UNTRAINED and condition != TEACHER
            cells.append(versus_base(summary, tests, test_set, student, condition, best) if trained and best else "–")
            lines.append("| " + " | ".join(cells) + " |")
    n = sorted(set(stats["n_items"].astype(int))) if "n_items" in stats else sorted(set(stats["n"].astype(int)))
    lines += ["", f"Accuracy in % of n = {', '.join(map(str, n))} items per test set (pooled over a condition's seeds), "
              "95% interval in parentheses (cluster bootstrap over items). *generated*: the option the student's own "
              "output states, read strictly; *parse*: the share of outputs that state one; *answer text*: the option "
              "whose text after \"So the answer is\" the student finds most likely per character (the trained format); "
              "*cloze*, *cloze norm*: lm-evaluation-harness's `arc_easy` formulation, acc and acc_norm. Bold: BASE at "
              "its best on that test set. *vs BASE at its best*: the trained condition at that reading, points above "
              "BASE (range over seeds in brackets), and McNemar's test on the same items, each seed's difference and p, unadjusted "
              "(exact binomial under 25 discordant items, else chi-square with continuity correction; for one seed, "
              "the items right where BASE is wrong vs the reverse)."]
    return "\n".join(lines) + "\n"
