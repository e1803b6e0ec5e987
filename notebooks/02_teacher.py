# %% [markdown]
# # 02 · Teacher: rationales, critique–revision and causal explanations
#
# **Goals**
# 1. Show the few-shot chain-of-thought prompt the teacher answers, and where every prompt template lives.
# 2. Produce one CoT rationale per training and in-distribution test question with the configured backend:
#    `local` (an in-process model, Gemma 3 270M by default), `openai` (any OpenAI-compatible server: OpenAI, vLLM,
#    Ollama, llama.cpp) or `replay` (the PaLM-540B rationales of *Distilling step-by-step*, CoS-E explanations, or
#    the LLaMA-2-13B explanations, revisions and counterfactual rationales of Hendriks et al.'s *Honey, I Shrunk*).
# 3. Critique–revision (seed 001): initial explanation → the teacher's critique → a revised explanation.
# 4. Structured causal explanations (seed 000) of Climate-FEVER claim–evidence pairs: cause, mechanism, effect.
# 5. Measure the teacher: accuracy against gold, rationale lengths, failures by reason, tokens and cost.
#
# **Reads** `01_data/`. **Writes** `02_teacher/rationales.jsonl` (one row per question), `revisions.jsonl` (one row
# per critiqued training question), `causal.jsonl` (one row per explained claim–evidence pair), `summary.json`,
# `accounting.json`; every row carries the backend, the model and the hashes of its prompt templates. The teacher's
# responses are cached in `<run>/teacher_cache.sqlite`, outside this folder: a rerun makes no calls.
#
# **Follows** METHOD.md, *Teacher data generation* 1, 4 and 6. A failed completion (empty, unparseable, truncated, not
# JSON, a request that never got an answer, a spent budget) is kept with its reason, never silently dropped.
# Test-split rationales are the references that CEC compares students against.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/02_teacher/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import data, figures, files, metrics, prompts, questions, report, runs, teacher

ctx = runs.open_step("02_teacher", params, params_file, run_dir, force)
ctx.out

# %%
# read the splits written by step 01
splits = data.read_splits(ctx.run_dir / "01_data")
data.split_table(splits)

# %% [markdown]
# ## The prompt
#
# Worked examples, each ending in *So the answer is (x) …*, then the new question. The closing sentence is what
# makes the teacher's answer machine-readable. Every template is a file in `lib/templates/`; the sha256 of its text
# is recorded with every output made from it, and is part of the cache key of every request.

# %%
# show the few-shot CoT prompt for the first training question
print(prompts.cot_prompt(splits.train[0], ctx.params.teacher.n_shots))

# %% [markdown]
# ### Under the hood: one prompt, one answer
#
# The library call above is nothing more than string assembly: each worked example is the question, `A:`, its
# rationale and the closing sentence; the new question follows with an open `A:`. Reading the answer back is the
# reverse: find the closing sentence's letter. The cell below does both by hand for one question and checks that the
# library agrees.

# %% tags=["under-the-hood"]
# assemble one CoT prompt by hand, and read the answer letter back from a response
import re

q, n_shots = splits.train[0], ctx.params.teacher.n_shots
shots = "".join(f"{questions.format_question(s)}\nA: {r} So the answer is ({'abcdefgh'[s.answer]}) {s.choices[s.answer]}.\n\n"
                for s, r in prompts.few_shot_examples()[:n_shots])
by_hand = prompts.load_template("cot").text.replace("{shots}", shots).replace("{question}", questions.format_question(q))
assert by_hand == prompts.cot_prompt(q, n_shots)
response = f" Think of where it belongs. So the answer is ({'abcdefgh'[1]}) {q.choices[1]}."
letter = re.search(r"answer is \(([a-h])\)", response).group(1)
assert "abcdefgh".index(letter) == metrics.extract_answer(response, q.choices) == 1
letter

# %% [markdown]
# ## The teacher engine
#
# `make_teacher` opens the response cache and the backend. Each request is looked up first (keyed by backend, model,
# template hash, the rendered prompt, the sampling params and the sample index); only misses are sent, and each
# response is stored the moment it arrives, so an interrupted step resumes where it stopped. A response that fails
# validation (no answer letter, truncated, not JSON) is re-asked at most `teacher.max_reasks` times at
# `teacher.reask_temperature`. With `openai`, at most `teacher.max_in_flight` requests are in flight, 429 / 5xx /
# timeouts are retried with backoff, and `teacher.max_cost_usd` / `teacher.max_requests` stop the run cleanly before
# they would be passed. The API key is read from the variable `teacher.api_key_env` names and is written nowhere.

# %%
# open the cached teacher (the model loads only if a request misses the cache)
engine = teacher.make_teacher(ctx.params.teacher, ctx.params.run.device, ctx.run_dir, seed=ctx.params.run.seed,
                              progress=ctx.progress)

# %%
# ask the teacher for a rationale per question (train and in-distribution test)
rows = teacher.cot_rationales(splits.teacher_questions(), ctx.params.teacher, ctx.params.run.device, engine)
files.write_jsonl(ctx.out / "rationales.jsonl", rows)

