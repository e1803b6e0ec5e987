# %% [markdown]
# # 03 · Counterfactual questions and multi-view chain of thought
#
# **Goals**
# 1. Ask the teacher which words decide a question's answer, locate them in the text and mask them
#    (CommonsenseQA's `question_concept` is the fallback and is kept beside them).
# 2. Ask the teacher to refill the mask so that a former distractor becomes the answer; reject refills that leave the
#    question unchanged, rewrite words outside the mask, name the old answer, or spell out the new one (a question
#    that contains its answer teaches word overlap, not reasoning).
# 3. Keep a counterfactual only when several sampled teacher reasoning paths agree on the new answer (self-consistency).
# 4. Build multi-view CoT: a positive view (`[Direct election]`, why the answer is right) and negative views
#    (`[Elimination method]`, why a wrong option is wrong).
#
# **Reads** `01_data/`, `02_teacher/rationales.jsonl`. **Writes** `03_counterfactuals/counterfactuals.jsonl` (every
# attempt with its span, refill, votes and outcome), `cf_questions.jsonl` (accepted ones as questions),
# `multiview.jsonl`, `cf_rationales.jsonl` (rationales arguing for a wrong option), `acceptance.json`.
#
# **Follows** seed 002 (*Teaching Small Language Models Reasoning through Counterfactual Distillation*): a student that
# sees minimally edited questions whose answer changes must attend to the words that cause the answer.

# %% tags=["parameters"]
# parameters (papermill injects the resolved study params after this cell)
params: dict = {}  # resolved study params injected by the runner (python -m lib.study); empty means: read params_file
params_file: str = "../params/quickstart.yaml"  # study params used when the notebook runs on its own
run_dir: str = "../outputs/quickstart"  # run folder: upstream artifacts are read here, this step writes to run_dir/03_counterfactuals/
force: bool = False  # recompute what this step would reuse: trained runs, cached student outputs (the runner's --force)

# %%
# validate the parameters and open this step's folder in the run
from lib import counterfactual, data, prompts, report, runs, teacher

ctx = runs.open_step("03_counterfactuals", params, params_file, run_dir, force)
ctx.out

# %%
# read the training questions and their step-02 rationales
splits = data.read_splits(ctx.run_dir / "01_data")
rationales = teacher.read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "train",
                                     ctx.params.training.rationale_filter)
len(splits.train), len(rationales)

# %%
# open the cached teacher that refills masks and votes (the cache of step 02: a rerun makes no calls)
refiller = teacher.make_teacher(ctx.params.teacher, ctx.params.run.device, ctx.run_dir, seed=ctx.params.run.seed)

# %% [markdown]
# ## Mask, refill, vote
#
# For each of the first `counterfactual.max_questions` training questions the concept is masked, the teacher fills the
# mask towards the new target, and `votes` sampled reasoning paths (temperature `vote_temperature`) answer the new
# question. It is accepted when at least `accept_threshold` of them pick the new target.

# %%
# build counterfactual questions
cfs = counterfactual.build_counterfactuals(splits.train, refiller, ctx.params.counterfactual,
                                           ctx.params.teacher.n_shots, ctx.params.run.seed)
runs.write_jsonl(ctx.out / "counterfactuals.jsonl", cfs)

# %% [markdown]
# ### Under the hood: one counterfactual by hand
#
# Take one attempt: cut the located words out of the question and put `[MASK]` in their place, show the prompt
# that asks the teacher to refill the mask so that the new target becomes right, then count the sampled votes that
# reach the new target. The attempt is accepted when that share reaches `counterfactual.accept_threshold`.

# %% tags=["under-the-hood"]
# mask one question, show its refill prompt, and decide it from its votes by hand
c = next((c for c in cfs if c.span), cfs[0])
start, end = c.span or (0, 0)
masked = c.original[:start] + "[MASK]" + c.original[end:] if c.span else ""
target_text = splits.train[[q.id for q in splits.train].index(c.source_id)].choices[c.new_target]
print(prompts.load_template("refill").render(target=target_text, masked=masked), "→", repr(c.refill))
share = sum(v == c.new_target for v in c.votes) / len(c.votes) if c.votes else 0.0
accepted = bool(c.votes) and share >= ctx.params.counterfactual.accept_threshold
assert masked == c.masked and share == c.vote_share and accepted == c.accepted
print(f"votes {c.votes} for target {c.new_target}: share {share:.2f} → {'accepted' if accepted else c.reason}")

# %%
# original, masked and counterfactual side by side (changed words in bold)
report.show_markdown_table(counterfactual.side_by_side(cfs))

# %%
# acceptance rate and rejection reasons
acceptance = counterfactual.acceptance_summary(cfs, splits.train)
runs.write_json(ctx.out / "acceptance.json", acceptance)
report.plot_acceptance(acceptance, path=ctx.out / "acceptance.png");

# %%
# keep the accepted counterfactuals as training questions
cf_questions = counterfactual.accepted_questions(cfs, splits.train)
runs.write_jsonl(ctx.out / "cf_questions.jsonl", cf_questions)
len(cf_questions)

# %% [markdown]
# ## Multi-view chain of thought
#
# Original questions reuse their step-02 rationale as the positive view; accepted counterfactuals get a new positive
# view; `negative_views` wrong options per question get a refutation.

# %%
# build positive and negative views
views = counterfactual.build_views(splits.train, cf_questions, rationales, refiller, ctx.params.counterfactual,
                                   ctx.params.run.seed)
runs.write_jsonl(ctx.out / "multiview.jsonl", views)

# %%
# a few views of each kind
counterfactual.views_frame(views).groupby(["origin", "strategy"]).head(2)

# %% [markdown]
# ## Counterfactual rationales
#
# Counterfactual training (seed 001, after SCOTT) pairs each question with a rationale written as if a wrong option
# were right, and trains the student to follow that rationale to *that* option: a student that only pattern-matches
# the question cannot do this, one that uses its rationale can. The test questions' counterfactual rationales are
# never trained on: step 05 forces them into the student's answer to see whether the answer follows (faithfulness).

# %%
# write a counterfactual rationale (for a random wrong option) per training and in-distribution test question
cf_rationales = counterfactual.build_cf_rationales(splits.teacher_questions(), refiller, ctx.params.counterfactual,
                                                   ctx.params.run.seed)
runs.write_jsonl(ctx.out / "cf_rationales.jsonl", cf_rationales)
counterfactual.views_frame(cf_rationales, counterfactual.CounterfactualRationale).head(3)

# %%
# release the teacher (its worker thread and the cache file)
refiller.close()
