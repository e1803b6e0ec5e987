# %% [markdown]
# # 04 · Training the students
#
# **Goals**
# 1. Turn the teacher's artifacts into each condition's training examples (METHOD.md, *Student training conditions*),
#    from the unrevised or the critique-revised teacher explanations (Hendriks et al.'s *Revised* factor).
# 2. Train every condition × rationale source × student × seed with LoRA (or QLoRA / full fine-tuning), identical in
#    everything but the condition, the source and any per-condition settings (`training.overrides`).
# 3. Look at the loss curves, per loss term for the multitask condition.
#
# **Reads** `01_data/`, `02_teacher/` (`rationales.jsonl`, `revisions.jsonl`, `causal.jsonl`), `03_counterfactuals/`.
# **Writes** one folder per trained run in `04_training/` (adapter, `config.json`, `losses.jsonl`, `done.json`),
# `runs.jsonl` (one row per run, BASE included), `loss_curves.png`, `loss_terms.png`.
#
# | condition | input → target | loss |
# |---|---|---|
# | BASE | none: the untrained student, asked like FT at test time | no training |
# | FT | question → answer | CE on the answer |
# | FT-CoT | question → rationale, then answer | CE on rationale + answer |
# | MT | `[answer]` question → answer; `[rationale]` question → rationale | α·L_answer + (1−α)·L_rationale |
# | CF | `[factual]` question → gold rationale + answer; `[counterfactual]` question → a wrong option's rationale + that option | L_factual + L_counterfactual |
# | MT+CF | both of the above | α·L_MT + (1−α)·L_CF |
# | CFD | `[Direct election]` / `[Elimination method]` question → positive / negative view + answer, originals and counterfactuals | CE on the target |
# | CAUSAL | `Claim: … Evidence: … Evidence label: … Explanation:` (the block the teacher was shown) → the teacher's causal explanation | CE on the explanation |
#
# The loss counts target tokens only, and the LM head is applied only at target positions (for an encoder-decoder
# student such as T5, at the decoder's positions). A question's examples share a batch (`lib.batching`): MT's loss
# weighs both tasks of the same questions in every step, as Distilling step-by-step trains, where batches of one task
# alone would let a run end on a stretch of answer-only steps that unlearns the rationale. Within that, batches group
# questions of similar length and are padded only to their own longest example. CF students are asked with
# `[factual]` at test time; CAUSAL students answer the claim-evidence pairs of the test split, not questions
# (`task: causal` in `runs.jsonl`). BASE is the reference every trained condition must beat: its row in `runs.jsonl`
# has `steps: 0` and `adapter: null`, and no folder is written.
#
# **The Revised factor** (`training.rationale_sources`). Hendriks et al. compare students trained on the teacher's
# first explanations with students trained on explanations the teacher critiqued and revised (step 02's
# `revisions.jsonl`). Every condition whose targets hold teacher rationales (FT-CoT, MT, CF's factual target, MT+CF) is
# trained once per source: `unrevised` is the step-02 CoT rationale, `revised` the revised explanation. A revised run
# keeps only the training questions that have a revised explanation (`teacher.revise_max_questions`; failed revisions
# only with `training.rationale_filter: any`), so its `n_examples` is smaller. BASE, FT, CFD and CAUSAL have no such
# rationales and are trained once, recorded as `unrevised`. Run names say all of it:
# `<condition>__<source>__<student>__seed<k>`, e.g. `MT__revised__gemma3-270m-gguf__seed0`.
#
# **Per-condition settings** (`training.overrides`). The causal paper trained its CAUSAL students with 4-bit QLoRA,
# 10 epochs, lr 2e-5 and batch size 8, which the other conditions need not share:
# `overrides: {CAUSAL: {finetune: qlora, epochs: 10, lr: 2.0e-5, batch_size: 8}}`. A run trains with the `training`
# section plus its condition's overrides; `config.json` and `done.json` record those settings (`training`), so a
# changed override retrains that condition's runs only.
#
# An example longer than `training.max_length` loses the end of its rationale, never its answer sentence and EOS
# (the count is `n_truncated` in `runs.jsonl`). A run checkpoints every `training.save_steps` steps and an interrupted
# run resumes from its last checkpoint, but only under the same config; a finished run is reused only when its params,
# examples, training code (`lib/training.py`, `examples.py`, `head_loss.py`, `models.py`) and student weights are
# unchanged and its adapter is on disk. `--force` (the `force` parameter) retrains.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/04_training/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import conditions, examples, figures, models, precision, runs, training, training_tables

ctx = runs.open_step("04_training", params, params_file, run_dir, force)
ctx.out

# %%
# build the training examples of each condition and rationale source from steps 01-03 (BASE has none)
training_examples = examples.load_condition_examples(ctx)
examples.example_counts(training_examples)

# %%
# one example per condition, rationale source and task
examples.examples_frame(training_examples)

