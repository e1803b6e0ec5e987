"""What a run's statistics say, in words: one `Section` per analysis of the report.

A section holds a table (lib.stats run on a run's tables, lib.run_tables), plain sentences saying what it shows, and
notes on what could not be tested and why. `analyse` runs every analysis of a run in the report's order, and a test
the data cannot support becomes a note, never an error; `write_analysis` writes each table as
06_statistics/<key>.csv and every sentence as findings.md. The describe_* functions turn one lib.stats table into
sentences, each naming the reading it compares and the test. Each section says its unit (`unit_text`,
`run_unit_text`) and each test's table has a `unit` column: the test item for the paired tests between conditions
(McNemar, Cochran's Q, over every reading of the answer), the ANOVAs and regressions (per-item means over seeds), the
training run for Tukey-Kramer (never items: with one seed it says it cannot run). A score of the rationale (CEC) is
compared only between conditions that write one. When the students were trained on both unrevised and
critique-revised teacher rationales, each condition is compared per source ("MT:revised"), a two-way ANOVA condition
x revision is fitted, and the regressions get condition, revision and their interaction.

Longer than ~500 lines because it holds the words of every analysis of the report, in the report's order: each
builder sits beside the sentences it writes, and splitting them would scatter one report over several modules.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lib.conditions import TEACHER
from lib.evaluation import causal_table
from lib.files import atomic_write_text
from lib.ratings import DIMENSIONS
from lib.run_tables import (
    beside_every_seed,
    compared_conditions,
    crossed,
    FAITHFULNESS,
    has_revision,
    rated_dimensions,
    ratings_absent_note,
    READINGS,
    RunTables,
    SOURCE,
    TEXT_METRICS,
    UNREVISED,
    with_arms,
    without_silent,
)
from lib.stats import (
    accuracy_table,
    cec_intervals,
    cec_text_metric_correlations,
    cochran_q,
    format_p,
    has_values,
    item_clusters,
    kruskal_dunn,
    mark_outliers,
    mcnemar_pairs,
    mean_table,
    n_seeds,
    ols_regression,
    over_readings,
    over_seeds,
    plural,
    run_values,
    TooFewObservations,
    tukey_over_runs,
    two_way_anova,
    UNIT_KEYS,
)

RATING_UNIT = "one rater's rating of a test item's explanation"
# log-likelihood answers (item column -> accuracy column): per character first, the headline (lm-eval's acc_norm);
# the summed pick (acc) still favours the first option of a weak model
LOGLIK_ACCURACIES = {"loglik_norm_correct": "loglik_norm_accuracy", "loglik_correct": "loglik_accuracy"}
# lm-evaluation-harness's zero-shot readings of every student (lib.standard_readings), acc_norm first
STANDARD_ACCURACIES = {"cloze_norm_correct": "cloze_norm_accuracy", "cloze_correct": "cloze_accuracy",
                       "lettered_correct": "lettered_accuracy"}


@dataclasses.dataclass
class Section:
    """One analysis of the report: a title, what it means in sentences, its table, and notes on what could not run."""

    key: str  # file stem of its CSV, e.g. "tukey_correct"
    title: str
    explanation: str  # what the test asks and its unit, for a reader new to it
    table: pd.DataFrame | None = None
    sentences: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # too few observations, absent inputs, failed checks

    @property
    def ran(self) -> bool:
        """True when the analysis produced a table."""
        return self.table is not None and not self.table.empty


def unit_text(data: pd.DataFrame, what: str = "test item") -> str:
    """'test item (mean over 3 seeds)', or 'test item (one seed)': the unit of a test, for the report."""
    n = n_seeds(data)
    return f"{what} (mean over {n} seeds)" if n > 1 else f"{what} (one seed)"


def _teacher_left_out(data: pd.DataFrame) -> str:
    """A sentence for a test between training conditions, when the table holds TEACHER rows that it leaves out."""
    if not (data["condition"] == TEACHER).any():
        return ""
    return (" TEACHER (the teacher's own answers) is left out, as it is not a training condition; the accuracy "
            "table and McNemar compare it with every condition.")


def _revision_notes(data: pd.DataFrame, left_out: Sequence[str] = ()) -> list[str]:
    """Notes on the revision factor: one level only (no revision term), or the conditions left out of its design."""
    if SOURCE not in data.columns:
        return []
    if not has_revision(data):
        levels = ", ".join(sorted(data[SOURCE].dropna().astype(str).unique())) or "none"
        return [f"rationale_source has one level only ({levels}): every student was trained on one kind of teacher "
                "rationale, so there is no revision factor; train on unrevised and revised rationales to test it."]
    if left_out:
        return [f"conditions with one rationale source only (no teacher rationale in their training, or none at all), "
                f"left out of the condition x revision design: {', '.join(left_out)}."]
    return []


def _absent(key: str, title: str, explanation: str, note: str) -> Section:
    """A section whose input is absent from the run."""
    return Section(key, title, explanation, notes=[note])


def _open_section(key: str, title: str, explanation: str, data: pd.DataFrame, outcome: str) -> tuple[Section, bool]:
    """A new section on `outcome`, and whether `data` has any value of it (if not, the section says it is absent)."""
    if not has_values(data, outcome):
        return _absent(key, title, explanation, f"no item has a value for {outcome}; this input is absent."), False
    return Section(key, title, explanation), True


def _label(row: dict | pd.Series, keys: Sequence[str]) -> str:
    """'[csqa, gpt2] ' from a row and the keys that name its subset ('' without keys)."""
    return "[" + ", ".join(str(row[k]) for k in keys) + "] " if keys else ""


def _of_items(row: dict) -> str:
    """'40 items' or '40 items x 3 seeds' for a row of mean_table."""
    seeds = f" x {int(row['n_seeds'])} seeds" if row["n_seeds"] > 1 else ""
    return plural(int(row["n_items"]), "item") + seeds


def _ci_text(low: float, high: float) -> str:
    """'95% CI 40.0-60.0' in percent, or 'no interval'."""
    return f"95% CI {low * 100:.1f}-{high * 100:.1f}" if np.isfinite(low) else "no interval"


def accuracy_section(tables: RunTables, n_boot: int = 1000, seed: int = 0) -> Section:
    """Accuracy (and log-likelihood accuracy) and mean CEC per test set, student and condition (per rationale source
    when there are two) with 95% intervals; BASE and TEACHER among them."""
    items = with_arms(tables.items)
    by = [c for c in ("test_set", "student", "condition") if c in items.columns]
    section = Section("accuracy", "Accuracy and CEC by condition",
                      "Share of test items answered correctly (the option named in the answer sentence the "
                      "condition was trained to write; parse_rate: the share of answers with one), the option scores "
                      "in the condition's own prompt, lm-evaluation-harness's zero-shot readings (cloze: arc_easy's "
                      "formulation, acc and acc_norm; lettered: commonsense_qa's), and mean CEC (explanation "
                      "coherence with the teacher), "
                      "with 95% confidence intervals from a cluster bootstrap: test items are resampled with all their "
                      "seeds, so the seeds of one item count as one item, not several. BASE is the untrained student "
                      "(the floor), TEACHER the teacher's own answers to the in-distribution questions (the ceiling; "
                      "no CEC, as its rationale is the reference); a condition trained on both unrevised and revised "
                      "teacher rationales has a row per source (MT:revised). "
                      f"Unit: {unit_text(items)}.")
    if items.empty:
        section.notes.append("no test item was answered (05_evaluation/items.jsonl is empty: a study of CAUSAL "
                             "students only answers no questions); this input is absent.")
        return section
    table = accuracy_table(items, by=by, n_boot=n_boot, seed=seed)
    if has_values(items, "cec"):
        table = table.merge(cec_intervals(items, by=by, n_boot=n_boot, seed=seed), on=by, how="left")
    for column, name in {**LOGLIK_ACCURACIES, **STANDARD_ACCURACIES}.items():
        if has_values(items, column):
            loglik = mean_table(items, column, by, n_boot, seed)[[*by, "mean", "ci_low", "ci_high"]]
            table = table.merge(loglik.rename(columns={"mean": name, "ci_low": f"{name}_ci_low",
                                                       "ci_high": f"{name}_ci_high"}), on=by, how="left")
    if "unparseable" in items.columns:  # the share of generated answers whose answer sentence names an option
        parsed = items.assign(parse_rate=1.0 - pd.to_numeric(items["unparseable"], errors="coerce"))
        table = table.merge(parsed.groupby(by, as_index=False)["parse_rate"].mean(), on=by, how="left")
    if not any(has_values(items, c) for c in LOGLIK_ACCURACIES):
        section.notes.append("no log-likelihood accuracy (evaluation.loglik is off, or every student is "
                             "encoder-decoder); this input is absent.")
    section.table = table.assign(unit="item")
    if n_seeds(items) == 1:
        section.notes.append("one training seed per condition: differences between conditions also contain the "
                             "run-to-run randomness of training, which one seed cannot measure.")
    if "test_set" in items.columns and items["test_set"].nunique() == 1:
        section.notes.append(f"one test set ({items['test_set'].iloc[0]}): there is no out-of-distribution result "
                             "(data.ood lists no set); this input is absent.")
    flat = table[(table["n_items"] >= 2) & (table["ci_low"] == table["ci_high"])]
    if len(flat):
        section.notes.append(f"{plural(len(flat), 'group')} got every item right or every item wrong, so the "
                             "bootstrap interval collapses to a point; that is too few items to show spread, "
                             "not certainty.")
    single = table[table["n_items"] < 2]
    if len(single):
        section.notes.append(f"{plural(len(single), 'group')} with a single item have no confidence interval.")
    for row in table.to_dict("records"):
        headline = next((n for n in LOGLIK_ACCURACIES.values() if pd.notna(row.get(n, np.nan))), None)
        loglik = (f"; log-likelihood accuracy{' per character' if headline == 'loglik_norm_accuracy' else ''} "
                  f"{row[headline] * 100:.1f}% ({_ci_text(row[f'{headline}_ci_low'], row[f'{headline}_ci_high'])})"
                  if headline else "")
        standard = next((n for n in STANDARD_ACCURACIES.values() if pd.notna(row.get(n, np.nan))), None)
        loglik += (f"; lm-eval cloze reading{' per character' if standard == 'cloze_norm_accuracy' else ''} "
                   f"{row[standard] * 100:.1f}% ({_ci_text(row[f'{standard}_ci_low'], row[f'{standard}_ci_high'])})"
                   if standard else "")
        parse = row.get("parse_rate", np.nan)
        parse_text = f", {parse * 100:.0f}% of its answers parsed" if pd.notna(parse) else ""
        section.sentences.append(f"{_label(row, by[:-1])}{row[by[-1]]}: {row['accuracy'] * 100:.1f}% of "
                                 f"{_of_items(row)} correct ({_ci_text(row['ci_low'], row['ci_high'])})"
                                 f"{parse_text}{loglik}.")
    section.sentences.extend(_base_at_its_best(table, by))
    return section


def _base_at_its_best(table: pd.DataFrame, by: list[str]) -> list[str]:
    """Per test set and student: BASE's best reading, the bar a trained condition must clear (name and value)."""
    readings = {"accuracy": "the generated answer", **{n: n.replace("_", " ") for n in LOGLIK_ACCURACIES.values()},
                **{n: n.replace("_", " ") for n in STANDARD_ACCURACIES.values()}}
    out = []
    for row in table[table[by[-1]] == "BASE"].to_dict("records"):
        values = {name: row[name] for name in readings if pd.notna(row.get(name, np.nan))}
        if values:
            best = max(values, key=values.get)
            out.append(f"{_label(row, by[:-1])}BASE at its best reading: {values[best] * 100:.1f}% "
                       f"({readings[best]}); a trained condition has learnt something where it beats that.")
    return out


