"""Statistics over per-item results: bootstrap CIs, Tukey-Kramer, two-way ANOVA, Kruskal-Wallis/Dunn, McNemar, OLS.

Input everywhere is the per-item table of step 05 (`items`): one row per (run, test item) with
columns run, condition, student, seed, test_set, item_id, correct (0/1), cec (may be NaN) and
rationale_len. `analyse` runs every analysis of a run and returns `Section`s (a table, plain sentences
and notes on what could not be tested). scipy and statsmodels are imported inside the functions that
use them, so importing this module stays light.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
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
                   group: str = "condition", reference: str | None = None,
                   fixed_effects: Sequence[str] = ()) -> pd.DataFrame:
    """OLS of `outcome` on `group` dummies (treatment coding) plus covariates, with HC3 robust standard errors.

    The baseline is `reference` or else the first group alphabetically. `fixed_effects` (e.g. "rater") add
    one dummy per level but the first. Columns: term, coef, se, t, p, stars; attrs: r2, n, reference,
    formula. t and p use the t distribution with the residual df.
    """
    import statsmodels.formula.api as smf

    covariates, fixed_effects = list(covariates), list(fixed_effects)
    data = _clean(items, [outcome, group, *covariates, *fixed_effects], "OLS regression")
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
    for i, f in enumerate(fixed_effects):
        frame[f"f{i}"] = data[f].astype(str).to_numpy()
    _check_variation(frame, outcome, covariates)
    formula = "y ~ " + " + ".join([f"C(g, Treatment(reference={reference!r}))", *(f"x{i}" for i in range(len(covariates))),
                                   *(f"C(f{i})" for i in range(len(fixed_effects)))])
    n_params = len(levels) + len(covariates) + sum(frame[f"f{i}"].nunique() - 1 for i in range(len(fixed_effects)))
    if len(frame) <= n_params:
        raise TooFewObservations(
            f"the regression estimates {n_params} coefficients but has only {_plural(len(frame), 'row')}; "
            "it needs more rows than coefficients. Evaluate more items or drop covariates."
        )
    model = smf.ols(formula, data=frame)
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1]:
        raise TooFewObservations(
            f"the covariates / fixed effects {', '.join([*covariates, *fixed_effects])} are collinear with the "
            f"{group} dummies, so their effects cannot be told apart; drop one of them"
        )
    with warnings.catch_warnings():  # leverage 1 divides by zero; the check below turns that into a message
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = model.fit(cov_type="HC3", use_t=True)
    if not np.all(np.isfinite(fit.bse)):
        raise TooFewObservations(
            "a robust (HC3) standard error is undefined because one row alone determines a coefficient "
            "(leverage 1); evaluate more items per group"
        )
    names = {f"x{i}": c for i, c in enumerate(covariates)}
    prefix = f"C(g, Treatment(reference={reference!r}))"
    terms = [names.get(t, t.replace(prefix, group)) for t in fit.params.index]
    for i, f in enumerate(fixed_effects):
        terms = [t.replace(f"C(f{i})", f) for t in terms]
    out = pd.DataFrame({
        "term": terms,
        "coef": fit.params.to_numpy(),
        "se": fit.bse.to_numpy(),
        "t": fit.tvalues.to_numpy(),
        "p": fit.pvalues.to_numpy(),
    })
    out["stars"] = [_stars(p) for p in out["p"]]
    out.attrs.update(r2=float(fit.rsquared), n=int(fit.nobs), reference=reference,
                     formula=f"{outcome} ~ C({group}, reference={reference!r})" + "".join(f" + {c}" for c in covariates)
                     + "".join(f" + C({f})" for f in fixed_effects))
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


# --- bootstrap, per-subset Tukey, two-way ANOVA, assumption checks, Kruskal-Wallis + Dunn, McNemar -------------

def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean; (v, v) for constant data, (NaN, NaN) for fewer than two values."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return np.nan, np.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                   vectorized=True, batch=100, rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def cec_intervals(items: pd.DataFrame, by: Sequence[str] = ("condition", "test_set"), n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """Per group: number of items with a CEC, and a bootstrap 95% CI of mean CEC (NaN when fewer than two)."""
    by = list(by)
    _require_columns(items, [*by, "cec"], "cec_intervals")
    rows = []
    for key, grp in items.groupby(by, sort=True):
        cec = grp["cec"].to_numpy(dtype=float)
        low, high = bootstrap_ci(cec, n_boot, seed)
        rows.append({**dict(zip(by, key)), "n_cec": int(np.isfinite(cec).sum()), "cec_ci_low": low, "cec_ci_high": high})
    return pd.DataFrame(rows, columns=[*by, "n_cec", "cec_ci_low", "cec_ci_high"])


def tukey_by(items: pd.DataFrame, value: str = "correct", by: Sequence[str] = ("test_set", "student"),
             group: str = "condition", alpha: float = 0.05) -> tuple[pd.DataFrame, list[str]]:
    """Tukey-Kramer within each subset of `by` (e.g. per test set and student); also the notes of skipped subsets."""
    by = [b for b in by if b in items.columns]
    tables, notes = [], []
    for key, grp in (items.groupby(by, sort=True) if by else [((), items)]):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{b} {k}" for b, k in zip(by, key)) or "all items"
        if grp[value].isna().all():
            notes.append(f"{label}: no item has a value for {value}")
            continue
        try:
            table = tukey_kramer(grp, value=value, group=group, alpha=alpha)
        except TooFewObservations as exc:
            notes.append(f"{label}: {exc}")
            continue
        for b, k in reversed(list(zip(by, key))):
            table.insert(0, b, k)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.attrs.update(value=value, group=group, alpha=alpha, by=by)
    return out, notes


def describe_tukey_by(table: pd.DataFrame) -> list[str]:
    """describe_tukey's sentences, each prefixed by its subset (e.g. "[csqa, gpt2] MT beats CF by ...")."""
    by = table.attrs.get("by", [])
    sentences = []
    for _, row in table.iterrows():
        one = pd.DataFrame([row]).reset_index(drop=True)
        one.attrs.update(table.attrs)
        prefix = "[" + ", ".join(str(row[b]) for b in by) + "] " if by else ""
        sentences += [prefix + s for s in describe_tukey(one)]
    return sentences


