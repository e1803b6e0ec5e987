"""Training: condition formats, the weighted target-only loss and a few real steps on a tiny model."""

import pytest
import torch

from lib.data import MCQuestion
from lib.models import TINY_GEMMA, load_causal_lm, load_tokenizer
from lib.params import TrainingParams
from lib.training import (
    StudentRun, collate, condition_examples, task_weights, tokenize_examples, train_run, weighted_target_loss,
)

STRATEGY = {"positive": "[Direct election]", "negative": "[Elimination method]"}


def questions():
    return [MCQuestion(id=f"q{i}", question=f"Where is thing {i} kept?", choices=["box", "sky", "sea"],
                       labels=list("ABC"), answer=i % 3) for i in range(3)]


RATIONALES = {"q0": "Things are kept in boxes.", "q1": "Birds fly in the sky.", "q2": "Fish swim in the sea."}
VIEWS = [{"id": "q0", "strategy": "positive", "text": "Boxes hold things."},
         {"id": "q1", "strategy": "negative", "text": "A box is not the sky."}]


def test_condition_formats():
    qs = questions()
    ft = condition_examples("FT", qs, RATIONALES)
    assert ft[0].target == " So the answer is (a) box." and ft[0].prompt.endswith("\nA:")
    cot = condition_examples("FT-CoT", qs, RATIONALES)
    assert cot[1].target == " Birds fly in the sky. So the answer is (b) sky."
    mt = condition_examples("MT", qs, RATIONALES)
    assert sorted({e.task for e in mt}) == ["answer", "rationale"] and len(mt) == 6
    assert mt[0].prompt.startswith("[answer] Q:") and mt[1].prompt.startswith("[rationale] Q:")
    cfd = condition_examples("CFD", qs, RATIONALES, VIEWS, STRATEGY)
    assert cfd[0].prompt.startswith("[Direct election]") and cfd[1].prompt.startswith("[Elimination method]")
    assert cfd[1].target.endswith("So the answer is (b) sky.")
    with pytest.raises(ValueError, match="multi-view artifacts of step 03"):
        condition_examples("CFD", qs, RATIONALES)


def test_mt_weights_follow_alpha():
    assert task_weights("MT", 0.3) == {"answer": 0.3, "rationale": pytest.approx(0.7)}


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(TINY_GEMMA, padding_side="right"), load_causal_lm(TINY_GEMMA)


def test_collate_pads_to_longest_and_masks_prompt(tiny):
    tok, _ = tiny
    rows = tokenize_examples(condition_examples("MT", questions(), RATIONALES), tok, 512, ["answer", "rationale"])
    batch = collate(rows[:3], tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows[:3])
    first = rows[0]
    n_prompt = sum(1 for x in first["labels"] if x == -100)
    assert n_prompt > 0 and all(x != -100 for x in first["labels"][n_prompt:])


def test_target_only_loss_equals_full_logits_loss(tiny):
    tok, model = tiny
    rows = tokenize_examples(condition_examples("FT-CoT", questions(), RATIONALES), tok, 512, ["cot"])
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        ours, terms = weighted_target_loss(model, batch, [1.0])
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    assert terms[0] == pytest.approx(float(ours))


def test_mt_loss_is_weighted_sum_of_task_means(tiny):
    tok, model = tiny
    rows = tokenize_examples(condition_examples("MT", questions(), RATIONALES), tok, 512, ["answer", "rationale"])
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        loss, terms = weighted_target_loss(model, batch, [0.25, 0.75])
    assert set(terms) == {0, 1}
    assert float(loss) == pytest.approx(0.25 * terms[0] + 0.75 * terms[1], rel=1e-6)


@pytest.mark.parametrize("condition", ["FT", "FT-CoT", "MT", "CFD"])
def test_every_condition_trains_and_logs_its_loss_terms(condition, tmp_path):
    params = TrainingParams(students=[TINY_GEMMA], conditions=[condition], max_steps=2, batch_size=2, max_length=128)
    examples = condition_examples(condition, questions(), RATIONALES, VIEWS, STRATEGY)
    result = train_run(StudentRun(condition, TINY_GEMMA, 0), examples, params, tmp_path / condition, "cpu")
    assert result["steps"] == 2 and (tmp_path / condition / "adapter" / "adapter_config.json").exists()
    from lib.runs import read_jsonl

    terms = {r["term"] for r in read_jsonl(tmp_path / condition / "losses.jsonl")}
    assert terms == set(task_weights(condition, 0.5)) | {"total"}
    again = train_run(StudentRun(condition, TINY_GEMMA, 0), examples, params, tmp_path / condition, "cpu")
    assert again == result  # a finished run with the same config is skipped, not retrained
