# %% [markdown]
# # 05 · Evaluation: accuracy, explanation quality, faithfulness and ratings
#
# **Goals**
# 1. Let every trained student write a rationale and an answer for each test question, in and out of distribution, and
#    extract the answer (unparseable outputs count as wrong and are counted separately). As a second accuracy, pick the
#    option whose answer sentence the student finds most likely (log-likelihood scoring).
# 2. Fill the train-set × test-set accuracy matrix of each condition (seed 002's OOD evaluation).
# 3. Score each rationale against the teacher's with CEC, Causal Explanation Coherence (seed 000): forward coverage,
#    backward faithfulness and their mean over sentence embeddings; and, beside it, BLEU, ROUGE-L and BERTScore.
# 4. Test faithfulness (after SCOTT): does the answer change when the student's rationale is replaced by a perturbed or
#    a counterfactual one?
# 5. Rate explanations for completeness, contrastiveness and soundness (seed 001) with an LLM judge, and export a
#    blinded sheet for human raters.
#
# **Reads** `01_data/tests/`, `02_teacher/rationales.jsonl`, `03_counterfactuals/cf_rationales.jsonl` (when present),
# `04_training/`. **Writes** `05_evaluation/items.jsonl` (one row per run × item), `summary.csv`, `ood_matrix.csv`,
# `faithfulness.csv`, `ratings.jsonl`, `causal_items.jsonl` (CAUSAL runs), `correlations.csv`, `summary.json`,
# `human_sheet.csv` / `.html` / `_key.csv`, `accuracy.png`, `cec.png`.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/05_evaluation/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import evaluation, ratings, report, runs

ctx = runs.open_step("05_evaluation", params, params_file, run_dir, force)
ctx.out

# %%
# generate and score every run on every test set
items = evaluation.evaluate_grid(ctx)
runs.write_jsonl(ctx.out / "items.jsonl", items)

# %% [markdown]
# ## Accuracy in and out of distribution
#
# `accuracy` reads the answer from the generated text; `loglik_accuracy` asks which option's answer sentence
# ("So the answer is (b) …") the student finds most likely right after the question, which needs no parsing.
# A large gap between them means the student knows more than its generated text shows (or fails to conclude).

# %%
# accuracy, unparseable share, explanation metrics and faithfulness per run and test set
summary = evaluation.summary_table(items)
runs.atomic_write_text(ctx.out / "summary.csv", summary.to_csv(index=False))
summary

# %%
# the train-set x test-set accuracy matrix of each condition (%)
ood = evaluation.ood_matrix(items)
runs.atomic_write_text(ctx.out / "ood_matrix.csv", ood.to_csv())
ood

# %%
# accuracy by condition with 95% bootstrap intervals
report.plot_accuracy(evaluation.items_frame(items), path=ctx.out / "accuracy.png");

# %% [markdown]
# ## Explanation quality
#
# CEC splits the student's rationale G and the teacher's R into sentences and embeds each one. Forward coverage
# `FC` averages, over the student's sentences, the best cosine match among the teacher's (is what the student says
# in the reference?); backward faithfulness `BF` averages, over the teacher's sentences, the best match among the
# student's (is the reference's content covered?). CEC is their mean. BLEU and ROUGE-L count shared words,
# BERTScore matches token embeddings; the paper's claim is that CEC tracks quality more consistently.

# %%
# CEC by condition
report.plot_cec(evaluation.items_frame(items), path=ctx.out / "cec.png");

# %%
# distributions of every explanation metric
evaluation.items_frame(items)[["cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore"]].describe()

# %%
# a few explanations with their CEC components
evaluation.items_frame(items).dropna(subset=["cec"]).groupby("condition").head(2)[["condition", "item_id", "correct", "rationale", "cec_fc", "cec_bf", "cec", "bleu", "rouge_l", "bertscore"]]

# %% [markdown]
# ## Faithfulness
#
# The student's own rationale, a perturbed rationale (another question's, or its own sentences shuffled) and, where step 03
# wrote one, a counterfactual rationale arguing for a wrong option are each forced after the prompt; the answer is then
# read by log-likelihood. A student whose answer never changes is not using its rationale.

# %%
# answer-change rate per run
faith = evaluation.faithfulness_table(items)
runs.atomic_write_text(ctx.out / "faithfulness.csv", faith.to_csv(index=False))
faith

# %% [markdown]
# ## Ratings
#
# The judge (the teacher model) rates a few explanations per run from 1 to 7; a judgement it does not write in the
# asked form is recorded as a failure, never as a number. Gemma 3 270M is a weak judge that mostly copies the scores of
# the last worked example in its prompt: read its scores as a demonstration of the procedure, and use a strong judge
# (`teacher.backend: openai`) or human raters for the study. The human sheet hides which student wrote what; `ratings.import_sheet` reads a filled copy back.

# %%
# the LLM judge's ratings
judged = evaluation.judge_grid(ctx, items)
runs.write_jsonl(ctx.out / "ratings.jsonl", judged)
ratings.ratings_summary(judged, items)

# %%
# the judge's scores and justifications, one row per explanation
ratings.ratings_frame(judged).head(12)

# %%
# export the blinded human rating sheet (CSV, HTML form, key)
evaluation.export_human_sheet(ctx, items)

# %%
# how each metric correlates with the ratings (Spearman; NaN below 3 rated explanations)
correlations = evaluation.metric_correlations(items, judged)
runs.atomic_write_text(ctx.out / "correlations.csv", correlations.to_csv(index=False))
correlations

# %% [markdown]
# ## CAUSAL students: explaining claims
#
# A CAUSAL student (seed 000) is not asked questions: it reads a held-out Climate-FEVER claim, one evidence sentence and
# the label, and writes the causal explanation. CEC and the text metrics compare it with the teacher's explanation of
# the same pair. The table is empty when `training.conditions` has no CAUSAL.

# %%
# explain the held-out claim-evidence pairs with every CAUSAL run
causal_items = evaluation.evaluate_causal_grid(ctx)
runs.write_jsonl(ctx.out / "causal_items.jsonl", causal_items)
evaluation.causal_summary(causal_items)

# %%
# the summary of this step
evaluation.write_summary(ctx.out, items, judged)
