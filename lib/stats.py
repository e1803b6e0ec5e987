"""Statistics over per-item results: cluster-bootstrap CIs, Tukey-Kramer, ANOVA, Kruskal-Wallis/Dunn, McNemar, OLS.

Input everywhere is the per-item table of step 05 (`items`): one row per (run, test item) with
columns run, condition, student, seed, test_set, item_id, correct (0/1), cec (may be NaN) and
rationale_len. A run is one condition x student x training seed, so every test item appears once per
seed: the seeds of an item are not independent observations. The unit of every test is therefore the
test item: intervals resample items with all their seeds (a cluster bootstrap), Tukey-Kramer, ANOVA,
Kruskal-Wallis, the correlations and the regressions use per-item means over seeds (`over_seeds`), the
regressions cluster their standard errors by item, and McNemar pairs items within one seed and
Holm-corrects its p values. `analyse` runs every analysis of a run and returns `Section`s (a table, plain
sentences and notes on what could not be tested). scipy and statsmodels are imported inside the
functions that use them, so importing this module stays light.

Two rows frame the conditions: BASE (the untrained student) is a condition like any other; TEACHER (the
teacher's own answers to the in-distribution questions) takes part in the accuracy table and in McNemar
against every condition, but not in the tests between training conditions (Tukey-Kramer, ANOVA,
Kruskal-Wallis, OLS). When the students were trained on both unrevised and critique-revised teacher
rationales (`rationale_source`), each condition is compared per source ("MT:revised"), a two-way ANOVA
condition x revision is fitted, and the regressions get condition, revision and their interaction.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from lib.conditions import TEACHER
from lib.evaluation import causal_table

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


# one test item of one condition x rationale source x student
UNIT_KEYS = ("test_set", "student", "student_size", "condition", "rationale_source", "item_id")
SOURCE = "rationale_source"  # the revision factor: "unrevised" or "revised" teacher rationales
UNREVISED = "unrevised"  # its reference level


def n_seeds(data: pd.DataFrame) -> int:
    """The number of training seeds in a table (1 without a seed column)."""
    return int(data["seed"].nunique()) if "seed" in data.columns and len(data) else 1


def unit_text(data: pd.DataFrame, what: str = "test item") -> str:
    """'test item (mean over 3 seeds)', or 'test item (one seed)': the unit of a test, for the report."""
    n = n_seeds(data)
    return f"{what} (mean over {n} seeds)" if n > 1 else f"{what} (one seed)"


def over_seeds(data: pd.DataFrame, values: Sequence[str], keys: Sequence[str] = UNIT_KEYS) -> pd.DataFrame:
    """One row per unit (the `keys` present in `data`, e.g. a test item of a condition and student): each of
    `values` averaged over the training seeds (missing values left out)."""
    keys = [k for k in keys if k in data.columns]
    numeric = data[keys].assign(**{v: pd.to_numeric(data[v], errors="coerce") for v in values})
    return numeric.groupby(keys, sort=True, dropna=False)[list(values)].mean().reset_index()


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
    _require_columns(items, [*by, "correct"], "accuracy_table")
    if items.empty:
        raise TooFewObservations("accuracy_table got an empty table; evaluate at least one item first (step 05)")
    table = mean_table(items, "correct", by, n_boot, seed).rename(columns={"mean": "accuracy"})
    if "cec" in items.columns:
        cec = items.assign(cec=pd.to_numeric(items["cec"], errors="coerce")).groupby(by, sort=True)["cec"].mean()
        return table.merge(cec.rename("cec").reset_index(), on=by, how="left")
    return table.assign(cec=np.nan)


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
            f"the regression estimates {n_params} coefficients but has only {_plural(len(frame), 'row')}; "
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


# --- bootstrap, per-subset Tukey, two-way ANOVA, assumption checks, Kruskal-Wallis + Dunn, McNemar -------------

def cec_intervals(items: pd.DataFrame, by: Sequence[str] = ("condition", "test_set"), n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """Per group: items with a CEC (n_cec) and the cluster-bootstrap 95% interval of mean CEC over test items."""
    table = mean_table(items, "cec", by, n_boot, seed)
    return table[[*by, "n", "ci_low", "ci_high"]].rename(
        columns={"n": "n_cec", "ci_low": "cec_ci_low", "ci_high": "cec_ci_high"})


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
                  within: Sequence[str] = ("test_set", "student", "seed"),
                  family: Sequence[str] = ("test_set", "student"), exact_below: int = 25) -> pd.DataFrame:
    """McNemar's test between every pair of `group` levels on the same items (paired by item_id within `within`).

    Exact binomial test when the discordant pairs number fewer than `exact_below`, else chi-square with
    continuity correction. only1 = items group1 got right and group2 wrong. p_holm is p Holm-adjusted over
    the tests of one `family` (every pair and seed of a test set and student).
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
    out.attrs.update(value=value, group=group, within=within, family=family)
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