def assumption_checks(data: pd.DataFrame, value: str, groups: Sequence[str], alpha: float = 0.05) -> dict:
    """Levene (equal variances across cells) and Shapiro-Wilk (normal residuals): p values and plain notes."""
    from scipy.stats import levene, shapiro

    cells = [g[value].to_numpy(dtype=float) for _, g in data.groupby(list(groups))]
    resid = (data[value] - data.groupby(list(groups))[value].transform("mean")).to_numpy(dtype=float)
    out: dict = {"levene_p": np.nan, "shapiro_p": np.nan, "ok": True, "notes": []}
    usable = [c for c in cells if len(c) >= 2]
    if len(usable) >= 2 and any(np.ptp(c) > 0 for c in usable):
        out["levene_p"] = float(levene(*usable, center="median").pvalue)
    else:
        out["notes"].append("Levene's test needs two cells with spread; it could not be computed")
        out["ok"] = False
    if len(resid) >= 3 and np.ptp(resid) > 0:
        out["shapiro_p"] = float(shapiro(resid[: 5000]).pvalue)
    else:
        out["notes"].append("the Shapiro-Wilk test needs three residuals that vary; it could not be computed")
        out["ok"] = False
    if np.isfinite(out["levene_p"]) and out["levene_p"] < alpha:
        out["ok"] = False
        out["notes"].append(f"Levene's test rejects equal variances ({_format_p(out['levene_p'])})")
    if np.isfinite(out["shapiro_p"]) and out["shapiro_p"] < alpha:
        out["ok"] = False
        out["notes"].append(f"Shapiro-Wilk rejects normal residuals ({_format_p(out['shapiro_p'])})")
    if not out["ok"]:
        out["notes"].append("the ANOVA's assumptions do not hold, so read the Kruskal-Wallis / Dunn results instead")
    return out


