# %% [markdown]
# # 01 · Data: load, validate and split the questions
#
# **Goals**
# 1. Load the in-distribution multiple-choice set (CommonsenseQA by default) from a local file in its original format or a hub id.
# 2. Check every question (unique ids, a gold answer among the options, no empty or duplicate options).
# 3. Hold out an in-distribution test split, and load the out-of-distribution test sets (train on one dataset, test on the others).
# 4. Load Climate-FEVER claim–evidence pairs for causal explanations.
#
# **Reads** the data sources named in `params.data`. **Writes** `01_data/train.jsonl`, `01_data/tests/<name>.jsonl`, `01_data/claims_train.jsonl` / `claims_test.jsonl` (split by claim), `01_data/summary.json`.
#
# **Follows** METHOD.md, *Data*. CommonsenseQA's `question_concept` (the ConceptNet concept each question was written around) is kept: step 03 masks it to build counterfactual questions.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/01_data/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import data, runs

ctx = runs.open_step("01_data", params, params_file, run_dir, force)
ctx.out

# %% [markdown]
# ## Load, check and split
#
# `prepare_splits` loads the training set, rejects it with a list of problems if any question is malformed, and
# either holds out `test_fraction` of it as the in-distribution test set (seeded by `run.seed`) or loads `data.test`.
# Every out-of-distribution set in `data.ood` is loaded the same way.

# %%
# load, validate and split the questions
splits = data.prepare_splits(ctx.params.data, ctx.params.run.seed)
data.split_table(splits)

# %%
# look at a few training questions
data.questions_to_frame(splits.train).head(5)

# %% [markdown]
# ## Claim–evidence pairs
#
# Climate-FEVER gives each claim five evidence sentences with their own labels. The causal-explanation condition
# (seed 000) asks the teacher to explain, from one pair, the cause, the mechanism and the effect.

# %%
# load the Climate-FEVER claim–evidence pairs
claims = data.load_claims(ctx.params.data)
data.claims_frame(claims).head(5)

# %%
# write the splits for the next steps
data.write_splits(ctx.out, splits, claims, ctx.params.data.test_fraction, ctx.params.run.seed)

# %% [markdown]
# ## Try it
#
# Each exercise reruns part of the quickstart into a copy of its run folder, so the original stays for comparison: `cp
# -r outputs/quickstart outputs/try && .venv/bin/python -m lib.study params/quickstart.yaml --run-dir outputs/try
# --set KEY=VALUE --steps …` (unchanged steps are skipped; the teacher's cache travels with the copy).
# `.venv/bin/python -m lib.report outputs/quickstart outputs/try -o compare.html` puts the two side by side.
#
# 1. `--set data.test_fraction=0.5 --steps 01`: the in-distribution test set grows from 20 to 30 questions. Predict
#    the half-width of a 95% interval around an accuracy near 50% ($1.96\sqrt{0.25/n}$: ±22 points at n = 20, ±18 at
#    n = 30) and check it later in `06_statistics/accuracy.csv`.
# 2. `--set run.seed=1 --steps 01`: which questions moved into the test split? Count the gold letters of each split
#    in `01_data/`: is a 20-question split still balanced over (a)–(e)?
# 3. `--set "data.ood=[]" --steps 01-05`: the OOD column disappears from `05_evaluation/ood_matrix.csv` (and its file
#    from `01_data/tests/`). Which claim of the counterfactual distillation paper can you no longer check?
