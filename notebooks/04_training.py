# %% [markdown]
# # 04 · Training the students
#
# **Goals**
# 1. Turn the teacher's artifacts into each condition's training examples (METHOD.md, *Student training conditions*).
# 2. Train every condition × student × seed with LoRA (or QLoRA / full fine-tuning), identical in everything but the
#    condition.
# 3. Look at the loss curves, per loss term for the multitask condition.
#
# **Reads** `01_data/`, `02_teacher/`, `03_counterfactuals/`. **Writes** one folder per run in `04_training/` (adapter,
# `config.json`, `losses.jsonl`, `done.json`), `runs.jsonl`, `loss_curves.png`, `loss_terms.png`.
#
# | condition | input → target | loss |
# |---|---|---|
# | FT | question → answer | CE on the answer |
# | FT-CoT | question → rationale, then answer | CE on rationale + answer |
# | MT | `[answer]` question → answer; `[rationale]` question → rationale | α·L_answer + (1−α)·L_rationale |
# | CF | `[factual]` question → gold rationale + answer; `[counterfactual]` question → a wrong option's rationale + that option | L_factual + L_counterfactual |
# | MT+CF | both of the above | α·L_MT + (1−α)·L_CF |
# | CFD | `[Direct election]` / `[Elimination method]` question → positive / negative view + answer, originals and counterfactuals | CE on the target |
# | CAUSAL | `Claim: … Evidence: … Label: … Explanation:` → the teacher's causal explanation | CE on the explanation |
#
# The loss counts target tokens only, and the LM head is applied only at target positions (for an encoder-decoder
# student such as T5, at the decoder's positions). Batches group examples of similar length and are padded only to
# their own longest example. CF students are asked with `[factual]` at test time; CAUSAL students answer the
# claim-evidence pairs of the test split, not questions (`task: causal` in `runs.jsonl`). A run checkpoints every
# `training.save_steps` steps, so an interrupted run resumes where it stopped.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/04_training/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import report, runs, training

ctx = runs.open_step("04_training", params, params_file, run_dir, force)
ctx.out

# %%
# build each condition's training examples from steps 01-03
examples = training.load_condition_examples(ctx)
{condition: len(rows) for condition, rows in examples.items()}

# %%
# one example per condition and task
training.examples_frame(examples)

# %%
# train every condition × student × seed (finished runs with the same config are skipped)
results = training.train_grid(ctx, examples)
results

# %%
# loss curves, one panel per loss term
losses = training.read_losses(ctx.out)
report.plot_loss_curves(losses, path=ctx.out / "loss_curves.png");

# %% [markdown]
# ## The loss terms of MT, CF and MT+CF
#
# A multitask condition optimises a weighted sum; each term's curve shows whether both tasks are learnt, or one
# dominates (e.g. the short answer target falls fast while the rationale term stays high).

# %%
# per-term loss curves of the multi-term conditions (a note when none was trained)
training.plot_term_losses(losses, path=ctx.out / "loss_terms.png");

# %% [markdown]
# ## What each run cost
#
# Wall time (load, train, save), training time, target tokens trained on per second, and the share of weights LoRA
# trains.

# %%
# the cost of each run
training.run_costs(results)
