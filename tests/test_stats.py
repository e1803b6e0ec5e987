"""Tests of lib.stats against textbooks and hand computations: accuracy table and cluster bootstrap, Tukey-Kramer
(over items as a primitive, over training runs with 1.5 IQR outliers removed), OLS, two-way ANOVA, Kruskal-Wallis and
Dunn, McNemar with Holm over every reading, Cochran's Q."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import tukey_hsd

from lib.stats import accuracy_table, ols_regression, TooFewObservations, tukey_kramer

# Hollander & Wolfe (1973), "Nonparametric Statistical Methods", p. 116 (the scipy.stats.tukey_hsd example):
# group means 26.28, 30.88, 26.54.
TEXTBOOK = {
    "A": [24.5, 23.5, 26.4, 27.1, 29.9],
    "B": [28.4, 34.2, 29.5, 32.2, 30.1],
    "C": [26.1, 28.3, 24.3, 26.2, 27.8],
}


def long_frame(groups: dict[str, list[float]], value: str = "score") -> pd.DataFrame:
    """A per-item table with one row per value, its group in `condition`."""
    return pd.DataFrame([{"condition": g, value: v} for g, vs in groups.items() for v in vs])


def synthetic_items(n: int = 400, seed: int = 3) -> pd.DataFrame:
    """Per-item results of three conditions on two test sets, with known accuracy differences."""
    rng = np.random.default_rng(seed)
    cond = rng.choice(["MT", "CF", "FT-CoT"], n)
    p = pd.Series(cond).map({"MT": 0.75, "CF": 0.45, "FT-CoT": 0.6}).to_numpy()
    return pd.DataFrame({
        "run": [f"{c}-s0" for c in cond], "condition": cond, "student": "gpt2", "seed": 0,
        "test_set": rng.choice(["csqa", "arc_easy"], n), "item_id": [f"q{i}" for i in range(n)],
        "correct": (rng.random(n) < p).astype(int), "cec": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
        "rationale_len": rng.integers(5, 60, n),
    })


# --- Tukey-Kramer ----------------------------------------------------------------------------------

def check_against_scipy(groups: dict[str, list[float]]) -> pd.DataFrame:
    """Run tukey_kramer and compare every pair with scipy.stats.tukey_hsd on the same data."""
    out = tukey_kramer(long_frame(groups), value="score")
    ref = tukey_hsd(*groups.values())
    ci = ref.confidence_interval(0.95)
    names = list(groups)
    assert len(out) == len(names) * (len(names) - 1) // 2
    for row in out.itertuples():
        i, j = names.index(row.group1), names.index(row.group2)
        # scipy's statistic[i, j] is mean(i) - mean(j); ours is mean(group2) - mean(group1)
        assert row.meandiff == pytest.approx(ref.statistic[j, i])
        assert row.p_adj == pytest.approx(ref.pvalue[i, j], rel=1e-3, abs=1e-6)
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low[j, i], ci.high[j, i]), rel=1e-3)
        assert row.reject == (ref.pvalue[i, j] < 0.05)
    return out


def test_tukey_kramer_textbook_equal_sizes():
    out = check_against_scipy(TEXTBOOK).set_index(["group1", "group2"])
    # mean differences by hand: 30.88 - 26.28, 26.54 - 26.28, 26.54 - 30.88
    assert out.loc[("A", "B"), "meandiff"] == pytest.approx(4.60)
    assert out.loc[("A", "C"), "meandiff"] == pytest.approx(0.26)
    assert out.loc[("B", "C"), "meandiff"] == pytest.approx(-4.34)
    # the textbook's conclusion: B differs from A and from C; A and C do not differ
    assert out["reject"].tolist() == [True, False, True]


def test_tukey_kramer_unequal_group_sizes():
    groups = {"A": TEXTBOOK["A"][:3], "B": TEXTBOOK["B"], "C": TEXTBOOK["C"] + [25.0, 27.5, 26.9]}
    out = check_against_scipy(groups)
    assert out.loc[0, "meandiff"] == pytest.approx(np.mean(groups["B"]) - np.mean(groups["A"]))


def test_tukey_kramer_on_items_drops_missing_values():
    items = synthetic_items()
    out = tukey_kramer(items, value="cec")
    assert out.attrs["value"] == "cec"
    kept = items.dropna(subset=["cec"])
    means = kept.groupby("condition")["cec"].mean()
    for row in out.itertuples():
        assert row.meandiff == pytest.approx(means[row.group2] - means[row.group1])


def test_tukey_kramer_single_item_group_names_it():
    items = long_frame({"CF": [1, 0, 1], "MT": [1]}, value="correct")
    with pytest.raises(TooFewObservations, match="MT: 1 item"):
        tukey_kramer(items)


@pytest.mark.parametrize("groups", [{"MT": [1, 0, 1]}, {}])
def test_tukey_kramer_fewer_than_two_groups(groups):
    items = long_frame(groups, value="correct") if groups else pd.DataFrame({"condition": [], "correct": []})
    with pytest.raises(TooFewObservations, match="at least two condition"):
        tukey_kramer(items)


def test_tukey_kramer_no_within_group_variance():
    items = long_frame({"CF": [0, 0, 0], "MT": [1, 1, 1]}, value="correct")
    with pytest.raises(TooFewObservations, match="no within-group variance"):
        tukey_kramer(items)


def test_tukey_kramer_missing_column_says_which():
    with pytest.raises(ValueError, match="correct"):
        tukey_kramer(pd.DataFrame({"condition": ["a", "b"]}))


# --- OLS -------------------------------------------------------------------------------------------

def design(items: pd.DataFrame, reference: str) -> np.ndarray:
    """Intercept, treatment dummies for every non-reference condition (sorted), then rationale_len."""
    levels = [c for c in sorted(items["condition"].unique()) if c != reference]
    cols = [np.ones(len(items))] + [(items["condition"] == c).to_numpy(float) for c in levels]
    return np.column_stack(cols + [items["rationale_len"].to_numpy(float)])


@pytest.mark.parametrize("reference", [None, "MT"])
def test_ols_matches_lstsq_and_hand_hc3(reference):
    items = synthetic_items()
    out = ols_regression(items, covariates=("rationale_len",), reference=reference)
    base = reference or "CF"
    X, y = design(items, base), items["correct"].to_numpy(float)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(out["coef"], beta, rtol=1e-8, atol=1e-10)
    # HC3: (X'X)^-1 X' diag(e_i^2 / (1 - h_i)^2) X (X'X)^-1
    bread = np.linalg.inv(X.T @ X)
    resid = y - X @ beta
    lev = np.einsum("ij,jk,ik->i", X, bread, X)
    cov = bread @ (X.T * (resid / (1 - lev)) ** 2) @ X @ bread
    np.testing.assert_allclose(out["se"], np.sqrt(np.diag(cov)), rtol=1e-8)
    others = [c for c in sorted(items["condition"].unique()) if c != base]
    assert out["term"].tolist() == ["Intercept", *(f"condition[T.{c}]" for c in others), "rationale_len"]
    assert out.attrs["n"] == len(items) and out.attrs["reference"] == base
    assert 0 < out.attrs["r2"] < 1


def test_ols_stars_follow_p_thresholds():
    out = ols_regression(synthetic_items(), covariates=("rationale_len",))
    expected = ["***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "" for p in out["p"]]
    assert out["stars"].tolist() == expected
    # MT vs CF is a 30-point gap on 400 items: clearly significant; the length covariate is pure noise
    row = out.set_index("term")
    assert row.loc["condition[T.MT]", "stars"] == "***"
    assert row.loc["rationale_len", "stars"] == ""


@pytest.mark.parametrize("p, stars", [(0.0009, "***"), (0.001, "**"), (0.0099, "**"), (0.01, "*"),
                                      (0.049, "*"), (0.05, ""), (0.7, "")])
def test_star_boundaries(p, stars):
    from lib.stats import _stars

    assert _stars(p) == stars


def test_ols_unknown_reference_lists_choices():
    with pytest.raises(ValueError, match="choose one of CF, FT-CoT, MT"):
        ols_regression(synthetic_items(), reference="XX")


def test_ols_too_few_observations():
    items = synthetic_items(40)
    with pytest.raises(TooFewObservations, match="at least two condition"):
        ols_regression(items[items["condition"] == "MT"])
    with pytest.raises(TooFewObservations, match="no variance"):
        ols_regression(items.assign(correct=1))
    with pytest.raises(TooFewObservations, match="rationale_len do not vary"):
        ols_regression(items.assign(rationale_len=12), covariates=("rationale_len",))
    tiny = pd.DataFrame({"condition": ["A", "A", "B", "B"], "correct": [1, 0, 1, 0], "rationale_len": [3, 5, 4, 9],
                         "x2": [1, 2, 3, 5]})
    with pytest.raises(TooFewObservations, match="more rows than coefficients"):
        ols_regression(tiny, covariates=("rationale_len", "x2"))


# --- accuracy table --------------------------------------------------------------------------------

def test_accuracy_table_counts_ci_and_cec():
    items = synthetic_items()
    table = accuracy_table(items, n_boot=500)
    assert len(table) == items.groupby(["condition", "test_set"]).ngroups
    for row in table.itertuples():
        grp = items[(items["condition"] == row.condition) & (items["test_set"] == row.test_set)]
        assert row.n == len(grp)
        assert row.accuracy == pytest.approx(grp["correct"].mean())
        assert row.cec == pytest.approx(grp["cec"].mean())
        assert row.ci_low <= row.accuracy <= row.ci_high
        assert row.ci_high - row.ci_low > 0.05  # ~70 binary items cannot pin accuracy down to 5 points
    assert accuracy_table(items, n_boot=500).equals(table)  # seeded: reproducible


def test_accuracy_table_single_key_edge_groups():
    items = pd.DataFrame({"condition": ["A"] * 4 + ["B"], "correct": [1, 1, 1, 1, 0], "cec": np.nan})
    table = accuracy_table(items, by=["condition"]).set_index("condition")
    assert (table.loc["A", "ci_low"], table.loc["A", "ci_high"]) == (1.0, 1.0)
    assert np.isnan(table.loc["B", "ci_low"]) and table.loc["B", "accuracy"] == 0.0
    with pytest.raises(TooFewObservations):
        accuracy_table(items.iloc[:0], by=["condition"])


def test_stats_import_is_light():
    code = ("import sys, lib.stats; heavy = {'torch', 'sentence_transformers', 'statsmodels'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"


# --- two-way ANOVA -----------------------------------------------------------------------------------------

# Montgomery, "Design and Analysis of Experiments", Example 5.1: battery life (hours) by material type (1-3)
# and temperature (15, 70, 125 F), four batteries per cell. The textbook's ANOVA table: SS material 10683.72,
# SS temperature 39118.72, SS interaction 9613.78, SS error 18230.75 (27 df); F = 7.91, 28.97, 3.56.
BATTERY = {
    ("1", "15"): [130, 155, 74, 180], ("1", "70"): [34, 40, 80, 75], ("1", "125"): [20, 70, 82, 58],
    ("2", "15"): [150, 188, 159, 126], ("2", "70"): [136, 122, 106, 115], ("2", "125"): [25, 70, 58, 45],
    ("3", "15"): [138, 110, 168, 160], ("3", "70"): [174, 120, 150, 139], ("3", "125"): [96, 82, 60, 104],
}


def battery_frame() -> pd.DataFrame:
    return pd.DataFrame([{"condition": m, "student_size": t, "correct": v}
                         for (m, t), vs in BATTERY.items() for v in vs])


def hand_two_way(frame: pd.DataFrame) -> dict[str, float]:
    """Sums of squares of a balanced two-way layout from cell, row, column and grand means (numpy only)."""
    cube = np.array([[BATTERY[(m, t)] for t in ("15", "70", "125")] for m in ("1", "2", "3")], dtype=float)
    a, b, n = cube.shape
    grand = cube.mean()
    ma, mb, cell = cube.mean(axis=(1, 2)), cube.mean(axis=(0, 2)), cube.mean(axis=2)
    return {
        "condition": b * n * np.sum((ma - grand) ** 2),
        "student_size": a * n * np.sum((mb - grand) ** 2),
        "condition x student_size": n * np.sum((cell - ma[:, None] - mb[None, :] + grand) ** 2),
        "residual": np.sum((cube - cell[:, :, None]) ** 2),
    }


def test_two_way_anova_matches_textbook_and_hand_sums():
    from scipy.stats import f as f_dist

    from lib.stats import two_way_anova

    out = two_way_anova(battery_frame()).set_index("source")
    hand = hand_two_way(battery_frame())
    textbook = {"condition": 10683.72, "student_size": 39118.72, "condition x student_size": 9613.78,
                "residual": 18230.75}
    for source, ss in hand.items():
        assert out.loc[source, "sum_sq"] == pytest.approx(ss, rel=1e-10)
        assert out.loc[source, "sum_sq"] == pytest.approx(textbook[source], abs=0.01)
    dfs = {"condition": 2, "student_size": 2, "condition x student_size": 4, "residual": 27}
    assert out["df"].to_dict() == pytest.approx(dfs)
    mse = hand["residual"] / 27
    for source, f_book in [("condition", 7.91), ("student_size", 28.97), ("condition x student_size", 3.56)]:
        f_hand = hand[source] / dfs[source] / mse
        assert out.loc[source, "F"] == pytest.approx(f_hand) and round(f_hand, 2) == f_book
        assert out.loc[source, "p"] == pytest.approx(f_dist.sf(f_hand, dfs[source], 27))
    assert out.attrs["interaction"] and out.attrs["n"] == 36


def test_two_way_anova_assumption_checks_note_failures():
    from scipy.stats import levene, shapiro

    from lib.stats import two_way_anova

    rng = np.random.default_rng(0)
    rows = [{"condition": c, "student_size": s, "correct": v}
            for c, spread in (("A", 0.1), ("B", 10.0)) for s in ("small", "large")
            for v in rng.normal(5, spread, 30)]
    out = two_way_anova(pd.DataFrame(rows))
    frame = pd.DataFrame(rows)
    cells = [g["correct"].to_numpy() for _, g in frame.groupby(["condition", "student_size"])]
    assert out.attrs["levene_p"] == pytest.approx(levene(*cells, center="median").pvalue)
    resid = frame["correct"] - frame.groupby(["condition", "student_size"])["correct"].transform("mean")
    assert out.attrs["shapiro_p"] == pytest.approx(shapiro(resid.to_numpy()).pvalue)
    assert not out.attrs["ok"]
    assert any("Levene's test rejects equal variances" in n for n in out.attrs["notes"])
    assert any("Kruskal-Wallis" in n for n in out.attrs["notes"])
    ok = two_way_anova(battery_frame())
    assert ok.attrs["ok"] and ok.attrs["notes"] == []


def test_two_way_anova_too_few_observations():
    from lib.stats import two_way_anova

    one_size = battery_frame().assign(student_size="270M")
    with pytest.raises(TooFewObservations, match="two levels of student_size; this run has 1 \\(270M\\)"):
        two_way_anova(one_size)
    one_per_cell = battery_frame().groupby(["condition", "student_size"]).head(1)
    with pytest.raises(TooFewObservations, match="more rows than cells"):
        two_way_anova(one_per_cell)
    with pytest.raises(TooFewObservations, match="no within-cell variance"):
        two_way_anova(battery_frame().assign(correct=lambda d: d["condition"].astype(int)))


# --- Kruskal-Wallis and Dunn ----------------------------------------------------------------------------

def test_kruskal_matches_scipy_and_dunn_by_hand():
    from scipy.stats import kruskal, norm

    from lib.stats import kruskal_dunn

    out = kruskal_dunn(long_frame(TEXTBOOK, value="correct"))
    ref = kruskal(*TEXTBOOK.values())
    assert out.attrs["H"] == pytest.approx(ref.statistic) and out.attrs["kw_p"] == pytest.approx(ref.pvalue)
    # no ties among the 15 values: mean ranks by hand, sigma^2 = N(N+1)/12 (1/5 + 1/5)
    values = np.concatenate(list(TEXTBOOK.values()))
    assert len(np.unique(values)) == len(values)
    ranks = np.argsort(np.argsort(values)) + 1
    mean_rank = {g: ranks[i * 5:(i + 1) * 5].mean() for i, g in enumerate(TEXTBOOK)}
    row = out.set_index(["group1", "group2"]).loc[("A", "B")]
    z = (mean_rank["B"] - mean_rank["A"]) / np.sqrt(15 * 16 / 12 * (2 / 5))
    assert row["z"] == pytest.approx(z)
    assert row["p_adj"] == pytest.approx(min(1.0, 3 * 2 * norm.sf(abs(z))))
    assert out["p_adj"].le(1).all() and (out["p_adj"] >= out["p"]).all()


def test_kruskal_with_ties_matches_scipy():
    from scipy.stats import kruskal

    from lib.stats import kruskal_dunn

    groups = {"CF": [0, 0, 1, 0, 1, 0], "MT": [1, 1, 1, 0, 1, 1], "FT": [0, 1, 0, 0, 1]}
    out = kruskal_dunn(long_frame(groups, value="correct"))
    assert out.attrs["H"] == pytest.approx(kruskal(*groups.values()).statistic)
    with pytest.raises(TooFewObservations, match="nothing to rank"):
        kruskal_dunn(long_frame({"CF": [0, 0], "MT": [0, 0]}, value="correct"))


# --- McNemar -----------------------------------------------------------------------------------------------

def paired_items(both_right: int, only_a: int, only_b: int, both_wrong: int) -> pd.DataFrame:
    """Two conditions A and B on the same items with the given 2x2 counts."""
    outcomes = [(1, 1)] * both_right + [(1, 0)] * only_a + [(0, 1)] * only_b + [(0, 0)] * both_wrong
    return pd.DataFrame([{"condition": c, "item_id": f"q{i}", "test_set": "csqa", "student": "s", "seed": 0,
                          "correct": pair[k]} for i, pair in enumerate(outcomes) for k, c in enumerate("AB")])


def test_mcnemar_exact_by_hand():
    from lib.findings import describe_mcnemar
    from lib.stats import mcnemar_pairs

    out = mcnemar_pairs(paired_items(5, 10, 3, 2))
    row = out.iloc[0]
    assert (row["n_pairs"], row["both_right"], row["only1"], row["only2"], row["both_wrong"]) == (20, 5, 10, 3, 2)
    # exact: two-sided binomial on 13 discordant pairs, 3 of one kind: 2 * (C(13,0)+..+C(13,3)) / 2^13
    assert row["p"] == pytest.approx(2 * (1 + 13 + 78 + 286) / 2 ** 13)
    assert row["method"] == "exact binomial"
    assert describe_mcnemar(out)[0].startswith("[csqa, s, 0] A vs B on the generated answer: no significant "
                                               "difference (on 20 shared items")


def test_mcnemar_chi_square_by_hand():
    from scipy.stats import chi2

    from lib.findings import describe_mcnemar
    from lib.stats import mcnemar_pairs

    out = mcnemar_pairs(paired_items(20, 30, 12, 8))
    row = out.iloc[0]
    stat = (abs(30 - 12) - 1) ** 2 / 42
    assert row["statistic"] == pytest.approx(stat) and row["p"] == pytest.approx(chi2.sf(stat, 1))
    assert describe_mcnemar(out)[0].startswith("[csqa, s, 0] A beats B by 25.7 points on the generated answer (on 70 "
                                               "shared items, A is right where B is wrong 30 times and the reverse 12 "
                                               "times; McNemar p = 0.009, Holm-adjusted p = 0.009)")


def test_mcnemar_pairs_only_shared_items():
    from lib.stats import mcnemar_pairs

    items = paired_items(3, 1, 1, 1)
    items = pd.concat([items, items.iloc[[0]].assign(item_id="only-A")])
    assert mcnemar_pairs(items).iloc[0]["n_pairs"] == 6


# --- OLS with rater fixed effects -------------------------------------------------------------------------

def test_ols_rater_fixed_effects_match_lstsq():
    rng = np.random.default_rng(1)
    n = 240
    ratings = pd.DataFrame({"condition": rng.choice(["CF", "MT", "MT+CF"], n),
                            "rater": rng.choice(["r1", "r2", "r3", "judge:x"], n),
                            "rationale_len": rng.integers(5, 80, n)})
    severity = ratings["rater"].map({"r1": 0.0, "r2": -1.0, "r3": 0.5, "judge:x": 1.0})
    ratings["soundness"] = 3 + (ratings["condition"] == "MT") * 0.6 + severity + 0.01 * ratings["rationale_len"] \
        + rng.normal(0, 0.5, n)
    out = ols_regression(ratings, outcome="soundness", covariates=("rationale_len",), fixed_effects=["rater"])
    raters = sorted(ratings["rater"].unique())
    X = np.column_stack([design(ratings, "CF")] + [(ratings["rater"] == r).to_numpy(float) for r in raters[1:]])
    beta = np.linalg.lstsq(X, ratings["soundness"].to_numpy(float), rcond=None)[0]
    # statsmodels orders terms: intercept, condition dummies, rater dummies, then covariates
    by_term = out.set_index("term")["coef"]
    assert by_term["Intercept"] == pytest.approx(beta[0])
    assert by_term["condition[T.MT]"] == pytest.approx(beta[1])
    assert by_term["condition[T.MT+CF]"] == pytest.approx(beta[2])
    assert by_term["rationale_len"] == pytest.approx(beta[3])
    for i, r in enumerate(raters[1:]):
        assert by_term[f"rater[T.{r}]"] == pytest.approx(beta[4 + i])
    assert by_term["condition[T.MT]"] == pytest.approx(0.6, abs=0.2)
    assert "+ C(rater)" in out.attrs["formula"]


# --- seeds and items: the unit of every test is the test item -------------------------------------------------

def shared_items(seeds=(0,), n: int = 30, rng_seed: int = 5,
                 vary: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items and ratings of three conditions x two students on the same n items of two test sets, once per seed in
    `seeds`; every seed repeats the first one's outcomes exactly, as if training were deterministic, unless `vary`
    (then each later seed flips a random tenth of the answers and moves CEC a little)."""
    rng = np.random.default_rng(rng_seed)
    p_right = {"CF": 0.4, "MT": 0.75, "FT-CoT": 0.55}
    rows = []
    for cond, p in p_right.items():
        for student in ("gpt2", "gpt2-medium"):
            for ts in ("csqa", "arc"):
                for i in range(n):
                    cec = float(rng.uniform(0.5, 0.95))
                    rows.append({"condition": cond, "student": student, "test_set": ts, "item_id": f"{ts}-{i}",
                                 "correct": int(rng.random() < p), "cec": cec if rng.random() > 0.1 else np.nan,
                                 "rationale_len": int(rng.integers(5, 60)), "bleu": cec * 30 + rng.random() * 10,
                                 "rouge_l": cec * 0.5 + rng.random() * 0.2,
                                 "bertscore": cec * 0.9 + rng.random() * 0.05,
                                 "loglik_correct": int(rng.random() < p),
                                 "faithfulness_perturbed": int(rng.random() < 0.3),
                                 "faithfulness_counterfactual": int(rng.random() < 0.4),
                                 "faithfulness_cf_follows": int(rng.random() < 0.2)})
    one = pd.DataFrame(rows)
    rated = one[(one["test_set"] == "csqa") & (one["item_id"].str.split("-").str[1].astype(int) < 10)]
    scores = pd.concat([rated[["condition", "student", "item_id"]].assign(
        rater=rater, **{d: rng.integers(1, 8, len(rated)) + (rated["condition"] == "MT") for d in
                        ("completeness", "contrastiveness", "soundness")}) for rater in ("judge:x", "h1")])
    run = lambda df, s: df["condition"] + "__" + df["student"] + f"__seed{s}"  # noqa: E731
    flip = [rng.random(len(one)) < (0.1 if vary and i else 0.0) for i in range(len(seeds))]
    items = pd.concat([one.assign(seed=s, run=run(one, s), correct=(one["correct"] ^ f).astype(int),
                                  cec=one["cec"] + (0.02 * rng.standard_normal(len(one)) if vary and i else 0.0))
                       for i, (s, f) in enumerate(zip(seeds, flip))], ignore_index=True)
    ratings = pd.concat([scores.assign(run=run(scores, s)) for s in seeds], ignore_index=True)
    return items, ratings.drop(columns=["condition", "student"])


