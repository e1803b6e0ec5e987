"""The tables step 05 writes from its per-item results (lib.evaluation.ItemResult rows).

`summary_table` (summary.csv): every reading's accuracy (the generated answer, strict and lenient; the option scores
in the condition's own prompt; lm-eval's zero-shot cloze and lettered readings), the parse rate, metrics and
faithfulness per run and test set;
`pick_distribution` (picks.csv): each run's share of log-likelihood picks per option letter beside gold's, which
shows a scorer that favours one letter (benchmarks/loglik_bias.py); `ood_matrix` (ood_matrix.csv): each
condition's train-set x test-set accuracy matrix; `faithfulness_table` (faithfulness.csv): the answer-change rates;
`write_tables` writes them all, `for_reading` shows one as a reader reads it (percentages); `write_summary`:
summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lib.evaluation import ItemResult, items_frame

FAITHFULNESS_COLUMNS = ("faithfulness_perturbed", "faithfulness_counterfactual", "faithfulness_cf_follows")


# Per-item 0/1 columns and the summary column of their mean: every reading of a student's answers, headline first.
READINGS = {
    "accuracy": "correct",  # the option named in the condition's own answer sentence (strict: lib.metrics)
    "lenient_accuracy": "lenient_correct",  # the lenient reader's option (labelled; never the headline)
    "loglik_accuracy": "loglik_correct",  # own prompt, option scored by summed log-likelihood (lm-eval's acc rule)
    "loglik_norm_accuracy": "loglik_norm_correct",  # own prompt, per character (acc_norm's rule)
    "cloze_accuracy": "cloze_correct",  # lm-eval arc_easy cloze formulation, acc
    "cloze_norm_accuracy": "cloze_norm_correct",  # lm-eval arc_easy cloze formulation, acc_norm
    "lettered_accuracy": "lettered_correct",  # lm-eval commonsense_qa lettered formulation, acc
}
SHARES = (*READINGS, "parse_rate", "unparseable", "answer_change_perturbed", "answer_change_counterfactual")


def summary_table(rows: Sequence[ItemResult]) -> Any:
    """Per condition, rationale source, student, seed and test set: n, every reading's accuracy (READINGS), the parse
    rate of generated answers, mean metrics and faithfulness.

    A reading's accuracy is over the items it was read on (`n_scored` for the log-likelihood readings, which
    evaluation.score_max_items may cap); `parse_rate` is the share of generated answers whose answer sentence names an
    option (lib.metrics.extract_answer), `unparseable` the rest.
    """
    df = items_frame(rows)
    for c in (*READINGS.values(), *FAITHFULNESS_COLUMNS):
        df[c] = df[c].astype(float)
    df["parsed"] = 1.0 - df["unparseable"].astype(float)
    return (df.groupby(["condition", "rationale_source", "student", "seed", "train_set", "test_set"], as_index=False,
                       dropna=False)
              .agg(n=("correct", "size"), n_scored=("loglik_correct", "count"),
                   **{name: (column, "mean") for name, column in READINGS.items()},
                   parse_rate=("parsed", "mean"), unparseable=("unparseable", "mean"), cec=("cec", "mean"),
                   cec_fc=("cec_fc", "mean"), cec_bf=("cec_bf", "mean"), bleu=("bleu", "mean"),
                   rouge_l=("rouge_l", "mean"), bertscore=("bertscore", "mean"),
                   answer_change_perturbed=("faithfulness_perturbed", "mean"),
                   answer_change_counterfactual=("faithfulness_counterfactual", "mean"),
                   rationale_words=("rationale_len", "mean"), seconds_per_item=("seconds", "mean")))


def for_reading(table: Any) -> Any:
    """A step-05 table as a reader reads it: shares as percentages with one decimal, columns no row has dropped."""
    out = table.dropna(axis=1, how="all").copy()
    for column in out.columns:
        if column in SHARES or column.startswith(("answer_change_", "follows_")) or column.startswith("("):
            out[column] = (out[column].astype(float) * 100).round(1)
    out = out.rename(columns={c: f"{c} %" for c in out.columns
                              if c in SHARES or c.startswith(("answer_change_", "follows_"))})
    for column in ("cec", "cec_fc", "cec_bf", "rouge_l", "bertscore"):
        if column in out:
            out[column] = out[column].astype(float).round(3)
    for column in ("bleu", "rationale_words", "seconds_per_item", "max_share"):
        if column in out:
            out[column] = out[column].astype(float).round(1 if column != "max_share" else 3)
    return out


def write_tables(out: Path, rows: Sequence[ItemResult]) -> dict[str, Any]:
    """Write step 05's tables (items.jsonl, summary.csv, picks.csv, ood_matrix.csv, faithfulness.csv); returns them."""
    from lib.files import atomic_write_text, write_jsonl

    write_jsonl(out / "items.jsonl", rows)
    tables = {"summary": summary_table(rows), "picks": pick_distribution(rows), "ood_matrix": ood_matrix(rows),
              "faithfulness": faithfulness_table(rows)}
    for name, table in tables.items():
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=name == "ood_matrix"))
    return tables