def faithfulness_section(tables: RunTables, n_boot: int = 1000, seed: int = 0) -> Section:
    """How often the answer changes when the student's rationale is replaced, per test set, student and condition."""
    items = with_arms(tables.items)
    by = [c for c in ("test_set", "student", "condition") if c in items.columns]
    section = Section("faithfulness", "Faithfulness: does the answer depend on the rationale?",
                      "Share of items whose answer changed when the student's own rationale was replaced by a "
                      "perturbed one or by a counterfactual one (arguing for another option), and how often the "
                      "answer then followed the counterfactual; an answer that ignores its rationale rarely changes. "
                      f"95% confidence intervals from a cluster bootstrap over test items. Unit: {unit_text(items)}.")
    present = [c for c in FAITHFULNESS if has_values(items, c)]
    if not present:
        section.notes.append("no item has a faithfulness probe (evaluation.faithfulness is off, or every student is "
                             "encoder-decoder); this input is absent.")
        return section
    section.table = pd.concat([mean_table(items, c, by, n_boot, seed).assign(probe=c) for c in present],
                              ignore_index=True).rename(columns={"mean": "rate"}).assign(unit="item")
    for row in section.table.to_dict("records"):
        section.sentences.append(f"{_label(row, by[:-1])}{row[by[-1]]}, {FAITHFULNESS[row['probe']]}: "
                                 f"{row['rate'] * 100:.1f}% of {_of_items(row)} "
                                 f"({_ci_text(row['ci_low'], row['ci_high'])}).")
    return section