def test_accuracy_interval_resamples_items_with_all_their_seeds():
    from lib.stats import accuracy_table, cluster_bootstrap_ci

    items, _ = shared_items((0,), n=25)
    items = items[(items["test_set"] == "csqa") & (items["student"] == "gpt2")]
    varied = pd.concat([items.assign(seed=s, correct=items["correct"] if s == 0 else 1 - items["correct"])
                        for s in (0, 1)], ignore_index=True)  # the second seed gets every item the other way round
    table = accuracy_table(varied, by=["condition"], n_boot=400).set_index("condition")
    assert table["n_items"].eq(25).all() and table["n_seeds"].eq(2).all() and table["n"].eq(50).all()
    # every item averages 1/2 over its two seeds: resampling items cannot move the mean, the interval is a point
    assert table["accuracy"].eq(0.5).all()
    assert (table["ci_low"] == 0.5).all() and (table["ci_high"] == 0.5).all()
    # by hand: the percentile interval of resampled cluster sums over cluster sizes
    values, clusters = np.array([1, 0, 1, 1, 0, 0, 1, 1.0]), np.array(list("aabbccdd"))
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 4, size=(200, 4))
    sums, sizes = np.array([1, 2, 0, 2.0]), np.full(4, 2.0)
    expected = np.percentile(sums[idx].sum(1) / sizes[idx].sum(1), [2.5, 97.5])
    assert cluster_bootstrap_ci(values, clusters, n_boot=200, seed=7) == pytest.approx(tuple(expected))