def two_way_anova(data: pd.DataFrame, value: str = "correct", a: str = "condition", b: str = "student_size",
                  alpha: float = 0.05) -> pd.DataFrame:
    """Two-way ANOVA of `value` on factors `a`, `b` and their interaction (type II sums of squares, statsmodels).

    Columns: source, sum_sq, df, F, p. attrs hold the assumption checks (levene_p, shapiro_p, ok, notes).
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    frame = _clean(data, [value, a, b], "two-way ANOVA")
    if frame.empty:
        raise TooFewObservations(f"no item has a value for {value}")
    frame = pd.DataFrame({"y": frame[value].to_numpy(dtype=float), "A": frame[a].astype(str).to_numpy(),
                          "B": frame[b].astype(str).to_numpy()})
    for factor, name in (("A", a), ("B", b)):
        levels = frame[factor].nunique()
        if levels < 2:
            only = ", ".join(sorted(frame[factor].unique())) or "none"
            raise TooFewObservations(f"the two-way ANOVA needs at least two levels of {name}; this run has "
                                     f"{levels} ({only}). Add another level (e.g. a second student) to the study.")
    cells = frame.groupby(["A", "B"])["y"]
    n_cells = cells.ngroups
    if len(frame) <= n_cells:
        raise TooFewObservations(f"the two-way ANOVA estimates {n_cells} cell means from only "
                                 f"{_plural(len(frame), 'row')}; it needs more rows than cells. Evaluate more items.")
    if np.allclose(cells.transform("mean").to_numpy(), frame["y"].to_numpy()):
        raise TooFewObservations(f"every {a} x {b} cell has a constant {value}, so there is no within-cell variance "
                                 "to test against. Evaluate more items.")
    full = n_cells == frame["A"].nunique() * frame["B"].nunique()
    formula = "y ~ C(A) * C(B)" if full else "y ~ C(A) + C(B)"
    fit = smf.ols(formula, data=frame).fit()
    table = anova_lm(fit, typ=2)
    names = {"C(A)": a, "C(B)": b, "C(A):C(B)": f"{a} x {b}", "Residual": "residual"}
    out = pd.DataFrame({"source": [names.get(i, i) for i in table.index], "sum_sq": table["sum_sq"].to_numpy(),
                        "df": table["df"].to_numpy(), "F": table["F"].to_numpy(), "p": table["PR(>F)"].to_numpy()})
    out.attrs.update(value=value, a=a, b=b, interaction=full, n=len(frame),
                     **assumption_checks(frame.rename(columns={"y": value}), value, ["A", "B"], alpha))
    if not full:
        out.attrs["notes"].insert(0, f"some {a} x {b} cells are empty, so the interaction is not estimated")
    return out


def describe_anova(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per effect of a two_way_anova table, e.g. "condition: F(3, 40) = 5.10, p = 0.004 (significant)."""
    resid_df = float(table.loc[table["source"] == "residual", "df"].iloc[0])
    sentences = []
    for row in table[table["source"] != "residual"].itertuples(index=False):
        verdict = "significant" if row.p < alpha else "not significant"
        sentences.append(f"{row.source}: F({row.df:g}, {resid_df:g}) = {row.F:.2f}, {_format_p(row.p)} ({verdict}).")
    return sentences


def kruskal_dunn(items: pd.DataFrame, value: str = "correct", group: str = "condition",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Kruskal-Wallis across `group` levels and Dunn's pairwise z tests with a Bonferroni correction.

    Dunn: z = (mean rank i - mean rank j) / sqrt((N(N+1)/12 - sum(t^3 - t) / (12(N-1))) (1/n_i + 1/n_j)),
    with t the sizes of tied groups; p_adj = min(1, p x number of pairs). attrs: H, kw_p, n.
    """
    from scipy.stats import kruskal, norm, rankdata

    data = _clean(items, [value, group], "Kruskal-Wallis")
    if data.empty:
        raise TooFewObservations(f"no item has a value for {value}")
    groups = data[group].astype(str)
    counts = groups.value_counts().sort_index()
    if len(counts) < 2 or (counts < 2).any():
        got = _group_counts(counts) if len(counts) else "no rows"
        raise TooFewObservations(f"Kruskal-Wallis needs at least two {group} groups with two values each; got {got}.")
    y = data[value].to_numpy(dtype=float)
    if np.all(y == y[0]):
        raise TooFewObservations(f"{value} is {y[0]:g} for every item, so there is nothing to rank. Evaluate more items.")
    levels = list(counts.index)
    h, kw_p = kruskal(*(y[groups.to_numpy() == g] for g in levels))
    ranks = rankdata(y)
    n_total = len(y)
    _, ties = np.unique(y, return_counts=True)
    var = n_total * (n_total + 1) / 12 - float(np.sum(ties ** 3 - ties)) / (12 * (n_total - 1))
    mean_rank = pd.Series(ranks).groupby(groups.to_numpy()).mean()
    pairs = [(a, b) for i, a in enumerate(levels) for b in levels[i + 1:]]
    rows = []
    for a, b in pairs:
        z = (mean_rank[b] - mean_rank[a]) / np.sqrt(var * (1 / counts[a] + 1 / counts[b]))
        p = float(2 * norm.sf(abs(z)))
        rows.append({"group1": a, "group2": b, "mean_rank1": float(mean_rank[a]), "mean_rank2": float(mean_rank[b]),
                     "z": float(z), "p": p, "p_adj": min(1.0, p * len(pairs))})
    out = pd.DataFrame(rows)
    out["reject"] = out["p_adj"] < alpha
    out.attrs.update(value=value, group=group, H=float(h), kw_p=float(kw_p), n=n_total, alpha=alpha)
    return out


def mcnemar_pairs(items: pd.DataFrame, value: str = "correct", group: str = "condition",
                  within: Sequence[str] = ("test_set", "student", "seed"), exact_below: int = 25) -> pd.DataFrame:
    """McNemar's test between every pair of `group` levels on the same items (paired by item_id within `within`).

    Exact binomial test when the discordant pairs number fewer than `exact_below`, else chi-square with
    continuity correction. only1 = items group1 got right and group2 wrong.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    within = [w for w in within if w in items.columns]
    data = _clean(items, [value, group, "item_id", *within], "McNemar")
    rows = []
    for key, grp in (data.groupby(within, sort=True) if within else [((), data)]):
        key = key if isinstance(key, tuple) else (key,)
        wide = grp.pivot_table(index="item_id", columns=grp[group].astype(str), values=value, aggfunc="first")
        levels = sorted(wide.columns)
        for i, a in enumerate(levels):
            for b in levels[i + 1:]:
                pair = wide[[a, b]].dropna().astype(int)
                x, y = pair[a].to_numpy(), pair[b].to_numpy()
                table = [[int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())],
                         [int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())]]
                discordant = table[0][1] + table[1][0]
                exact = discordant < exact_below
                res = mcnemar(table, exact=exact, correction=True) if len(pair) else None
                rows.append({**dict(zip(within, key)), "group1": a, "group2": b, "n_pairs": len(pair),
                             "both_right": table[0][0], "only1": table[0][1], "only2": table[1][0],
                             "both_wrong": table[1][1],
                             "statistic": float(res.statistic) if res is not None else np.nan,
                             "p": np.nan if res is None else float(res.pvalue) if discordant else 1.0,
                             "method": "exact binomial" if exact else "chi-square (continuity corrected)"})
    out = pd.DataFrame(rows)
    out.attrs.update(value=value, group=group, within=within)
    return out