def _reading_name(row: dict | pd.Series, attrs: dict) -> str:
    """How a sentence names the reading of a row (its `reading` column, else the table's value): 'the generated
    answer'."""
    reading = row.get("reading", attrs.get("value", "correct"))
    return READINGS.get(str(reading), str(reading))


def _readings_text(readings: Sequence[str]) -> str:
    """'correct (the generated answer), loglik_correct (...)' for an explanation."""
    return ", ".join(f"{r} ({READINGS.get(r, r)})" for r in readings)


def mcnemar_section(tables: RunTables, alpha: float = 0.05) -> Section:
    """Paired McNemar tests between conditions on the same test items, for every reading of the answer a run has,
    Holm-corrected over the pairs of a test set, student and reading; TEACHER and BASE are paired under every seed."""
    items = beside_every_seed(with_arms(tables.items))
    readings = [r for r in READINGS if has_values(items, r)]
    section = Section("mcnemar", "McNemar's test on the same items (paired)",
                      "For two conditions (same student and seed) answering the same test items, only the items one "
                      "gets right and the other wrong carry information; McNemar tests whether those split evenly "
                      "(statsmodels: the exact binomial test below 25 such items, else chi-square with continuity "
                      "correction). Every reading of the answer this run has is tested (column reading): "
                      f"{_readings_text(readings) or 'none'}; an item a reading did not score is left out of the pairs "
                      "it is in. TEACHER (the teacher's own answers) is paired with every condition of every student "
                      "and seed on the in-distribution items both answered, and BASE (untrained, the same under every "
                      "seed) with every seed. The p values are Holm-adjusted over every pair and seed of a test set, "
                      "student and reading (p_holm), and significance is judged on the adjusted p. "
                      "Unit: test item, paired within one seed.")
    if not readings:
        section.notes.append("no item has a reading of its answer (correct, loglik_correct, ...); "
                             "this input is absent.")
        return section
    try:
        table = over_readings(mcnemar_pairs, items, readings)
    except ValueError as exc:
        section.notes.append(str(exc))
        return section
    if table.empty:
        section.notes.append("no two conditions answered the same items, so there is nothing to pair.")
        return section
    section.table = table
    section.sentences = describe_above(table, alpha=alpha) + describe_mcnemar(table, alpha)
    few = table[(table["only1"] + table["only2"]) < 6]
    if len(few):
        section.notes.append(f"{plural(len(few), 'pair')} of conditions differ on fewer than 6 items; even a "
                             "perfect split there cannot reach p < 0.05 with the exact test.")
    return section