def test_ols_clustered_standard_errors_match_hand_crv1():
    from scipy.stats import t as t_dist

    items, _ = shared_items((0,), n=20)
    data = items[items["student"] == "gpt2"].assign(test_item=lambda d: d["test_set"] + "/" + d["item_id"])
    out = ols_regression(data, fixed_effects=["test_set"], cluster="test_item")
    X = np.column_stack([np.ones(len(data)), (data["condition"] == "FT-CoT").to_numpy(float),
                         (data["condition"] == "MT").to_numpy(float), (data["test_set"] == "csqa").to_numpy(float)])
    y = data["correct"].to_numpy(float)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    bread = np.linalg.inv(X.T @ X)
    u = y - X @ beta
    groups = data["test_item"].to_numpy()
    scores = [X[groups == g].T @ u[groups == g] for g in np.unique(groups)]
    meat = sum(np.outer(s, s) for s in scores)
    n, k, g = len(y), X.shape[1], len(np.unique(groups))
    cov = bread @ meat @ bread * g / (g - 1) * (n - 1) / (n - k)
    se = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(out["coef"], beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["se"], se, rtol=1e-8)
    np.testing.assert_allclose(out["p"], 2 * t_dist.sf(np.abs(beta / se), g - 1), rtol=1e-6)
    assert out.attrs["se_type"] == f"clustered by test_item ({g} clusters)"
    with pytest.raises(TooFewObservations, match="at least two clusters"):
        ols_regression(data.assign(test_item="one"), cluster="test_item")


