# %% [markdown]
# # 05 · Evaluation: accuracy, explanation quality, faithfulness and ratings
#
# **Goals**
# 1. Let every student write a rationale and an answer for each test question, in and out of distribution, and
#    extract the answer (unparseable outputs count as wrong and are counted separately). As a second accuracy, pick the
#    option whose text the student finds most likely after the question (log-likelihood scoring, as
#    lm-evaluation-harness scores multiple choice), summed and per character. Two rows frame the conditions: BASE, the
#    untrained student (the floor), and TEACHER, the teacher's own answers (the ceiling).
# 2. Fill the train-set × test-set accuracy matrix of each condition and rationale source (seed 002's OOD evaluation).
# 3. Score each rationale against the teacher's with CEC, Causal Explanation Coherence (seed 000): forward coverage,
#    backward faithfulness and their mean over sentence embeddings; and, beside it, BLEU, ROUGE-L and BERTScore.
# 4. Test faithfulness (after SCOTT): does the answer change when the student's rationale is replaced by a perturbed or
#    a counterfactual one?
# 5. Rate explanations for completeness, contrastiveness and soundness (seed 001) with an LLM judge, and export a
#    blinded sheet for human raters.
#
# **Reads** `01_data/tests/`, `02_teacher/rationales.jsonl`, `03_counterfactuals/cf_rationales.jsonl` (when present),
# `04_training/`. **Writes** `05_evaluation/items.jsonl` (one row per run × item), `summary.csv`, `ood_matrix.csv`,
# `picks.csv`, `faithfulness.csv`, `judge_ratings.jsonl`, `causal_items.jsonl` (CAUSAL runs), `correlations.csv`,
# `summary.json`, `human_sheet.csv` / `.html` / `_key.csv`, `accuracy.png`, `cec.png`.
#
# Every student output and option score is cached in `<run>/student_cache.sqlite`, keyed by the student's weights
# (adapter files and base model), how they are loaded (`finetune`), the item, the prompt and the generation settings:
# a rerun after a change elsewhere generates only what it has not seen. `--force` deletes the cache.
#
# Each student is loaded as it was trained (`finetune` in `04_training/runs.jsonl`): a LoRA adapter is merged into the
# base weights; a QLoRA adapter is applied, unmerged, to the same 4-bit base it was trained on (merging it into 4-bit
# weights would round the update away); full fine-tuning loads the saved weights.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/05_evaluation/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import (
    conditions,
    data,
    evaluation,
    evaluation_tables,
    figures,
    files,
    metrics,
    models,
    ratings,
    runs,
    scoring,
    teacher,
)

ctx = runs.open_step("05_evaluation", params, params_file, run_dir, force)
ctx.out

# %% [markdown]
# ## The students, the floor and the ceiling
#
# Every row of `04_training/runs.jsonl` is evaluated from the folder its `adapter` field names. **BASE** has no
# folder (`adapter: null`): it is the untrained student, asked with FT's prompt (the plain question and `A:`), the floor
# every training condition must beat. **TEACHER** is no student: its rows are the teacher's own answers to the
# in-distribution test questions, read from `02_teacher/rationales.jsonl` (with the replay teacher, PaLM-540B's). It is
# the ceiling the students are distilled towards; it has no CEC or text metric, since its rationale is the reference,
# and no out-of-distribution column. Every row also keeps its `rationale_source`: `unrevised` (the teacher's CoT
# rationales) or `revised` (its critique-revised explanations; seed 001's Revised factor), so `MT` trained on either is
# two rows of the tables below.

# %%
# generate and score every run on every test set, and add the teacher's own answers
items = evaluation.evaluate_grid(ctx)
files.write_jsonl(ctx.out / "items.jsonl", items)

# %% [markdown]
# ## Accuracy in and out of distribution
#
# `accuracy` reads the answer from the generated text. The log-likelihood accuracies need no parsing: after the
# question, each option's text (`evaluation.loglik_scoring: option_text`) is scored by the student;
# `loglik_accuracy` picks the highest summed log-probability (lm-evaluation-harness's `acc`), `loglik_norm_accuracy`
# the highest per character (`acc_norm`), which does not favour short options. Scoring the letter sentence
# ("So the answer is (b) …") instead lets the letter decide: the untrained Gemma 3 270M picked (a) for 84% of 300
# CommonsenseQA dev questions that way (gold is (a) for 19%), a known weakness of small models (multiple-choice symbol
# binding). The pick table below shows, per run, how the picks spread over the letters against the gold answers.