def describe_mcnemar(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per McNemar pair: who got more of the shared items right on which reading, and whether that is
    significant after the Holm correction (the raw p is given beside the adjusted one)."""
    within = table.attrs.get("within", [])
    sentences = []
    for _, row in table.iterrows():
        prefix, on = _label(row, within), _reading_name(row, table.attrs)
        if row["n_pairs"] == 0:
            sentences.append(f"{prefix}{row['group1']} vs {row['group2']} on {on}: no shared items to pair.")
            continue
        diff = (row["only1"] - row["only2"]) / row["n_pairs"] * 100
        winner, loser = (row["group1"], row["group2"]) if diff >= 0 else (row["group2"], row["group1"])
        what = (f"on {plural(int(row['n_pairs']), 'shared item')}, {winner} is right where {loser} is wrong "
                f"{max(row['only1'], row['only2'])} times and the reverse {min(row['only1'], row['only2'])} times")
        ps = f"McNemar {format_p(row['p'])}, Holm-adjusted {format_p(row['p_holm'])}"
        if row["only1"] + row["only2"] == 0:
            sentences.append(f"{prefix}{row['group1']} vs {row['group2']} on {on}: the two agree on all "
                             f"{plural(int(row['n_pairs']), 'shared item')} (no discordant pairs, nothing to test).")
        elif row["p_holm"] < alpha:
            sentences.append(f"{prefix}{winner} beats {loser} by {abs(diff):.1f} points on {on} ({what}; {ps}).")
        else:
            sentences.append(f"{prefix}{winner} vs {loser} on {on}: no significant difference ({what}; {ps}).")
    return sentences


def describe_above(table: pd.DataFrame, reference: str = "BASE", alpha: float = 0.05) -> list[str]:
    """Per test set, student and reading of a McNemar table: the conditions significantly above `reference` (paired
    McNemar, Holm-adjusted), with in how many seeds when there are several."""
    if table.empty or not table[["group1", "group2"]].isin([reference]).any(axis=None):
        return []
    keys = [k for k in ("test_set", "student") if k in table.columns]
    reading = "reading" if "reading" in table.columns else None
    sentences = []
    for key, fam in table.groupby([*keys, *([reading] if reading else [])], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        vs = fam[(fam["group1"] == reference) | (fam["group2"] == reference)]
        if vs.empty:
            continue
        first = vs["group1"] == reference
        other = vs["group2"].where(first, vs["group1"])
        ahead = np.where(first, vs["only2"] > vs["only1"], vs["only1"] > vs["only2"])
        above = pd.Series(ahead & (vs["p_holm"] < alpha).to_numpy(), index=vs.index).groupby(other).agg(["sum", "size"])
        names = [f"{c}" + (f" ({int(r['sum'])} of {int(r['size'])} seeds)" if r["size"] > 1 else "")
                 for c, r in above.iterrows() if r["sum"] > 0]
        on = READINGS.get(str(key[-1]), str(key[-1])) if reading else _reading_name({}, table.attrs)
        prefix = _label(dict(zip(keys, key)), keys)
        sentences.append(f"{prefix}Above {reference} on {on} (paired McNemar, Holm-adjusted p < {alpha:g}): "
                         f"{', '.join(names) if names else 'none'}.")
    return sentences


def cochran_section(tables: RunTables, alpha: float = 0.05) -> Section:
    """Cochran's Q over all training conditions at once on the same test items, per test set, student, seed and
    reading of the answer; TEACHER left out, BASE beside every seed."""
    items = beside_every_seed(compared_conditions(tables.items))
    readings = [r for r in READINGS if has_values(items, r)]
    section = Section("cochran", "Cochran's Q over all conditions on the same items (paired)",
                      "Is the share of items answered right the same for every training condition? Cochran's Q "
                      "(statsmodels) extends McNemar's test to all conditions at once: it uses the items every "
                      "condition answered and the reading scored, within one test set, student and seed, so it is "
                      "paired like McNemar and asks one question before the pairwise ones. Every reading this run has "
                      f"is tested: {_readings_text(readings) or 'none'}.{_teacher_left_out(tables.items)} "
                      "Unit: test item, paired within one seed.")
    if not readings:
        section.notes.append("no item has a reading of its answer (correct, loglik_correct, ...); "
                             "this input is absent.")
        return section
    table = over_readings(cochran_q, items, readings)
    section.notes += [f"{where}: fewer than two conditions answered the same items, so there is nothing to compare."
                      for where in table.attrs.get("skipped", [])]
    if table.empty:
        return section
    section.table = table
    within = table.attrs.get("within", [])
    for _, row in table.iterrows():
        verdict = "the conditions differ" if row["p"] < alpha else "no significant difference"
        section.sentences.append(
            f"{_label(row, within)}Cochran's Q over {row['groups']} on {_reading_name(row, table.attrs)}: "
            f"Q = {row['statistic']:.2f} (df {int(row['df'])}, {plural(int(row['n_items']), 'item')}, "
            f"{int(row['discordant'])} on which they disagree), {format_p(row['p'])}: {verdict}.")
    return section


def run_unit_text(runs: pd.DataFrame) -> str:
    """'training run (3 seeds per condition)', or '... (one seed: ...)': the unit of Tukey-Kramer, for the report."""
    n = n_seeds(runs)
    return (f"training run ({n} seeds per condition)" if n > 1 else
            "training run (one seed per condition, so Tukey-Kramer over runs cannot be computed)")


def _silent_notes(silent: Sequence[str], outcome: str) -> list[str]:
    """A note naming the conditions left out of a test of a rationale's score because they write no rationale."""
    if not silent:
        return []
    return [f"{', '.join(silent)} write{'s' if len(silent) == 1 else ''} no rationale (its {outcome} is 0 or missing "
            f"by construction), so {'it is' if len(silent) == 1 else 'they are'} left out of this test."]


def _runs_of(tables: RunTables, outcome: str) -> tuple[pd.DataFrame, list[str]]:
    """One value of `outcome` per training run of the training conditions (outliers marked per condition, test set and
    student), and the conditions left out because they write no rationale."""
    data, silent = without_silent(compared_conditions(tables.items), outcome)
    if not has_values(data, outcome):
        return pd.DataFrame(), silent
    return mark_outliers(run_values(data, outcome), outcome, ("test_set", "student", "condition")), silent


def run_values_section(tables: RunTables, outcome: str) -> Section:
    """One value of `outcome` per training run (the unit of Tukey-Kramer), with its 1.5 IQR outliers marked."""
    key, title = f"tukey_runs_{outcome}", f"{outcome} per training run (the unit of Tukey-Kramer)"
    expl = (f"One value per training run: its mean {outcome} over the items of one test set. A run outside 1.5 IQR "
            "of its condition's runs on the same test set and student (below Q1 - 1.5 IQR or above Q3 + 1.5 IQR, "
            "quartiles as R's quantile) is marked outlier and left out of Tukey-Kramer, as Hendriks et al. do."
            f"{_teacher_left_out(tables.items)} Unit: {run_unit_text(tables.items)}.")
    runs, silent = _runs_of(tables, outcome)
    if runs.empty:
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl, runs, notes=_silent_notes(silent, outcome))
    for row in runs[runs["outlier"]].to_dict("records"):
        section.sentences.append(f"{_label(row, ['test_set', 'student'])}run {row['run']} ({row[outcome]:.3f}) is "
                                 f"an outlier among {row['condition']}'s runs and is left out of Tukey-Kramer.")
    if not runs["outlier"].any():
        section.sentences.append("No run lies outside 1.5 IQR of its condition's runs.")
    return section