# --- McNemar: Holm within each test set and student ---------------------------------------------------------------

def three_way_pairs(students=("s1",)) -> pd.DataFrame:
    """Conditions A, B, C on 40 shared items: A beats B 12 to 3, C answers exactly like A."""
    a = [1] * 12 + [0] * 3 + [1] * 15 + [0] * 10
    b = [0] * 12 + [1] * 3 + [1] * 15 + [0] * 10
    return pd.DataFrame([{"condition": c, "item_id": f"q{i}", "test_set": "csqa", "student": s, "seed": 0,
                          "correct": v} for s in students for c, vals in (("A", a), ("B", b), ("C", a))
                         for i, v in enumerate(vals)])


def test_mcnemar_holm_adjusts_within_each_test_set_and_student():
    from statsmodels.stats.multitest import multipletests

    from lib.findings import describe_mcnemar
    from lib.stats import mcnemar_pairs

    out = mcnemar_pairs(three_way_pairs(("s1", "s2")))
    raw = 2 * (1 + 15 + 105 + 455) / 2 ** 15  # exact: 3 of 15 discordant pairs
    for _, fam in out.groupby("student"):  # two families of three tests each, adjusted separately
        fam = fam.set_index(["group1", "group2"])
        assert fam.loc[("A", "B"), "p"] == pytest.approx(raw) and fam.loc[("A", "C"), "p"] == 1.0
        assert fam["p_holm"].tolist() == pytest.approx(multipletests(fam["p"], method="holm")[1].tolist())
        assert fam.loc[("A", "B"), "p_holm"] == pytest.approx(3 * raw)
    sentences = describe_mcnemar(out)
    ab = next(s for s in sentences if s.startswith("[csqa, s1, 0] A vs B on the generated answer"))
    assert "no significant difference" in ab and "McNemar p = 0.035, Holm-adjusted p = 0.105" in ab