# %%
# accuracy, unparseable share, explanation metrics and faithfulness per run and test set
summary = evaluation_tables.summary_table(items)
files.atomic_write_text(ctx.out / "summary.csv", summary.to_csv(index=False))
summary

# %%
# how the log-likelihood picks spread over the option letters, against the gold answers of the same items
picks = evaluation_tables.pick_distribution(items)
files.atomic_write_text(ctx.out / "picks.csv", picks.to_csv(index=False))
picks

# %%
# the train-set x test-set accuracy matrix of each condition (%)
ood = evaluation_tables.ood_matrix(items)
files.atomic_write_text(ctx.out / "ood_matrix.csv", ood.to_csv())
ood

# %%
# accuracy by condition with 95% bootstrap intervals
figures.plot_accuracy(evaluation.items_frame(items), path=ctx.out / "accuracy.png");

# %% [markdown]
# ## Explanation quality
#
# CEC splits the student's rationale G and the teacher's R into sentences and embeds each one. Forward coverage
# `FC` averages, over the student's sentences, the best cosine match among the teacher's (is what the student says
# in the reference?); backward faithfulness `BF` averages, over the teacher's sentences, the best match among the
# student's (is the reference's content covered?). CEC is their mean. BLEU and ROUGE-L count shared words,
# BERTScore matches token embeddings; the paper's claim is that CEC tracks quality more consistently. A student that
# wrote no rationale for an item scores 0 on all of them wherever the teacher wrote a reference, so every condition
# is scored on the same items.

# %% [markdown]
# ### Under the hood: CEC of one pair, and one item's option scores
#
# CEC embeds each sentence of the student's rationale (rows of $G$) and of the teacher's (rows of $R$), unit length, so
# that $S = GR^\top$ holds every cosine. Forward coverage is the mean of each row's maximum, backward faithfulness the
# mean of each column's maximum, and CEC their mean.

# %% tags=["under-the-hood"]
# CEC of one student rationale against its teacher reference, from the sentence-embedding matrix, against the library
import numpy as np

references = teacher.read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "test", ctx.params.training.rationale_filter)
row = next((r for r in items if r.rationale and references.get(r.item_id) and r.condition != "TEACHER"), None)
gen, ref = (row.rationale, references[row.item_id]) if row else list(references.values())[:2]
embedder = models.load_embedder(ctx.params.evaluation.embedder)
G = embedder.encode(metrics.split_sentences(gen), normalize_embeddings=True)
R = embedder.encode(metrics.split_sentences(ref), normalize_embeddings=True)
S = G @ R.T  # cosine of every (student sentence, teacher sentence) pair
fc, bf = S.max(axis=1).mean(), S.max(axis=0).mean()
(library,) = metrics.cec_batch([(gen, ref)], embedder.encode)
assert np.allclose([fc, bf, (fc + bf) / 2], [library.fc, library.bf, library.cec], atol=1e-4)
assert row is None or np.isclose(row.cec, library.cec, atol=1e-4)  # the value step 05 stored for this item
{"sentences (student, teacher)": S.shape, "FC": round(float(fc), 4), "BF": round(float(bf), 4), "CEC": round(float(library.cec), 4)}

# %% [markdown]
# And one item's log-likelihood answer: each option's continuation after the student's prompt is scored token by
# token from the model's next-token distribution; the summed log-probability gives `loglik_pred`, the sum divided by
# the continuation's length in characters gives `loglik_norm_pred`. Here each option is read whole, prompt and
# all; the library reads the prompt once and runs every option on its key/value cache (the attention keys and values
# the prompt's tokens left), which gives the same sums up to rounding at a fraction of the cost.

# %% tags=["under-the-hood"]
# the log-probability of each option's text after the prompt, summed and per character, against the library's picks
import torch

