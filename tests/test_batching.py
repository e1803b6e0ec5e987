"""Batch order: a question's examples together (MT's two tasks in one batch), batches grouped by length."""

import pytest
import torch

from lib.batching import question_grouped_order, QuestionGroupedSampler
from lib.examples import condition_examples
from lib.files import read_jsonl
from lib.models import TINY_GEMMA
from lib.params import TrainingParams
from lib.questions import MCQuestion
from lib.training import StudentRun, train_run


def mt_shaped(n_questions: int) -> tuple[list[str], list[int]]:
    """MT's shape: per question a short answer example and a long rationale example, lengths varying by question."""
    qids = [f"q{i}" for i in range(n_questions) for _ in range(2)]
    lengths = [base + extra for i in range(n_questions) for base, extra in ((20 + i % 7, 0), (20 + i % 7, 30))]
    return qids, lengths


def test_every_example_once_and_each_question_in_one_batch():
    qids, lengths = mt_shaped(100)
    order = question_grouped_order(qids, lengths, 8, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(qids)))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    for b in batches:
        per_question = {qids[i] for i in b}
        assert len(b) == 2 * len(per_question)  # whole questions only: both tasks of each
        assert {lengths[i] - min(lengths[j] for j in b if qids[j] == qids[i]) for i in b} == {0, 30}


def test_chunks_are_sorted_by_length_and_seeds_differ():
    qids, lengths = mt_shaped(400)  # 800 examples, batch 4: chunks of 50 batches (200 examples)
    order = question_grouped_order(qids, lengths, 4, torch.Generator().manual_seed(1))
    for start in range(0, len(order), 200):
        longest = [max(lengths[order[i]], lengths[order[i + 1]]) for i in range(start, start + 200, 2)]
        assert longest == sorted(longest, reverse=True)
    assert order != question_grouped_order(qids, lengths, 4, torch.Generator().manual_seed(2))


def test_sampler_order_depends_on_seed_and_epoch_only():
    qids, lengths = mt_shaped(50)
    rows = [{"qid": q, "input_ids": [0] * n} for q, n in zip(qids, lengths)]
    sampler = QuestionGroupedSampler(rows, 4, seed=3)
    first = list(sampler)
    torch.manual_seed(99)  # the global random state of a resumed run does not move it
    assert list(sampler) == first and len(sampler) == len(rows)
    sampler.set_epoch(1)
    assert sorted(sampler) == sorted(first) and list(sampler) != first


def test_lengths_must_match_the_question_ids():
    with pytest.raises(ValueError, match="one of each per example"):
        question_grouped_order(["q0", "q1"], [3], 2)


def test_every_mt_step_trains_both_tasks(tmp_path):
    """Distilling step-by-step's loss, alpha * L_answer + (1 - alpha) * L_rationale, in every step.

    Sorting by length alone (transformers' group_by_length) put answers and rationales in separate batches.
    """
    qs = [MCQuestion(id=f"q{i}", question=f"Where is thing {i} kept?", choices=["box", "sky", "sea"],
                     labels=list("ABC"), answer=i % 3) for i in range(40)]
    rationales = {q.id: "Things of this kind are kept in places that hold them. " * (1 + q.answer) for q in qs}
    examples = condition_examples("MT", qs, rationales)
    params = TrainingParams(students=[TINY_GEMMA], conditions=["MT"], max_steps=12, batch_size=2, max_length=256,
                            lora={"target_modules": ["q_proj", "v_proj"]})
    train_run(StudentRun("MT", TINY_GEMMA, 0), examples, params, tmp_path / "MT", "cpu")
    terms: dict[int, set[str]] = {}
    for r in read_jsonl(tmp_path / "MT" / "losses.jsonl"):
        terms.setdefault(r["step"], set()).add(r["term"])
    assert len(terms) == 12 and all(t == {"answer", "rationale", "total"} for t in terms.values())
