"""Training: condition formats, the weighted target-only loss and a few real steps on a tiny model."""

import pytest
import torch

from lib.data import MCQuestion
from lib.models import TINY_GEMMA, TINY_T5, generate_texts, load_causal_lm, load_seq2seq_lm, load_tokenizer
from lib.params import TrainingParams
from lib.training import (
    StudentRun, causal_prompt, collate, condition_examples, eval_prompts, task_weights, tokenize_examples, train_run,
    weighted_target_loss,
)

STRATEGY = {"positive": "[Direct election]", "negative": "[Elimination method]"}


def questions():
    return [MCQuestion(id=f"q{i}", question=f"Where is thing {i} kept?", choices=["box", "sky", "sea"],
                       labels=list("ABC"), answer=i % 3) for i in range(3)]


RATIONALES = {"q0": "Things are kept in boxes.", "q1": "Birds fly in the sky.", "q2": "Fish swim in the sea."}
CF_RATIONALES = [{"id": "q0", "option": 1, "text": "Things float up to the sky.", "teacher_model": "t", "template_sha256": "x"},
                 {"id": "q1", "option": 2, "text": "Birds live under the sea.", "teacher_model": "t", "template_sha256": "x"},
                 {"id": "q2", "option": 2, "text": "This one names the gold option and is dropped.",
                  "teacher_model": "t", "template_sha256": "x"}]
CAUSAL_ROWS = [{"id": "c0", "split": "train", "claim": "Ice melts.", "evidence": "Warming raises temperature.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Warming causes melting.",
                "failure": None},
               {"id": "c1", "split": "train", "claim": "Seas rise.", "evidence": "Water expands when heated.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Heat expands water.",
                "failure": None},
               {"id": "c2", "split": "train", "claim": "x", "evidence": "y", "claim_label": "REFUTES",
                "evidence_label": "REFUTES", "explanation": "", "failure": "empty"},
               {"id": "c3", "split": "test", "claim": "CO2 warms.", "evidence": "CO2 traps heat.",
                "claim_label": "SUPPORTS", "evidence_label": "SUPPORTS", "explanation": "Trapping heat warms.",
                "failure": None}]
ALL_CONDITIONS = ["FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD", "CAUSAL"]


def all_examples(condition):
    return condition_examples(condition, questions(), RATIONALES, VIEWS, STRATEGY, None, CF_RATIONALES, CAUSAL_ROWS)


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


def test_cf_formats_follow_scott():
    cf = all_examples("CF")
    fact = [e for e in cf if e.task == "factual"]
    counter = [e for e in cf if e.task == "counterfactual"]
    assert len(fact) == 3 and len(counter) == 2  # q2's row argues for the gold option: dropped
    assert fact[0].prompt.startswith("[factual] Q:") and fact[0].target == " Things are kept in boxes. So the answer is (a) box."
    assert counter[0].prompt.startswith("[counterfactual] Q:")
    assert counter[0].target == " Things float up to the sky. So the answer is (b) sky."
    both = all_examples("MT+CF")
    assert {e.task for e in both} == {"answer", "rationale", "factual", "counterfactual"} and len(both) == 11
    assert eval_prompts("CF", questions()[0], "[Direct election]")["answer"].startswith("[factual] Q:")
    with pytest.raises(ValueError, match="cf_rationales.jsonl"):
        condition_examples("CF", questions(), RATIONALES)
    with pytest.raises(ValueError, match="rerun step 03"):
        condition_examples("CF", questions(), RATIONALES, cf_rationales=CF_RATIONALES[2:])


def test_mt_cf_weights_nest_alpha():
    w = task_weights("MT+CF", 0.3)
    assert w == pytest.approx({"answer": 0.09, "rationale": 0.21, "factual": 0.7, "counterfactual": 0.7})
    assert task_weights("CF", 0.3) == {"factual": 1.0, "counterfactual": 1.0}


def test_causal_format_uses_train_rows_without_failure():
    ex = all_examples("CAUSAL")
    assert [e.qid for e in ex] == ["c0", "c1"] and {e.task for e in ex} == {"explanation"}
    assert ex[0].prompt == "Claim: Ice melts.\nEvidence: Warming raises temperature.\nLabel: SUPPORTS\nExplanation:"
    assert ex[0].target == " Warming causes melting."
    assert causal_prompt(CAUSAL_ROWS[3]).startswith("Claim: CO2 warms.")
    with pytest.raises(ValueError, match="step 02_teacher"):
        condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[2:3])
    with pytest.raises(ValueError, match="causal_prompt"):
        eval_prompts("CAUSAL", questions()[0], "[Direct election]")


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


