# %% [markdown]
# # 06 · Statistics: are the differences between conditions real?
#
# **Goals**
# 1. Accuracy and CEC per condition with 95% confidence intervals from a cluster bootstrap over test items, between
#    the floor (BASE, the untrained student) and the ceiling (TEACHER, the teacher's own answers), and paired McNemar
#    tests on the same items (TEACHER against every condition), Holm-adjusted over all pairs of a test set and student.
# 2. Tukey-Kramer HSD between conditions per test set and student (unequal group sizes allowed), as in seed 001.
# 3. Two-way ANOVAs condition × student size and condition × revision (students trained on unrevised or on
#    critique-revised teacher rationales, seed 001's Revised factor), with Levene and Shapiro-Wilk checks, and
#    Kruskal-Wallis with Dunn–Bonferroni as the non-parametric fallback when those checks fail.
# 4. OLS regression of each outcome on condition, revision and their interaction (standard errors clustered by item),
#    and of judge or human ratings on the same terms plus rationale length and rater fixed effects, with stars as in
#    the paper.
# 5. One self-contained report of the run: every table, figure and sentence, with the manifest's provenance.
#
# **The unit is the test item.** Several training seeds answer the same question; their answers are not independent
# observations, so every test works on each item's mean over seeds (and intervals resample whole items). Three seeds
# make each item's value more precise; they do not triple the number of questions. Each section says its unit.
#
# **Conditions, floor and ceiling.** BASE, the untrained student, is a condition like any other: every test compares
# it. TEACHER is the teacher's own answers to the in-distribution questions: it appears in the accuracy table and
# McNemar pairs it with every condition on the items both answered, but it is not a training condition, so
# Tukey-Kramer, the ANOVAs, Kruskal-Wallis and the regressions leave it out (each of those sections says so). When the
# students were trained on both unrevised and revised rationales, a condition is compared per source (`MT:revised`
# beside `MT:unrevised`); with one source, the sections say the revision factor has one level only.
#
# **Reads** `05_evaluation/items.jsonl`, the judge's `05_evaluation/judge_ratings.jsonl` and the human raters'
# `<run>/human_ratings.jsonl` (either may be absent), `04_training/runs.jsonl` and the runs' `losses.jsonl`,
# `03_counterfactuals/acceptance.json`. **Writes** `06_statistics/<analysis>.csv` (`accuracy.csv`, `tukey_<outcome>.csv`,
# `anova_<outcome>.csv`, `kruskal_<outcome>.csv`, `mcnemar.csv` with `p_holm`, `ols_<outcome>.csv`,
# `faithfulness.csv`, ...), `findings.md`, the figures (`accuracy_by_condition.png`, `ood_heatmap.png`, ...) and
# `report.html`.
#
# **Where it lives.** `lib.run_tables` reads the run's tables, `lib.stats` runs the tests on them, `lib.findings` puts
# each result into words (a section per analysis, `findings.md`), `lib.figures` draws the figures and `lib.report`
# writes `report.html` (also `python -m lib.report RUN_DIR`, which compares several runs too).
#
# With few test items or one seed, the tests have little power; when there are too few observations for a test, or an
# input (ratings, BLEU / ROUGE / BERTScore, log-likelihood scores, faithfulness, out-of-distribution sets) is absent,
# the step says so, naming the switch, instead of failing.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/06_statistics/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import figures, findings, report, run_tables, runs, stats

ctx = runs.open_step("06_statistics", params, params_file, run_dir, force)
ctx.out

# %%
# read the per-item results of step 05, with each student's size from step 04
tables = run_tables.load_run_tables(ctx.run_dir)
tables.items.groupby(["test_set", "student_size", "condition", "rationale_source"]).size()

# %%
# run every analysis (a test the data cannot support becomes a note) and write the tables and findings
s = ctx.params.statistics
analysis = findings.analyse(tables, outcomes=s.outcomes, alpha=s.alpha, n_boot=s.n_boot, seed=ctx.params.run.seed,
                            reference=s.reference, conditions=ctx.params.training.conditions)
findings.write_analysis(analysis, ctx.out)

# %% [markdown]
# **Accuracy and McNemar.** An interval from resampling items (each with all its seeds) says how much the accuracy
# would move on another draw of test questions of the same kind. McNemar pairs two conditions on the *same* items:
# only items that one gets right and the other wrong count, which is more sensitive than comparing two accuracies.
# With many pairs some p-values fall below alpha by chance, so each is also Holm-adjusted (`p_holm`) within its test
# set and student, and only the adjusted one is called significant.

# %%
# accuracy and CEC with bootstrap confidence intervals
report.show_sections(analysis, "accuracy")

# %%
# paired McNemar tests between conditions on the same items
report.show_sections(analysis, "mcnemar")

# %%
# does the answer depend on the rationale? answer-change rates under perturbed and counterfactual rationales
report.show_sections(analysis, "faithfulness")

# %% [markdown]
# **Tukey-Kramer, ANOVA and the fallback.** Tukey-Kramer compares every pair of conditions while keeping the chance
# of any false alarm at alpha. The first two-way ANOVA asks whether condition, student size, or their combination
# matter; the second whether condition, revision (`rationale_source`: unrevised or revised teacher rationales), or
# their combination matter, over the conditions trained on both sources (BASE, FT and CFD, trained on one, are left
# out and named). Both assume equal variances (Levene) and normal residuals (Shapiro-Wilk). Right/wrong outcomes rarely
# satisfy the second, so Kruskal-Wallis with Dunn–Bonferroni compares the conditions by ranks instead.