decoder_runs = [r for r in files.read_jsonl(ctx.artifact("04_training", "runs.jsonl")) if r.get("task") == "mc" and not models.is_encoder_decoder(r["student"])]
for run in decoder_runs[:1]:  # the first decoder-only student that answers questions (BASE: no adapter, path None)
    q = next(iter(data.read_test_sets(ctx.run_dir / "01_data").values()))[0]
    model, tok = evaluation.load_student(run["student"], evaluation.adapter_path(ctx, run), "cpu", run["finetune"])
    prompt = conditions.eval_prompts(run["condition"], q, ctx.params.counterfactual.strategy_tokens.positive)["answer"]
    pairs, sums = scoring.option_continuations(prompt, q, ctx.params.evaluation.loglik_scoring), []
    for context, continuation in pairs:
        ids, cont = tok(context)["input_ids"], tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
        sums.append(float(logp[torch.arange(len(cont)), cont].sum()))
    per_char = [v / len(c) for v, (_, c) in zip(sums, pairs)]
    (pick,) = scoring.loglik_choices(lambda ps: scoring.continuation_logliks(model, tok, ps), [prompt], [q], ctx.params.evaluation.loglik_scoring)
    assert (int(np.argmax(sums)), int(np.argmax(per_char))) == (pick.total, pick.per_char)
    print(run["run"], {o: (round(a, 2), round(b, 3)) for o, a, b in zip(q.choices, sums, per_char)}, "(summed, per character)")

# %%
# CEC by condition
figures.plot_cec(evaluation.items_frame(items), path=ctx.out / "cec.png");

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
faith = evaluation_tables.faithfulness_table(items)
files.atomic_write_text(ctx.out / "faithfulness.csv", faith.to_csv(index=False))
faith

# %% [markdown]
# ## Ratings
#
# The judge (the teacher model) rates a few explanations per run from 1 to 7; a judgement it does not write in the
# asked form is recorded as a failure, never as a number. Gemma 3 270M is a weak judge that mostly copies the scores of
# the last worked example in its prompt: read its scores as a demonstration of the procedure, and use a strong judge
# (`teacher.backend: openai`) or human raters for the study. The human sheet hides which student wrote what;
# `ratings.add_human_ratings(run_dir, filled_csv, run_dir / "05_evaluation/human_sheet_key.csv")` reads a filled copy
# back into `<run>/human_ratings.jsonl`, outside this step's folder, where step 06 finds it and no rerun erases it..

# %%
# the LLM judge's ratings
judged = evaluation.judge_grid(ctx, items)
files.write_jsonl(ctx.out / ratings.JUDGE_RATINGS, judged)
ratings.ratings_summary(judged, items)

# %%
# the judge's scores and justifications, one row per explanation
ratings.ratings_frame(judged).head(12)

# %%
# export the blinded human rating sheet (CSV, HTML form, key)
evaluation.export_human_sheet(ctx, items)

# %%
# how each metric correlates with the ratings (Spearman; NaN below 3 rated explanations)
correlations = metrics.metric_rating_correlations(evaluation.items_frame(items), ratings.ratings_frame(judged))
files.atomic_write_text(ctx.out / "correlations.csv", correlations.to_csv(index=False))
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
files.write_jsonl(ctx.out / "causal_items.jsonl", causal_items)
evaluation.causal_table(evaluation.explanations_frame(causal_items))

# %%
# the summary of this step
evaluation_tables.write_summary(ctx.out, items, judged)

# %% [markdown]
# ## Try it
#
# Each exercise reruns part of the quickstart into a copy of its run folder, so the original stays for comparison: `cp
# -r outputs/quickstart outputs/try && .venv/bin/python -m lib.study params/quickstart.yaml --run-dir outputs/try
# --set KEY=VALUE --steps …` (unchanged steps are skipped; the teacher's cache travels with the copy).
# `.venv/bin/python -m lib.report outputs/quickstart outputs/try -o compare.html` puts the two side by side.
#
# 1. `--set evaluation.loglik_scoring=answer_sentence --steps 05`: the pick table fills up with (a). Compare
#    `loglik_accuracy` with the default `option_text` scoring, and read METHOD.md §5.2 on multiple-choice symbol
#    binding.
# 2. `--set evaluation.perturbation=shuffle --steps 05`, against the default `other_item`: which perturbation changes
#    the answers more often (`faithfulness.csv`)? Does any condition never change its answer, whatever its rationale?
# 3. `--set evaluation.max_new_tokens=16 --steps 05`: the unparseable share rises and items without a rationale pull
#    CEC towards 0. Find one such item in `items.jsonl` and confirm its CEC is 0, not missing.
