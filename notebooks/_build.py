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
# 02 · Teacher: chain-of-thought rationales

**Goals**
1. Show the few-shot chain-of-thought prompt the teacher answers.
2. Produce one rationale per training and in-distribution test question with the configured backend:
   `local` (an in-process model, Gemma 3 270M by default) or `replay` (the PaLM-540B rationales published with
   *Distilling step-by-step*).
3. Measure the teacher: accuracy against gold, failures by reason, rationale lengths.

**Reads** `01_data/`. **Writes** `02_teacher/rationales.jsonl` (one row per question, with backend, model and the
prompt template's hash) and `02_teacher/summary.json`.

**Follows** METHOD.md, *Teacher data generation* 1. A failed completion (empty, unparseable, truncated) is kept with
its reason, never silently dropped. Test-split rationales are the references that CEC compares students against.
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
makes the teacher's answer machine-readable.
"""),
        code("""
# show the few-shot CoT prompt for the first training question
print(prompts.cot_prompt(splits.train[0], ctx.params.teacher.n_shots))
"""),
        code("""
# ask the teacher for a rationale per question (train and in-distribution test)
rows = teacher.cot_rationales(splits.teacher_questions(), ctx.params.teacher, ctx.params.run.device)
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
    ],
    "03_counterfactuals": [
        md("""
# 03 · Counterfactual questions and multi-view chain of thought

**Goals**
1. Mask the words that decide a question's answer (CommonsenseQA's `question_concept`, located in the text).
2. Ask the teacher to refill the mask so that a former distractor becomes the answer; reject refills that leave the
   question unchanged or name the old answer.
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
# load the teacher model that refills masks and votes
refiller = teacher.LocalTeacher(ctx.params.teacher, ctx.params.run.device)
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
the question cannot do this, one that uses its rationale can.
"""),
        code("""
# write one counterfactual rationale per training question (arguing for a random wrong option)
cf_rationales = counterfactual.build_cf_rationales(splits.train, refiller, ctx.params.counterfactual, ctx.params.run.seed)
runs.write_jsonl(ctx.out / "cf_rationales.jsonl", cf_rationales)
counterfactual.views_frame(cf_rationales, counterfactual.CounterfactualRationale).head(3)
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
`config.json`, `losses.jsonl`, `done.json`), `runs.jsonl`, `loss_curves.png`.

| condition | input → target | loss |
|---|---|---|
| FT | question → answer | CE on the answer |
| FT-CoT | question → rationale, then answer | CE on rationale + answer |
| MT | `[answer]` question → answer; `[rationale]` question → rationale | α·L_answer + (1−α)·L_rationale |
| CFD | `[Direct election]` / `[Elimination method]` question → positive / negative view + answer, originals and counterfactuals | CE on the target |

The loss counts target tokens only, and the LM head is applied only at target positions.
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
    ],
    "05_evaluation": [
        md("""
# 05 · Evaluation: accuracy and explanation quality

**Goals**
1. Let every trained student write a rationale and an answer for each test question, in and out of distribution.
2. Extract the answer (unparseable outputs count as wrong and are counted separately).
3. Score each rationale against the teacher's with CEC, Causal Explanation Coherence (seed 000): forward coverage,
   backward faithfulness and their mean, over sentence embeddings.

**Reads** `01_data/tests/`, `02_teacher/rationales.jsonl`, `04_training/`. **Writes** `05_evaluation/items.jsonl`
(one row per run × item), `summary.csv`, `accuracy.png`, `cec.png`.
"""),
        params_cell("05_evaluation"),
        open_cell("05_evaluation", "from lib import evaluation, report, runs"),
        code("""
# generate and score every run on every test set
items = evaluation.evaluate_grid(ctx)
runs.write_jsonl(ctx.out / "items.jsonl", items)
"""),
        code("""
# accuracy, unparseable share and CEC per run and test set
summary = evaluation.summary_table(items)
runs.atomic_write_text(ctx.out / "summary.csv", summary.to_csv(index=False))
summary
"""),
        code("""
# accuracy by condition with 95% bootstrap intervals
report.plot_accuracy(evaluation.items_frame(items), path=ctx.out / "accuracy.png");
"""),
        code("""
# CEC by condition
report.plot_cec(evaluation.items_frame(items), path=ctx.out / "cec.png");
"""),
        code("""
# a few explanations with their CEC components
evaluation.items_frame(items).groupby("condition").head(2)[["condition", "item_id", "correct", "rationale", "cec_fc", "cec_bf", "cec"]]
"""),
    ],
    "06_statistics": [
        md("""
# 06 · Statistics: are the differences between conditions real?

**Goals**
1. Accuracy and CEC per condition with bootstrap 95% confidence intervals.
2. Tukey-Kramer HSD between conditions (unequal group sizes allowed), as in seed 001.
3. OLS regression of each per-item outcome on condition dummies plus rationale length, with robust standard errors.

**Reads** `05_evaluation/items.jsonl`. **Writes** `06_statistics/accuracy.csv`, `tukey_<outcome>.csv`,
`ols_<outcome>.csv`, `findings.md`, `accuracy_by_condition.png`.

With few test items or one seed, the tests have little power; when there are too few observations for a test, the
step says so instead of failing.
"""),
        params_cell("06_statistics"),
        open_cell("06_statistics", "from lib import report, runs, stats"),
        code("""
# read the per-item results of step 05
items = stats.read_items(ctx.artifact("05_evaluation", "items.jsonl"))
items.groupby("condition").size()
"""),
        code("""
# accuracy and CEC per condition with bootstrap confidence intervals
accuracy = stats.accuracy_table(items, n_boot=ctx.params.statistics.n_boot, seed=ctx.params.run.seed)
runs.atomic_write_text(ctx.out / "accuracy.csv", accuracy.to_csv(index=False))
accuracy
"""),
        code("""
# Tukey-Kramer and OLS for each outcome (too few observations are reported, not raised)
results = stats.compare_conditions(items, ctx.params.statistics.outcomes)
stats.write_results(results, ctx.out)
"""),
        code("""
# the findings in plain sentences
report.show_markdown(stats.findings_markdown(results))
"""),
        code("""
# accuracy by condition
report.plot_accuracy(items, path=ctx.out / "accuracy_by_condition.png");
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
