"""Statistics over per-item results: cluster-bootstrap CIs, paired tests, Tukey-Kramer over runs, ANOVA, OLS.

Input everywhere is a per-item table like step 05's (`items`): one row per (run, test item) with columns run,
condition, student, seed, test_set, item_id, 0/1 readings of the answer (correct, loglik_correct, ...), cec (may be
NaN) and rationale_len. A run is one condition x student x training seed, and every condition answers the same test
items, so the conditions are not independent groups of items: differences between conditions on items are tested
with paired tests, McNemar between two conditions (`mcnemar_pairs`, Holm-corrected over the pairs of a test set,
student and reading) and Cochran's Q over all of them at once (`cochran_q`), each within one seed. Tukey-Kramer is
run only where its unit is a training run (`run_values`, `mark_outliers`, `tukey_over_runs`: one value per run, 1.5
IQR outliers removed per cell, as Hendriks et al.); with one seed per condition it cannot be computed, and it is not
computed over items instead. Intervals resample items with all their seeds (a cluster bootstrap); ANOVA,
Kruskal-Wallis, the correlations and the regressions use per-item means over seeds (`over_seeds`), the regressions
cluster their standard errors by item. Each test's table names its unit (a `unit` column: item or run). Each
function takes tables and returns a table or numbers; a test the data cannot support raises TooFewObservations,
saying why. lib.findings puts the results into words. scipy and statsmodels are imported inside the functions that
use them, so importing this module stays light.

Longer than ~500 lines because it holds every test of step 06 side by side, each a short function beside the checks
that say when the data cannot support it; splitting them would scatter one statistics step over several modules.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


class TooFewObservations(ValueError):
    """The data cannot support the requested test (too few groups, items or too little variation)."""


def require_columns(items: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise when `items` lacks a column the analysis needs."""
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise ValueError(
            f"{what} needs column(s) {', '.join(missing)}, but the table has only "
            f"{', '.join(map(str, items.columns))}; "
            "pass the per-item results of step 05 (05_evaluation/items.jsonl)"
        )


