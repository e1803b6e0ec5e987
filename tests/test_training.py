"""Training: condition formats, the weighted target-only loss and a few real steps on a tiny model."""

import pytest
import torch

from lib.data import MCQuestion
from lib.models import (
    TINY_GEMMA, TINY_T5, generate_texts, load_causal_lm, load_seq2seq_lm, load_student_lm, load_tokenizer,
)
from lib.params import TrainingParams
from lib.training import (
    StudentRun, add_special_tokens, causal_prompt, collate, condition_examples, eval_prompts, task_weights,
    tokenize_examples, train_run, weighted_target_loss,
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


def test_causal_keep_any_trains_on_a_failed_explanation_as_written():
    failed = [{**CAUSAL_ROWS[2], "raw": "Heat comes first {not json"}]
    assert condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[:2] + failed, keep="parsed")[-1].qid == "c1"
    ex = condition_examples("CAUSAL", [], {}, causal_rows=CAUSAL_ROWS[:2] + failed, keep="any")
    assert [e.qid for e in ex] == ["c0", "c1", "c2"] and ex[-1].target == " Heat comes first {not json"


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
    tokens = list(STRATEGY.values())  # already special tokens of the tiny tokenizer: nothing is added
    result = train_run(StudentRun(condition, student, 0), examples, params, tmp_path / condition, "cpu", tokens)
    assert result["added_tokens"] == []
    assert result["steps"] == 2 and (tmp_path / condition / "adapter" / "adapter_config.json").exists()
    assert result["task"] == ("causal" if condition == "CAUSAL" else "mc")
    assert result["architecture"] == ("encoder-decoder" if student == TINY_T5 else "decoder-only")
    from lib.runs import read_jsonl

    terms = {r["term"] for r in read_jsonl(tmp_path / condition / "losses.jsonl")}
    assert terms == set(task_weights(condition, 0.5)) | {"total"}
    losses = read_jsonl(tmp_path / condition / "losses.jsonl")
    assert all(r["loss"] > 0 and r["loss"] == r["loss"] for r in losses)  # finite, positive cross-entropy per term
    again = train_run(StudentRun(condition, student, 0), examples, params, tmp_path / condition, "cpu", tokens)
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


NEW_STRATEGY = {"positive": "[Strategy A]", "negative": "[Strategy B]"}  # not in the tiny vocabulary: they get added


def test_add_special_tokens_adds_only_missing_strings_and_starts_them_from_their_pieces():
    tok, model = load_tokenizer(TINY_GEMMA), load_causal_lm(TINY_GEMMA)
    n_vocab, known = len(tok), tok.convert_tokens_to_ids("[Direct election]")
    pieces = tok("[Strategy A]", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    ids = add_special_tokens(tok, model, ["[Strategy A]", "[Direct election]", "[Strategy A]"])
    assert ids == [n_vocab] and len(tok) == n_vocab + 1  # "[Direct election]" is one token already; duplicates once
    assert tok("Q [Strategy A] x", add_special_tokens=False)["input_ids"].count(n_vocab) == 1
    assert tok.convert_tokens_to_ids("[Direct election]") == known and "[Strategy A]" in tok.all_special_tokens
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tok) and model.get_output_embeddings().weight.shape[0] == len(tok)
    assert torch.allclose(weight[n_vocab], weight[pieces].mean(0))
    assert add_special_tokens(tok, model, ["[Strategy A]"]) == []  # a second call adds nothing


def test_cfd_run_needs_its_strategy_tokens(tmp_path):
    params = TrainingParams(students=[TINY_GEMMA], conditions=["CFD"], max_steps=1)
    with pytest.raises(ValueError, match="counterfactual.strategy_tokens"):
        train_run(StudentRun("CFD", TINY_GEMMA, 0), all_examples("CFD"), params, tmp_path / "CFD", "cpu")


@pytest.fixture(scope="module")
def untied_gemma(tmp_path_factory):
    """The tiny Gemma with an output head of its own (not tied to the input embeddings), as a local folder."""
    from transformers import Gemma3ForCausalLM

    config = load_causal_lm(TINY_GEMMA).config
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("untied-gemma")
    Gemma3ForCausalLM(config).save_pretrained(folder)
    load_tokenizer(TINY_GEMMA).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("student,finetune", [(TINY_GEMMA, "lora"), (TINY_T5, "lora"), ("untied", "lora"),
                                              (TINY_GEMMA, "full"), (TINY_GEMMA, "qlora")])
def test_cfd_run_adds_and_trains_its_strategy_tokens(student, finetune, untied_gemma, tmp_path):
    # A tied head moves the new rows even if no example used them; the untied model's input rows move only when the
    # examples were tokenised with the new ids, so that case also checks the order of adding and tokenising.
    from safetensors import safe_open

    from lib.evaluation import load_student

    if finetune == "qlora":
        pytest.importorskip("bitsandbytes")
    student = untied_gemma if student == "untied" else student
    targets = STUDENTS.get(student, STUDENTS[TINY_GEMMA])
    params = TrainingParams(students=[student], conditions=["CFD"], finetune=finetune, max_steps=3, batch_size=2,
                            lr=1e-2, max_length=128, save_steps=0, lora={"target_modules": targets})
    examples = condition_examples("CFD", questions(), RATIONALES, VIEWS, NEW_STRATEGY)
    strings = list(NEW_STRATEGY.values())
    result = train_run(StudentRun("CFD", student, 0), examples, params, tmp_path / "CFD", "cpu", strings)
    assert result["steps"] == 3 and result["added_tokens"] == strings
    adapter = tmp_path / "CFD" / "adapter"

    tok = load_tokenizer(str(adapter))  # the saved tokenizer knows each strategy string as one special token
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in strings]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 2
    ids = [i[0] for i in ids]
    assert set(strings) <= set(tok.all_special_tokens) and min(ids) >= len(load_tokenizer(student))
    stored = {}  # LoRA: the trained rows kept in the adapter, by "input" / "output" embeddings
    if finetune != "full":
        with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
            stored = {("output" if "lm_head" in k else "input"): f.get_tensor(k)
                      for k in keys if "trainable_tokens_delta" in k}
        assert "input" in stored and not any("base_layer.weight" in k for k in keys)  # not the whole resized matrix
        assert ("output" in stored) == (student == untied_gemma)  # a tied head shares the input rows
        stored.setdefault("output", stored["input"])

    model, tok = load_student(student, adapter, "cpu")
    prompt = eval_prompts("CFD", questions()[0], NEW_STRATEGY["positive"])["answer"]
    out = generate_texts(model, tok, [prompt], max_new_tokens=4, progress=False)
    assert len(out) == 1 and out[0][0].completion_tokens <= 4 and out[0][0].prompt_tokens > 0

    trained = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    base_tok, base = load_tokenizer(student), load_student_lm(student)
    for role, layer, base_layer in (("input", trained.get_input_embeddings(), base.get_input_embeddings()),
                                    ("output", trained.get_output_embeddings(), base.get_output_embeddings())):
        assert layer.weight.shape[0] == len(tok)
        if stored:  # the loaded student uses the rows trained and saved with the adapter
            assert torch.allclose(layer.weight[ids].float(), stored[role].float())
        for s, i in zip(strings, ids):
            initial = base_layer.weight[base_tok(s, add_special_tokens=False)["input_ids"]].mean(0).float()
            assert (layer.weight[i].float() - initial).abs().max() > 1e-4, f"{s}: row {i} was not trained"