# %% [markdown]
# ## How good is the teacher?
#
# A weak teacher (a 270M model) makes many wrong or unparseable rationales; the recorded PaLM-540B teacher agrees with
# gold on 74.3% of CommonsenseQA train and 77.2% of dev. The students in step 04 always learn the gold answer; the
# rationale is the teacher's. Hendriks et al.'s LLaMA-2-13B was shown the gold answer and asked to explain it: its rows
# record no answer (`answer` null, `answer_given` true), so it has no accuracy here and is no predictor in step 05.

# %%
# teacher accuracy, failures and lengths per split
summary = teacher.summarize(rows)
files.write_json(ctx.out / "summary.json", summary)
report.frame_of(summary)

# %%
# distribution of rationale lengths
figures.plot_rationale_lengths(rows, path=ctx.out / "rationale_lengths.png");

# %%
# a few rationales per split
teacher.rationale_examples_frame(rows, n=3)

# %% [markdown]
# ## Critique–revision (seed 001)
#
# Three calls per question: the teacher explains the gold answer, critiques its own explanation (what is missing,
# wrong or unclear; does it say why the other options are wrong?), then rewrites it to meet the critique. Both the
# unrevised and the revised explanation are kept. Only the first `teacher.revise_max_questions` training questions
# are critiqued. The replay backend has no model to critique with: its rows say *not available from replay*, except
# with `replay_source: hendriks`, whose revisions (and unrevised explanations) were recorded; the critiques were not.

# %%
# initial explanation, critique and revision per training question
revisions = teacher.critique_revisions(splits.train, ctx.params.teacher, engine)
files.write_jsonl(ctx.out / "revisions.jsonl", revisions)
teacher.revisions_frame(revisions, n=3)

# %% [markdown]
# Hendriks et al. also recorded a deliberately poor explanation per question (the examples their critique stage learnt
# from). With their replay the table below puts one question's three explanations side by side: unrevised (what
# `rationale_sources: unrevised` trains on), negative, and revised (`revised`); it is empty with any other teacher.

# %%
# one question's unrevised, negative and revised explanation (Hendriks et al.'s replay)
teacher.hendriks_side_by_side(splits.train, ctx.params.teacher, n=1)

# %% [markdown]
# ## Causal explanations (seed 000)
#
# For a claim, one evidence sentence and the evidence's label, the teacher answers with a JSON object naming the cause,
# the mechanism and the effect, grounded in the evidence; the three sentences become the explanation that the CAUSAL
# students learn and that CEC scores against. The first `teacher.causal_max_pairs` pairs of each split are explained.

# %%
# read the claim-evidence pairs written by step 01
pairs = teacher.read_claim_pairs(ctx.artifact("01_data", "claims_train.jsonl"), ctx.artifact("01_data", "claims_test.jsonl"))
{split: len(ps) for split, ps in pairs.items()}

# %%
# ask for a structured causal explanation per claim-evidence pair
causal = teacher.causal_explanations(pairs, ctx.params.teacher, engine)
files.write_jsonl(ctx.out / "causal.jsonl", causal)
teacher.causal_frame(causal, n=3)

# %% [markdown]
# ## Failures and cost
#
# Every output ends valid or with its reason. The accounting below counts the responses each task used (cached or
# not): tokens, and dollars where `teacher.price_*_usd_per_mtok` are set. The session table adds how many requests
# were actually sent this time (zero on a cached rerun) and the wall time.

# %%
# outputs and failures by task and reason
teacher.failures_frame(rows, revisions, causal)

# %%
# tokens and cost per task, as written to accounting.json
files.write_json(ctx.out / "accounting.json", teacher.accounting(engine))
engine.usage_frame()

# %%
# release the teacher (its worker thread and the cache file)
engine.close()

# %% [markdown]
# ## Try it
#
# Each exercise reruns part of the quickstart into a copy of its run folder, so the original stays for comparison: `cp
# -r outputs/quickstart outputs/try && .venv/bin/python -m lib.study params/quickstart.yaml --run-dir outputs/try
# --set KEY=VALUE --steps …` (unchanged steps are skipped; the teacher's cache travels with the copy).
# `.venv/bin/python -m lib.report outputs/quickstart outputs/try -o compare.html` puts the two side by side.
#
# 1. `--set teacher.n_shots=0 --steps 02`: compare the teacher's accuracy and unparseable share in
#    `02_teacher/summary.json` with the default 2 shots. Without worked examples, does a 270M teacher still close
#    with "So the answer is (x)"?
# 2. `--set teacher.max_new_tokens=16 --steps 02`: count the `truncated` failures and look at the length histogram.
#    How many rationales would `training.rationale_filter: parsed` still keep?
# 3. `--set teacher.revise_max_questions=5 --steps 02`: in the revisions table, does the revised explanation say more
#    often why the other options are wrong? `accounting.json` shows the three extra calls per question.
