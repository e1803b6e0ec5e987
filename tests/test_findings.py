"""Tests of lib.findings: every analysis of a run as sections (present and absent inputs, too few observations), the
unit of each test (the test item, paired; the training run for Tukey-Kramer), every reading of the answer, the tests
of CEC without the conditions that write no rationale, the regressions' reference, BASE and TEACHER rows and the
revision factor."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from lib.findings import describe_tukey
from tests.test_stats import discordant_items, shared_items, synthetic_items

# --- describe_tukey ---

def test_describe_tukey_sentences():
    df = pd.DataFrame({"group1": ["CF", "CF"], "group2": ["MT", "FT"], "meandiff": [0.041, -0.012],
                       "p_adj": [0.003, 0.41], "ci_low": [0.0, -0.1], "ci_high": [0.1, 0.1], "reject": [True, False]})
    assert describe_tukey(df) == [
        "MT beats CF on the generated answer by 4.1 points (Tukey-Kramer, p = 0.003).",
        "CF vs FT on the generated answer: no significant difference (CF ahead by 1.2 points, Tukey-Kramer, "
        "p = 0.410).",
    ]
    df.attrs["value"] = "cec"
    df.loc[0, "p_adj"] = 0.0001
    assert describe_tukey(df)[0] == "MT beats CF on cec by 0.041 (Tukey-Kramer, p < 0.001)."
    runs = df.assign(n1=[3, 3], n2=[3, 2])
    runs.attrs["value"] = "loglik_correct"
    assert describe_tukey(runs)[0] == ("MT beats CF on the option log-likelihood (summed, lm-eval's acc) by 4.1 "
                                       "points (Tukey-Kramer over 3 and 3 training runs, p < 0.001).")


# --- the analysis of a run: present and absent inputs, too few observations ---

def run_tables(items: pd.DataFrame, ratings: pd.DataFrame | None = None):
    from lib.run_tables import join_ratings, RunTables, with_student_size

    runs = pd.DataFrame({"run": items["run"].unique(), "n_params": 124_000_000})
    items = with_student_size(items, runs)
    return RunTables(items=items, runs=runs, ratings=join_ratings(ratings, items) if ratings is not None else None,
                     losses=None, acceptance=None)


def crossed_items(n: int = 12, seeds=(0, 1, 2), rng_seed: int = 3) -> pd.DataFrame:
    """Three conditions trained on unrevised and revised rationales x two students x two test sets, on the same n
    items, once per training seed, with every optional column of items.jsonl."""
    rng = np.random.default_rng(rng_seed)
    p_right = {"MT": 0.75, "CF": 0.45, "FT-CoT": 0.6}
    rows = []
    students, test_sets = ("gpt2", "gpt2-medium"), ("csqa", "arc_easy")
    for (cond, p), source, student, seed, ts in itertools.product(p_right.items(), ("unrevised", "revised"),
                                                                   students, seeds, test_sets):
        for i in range(n):
            cec = float(rng.random())
            rows.append({"run": f"{cond}-{source}-s{seed}-{student}", "condition": cond, "rationale_source": source,
                         "student": student, "seed": seed, "test_set": ts, "item_id": f"q{i}",
                         "correct": int(rng.random() < p), "cec": cec, "rationale_len": int(rng.integers(5, 60)),
                         **{m: cec * 0.5 + rng.random() * 0.1 for m in ("bleu", "rouge_l", "bertscore")},
                         **{m: int(rng.integers(0, 2)) for m in ("loglik_correct", "faithfulness_perturbed",
                                                                  "faithfulness_counterfactual",
                                                                  "faithfulness_cf_follows")}})
    return pd.DataFrame(rows)


def test_analyse_full_inputs_runs_everything():
    from lib.findings import analyse

    items = crossed_items()
    ratings = pd.DataFrame([{"run": r.run, "item_id": r.item_id, "rater": rater, "completeness": (i + j) % 5 + 1,
                             "contrastiveness": (i * j) % 5 + 1, "soundness": (i + 2 * j) % 5 + 1}
                            for i, r in enumerate(items.drop_duplicates(["run", "item_id"]).itertuples())
                            for j, rater in enumerate(("judge:x", "h1"))])
    tables = run_tables(items, ratings)
    runs = tables.runs.assign(n_params=tables.runs["run"].str.endswith("medium").map({True: 355e6, False: 124e6}))
    tables.items["student_size"] = tables.items["run"].map(runs.set_index("run")["n_params"]).astype(str)
    tables.causal = pd.DataFrame({"condition": "CAUSAL", "student": "gpt2", "seed": 0, "item_id": ["c1", "c2"],
                                  "cec": [0.5, 0.7], "cec_fc": [0.4, 0.6], "cec_bf": [0.6, 0.8]})
    sections = analyse(tables, n_boot=200)
    expected = {"accuracy", "faithfulness", "cochran", "mcnemar", "tukey_runs_correct", "tukey_correct",
                "anova_correct", "anova_revision_correct", "kruskal_correct", "ols_correct", "tukey_runs_cec",
                "tukey_cec", "anova_cec", "anova_revision_cec", "kruskal_cec", "ols_cec", "ols_rating_completeness",
                "ols_rating_contrastiveness", "ols_rating_soundness", "cec_vs_metrics", "causal_explanations"}
    assert set(sections) == expected
    assert all(sections[k].ran for k in expected), {k: s.notes for k, s in sections.items() if not s.ran}
    assert not any("absent" in n for s in sections.values() for n in s.notes)
    assert "rater[T.judge:x]" in sections["ols_rating_soundness"].table["term"].tolist()
    assert set(sections["anova_correct"].table["source"]) == {"condition", "student_size",
                                                               "condition x student_size", "residual"}
    assert any("Spearman" in s for s in sections["cec_vs_metrics"].sentences)
    tests = [k for k in expected if k not in ("accuracy", "faithfulness", "causal_explanations")]
    units = {k: set(sections[k].table["unit"]) for k in tests}
    assert units == {k: {"run"} if k.startswith("tukey") else {"rating"} if "rating" in k else {"item"}
                     for k in tests}
    assert set(sections["mcnemar"].table["reading"]) == {"correct", "loglik_correct"}


def test_analyse_absent_inputs_say_so():
    from lib.findings import analyse

    sections = analyse(run_tables(synthetic_items(120).drop(columns=["cec"])), n_boot=200)
    for key in ("tukey_cec", "anova_cec", "kruskal_cec", "ols_cec", "ols_ratings", "cec_vs_metrics"):
        assert not sections[key].ran
        assert any("absent" in n for n in sections[key].notes), (key, sections[key].notes)
    assert "no ratings in this run" in sections["ols_ratings"].notes[0]
    assert sections["tukey_runs_correct"].ran and not sections["tukey_correct"].ran  # one seed: no Tukey over runs


def test_analyse_one_seed_two_items_gives_notes_not_nans(tmp_path):
    from lib.findings import analyse, write_analysis

    items = pd.DataFrame([{"run": f"{c}-s0", "condition": c, "student": "tiny", "seed": 0, "test_set": "csqa",
                           "item_id": f"q{i}", "correct": 0, "cec": 0.5 + 0.1 * i,
                           "rationale_len": 10 + i} for c in ("CF", "MT") for i in range(2)])
    sections = analyse(run_tables(items), n_boot=200)
    for key in ("anova_correct", "anova_cec", "ols_correct", "tukey_correct", "kruskal_correct"):
        assert not sections[key].ran and sections[key].notes, key
    assert "no variance to explain" in sections["ols_correct"].notes[0]
    assert "not computed over test items instead" in sections["tukey_correct"].notes[0]
    assert any("one training seed" in n for n in sections["accuracy"].notes)
    assert any("collapses to a point" in n for n in sections["accuracy"].notes)
    for section in sections.values():
        if section.ran:
            assert not section.table.drop(columns=[c for c in section.table if "ci" in c or c in ("statistic",)],
                                          errors="ignore").isna().all().any(), section.key
    (tmp_path / "ols_correct.csv").write_text("stale")
    write_analysis(sections, tmp_path)
    assert not (tmp_path / "ols_correct.csv").exists() and (tmp_path / "accuracy.csv").exists()
    assert "Not tested" in (tmp_path / "findings.md").read_text()


def test_causal_section_summarises_explanations_and_says_when_absent():
    from lib.findings import causal_section

    tables = run_tables(synthetic_items(30))
    assert causal_section(tables).table is None and "no CAUSAL run" in causal_section(tables).notes[0]
    tables.causal = pd.DataFrame({"condition": "CAUSAL", "student": ["s1"] * 3 + ["s2"] * 2, "seed": 0,
                                  "item_id": ["c1", "c2", "c3", "c1", "c2"],
                                  "cec": [0.2, 0.4, None, None, None], "cec_fc": [0.1, 0.3, None, None, None],
                                  "cec_bf": [0.3, 0.5, None, None, None]})
    section = causal_section(tables)
    row = section.table.set_index("student").loc["s1"]
    assert (row["n"], row["n_scored"]) == (3, 2) and row["cec"] == pytest.approx(0.3)
    assert section.sentences == ["[s1, seed 0] 2 explanations scored: mean CEC 0.300 (forward coverage 0.200, "
                                 "backward faithfulness 0.400)."]
    assert "none of its 2 explanations" in section.notes[0]


# --- seeds and items: the unit of every test is the test item ---

def tables_of(items: pd.DataFrame, ratings: pd.DataFrame):
    """RunTables with a distinct size per student (so the two-way ANOVA has two levels)."""
    from lib.run_tables import join_ratings, RunTables, with_student_size

    runs = pd.DataFrame({"run": items["run"].unique()})
    runs["n_params"] = np.where(runs["run"].str.contains("medium"), 355e6, 124e6)
    items = with_student_size(items, runs)
    return RunTables(items=items, runs=runs, ratings=join_ratings(ratings, items), losses=None, acceptance=None)


def _not_below(new: pd.Series, old: pd.Series) -> bool:
    """Every value of `new` at least the matching one of `old` (both missing counts as equal)."""
    return bool(((new >= old - 1e-12) | (new.isna() & old.isna())).all())


def test_three_identical_seeds_do_not_narrow_any_ci_or_lower_any_p():
    from lib.findings import analyse

    one = analyse(tables_of(*shared_items((0,))), n_boot=300)
    three = analyse(tables_of(*shared_items((0, 1, 2))), n_boot=300)
    assert set(one) == set(three)
    compared = 0
    for key, a in one.items():
        b = three[key]
        assert a.ran == b.ran, key
        if not a.ran:
            continue
        keys = [c for c in ("probe", "test_set", "student", "condition", "group1", "group2", "source", "term", "metric",
                            "reading") if c in a.table.columns]
        merged = a.table.merge(b.table, on=keys, suffixes=("_1", "_3"))
        assert len(merged) >= len(a.table), key
        for col in [c for c in a.table.columns if c == "p" or c.startswith("p_") or c.endswith("_p")]:
            assert _not_below(merged[f"{col}_3"], merged[f"{col}_1"]), (key, col)
            compared += 1
        for low in [c for c in a.table.columns if c.endswith("ci_low")]:
            high = low.replace("ci_low", "ci_high")
            assert _not_below(merged[f"{high}_3"] - merged[f"{low}_3"], merged[f"{high}_1"] - merged[f"{low}_1"]), \
                (key, low)
            compared += 1
        if "se" in a.table.columns:
            assert _not_below(merged["se_3"], merged["se_1"]), key
    assert compared > 20
    for key in ("accuracy", "anova_cec", "kruskal_correct", "ols_correct", "cec_vs_metrics"):
        assert "mean over 3 seeds" in three[key].explanation and "one seed" in one[key].explanation, key
    for key in ("mcnemar", "cochran"):
        assert "Unit: test item, paired within one seed" in three[key].explanation
    assert "Unit: training run (3 seeds per condition)" in three["tukey_correct"].explanation
    assert "Unit: training run (one seed per condition, so Tukey-Kramer over runs cannot be computed)" in \
        one["tukey_correct"].explanation
    assert all("Unit:" in s.explanation for s in three.values())


# --- the regressions' reference condition and covariates ---

def test_reference_param_sets_the_regression_baseline_and_the_report_says_so():
    from lib.findings import analyse
    from lib.params import StatisticsParams

    assert StatisticsParams().reference is None and StatisticsParams(reference="MT").reference == "MT"
    items, ratings = shared_items((0,), n=20)
    tables = tables_of(items, ratings)
    listed = ["MT", "FT-CoT", "CF"]
    ols = analyse(tables, n_boot=100, conditions=listed)["ols_correct"]
    assert ols.table.attrs["reference"] == "MT"
    assert ols.sentences[0] == "Reference condition: MT (the first condition listed in training.conditions)."
    ols = analyse(tables, n_boot=100, reference="FT-CoT", conditions=listed)["ols_correct"]
    assert ols.table.attrs["reference"] == "FT-CoT" and "condition[T.MT]" in ols.table["term"].tolist()
    assert ols.sentences[0] == "Reference condition: FT-CoT (statistics.reference)."
    assert any(s.startswith("MT vs FT-CoT:") for s in ols.sentences)
    with pytest.raises(ValueError, match=r"statistics\.reference: 'XX' is not one of training\.conditions "
                                         r"\(MT, FT-CoT, CF\)"):
        analyse(tables, reference="XX", conditions=listed)
    with pytest.raises(ValueError, match=r"statistics\.reference: CAUSAL students answer no test questions"):
        analyse(tables, reference="CAUSAL", conditions=[*listed, "CAUSAL"])


def test_a_reference_without_values_falls_back_to_the_next_listed_condition():
    from lib.findings import analyse

    items, ratings = shared_items((0,), n=20)
    items.loc[items["condition"] == "CF", "cec"] = np.nan  # e.g. FT: no rationale, so no CEC
    sections = analyse(tables_of(items, ratings), n_boot=100, reference="CF", conditions=["CF", "MT", "FT-CoT"])
    assert sections["ols_correct"].table.attrs["reference"] == "CF"
    assert sections["ols_cec"].table.attrs["reference"] == "MT"
    assert sections["ols_cec"].sentences[0] == ("Reference condition: MT (statistics.reference CF has no data here, "
                                                "so the first condition listed in training.conditions that has).")


def test_rationale_length_is_a_covariate_of_the_ratings_model_only():
    from lib.findings import analyse

    sections = analyse(tables_of(*shared_items((0,), n=20)), n_boot=100)
    assert "rationale_len" not in sections["ols_correct"].table["term"].tolist()
    assert "post-treatment" in sections["ols_correct"].explanation
    rating = sections["ols_rating_soundness"]
    assert "rationale_len" in rating.table["term"].tolist() and "rater[T.judge:x]" in rating.table["term"].tolist()
    assert rating.sentences[0] == "Ratings: 60 by the judge (judge:x), 60 by 1 human rater."


def test_accuracy_section_headlines_the_per_character_loglik_accuracy():
    from lib.findings import accuracy_section

    items = synthetic_items(120)
    items["loglik_correct"] = 0  # the summed pick of a letter-biased model
    items["loglik_norm_correct"] = (np.arange(len(items)) % 2).astype(float)
    section = accuracy_section(run_tables(items), n_boot=200)
    assert {"loglik_norm_accuracy", "loglik_accuracy"} <= set(section.table.columns)
    assert section.table["loglik_norm_accuracy"].gt(0).all() and (section.table["loglik_accuracy"] == 0).all()
    assert all("log-likelihood accuracy per character" in s for s in section.sentences)


def test_accuracy_section_shows_the_standard_readings_the_parse_rate_and_base_at_its_best():
    """Every reading of the answer is in the table; BASE's best one is named as the bar to clear."""
    from lib.findings import accuracy_section

    items = synthetic_items(120)
    items.loc[items.index[:40], "condition"] = "BASE"
    items["unparseable"] = (np.arange(len(items)) % 4 == 0).astype(int)  # 75% parsed
    items["cloze_correct"] = 0.0
    items["cloze_norm_correct"] = np.where(items["condition"] == "BASE", 1.0, 0.0)  # BASE is best read this way
    items["lettered_correct"] = 0.0
    section = accuracy_section(run_tables(items), n_boot=200)
    assert {"cloze_accuracy", "cloze_norm_accuracy", "lettered_accuracy", "parse_rate"} <= set(section.table.columns)
    parsed = 1 - items.groupby(["test_set", "condition"])["unparseable"].mean()
    got = section.table.groupby(["test_set", "condition"])["parse_rate"].first()
    assert np.allclose(got.sort_index(), parsed.sort_index())
    assert any("BASE at its best reading: 100.0% (cloze norm accuracy)" in line for line in section.sentences)
    assert any("lm-eval cloze reading per character" in line for line in section.sentences)