# %% [markdown]
# ### Under the hood: one batch's loss by hand
#
# Take one example of each task of a condition (MT when it is trained: an `[answer]` and a `[rationale]` example),
# tokenise them as the trainer does and run the untrained student once. Labels are -100 on prompt and padding
# positions; each task's loss is the mean cross-entropy over its own target tokens; the condition's loss is the
# weighted sum, α·L_answer + (1−α)·L_rationale for MT. The library computes the same number without ever building the
# full logits (`lib/head_loss.py`). Both run in the format training runs in (`training` in the manifest's precision):
# in float32 they agree to 1e-4 (relative); in bfloat16 each product rounds to 8 bits of mantissa, the library's
# blockwise sum and the full logits round in different places, and 2e-2 is the bound the library's tests hold it to.
# The cross-entropy by hand is taken over the target rows (tokens × vocabulary): over Gemma's 262,144 logits, float32's
# log-softmax along the strided axis of a (batch, vocabulary, tokens) view put one batch's mean loss 2.6e-4 nats from
# the float64 value on an AVX-512 Xeon, while the blockwise sum was within 1e-7 of it.

# %%
# the condition shown (MT when it is trained), its task weights, the untrained student and the format step 04 trains in
import torch

key = ("MT", "unrevised") if ("MT", "unrevised") in training_examples else next(iter(training_examples))  # (condition, rationale source)
settings = ctx.params.training.for_condition(key[0])  # the training section with this condition's overrides
weights = conditions.task_weights(key[0], settings.alpha)
tok = models.load_tokenizer(ctx.params.training.students[0], padding_side="right")
lm, fmt = models.load_student_lm(ctx.params.training.students[0], "cpu"), models.number_formats(ctx.params.run)["training"]
{"condition": key, "task weights": weights, "format": fmt}

# %% tags=["under-the-hood"]
# one batch: which labels are -100, each task's mean cross-entropy, and the weighted sum, against the library
one_per_task = [next(e for e in training_examples[key] if e.task == t) for t in weights]
batch = examples.collate(examples.tokenize_examples(one_per_task, tok, settings.max_length, list(weights)), tok.pad_token_id)
labels, task = batch["labels"][:, 1:], batch["task_ids"][:, None].expand(-1, batch["labels"].shape[1] - 1)
target = labels != -100  # the positions whose next token is a target token
with torch.no_grad(), precision.autocast(fmt, "cpu"):
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][target].float()
    token_ce = torch.nn.functional.cross_entropy(logits, labels[target], reduction="none")  # one row per target token
    terms = {t: token_ce[task[target] == i].mean() for i, t in enumerate(weights)}
    library, _ = training.weighted_target_loss(lm, batch, list(weights.values()))
by_hand = sum(weights[t] * terms[t] for t in weights)
assert torch.isclose(by_hand, library, rtol={"fp32": 1e-4, "bf16": 2e-2}[fmt]), (by_hand, library, fmt)
{"labels = -100": int((labels == -100).sum()), **{f"L_{t}": round(float(v), 4) for t, v in terms.items()}, "by hand": round(float(by_hand), 4), "library": round(float(library), 4)}

# %%
# train every condition × rationale source × student × seed (finished runs with the same config, code and weights are
# reused; BASE gets its runs.jsonl row without training)
results = training.train_grid(ctx, training_examples)
results

# %%
# loss curves of the trained runs (BASE has none), one panel per loss term
losses = training_tables.read_losses(ctx.out)
figures.plot_losses(losses, path=ctx.out / "loss_curves.png");

# %% [markdown]
# ## The loss terms of MT, CF and MT+CF
#
# A multitask condition optimises a weighted sum; each term's curve shows whether both tasks are learnt, or one
# dominates (e.g. the short answer target falls fast while the rationale term stays high).

# %%
# per-term loss curves of the multi-term conditions (a note when none was trained)
figures.plot_term_losses(losses, path=ctx.out / "loss_terms.png");

# %% [markdown]
# ## What each run cost
#
# Wall time (load, train, save), training time, target tokens trained on per second, and the share of weights LoRA
# trains.

# %%
# the cost of each run
training_tables.run_costs(results)

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
# 2. `--set teacher.revise_max_questions=8 --set "training.rationale_sources=[unrevised,revised]" --steps 02-05`:
#    compare `MT__unrevised__…` with `MT__revised__…` in `runs.jsonl` (`n_examples`: the revised run keeps only questions
#    with a usable revision; add `--set training.rationale_filter=any` if none survives) and in step 05's accuracy.
#    Give one condition its own settings with `--set training.overrides.MT.lora.r=32`: only the MT runs retrain.
# 3. `--set training.max_length=96 --steps 04`: how many examples does each run truncate (`n_truncated` in
#    `runs.jsonl`)? Check in the under-the-hood cell that the answer sentence is still in the labels.