# --- OLS with a crossed factor (condition x revision) ----------------------------------------------------------

def test_ols_regression_with_a_crossed_factor_matches_lstsq():
    rng = np.random.default_rng(3)
    n = 200
    data = pd.DataFrame({"condition": rng.choice(["CF", "MT", "MT+CF"], n),
                         "rationale_source": rng.choice(["unrevised", "revised"], n)})
    data["y"] = (data["condition"] == "MT") * 0.5 + (data["rationale_source"] == "revised") * 0.2 + rng.normal(0, 1, n)
    out = ols_regression(data, outcome="y", reference="MT", factor="rationale_source", factor_reference="unrevised")
    rev = (data["rationale_source"] == "revised").to_numpy(float)
    dummies = [(data["condition"] == c).to_numpy(float) for c in ("CF", "MT+CF")]
    X = np.column_stack([np.ones(n), *dummies, rev, *(d * rev for d in dummies)])
    beta = np.linalg.lstsq(X, data["y"].to_numpy(float), rcond=None)[0]
    assert out["term"].tolist() == ["Intercept", "condition[T.CF]", "condition[T.MT+CF]", "rationale_source[T.revised]",
                                    "condition[T.CF]:rationale_source[T.revised]",
                                    "condition[T.MT+CF]:rationale_source[T.revised]"]
    np.testing.assert_allclose(out["coef"], beta, rtol=1e-8, atol=1e-10)
    empty = data[~((data["condition"] == "CF") & (data["rationale_source"] == "revised"))]
    with pytest.raises(TooFewObservations, match="CF x revised has none"):
        ols_regression(empty, outcome="y", factor="rationale_source")