# --- BASE and TEACHER rows, the revision factor ---

def with_teacher(items: pd.DataFrame, rng_seed: int = 9) -> pd.DataFrame:
    """The items plus TEACHER rows: the teacher's answers to every csqa item (its own student name, seed 0)."""
    rng = np.random.default_rng(rng_seed)
    ids = items.loc[items["test_set"] == "csqa", "item_id"].drop_duplicates()
    teacher = pd.DataFrame({"run": "TEACHER__unrevised__teacher-lm__seed0", "condition": "TEACHER",
                            "student": "teacher-lm", "seed": 0, "test_set": "csqa", "item_id": ids,
                            "correct": (rng.random(len(ids)) < 0.9).astype(int), "cec": np.nan, "rationale_len": 30})
    return pd.concat([items, teacher], ignore_index=True)


def test_teacher_is_in_the_accuracy_table_and_mcnemar_but_not_in_the_tests_between_conditions():
    from lib.findings import analyse

    items, ratings = shared_items((0,), n=20)
    plain, framed = analyse(tables_of(items, ratings), n_boot=100), analyse(tables_of(with_teacher(items), ratings),
                                                                            n_boot=100)
    teacher = with_teacher(items).query("condition == 'TEACHER'")
    acc = framed["accuracy"].table.set_index(["test_set", "student", "condition"])
    assert acc.loc[("csqa", "teacher-lm", "TEACHER"), "accuracy"] == pytest.approx(teacher["correct"].mean())
    assert ("arc", "teacher-lm", "TEACHER") not in acc.index  # the in-distribution set only
    mcn = framed["mcnemar"].table.query("reading == 'correct'")
    vs_teacher = mcn[(mcn["group1"] == "TEACHER") | (mcn["group2"] == "TEACHER")]
    assert len(vs_teacher) == 2 * 3 and set(vs_teacher["student"]) == {"gpt2", "gpt2-medium"}  # every condition
    row = vs_teacher.set_index(["student", "group1"]).loc[("gpt2", "MT")]
    mt = items.query("condition == 'MT' and student == 'gpt2' and test_set == 'csqa'").set_index("item_id")["correct"]
    right = teacher.set_index("item_id")["correct"]
    assert row["n_pairs"] == 20 and row["only2"] == int(((right == 1) & (mt == 0)).sum())
    assert "TEACHER" in framed["mcnemar"].explanation
    for key in ("cochran", "tukey_runs_correct", "anova_correct", "kruskal_correct", "ols_correct", "tukey_runs_cec",
                "ols_cec"):
        pd.testing.assert_frame_equal(framed[key].table, plain[key].table)  # TEACHER changes none of them
    for key in ("cochran", "tukey_correct", "anova_correct", "kruskal_correct", "ols_correct", "tukey_cec", "ols_cec"):
        assert "TEACHER (the teacher's own answers) is left out" in framed[key].explanation, key
        assert "TEACHER" not in plain[key].explanation


