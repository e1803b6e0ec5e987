"""Statistics over per-item results: accuracy with bootstrap CIs, Tukey-Kramer HSD and OLS regression.

Input everywhere is the per-item table of step 05 (`items`): one row per (run, test item) with
columns run, condition, student, seed, test_set, item_id, correct (0/1), cec (may be NaN) and
rationale_len. scipy and statsmodels are imported inside the functions that use them, so importing
this module stays light.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


class TooFewObservations(ValueError):
    """The data cannot support the requested test (too few groups, items or too little variation)."""


def _require_columns(items: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise when `items` lacks a column the analysis needs."""
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise ValueError(
            f"{what} needs column(s) {', '.join(missing)}, but the table has only {', '.join(map(str, items.columns))}; "
            "pass the per-item results of step 05 (05_evaluation/items.jsonl)"
        )


def _plural(n: int, word: str) -> str:
    """'1 item', '3 items'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _group_counts(counts: pd.Series) -> str:
    """'CF: 5 items, MT: 1 item' for a Series of counts indexed by group."""
    return ", ".join(f"{g}: {_plural(int(n), 'item')}" for g, n in counts.items())


def _clean(items: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """The rows of `items` where all `columns` are present, logging how many were dropped."""
    _require_columns(items, columns, what)
    data = items.dropna(subset=list(columns))
    if len(data) < len(items):
        log.info("%s: dropped %d of %d rows with a missing %s", what, len(items) - len(data), len(items),
                 " / ".join(columns))
    return data


def accuracy_table(items: pd.DataFrame, by: Sequence[str] = ("condition", "test_set"), n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per group: n, accuracy, percentile-bootstrap 95% CI (ci_low, ci_high) and mean CEC.

    A group with a single item gets no interval (NaN) and a warning: one item cannot show spread.
    """
    from scipy.stats import bootstrap

    by = list(by)
    _require_columns(items, [*by, "correct"], "accuracy_table")
    if items.empty:
        raise TooFewObservations("accuracy_table got an empty table; evaluate at least one item first (step 05)")
    rng = np.random.default_rng(seed)
    rows = []
    for key, grp in items.groupby(by, sort=True):
        correct = grp["correct"].to_numpy(dtype=float)
        acc = float(correct.mean())
        if len(correct) < 2 or np.all(correct == correct[0]):
            # All resamples of constant data are identical; scipy warns and BCa fails, the interval is the point.
            low, high = (acc, acc) if len(correct) >= 2 else (np.nan, np.nan)
            if len(correct) < 2:
                log.warning("accuracy_table: group %s has one item, so it has no confidence interval", key)
        else:
            ci = bootstrap((correct,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="percentile",
                           vectorized=True, batch=100, rng=rng).confidence_interval
            low, high = float(ci.low), float(ci.high)
        cec = float(grp["cec"].mean()) if "cec" in grp else np.nan
        rows.append({**dict(zip(by, key)), "n": len(correct), "accuracy": acc, "ci_low": low, "ci_high": high,
                     "cec": cec})
    return pd.DataFrame(rows)


def tukey_kramer(items: pd.DataFrame, value: str = "correct", group: str = "condition",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Tukey-Kramer HSD of `value` between every pair of `group` levels (statsmodels; unequal sizes allowed).

    meandiff is mean(group2) - mean(group1). The table's attrs hold `value` and `group`.
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    data = _clean(items, [value, group], "Tukey-Kramer")
    groups = data[group].astype(str)
    counts = groups.value_counts().sort_index()
    need = f"Tukey-Kramer needs at least two {group} groups with two {value} values each"
    if len(counts) < 2 or (counts < 2).any():
        got = _group_counts(counts) if len(counts) else "no rows"
        raise TooFewObservations(f"{need}; got {got}. Evaluate more items or more {group} groups.")
    y = data[value].to_numpy(dtype=float)
    if np.allclose(data.groupby(groups)[value].transform("mean").to_numpy(dtype=float), y):
        raise TooFewObservations(
            f"{need} and some spread within a group; every {group} has a constant {value} "
            f"(e.g. all right or all wrong), so there is no within-group variance to test against. "
            "Evaluate more items."
        )
    res = pairwise_tukeyhsd(y, groups.to_numpy(), alpha=alpha)
    pairs = [(a, b) for i, a in enumerate(res.groupsunique) for b in res.groupsunique[i + 1:]]
    out = pd.DataFrame({
        "group1": [str(a) for a, _ in pairs],
        "group2": [str(b) for _, b in pairs],
        "meandiff": np.asarray(res.meandiffs, dtype=float),
        "p_adj": np.asarray(res.pvalues, dtype=float),
        "ci_low": np.asarray(res.confint, dtype=float)[:, 0],
        "ci_high": np.asarray(res.confint, dtype=float)[:, 1],
        "reject": np.asarray(res.reject, dtype=bool),
    })
    out.attrs.update(value=value, group=group, alpha=alpha)
    return out


def _format_p(p: float) -> str:
    """'p = 0.003', or 'p < 0.001' for very small p."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def describe_tukey(df: pd.DataFrame) -> list[str]:
    """One plain sentence per pair of a `tukey_kramer` table, e.g. "MT beats CF by 4.1 points (p = 0.003)."

    Differences of `correct` (the default) read as accuracy points (x100); other values keep their scale.
    """
    as_points = df.attrs.get("value", "correct") == "correct"
    sentences = []
    for row in df.itertuples(index=False):
        diff = float(row.meandiff)
        winner, loser = (row.group2, row.group1) if diff >= 0 else (row.group1, row.group2)
        size = f"{abs(diff) * 100:.1f} points" if as_points else f"{abs(diff):.3f}"
        if row.reject:
            sentences.append(f"{winner} beats {loser} by {size} ({_format_p(row.p_adj)}).")
        else:
            sentences.append(f"{winner} vs {loser}: no significant difference ({winner} ahead by {size}, "
                             f"{_format_p(row.p_adj)}).")
    return sentences


def _stars(p: float) -> str:
    """Significance stars: *** p < 0.001, ** p < 0.01, * p < 0.05, '' otherwise."""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def ols_regression(items: pd.DataFrame, outcome: str = "correct", covariates: Sequence[str] = ("rationale_len",),
                   group: str = "condition", reference: str | None = None) -> pd.DataFrame:
    """OLS of `outcome` on `group` dummies (treatment coding) plus covariates, with HC3 robust standard errors.

    The baseline is `reference` or else the first group alphabetically. Columns: term, coef, se, t, p,
    stars; attrs: r2, n, reference, formula. t and p use the t distribution with the residual df.
    """
    import statsmodels.formula.api as smf

    covariates = list(covariates)
    data = _clean(items, [outcome, group, *covariates], "OLS regression")
    groups = data[group].astype(str)
    counts = groups.value_counts().sort_index()
    if len(counts) < 2 or (counts < 2).any():
        got = _group_counts(counts) if len(counts) else "no rows"
        raise TooFewObservations(
            f"the regression needs at least two {group} groups with two items each; got {got}. "
            f"Evaluate more items or more {group} groups."
        )
    levels = list(counts.index)
    reference = levels[0] if reference is None else str(reference)
    if reference not in levels:
        raise ValueError(f"reference {reference!r} is not a {group} in the data; choose one of {', '.join(levels)}")
    frame = pd.DataFrame({"y": data[outcome].to_numpy(dtype=float), "g": groups.to_numpy()})
    for i, c in enumerate(covariates):
        frame[f"x{i}"] = data[c].to_numpy(dtype=float)
    _check_variation(frame, outcome, covariates)
    formula = "y ~ " + " + ".join([f"C(g, Treatment(reference={reference!r}))", *(f"x{i}" for i in range(len(covariates)))])
    n_params = len(levels) + len(covariates)
    if len(frame) <= n_params:
        raise TooFewObservations(
            f"the regression estimates {n_params} coefficients but has only {_plural(len(frame), 'row')}; "
            "it needs more rows than coefficients. Evaluate more items or drop covariates."
        )
    model = smf.ols(formula, data=frame)
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1]:
        raise TooFewObservations(
            f"the covariates {', '.join(covariates)} are collinear with the {group} dummies, so their effects "
            "cannot be told apart; drop one of them"
        )
    fit = model.fit(cov_type="HC3", use_t=True)
    if not np.all(np.isfinite(fit.bse)):
        raise TooFewObservations(
            "a robust (HC3) standard error is undefined because one row alone determines a coefficient "
            "(leverage 1); evaluate more items per group"
        )
    names = {f"x{i}": c for i, c in enumerate(covariates)}
    prefix = f"C(g, Treatment(reference={reference!r}))"
    terms = [names.get(t, t.replace(prefix, group)) for t in fit.params.index]
    out = pd.DataFrame({
        "term": terms,
        "coef": fit.params.to_numpy(),
        "se": fit.bse.to_numpy(),
        "t": fit.tvalues.to_numpy(),
        "p": fit.pvalues.to_numpy(),
    })
    out["stars"] = [_stars(p) for p in out["p"]]
    out.attrs.update(r2=float(fit.rsquared), n=int(fit.nobs), reference=reference,
                     formula=f"{outcome} ~ C({group}, reference={reference!r})" + "".join(f" + {c}" for c in covariates))
    return out


def _check_variation(frame: pd.DataFrame, outcome: str, covariates: Sequence[str]) -> None:
    """Raise when the outcome or a covariate does not vary (nothing to explain, or a column equal to the intercept)."""
    if frame["y"].nunique() < 2:
        raise TooFewObservations(
            f"{outcome} has the same value ({frame['y'].iloc[0]:g}) in every row, so there is no variance to "
            "explain; evaluate more items"
        )
    flat = [c for i, c in enumerate(covariates) if frame[f"x{i}"].nunique() < 2]
    if flat:
        raise TooFewObservations(f"covariate(s) {', '.join(flat)} do not vary across rows; drop them from covariates")


def read_items(path: str) -> pd.DataFrame:
    """The per-item results of step 05 (05_evaluation/items.jsonl) as a table."""
    from lib.runs import read_jsonl

    return pd.DataFrame(read_jsonl(path))


def compare_conditions(items: pd.DataFrame, outcomes: Sequence[str]) -> dict[str, dict]:
    """Tukey-Kramer and OLS for each outcome; a test the data cannot support becomes a note, not an error."""
    results: dict[str, dict] = {}
    for outcome in outcomes:
        entry: dict = {"tukey": None, "ols": None, "notes": []}
        for name, test in (("tukey", lambda: tukey_kramer(items, value=outcome)),
                           ("ols", lambda: ols_regression(items, outcome=outcome))):
            try:
                entry[name] = test()
            except TooFewObservations as exc:
                entry["notes"].append(f"{name} on {outcome}: {exc}")
        results[outcome] = entry
    return results


def write_results(results: dict[str, dict], out) -> list[str]:
    """Write tukey_<outcome>.csv, ols_<outcome>.csv and findings.md; returns the paths written."""
    from lib.runs import atomic_write_text

    paths = []
    for outcome, entry in results.items():
        for name in ("tukey", "ols"):
            if entry[name] is not None:
                paths.append(atomic_write_text(out / f"{name}_{outcome}.csv", entry[name].to_csv(index=False)))
    paths.append(atomic_write_text(out / "findings.md", findings_markdown(results)))
    return [str(p) for p in paths]


def findings_markdown(results: dict[str, dict]) -> str:
    """The results as plain sentences: Tukey-Kramer pairs, regression fit, and what could not be tested."""
    lines = []
    for outcome, entry in results.items():
        lines.append(f"### {outcome}\n")
        if entry["tukey"] is not None:
            lines += [f"- {s}" for s in describe_tukey(entry["tukey"])]
        if entry["ols"] is not None:
            attrs = entry["ols"].attrs
            lines.append(f"- OLS `{attrs.get('formula', '')}`: R² = {attrs.get('r2', float('nan')):.3f}, "
                         f"n = {attrs.get('n', '?')} (HC3 robust standard errors).")
        lines += [f"- Not tested: {note}" for note in entry["notes"]]
        lines.append("")
    return "\n".join(lines)