def describe_mcnemar(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per McNemar pair: who got more of the shared items right, and whether that is significant."""
    within = table.attrs.get("within", [])
    sentences = []
    for _, row in table.iterrows():
        prefix = "[" + ", ".join(str(row[w]) for w in within) + "] " if within else ""
        if row["n_pairs"] == 0:
            sentences.append(f"{prefix}{row['group1']} vs {row['group2']}: no shared items to pair.")
            continue
        diff = (row["only1"] - row["only2"]) / row["n_pairs"] * 100
        winner, loser = (row["group1"], row["group2"]) if diff >= 0 else (row["group2"], row["group1"])
        what = (f"on {_plural(int(row['n_pairs']), 'shared item')}, {winner} is right where {loser} is wrong "
                f"{max(row['only1'], row['only2'])} times and the reverse {min(row['only1'], row['only2'])} times")
        if row["only1"] + row["only2"] == 0:
            sentences.append(f"{prefix}{row['group1']} vs {row['group2']}: the two agree on all "
                             f"{_plural(int(row['n_pairs']), 'shared item')} (no discordant pairs, nothing to test).")
        elif row["p"] < alpha:
            sentences.append(f"{prefix}{winner} beats {loser} by {abs(diff):.1f} points ({what}; McNemar "
                             f"{_format_p(row['p'])}).")
        else:
            sentences.append(f"{prefix}{winner} vs {loser}: no significant difference ({what}; McNemar "
                             f"{_format_p(row['p'])}).")
    return sentences


# --- one run's analysis: inputs, sections, files ------------------------------------------------------------

RATING_DIMENSIONS = ("completeness", "contrastiveness", "soundness")  # Likert scores; "justification" is free text
TEXT_METRICS = ("bleu", "rouge_l", "bertscore")


@dataclasses.dataclass
class RunTables:
    """The tables of a run folder that the statistics read; an input a run lacks is None."""

    items: pd.DataFrame  # 05_evaluation/items.jsonl, with student_size joined from 04_training/runs.jsonl
    runs: pd.DataFrame | None  # 04_training/runs.jsonl
    ratings: pd.DataFrame | None  # 05_evaluation/ratings.jsonl joined to items (condition, rationale_len)
    losses: pd.DataFrame | None  # 04_training/<run>/losses.jsonl, all runs
    acceptance: dict | None  # 03_counterfactuals/acceptance.json
    causal: pd.DataFrame | None = None  # 05_evaluation/causal_items.jsonl (CAUSAL students' explanations)


@dataclasses.dataclass
class Section:
    """One analysis of the report: a title, what it means in sentences, its table, and notes on what could not run."""

    key: str  # file stem of its CSV, e.g. "tukey_correct"
    title: str
    explanation: str  # what the test asks, for a reader new to it
    table: pd.DataFrame | None = None
    sentences: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # too few observations, absent inputs, failed checks

    @property
    def ran(self) -> bool:
        """True when the analysis produced a table."""
        return self.table is not None and not self.table.empty

    def _repr_html_(self) -> str:
        """Rendered in a notebook: the sentences, the notes and the table."""
        from lib.report import section_html

        return section_html(self)


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


def load_run_tables(run_dir: str | Path) -> RunTables:
    """Read what steps 03-05 of a run wrote; optional inputs (ratings, losses, acceptance) may be absent."""
    from lib.runs import read_json, read_jsonl

    run_dir = Path(run_dir)
    items_path = run_dir / "05_evaluation" / "items.jsonl"
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path} is missing: step 05_evaluation makes it; run it first")
    items = pd.DataFrame(read_jsonl(items_path))
    runs_path = run_dir / "04_training" / "runs.jsonl"
    runs = pd.DataFrame(read_jsonl(runs_path)) if runs_path.exists() else None
    items = with_student_size(items, runs)
    ratings_path = run_dir / "05_evaluation" / "ratings.jsonl"
    ratings = join_ratings(pd.DataFrame(read_jsonl(ratings_path)), items) if ratings_path.exists() else None
    loss_files = sorted((run_dir / "04_training").glob("*/losses.jsonl"))
    losses = pd.DataFrame([r for f in loss_files for r in read_jsonl(f)]) if loss_files else None
    acc_path = run_dir / "03_counterfactuals" / "acceptance.json"
    causal_path = run_dir / "05_evaluation" / "causal_items.jsonl"
    causal = pd.DataFrame(read_jsonl(causal_path)) if causal_path.exists() else None
    return RunTables(items=items, runs=runs, ratings=ratings if ratings is None or len(ratings) else None,
                     losses=losses if losses is not None and len(losses) else None,
                     acceptance=read_json(acc_path) if acc_path.exists() else None,
                     causal=causal if causal is not None and len(causal) else None)


def join_ratings(ratings: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Ratings (run, item_id, rater, dimensions) with the rated item's condition, student, test set and rationale_len."""
    _require_columns(ratings, ["run", "item_id", "rater"], "the ratings table (05_evaluation/ratings.jsonl)")
    keep = [c for c in ("run", "item_id", "test_set", "condition", "student", "student_size", "rationale_len")
            if c in items.columns]
    meta = items[keep].drop_duplicates(["run", "item_id"])
    ratings = ratings.assign(**{d: pd.to_numeric(ratings[d], errors="coerce") for d in RATING_DIMENSIONS
                                if d in ratings.columns})  # a failed judge call leaves null scores
    return ratings.drop(columns=[c for c in keep if c not in ("run", "item_id")], errors="ignore").merge(
        meta, on=["run", "item_id"], how="inner")


def rated_dimensions(ratings: pd.DataFrame | None, dimensions: Sequence[str] = RATING_DIMENSIONS) -> list[str]:
    """The rating dimensions with at least one numeric score."""
    if ratings is None:
        return []
    return [d for d in dimensions if _has_values(ratings, d) and pd.api.types.is_numeric_dtype(ratings[d])]


def ratings_absent_note(ratings: pd.DataFrame | None, dimensions: Sequence[str] = RATING_DIMENSIONS) -> str:
    """Why there is nothing to analyse in the ratings: no file, or no usable score (with the failures counted)."""
    if ratings is None:
        return "no ratings in this run (05_evaluation/ratings.jsonl is absent); this input is absent."
    failed = int(ratings["failure"].fillna("").astype(str).ne("").sum()) if "failure" in ratings else 0
    why = f" ({failed} of {len(ratings)} ratings failed, e.g. an unparseable judge reply)" if failed else ""
    return (f"05_evaluation/ratings.jsonl has no usable score for {', '.join(dimensions)}{why}; "
            "this input is absent.")


def _absent(key: str, title: str, explanation: str, note: str) -> Section:
    """A section whose input is absent from the run."""
    return Section(key, title, explanation, notes=[note])


def _has_values(items: pd.DataFrame, column: str) -> bool:
    """True when `column` exists and has at least one non-missing value."""
    return column in items.columns and items[column].notna().any()


def accuracy_section(tables: RunTables, n_boot: int = 1000, seed: int = 0) -> Section:
    """Accuracy and mean CEC per test set, student and condition with bootstrap 95% intervals."""
    items = tables.items
    by = [c for c in ("test_set", "student", "condition") if c in items.columns]
    section = Section("accuracy", "Accuracy and CEC by condition",
                      "Share of test items answered correctly, and mean CEC (explanation coherence with the teacher), "
                      "with percentile-bootstrap 95% confidence intervals over items.")
    try:
        table = accuracy_table(items, by=by, n_boot=n_boot, seed=seed)
    except TooFewObservations as exc:
        section.notes.append(str(exc))
        return section
    if "cec" in items.columns:
        table = table.merge(cec_intervals(items, by=by, n_boot=n_boot, seed=seed), on=by, how="left")
    section.table = table
    if "seed" in items.columns and items["seed"].nunique() == 1:
        section.notes.append("one training seed per condition: differences between conditions also contain the "
                             "run-to-run randomness of training, which one seed cannot measure.")
    if "test_set" in items.columns and items["test_set"].nunique() == 1:
        section.notes.append(f"one test set ({items['test_set'].iloc[0]}): there is no out-of-distribution result; "
                             "add sets under data.ood to test transfer.")
    flat = table[(table["n"] >= 2) & (table["ci_low"] == table["ci_high"])]
    if len(flat):
        section.notes.append(f"{_plural(len(flat), 'group')} got every item right or every item wrong, so the "
                             "bootstrap interval collapses to a point; that is too few items to show spread, "
                             "not certainty.")
    single = table[table["n"] < 2]
    if len(single):
        section.notes.append(f"{_plural(len(single), 'group')} with a single item have no confidence interval.")
    for row in table.itertuples(index=False):
        ci = ("no interval" if not np.isfinite(row.ci_low)
              else f"95% CI {row.ci_low * 100:.1f}-{row.ci_high * 100:.1f}")
        section.sentences.append(f"[{', '.join(str(getattr(row, b)) for b in by[:-1])}] {getattr(row, by[-1])}: "
                                 f"{row.accuracy * 100:.1f}% of {_plural(int(row.n), 'item')} correct ({ci}).")
    return section


def tukey_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Tukey-Kramer HSD between conditions within each test set and student."""
    title, expl = (f"Tukey-Kramer HSD on {outcome}",
                   "Every pair of conditions compared within each test set and student, with the family-wise error "
                   "held at alpha (Tukey-Kramer handles unequal group sizes).")
    if not _has_values(tables.items, outcome):
        return _absent(f"tukey_{outcome}", title, expl, f"no item has a value for {outcome}; this input is absent.")
    table, notes = tukey_by(tables.items, value=outcome, alpha=alpha)
    return Section(f"tukey_{outcome}", title, expl, table if len(table) else None,
                   describe_tukey_by(table) if len(table) else [], notes)


def anova_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Two-way ANOVA condition x student size per test set, with Levene and Shapiro-Wilk checks."""
    title, expl = (f"Two-way ANOVA on {outcome}: condition x student size",
                   "Does the condition matter, does the student's size matter, and does the effect of the condition "
                   "depend on the size? Levene's test checks equal variances and Shapiro-Wilk normal residuals.")
    key = f"anova_{outcome}"
    if not _has_values(tables.items, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl)
    parts = []
    for test_set, grp in tables.items.groupby("test_set", sort=True):
        try:
            table = two_way_anova(grp, value=outcome, alpha=alpha)
        except TooFewObservations as exc:
            section.notes.append(f"test set {test_set}: {exc}")
            continue
        section.sentences += [f"[{test_set}] {s}" for s in describe_anova(table, alpha)]
        section.notes += [f"test set {test_set}: {n}" for n in table.attrs["notes"]]
        section.sentences.append(f"[{test_set}] assumption checks: Levene {_p_or_na(table.attrs['levene_p'])}, "
                                 f"Shapiro-Wilk {_p_or_na(table.attrs['shapiro_p'])}.")
        table = table.assign(levene_p=table.attrs["levene_p"], shapiro_p=table.attrs["shapiro_p"])
        table.insert(0, "test_set", test_set)
        parts.append(table)
    section.table = pd.concat(parts, ignore_index=True) if parts else None
    return section


def _p_or_na(p: float) -> str:
    """'p = 0.030', or 'not computable' for NaN."""
    return _format_p(p) if np.isfinite(p) else "not computable"


def kruskal_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Kruskal-Wallis and Dunn-Bonferroni per test set and student: the fallback when ANOVA assumptions fail."""
    title, expl = (f"Kruskal-Wallis and Dunn-Bonferroni on {outcome} (non-parametric)",
                   "Compares conditions by ranks, without assuming normal residuals or equal variances; Dunn's "
                   "pairwise tests are Bonferroni-corrected. Read these when the ANOVA's checks fail.")
    key = f"kruskal_{outcome}"
    if not _has_values(tables.items, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl)
    parts = []
    for (test_set, student), grp in tables.items.groupby(["test_set", "student"], sort=True):
        try:
            table = kruskal_dunn(grp, value=outcome, alpha=alpha)
        except TooFewObservations as exc:
            section.notes.append(f"test set {test_set}, student {student}: {exc}")
            continue
        label = f"[{test_set}, {student}]"
        verdict = "the conditions differ" if table.attrs["kw_p"] < alpha else "no significant difference"
        section.sentences.append(f"{label} Kruskal-Wallis H = {table.attrs['H']:.2f}, "
                                 f"{_format_p(table.attrs['kw_p'])}: {verdict}.")
        for row in table[table["reject"]].itertuples(index=False):
            better = row.group2 if row.z > 0 else row.group1
            worse = row.group1 if row.z > 0 else row.group2
            section.sentences.append(f"{label} Dunn: {better} ranks above {worse} "
                                     f"(z = {abs(row.z):.2f}, Bonferroni {_format_p(row.p_adj)}).")
        table.insert(0, "student", student)
        table.insert(0, "test_set", test_set)
        parts.append(table.assign(H=table.attrs["H"], kw_p=table.attrs["kw_p"]))
    section.table = pd.concat(parts, ignore_index=True) if parts else None
    return section


def mcnemar_section(tables: RunTables, alpha: float = 0.05) -> Section:
    """Paired McNemar tests of correctness between conditions on the same test items."""
    section = Section("mcnemar", "McNemar's test on the same items (paired)",
                      "For two conditions (same student and seed) answering the same test items, only the items one "
                      "gets right and the other wrong carry information; McNemar tests whether those split evenly.")
    try:
        table = mcnemar_pairs(tables.items)
    except ValueError as exc:
        section.notes.append(str(exc))
        return section
    if table.empty:
        section.notes.append("no two conditions answered the same items, so there is nothing to pair.")
        return section
    section.table = table
    section.sentences = describe_mcnemar(table, alpha)
    few = table[(table["only1"] + table["only2"]) < 6]
    if len(few):
        section.notes.append(f"{_plural(len(few), 'pair')} of conditions differ on fewer than 6 items; even a "
                             "perfect split there cannot reach p < 0.05 with the exact test.")
    return section


def ols_section(tables: RunTables, outcome: str) -> Section:
    """OLS of a per-item outcome on condition dummies and rationale length (student and test-set effects when several)."""
    title, expl = (f"Regression of {outcome} on condition",
                   "OLS with treatment-coded condition dummies (coefficients are differences from the baseline "
                   "condition) and rationale length, HC3 robust standard errors; * p < 0.05, ** p < 0.01, *** p < 0.001.")
    key = f"ols_{outcome}"
    if not _has_values(tables.items, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    fixed = [c for c in ("student", "test_set") if c in tables.items and tables.items[c].nunique() > 1]
    section = Section(key, title, expl)
    try:
        section.table = ols_regression(tables.items, outcome=outcome, fixed_effects=fixed)
    except TooFewObservations as exc:
        section.notes.append(str(exc))
        return section
    section.sentences = describe_ols(section.table)
    return section


def describe_ols(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain sentences for the condition terms of an ols_regression table, and its fit."""
    ref = table.attrs.get("reference", "the baseline")
    sentences = []
    for row in table[table["term"].str.startswith("condition[")].itertuples(index=False):
        name = row.term.split("T.", 1)[-1].rstrip("]")
        verdict = "significant" if row.p < alpha else "not significant"
        sentences.append(f"{name} vs {ref}: {row.coef:+.3f} (SE {row.se:.3f}, {_format_p(row.p)}, {verdict}).")
    sentences.append(f"R² = {table.attrs.get('r2', float('nan')):.3f} on n = {table.attrs.get('n', '?')}; "
                     f"model `{table.attrs.get('formula', '')}`.")
    return sentences


def ratings_sections(tables: RunTables, dimensions: Sequence[str] = RATING_DIMENSIONS) -> list[Section]:
    """OLS of each rating dimension on condition dummies + rationale length (+ rater fixed effects when several)."""
    expl = ("Ratings (an LLM judge or human raters, Likert scale) regressed on condition dummies and rationale length, "
            "with one fixed effect per rater when there are several (rater severity), HC3 robust standard errors.")
    present = rated_dimensions(tables.ratings, dimensions)
    if not present:
        return [_absent("ols_ratings", "Regression of ratings on condition", expl,
                        ratings_absent_note(tables.ratings, dimensions))]
    out = []
    for dim in present:
        title = f"Regression of {dim} ratings on condition"
        fixed = ["rater"] if tables.ratings["rater"].nunique() > 1 else []
        section = Section(f"ols_rating_{dim}", title, expl)
        try:
            section.table = ols_regression(tables.ratings, outcome=dim, fixed_effects=fixed)
            section.sentences = describe_ols(section.table)
        except TooFewObservations as exc:
            section.notes.append(str(exc))
        out.append(section)
    return out


def metric_correlations(items: pd.DataFrame, metrics: Sequence[str] = TEXT_METRICS) -> pd.DataFrame:
    """Spearman correlation of CEC with each explanation metric present (BLEU, ROUGE-L, BERTScore), over items."""
    from scipy.stats import spearmanr

    rows = []
    for m in metrics:
        if not (_has_values(items, m) and _has_values(items, "cec")):
            continue
        pair = items[["cec", m]].dropna()
        if len(pair) < 3 or pair["cec"].nunique() < 2 or pair[m].nunique() < 2:
            rows.append({"metric": m, "n": len(pair), "spearman_rho": np.nan, "p": np.nan})
            continue
        res = spearmanr(pair["cec"], pair[m])
        rows.append({"metric": m, "n": len(pair), "spearman_rho": float(res.statistic), "p": float(res.pvalue)})
    return pd.DataFrame(rows, columns=["metric", "n", "spearman_rho", "p"])


def metrics_section(tables: RunTables) -> Section:
    """How CEC agrees with BLEU / ROUGE-L / BERTScore on the same explanations."""
    section = Section("cec_vs_metrics", "CEC against BLEU, ROUGE-L and BERTScore",
                      "Spearman rank correlation, over items, between CEC and each surface or embedding metric of the "
                      "same explanation against the teacher's.")
    present = [m for m in TEXT_METRICS if _has_values(tables.items, m)]
    if not present:
        section.notes.append("no item has BLEU, ROUGE-L or BERTScore; this input is absent.")
        return section
    if not _has_values(tables.items, "cec"):
        section.notes.append("no item has a CEC score, so there is nothing to correlate with.")
        return section
    table = metric_correlations(tables.items, present)
    section.table = table
    for row in table.itertuples(index=False):
        if np.isfinite(row.spearman_rho):
            section.sentences.append(f"CEC vs {row.metric}: Spearman rho = {row.spearman_rho:.2f} "
                                     f"({_format_p(row.p)}, n = {row.n}).")
        else:
            section.notes.append(f"CEC vs {row.metric}: too few items that vary ({row.n}) for a correlation.")
    return section


def causal_table(causal: pd.DataFrame) -> pd.DataFrame:
    """Per CAUSAL run: explanations, how many had a teacher reference, and the mean length and metrics."""
    metrics = [c for c in ("rationale_len", "cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore")
               if c in causal.columns]
    df = causal.assign(**{c: pd.to_numeric(causal[c], errors="coerce") for c in metrics})
    return (df.groupby(["condition", "student", "seed"], as_index=False, dropna=False)
              .agg(n=("item_id", "size"), n_scored=("cec", "count"), **{c: (c, "mean") for c in metrics}))


def causal_section(tables: RunTables) -> Section:
    """How close the CAUSAL students' explanations of held-out claims come to the teacher's (CEC and text metrics)."""
    section = Section("causal_explanations", "CAUSAL students: explanations of held-out claims",
                      "A CAUSAL student reads a claim, one evidence sentence and the label, and explains the cause, "
                      "mechanism and effect; CEC and the text metrics compare it with the teacher's explanation.")
    if tables.causal is None:
        section.notes.append("no CAUSAL run in this study (add CAUSAL to training.conditions); this input is absent.")
        return section
    table = causal_table(tables.causal)
    section.table = table
    for row in table.itertuples(index=False):
        label = f"[{row.student}, seed {row.seed}]"
        if row.n_scored == 0:
            section.notes.append(f"{label} none of its {_plural(int(row.n), 'explanation')} has a teacher "
                                 "explanation to score against (the teacher failed on those pairs).")
            continue
        section.sentences.append(f"{label} {_plural(int(row.n_scored), 'explanation')} scored: mean CEC "
                                 f"{row.cec:.3f} (forward coverage {row.cec_fc:.3f}, backward faithfulness "
                                 f"{row.cec_bf:.3f}).")
    return section


def analyse(tables: RunTables, outcomes: Sequence[str] = ("correct", "cec"), alpha: float = 0.05,
            n_boot: int = 1000, seed: int = 0) -> dict[str, Section]:
    """Every analysis of the report in order, keyed by section key; a test the data cannot support becomes a note."""
    sections = [accuracy_section(tables, n_boot, seed), mcnemar_section(tables, alpha)]
    for outcome in outcomes:
        sections += [tukey_section(tables, outcome, alpha), anova_section(tables, outcome, alpha),
                     kruskal_section(tables, outcome, alpha), ols_section(tables, outcome)]
    sections += ratings_sections(tables)
    sections.append(metrics_section(tables))
    sections.append(causal_section(tables))
    return {s.key: s for s in sections}


def write_analysis(sections: dict[str, Section], out: Path) -> list[str]:
    """Write <key>.csv for each section with a table (removing a stale one otherwise) and findings.md; returns paths."""
    from lib.runs import atomic_write_text

    paths = [atomic_write_text(Path(out) / f"{k}.csv", s.table.to_csv(index=False)) for k, s in sections.items() if s.ran]
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