def revision_items(n: int = 60, rng_seed: int = 4) -> pd.DataFrame:
    """One student on one test set: MT and CF trained on unrevised and revised rationales, BASE (unrevised only)."""
    rng = np.random.default_rng(rng_seed)
    p_right = {("MT", "unrevised"): 0.7, ("MT", "revised"): 0.5, ("CF", "unrevised"): 0.4, ("CF", "revised"): 0.45,
               ("BASE", "unrevised"): 0.2}
    return pd.DataFrame([{"run": f"{c}__{s}__tiny__seed0", "condition": c, "rationale_source": s, "student": "tiny",
                          "seed": 0, "test_set": "csqa", "item_id": f"q{i}", "correct": int(rng.random() < p),
                          "cec": float(rng.uniform(0.4, 0.9)), "rationale_len": int(rng.integers(5, 40))}
                         for (c, s), p in p_right.items() for i in range(n)])


def test_with_arms_names_a_condition_per_source_only_when_it_has_two():
    from lib.run_tables import with_arms

    arms = with_arms(revision_items(3))
    assert sorted(arms["condition"].unique()) == ["BASE", "CF:revised", "CF:unrevised", "MT:revised", "MT:unrevised"]
    one = revision_items(3).query("rationale_source == 'unrevised'")
    assert with_arms(one).equals(one)