def plural(n: int, word: str) -> str:
    """'1 item', '3 items'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _group_counts(counts: pd.Series, unit: str = "item") -> str:
    """'CF: 5 items, MT: 1 item' for a Series of counts indexed by group."""
    return ", ".join(f"{g}: {plural(int(n), unit)}" for g, n in counts.items())


def _clean(items: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """The rows of `items` where all `columns` are present, logging how many were dropped."""
    require_columns(items, columns, what)
    data = items.dropna(subset=list(columns))
    if len(data) < len(items):
        log.info("%s: dropped %d of %d rows with a missing %s", what, len(items) - len(data), len(items),
                 " / ".join(columns))
    return data


def has_values(items: pd.DataFrame, column: str) -> bool:
    """True when `column` exists and has at least one non-missing value."""
    return column in items.columns and items[column].notna().any()


# one test item of one condition x rationale source x student
UNIT_KEYS = ("test_set", "student", "student_size", "condition", "rationale_source", "item_id")


def n_seeds(data: pd.DataFrame) -> int:
    """The number of training seeds in a table (1 without a seed column)."""
    return int(data["seed"].nunique()) if "seed" in data.columns and len(data) else 1


def over_seeds(data: pd.DataFrame, values: Sequence[str], keys: Sequence[str] = UNIT_KEYS) -> pd.DataFrame:
    """One row per unit (the `keys` present in `data`, e.g. a test item of a condition and student): each of
    `values` averaged over the training seeds (missing values left out)."""
    keys = [k for k in keys if k in data.columns]
    numeric = data[keys].assign(**{v: pd.to_numeric(data[v], errors="coerce") for v in values})
    return numeric.groupby(keys, sort=True, dropna=False)[list(values)].mean().reset_index()


def item_clusters(data: pd.DataFrame) -> pd.Series:
    """The test item of each row ('<test_set>/<item_id>'), the cluster that keeps an item's seeds together;
    each row is its own cluster when the table has no item_id."""
    if "item_id" not in data.columns:
        return pd.Series(np.arange(len(data)).astype(str), index=data.index)
    prefix = data["test_set"].astype(str) + "/" if "test_set" in data.columns else ""
    return prefix + data["item_id"].astype(str)


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean that resamples whole clusters (a test item with all its seeds).

    Each resample draws as many clusters as there are, with replacement; its mean is the sum of their values
    over the number of their values. (v, v) for constant data, (NaN, NaN) with fewer than two clusters.
    """
    frame = pd.DataFrame({"v": np.asarray(values, dtype=float), "c": np.asarray(clusters)})
    frame = frame[np.isfinite(frame["v"])]
    per = frame.groupby("c", sort=True)["v"].agg(["sum", "size"])
    if len(per) < 2:
        return np.nan, np.nan
    if frame["v"].nunique() == 1:
        return float(frame["v"].iloc[0]), float(frame["v"].iloc[0])
    sums, sizes = per["sum"].to_numpy(), per["size"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, 100):  # batches keep memory at 100 x clusters indices
        idx = rng.integers(0, len(per), size=(min(100, n_boot - start), len(per)))
        means.append(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return float(low), float(high)


def mean_table(items: pd.DataFrame, value: str, by: Sequence[str], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per group of `by` with a value: n (rows), n_items, n_seeds, mean and its 95% cluster-bootstrap CI.

    Rows without a value are left out. The interval resamples test items with all their seeds, so three seeds
    of one item count as one item, not three. A group with a single item gets no interval (NaN) and a warning.
    """
    by = list(by)
    data = _clean(items, [*by, value], f"the table of {value}")
    data = data.assign(**{value: pd.to_numeric(data[value], errors="coerce")}).dropna(subset=[value])
    data = data.reset_index(drop=True)
    clusters = item_clusters(data)
    rows = []
    for key, grp in data.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        low, high = cluster_bootstrap_ci(grp[value], clusters[grp.index], n_boot, seed)
        n_items = int(clusters[grp.index].nunique())
        if n_items < 2:
            log.warning("%s: group %s has one item, so it has no confidence interval", value, key)
        rows.append({**dict(zip(by, key)), "n": len(grp), "n_items": n_items, "n_seeds": n_seeds(grp),
                     "mean": float(grp[value].mean()), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=[*by, "n", "n_items", "n_seeds", "mean", "ci_low", "ci_high"])


def accuracy_table(items: pd.DataFrame, by: Sequence[str] = ("condition", "test_set"), n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per group: n (rows), n_items, n_seeds, accuracy, its 95% cluster-bootstrap CI over test items
    (ci_low, ci_high) and mean CEC."""
    by = list(by)
    require_columns(items, [*by, "correct"], "accuracy_table")
    if items.empty:
        raise TooFewObservations("accuracy_table got an empty table; evaluate at least one item first (step 05)")
    table = mean_table(items, "correct", by, n_boot, seed).rename(columns={"mean": "accuracy"})
    if "cec" in items.columns:
        cec = items.assign(cec=pd.to_numeric(items["cec"], errors="coerce")).groupby(by, sort=True)["cec"].mean()
        return table.merge(cec.rename("cec").reset_index(), on=by, how="left")
    return table.assign(cec=np.nan)


def cec_intervals(items: pd.DataFrame, by: Sequence[str] = ("condition", "test_set"), n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """Per group: items with a CEC (n_cec) and the cluster-bootstrap 95% interval of mean CEC over test items."""
    table = mean_table(items, "cec", by, n_boot, seed)
    return table[[*by, "n", "ci_low", "ci_high"]].rename(
        columns={"n": "n_cec", "ci_low": "cec_ci_low", "ci_high": "cec_ci_high"})


def tukey_kramer(items: pd.DataFrame, value: str = "correct", group: str = "condition",
                 alpha: float = 0.05, unit: str = "item") -> pd.DataFrame:
    """Tukey-Kramer HSD of `value` between every pair of `group` levels (statsmodels; unequal sizes allowed).

    Each row of `items` is one independent observation (`unit`, named in the messages); between conditions that
    answered the same items, use `tukey_over_runs` (or the paired tests) instead. meandiff is mean(group2) -
    mean(group1). The table's attrs hold `value`, `group` and `unit`.
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    data = _clean(items, [value, group], "Tukey-Kramer")
    groups = data[group].astype(str)
    counts = groups.value_counts().sort_index()
    need = f"Tukey-Kramer needs at least two {group} groups with two {value} values each"
    if len(counts) < 2 or (counts < 2).any():
        got = _group_counts(counts, unit) if len(counts) else "no rows"
        raise TooFewObservations(f"{need}; got {got}. Add more {unit}s or more {group} groups.")
    y = data[value].to_numpy(dtype=float)
    if np.allclose(data.groupby(groups)[value].transform("mean").to_numpy(dtype=float), y):
        raise TooFewObservations(
            f"{need} and some spread within a group; every {group} has a constant {value} "
            f"(e.g. all right or all wrong), so there is no within-group variance to test against. "
            f"Add more {unit}s."
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
    out.attrs.update(value=value, group=group, alpha=alpha, unit=unit)
    return out


# one training run: a condition x rationale source x student x seed, read on one test set
RUN_KEYS = ("test_set", "student", "student_size", "condition", "rationale_source", "run", "seed")


def run_values(items: pd.DataFrame, value: str, keys: Sequence[str] = RUN_KEYS) -> pd.DataFrame:
    """One row per training run (the `keys` present): n_items and `value` averaged over the run's items (missing
    values left out; a run without any value is left out), and unit "run"."""
    require_columns(items, ["run", value], "the per-run values")
    keys = [k for k in keys if k in items.columns]
    data = items[keys].assign(_v=pd.to_numeric(items[value], errors="coerce")).dropna(subset=["_v"])
    out = data.groupby(keys, sort=True, dropna=False)["_v"].agg(n_items="size", _mean="mean").reset_index()
    return out.rename(columns={"_mean": value}).assign(unit="run")


def iqr_outliers(values: Sequence[float], k: float = 1.5) -> np.ndarray:
    """True for each value outside [Q1 - k IQR, Q3 + k IQR] (quartiles interpolated linearly, as R's quantile)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return np.zeros(0, dtype=bool)
    q1, q3 = np.percentile(v, [25, 75])
    return (v < q1 - k * (q3 - q1)) | (v > q3 + k * (q3 - q1))


def mark_outliers(runs: pd.DataFrame, value: str, cell: Sequence[str]) -> pd.DataFrame:
    """`runs` with a column `outlier`: True for a run whose `value` lies outside 1.5 IQR of its cell's runs (e.g.
    one condition on one test set and student), the rule Hendriks et al. apply before Tukey HSD."""
    cell = [c for c in cell if c in runs.columns]
    flags = pd.Series(False, index=runs.index)
    for _, grp in (runs.groupby(cell, sort=False, dropna=False) if cell else [((), runs)]):
        flags[grp.index] = iqr_outliers(grp[value])
    return runs.assign(outlier=flags.astype(bool))


def tukey_over_runs(runs: pd.DataFrame, value: str = "correct", group: str = "condition",
                    alpha: float = 0.05) -> pd.DataFrame:
    """Tukey-Kramer HSD between `group` levels with the training run as the unit: one `value` per run (`run_values`),
    runs marked `outlier` left out.

    A level with fewer than two runs (one seed, or BASE's single untrained run) cannot show run-to-run spread: it is
    left out and named in attrs["left_out"]. With fewer than two levels left, TooFewObservations: the test is never
    computed over test items instead. Columns as tukey_kramer, plus n1, n2 (runs per group) and unit "run".
    """
    data = runs[~runs["outlier"].astype(bool)] if "outlier" in runs.columns else runs
    data = _clean(data, [value, group], "Tukey-Kramer over training runs")
    counts = data[group].astype(str).value_counts().sort_index()
    few = counts[counts < 2]
    if len(counts) - len(few) < 2:
        got = _group_counts(counts, "run") if len(counts) else "no runs"
        raise TooFewObservations(
            f"Tukey-Kramer over training runs needs at least two {group} groups with two runs (seeds) each; got "
            f"{got}. Its unit is the training run, so it is not computed over test items instead; train more "
            "seeds (training.seeds) to run it.")
    data = data[~data[group].astype(str).isin(few.index)]
    out = tukey_kramer(data, value=value, group=group, alpha=alpha, unit="run")
    n = data[group].astype(str).value_counts()
    out.insert(2, "n1", out["group1"].map(n).astype(int))
    out.insert(3, "n2", out["group2"].map(n).astype(int))
    out["unit"] = "run"
    out.attrs.update(left_out={str(g): int(c) for g, c in few.items()})
    return out


def format_p(p: float) -> str:
    """'p = 0.003', or 'p < 0.001' for very small p."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _stars(p: float) -> str:
    """Significance stars: *** p < 0.001, ** p < 0.01, * p < 0.05, '' otherwise."""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def ols_regression(items: pd.DataFrame, outcome: str = "correct", covariates: Sequence[str] = (),
                   group: str = "condition", reference: str | None = None, fixed_effects: Sequence[str] = (),
                   cluster: str | None = None, factor: str | None = None,
                   factor_reference: str | None = None) -> pd.DataFrame:
    """OLS of `outcome` on `group` dummies (treatment coding) plus covariates, with robust standard errors.

    The baseline is `reference` or else the first group alphabetically. With `factor` (e.g. rationale_source) the
    model crosses the two, `C(group) * C(factor)`: both sets of dummies (the factor's baseline `factor_reference`, or
    its first level) and their interaction, so every group x factor cell needs data. `fixed_effects` (e.g. "rater")
    add one dummy per level but the first. With `cluster` (a column, e.g. the test item) the standard errors are
    clustered by it (CRV1 with statsmodels' small-sample correction, t with clusters - 1 df); without, HC3.
    Columns: term, coef, se, t, p, stars; attrs: r2, n, se_type, group, reference, factor, factor_reference, formula.
    """
    import statsmodels.formula.api as smf

    covariates, fixed_effects = list(covariates), list(fixed_effects)
    data = _clean(items, [outcome, group, *([factor] if factor else []), *covariates, *fixed_effects,
                          *([cluster] if cluster else [])], "OLS regression")
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
    group_term = f"C(g, Treatment(reference={reference!r}))"
    names = {group_term: group, **{f"C(f{i})": f for i, f in enumerate(fixed_effects)}}  # inside dummies' terms
    main, shown = group_term, f"C({group}, reference={reference!r})"
    if factor:
        frame["h"] = data[factor].astype(str).to_numpy()
        factor_reference = _check_crossed(frame, group, factor, factor_reference)
        factor_term = f"C(h, Treatment(reference={factor_reference!r}))"
        names[factor_term] = factor
        main, shown = f"{main} * {factor_term}", f"{shown} * C({factor}, reference={factor_reference!r})"
    formula = "y ~ " + " + ".join([main, *(f"x{i}" for i in range(len(covariates))),
                                   *(f"C(f{i})" for i in range(len(fixed_effects)))])
    model = smf.ols(formula, data=frame)
    n_params = model.exog.shape[1]
    if len(frame) <= n_params:
        raise TooFewObservations(
            f"the regression estimates {n_params} coefficients but has only {plural(len(frame), 'row')}; "
            "it needs more rows than coefficients. Evaluate more items or drop covariates."
        )
    if np.linalg.matrix_rank(model.exog) < n_params:
        raise TooFewObservations(
            f"the covariates / fixed effects {', '.join([*covariates, *fixed_effects])} are collinear with the "
            f"{group} dummies, so their effects cannot be told apart; drop one of them"
        )
    fit, se_type = _robust_fit(model, data[cluster] if cluster else None)
    covariate_names = {f"x{i}": c for i, c in enumerate(covariates)}
    terms = []
    for term in fit.params.index:
        for internal, name in names.items():
            term = term.replace(internal, name)
        terms.append(covariate_names.get(term, term))
    out = pd.DataFrame({
        "term": terms,
        "coef": fit.params.to_numpy(),
        "se": fit.bse.to_numpy(),
        "t": fit.tvalues.to_numpy(),
        "p": fit.pvalues.to_numpy(),
    })
    out["stars"] = [_stars(p) for p in out["p"]]
    out.attrs.update(r2=float(fit.rsquared), n=int(fit.nobs), se_type=se_type, group=group, reference=reference,
                     factor=factor, factor_reference=factor_reference if factor else None,
                     formula=f"{outcome} ~ {shown}" + "".join(f" + {c}" for c in covariates)
                     + "".join(f" + C({f})" for f in fixed_effects))
    return out


def _check_crossed(frame: pd.DataFrame, group: str, factor: str, reference: str | None) -> str:
    """The factor's baseline level; raise unless it has two levels and every group (g) x factor (h) cell has data."""
    levels = sorted(frame["h"].unique())
    reference = levels[0] if reference is None else str(reference)
    if reference not in levels:
        raise ValueError(f"reference {reference!r} is not a {factor} in the data; choose one of {', '.join(levels)}")
    if len(levels) < 2:
        raise TooFewObservations(f"the regression needs at least two levels of {factor}; got {', '.join(levels)}")
    present = set(zip(frame["g"], frame["h"]))
    empty = [f"{g} x {h}" for g in sorted(frame["g"].unique()) for h in levels if (g, h) not in present]
    if empty:
        raise TooFewObservations(f"the {group} x {factor} regression needs data in every cell; "
                                 f"{', '.join(empty)} {'has' if len(empty) == 1 else 'have'} none")
    return reference


def _robust_fit(model, clusters: pd.Series | None) -> tuple:
    """Fit with standard errors clustered by `clusters` (CRV1), or HC3 robust without; (fit, which errors)."""
    if clusters is None:
        kwargs, se_type = {"cov_type": "HC3"}, "HC3 robust"
        alone = "one row alone determines a coefficient (leverage 1)"
    else:
        codes, uniques = pd.factorize(clusters.astype(str))
        if len(uniques) < 2:
            raise TooFewObservations(f"standard errors clustered by {clusters.name} need at least two clusters; "
                                     f"the data has {len(uniques)}. Evaluate more items.")
        kwargs, se_type = {"cov_type": "cluster", "cov_kwds": {"groups": codes}}, \
            f"clustered by {clusters.name} ({len(uniques)} clusters)"
        alone = "too few clusters vary to estimate it"
    with warnings.catch_warnings():  # a degenerate covariance divides by zero; the check below says why instead
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = model.fit(use_t=True, **kwargs)
        bse = fit.bse
    if not np.all(np.isfinite(bse)) or not np.all(bse > 0):
        raise TooFewObservations(f"a robust standard error ({se_type}) is undefined or zero because {alone}; "
                                 "evaluate more items per group")
    return fit, se_type


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
        out["notes"].append(f"Levene's test rejects equal variances ({format_p(out['levene_p'])})")
    if np.isfinite(out["shapiro_p"]) and out["shapiro_p"] < alpha:
        out["ok"] = False
        out["notes"].append(f"Shapiro-Wilk rejects normal residuals ({format_p(out['shapiro_p'])})")
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
                                 f"{plural(len(frame), 'row')}; it needs more rows than cells. Evaluate more items.")
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
        raise TooFewObservations(f"{value} is {y[0]:g} for every item, so there is nothing to rank. "
                                 "Evaluate more items.")
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
                  within: Sequence[str] = ("test_set", "student", "seed"),
                  family: Sequence[str] = ("test_set", "student"), exact_below: int = 25) -> pd.DataFrame:
    """McNemar's test between every pair of `group` levels on the same items (paired by item_id within `within`).

    statsmodels' `mcnemar`: the exact two-sided binomial test on the discordant pairs (exact=True, not mid-p) when
    they number fewer than `exact_below`, else chi-square with continuity correction. An item without a `value` (not
    scored) is left out of the pairs it is in, and a level without any value out of the table. only1 = items group1
    got right and group2 wrong. p_holm is p Holm-adjusted over the tests of one `family` (every pair and seed of a
    test set and student). Unit: the test item (column `unit`).
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
    family = [f for f in family if f in within]
    if len(out):
        out["p_holm"] = holm_within(out, family)
        out["unit"] = "item"
    out.attrs.update(value=value, group=group, within=within, family=family, unit="item")
    return out


def cochran_q(items: pd.DataFrame, value: str = "correct", group: str = "condition",
              within: Sequence[str] = ("test_set", "student", "seed")) -> pd.DataFrame:
    """Cochran's Q (statsmodels' `cochrans_q`) of `value` across all `group` levels on the same items, per subset of
    `within`: are the shares right the same for every level?

    Items are paired by item_id; a level without any value is left out, then every item not scored under every level
    left (listwise). With no item on which the levels differ, Q = 0 and p = 1. Columns: `within`, groups (the levels,
    ", "-joined), k, n_items, discordant (items the levels disagree on), statistic, df, p, unit ("item"); attrs
    "skipped" lists the subsets with fewer than two levels.
    """
    from statsmodels.stats.contingency_tables import cochrans_q

    within = [w for w in within if w in items.columns]
    data = _clean(items, [value, group, "item_id", *within], "Cochran's Q")
    rows, skipped = [], []
    for key, grp in (data.groupby(within, sort=True) if within else [((), data)]):
        key = key if isinstance(key, tuple) else (key,)
        wide = grp.pivot_table(index="item_id", columns=grp[group].astype(str), values=value, aggfunc="first")
        wide = wide[sorted(wide.columns)].dropna()
        if wide.shape[1] < 2 or wide.empty:
            skipped.append(", ".join(map(str, key)) or "all items")
            continue
        x = wide.to_numpy(dtype=int)
        discordant = int((x.min(axis=1) != x.max(axis=1)).sum())
        res = cochrans_q(x) if discordant else None
        rows.append({**dict(zip(within, key)), "groups": ", ".join(wide.columns), "k": x.shape[1],
                     "n_items": x.shape[0], "discordant": discordant,
                     "statistic": float(res.statistic) if res is not None else 0.0,
                     "df": x.shape[1] - 1, "p": float(res.pvalue) if res is not None else 1.0, "unit": "item"})
    out = pd.DataFrame(rows)
    out.attrs.update(value=value, group=group, within=within, skipped=skipped, unit="item")
    return out


def over_readings(test: Callable[..., pd.DataFrame], items: pd.DataFrame, readings: Sequence[str],
                  **kwargs) -> pd.DataFrame:
    """`test` (mcnemar_pairs or cochran_q) on each column of `readings` that has a value, as one table with a
    `reading` column; McNemar's Holm families are thereby one test set, student and reading each."""
    present = [r for r in readings if has_values(items, r)]
    tables = [test(items, value=r, **kwargs) for r in present]
    skipped = [f"{r}: {where}" for r, t in zip(present, tables) for where in t.attrs.get("skipped", [])]
    parts = [t.assign(reading=r) for r, t in zip(present, tables) if len(t)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    first = tables[0].attrs if tables else {}
    out.attrs.update({k: v for k, v in first.items() if k not in ("value", "skipped")}, readings=present,
                     skipped=skipped)
    return out


def holm_within(table: pd.DataFrame, family: Sequence[str]) -> pd.Series:
    """table["p"] Holm-adjusted within each family of rows (equal values of `family`); a missing p stays missing."""
    from statsmodels.stats.multitest import multipletests

    adjusted = pd.Series(np.nan, index=table.index)
    for _, grp in (table.groupby(list(family), sort=False) if family else [((), table)]):
        p = grp["p"].dropna()
        if len(p):
            adjusted[p.index] = multipletests(p.to_numpy(dtype=float), method="holm")[1]
    return adjusted


def cec_text_metric_correlations(items: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Spearman correlation of CEC with each explanation metric present (BLEU, ROUGE-L, BERTScore), over items."""
    from scipy.stats import spearmanr

    rows = []
    for m in metrics:
        if not (has_values(items, m) and has_values(items, "cec")):
            continue
        pair = items[["cec", m]].dropna()
        if len(pair) < 3 or pair["cec"].nunique() < 2 or pair[m].nunique() < 2:
            rows.append({"metric": m, "n": len(pair), "spearman_rho": np.nan, "p": np.nan})
            continue
        res = spearmanr(pair["cec"], pair[m])
        rows.append({"metric": m, "n": len(pair), "spearman_rho": float(res.statistic), "p": float(res.pvalue)})
    return pd.DataFrame(rows, columns=["metric", "n", "spearman_rho", "p"])
