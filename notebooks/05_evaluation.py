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
    precision,
    ratings,
    runs,
    scoring,
    standard_readings,
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
# generate and score every run on every test set, add the teacher's own answers, and write step 05's tables
items = evaluation.evaluate_grid(ctx)
tables = evaluation_tables.write_tables(ctx.out, items)
f"{len(items)} item rows written to {ctx.out.name}/items.jsonl"

# %% [markdown]
# ## Accuracy in and out of distribution, read three ways
#
# **Generated** (`accuracy`): the option the student names in the answer sentence it was trained to write ("So the
# answer is (b) bed."). Only that sentence counts: a rationale that says "the answer must be something that …", or an
# echoed list of the options, names no answer and is unparseable (`parse_rate` is the share that did name one). The
# lenient reader (`lenient_accuracy`, which also reads such text) stands beside it, labelled, never as the headline.
#
# **Scored in the condition's own prompt** (`loglik_accuracy`, `loglik_norm_accuracy`): after the same prompt, each
# option's text (`evaluation.loglik_scoring: option_text`) is scored by the student; the highest summed log-probability
# is lm-evaluation-harness's `acc` rule, the highest per character its `acc_norm`, which does not favour short options.
# A prompt that lists the options can bias these picks towards one letter: measured with `<bos>` on 100 CommonsenseQA
# dev questions, the untrained Gemma 3 270M in FT's prompt picked option (a) for 64% of them by summed option text
# (44% per character; gold is (a) for 17%), and 20% when the whole letter sentence was scored
# (`benchmarks/loglik_bias.py`). The pick table below shows, per run, how the picks spread over the letters against
# the gold answers; the standard cloze reading shows no options, so it has no such bias.
#
# **The standard readings** (`cloze_*`, `lettered_accuracy`): every student, BASE first, asked zero-shot the way
# lm-evaluation-harness asks small models, whatever it was trained on: `arc_easy`'s cloze formulation
# ("Question: …\nAnswer:" and each option's text, no options shown; acc and acc_norm) and `commonsense_qa`'s lettered
# one (the options listed "A. …", the letter as continuation). These are the numbers a model card reports, so a
# trained student has learnt something only where it beats BASE at BASE's best reading.
#
# Every input starts with the special tokens the tokenizer adds (Gemma's `<bos>`), in training, scoring and generation
# alike (`lib.models.input_ids`): Gemma scored without `<bos>` loses about 18 nats per option and reads near chance.

# %%
# every reading's accuracy (%), the parse rate, explanation metrics and faithfulness per run and test set
evaluation_tables.for_reading(tables["summary"])

# %%
# how the log-likelihood picks spread over the option letters, against the gold answers of the same items (%)
evaluation_tables.for_reading(tables["picks"])

# %%
# the train-set x test-set accuracy matrix of each condition (%)
tables["ood_matrix"]

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
#
# The cell embeds in the number format step 05 embedded in (`run.precision`, resolved for this machine: `embedding`
# in `manifest.json`'s precision). In float32 every route to an embedding agrees to 1e-4. In bfloat16 (8 bits of
# mantissa, a relative step of 2⁻⁸ ≈ 0.004) a sentence embedded in another batch, beside other sentences and other
# padding, rounds differently, so the values are held to 0.01 there: bf16 moved CEC by 0.0004 on average against
# float32 on real rationales (benchmarks/precision.py).

# %% tags=["under-the-hood"]
# CEC of one student rationale against its teacher reference, from the sentence-embedding matrix, against the library
import numpy as np

references = teacher.read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "test", ctx.params.training.rationale_filter)
row = next((r for r in items if r.rationale and references.get(r.item_id) and r.condition != "TEACHER"), None)
gen, ref = (row.rationale, references[row.item_id]) if row else list(references.values())[:2]
fmt = models.number_formats(ctx.params.run)["embedding"]  # the format step 05 embedded in: fp32 or bf16
embedder = models.load_embedder(ctx.params.evaluation.embedder)
with precision.autocast(fmt, "cpu"):
    G = embedder.encode(metrics.split_sentences(gen), normalize_embeddings=True)
    R = embedder.encode(metrics.split_sentences(ref), normalize_embeddings=True)
    (library,) = metrics.cec_batch([(gen, ref)], embedder.encode)
S = G @ R.T  # cosine of every (student sentence, teacher sentence) pair
fc, bf = S.max(axis=1).mean(), S.max(axis=0).mean()
tolerance = {"fp32": 1e-4, "bf16": 1e-2}[fmt]  # another batch rounds differently in bf16 (above)
assert np.allclose([fc, bf, (fc + bf) / 2], [library.fc, library.bf, library.cec], atol=tolerance)
assert row is None or np.isclose(row.cec, library.cec, atol=tolerance), (row.cec, library.cec, fmt)  # step 05's value
{"format": fmt, "sentences (student, teacher)": S.shape, "FC": round(float(fc), 4), "BF": round(float(bf), 4), "CEC": round(float(library.cec), 4)}

# %% [markdown]
# And one item's log-likelihood answers: each option's continuation after a context is scored token by token from the
# model's next-token distribution, the context read as the tokenizer encodes it (`<bos>` first). After the condition's
# own prompt, the summed log-probability gives `loglik_pred` and the sum per character of the continuation
# `loglik_norm_pred`; after lm-eval's cloze context "Question: …\nAnswer:" they give `cloze_pred` and
# `cloze_norm_pred` (per character of the option's text, as lm-eval divides). Here each option is read whole, context
# and all; the library reads the context once and runs every option on its key/value cache, which gives the same sums
# up to rounding at a fraction of the cost. The cell scores in the format step 05 scored in (`scoring` in the
# manifest's precision): float32 agrees with the library to 1e-3 nats per option; bfloat16 rounds each product to 8
# bits of mantissa, and reading a context once or with each option changes where it rounds, so it is held to 0.25
# nats there and a pick must be within that of the best option.

