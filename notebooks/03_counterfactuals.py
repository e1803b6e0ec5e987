# %% [markdown]
# # 03 · Counterfactual questions and multi-view chain of thought
#
# **Goals**
# 1. Ask the teacher which words decide a question's answer and mask every occurrence of every phrase it named that
#    is in the question (CommonsenseQA's `question_concept` is the fallback and is kept beside them).
# 2. Pick the new answer (a former distractor, or a new option the teacher proposes) and ask the teacher to refill
#    the masks so that it becomes right; reject refills that leave the question unchanged, rewrite words outside the
#    masks, name the old answer, or spell out the new one (a question that contains its answer teaches word overlap,
#    not reasoning).
# 3. Keep a counterfactual only when several sampled teacher reasoning paths agree on the new answer
#    (self-consistency), and see what every other bar of agreement would have kept.
# 4. Build multi-view CoT for every training question: a positive view (`[Direct election]`, why the answer is
#    right, kept only when it reaches the gold answer) and a negative view per wrong option (`[Elimination method]`,
#    why it is wrong); count what is dropped and why.
#
# **Reads** `01_data/`, `02_teacher/rationales.jsonl`. **Writes** `03_counterfactuals/counterfactuals.jsonl` (every
# attempt with its masked spans, options, refill, votes and outcome), `cf_questions.jsonl` (accepted ones as
# questions), `multiview.jsonl` (views trained on), `multiview_dropped.jsonl` (views dropped, with the reason),
# `multiview_summary.json`, `cf_rationales.jsonl` (rationales arguing for a wrong option), `acceptance.json`.
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
from lib import counterfactual, data, figures, files, multiview, prompts, report, runs, teacher

ctx = runs.open_step("03_counterfactuals", params, params_file, run_dir, force)
ctx.out

# %%
# read the training questions and their step-02 rationale rows (failed ones too: step 03 judges them itself)
splits = data.read_splits(ctx.run_dir / "01_data")
step02_rows = multiview.read_step02_rows(ctx.artifact("02_teacher", "rationales.jsonl"), "train")
len(splits.train), len(step02_rows)

# %%
# open the cached teacher of this step: it finds topic words, refills masks, votes and writes views (the cache of
# step 02: a rerun makes no calls)
cf_teacher = teacher.make_teacher(ctx.params.teacher, ctx.params.run.device, ctx.run_dir, seed=ctx.params.run.seed,
                                  progress=ctx.progress)

# %% [markdown]
# ## Mask, refill, vote
#
# For each of the first `counterfactual.max_questions` training questions the teacher names the words that decide its
# answer; every occurrence of every named phrase found in the question (whole words, any case; the longer one where two
# overlap) becomes a `[MASK]`, and only when none is found are the occurrences of CommonsenseQA's `question_concept`
# masked instead (`span_source` says which). The new target is a former distractor, or with
# `new_target: new_option` a new answer the teacher proposes, which takes the place of a randomly drawn distractor (the
# option count and the other letters stay). The teacher fills the masks towards it: one mask gets one phrase, several
# get one phrase each, in order, separated by ";" (`refill_masks.txt`), so no word outside the masks changes. Then
# `votes` sampled reasoning paths (temperature `vote_temperature`, up to `vote_max_new_tokens` tokens: a path cut off
# before its answer names no option) answer the new question; it is accepted when at least `accept_threshold` of them
# pick the new target.

# %%
# build counterfactual questions
cfs = counterfactual.build_counterfactuals(splits.train, cf_teacher, ctx.params.counterfactual,
                                           ctx.params.teacher.n_shots, ctx.params.run.seed)
files.write_jsonl(ctx.out / "counterfactuals.jsonl", cfs)

# %% [markdown]
# ### Under the hood: one counterfactual by hand
#
# Take one attempt (one with several masks when there is one): walk through the question from left to right, keeping
# the text between the located spans and putting `[MASK]` on each, show the prompt that asks the teacher to refill
# the masks so that the new target becomes right, then count the sampled votes that reach the new target. The attempt
# is accepted when that share reaches `counterfactual.accept_threshold`; every other bar j/k is one comparison away.

# %% tags=["under-the-hood"]
# mask every located span of one question, show its refill prompt, and decide it from its votes by hand
c = max(cfs, key=lambda c: (len(c.spans), bool(c.votes)))
masked, cut = "", 0
for start, end in c.spans:  # left to right: the text up to the span, then a mask in its place
    masked, cut = masked + c.original[cut:start] + "[MASK]", end
