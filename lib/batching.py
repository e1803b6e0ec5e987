"""The order training examples are batched in: a question's examples together, batches of similar length.

Distilling step-by-step trains its multi-task student on one loss per batch, alpha * L_answer + (1 - alpha) *
L_rationale, over the same questions. MT here has one example per task and question, and a sampler that only
groups by length (transformers' `group_by_length`) puts the short answer examples and the long rationale
examples in different batches: whole stretches of steps then train one task, and a run can end on a stretch of
answer-only steps that unlearns the rationale task. `question_grouped_order` keeps each question's examples next
to each other (so with an even batch size MT's two tasks of a question share a batch) and still sorts by length
within large random chunks, which is what keeps padding, and so CPU time, low.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

# questions' examples per random chunk that is sorted by length, in batches (transformers uses the same 50)
MEGABATCH_BATCHES = 50


def question_groups(qids: Sequence[str]) -> list[list[int]]:
    """Indices of the examples of each question, questions in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(qids):
        groups.setdefault(q, []).append(i)
    return list(groups.values())


def question_grouped_order(qids: Sequence[str], lengths: Sequence[int], batch_size: int,
                           generator: Any = None) -> list[int]:
    """Every example index once: questions shuffled, each question's examples adjacent, sorted by length by chunk.

    The questions are drawn in a random order (`generator`, a torch.Generator; None: torch's global one), cut into chunks of about `MEGABATCH_BATCHES` batches of examples, and each chunk's questions are
    sorted by their longest example, longest first. A question whose examples do not fit in what is left of a batch
    continues in the next one (never the case for MT, two examples a question, with an even batch size).
    """
    import torch

    if len(qids) != len(lengths):
        raise ValueError(f"{len(qids)} question ids for {len(lengths)} lengths: one of each per example")
    groups = question_groups(qids)
    order = [groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()]
    chunk = max(1, min(len(qids) // (batch_size * 4), MEGABATCH_BATCHES)) * batch_size  # examples per chunk
    out: list[int] = []
    start = 0
    while start < len(order):
        end, size = start, 0
        while end < len(order) and (size < chunk or end == start):
            size += len(order[end])
            end += 1
        for g in sorted(order[start:end], key=lambda g: max(lengths[i] for i in g), reverse=True):
            out.extend(g)
        start = end
    return out


class QuestionGroupedSampler:
    """A torch Sampler over a tokenized training set (rows with `qid` and `input_ids`): `question_grouped_order`.

    Epoch e's order is drawn from `seed + e` (the Trainer calls `set_epoch`), so a run resumed from a checkpoint
    skips exactly the batches it trained on before, whatever the random state it resumes with.
    """

    def __init__(self, rows: Sequence[dict], batch_size: int, seed: int = 0):
        self.qids = [r["qid"] for r in rows]
        self.lengths = [len(r["input_ids"]) for r in rows]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration's order for this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.qids)

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(question_grouped_order(self.qids, self.lengths, self.batch_size, generator))
