# %% [markdown]
# # 06 · Statistics: are the differences between conditions real?
#
# **Goals**
# 1. Accuracy and CEC per condition with 95% confidence intervals from a cluster bootstrap over test items, between
#    the floor (BASE, the untrained student) and the ceiling (TEACHER, the teacher's own answers).
# 2. Paired tests on the same items, for every reading of the answer (the generated answer `correct`, the option
#    scoring `loglik_correct` / `loglik_norm_correct`, lm-evaluation-harness's `cloze_correct`, `cloze_norm_correct`
#    and `lettered_correct` where the run has them): Cochran's Q over all conditions at once, then McNemar between
#    every pair, Holm-adjusted over the pairs of a test set, student and reading.
# 3. Tukey-Kramer HSD between conditions with the training run as its unit, as Hendriks et al. run it: one accuracy
#    per run, 1.5 IQR outliers removed per cell. With one seed per condition it cannot be computed, and says so.
# 4. Two-way ANOVAs condition × student size and condition × revision (students trained on unrevised or on
#    critique-revised teacher rationales, seed 001's Revised factor), with Levene and Shapiro-Wilk checks, and
#    Kruskal-Wallis with Dunn–Bonferroni as the non-parametric fallback when those checks fail; OLS regressions of
#    each outcome and of the judge's or human ratings on condition (× revision), standard errors clustered by item.
# 5. One self-contained report of the run: every table, figure and sentence, with the manifest's provenance.
#
# **Every test names its unit** (the `unit` column of its table, and its section in the report). Every condition
# answers the *same* test items, so a condition's 500 answers are not an independent group of 500: a hard question is
# hard for every condition. Differences between conditions on items are therefore tested *paired*, item by item
# (McNemar, Cochran's Q), within one training seed. Tukey-Kramer compares independent groups, so its unit is the
# training run (the seeds are independent draws of training); it is never run over items instead. Several seeds of one
# item are not independent either: intervals resample whole items, and the ANOVAs and regressions use each item's mean
# over seeds. Three seeds make each item's value more precise; they do not triple the number of questions.
#
# **Conditions, floor and ceiling.** BASE, the untrained student, is a condition like any other; it has one run per
# student (it depends on no training seed), so the paired tests pair it under every seed, and Tukey-Kramer over runs
# leaves it out. TEACHER is the teacher's own answers to the in-distribution questions: it appears in the accuracy
# table and McNemar pairs it with every condition on the items both answered, but it is not a training condition, so
# Cochran's Q, Tukey-Kramer, the ANOVAs, Kruskal-Wallis and the regressions leave it out (each section says so). A
# condition that writes no rationale (FT, BASE) has no CEC to compare: the tests of CEC leave it out and name it. When
# the students were trained on both unrevised and revised rationales, a condition is compared per source
# (`MT:revised` beside `MT:unrevised`); with one source, the sections say the revision factor has one level only.
#
# **Reads** `05_evaluation/items.jsonl`, the judge's `05_evaluation/judge_ratings.jsonl` and the human raters'
# `<run>/human_ratings.jsonl` (either may be absent), `04_training/runs.jsonl` and the runs' `losses.jsonl`,
# `03_counterfactuals/acceptance.json`. **Writes** `06_statistics/<analysis>.csv` (`accuracy.csv`, `cochran.csv` and
# `mcnemar.csv` with a `reading` column and `p_holm`, `tukey_runs_<outcome>.csv` (one value per run, `outlier`),
# `tukey_<outcome>.csv`, `anova_<outcome>.csv`, `kruskal_<outcome>.csv`, `ols_<outcome>.csv`, `faithfulness.csv`,
# ...), `findings.md`, the figures (`accuracy_by_condition.png`, `ood_heatmap.png`, ...) and `report.html`.
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
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here; this step writes 06_statistics/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import figures, findings, report, run_tables, runs

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
# **Accuracy, Cochran's Q and McNemar.** An interval from resampling items (each with all its seeds) says how much the
# accuracy would move on another draw of test questions of the same kind. The paired tests use the fact that every
# condition answered the same items: an item both conditions get right, or both get wrong, says nothing about which is
# better, so only the items they disagree on count. Cochran's Q asks first whether the share right is the same for
# all conditions; McNemar then compares each pair: of the $b + c$ items where exactly one of the two is right, does
# each win about half? That is far more sensitive than comparing two accuracies as if they came from different
# questions. With many pairs some p-values fall below alpha by chance, so each is Holm-adjusted (`p_holm`) over the
# pairs of its test set, student and reading, and only the adjusted one is called significant. Each reading of the
# answer is its own family: the generated answer and the option scoring measure different things.

# %%
# accuracy and CEC with bootstrap confidence intervals
report.show_sections(analysis, "accuracy")

# %%
# Cochran's Q over all conditions at once, per test set, student, seed and reading
report.show_sections(analysis, "cochran")

