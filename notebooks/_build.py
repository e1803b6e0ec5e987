"""Write notebooks 01-06 from the cell lists below (run after editing them: python notebooks/_build.py).

The notebooks are generated so that they stay clean (no outputs, stable ids) and so that every one
opens with the same parameters cell; edit the cells here, not in the .ipynb files.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def params_cell(step: str) -> nbformat.NotebookNode:
    """The papermill `parameters` cell: literal defaults only."""
    return new_code_cell(
        "# parameters (papermill injects the resolved study params after this cell)\n"
        "params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file\n"
        'params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own\n'
        'run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes '
        f"to run_dir/{step}/",
        metadata={"tags": ["parameters"]},
    )


def open_cell(step: str, imports: str) -> nbformat.NotebookNode:
    """The cell that validates params and opens the step's folder."""
    return new_code_cell(
        f"# validate the parameters and open this step's folder in the run\n{imports}\n\n"
        f'ctx = runs.open_step("{step}", params, params_file, run_dir)\nctx.out'
    )


def md(text: str) -> nbformat.NotebookNode:
    """A markdown cell."""
    return new_markdown_cell(text.strip())


def code(text: str) -> nbformat.NotebookNode:
    """A code cell."""
    return new_code_cell(text.strip())


NOTEBOOKS = {
    "01_data": [
        md("""
# 01 · Data: load, validate and split the questions

**Goals**
1. Load the in-distribution multiple-choice set (CommonsenseQA by default) from a local file in its original format or a hub id.
2. Check every question (unique ids, a gold answer among the options, no empty or duplicate options).
3. Hold out an in-distribution test split, and load the out-of-distribution test sets (train on one dataset, test on the others).
4. Load Climate-FEVER claim–evidence pairs for causal explanations.

**Reads** the data sources named in `params.data`. **Writes** `01_data/train.jsonl`, `01_data/tests/<name>.jsonl`, `01_data/claims_train.jsonl` / `claims_test.jsonl` (split by claim), `01_data/summary.json`.

**Follows** METHOD.md, *Data*. CommonsenseQA's `question_concept` (the ConceptNet concept each question was written around) is kept: step 03 masks it to build counterfactual questions.
"""),
        params_cell("01_data"),
        open_cell("01_data", "from lib import data, runs"),
        md("""
## Load, check and split

`prepare_splits` loads the training set, rejects it with a list of problems if any question is malformed, and
either holds out `test_fraction` of it as the in-distribution test set (seeded by `run.seed`) or loads `data.test`.
Every out-of-distribution set in `data.ood` is loaded the same way.
"""),
        code("""
# load, validate and split the questions
splits = data.prepare_splits(ctx.params.data, ctx.params.run.seed)
data.split_table(splits)
"""),
        code("""
# look at a few training questions
data.questions_to_frame(splits.train).head(5)
"""),
        md("""
## Claim–evidence pairs

Climate-FEVER gives each claim five evidence sentences with their own labels. The causal-explanation condition
(seed 000) asks the teacher to explain, from one pair, the cause, the mechanism and the effect.
"""),
        code("""
# load the Climate-FEVER claim–evidence pairs
claims = data.load_claims(ctx.params.data)
data.claims_frame(claims).head(5)
"""),
        code("""
# write the splits for the next steps
data.write_splits(ctx.out, splits, claims, ctx.params.data.test_fraction, ctx.params.run.seed)
"""),
    ],
    "02_teacher": [
        md("""
# 02 · Teacher: rationales, critique–revision and causal explanations

**Goals**
1. Show the few-shot chain-of-thought prompt the teacher answers, and where every prompt template lives.
2. Produce one CoT rationale per training and in-distribution test question with the configured backend:
   `local` (an in-process model, Gemma 3 270M by default), `openai` (any OpenAI-compatible server: OpenAI, vLLM,
   Ollama, llama.cpp) or `replay` (the PaLM-540B rationales of *Distilling step-by-step*, or CoS-E explanations).
3. Critique–revision (seed 001): initial explanation → the teacher's critique → a revised explanation.
4. Structured causal explanations (seed 000) of Climate-FEVER claim–evidence pairs: cause, mechanism, effect.
5. Measure the teacher: accuracy against gold, rationale lengths, failures by reason, tokens and cost.

**Reads** `01_data/`. **Writes** `02_teacher/rationales.jsonl` (one row per question), `revisions.jsonl` (one row
per critiqued training question), `causal.jsonl` (one row per explained claim–evidence pair), `summary.json`,
`accounting.json`; every row carries the backend, the model and the hashes of its prompt templates. The teacher's
responses are cached in `<run>/teacher_cache.sqlite`, outside this folder: a rerun makes no calls.

**Follows** METHOD.md, *Teacher data generation* 1, 4 and 6. A failed completion (empty, unparseable, truncated, not
JSON, a request that never got an answer, a spent budget) is kept with its reason, never silently dropped.
Test-split rationales are the references that CEC compares students against.
"""),
        params_cell("02_teacher"),
        open_cell("02_teacher", "from lib import data, prompts, report, runs, teacher"),
        code("""
# read the splits written by step 01
splits = data.read_splits(ctx.run_dir / "01_data")
data.split_table(splits)
"""),
        md("""
## The prompt

Worked examples, each ending in *So the answer is (x) …*, then the new question. The closing sentence is what
makes the teacher's answer machine-readable. Every template is a file in `lib/templates/`; the sha256 of its text
is recorded with every output made from it, and is part of the cache key of every request.
"""),
        code("""
# show the few-shot CoT prompt for the first training question
print(prompts.cot_prompt(splits.train[0], ctx.params.teacher.n_shots))
"""),
        md("""
## The teacher engine

`make_teacher` opens the response cache and the backend. Each request is looked up first (keyed by backend, model,
template hash, the rendered prompt, the sampling params and the sample index); only misses are sent, and each
response is stored the moment it arrives, so an interrupted step resumes where it stopped. A response that fails
validation (no answer letter, truncated, not JSON) is re-asked at most `teacher.max_reasks` times at
`teacher.reask_temperature`. With `openai`, at most `teacher.max_in_flight` requests are in flight, 429 / 5xx /
timeouts are retried with backoff, and `teacher.max_cost_usd` / `teacher.max_requests` stop the run cleanly before
they would be passed. The API key is read from the variable `teacher.api_key_env` names and is written nowhere.
"""),
        code("""
# open the cached teacher (the model loads only if a request misses the cache)
engine = teacher.make_teacher(ctx.params.teacher, ctx.params.run.device, ctx.run_dir)
"""),
        code("""
# ask the teacher for a rationale per question (train and in-distribution test)
rows = teacher.cot_rationales(splits.teacher_questions(), ctx.params.teacher, ctx.params.run.device, engine)
runs.write_jsonl(ctx.out / "rationales.jsonl", rows)
"""),
        md("""
## How good is the teacher?

A weak teacher (a 270M model) makes many wrong or unparseable rationales; the recorded PaLM-540B teacher agrees with
gold on 74.3% of CommonsenseQA train and 77.2% of dev. The students in step 04 always learn the gold answer; the
rationale is the teacher's.
"""),
        code("""
# teacher accuracy, failures and lengths per split
summary = teacher.summarize(rows)
runs.write_json(ctx.out / "summary.json", summary)
report.frame_of(summary)
"""),
        code("""
# distribution of rationale lengths
report.plot_rationale_lengths(rows, path=ctx.out / "rationale_lengths.png");
"""),
        code("""
# a few rationales per split
teacher.examples_frame(rows, n=3)
"""),
        md("""
## Critique–revision (seed 001)

Three calls per question: the teacher explains the gold answer, critiques its own explanation (what is missing,
wrong or unclear; does it say why the other options are wrong?), then rewrites it to meet the critique. Both the
unrevised and the revised explanation are kept. Only the first `teacher.revise_max_questions` training questions
are critiqued. The replay backend has no model to critique with: its rows say *not available from replay*.
"""),
        code("""
# initial explanation, critique and revision per training question
revisions = teacher.critique_revisions(splits.train, ctx.params.teacher, engine)
runs.write_jsonl(ctx.out / "revisions.jsonl", revisions)
teacher.revisions_frame(revisions, n=3)
"""),
        md("""
## Causal explanations (seed 000)

For a claim, one evidence sentence and the evidence's label, the teacher answers with a JSON object naming the cause,
the mechanism and the effect, grounded in the evidence; the three sentences become the explanation that the CAUSAL
students learn and that CEC scores against. The first `teacher.causal_max_pairs` pairs of each split are explained.
"""),
        code("""
# read the claim-evidence pairs written by step 01
pairs = teacher.read_claim_pairs(ctx.artifact("01_data", "claims_train.jsonl"), ctx.artifact("01_data", "claims_test.jsonl"))
{split: len(ps) for split, ps in pairs.items()}
"""),
        code("""
# ask for a structured causal explanation per claim-evidence pair
causal = teacher.causal_explanations(pairs, ctx.params.teacher, engine)
runs.write_jsonl(ctx.out / "causal.jsonl", causal)
teacher.causal_frame(causal, n=3)
"""),
        md("""
## Failures and cost

Every output ends valid or with its reason. The accounting below counts the responses each task used (cached or
not): tokens, and dollars where `teacher.price_*_usd_per_mtok` are set. The session table adds how many requests
were actually sent this time (zero on a cached rerun) and the wall time.
"""),
        code("""
# outputs and failures by task and reason
teacher.failures_frame(rows, revisions, causal)
"""),
        code("""
# tokens and cost per task, as written to accounting.json
runs.write_json(ctx.out / "accounting.json", teacher.accounting(engine))
engine.usage_frame()
"""),
        code("""
# release the teacher (its worker thread and the cache file)
engine.close()
"""),
    ],
    "03_counterfactuals": [
        md("""
# 03 · Counterfactual questions and multi-view chain of thought

**Goals**
1. Ask the teacher which words decide a question's answer, locate them in the text and mask them
   (CommonsenseQA's `question_concept` is the fallback and is kept beside them).
2. Ask the teacher to refill the mask so that a former distractor becomes the answer; reject refills that leave the
   question unchanged, rewrite words outside the mask, name the old answer, or spell out the new one (a question
   that contains its answer teaches word overlap, not reasoning).
3. Keep a counterfactual only when several sampled teacher reasoning paths agree on the new answer (self-consistency).
4. Build multi-view CoT: a positive view (`[Direct election]`, why the answer is right) and negative views
   (`[Elimination method]`, why a wrong option is wrong).

**Reads** `01_data/`, `02_teacher/rationales.jsonl`. **Writes** `03_counterfactuals/counterfactuals.jsonl` (every
attempt with its span, refill, votes and outcome), `cf_questions.jsonl` (accepted ones as questions),
`multiview.jsonl`, `cf_rationales.jsonl` (rationales arguing for a wrong option), `acceptance.json`.

**Follows** seed 002 (*Teaching Small Language Models Reasoning through Counterfactual Distillation*): a student that
sees minimally edited questions whose answer changes must attend to the words that cause the answer.
"""),
        params_cell("03_counterfactuals"),
        open_cell("03_counterfactuals", "from lib import counterfactual, data, report, runs, teacher"),
        code("""
# read the training questions and their step-02 rationales
splits = data.read_splits(ctx.run_dir / "01_data")
rationales = teacher.read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "train",
                                     ctx.params.training.rationale_filter)
len(splits.train), len(rationales)
"""),
        code("""
# open the cached teacher that refills masks and votes (the cache of step 02: a rerun makes no calls)
refiller = teacher.make_teacher(ctx.params.teacher, ctx.params.run.device, ctx.run_dir)
"""),
        md("""
## Mask, refill, vote

For each of the first `counterfactual.max_questions` training questions the concept is masked, the teacher fills the
mask towards the new target, and `votes` sampled reasoning paths (temperature `vote_temperature`) answer the new
question. It is accepted when at least `accept_threshold` of them pick the new target.
"""),
        code("""
# build counterfactual questions
cfs = counterfactual.build_counterfactuals(splits.train, refiller, ctx.params.counterfactual,
                                           ctx.params.teacher.n_shots, ctx.params.run.seed)
runs.write_jsonl(ctx.out / "counterfactuals.jsonl", cfs)
"""),
        code("""
# original, masked and counterfactual side by side (changed words in bold)
report.show_markdown_table(counterfactual.side_by_side(cfs))
"""),
        code("""
# acceptance rate and rejection reasons
acceptance = counterfactual.acceptance_summary(cfs, splits.train)
runs.write_json(ctx.out / "acceptance.json", acceptance)
report.plot_acceptance(acceptance, path=ctx.out / "acceptance.png");
"""),
        code("""
# keep the accepted counterfactuals as training questions
cf_questions = counterfactual.accepted_questions(cfs, splits.train)
runs.write_jsonl(ctx.out / "cf_questions.jsonl", cf_questions)
len(cf_questions)
"""),
        md("""
## Multi-view chain of thought

Original questions reuse their step-02 rationale as the positive view; accepted counterfactuals get a new positive
view; `negative_views` wrong options per question get a refutation.
"""),
        code("""
# build positive and negative views
views = counterfactual.build_views(splits.train, cf_questions, rationales, refiller, ctx.params.counterfactual,
                                   ctx.params.run.seed)
runs.write_jsonl(ctx.out / "multiview.jsonl", views)
"""),
        code("""
# a few views of each kind
counterfactual.views_frame(views).groupby(["origin", "strategy"]).head(2)
"""),
        md("""
## Counterfactual rationales

Counterfactual training (seed 001, after SCOTT) pairs each question with a rationale written as if a wrong option
were right, and trains the student to follow that rationale to *that* option: a student that only pattern-matches
the question cannot do this, one that uses its rationale can. The test questions' counterfactual rationales are
never trained on: step 05 forces them into the student's answer to see whether the answer follows (faithfulness).
"""),
        code("""
# write a counterfactual rationale (for a random wrong option) per training and in-distribution test question
cf_rationales = counterfactual.build_cf_rationales(splits.teacher_questions(), refiller, ctx.params.counterfactual,
                                                   ctx.params.run.seed)
runs.write_jsonl(ctx.out / "cf_rationales.jsonl", cf_rationales)
counterfactual.views_frame(cf_rationales, counterfactual.CounterfactualRationale).head(3)
"""),
        code("""
# release the teacher (its worker thread and the cache file)
refiller.close()
"""),
    ],
    "04_training": [
        md("""
# 04 · Training the students

**Goals**
1. Turn the teacher's artifacts into each condition's training examples (METHOD.md, *Student training conditions*).
2. Train every condition × student × seed with LoRA (or QLoRA / full fine-tuning), identical in everything but the
   condition.
3. Look at the loss curves, per loss term for the multitask condition.

**Reads** `01_data/`, `02_teacher/`, `03_counterfactuals/`. **Writes** one folder per run in `04_training/` (adapter,
`config.json`, `losses.jsonl`, `done.json`), `runs.jsonl`, `loss_curves.png`, `loss_terms.png`.

| condition | input → target | loss |
|---|---|---|
| FT | question → answer | CE on the answer |
| FT-CoT | question → rationale, then answer | CE on rationale + answer |
| MT | `[answer]` question → answer; `[rationale]` question → rationale | α·L_answer + (1−α)·L_rationale |
| CF | `[factual]` question → gold rationale + answer; `[counterfactual]` question → a wrong option's rationale + that option | L_factual + L_counterfactual |
| MT+CF | both of the above | α·L_MT + (1−α)·L_CF |
| CFD | `[Direct election]` / `[Elimination method]` question → positive / negative view + answer, originals and counterfactuals | CE on the target |
| CAUSAL | `Claim: … Evidence: … Label: … Explanation:` → the teacher's causal explanation | CE on the explanation |

The loss counts target tokens only, and the LM head is applied only at target positions (for an encoder-decoder
student such as T5, at the decoder's positions). Batches group examples of similar length and are padded only to
their own longest example. CF students are asked with `[factual]` at test time; CAUSAL students answer the
claim-evidence pairs of the test split, not questions (`task: causal` in `runs.jsonl`). A run checkpoints every
`training.save_steps` steps, so an interrupted run resumes where it stopped.
"""),
        params_cell("04_training"),
        open_cell("04_training", "from lib import report, runs, training"),
        code("""
# build each condition's training examples from steps 01-03
examples = training.load_condition_examples(ctx)
{condition: len(rows) for condition, rows in examples.items()}
"""),
        code("""
# one example per condition and task
training.examples_frame(examples)
"""),
        code("""
# train every condition × student × seed (finished runs with the same config are skipped)
results = training.train_grid(ctx, examples)
results
"""),
        code("""
# loss curves, one panel per loss term
losses = training.read_losses(ctx.out)
report.plot_loss_curves(losses, path=ctx.out / "loss_curves.png");
"""),
        md("""
## The loss terms of MT, CF and MT+CF

A multitask condition optimises a weighted sum; each term's curve shows whether both tasks are learnt, or one
dominates (e.g. the short answer target falls fast while the rationale term stays high).
"""),
        code("""
# per-term loss curves of the multi-term conditions (a note when none was trained)
training.plot_term_losses(losses, path=ctx.out / "loss_terms.png");
"""),
        md("""
## What each run cost

Wall time (load, train, save), training time, target tokens trained on per second, and the share of weights LoRA
trains.
"""),
        code("""
# the cost of each run
training.run_costs(results)
"""),
    ],
    "05_evaluation": [
        md("""
# 05 · Evaluation: accuracy, explanation quality, faithfulness and ratings

**Goals**
1. Let every trained student write a rationale and an answer for each test question, in and out of distribution, and
   extract the answer (unparseable outputs count as wrong and are counted separately). As a second accuracy, pick the
   option whose answer sentence the student finds most likely (log-likelihood scoring).
2. Fill the train-set × test-set accuracy matrix of each condition (seed 002's OOD evaluation).
3. Score each rationale against the teacher's with CEC, Causal Explanation Coherence (seed 000): forward coverage,
   backward faithfulness and their mean over sentence embeddings; and, beside it, BLEU, ROUGE-L and BERTScore.
4. Test faithfulness (after SCOTT): does the answer change when the student's rationale is replaced by a perturbed or
   a counterfactual one?
5. Rate explanations for completeness, contrastiveness and soundness (seed 001) with an LLM judge, and export a
   blinded sheet for human raters.

**Reads** `01_data/tests/`, `02_teacher/rationales.jsonl`, `03_counterfactuals/cf_rationales.jsonl` (when present),
`04_training/`. **Writes** `05_evaluation/items.jsonl` (one row per run × item), `summary.csv`, `ood_matrix.csv`,
`faithfulness.csv`, `ratings.jsonl`, `causal_items.jsonl` (CAUSAL runs), `correlations.csv`, `summary.json`,
`human_sheet.csv` / `.html` / `_key.csv`, `accuracy.png`, `cec.png`.
"""),
        params_cell("05_evaluation"),
        open_cell("05_evaluation", "from lib import evaluation, ratings, report, runs"),
        code("""
# generate and score every run on every test set
items = evaluation.evaluate_grid(ctx)
runs.write_jsonl(ctx.out / "items.jsonl", items)
"""),
        md("""
## Accuracy in and out of distribution

`accuracy` reads the answer from the generated text; `loglik_accuracy` asks which option's answer sentence
("So the answer is (b) …") the student finds most likely right after the question, which needs no parsing.
A large gap between them means the student knows more than its generated text shows (or fails to conclude).
"""),
        code("""
# accuracy, unparseable share, explanation metrics and faithfulness per run and test set
summary = evaluation.summary_table(items)
runs.atomic_write_text(ctx.out / "summary.csv", summary.to_csv(index=False))
summary
"""),
        code("""
# the train-set x test-set accuracy matrix of each condition (%)
ood = evaluation.ood_matrix(items)
runs.atomic_write_text(ctx.out / "ood_matrix.csv", ood.to_csv())
ood
"""),
        code("""
# accuracy by condition with 95% bootstrap intervals
report.plot_accuracy(evaluation.items_frame(items), path=ctx.out / "accuracy.png");
"""),
        md("""
## Explanation quality

CEC splits the student's rationale G and the teacher's R into sentences and embeds each one. Forward coverage
`FC` averages, over the student's sentences, the best cosine match among the teacher's (is what the student says
in the reference?); backward faithfulness `BF` averages, over the teacher's sentences, the best match among the
student's (is the reference's content covered?). CEC is their mean. BLEU and ROUGE-L count shared words,
BERTScore matches token embeddings; the paper's claim is that CEC tracks quality more consistently.
"""),
        code("""
# CEC by condition
report.plot_cec(evaluation.items_frame(items), path=ctx.out / "cec.png");
"""),
        code("""
# distributions of every explanation metric
evaluation.items_frame(items)[["cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore"]].describe()
"""),
        code("""
# a few explanations with their CEC components
evaluation.items_frame(items).dropna(subset=["cec"]).groupby("condition").head(2)[["condition", "item_id", "correct", "rationale", "cec_fc", "cec_bf", "cec", "bleu", "rouge_l", "bertscore"]]
"""),
        md("""
## Faithfulness

The student's own rationale, a perturbed rationale (another question's, or its own sentences shuffled) and, where step 03
wrote one, a counterfactual rationale arguing for a wrong option are each forced after the prompt; the answer is then
read by log-likelihood. A student whose answer never changes is not using its rationale.
"""),
        code("""
# answer-change rate per run
faith = evaluation.faithfulness_table(items)
runs.atomic_write_text(ctx.out / "faithfulness.csv", faith.to_csv(index=False))
faith
"""),
        md("""
## Ratings

The judge (the teacher model) rates a few explanations per run from 1 to 7; a judgement it does not write in the
asked form is recorded as a failure, never as a number. Gemma 3 270M is a weak judge that mostly copies the scores of
the last worked example in its prompt: read its scores as a demonstration of the procedure, and use a strong judge
(`teacher.backend: openai`) or human raters for the study. The human sheet hides which student wrote what; `ratings.import_sheet` reads a filled copy back.
"""),
        code("""
# the LLM judge's ratings
judged = evaluation.judge_grid(ctx, items)
runs.write_jsonl(ctx.out / "ratings.jsonl", judged)
ratings.ratings_summary(judged, items)
"""),
        code("""
# the judge's scores and justifications, one row per explanation
ratings.ratings_frame(judged).head(12)
"""),
        code("""
# export the blinded human rating sheet (CSV, HTML form, key)
evaluation.export_human_sheet(ctx, items)
"""),
        code("""
# how each metric correlates with the ratings (Spearman; NaN below 3 rated explanations)
correlations = evaluation.metric_correlations(items, judged)
runs.atomic_write_text(ctx.out / "correlations.csv", correlations.to_csv(index=False))
correlations
"""),
        md("""
## CAUSAL students: explaining claims

A CAUSAL student (seed 000) is not asked questions: it reads a held-out Climate-FEVER claim, one evidence sentence and
the label, and writes the causal explanation. CEC and the text metrics compare it with the teacher's explanation of
the same pair. The table is empty when `training.conditions` has no CAUSAL.
"""),
        code("""
# explain the held-out claim-evidence pairs with every CAUSAL run
causal_items = evaluation.evaluate_causal_grid(ctx)
runs.write_jsonl(ctx.out / "causal_items.jsonl", causal_items)
evaluation.causal_summary(causal_items)
"""),
        code("""
# the summary of this step
evaluation.write_summary(ctx.out, items, judged)
"""),
    ],
    "06_statistics": [
        md("""
# 06 · Statistics: are the differences between conditions real?

**Goals**
1. Accuracy and CEC per condition with bootstrap 95% confidence intervals, and paired McNemar tests on the same items.
2. Tukey-Kramer HSD between conditions per test set and student (unequal group sizes allowed), as in seed 001.
3. Two-way ANOVA condition × student size, with Levene and Shapiro-Wilk checks, and Kruskal-Wallis with
   Dunn–Bonferroni as the non-parametric fallback when those checks fail.
4. OLS regression of each outcome, and of judge or human ratings, on condition dummies plus rationale length
   (rater fixed effects when there are several raters), with robust standard errors and stars as in the paper.
5. One self-contained report of the run: every table, figure and sentence, with the manifest's provenance.

**Reads** `05_evaluation/items.jsonl` (and `ratings.jsonl` when present), `04_training/runs.jsonl` and `losses.jsonl`,
`03_counterfactuals/acceptance.json`. **Writes** `06_statistics/<analysis>.csv` (`accuracy.csv`, `tukey_<outcome>.csv`,
`anova_<outcome>.csv`, `kruskal_<outcome>.csv`, `mcnemar.csv`, `ols_<outcome>.csv`, ...), `findings.md`, the figures
(`accuracy_by_condition.png`, `ood_heatmap.png`, ...) and `report.html`.

With few test items or one seed, the tests have little power; when there are too few observations for a test, or an
input (ratings, BLEU / ROUGE / BERTScore, out-of-distribution sets) is absent, the step says so instead of failing.
"""),
        params_cell("06_statistics"),
        open_cell("06_statistics", "from lib import report, runs, stats"),
        code("""
# read the per-item results of step 05, with each student's size from step 04
tables = stats.load_run_tables(ctx.run_dir)
tables.items.groupby(["test_set", "student_size", "condition"]).size()
"""),
        code("""
# run every analysis (a test the data cannot support becomes a note) and write the tables and findings
s = ctx.params.statistics
analysis = stats.analyse(tables, outcomes=s.outcomes, alpha=s.alpha, n_boot=s.n_boot, seed=ctx.params.run.seed)
stats.write_analysis(analysis, ctx.out)
"""),
        md("""
**Accuracy and McNemar.** An interval from resampling items says how much the accuracy would move on another draw
of test questions of the same kind. McNemar pairs two conditions on the *same* items: only items that one gets
right and the other wrong count, which is more sensitive than comparing two accuracies.
"""),
        code("""
# accuracy and CEC with bootstrap confidence intervals
report.show_sections(analysis, "accuracy")
"""),
        code("""
# paired McNemar tests between conditions on the same items
report.show_sections(analysis, "mcnemar")
"""),
        md("""
**Tukey-Kramer, ANOVA and the fallback.** Tukey-Kramer compares every pair of conditions while keeping the chance
of any false alarm at alpha. The two-way ANOVA asks whether condition, student size, or their combination matter;
it assumes equal variances (Levene) and normal residuals (Shapiro-Wilk). Right/wrong outcomes rarely satisfy the
second, so Kruskal-Wallis with Dunn–Bonferroni compares the conditions by ranks instead.
"""),
        code("""
# Tukey-Kramer HSD per test set and student
report.show_sections(analysis, "tukey")
"""),
        code("""
# two-way ANOVA condition x student size, with its assumption checks
report.show_sections(analysis, "anova")
"""),
        code("""
# Kruskal-Wallis and Dunn-Bonferroni (non-parametric)
report.show_sections(analysis, "kruskal")
"""),
        md("""
**Regression.** Coefficients of the condition dummies are differences from the baseline condition, holding
rationale length fixed (longer rationales may score higher for length alone). Ratings get one fixed effect per
rater, because raters differ in how strict they are.
"""),
        code("""
# OLS of outcomes and ratings on condition dummies and rationale length
report.show_sections(analysis, "ols")
"""),
        code("""
# how CEC agrees with BLEU, ROUGE-L and BERTScore
report.show_sections(analysis, "cec_vs_metrics")
"""),
        code("""
# draw every figure of the report into the step folder
figures = report.run_figures(tables, ctx.out)
list(figures)
"""),
        code("""
# accuracy by condition
report.show_figure(figures["accuracy"])
"""),
        code("""
# accuracy in and out of distribution
report.show_figure(figures["ood"])
"""),
        code("""
# CEC against BLEU / ROUGE-L / BERTScore
report.show_figure(figures["cec_vs_metrics"])
"""),
        code("""
# rating distributions
report.show_figure(figures["ratings"])
"""),
        code("""
# write the run's self-contained report (tables, figures, sentences and provenance)
report.write_run_report(ctx.run_dir, analysis, figures)
"""),
    ],
}


def build() -> None:
    """Write every notebook next to this file."""
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        })
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i:02d}"
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    build()
