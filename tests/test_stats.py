"""Tests of lib.stats (accuracy table, Tukey-Kramer, OLS) and lib.report (figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import tukey_hsd

from lib.stats import TooFewObservations, accuracy_table, describe_tukey, ols_regression, tukey_kramer

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


def test_describe_tukey_sentences():
    df = pd.DataFrame({"group1": ["CF", "CF"], "group2": ["MT", "FT"], "meandiff": [0.041, -0.012],
                       "p_adj": [0.003, 0.41], "ci_low": [0.0, -0.1], "ci_high": [0.1, 0.1], "reject": [True, False]})
    assert describe_tukey(df) == [
        "MT beats CF by 4.1 points (p = 0.003).",
        "CF vs FT: no significant difference (CF ahead by 1.2 points, p = 0.410).",
    ]
    df.attrs["value"] = "cec"
    df.loc[0, "p_adj"] = 0.0001
    assert describe_tukey(df)[0] == "MT beats CF by 0.041 (p < 0.001)."


# --- OLS -------------------------------------------------------------------------------------------

def design(items: pd.DataFrame, reference: str) -> np.ndarray:
    """Intercept, treatment dummies for every non-reference condition (sorted), then rationale_len."""
    levels = [c for c in sorted(items["condition"].unique()) if c != reference]
    cols = [np.ones(len(items))] + [(items["condition"] == c).to_numpy(float) for c in levels]
    return np.column_stack(cols + [items["rationale_len"].to_numpy(float)])


@pytest.mark.parametrize("reference", [None, "MT"])
def test_ols_matches_lstsq_and_hand_hc3(reference):
    items = synthetic_items()
    out = ols_regression(items, reference=reference)
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
    out = ols_regression(synthetic_items())
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
        ols_regression(items.assign(rationale_len=12))
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


# --- figures ---------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    from matplotlib.figure import Figure

    from lib.report import plot_accuracy, plot_cec, plot_loss_curves

    items = synthetic_items(120)
    losses = pd.DataFrame([{"run": r, "step": s, "loss": 3 / (s + 1) + k, "term": t}
                           for r in ("MT-s0", "CF-s0") for s in range(20)
                           for k, t in enumerate(("answer", "rationale"))])
    for fn, data, name in [(plot_accuracy, items, "acc.png"), (plot_loss_curves, losses, "loss.png"),
                           (plot_cec, items, "cec.png"), (plot_cec, items.assign(cec=np.nan), "no_cec.png")]:
        path = tmp_path / "figs" / name
        fig = fn(data, path=path)
        assert isinstance(fig, Figure)
        data_bytes = path.read_bytes()
        assert data_bytes.startswith(PNG_MAGIC) and len(data_bytes) > 5000
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["acc.png", "cec.png", "loss.png", "no_cec.png"]


def test_plot_without_path_writes_nothing(tmp_path, monkeypatch):
    from lib.report import plot_accuracy

    monkeypatch.chdir(tmp_path)
    fig = plot_accuracy(synthetic_items(60))
    assert fig.axes[0].get_ylabel().startswith("Accuracy")
    assert list(tmp_path.iterdir()) == []