def test_revision_factor_two_way_anova_and_interaction_regression():
    from lib.findings import analyse
    from lib.run_tables import join_ratings
    from lib.stats import two_way_anova

    items = revision_items()
    ratings = items[["run", "item_id"]].assign(rater="judge:x", completeness=np.arange(len(items)) % 7 + 1,
                                               contrastiveness=(np.arange(len(items)) * 3) % 7 + 1,
                                               soundness=(np.arange(len(items)) * 5) % 7 + 1)
    tables = tables_of(items, ratings)
    assert set(join_ratings(ratings, tables.items)["rationale_source"]) == {"unrevised", "revised"}
    sections = analyse(tables, n_boot=100, conditions=["CF", "MT", "BASE"])
    crossed = items[items["condition"] != "BASE"]
    anova = sections["anova_revision_correct"]
    assert anova.ran and set(anova.table["source"]) == {"condition", "rationale_source",
                                                         "condition x rationale_source", "residual"}
    expected = two_way_anova(crossed, b="rationale_source")
    np.testing.assert_allclose(anova.table["F"].to_numpy(dtype=float), expected["F"].to_numpy(dtype=float))
    assert any("left out of the condition x revision design: BASE" in n for n in anova.notes)
    # saturated 2 x 2 (one student, one test set): the coefficients are differences of the cell means
    cell = crossed.groupby(["condition", "rationale_source"])["correct"].mean()
    ols = sections["ols_correct"].table.set_index("term")["coef"]
    assert ols["Intercept"] == pytest.approx(cell[("CF", "unrevised")])
    assert ols["condition[T.MT]"] == pytest.approx(cell[("MT", "unrevised")] - cell[("CF", "unrevised")])
    assert ols["rationale_source[T.revised]"] == pytest.approx(cell[("CF", "revised")] - cell[("CF", "unrevised")])
    assert ols["condition[T.MT]:rationale_source[T.revised]"] == pytest.approx(
        cell[("MT", "revised")] - cell[("MT", "unrevised")] - cell[("CF", "revised")] + cell[("CF", "unrevised")])
    assert "* C(rationale_source, reference='unrevised')" in sections["ols_correct"].table.attrs["formula"]
    assert any(s.startswith("MT x revised (how much more revised rationales change MT than CF)")
               for s in sections["ols_correct"].sentences)
    assert "condition[T.MT]:rationale_source[T.revised]" in sections["ols_rating_soundness"].table["term"].tolist()
    groups = set(sections["mcnemar"].table[["group1", "group2"]].stack())
    assert groups == {"BASE", "CF:revised", "CF:unrevised", "MT:revised", "MT:unrevised"}  # BASE takes part
    assert sections["cochran"].table["groups"].tolist() == ["BASE, CF:revised, CF:unrevised, MT:revised, MT:unrevised"]
    assert "MT:revised" in set(sections["accuracy"].table["condition"])