# %%
# the first decoder-only student (BASE comes first), one in-distribution item and the format step 05 scored in
import torch

fmt = models.number_formats(ctx.params.run)["scoring"]  # fp32 or bf16
tolerance = {"fp32": 1e-3, "bf16": 0.25}[fmt]  # nats per option (above)
decoder_runs = [r for r in files.read_jsonl(ctx.artifact("04_training", "runs.jsonl")) if r.get("task") == "mc" and not models.is_encoder_decoder(r["student"])]
run, q = decoder_runs[0], next(iter(data.read_test_sets(ctx.run_dir / "01_data").values()))[0]
model, tok = evaluation.load_student(run["student"], evaluation.adapter_path(ctx, run), "cpu", run["finetune"])
{"student": run["run"], "format": fmt, "question": q.question, "gold": q.choices[q.answer]}

# %% tags=["under-the-hood"]
# the log-probability of each option's text after the student's own prompt, against the library's pick

def by_hand(context: str, continuation: str) -> float:
    """log p(continuation | context), the pair read whole as the tokenizer encodes it (<bos> first)."""
    ids, cont = tok(context)["input_ids"], tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad(), precision.autocast(fmt, "cpu"):
        logp = model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
    return float(logp[torch.arange(len(cont)), cont].sum())


prompt = conditions.eval_prompts(run["condition"], q, ctx.params.counterfactual.strategy_tokens.positive)["answer"]
pairs = scoring.option_continuations(prompt, q, ctx.params.evaluation.loglik_scoring)
sums = [by_hand(context, continuation) for context, continuation in pairs]
with precision.autocast(fmt, "cpu"):
    (pick,) = scoring.loglik_choices(lambda ps: scoring.continuation_logliks(model, tok, ps), [prompt], [q], ctx.params.evaluation.loglik_scoring)
assert sums[pick.total] >= max(sums) - tolerance, (pick, sums)  # the library's pick is the most likely option
{"pick": q.choices[pick.total], **{o: round(v, 2) for o, v in zip(q.choices, sums)}}

# %% [markdown]
# The same student read the standard way: lm-eval's `arc_easy` context shows the question alone, and `acc_norm`
# divides each option's log-likelihood by the length of its text in characters.

# %% tags=["under-the-hood"]
# the cloze reading of the same item by hand, against lib.standard_readings
cloze = [by_hand(f"Question: {q.question}\nAnswer:", " " + choice) for choice in q.choices]
per_char = [v / len(choice) for v, choice in zip(cloze, q.choices)]
with precision.autocast(fmt, "cpu"):
    library = scoring.continuation_logliks(model, tok, standard_readings.reading_pairs(q)[0])
    (standard,) = standard_readings.standard_picks(lambda ps: scoring.continuation_logliks(model, tok, ps), [q])
assert np.allclose(cloze, library, atol=tolerance), (cloze, library)  # the library reads the context once (above)
assert cloze[standard.cloze] >= max(cloze) - tolerance and per_char[standard.cloze_norm] >= max(per_char) - tolerance
{"acc pick": q.choices[standard.cloze], "acc_norm pick": q.choices[standard.cloze_norm], **{o: (round(a, 2), round(b, 3)) for o, a, b in zip(q.choices, cloze, per_char)}}

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
# answer-change rate per run (%)
evaluation_tables.for_reading(tables["faithfulness"])

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
ratings.ratings_summary(judged, items)

# %%
# the judge's scores and justifications, one row per explanation
ratings.ratings_frame(judged).head(12)

# %%
# export the blinded human rating sheet (CSV, HTML form, key)
evaluation.export_human_sheet(ctx, items)

# %%
# how each metric correlates with the ratings (Spearman; NaN below 3 rated explanations)
evaluation_tables.write_correlations(ctx.out, items, judged)

# %% [markdown]
# ## CAUSAL students: explaining claims
#
# A CAUSAL student (seed 000) is not asked questions: it reads a held-out Climate-FEVER claim, one evidence sentence and
# the label, and writes the causal explanation. CEC and the text metrics compare it with the teacher's explanation of
# the same pair. The table is empty when `training.conditions` has no CAUSAL.

# %%
# explain the held-out claim-evidence pairs with every CAUSAL run
causal_items = evaluation.evaluate_causal_grid(ctx)
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
# 1. `--set evaluation.loglik_scoring=answer_sentence --steps 05`: does the pick table lean to one letter more or
#    less than with the default `option_text` scoring? Compare both with the cloze reading, which shows no options,
#    and read METHOD.md §5.2 on multiple-choice symbol binding.
# 2. `--set evaluation.perturbation=shuffle --steps 05`, against the default `other_item`: which perturbation changes
#    the answers more often (`faithfulness.csv`)? Does any condition never change its answer, whatever its rationale?
# 3. `--set evaluation.max_new_tokens=16 --steps 05`: the unparseable share rises and items without a rationale pull
#    CEC towards 0. Find one such item in `items.jsonl` and confirm its CEC is 0, not missing.