def write_correlations(out: Path, rows: Sequence[ItemResult], judged: Sequence[Any]) -> Any:
    """correlations.csv: how each explanation metric correlates with the judge's ratings (Spearman); returns it."""
    from lib.files import atomic_write_text
    from lib.metrics import metric_rating_correlations
    from lib.ratings import ratings_frame

    table = metric_rating_correlations(items_frame(rows), ratings_frame(judged))
    atomic_write_text(out / "correlations.csv", table.to_csv(index=False))
    return table


def pick_distribution(rows: Sequence[ItemResult], column: str = "loglik_norm_pred") -> Any:
    """Per run and test set: the share of each option letter among the picks in `column`, beside gold's shares.

    `column` is loglik_norm_pred, loglik_pred or prediction; only items with a pick count (gold over the same
    items). Two rows per run and test set, `of` = the column and `gold`, with `n` and `max_share` (the
    largest share of one letter): a scorer far above gold's max_share favours that letter.
    """
    import pandas as pd

    from lib.questions import option_letters

    df = items_frame(rows).dropna(subset=[column, "gold"])
    letters = option_letters(int(max(df[column].max(), df["gold"].max())) + 1) if len(df) else []
    out = []
    for (run, test_set), g in df.groupby(["run", "test_set"], sort=False):
        for of in (column, "gold"):
            shares = g[of].astype(int).value_counts(normalize=True)
            out.append({"run": run, "condition": g["condition"].iloc[0], "test_set": test_set, "of": of, "n": len(g),
                        **{f"({x})": float(shares.get(k, 0.0)) for k, x in enumerate(letters)},
                        "max_share": float(shares.max())})
    return pd.DataFrame(out, columns=["run", "condition", "test_set", "of", "n", *[f"({x})" for x in letters],
                                      "max_share"])


def ood_matrix(rows: Sequence[ItemResult], value: str = "correct") -> Any:
    """Accuracy (%) per condition, rationale source, student and seed: one row per training set, one column per test
    set (TEACHER answered the in-distribution set only)."""
    df = items_frame(rows)
    df[value] = df[value].astype(float) * 100
    table = df.pivot_table(index=["condition", "rationale_source", "student", "seed", "train_set"], columns="test_set",
                           values=value, aggfunc="mean", sort=False)
    order = list(dict.fromkeys(df["test_set"]))  # in-distribution first, as step 01 wrote them
    table = table[[c for c in order if c in table.columns]].round(1)
    table.columns.name = f"{value} (%) on test set"
    return table


def faithfulness_table(rows: Sequence[ItemResult]) -> Any:
    """Answer-change rate per run when the rationale is perturbed or counterfactual, with the items measured."""
    df = items_frame(rows)
    out = []
    for run, g in df.groupby("run", sort=False):
        row = {"run": run, "condition": g["condition"].iloc[0]}
        for col, label in (("faithfulness_perturbed", "perturbed"), ("faithfulness_counterfactual", "counterfactual")):
            vals = g[col].dropna().astype(float)
            row[f"n_{label}"] = len(vals)
            row[f"answer_change_{label}"] = float(vals.mean()) if len(vals) else math.nan
        cf = g["faithfulness_cf_follows"].dropna().astype(float)
        row["follows_counterfactual"] = float(cf.mean()) if len(cf) else math.nan
        out.append(row)
    import pandas as pd

    return pd.DataFrame(out)


def write_summary(out: Path, rows: Sequence[ItemResult], ratings: Sequence[Any]) -> Path:
    """summary.json: accuracy per run and test set, the OOD matrices, faithfulness and the judge's failures."""
    from lib.files import write_json

    matrix = ood_matrix(rows)
    summary = {
        "runs": sorted({r.run for r in rows}),
        "test_sets": list(dict.fromkeys(r.test_set for r in rows)),
        "ood_matrix": [{**dict(zip(matrix.index.names, idx)), **{k: _num(v) for k, v in vals.items()}}
                       for idx, vals in zip(matrix.index, matrix.to_dict("records"))],
        "faithfulness": [{k: _num(v) for k, v in r.items()} for r in faithfulness_table(rows).to_dict("records")],
        "ratings": {"n": len(ratings), "failed": sum(getattr(r, "failure", None) is not None for r in ratings)},
    }
    return write_json(out / "summary.json", summary)


def _num(v: Any) -> Any:
    """A JSON-safe scalar: NaN becomes None, numpy numbers become Python numbers."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v