def test_one_rationale_source_gives_the_models_of_before_and_says_so():
    from lib.findings import analyse

    items = revision_items().query("rationale_source == 'unrevised'")
    sections = analyse(tables_of(items, items[["run", "item_id"]].assign(rater="h1", soundness=3)), n_boot=100)
    assert not sections["anova_revision_correct"].ran
    assert "rationale_source has one level only (unrevised)" in sections["anova_revision_correct"].notes[0]
    ols = sections["ols_correct"]
    assert ols.ran and not ols.table["term"].str.contains("rationale_source").any()
    assert any("one level only" in n for n in ols.notes)
    assert set(sections["accuracy"].table["condition"]) == {"BASE", "CF", "MT"}


# --- the unit of each test: paired items for the conditions, training runs for Tukey-Kramer ---

def test_paired_sections_find_what_tukey_over_items_missed_and_name_the_reading():
    from lib.findings import analyse
    from lib.stats import tukey_kramer

    items = discordant_items(seeds=(0, 1, 2), base=True)
    assert tukey_kramer(items.query("seed == 0 and condition != 'BASE'"), "loglik_correct").loc[0, "p_adj"] > 0.05
    sections = analyse(run_tables(items), outcomes=["correct", "loglik_correct"], n_boot=100)
    mcn = sections["mcnemar"].table
    assert set(mcn["reading"]) == {"correct", "loglik_correct"} and mcn["unit"].eq("item").all()
    ft_mt = mcn.query("reading == 'loglik_correct' and group1 == 'FT' and group2 == 'MT'")
    assert len(ft_mt) == 3 and (ft_mt["p_holm"] < 0.01).all()  # one test per seed, each significant after Holm
    assert "[csqa, tiny, 1] MT beats FT by 8.0 points on the option log-likelihood (summed, lm-eval's acc) (on 200 " \
           "shared items" in " ".join(sections["mcnemar"].sentences)
    # BASE, one untrained run, is paired under every seed; the sentence names the reading and the test
    assert len(mcn.query("reading == 'correct' and group1 == 'BASE' and group2 == 'MT'")) == 3
    assert sections["mcnemar"].sentences[0] == ("[csqa, tiny] Above BASE on the generated answer (paired McNemar, "
                                                "Holm-adjusted p < 0.05): FT (3 of 3 seeds), MT (3 of 3 seeds).")
    cochran = sections["cochran"].table.query("reading == 'loglik_correct'")
    assert cochran["groups"].eq("BASE, FT, MT").all() and (cochran["p"] < 0.001).all()
    assert any(s.startswith("[csqa, tiny, 0] Cochran's Q over BASE, FT, MT on the option log-likelihood")
               for s in sections["cochran"].sentences)