def describe_mcnemar(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per McNemar pair: who got more of the shared items right, and whether that is significant
    after the Holm correction (the raw p is given beside the adjusted one)."""
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
        ps = f"McNemar {_format_p(row['p'])}, Holm-adjusted {_format_p(row['p_holm'])}"
        if row["only1"] + row["only2"] == 0:
            sentences.append(f"{prefix}{row['group1']} vs {row['group2']}: the two agree on all "
                             f"{_plural(int(row['n_pairs']), 'shared item')} (no discordant pairs, nothing to test).")
        elif row["p_holm"] < alpha:
            sentences.append(f"{prefix}{winner} beats {loser} by {abs(diff):.1f} points ({what}; {ps}).")
        else:
            sentences.append(f"{prefix}{winner} vs {loser}: no significant difference ({what}; {ps}).")
    return sentences


# --- one run's analysis: inputs, sections, files ------------------------------------------------------------

RATING_DIMENSIONS = ("completeness", "contrastiveness", "soundness")  # Likert scores; "justification" is free text
TEXT_METRICS = ("bleu", "rouge_l", "bertscore")
FAITHFULNESS = {  # column of items.jsonl: what a 1 means, for the report's sentences
    "faithfulness_perturbed": "answer changed with a perturbed rationale",
    "faithfulness_counterfactual": "answer changed with a counterfactual rationale",
    "faithfulness_cf_follows": "answer followed the counterfactual rationale to its option",
}
RATING_UNIT = "one rater's rating of a test item's explanation"
ITEM_COLUMNS = ("run", "condition", SOURCE, "student", "seed", "test_set", "item_id", "correct", "rationale_len", "cec")
NUMERIC_COLUMNS = ("correct", "rationale_len", "cec", "cec_fc", "cec_bf", *TEXT_METRICS, "loglik_correct",
                   "loglik_norm_correct", *FAITHFULNESS)  # all-null when their part of step 05 is off; read as NaN
# log-likelihood answers (item column -> accuracy column): per character first, the headline (lm-eval's acc_norm);
# the summed pick (acc) still favours the first option of a weak model
LOGLIK_ACCURACIES = {"loglik_norm_correct": "loglik_norm_accuracy", "loglik_correct": "loglik_accuracy"}


@dataclasses.dataclass
class RunTables:
    """The tables of a run folder that the statistics read; an input a run lacks is None."""

    items: pd.DataFrame  # 05_evaluation/items.jsonl, with student_size joined from 04_training/runs.jsonl
    runs: pd.DataFrame | None  # 04_training/runs.jsonl
    ratings: pd.DataFrame | None  # the judge's and human ratings joined to items (condition, rationale_len)
    losses: pd.DataFrame | None  # 04_training/<run>/losses.jsonl, all runs
    acceptance: dict | None  # 03_counterfactuals/acceptance.json
    causal: pd.DataFrame | None = None  # 05_evaluation/causal_items.jsonl (CAUSAL students' explanations)


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


def read_table(path: Path) -> pd.DataFrame | None:
    """A jsonl file as a table; None when it is absent or has no rows (an optional part of the study is off)."""
    from lib.files import read_jsonl

    rows = read_jsonl(path) if path.exists() else []
    return pd.DataFrame(rows) if rows else None


def load_run_tables(run_dir: str | Path) -> RunTables:
    """Read what steps 03-05 wrote and the run's human ratings; every input but items.jsonl may be absent or empty.

    Ratings are the judge's (05_evaluation/judge_ratings.jsonl) and the human raters' (human_ratings.jsonl in the
    run folder, outside every step folder so that no rerun erases them), concatenated.
    """
    from lib.ratings import HUMAN_RATINGS, JUDGE_RATINGS
    from lib.files import read_json

    run_dir = Path(run_dir)
    items_path = run_dir / "05_evaluation" / "items.jsonl"
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path} is missing: step 05_evaluation makes it; run it first")
    items = read_table(items_path)
    items = pd.DataFrame(columns=list(ITEM_COLUMNS)) if items is None else items
    items = items.assign(**{c: pd.to_numeric(items[c], errors="coerce") for c in NUMERIC_COLUMNS if c in items})
    runs = read_table(run_dir / "04_training" / "runs.jsonl")
    items = with_student_size(items, runs)
    rated = [t for t in (read_table(run_dir / "05_evaluation" / JUDGE_RATINGS), read_table(run_dir / HUMAN_RATINGS))
             if t is not None]
    ratings = join_ratings(pd.concat(rated, ignore_index=True), items) if rated else None
    losses = [t for t in map(read_table, sorted((run_dir / "04_training").glob("*/losses.jsonl"))) if t is not None]
    acc_path = run_dir / "03_counterfactuals" / "acceptance.json"
    return RunTables(items=items, runs=runs, ratings=ratings if ratings is not None and len(ratings) else None,
                     losses=pd.concat(losses, ignore_index=True) if losses else None,
                     acceptance=read_json(acc_path) if acc_path.exists() else None,
                     causal=read_table(run_dir / "05_evaluation" / "causal_items.jsonl"))


def join_ratings(ratings: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Ratings (run, item_id, rater, dimensions) with the rated item's condition, rationale source, student, test set
    and rationale_len."""
    _require_columns(ratings, ["run", "item_id", "rater"], "the ratings (judge_ratings.jsonl, human_ratings.jsonl)")
    keep = [c for c in ("run", "item_id", "test_set", "condition", SOURCE, "student", "student_size", "rationale_len")
            if c in items.columns]
    meta = items[keep].drop_duplicates(["run", "item_id"])
    ratings = ratings.assign(**{d: pd.to_numeric(ratings[d], errors="coerce") for d in RATING_DIMENSIONS
                                if d in ratings.columns})  # a failed judge call leaves null scores
    joined = ratings.drop(columns=[c for c in keep if c not in ("run", "item_id")], errors="ignore").merge(
        meta, on=["run", "item_id"], how="inner")
    if len(joined) < len(ratings):
        log.info("ratings: %d of %d rate no evaluated item of this run and are left out", len(ratings) - len(joined),
                 len(ratings))
    return joined


def rated_dimensions(ratings: pd.DataFrame | None, dimensions: Sequence[str] = RATING_DIMENSIONS) -> list[str]:
    """The rating dimensions with at least one numeric score."""
    if ratings is None:
        return []
    return [d for d in dimensions if _has_values(ratings, d) and pd.api.types.is_numeric_dtype(ratings[d])]


def ratings_absent_note(ratings: pd.DataFrame | None, dimensions: Sequence[str] = RATING_DIMENSIONS) -> str:
    """Why there is nothing to analyse in the ratings: none at all, or no usable score (with the failures counted)."""
    if ratings is None:
        return ("no ratings in this run: neither the judge's (05_evaluation/judge_ratings.jsonl; evaluation.judge) "
                "nor human ones (human_ratings.jsonl in the run folder; lib.ratings.add_human_ratings); "
                "this input is absent.")
    failed = int(ratings["failure"].fillna("").astype(str).ne("").sum()) if "failure" in ratings else 0
    why = f" ({failed} of {len(ratings)} ratings failed, e.g. an unparseable judge reply)" if failed else ""
    return f"the ratings have no usable score for {', '.join(dimensions)}{why}; this input is absent."


def _absent(key: str, title: str, explanation: str, note: str) -> Section:
    """A section whose input is absent from the run."""
    return Section(key, title, explanation, notes=[note])


def _has_values(items: pd.DataFrame, column: str) -> bool:
    """True when `column` exists and has at least one non-missing value."""
    return column in items.columns and items[column].notna().any()


def _label(row: dict, keys: Sequence[str]) -> str:
    """'[csqa, gpt2] ' from a row and the keys that name its subset ('' without keys)."""
    return "[" + ", ".join(str(row[k]) for k in keys) + "] " if keys else ""


def _of_items(row: dict) -> str:
    """'40 items' or '40 items x 3 seeds' for a row of mean_table."""
    seeds = f" x {int(row['n_seeds'])} seeds" if row["n_seeds"] > 1 else ""
    return _plural(int(row["n_items"]), "item") + seeds


def _ci_text(low: float, high: float) -> str:
    """'95% CI 40.0-60.0' in percent, or 'no interval'."""
    return f"95% CI {low * 100:.1f}-{high * 100:.1f}" if np.isfinite(low) else "no interval"


def accuracy_section(tables: RunTables, n_boot: int = 1000, seed: int = 0) -> Section:
    """Accuracy (and log-likelihood accuracy) and mean CEC per test set, student and condition (per rationale source
    when there are two) with 95% intervals; BASE and TEACHER among them."""
    items = with_arms(tables.items)
    by = [c for c in ("test_set", "student", "condition") if c in items.columns]
    section = Section("accuracy", "Accuracy and CEC by condition",
                      "Share of test items answered correctly, and mean CEC (explanation coherence with the teacher), "
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
    if _has_values(items, "cec"):
        table = table.merge(cec_intervals(items, by=by, n_boot=n_boot, seed=seed), on=by, how="left")
    for column, name in LOGLIK_ACCURACIES.items():
        if _has_values(items, column):
            loglik = mean_table(items, column, by, n_boot, seed)[[*by, "mean", "ci_low", "ci_high"]]
            table = table.merge(loglik.rename(columns={"mean": name, "ci_low": f"{name}_ci_low",
                                                       "ci_high": f"{name}_ci_high"}), on=by, how="left")
    if not any(_has_values(items, c) for c in LOGLIK_ACCURACIES):
        section.notes.append("no log-likelihood accuracy (evaluation.loglik is off, or every student is "
                             "encoder-decoder); this input is absent.")
    section.table = table
    if n_seeds(items) == 1:
        section.notes.append("one training seed per condition: differences between conditions also contain the "
                             "run-to-run randomness of training, which one seed cannot measure.")
    if "test_set" in items.columns and items["test_set"].nunique() == 1:
        section.notes.append(f"one test set ({items['test_set'].iloc[0]}): there is no out-of-distribution result "
                             "(data.ood lists no set); this input is absent.")
    flat = table[(table["n_items"] >= 2) & (table["ci_low"] == table["ci_high"])]
    if len(flat):
        section.notes.append(f"{_plural(len(flat), 'group')} got every item right or every item wrong, so the "
                             "bootstrap interval collapses to a point; that is too few items to show spread, "
                             "not certainty.")
    single = table[table["n_items"] < 2]
    if len(single):
        section.notes.append(f"{_plural(len(single), 'group')} with a single item have no confidence interval.")
    for row in table.to_dict("records"):
        headline = next((n for n in LOGLIK_ACCURACIES.values() if pd.notna(row.get(n, np.nan))), None)
        loglik = (f"; log-likelihood accuracy{' per character' if headline == 'loglik_norm_accuracy' else ''} "
                  f"{row[headline] * 100:.1f}% ({_ci_text(row[f'{headline}_ci_low'], row[f'{headline}_ci_high'])})"
                  if headline else "")
        section.sentences.append(f"{_label(row, by[:-1])}{row[by[-1]]}: {row['accuracy'] * 100:.1f}% of "
                                 f"{_of_items(row)} correct ({_ci_text(row['ci_low'], row['ci_high'])}){loglik}.")
    return section


def faithfulness_section(tables: RunTables, n_boot: int = 1000, seed: int = 0) -> Section:
    """How often the answer changes when the student's rationale is replaced, per test set, student and condition."""
    items = with_arms(tables.items)
    by = [c for c in ("test_set", "student", "condition") if c in items.columns]
    section = Section("faithfulness", "Faithfulness: does the answer depend on the rationale?",
                      "Share of items whose answer changed when the student's own rationale was replaced by a perturbed "
                      "one or by a counterfactual one (arguing for another option), and how often the answer then "
                      "followed the counterfactual; an answer that ignores its rationale rarely changes. 95% "
                      f"confidence intervals from a cluster bootstrap over test items. Unit: {unit_text(items)}.")
    present = [c for c in FAITHFULNESS if _has_values(items, c)]
    if not present:
        section.notes.append("no item has a faithfulness probe (evaluation.faithfulness is off, or every student is "
                             "encoder-decoder); this input is absent.")
        return section
    section.table = pd.concat([mean_table(items, c, by, n_boot, seed).assign(probe=c) for c in present],
                              ignore_index=True).rename(columns={"mean": "rate"})
    for row in section.table.to_dict("records"):
        section.sentences.append(f"{_label(row, by[:-1])}{row[by[-1]]}, {FAITHFULNESS[row['probe']]}: "
                                 f"{row['rate'] * 100:.1f}% of {_of_items(row)} "
                                 f"({_ci_text(row['ci_low'], row['ci_high'])}).")
    return section


def tukey_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Tukey-Kramer HSD between training conditions (per rationale source when there are two) within each test set
    and student, on per-item means over seeds."""
    title, expl = (f"Tukey-Kramer HSD on {outcome}",
                   "Every pair of conditions compared within each test set and student, with the family-wise error "
                   "held at alpha (Tukey-Kramer handles unequal group sizes); with students trained on unrevised and "
                   "revised teacher rationales, each condition and source is a group (MT:revised)."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    data = compared_conditions(tables.items)
    if not _has_values(data, outcome):
        return _absent(f"tukey_{outcome}", title, expl, f"no item has a value for {outcome}; this input is absent.")
    table, notes = tukey_by(over_seeds(data, [outcome]), value=outcome, alpha=alpha)
    return Section(f"tukey_{outcome}", title, expl, table if len(table) else None,
                   describe_tukey_by(table) if len(table) else [], notes)


def anova_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Two-way ANOVA condition x student size per test set on per-item means over seeds (Levene, Shapiro-Wilk)."""
    title, expl = (f"Two-way ANOVA on {outcome}: condition x student size",
                   "Does the condition matter, does the student's size matter, and does the effect of the condition "
                   "depend on the size? Levene's test checks equal variances and Shapiro-Wilk normal residuals. With "
                   "two rationale sources each condition and source is a level of condition (MT:revised)."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    key = f"anova_{outcome}"
    data = compared_conditions(tables.items)
    if not _has_values(data, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl)
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
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    key = f"anova_revision_{outcome}"
    data = tables.items[tables.items["condition"] != TEACHER]
    if not _has_values(data, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl)
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
        table = table.assign(levene_p=table.attrs["levene_p"], shapiro_p=table.attrs["shapiro_p"])
        for k, v in reversed(list(zip(by, key))):
            table.insert(0, k, v)
        parts.append(table)
    section.table = pd.concat(parts, ignore_index=True) if parts else None


def _p_or_na(p: float) -> str:
    """'p = 0.030', or 'not computable' for NaN."""
    return _format_p(p) if np.isfinite(p) else "not computable"


def kruskal_section(tables: RunTables, outcome: str, alpha: float = 0.05) -> Section:
    """Kruskal-Wallis and Dunn-Bonferroni per test set and student on per-item means over seeds."""
    title, expl = (f"Kruskal-Wallis and Dunn-Bonferroni on {outcome} (non-parametric)",
                   "Compares conditions by ranks, without assuming normal residuals or equal variances; Dunn's "
                   "pairwise tests are Bonferroni-corrected. Read these when the ANOVA's checks fail."
                   f"{_teacher_left_out(tables.items)} Unit: {unit_text(tables.items)}.")
    key = f"kruskal_{outcome}"
    data = compared_conditions(tables.items)
    if not _has_values(data, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    section = Section(key, title, expl)
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
    """Paired McNemar tests of correctness between conditions on the same test items, Holm-corrected; TEACHER is
    paired with every condition of every student and seed."""
    section = Section("mcnemar", "McNemar's test on the same items (paired)",
                      "For two conditions (same student and seed) answering the same test items, only the items one "
                      "gets right and the other wrong carry information; McNemar tests whether those split evenly. "
                      "TEACHER (the teacher's own answers) is paired with every condition of every student and seed "
                      "on the in-distribution items both answered. "
                      "The p values are Holm-adjusted over every pair and seed of a test set and student (p_holm), "
                      "and significance is judged on the adjusted p. Unit: test item, paired within one seed.")
    try:
        table = mcnemar_pairs(teacher_beside_students(with_arms(tables.items)))
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


def teacher_beside_students(items: pd.DataFrame) -> pd.DataFrame:
    """The items with TEACHER's rows repeated under the student and seed of every run of the same test set, so that
    McNemar (which pairs within a test set, student and seed) pairs the teacher with every condition."""
    teacher, students = items[items["condition"] == TEACHER], items[items["condition"] != TEACHER]
    if teacher.empty:
        return items
    keys = [k for k in ("student", "seed") if k in items.columns]
    cells = students[["test_set", *keys]].drop_duplicates()
    return pd.concat([students, teacher.drop(columns=keys).merge(cells, on="test_set")], ignore_index=True)


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
    if not _has_values(tables.items, outcome):
        return _absent(key, title, expl, f"no item has a value for {outcome}; this input is absent.")
    data, revision, notes = _regression_rows(over_seeds(tables.items, [outcome]).dropna(subset=[outcome]))
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
            sentences.append(f"{what}: {row.coef:+.3f} (SE {row.se:.3f}, {_format_p(row.p)}, {verdict}).")
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
        parts.append(f"{int((~judge).sum())} by {_plural(ratings.loc[~judge, 'rater'].nunique(), 'human rater')}")
    return f"Ratings: {', '.join(parts)}."


def ratings_sections(tables: RunTables, dimensions: Sequence[str] = RATING_DIMENSIONS, reference: str | None = None,
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
            section.sentences += describe_ols(section.table)
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
    """How CEC agrees with BLEU / ROUGE-L / BERTScore on the same explanations (per-item means over seeds)."""
    section = Section("cec_vs_metrics", "CEC against BLEU, ROUGE-L and BERTScore",
                      "Spearman rank correlation, over items, between CEC and each surface or embedding metric of the "
                      "same explanation against the teacher's. "
                      f"Unit: {unit_text(tables.items, 'test item of one condition and student')}.")
    present = [m for m in TEXT_METRICS if _has_values(tables.items, m)]
    if not present:
        section.notes.append("no item has BLEU, ROUGE-L or BERTScore (evaluation.text_metrics is off); "
                             "this input is absent.")
        return section
    if not _has_values(tables.items, "cec"):
        section.notes.append("no item has a CEC score, so there is nothing to correlate with; this input is absent.")
        return section
    table = metric_correlations(over_seeds(tables.items, ["cec", *present]), present)
    section.table = table
    for row in table.itertuples(index=False):
        if np.isfinite(row.spearman_rho):
            section.sentences.append(f"CEC vs {row.metric}: Spearman rho = {row.spearman_rho:.2f} "
                                     f"({_format_p(row.p)}, n = {row.n}).")
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
            section.notes.append(f"{label} none of its {_plural(int(row.n), 'explanation')} has a teacher "
                                 "explanation to score against (the teacher failed on those pairs).")
            continue
        section.sentences.append(f"{label} {_plural(int(row.n_scored), 'explanation')} scored: mean CEC "
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
                mcnemar_section(tables, alpha)]
    for outcome in outcomes:
        sections += [tukey_section(tables, outcome, alpha), anova_section(tables, outcome, alpha),
                     revision_anova_section(tables, outcome, alpha), kruskal_section(tables, outcome, alpha),
                     ols_section(tables, outcome, reference, conditions)]
    sections += ratings_sections(tables, reference=reference, conditions=conditions)
    sections.append(metrics_section(tables))
    sections.append(causal_section(tables))
    return {s.key: s for s in sections}


def write_analysis(sections: dict[str, Section], out: Path) -> list[str]:
    """Write <key>.csv for each section with a table (removing a stale one otherwise) and findings.md; returns paths."""
    from lib.files import atomic_write_text

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