# --- paired tests over every reading: the conditions answered the same items --------------------------------------

def discordant_items(seeds=(0,), base: bool = False) -> pd.DataFrame:
    """FT and MT on the same 200 csqa items, once per seed. On the generated answer (correct) they disagree on 10 items,
    5 each way; on the option scoring (loglik_correct) both get 80 right and 100 wrong, FT 2 more and MT 18 more. The
    items are shared, so most right answers coincide: 41% vs 49%. With `base`, BASE (one run, the first seed) answers
    the first 20 items right on both readings."""
    split = {"correct": (90, 5, 5, 100), "loglik_correct": (80, 2, 18, 100)}
    pairs = {r: [(1, 1)] * a + [(1, 0)] * b + [(0, 1)] * c + [(0, 0)] * d for r, (a, b, c, d) in split.items()}
    rows = [{"run": f"{cond}__tiny__seed{seed}", "condition": cond, "student": "tiny", "seed": seed,
             "test_set": "csqa", "item_id": f"q{i}", "rationale_len": 12,
             **{r: pairs[r][i][k] for r in split}} for seed in seeds for k, cond in enumerate(("FT", "MT"))
            for i in range(200)]
    if base:
        rows += [{"run": "BASE__tiny__seed0", "condition": "BASE", "student": "tiny", "seed": seeds[0],
                  "test_set": "csqa", "item_id": f"q{i}", "rationale_len": 0, "correct": int(i < 20),
                  "loglik_correct": int(i < 20)} for i in range(200)]
    return pd.DataFrame(rows)