def test_tukey_is_over_training_runs_and_refuses_one_seed_instead_of_using_items():
    from lib.findings import analyse
    from lib.stats import mark_outliers, run_values, tukey_over_runs

    one = analyse(run_tables(discordant_items()), outcomes=["loglik_correct"], n_boot=100)
    assert not one["tukey_loglik_correct"].ran  # two groups of 200 items, but one run each
    assert "not computed over test items instead" in one["tukey_loglik_correct"].notes[0]
    assert one["tukey_runs_loglik_correct"].table["run"].tolist() == ["FT__tiny__seed0", "MT__tiny__seed0"]
    items, ratings = shared_items((0, 1, 2), n=30, vary=True)
    items = pd.concat([items, items.query("condition == 'CF' and seed == 0").assign(condition="BASE", rationale_len=0,
                                                                                     run=lambda d: "BASE" + d["run"])])
    three = analyse(tables_of(items, ratings), n_boot=100)["tukey_correct"]
    runs = run_values(items[items["test_set"] == "csqa"], "correct").query("student == 'gpt2'")
    expected = tukey_over_runs(mark_outliers(runs, "correct", ["condition"]), "correct")
    got = three.table.query("test_set == 'csqa' and student == 'gpt2'").reset_index(drop=True)
    np.testing.assert_allclose(got["p_adj"], expected["p_adj"])
    np.testing.assert_allclose(got["meandiff"], expected["meandiff"])
    assert got["unit"].eq("run").all() and set(got["n1"]) == {3}
    assert "BASE" not in set(got[["group1", "group2"]].stack())
    assert any("left out with a single run (untrained, or one seed): BASE" in n for n in three.notes)
    assert any("Tukey-Kramer over 3 and 3 training runs" in s for s in three.sentences)