# %%
# paired McNemar tests between every pair of conditions on the same items, for every reading
report.show_sections(analysis, "mcnemar")

# %% [markdown]
# ### Under the hood: one McNemar test by hand
#
# For the pair with the most disagreements: $b$ = items the first condition got right and the second wrong, $c$ =
# the reverse. If the two are equally good, each of those $b + c$ items is a fair coin. Below 25 such items the
# exact test doubles the binomial tail of the rarer kind, $p = \min(1, 2\,P[\mathrm{Bin}(b+c, \tfrac12) \le
# \min(b,c)])$; above, $\chi^2 = (|b-c|-1)^2/(b+c)$ on one degree of freedom. Then Holm's adjustment of that pair's
# family: sort the $m$ p-values, multiply the $j$-th smallest by $m - j + 1$, and carry the largest so far forward.

# %% tags=["under-the-hood"]
# McNemar's p from the discordant counts b and c, and Holm over its family, against lib.stats and statsmodels
import numpy as np
from scipy.stats import binom, chi2
from statsmodels.stats.contingency_tables import mcnemar

pairs = analysis["mcnemar"].table  # one row per pair of conditions, test set, student, seed and reading
row = pairs.loc[(pairs["only1"] + pairs["only2"]).where(pairs["n_pairs"] > 0).idxmax()]  # most discordant items
b, c = int(row["only1"]), int(row["only2"])
exact = b + c < 25
p = min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)) if exact else chi2.sf((abs(b - c) - 1) ** 2 / (b + c), df=1)
p_sm = mcnemar([[row["both_right"], b], [c, row["both_wrong"]]], exact=exact, correction=True).pvalue
family = pairs[pairs[["test_set", "student", "reading"]].eq(row[["test_set", "student", "reading"]]).all(axis=1)]
p_sorted = np.sort(family["p"].dropna().to_numpy())
holm = np.minimum(1, np.maximum.accumulate((len(p_sorted) - np.arange(len(p_sorted))) * p_sorted))
assert np.isclose(p, row["p"]) and np.isclose(p, p_sm), (p, row["p"], p_sm)
assert np.allclose(holm, np.sort(family["p_holm"].dropna().to_numpy()))
{"pair": f"{row['group1']} vs {row['group2']} ({row['reading']})", "b": b, "c": c, "p by hand": round(float(p), 4),
 "p statsmodels": round(float(p_sm), 4), "Holm-adjusted": round(float(row["p_holm"]), 4), "family": len(p_sorted)}

# %%
# does the answer depend on the rationale? answer-change rates under perturbed and counterfactual rationales
report.show_sections(analysis, "faithfulness")

# %% [markdown]
# **Tukey-Kramer over training runs.** Tukey-Kramer compares every pair of conditions while keeping the chance of any
# false alarm at alpha, but it assumes independent groups. Training runs are independent (each seed trains anew), so
# its unit is the run: each run's accuracy on a test set is one observation, and a run outside 1.5 IQR of its
# condition's runs is dropped first, as in Hendriks et al.'s R scripts. With one seed there is one observation per
# condition and no spread between runs to test against: the section says it cannot be computed. It does not fall back
# to items, which would treat the same questions answered by two conditions as different questions.

# %%
# one value per training run (the unit of Tukey-Kramer), and Tukey-Kramer HSD over runs per test set and student
report.show_sections(analysis, "tukey")

# %% [markdown]
# **ANOVA and the fallback.** The first two-way ANOVA asks whether condition, student size, or their combination
# matter; the second whether condition, revision (`rationale_source`: unrevised or revised teacher rationales), or
# their combination matter, over the conditions trained on both sources (BASE, FT and CFD, trained on one, are left
# out and named). Both assume equal variances (Levene) and normal residuals (Shapiro-Wilk). Right/wrong outcomes rarely
# satisfy the second, so Kruskal-Wallis with Dunn–Bonferroni compares the conditions by ranks instead. These treat a
# condition's items as one group; for differences between conditions, the paired tests above are the sharper reading.

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
# 1. `--set "training.seeds=[0,1,2]" --steps 04-06` (three times the training): Tukey-Kramer now runs, over three
#    runs per condition (`tukey_runs_correct.csv` lists them, with any `outlier`). Is a pair McNemar calls
#    significant in every seed also significant over runs? Why can three runs per condition say less than 20 paired
#    items (METHOD.md §6.1)?
# 2. `--set statistics.reference=MT --steps 06`: the regression coefficients become differences from MT, while the
#    differences between the other conditions stay the same. Which rows of `ols_correct.csv` change, and which do
#    not?
# 3. In `mcnemar.csv`, compare the `reading` families: does a pair differ on the option scoring (`loglik_correct`)
#    but not on the generated answer (`correct`)? Count the discordant items `only1` and `only2` of that pair in
#    both readings: what does the student know that it does not write?