masked = masked + c.original[cut:] if c.spans else ""
template = "refill" if masked.count("[MASK]") == 1 else "refill_masks"
print(prompts.load_template(template).render(target=c.choices[c.new_target], masked=masked), "→", repr(c.refill))
hits = sum(v == c.new_target for v in c.votes)
share = hits / len(c.votes) if c.votes else 0.0
accepted = bool(c.votes) and share >= ctx.params.counterfactual.accept_threshold
assert masked == c.masked and share == c.vote_share and accepted == c.accepted
print(f"votes {c.votes} for target {c.new_target}: share {share:.2f} → {'accepted' if accepted else c.reason}")
print("kept at each bar:", {f"{j}/{len(c.votes)}": hits >= j for j in range(1, len(c.votes) + 1)})

# %%
# original, masked and counterfactual side by side (masked and refilled words in bold)
report.show_markdown_table(counterfactual.side_by_side(cfs))

# %%
# acceptance rate and rejection reasons
acceptance = counterfactual.acceptance_summary(cfs, splits.train)
files.write_json(ctx.out / "acceptance.json", acceptance)
figures.plot_acceptance(acceptance, path=ctx.out / "acceptance.png");

# %% [markdown]
# Every vote is recorded, so the bar can be moved afterwards without asking the teacher again: the table counts, of the
# `voted` counterfactuals, how many each bar j/k (at least j of the k paths reach the new target) would accept, and of
# the votes, how many named no option (a path cut off or rambling) and how many named the new target.

# %%
# counterfactuals accepted at every vote bar, and how many masks the questions got
report.show_markdown_table([{"voted": acceptance["voted"], **acceptance["acceptance_by_bar"],
                             "votes": acceptance["votes_cast"], "naming no option": acceptance["votes_unparsed"],
                             "for the new target": acceptance["votes_for_target"],
                             "masks per question": acceptance["masks_per_question"]}])

# %%
# keep the accepted counterfactuals as training questions
cf_questions = counterfactual.accepted_questions(cfs, splits.train)
files.write_jsonl(ctx.out / "cf_questions.jsonl", cf_questions)
len(cf_questions)

# %% [markdown]
# ## Multi-view chain of thought
#
# An original question's positive view is its step-02 rationale, kept only when the teacher's completion reached the
# gold option (a rationale that concludes another option would teach `[Direct election]` to argue for the wrong one);
# accepted counterfactuals get a new positive view. Every training question (all originals, also those without a
# positive view, and every accepted counterfactual) gets a refutation of each wrong option (at most `negative_views`;
# null = all), asked with a prompt whose answer opens "(x) … is not the answer because": asked bare, a small teacher
# names an answer instead of refuting one. A view that is empty, or that concludes the option it should refute, is
# dropped, and counted below.

# %%
# build positive and negative views, and keep the dropped ones with their reasons
views, dropped_views = multiview.build_views(splits.train, cf_questions, step02_rows, cf_teacher,
                                             ctx.params.counterfactual, ctx.params.run.seed)
files.write_jsonl(ctx.out / "multiview.jsonl", views)
files.write_jsonl(ctx.out / "multiview_dropped.jsonl", dropped_views)

# %%
# views kept and dropped, by origin, strategy and reason
view_counts = multiview.views_summary(views, dropped_views)
files.write_json(ctx.out / "multiview_summary.json", view_counts)
report.show_markdown_table(view_counts["outcomes"])

# %%
# a few views of each kind
multiview.views_frame(views).groupby(["origin", "strategy"]).head(2)

# %% [markdown]
# ## Counterfactual rationales
#
# Counterfactual training (seed 001, after SCOTT) pairs each question with a rationale written as if a wrong option
# were right, and trains the student to follow that rationale to *that* option: a student that only pattern-matches
# the question cannot do this, one that uses its rationale can. The test questions' counterfactual rationales are
# never trained on: step 05 forces them into the student's answer to see whether the answer follows (faithfulness).

# %%
# write a counterfactual rationale (for a random wrong option) per training and in-distribution test question
cf_rationales = counterfactual.build_cf_rationales(splits.teacher_questions(), cf_teacher, ctx.params.counterfactual,
                                                   ctx.params.run.seed)
files.write_jsonl(ctx.out / "cf_rationales.jsonl", cf_rationales)
counterfactual.cf_rationales_frame(cf_rationales).head(3)

# %%
# release the teacher (its worker thread and the cache file)
cf_teacher.close()

# %% [markdown]
# ## Try it
#
# 1. `--set counterfactual.new_target=new_option`: the teacher proposes a new answer for each masked question. Which
#    options did it propose (`new target` column above), and how many were rejected for repeating an option?
# 2. `--set counterfactual.accept_threshold=1.0`: the acceptance table above already says how many counterfactuals
#    the k/k bar keeps; check that `acceptance.json` now accepts exactly that many.
# 3. `--set counterfactual.negative_views=1`: one refutation per question instead of one per wrong option. How many
#    `[Elimination method]` examples does step 04 then train CFD on?