def no_rationale_items() -> pd.DataFrame:
    """shared_items over three seeds plus FT, which writes no rationale: an empty rationale and CEC 0 on every item."""
    items, _ = shared_items((0, 1, 2), n=30, vary=True)
    items["rationale"] = "because"
    ft = items.query("condition == 'CF'").assign(condition="FT", rationale="", rationale_len=0, cec=0.0,
                                                 run=lambda d: d["run"].str.replace("CF", "FT"))
    return pd.concat([items, ft], ignore_index=True)


def test_the_tests_of_cec_leave_out_the_condition_that_writes_no_rationale():
    from lib.findings import analyse
    from lib.run_tables import silent_conditions

    items = no_rationale_items()
    assert silent_conditions(items, "cec") == ["FT"]
    assert silent_conditions(items.drop(columns="rationale"), "cec") == ["FT"]  # rationale_len 0 on every item
    assert silent_conditions(items.assign(cec=np.where(items["condition"] == "MT", np.nan, items["cec"])),
                             "cec") == ["FT", "MT"]  # no CEC at all
    _, ratings = shared_items((0, 1, 2), n=30, vary=True)
    sections = analyse(tables_of(items, ratings), n_boot=100)
    for key in ("tukey_cec", "tukey_runs_cec", "anova_cec", "kruskal_cec", "cec_vs_metrics"):
        table = sections[key].table
        named = set(table[["group1", "group2"]].stack()) if "group1" in table else set(table.get("condition", []))
        assert "FT" not in named, key
        assert any("FT writes no rationale" in n for n in sections[key].notes), key
    assert set(sections["tukey_cec"].table[["group1", "group2"]].stack()) == {"CF", "FT-CoT", "MT"}
    assert not any(t.startswith("condition[T.FT]") for t in sections["ols_cec"].table["term"])
    assert "FT" in set(sections["tukey_correct"].table[["group1", "group2"]].stack())  # the answer is still tested