def test_paired_mcnemar_finds_the_difference_that_tukey_over_items_misses():
    from statsmodels.stats.contingency_tables import mcnemar

    from lib.stats import mcnemar_pairs, over_readings

    items = discordant_items()
    # the old unit: each condition's 200 answers to the same items taken as an independent group
    assert tukey_kramer(items, value="loglik_correct").loc[0, "p_adj"] > 0.05
    paired = over_readings(mcnemar_pairs, items, ["correct", "loglik_correct", "cloze_correct"])
    assert paired["reading"].tolist() == ["correct", "loglik_correct"]  # cloze_correct is absent: not tested
    row = paired.set_index("reading").loc["loglik_correct"]
    assert (row["n_pairs"], row["only1"], row["only2"]) == (200, 2, 18) and row["unit"] == "item"
    assert row["p"] == pytest.approx(mcnemar([[80, 2], [18, 100]], exact=True).pvalue)
    assert row["p_holm"] < 0.01 and row["method"] == "exact binomial"
    assert paired.set_index("reading").loc["correct", "p"] == 1.0  # 5 vs 5


def test_mcnemar_drops_items_a_reading_did_not_score_pairwise():
    from lib.stats import mcnemar_pairs, over_readings

    items = discordant_items().assign(cloze_correct=lambda d: d["correct"].astype(float))
    items.loc[(items["condition"] == "MT") & (items["item_id"].isin([f"q{i}" for i in range(10)])),
              "cloze_correct"] = np.nan  # not scored
    paired = over_readings(mcnemar_pairs, items, ["correct", "cloze_correct"]).set_index("reading")
    assert paired.loc["correct", "n_pairs"] == 200 and paired.loc["cloze_correct", "n_pairs"] == 190


def test_holm_over_the_pairs_of_each_test_set_student_and_reading_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from lib.stats import mcnemar_pairs, over_readings

    items = three_way_pairs(("s1", "s2"))
    rng = np.random.default_rng(0)
    items["loglik_correct"] = np.where(items["condition"] == "B", rng.random(len(items)) < 0.2, items["correct"])
    out = over_readings(mcnemar_pairs, items, ["correct", "loglik_correct"])
    assert len(out) == 2 * 2 * 3  # students x readings x pairs
    for _, fam in out.groupby(["test_set", "student", "reading"]):
        assert fam["p_holm"].tolist() == pytest.approx(multipletests(fam["p"], method="holm")[1].tolist())
    pooled = multipletests(out.loc[out["student"] == "s1", "p"], method="holm")[1]  # one family for both readings
    assert not np.allclose(out.loc[out["student"] == "s1", "p_holm"], pooled)