def tukey_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Tukey-Kramer HSD between training conditions (per rationale source when there are two) within each test set
    and student, over training runs; never over items."""
    title, expl = (f"Tukey-Kramer HSD on {outcome} over training runs",
                   "Every pair of conditions compared within each test set and student, with the family-wise error "
                   "held at alpha (Tukey-Kramer handles unequal group sizes), as Hendriks et al. run it: one value "
                   f"per training run (tukey_runs_{outcome}), 1.5 IQR outliers removed per condition. Every condition "
                   "answered the same test items, so its items are not an independent group: between conditions on "
                   "items, read the paired tests (McNemar, Cochran's Q). A condition needs two runs (seeds) to take "
                   "part; BASE, untrained, has one run per student. With students trained on unrevised and revised "
                   "teacher rationales, each condition and source is a group (MT:revised)."
                   f"{_teacher_left_out(tables.items)} Unit: {run_unit_text(tables.items)}.")
    key = f"tukey_{outcome}"
    runs, silent = _runs_of(tables, outcome)
    if runs.empty:
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    table, notes = tukey_by(runs, value=outcome, alpha=alpha)
    return Section(key, title, expl, table if len(table) else None, describe_tukey_by(table) if len(table) else [],
                   _silent_notes(silent, outcome) + notes)


def tukey_by(runs: pd.DataFrame, value: str = "correct", by: Sequence[str] = ("test_set", "student"),
             group: str = "condition", alpha: float = 0.05) -> tuple[pd.DataFrame, list[str]]:
    """`tukey_over_runs` within each subset of `by` (e.g. per test set and student) of a table of per-run values;
    also the notes of skipped subsets and of the conditions left out with a single run."""
    by = [b for b in by if b in runs.columns]
    tables, notes = [], []
    for key, grp in (runs.groupby(by, sort=True) if by else [((), runs)]):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{b} {k}" for b, k in zip(by, key)) or "all runs"
        try:
            table = tukey_over_runs(grp, value=value, group=group, alpha=alpha)
        except TooFewObservations as exc:
            notes.append(f"{label}: {exc}")
            continue
        if table.attrs.get("left_out"):
            notes.append(f"{label}: left out with a single run (untrained, or one seed): "
                         f"{', '.join(table.attrs['left_out'])}.")
        for b, k in reversed(list(zip(by, key))):
            table.insert(0, b, k)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.attrs.update(value=value, group=group, alpha=alpha, by=by, unit="run")
    return out, notes


def describe_tukey_by(table: pd.DataFrame) -> list[str]:
    """describe_tukey's sentences, each prefixed by its subset (e.g. "[csqa, gpt2] MT beats CF on ...")."""
    by = table.attrs.get("by", [])
    sentences = []
    for _, row in table.iterrows():
        one = pd.DataFrame([row]).reset_index(drop=True)
        one.attrs.update(table.attrs)
        prefix = _label(row, by)
        sentences += [prefix + s for s in describe_tukey(one)]
    return sentences


def describe_tukey(df: pd.DataFrame) -> list[str]:
    """One plain sentence per pair of a Tukey-Kramer table naming the reading and the test, e.g. "MT beats CF on the
    generated answer by 4.1 points (Tukey-Kramer over 3 and 3 training runs, p = 0.003)."

    Differences of a 0/1 reading (correct, the default) read as accuracy points (x100); other values keep their scale.
    """
    value = df.attrs.get("value", "correct")
    as_points, on = value in READINGS, READINGS.get(value, value)
    sentences = []
    for row in df.to_dict("records"):
        diff = float(row["meandiff"])
        winner, loser = (row["group2"], row["group1"]) if diff >= 0 else (row["group1"], row["group2"])
        size = f"{abs(diff) * 100:.1f} points" if as_points else f"{abs(diff):.3f}"
        test = (f"Tukey-Kramer over {int(row['n1'])} and {int(row['n2'])} training runs" if "n1" in row
                else "Tukey-Kramer")
        if row["reject"]:
            sentences.append(f"{winner} beats {loser} on {on} by {size} ({test}, {format_p(row['p_adj'])}).")
        else:
            sentences.append(f"{winner} vs {loser} on {on}: no significant difference ({winner} ahead by {size}, "
                             f"{test}, {format_p(row['p_adj'])}).")
    return sentences


def anova_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Two-way ANOVA condition x student size per test set on per-item means over seeds (Levene, Shapiro-Wilk)."""
    title, expl = (f"Two-way ANOVA on {outcome}: condition x student size",
                   "Does the condition matter, does the student's size matter, and does the effect of the condition "
                   "depend on the size? Levene's test checks equal variances and Shapiro-Wilk normal residuals. With "
                   "two rationale sources each condition and source is a level of condition (MT:revised)."
                   " It treats each condition's items as an independent group, although every condition answered "
                   "the same items; the paired tests (McNemar, Cochran's Q) use that pairing."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    data, silent = without_silent(compared_conditions(tables.items), outcome)
    section, present = _open_section(f"anova_{outcome}", title, expl, data, outcome)
    if not present:
        return section
    section.notes += _silent_notes(silent, outcome)
    _anova_by(section, over_seeds(data, [outcome]), outcome, ["test_set"], "student_size", alpha)
    return section


def revision_anova_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Two-way ANOVA condition x revision (rationale_source) per test set and student, on per-item means over seeds,
    over the conditions trained on both sources."""
    title, expl = (f"Two-way ANOVA on {outcome}: condition x revision",
                   "Does the condition matter, does training on critique-revised teacher rationales instead of "
                   "unrevised ones matter, and does revision help some conditions more than others (seed 001)? Only "
                   "conditions trained on both kinds of rationale take part (the crossed design). Levene's test "
                   "checks equal variances and Shapiro-Wilk normal residuals."
                   " It treats each condition's items as an independent group, although every condition answered "
                   "the same items; the paired tests (McNemar, Cochran's Q) use that pairing."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    data, silent = without_silent(tables.items[tables.items["condition"] != TEACHER], outcome)
    section, present = _open_section(f"anova_revision_{outcome}", title, expl, data, outcome)
    if not present:
        return section
    section.notes += _silent_notes(silent, outcome)
    if not has_revision(data):
        section.notes += _revision_notes(data) or [f"the items have no {SOURCE} column, so there is no revision "
                                                   "factor to test."]
        return section
    data, left_out = crossed(data)
    section.notes += _revision_notes(tables.items, left_out)
    _anova_by(section, over_seeds(data, [outcome]), outcome, ["test_set", "student"], SOURCE, alpha)
    return section


def _anova_by(section: Section, data: pd.DataFrame, outcome: str, by: Sequence[str], b: str, alpha: float) -> None:
    """Fit the two-way ANOVA condition x `b` within each subset of `by`; add its sentences, notes and table to
    `section` (a subset the data cannot support becomes a note)."""
    parts = []
    for key, grp in data.groupby(list(by), sort=True):
        label = ", ".join(map(str, key))
        where = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in zip(by, key))
        try:
            table = two_way_anova(grp, value=outcome, b=b, alpha=alpha)
        except TooFewObservations as exc:
            section.notes.append(f"{where}: {exc}")
            continue
        section.sentences += [f"[{label}] {s}" for s in describe_anova(table, alpha)]
        section.notes += [f"{where}: {n}" for n in table.attrs["notes"]]
        section.sentences.append(f"[{label}] assumption checks: Levene {_p_or_na(table.attrs['levene_p'])}, "
                                 f"Shapiro-Wilk {_p_or_na(table.attrs['shapiro_p'])}.")
        table = table.assign(levene_p=table.attrs["levene_p"], shapiro_p=table.attrs["shapiro_p"], unit="item")
        for k, v in reversed(list(zip(by, key))):
            table.insert(0, k, v)
        parts.append(table)
    section.table = pd.concat(parts, ignore_index=True) if parts else None


