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
# claim-evidence pairs of the test split, not questions (`task: causal` in `runs.jsonl`).
#
# An example longer than `training.max_length` loses the end of its rationale, never its answer sentence and EOS
# (the count is `n_truncated` in `runs.jsonl`). A run checkpoints every `training.save_steps` steps and an interrupted
# run resumes from its last checkpoint, but only under the same config; a finished run is reused only when its params,
# examples, training code (`lib/training.py`, `head_loss.py`, `models.py`) and student weights are unchanged and its
# adapter is on disk. `--force` (the `force` parameter) retrains.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/04_training/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import models, report, runs, training

ctx = runs.open_step("04_training", params, params_file, run_dir, force)
ctx.out

# %%
# build each condition's training examples from steps 01-03
examples = training.load_condition_examples(ctx)
{condition: len(rows) for condition, rows in examples.items()}

# %%
# one example per condition and task
training.examples_frame(examples)

# %% [markdown]
# ### Under the hood: one batch's loss by hand
#
# Take one example of each task of a condition (MT when it is trained: an `[answer]` and a `[rationale]` example),
# tokenise them as the trainer does and run the untrained student once. Labels are -100 on prompt and padding
# positions; each task's loss is the mean cross-entropy over its own target tokens; the condition's loss is the
# weighted sum, α·L_answer + (1−α)·L_rationale for MT. The library computes the same number without ever building the
# full logits (`lib/head_loss.py`).

# %% tags=["under-the-hood"]
# one batch: which labels are -100, each task's mean cross-entropy, and the weighted sum, against the library
import torch, torch.nn.functional as F

condition = "MT" if "MT" in examples else next(iter(examples))
weights = training.task_weights(condition, ctx.params.training.alpha)
tok = models.load_tokenizer(ctx.params.training.students[0], padding_side="right")
lm = models.load_student_lm(ctx.params.training.students[0], "cpu")
one_per_task = [next(e for e in examples[condition] if e.task == t) for t in weights]
batch = training.collate(training.tokenize_examples(one_per_task, tok, ctx.params.training.max_length, list(weights)), tok.pad_token_id)
labels, task = batch["labels"][:, 1:], batch["task_ids"][:, None].expand(-1, batch["labels"].shape[1] - 1)
with torch.no_grad():
    token_ce = F.cross_entropy(lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    terms = {t: token_ce[(task == i) & (labels != -100)].mean() for i, t in enumerate(weights)}
    library, _ = training.weighted_target_loss(lm, batch, list(weights.values()))
by_hand = sum(weights[t] * terms[t] for t in weights)
assert torch.isclose(by_hand, library, rtol=1e-4), (by_hand, library)
{"labels = -100": int((labels == -100).sum()), **{f"L_{t}": round(float(v), 4) for t, v in terms.items()}, "by hand": round(float(by_hand), 4), "library": round(float(library), 4)}

# %%
# train every condition × student × seed (finished runs with the same config, code and weights are reused)
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

# %% [markdown]
# ## Try it
#
# Each exercise reruns part of the quickstart into a copy of its run folder, so the original stays for comparison: `cp
# -r outputs/quickstart outputs/try && .venv/bin/python -m lib.study params/quickstart.yaml --run-dir outputs/try
# --set KEY=VALUE --steps …` (unchanged steps are skipped; the teacher's cache travels with the copy).
# `.venv/bin/python -m lib.report outputs/quickstart outputs/try -o compare.html` puts the two side by side.
#
# 1. `--set "training.conditions=[MT]" --set training.alpha=0.9 --steps 04-05`, then `alpha=0.1`: in
#    `loss_terms.png`, which term falls and which stays high? Does accuracy or CEC follow in step 05?
# 2. `--set training.lora.r=2 --steps 04`, then `r=32`: compare `n_trainable`, wall time and the final loss in the
#    cost table.
# 3. `--set training.max_length=96 --steps 04`: how many examples does each run truncate (`n_truncated` in
#    `runs.jsonl`)? Check in the under-the-hood cell that the answer sentence is still in the labels.