# %%
# Tukey-Kramer HSD per test set and student
report.show_sections(analysis, "tukey")

# %% [markdown]
# ### Under the hood: one Tukey-Kramer pair by hand
#
# For two conditions $i, j$ among $k$ on the same test set: the difference of their mean outcomes over items, divided
# by its standard error from the pooled within-condition variance (MSE, on $N-k$ degrees of freedom), is the
# studentized range statistic $q = |\bar y_i - \bar y_j| / \sqrt{\tfrac{MSE}{2}(1/n_i + 1/n_j)}$; its p-value comes
# from the studentized range distribution with $k$ groups, which is what keeps the family of all pairs at alpha.

# %% tags=["under-the-hood"]
# q and its p-value for one pair by hand, on the per-item means over seeds, against statsmodels through lib.stats
import numpy as np
from scipy.stats import studentized_range

unit = stats.over_seeds(run_tables.compared_conditions(tables.items), ["correct", "cec"])  # as Tukey: no TEACHER
value, first = next((v, g) for v in ("correct", "cec") for _, g in unit.groupby(["test_set", "student"])
                    if g["condition"].nunique() > 1 and g.groupby("condition")[v].std().gt(0).any())  # with spread
groups = {c: g[value].dropna().to_numpy(float) for c, g in first.groupby("condition")}
(a, ya), (b, yb) = list(groups.items())[:2]
k, n = len(groups), sum(len(y) for y in groups.values())
mse = sum(((y - y.mean()) ** 2).sum() for y in groups.values()) / (n - k)
q = abs(yb.mean() - ya.mean()) / np.sqrt(mse / 2 * (1 / len(ya) + 1 / len(yb)))
p = studentized_range.sf(q, k, n - k)
row = stats.tukey_kramer(first, value).query("group1 == @a and group2 == @b").iloc[0]
assert np.isclose(yb.mean() - ya.mean(), row.meandiff) and np.isclose(p, row.p_adj, atol=2e-3), (p, row.p_adj)
{"outcome": value, "pair": f"{a} vs {b}", "q": round(float(q), 3), "p by hand": round(float(p), 4), "p statsmodels": round(float(row.p_adj), 4)}

# %%
# two-way ANOVAs condition x student size and condition x revision, with their assumption checks
report.show_sections(analysis, "anova")

# %%
# Kruskal-Wallis and Dunn-Bonferroni (non-parametric)
report.show_sections(analysis, "kruskal")

# %% [markdown]
# **Regression.** Coefficients of the condition dummies are differences from the reference condition
# (`statistics.reference`, by default the first of `training.conditions`); standard errors are clustered by test item.
# With two rationale sources the model is seed 001's `C(condition) * C(rationale_source)`: the condition dummies on
# unrevised rationales, the `revised` dummy (what revision does to the reference condition) and the interactions (how
# much more it does to another condition), over the conditions trained on both sources.
# Rationale length stays out of the accuracy model: the condition changes how long the rationale is, so holding it
# fixed would hide part of the condition's effect. The ratings model keeps it (as seed 001 does, since raters may
# reward length) with one fixed effect per rater, because raters differ in how strict they are.

# %%
# OLS of outcomes on condition (x revision), and of ratings on the same terms, rationale length and raters
report.show_sections(analysis, "ols")

# %%
# how CEC agrees with BLEU, ROUGE-L and BERTScore
report.show_sections(analysis, "cec_vs_metrics")

# %%
# draw every figure of the report into the step folder
figs = figures.run_figures(tables, ctx.out, n_boot=s.n_boot, seed=ctx.params.run.seed)
list(figs)

# %%
# accuracy by condition
figures.show_figure(figs["accuracy"])

# %%
# accuracy in and out of distribution
figures.show_figure(figs["ood"])

# %%
# CEC against BLEU / ROUGE-L / BERTScore
figures.show_figure(figs["cec_vs_metrics"])

# %%
# rating distributions
figures.show_figure(figs["ratings"])

# %%
# write the run's self-contained report (tables, figures, sentences and provenance)
report.write_run_report(ctx.run_dir, analysis, figs)

# %% [markdown]
# ## Try it
#
# Each exercise reruns part of the quickstart into a copy of its run folder, so the original stays for comparison: `cp
# -r outputs/quickstart outputs/try && .venv/bin/python -m lib.study params/quickstart.yaml --run-dir outputs/try
# --set KEY=VALUE --steps …` (unchanged steps are skipped; the teacher's cache travels with the copy).
# `.venv/bin/python -m lib.report outputs/quickstart outputs/try -o compare.html` puts the two side by side.
#
# 1. `--set "training.seeds=[0,1,2]" --steps 04-06` (three times the training): the report says "mean over 3 seeds".
#    The rows triple, but do the intervals shrink by $\sqrt3$? Why not (METHOD.md §6.1)?
# 2. `--set statistics.reference=MT --steps 06`: the regression coefficients become differences from MT, while the
#    differences between the other conditions stay the same. Which rows of `ols_correct.csv` change, and which do
#    not?
# 3. `--set statistics.n_boot=10000 --steps 06`: how far do the interval ends move from 1000 resamples? Compare that
#    with the width of the interval itself: which of the two uncertainties matters?