def describe_anova(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per effect of a two_way_anova table, e.g. "condition: F(3, 40) = 5.10, p = 0.004 (significant)."""
    resid_df = float(table.loc[table["source"] == "residual", "df"].iloc[0])
    sentences = []
    for row in table[table["source"] != "residual"].itertuples(index=False):
        verdict = "significant" if row.p < alpha else "not significant"
        sentences.append(f"{row.source}: F({row.df:g}, {resid_df:g}) = {row.F:.2f}, {format_p(row.p)} ({verdict}).")
    return sentences


def _p_or_na(p: float) -> str:
    """'p = 0.030', or 'not computable' for NaN."""
    return format_p(p) if np.isfinite(p) else "not computable"


def kruskal_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Kruskal-Wallis and Dunn-Bonferroni per test set and student on per-item means over seeds."""
    title, expl = (f"Kruskal-Wallis and Dunn-Bonferroni on {outcome} (non-parametric)",
                   "Compares conditions by ranks, without assuming normal residuals or equal variances; Dunn's "
                   "pairwise tests are Bonferroni-corrected. Read these when the ANOVA's checks fail."
                   " It treats each condition's items as an independent group, although every condition answered "
                   "the same items; the paired tests (McNemar, Cochran's Q) use that pairing."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    data, silent = without_silent(compared_conditions(tables.items), outcome)
    section, present = _open_section(f"kruskal_{outcome}", title, expl, data, outcome)
    if not present:
        return section
    section.notes += _silent_notes(silent, outcome)
    parts = []
    for (test_set, student), grp in over_seeds(data, [outcome]).groupby(["test_set", "student"], sort=True):
        try:
            table = kruskal_dunn(grp, value=outcome, alpha=alpha)
        except TooFewObservations as exc:
            section.notes.append(f"test set {test_set}, student {student}: {exc}")
            continue
        label = f"[{test_set}, {student}]"
        verdict = "the conditions differ" if table.attrs["kw_p"] < alpha else "no significant difference"
        section.sentences.append(f"{label} Kruskal-Wallis H = {table.attrs['H']:.2f}, "
                                 f"{format_p(table.attrs['kw_p'])}: {verdict}.")
        for row in table[table["reject"]].itertuples(index=False):
            better = row.group2 if row.z > 0 else row.group1
            worse = row.group1 if row.z > 0 else row.group2
            section.sentences.append(f"{label} Dunn: {better} ranks above {worse} "
                                     f"(z = {abs(row.z):.2f}, Bonferroni {format_p(row.p_adj)}).")
        table.insert(0, "student", student)
        table.insert(0, "test_set", test_set)
        parts.append(table.assign(H=table.attrs["H"], kw_p=table.attrs["kw_p"], unit="item"))
    section.table = pd.concat(parts, ignore_index=True) if parts else None
    return section


def check_reference(reference: str | None, conditions: Sequence[str] | None) -> None:
    """Refuse a statistics.reference that is not one of training.conditions, or that answers no test items (CAUSAL)."""
    if reference is None:
        return
    if conditions is not None and reference not in conditions:
        raise ValueError(f"statistics.reference: {reference!r} is not one of training.conditions "
                         f"({', '.join(conditions)}); set it to one of them, or to null for the first one listed")
    if reference == "CAUSAL":
        raise ValueError("statistics.reference: CAUSAL students answer no test questions, so CAUSAL cannot be the "
                         "regressions' baseline; choose another condition of training.conditions")


def choose_reference(present: Sequence[str], conditions: Sequence[str] | None,
                     reference: str | None) -> tuple[str, str]:
    """The regression's reference condition among those `present` (with data), and why it is the one.

    statistics.reference when it has data here; else the first condition listed in training.conditions
    (`conditions`) that has; else the first alphabetically (when no conditions are given).
    """
    present = sorted(set(map(str, present)))
    if reference in present:
        return str(reference), "statistics.reference"
    listed = [c for c in (conditions or []) if c in present]
    first, how = ((listed[0], "the first condition listed in training.conditions") if listed
                  else (present[0], "the first condition alphabetically, as no training.conditions were given"))
    if reference is not None:
        how = f"statistics.reference {reference} has no data here, so {how} that has"
    return first, how


REVISION_MODEL = ("With students trained on unrevised and on revised teacher rationales the model crosses condition "
                  "and revision, C(condition) * C(rationale_source) as in seed 001, over the conditions trained on "
                  "both: the condition dummies (on unrevised rationales), the revised dummy (the revision effect for "
                  "the reference condition) and their interaction (how much more revision changes a condition than "
                  "it changes the reference).")


def ols_section(tables: RunTables, outcome: str, reference: str | None = None,
                conditions: Sequence[str] | None = None) -> Section:
    """OLS of a per-item outcome (mean over seeds) on condition dummies (x revision when there are two rationale
    sources; student and test-set effects when several), with standard errors clustered by test item."""
    title, expl = (f"Regression of {outcome} on condition",
                   "OLS with treatment-coded condition dummies (coefficients are differences from the reference "
                   "condition) and one fixed effect per student and test set when there are several. Rationale "
                   "length is left out: the condition itself changes it, so holding it fixed would hide part of the "
                   f"condition's effect (a post-treatment variable). {REVISION_MODEL} Standard errors are clustered "
                   f"by test item; * p < 0.05, ** p < 0.01, *** p < 0.001.{_teacher_left_out(tables.items)} "
                   f"Unit: {unit_text(tables.items)}.")
    key = f"ols_{outcome}"
    if not has_values(tables.items, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    kept, silent = without_silent(tables.items[tables.items["condition"] != TEACHER], outcome)
    data, revision, notes = _regression_rows(over_seeds(kept, [outcome]).dropna(subset=[outcome]))
    notes = _silent_notes(silent, outcome) + notes
    data = data.assign(test_item=item_clusters(data))
    fixed = [c for c in ("student", "test_set") if c in data and data[c].nunique() > 1]
    ref, why = choose_reference(data["condition"], conditions, reference)
    section = Section(key, title, expl, sentences=[f"Reference condition: {ref} ({why})."], notes=notes)
    try:
        section.table = ols_regression(data, outcome=outcome, reference=ref, fixed_effects=fixed, cluster="test_item",
                                       **revision)
    except TooFewObservations as exc:
        section.notes.append(str(exc))
        return section
    section.table["unit"] = "item"
    section.sentences += describe_ols(section.table)
    return section


def _regression_rows(data: pd.DataFrame) -> tuple[pd.DataFrame, dict, list[str]]:
    """The rows a regression on condition uses (no TEACHER; with two rationale sources, the conditions trained on
    both), the revision arguments of ols_regression ({} without), and the notes on the revision factor."""
    data = data[data["condition"] != TEACHER]
    if not has_revision(data):
        return data, {}, _revision_notes(data)
    design, left_out = crossed(data)
    return design, {"factor": SOURCE, "factor_reference": UNREVISED}, _revision_notes(data, left_out)


def describe_ols(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain sentences for the condition, revision and interaction terms of an ols_regression table, and its fit."""
    sentences = []
    for row in table.itertuples(index=False):
        what = _term_text(row.term, table.attrs)
        if what is not None:
            verdict = "significant" if row.p < alpha else "not significant"
            sentences.append(f"{what}: {row.coef:+.3f} (SE {row.se:.3f}, {format_p(row.p)}, {verdict}).")
    sentences.append(f"R² = {table.attrs.get('r2', float('nan')):.3f} on n = {table.attrs.get('n', '?')}; "
                     f"model `{table.attrs.get('formula', '')}`; standard errors {table.attrs.get('se_type', '')}.")
    return sentences


def _term_text(term: str, attrs: dict) -> str | None:
    """How a sentence names a term of ols_regression: 'MT vs FT', 'revised vs unrevised rationales (for FT)',
    'MT x revised (...)'; None for the intercept, covariates and fixed effects."""
    ref, factor, base = attrs.get("reference", "the baseline"), attrs.get("factor"), attrs.get("factor_reference")
    dummy = rf"{re.escape(attrs.get('group', 'condition'))}\[T\.(.+?)\]"
    if factor:
        level = rf"{re.escape(factor)}\[T\.(.+)\]"
        if m := re.fullmatch(f"{dummy}:{level}", term):
            return f"{m[1]} x {m[2]} (how much more {m[2]} rationales change {m[1]} than {ref})"
        if m := re.fullmatch(level, term):
            return f"{m[1]} vs {base} rationales (for {ref})"
    if m := re.fullmatch(dummy, term):
        return f"{m[1]} vs {ref}" + (f" (on {base} rationales)" if factor else "")
    return None


def _raters_sentence(ratings: pd.DataFrame) -> str:
    """'Ratings: 48 by the judge (judge:gpt-4o), 30 by 1 human rater.'"""
    judge = ratings["rater"].astype(str).str.startswith("judge:")
    parts = [f"{int(judge.sum())} by the judge ({', '.join(sorted(ratings.loc[judge, 'rater'].unique()))})"] \
        if judge.any() else []
    if (~judge).any():
        parts.append(f"{int((~judge).sum())} by {plural(ratings.loc[~judge, 'rater'].nunique(), 'human rater')}")
    return f"Ratings: {', '.join(parts)}."


def ratings_sections(tables: RunTables, dimensions: Sequence[str] = DIMENSIONS, reference: str | None = None,
                     conditions: Sequence[str] | None = None) -> list[Section]:
    """OLS of each rating dimension (mean over seeds) on condition dummies (x revision when there are two rationale
    sources) + rationale length (+ rater fixed effects when several), with standard errors clustered by test item."""
    expl = ("Ratings (an LLM judge or human raters, Likert scale) regressed on condition dummies and rationale length, "
            "as in seed 001 (the length is a rater control here: longer explanations may be rated higher for length "
            "alone), with one fixed effect per rater when there are several (rater severity); standard errors "
            f"clustered by test item. {REVISION_MODEL} "
            f"Unit: {unit_text(tables.items, RATING_UNIT)}.")
    present = rated_dimensions(tables.ratings, dimensions)
    if not present:
        return [_absent("ols_ratings", "Regression of ratings on condition", expl,
                        ratings_absent_note(tables.ratings, dimensions))]
    ratings = tables.ratings
    covariates = [c for c in ("rationale_len",) if c in ratings.columns]
    out = []
    for dim in present:
        data, revision, notes = _regression_rows(over_seeds(ratings, [dim, *covariates], keys=(*UNIT_KEYS, "rater"))
                                                 .dropna(subset=[dim]))
        data = data.assign(test_item=item_clusters(data))
        ref, why = choose_reference(data["condition"], conditions, reference)
        section = Section(f"ols_rating_{dim}", f"Regression of {dim} ratings on condition", expl,
                          sentences=[_raters_sentence(ratings), f"Reference condition: {ref} ({why})."], notes=notes)
        fixed = ["rater"] if data["rater"].nunique() > 1 else []
        try:
            section.table = ols_regression(data, outcome=dim, covariates=covariates, reference=ref,
                                           fixed_effects=fixed, cluster="test_item", **revision)
            section.table["unit"] = "rating"
            section.sentences += describe_ols(section.table)
        except TooFewObservations as exc:
            section.notes.append(str(exc))
        out.append(section)
    return out


def metrics_section(tables: RunTables) -> Section:
    """How CEC agrees with BLEU / ROUGE-L / BERTScore on the same explanations (per-item means over seeds)."""
    section = Section("cec_vs_metrics", "CEC against BLEU, ROUGE-L and BERTScore",
                      "Spearman rank correlation, over items, between CEC and each surface or embedding metric of the "
                      "same explanation against the teacher's. "
                      f"Unit: {unit_text(tables.items, 'test item of one condition and student')}.")
    present = [m for m in TEXT_METRICS if has_values(tables.items, m)]
    if not present:
        section.notes.append("no item has BLEU, ROUGE-L or BERTScore (evaluation.text_metrics is off); "
                             "this input is absent.")
        return section
    if not has_values(tables.items, "cec"):
        section.notes.append("no item has a CEC score, so there is nothing to correlate with; this input is absent.")
        return section
    kept, silent = without_silent(tables.items[tables.items["condition"] != TEACHER], "cec")
    section.notes += _silent_notes(silent, "cec")
    table = cec_text_metric_correlations(over_seeds(kept, ["cec", *present]), present).assign(unit="item")
    section.table = table
    for row in table.itertuples(index=False):
        if np.isfinite(row.spearman_rho):
            section.sentences.append(f"CEC vs {row.metric}: Spearman rho = {row.spearman_rho:.2f} "
                                     f"({format_p(row.p)}, n = {row.n}).")
        else:
            section.notes.append(f"CEC vs {row.metric}: too few items that vary ({row.n}) for a correlation.")
    return section


def causal_section(tables: RunTables) -> Section:
    """How close the CAUSAL students' explanations of held-out claims come to the teacher's (CEC and text metrics)."""
    section = Section("causal_explanations", "CAUSAL students: explanations of held-out claims",
                      "A CAUSAL student reads a claim, one evidence sentence and the label, and explains the cause, "
                      "mechanism and effect; CEC and the text metrics compare it with the teacher's explanation. "
                      "Unit: one explanation of a held-out claim, per run (a description, no test).")
    if tables.causal is None:
        section.notes.append("no CAUSAL run in this study explained a held-out claim (05_evaluation/causal_items.jsonl "
                             "is absent or empty: training.conditions has no CAUSAL, or data.claims gives no held-out "
                             "claims); this input is absent.")
        return section
    table = causal_table(tables.causal)
    section.table = table
    for row in table.itertuples(index=False):
        label = f"[{row.student}, seed {row.seed}]"
        if row.n_scored == 0:
            section.notes.append(f"{label} none of its {plural(int(row.n), 'explanation')} has a teacher "
                                 "explanation to score against (the teacher failed on those pairs).")
            continue
        section.sentences.append(f"{label} {plural(int(row.n_scored), 'explanation')} scored: mean CEC "
                                 f"{row.cec:.3f} (forward coverage {row.cec_fc:.3f}, backward faithfulness "
                                 f"{row.cec_bf:.3f}).")
    return section


def analyse(tables: RunTables, outcomes: Sequence[str] = ("correct", "cec"), alpha: float = 0.05,
            n_boot: int = 1000, seed: int = 0, reference: str | None = None,
            conditions: Sequence[str] | None = None) -> dict[str, Section]:
    """Every analysis of the report in order, keyed by section key; a test the data cannot support becomes a note.

    `reference` is statistics.reference and `conditions` training.conditions: the regressions' baseline is the
    reference, or (None) the first condition listed that has data. A reference not among the conditions is refused.
    """
    check_reference(reference, conditions)
    sections = [accuracy_section(tables, n_boot, seed), faithfulness_section(tables, n_boot, seed),
                cochran_section(tables, alpha), mcnemar_section(tables, alpha)]
    for outcome in outcomes:
        sections += [run_values_section(tables, outcome), tukey_section(tables, outcome, alpha),
                     anova_section(tables, outcome, alpha),
                     revision_anova_section(tables, outcome, alpha), kruskal_section(tables, outcome, alpha),
                     ols_section(tables, outcome, reference, conditions)]
    sections += ratings_sections(tables, reference=reference, conditions=conditions)
    sections.append(metrics_section(tables))
    sections.append(causal_section(tables))
    return {s.key: s for s in sections}


def write_analysis(sections: dict[str, Section], out: Path) -> list[str]:
    """Write <key>.csv for each section with a table (removing a stale one otherwise) and findings.md; returns paths."""
    paths = [atomic_write_text(Path(out) / f"{k}.csv", s.table.to_csv(index=False))
             for k, s in sections.items() if s.ran]
    for key in [k for k, s in sections.items() if not s.ran]:  # a table from an earlier execution would mislead
        (Path(out) / f"{key}.csv").unlink(missing_ok=True)
    paths.append(atomic_write_text(Path(out) / "findings.md", sections_markdown(sections)))
    return [str(p) for p in paths]


def sections_markdown(sections: dict[str, Section]) -> str:
    """Every section's sentences and notes as markdown."""
    lines = []
    for s in sections.values():
        lines.append(f"### {s.title}\n")
        lines += [f"- {x}" for x in s.sentences]
        lines += [f"- Not tested / note: {n}" for n in s.notes]
        if not s.sentences and not s.notes:
            lines.append("- (nothing to report)")
        lines.append("")
    return "\n".join(lines)