def test_cochran_q_equals_statsmodels_and_the_hand_formula():
    from statsmodels.stats.contingency_tables import cochrans_q

    from lib.stats import cochran_q, mcnemar_pairs, over_readings

    items = three_way_pairs()
    items.loc[(items["condition"] == "C") & items["item_id"].isin(["q0", "q1", "q2"]), "correct"] = 0
    wide = items.pivot_table(index="item_id", columns="condition", values="correct").astype(int)
    x = wide[["A", "B", "C"]].to_numpy()
    k, col, row_sums = x.shape[1], x.sum(axis=0), x.sum(axis=1)
    q = (k - 1) * (k * (col ** 2).sum() - col.sum() ** 2) / (k * row_sums.sum() - (row_sums ** 2).sum())
    out = cochran_q(items).iloc[0]
    assert out["statistic"] == pytest.approx(q) == pytest.approx(cochrans_q(x).statistic)
    assert out["p"] == pytest.approx(cochrans_q(x).pvalue) and out["df"] == 2 and out["unit"] == "item"
    assert (out["groups"], out["n_items"]) == ("A, B, C", 40)
    # an item not scored under one condition leaves the test (listwise), a condition with no value leaves the table
    items["loglik_correct"] = items["correct"].where(~((items["condition"] == "B") & (items["item_id"] == "q5")))
    items["cloze_correct"] = items["correct"].where(items["condition"] != "C")
    both = over_readings(cochran_q, items, ["loglik_correct", "cloze_correct"]).set_index("reading")
    assert both.loc["loglik_correct", "n_items"] == 39 and both.loc["cloze_correct", "groups"] == "A, B"
    # with two conditions Q is McNemar's chi-square without continuity correction: (b - c)^2 / (b + c)
    two = mcnemar_pairs(items, "cloze_correct").iloc[0]
    assert both.loc["cloze_correct", "statistic"] == pytest.approx((two["only1"] - two["only2"]) ** 2 / 15)
    same = cochran_q(items[items["condition"] != "B"]).iloc[0]  # A and C agree on every item but three
    assert same["discordant"] == 3
    agree = cochran_q(items.assign(correct=1)).iloc[0]
    assert (agree["statistic"], agree["p"], agree["discordant"]) == (0.0, 1.0, 0)


# --- Tukey-Kramer over training runs -------------------------------------------------------------------------------

RUN_SCORES = {"A": [0.50, 0.52, 0.51, 0.49, 0.90], "B": [0.60, 0.62, 0.61, 0.63, 0.59], "C": [0.55, 0.54, 0.56, 0.58]}


def runs_frame(scores: dict[str, list[float]] = RUN_SCORES) -> pd.DataFrame:
    """One row per training run: its condition, seed and accuracy."""
    return pd.DataFrame([{"test_set": "csqa", "student": "tiny", "condition": c, "run": f"{c}__seed{i}", "seed": i,
                          "correct": v} for c, vs in scores.items() for i, v in enumerate(vs)])


def test_iqr_outliers_use_r_quartiles():
    from lib.stats import iqr_outliers

    v = np.array(RUN_SCORES["A"])
    q1, q3 = np.quantile(v, [0.25, 0.75])  # R's quantile(type = 7): 0.50, 0.52
    assert (q1, q3) == pytest.approx((0.50, 0.52))
    assert iqr_outliers(v).tolist() == [False, False, False, False, True]  # 0.90 > 0.52 + 1.5 x 0.02
    assert not iqr_outliers([0.1, 0.9]).any() and not iqr_outliers([0.1, 0.1, 0.9]).any()


def test_tukey_over_runs_removes_outliers_per_cell_and_matches_scipy():
    from lib.stats import mark_outliers, tukey_over_runs

    runs = mark_outliers(runs_frame(), "correct", ["test_set", "student", "condition"])
    assert runs.loc[runs["outlier"], "run"].tolist() == ["A__seed4"]
    out = tukey_over_runs(runs, "correct")
    kept = {"A": RUN_SCORES["A"][:4], "B": RUN_SCORES["B"], "C": RUN_SCORES["C"]}
    ref = tukey_hsd(*kept.values())
    names = list(kept)
    for row in out.itertuples():
        i, j = names.index(row.group1), names.index(row.group2)
        assert row.meandiff == pytest.approx(ref.statistic[j, i])
        assert row.p_adj == pytest.approx(ref.pvalue[i, j], rel=1e-3, abs=1e-6)
        assert (row.n1, row.n2) == (len(kept[row.group1]), len(kept[row.group2]))
    assert out["unit"].eq("run").all() and out.attrs["unit"] == "run" and out.attrs["left_out"] == {}


def test_run_values_are_one_mean_per_training_run():
    from lib.stats import run_values

    items, _ = shared_items((0, 1, 2), n=20, vary=True)
    runs = run_values(items, "correct")
    assert len(runs) == items.groupby(["run", "test_set"]).ngroups and runs["unit"].eq("run").all()
    expected = items.groupby(["test_set", "run"])["correct"].mean()
    assert runs.set_index(["test_set", "run"])["correct"].sort_index().tolist() == pytest.approx(
        expected.sort_index().tolist())
    assert runs["n_items"].eq(20).all()


def test_tukey_over_runs_refuses_one_seed_instead_of_using_items():
    from lib.stats import mark_outliers, run_values, tukey_over_runs

    items, _ = shared_items((0,), n=30)
    one = items[(items["test_set"] == "csqa") & (items["student"] == "gpt2")]
    runs = mark_outliers(run_values(one, "correct"), "correct", ["condition"])
    assert len(runs) == 3  # three conditions, one run each: 90 items, but three observations
    with pytest.raises(TooFewObservations, match="not computed over test items instead"):
        tukey_over_runs(runs, "correct")
    # a condition with a single run (BASE, untrained) is left out and named; the others are compared over runs
    several = runs_frame({"A": [0.5, 0.6, 0.55], "B": [0.7, 0.72, 0.69], "BASE": [0.2]})
    out = tukey_over_runs(several, "correct")
    assert out.attrs["left_out"] == {"BASE": 1} and set(out[["group1", "group2"]].stack()) == {"A", "B"}
