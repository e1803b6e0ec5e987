# %% [markdown]
# # 06 · Statistics: are the differences between conditions real?
#
# **Goals**
# 1. Accuracy and CEC per condition with bootstrap 95% confidence intervals, and paired McNemar tests on the same items.
# 2. Tukey-Kramer HSD between conditions per test set and student (unequal group sizes allowed), as in seed 001.
# 3. Two-way ANOVA condition × student size, with Levene and Shapiro-Wilk checks, and Kruskal-Wallis with
#    Dunn–Bonferroni as the non-parametric fallback when those checks fail.
# 4. OLS regression of each outcome, and of judge or human ratings, on condition dummies plus rationale length
#    (rater fixed effects when there are several raters), with robust standard errors and stars as in the paper.
# 5. One self-contained report of the run: every table, figure and sentence, with the manifest's provenance.
#
# **Reads** `05_evaluation/items.jsonl` (and `ratings.jsonl` when present), `04_training/runs.jsonl` and `losses.jsonl`,
# `03_counterfactuals/acceptance.json`. **Writes** `06_statistics/<analysis>.csv` (`accuracy.csv`, `tukey_<outcome>.csv`,
# `anova_<outcome>.csv`, `kruskal_<outcome>.csv`, `mcnemar.csv`, `ols_<outcome>.csv`, ...), `findings.md`, the figures
# (`accuracy_by_condition.png`, `ood_heatmap.png`, ...) and `report.html`.
#
# With few test items or one seed, the tests have little power; when there are too few observations for a test, or an
# input (ratings, BLEU / ROUGE / BERTScore, out-of-distribution sets) is absent, the step says so instead of failing.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/06_statistics/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import report, runs, stats

ctx = runs.open_step("06_statistics", params, params_file, run_dir, force)
ctx.out

# %%
# read the per-item results of step 05, with each student's size from step 04
tables = stats.load_run_tables(ctx.run_dir)
tables.items.groupby(["test_set", "student_size", "condition"]).size()

# %%
# run every analysis (a test the data cannot support becomes a note) and write the tables and findings
s = ctx.params.statistics
analysis = stats.analyse(tables, outcomes=s.outcomes, alpha=s.alpha, n_boot=s.n_boot, seed=ctx.params.run.seed)
stats.write_analysis(analysis, ctx.out)

# %% [markdown]
# **Accuracy and McNemar.** An interval from resampling items says how much the accuracy would move on another draw
# of test questions of the same kind. McNemar pairs two conditions on the *same* items: only items that one gets
# right and the other wrong count, which is more sensitive than comparing two accuracies.

# %%
# accuracy and CEC with bootstrap confidence intervals
report.show_sections(analysis, "accuracy")

# %%
# paired McNemar tests between conditions on the same items
report.show_sections(analysis, "mcnemar")

# %% [markdown]
# **Tukey-Kramer, ANOVA and the fallback.** Tukey-Kramer compares every pair of conditions while keeping the chance
# of any false alarm at alpha. The two-way ANOVA asks whether condition, student size, or their combination matter;
# it assumes equal variances (Levene) and normal residuals (Shapiro-Wilk). Right/wrong outcomes rarely satisfy the
# second, so Kruskal-Wallis with Dunn–Bonferroni compares the conditions by ranks instead.

# %%
# Tukey-Kramer HSD per test set and student
report.show_sections(analysis, "tukey")

# %%
# two-way ANOVA condition x student size, with its assumption checks
report.show_sections(analysis, "anova")

# %%
# Kruskal-Wallis and Dunn-Bonferroni (non-parametric)
report.show_sections(analysis, "kruskal")

# %% [markdown]
# **Regression.** Coefficients of the condition dummies are differences from the baseline condition, holding
# rationale length fixed (longer rationales may score higher for length alone). Ratings get one fixed effect per
# rater, because raters differ in how strict they are.

# %%
# OLS of outcomes and ratings on condition dummies and rationale length
report.show_sections(analysis, "ols")

# %%
# how CEC agrees with BLEU, ROUGE-L and BERTScore
report.show_sections(analysis, "cec_vs_metrics")

# %%
# draw every figure of the report into the step folder
figures = report.run_figures(tables, ctx.out)
list(figures)

# %%
# accuracy by condition
report.show_figure(figures["accuracy"])

# %%
# accuracy in and out of distribution
report.show_figure(figures["ood"])

# %%
# CEC against BLEU / ROUGE-L / BERTScore
report.show_figure(figures["cec_vs_metrics"])

# %%
# rating distributions
report.show_figure(figures["ratings"])

# %%
# write the run's self-contained report (tables, figures, sentences and provenance)
report.write_run_report(ctx.run_dir, analysis, figures)