def test_seq2seq_target_only_loss_equals_model_loss():
    tok, model = load_tokenizer(TINY_T5, padding_side="right"), load_seq2seq_lm(TINY_T5)
    rows = tokenize_examples(condition_examples("MT", questions(), RATIONALES), tok, 512, ["answer", "rationale"],
                             seq2seq=True)
    assert all(-100 not in r["labels"] for r in rows)  # labels are the decoder's targets alone
    batch = collate(rows, tok.pad_token_id)
    assert batch["labels"].shape[1] == max(len(r["labels"]) for r in rows) < batch["input_ids"].shape[1]
    with torch.no_grad():
        ours, _ = weighted_target_loss(model, batch, [1.0, 1.0])
        mean_of_terms, terms = weighted_target_loss(model, {**batch, "task_ids": batch["task_ids"] * 0}, [1.0])
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(mean_of_terms) == pytest.approx(float(reference), rel=1e-5)
    assert float(ours) > 0 and len(terms) == 1


STUDENTS = {TINY_GEMMA: ["q_proj", "v_proj"], TINY_T5: ["q", "v"]}


@pytest.mark.parametrize("student", list(STUDENTS))
@pytest.mark.parametrize("condition", ALL_CONDITIONS)
def test_every_condition_trains_and_logs_its_loss_terms(condition, student, tmp_path):
    params = TrainingParams(students=[student], conditions=[condition], max_steps=2, batch_size=8, max_length=128,
                            lora={"target_modules": STUDENTS[student]})
    examples = all_examples(condition)
    result = train_run(StudentRun(condition, student, 0), examples, params, tmp_path / condition, "cpu")
    assert result["steps"] == 2 and (tmp_path / condition / "adapter" / "adapter_config.json").exists()
    assert result["task"] == ("causal" if condition == "CAUSAL" else "mc")
    assert result["architecture"] == ("encoder-decoder" if student == TINY_T5 else "decoder-only")
    from lib.runs import read_jsonl

    terms = {r["term"] for r in read_jsonl(tmp_path / condition / "losses.jsonl")}
    assert terms == set(task_weights(condition, 0.5)) | {"total"}
    losses = read_jsonl(tmp_path / condition / "losses.jsonl")
    assert all(r["loss"] > 0 and r["loss"] == r["loss"] for r in losses)  # finite, positive cross-entropy per term
    again = train_run(StudentRun(condition, student, 0), examples, params, tmp_path / condition, "cpu")
    assert again == result  # a finished run with the same config is skipped, not retrained


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    from lib.runs import read_jsonl, write_jsonl

    examples = all_examples("MT")
    first = TrainingParams(students=[TINY_GEMMA], conditions=["MT"], max_steps=2, batch_size=2, max_length=128,
                           save_steps=2)
    out = tmp_path / "MT"
    train_run(StudentRun("MT", TINY_GEMMA, 0), examples, first, out, "cpu")
    assert (out / "trainer" / "checkpoint-2" / "term_log.jsonl").exists()
    (out / "done.json").unlink()  # as if the run had been stopped right after its checkpoint at step 2
    log_file = out / "trainer" / "checkpoint-2" / "term_log.jsonl"
    write_jsonl(log_file, [{**r, "loss": 123.0} for r in read_jsonl(log_file)])  # marks what the checkpoint held
    more = first.model_copy(update={"max_steps": 4})
    result = train_run(StudentRun("MT", TINY_GEMMA, 0), examples, more, out, "cpu")
    assert result["steps"] == 4
    steps = sorted({r["step"] for r in read_jsonl(out / "losses.jsonl") if r["term"] == "total"})
    assert steps == [1, 2, 3, 4]
    resumed = {r["step"] for r in read_jsonl(out / "losses.jsonl") if r["loss"] == 123.0}
    assert resumed == {1, 2}  # steps 1-2 come from the checkpoint, not retrained; 3-4 were trained after resuming


def test_trained_seq2seq_student_generates_with_its_adapter(tmp_path):
    params = TrainingParams(students=[TINY_T5], conditions=["FT"], max_steps=1, batch_size=4, max_length=64,
                            lora={"target_modules": ["q", "v"]})
    train_run(StudentRun("FT", TINY_T5, 0), all_examples("FT"), params, tmp_path / "FT", "cpu")
    from peft import PeftModel

    tok = load_tokenizer(str(tmp_path / "FT" / "adapter"))
    model = PeftModel.from_pretrained(load_seq2seq_lm(TINY_T5), str(tmp_path / "FT" / "adapter"))
    out = generate_texts(model, tok, [e.prompt for e in all_examples("FT")], max_new_tokens=5, progress=False)
    assert len(out) == 3 and all(c[0].completion_tokens <= 5 for c in out)
    assert not any("Q:" in c[0].text for c in out)  # only the decoder's tokens, never the encoder's prompt


def test_qlora_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], finetune="qlora", max_steps=1, batch_size=4,
                            max_length=64)
    result = train_run(StudentRun("FT", TINY_GEMMA, 0), all_examples("FT"), params, tmp_path / "FT", "cpu")
    assert result["steps"] == 1 and result["finetune"] == "qlora" and result["final_loss"] > 0
