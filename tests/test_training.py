"""Training: the weighted target-only loss, runs and their reuse, the grid and a few real steps on a tiny model."""

import copy
import dataclasses
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib.conditions import eval_prompts, task_weights
from lib.examples import collate, condition_examples, Example, tokenize_examples
from lib.files import PROJECT_ROOT, read_json, read_jsonl, sha256_file, write_json, write_jsonl
from lib.models import (
    ADAPTER_FILES,
    generate_texts,
    load_causal_lm,
    load_seq2seq_lm,
    load_student_lm,
    load_tokenizer,
    TINY_GEMMA,
    TINY_T5,
)
from lib.params import CounterfactualParams, RunParams, TrainingParams
from lib.training import (
    add_special_tokens,
    grid,
    lora_model,
    run_config,
    StudentRun,
    train_grid,
    train_run,
    training_code_sha256,
    weighted_target_loss,
)
from lib.training_tables import read_losses
from tests.test_examples import ALL_CONDITIONS, all_examples, LONG_RATIONALES, questions, RATIONALES, STRATEGY, VIEWS


def test_mt_weights_follow_alpha():
    assert task_weights("MT", 0.3) == {"answer": 0.3, "rationale": pytest.approx(0.7)}


def test_mt_cf_weights_nest_alpha():
    w = task_weights("MT+CF", 0.3)
    assert w == pytest.approx({"answer": 0.09, "rationale": 0.21, "factual": 0.7, "counterfactual": 0.7})
    assert task_weights("CF", 0.3) == {"factual": 1.0, "counterfactual": 1.0}


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(TINY_GEMMA, padding_side="right"), load_causal_lm(TINY_GEMMA)


def test_train_run_counts_and_logs_truncated_examples(tmp_path, caplog):
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT-CoT"], max_steps=1, batch_size=4, max_length=80,
                            save_steps=0)
    examples = condition_examples("FT-CoT", questions(), LONG_RATIONALES)
    with caplog.at_level(logging.WARNING, logger="lib.training"):
        result = train_run(StudentRun("FT-CoT", TINY_GEMMA, 0), examples, params, tmp_path / "cot", "cpu")
    assert result["n_truncated"] == 3 and result["n_skipped"] == 0
    assert "3 of 3 examples are longer than training.max_length=80" in caplog.text
    assert read_json(tmp_path / "cot" / "done.json")["n_truncated"] == 3


def test_gradient_accumulation_matches_one_large_batch(tiny, tmp_path):
    # 2 micro-batches of 2 must give the gradient of one batch of 4: equal-length examples of one task, so the mean
    # over 4 examples' tokens is the mean of the two micro-batch means.
    from transformers import TrainerCallback, TrainingArguments

    from lib.training import _trainer_class

    tok, base = tiny
    examples = [Example(f"Q: item {i}\nA:", " yes.", "answer", f"q{i}") for i in range(4)]
    data = tokenize_examples(examples, tok, 64, ["answer"])
    assert len({len(d["input_ids"]) for d in data}) == 1
    params = TrainingParams(lora={"dropout": 0.0})

    def grads(batch_size: int, accum: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = lora_model(copy.deepcopy(base), params)
        with torch.no_grad():  # LoRA B starts at zero, which leaves A without a gradient: start B elsewhere
            for name, w in model.named_parameters():
                if "lora_B" in name:
                    w.normal_(0, 0.02)
        seen = {}

        class Grab(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                seen.update({n: w.grad.detach().clone() for n, w in model.named_parameters() if w.grad is not None})

        args = TrainingArguments(output_dir=str(tmp_path / f"b{batch_size}"), per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=accum, max_steps=1, optim="sgd", learning_rate=1e-3,
                                 max_grad_norm=0.0, report_to="none", use_cpu=True, remove_unused_columns=False,
                                 save_strategy="no", disable_tqdm=True)
        trainer = _trainer_class()(model=model, args=args, train_dataset=data, callbacks=[Grab()],
                                   data_collator=lambda b: collate(b, tok.pad_token_id), task_names=["answer"],
                                   task_weight_list=[1.0], config_sha256="test")
        trainer.train()
        return seen

    one, accumulated = grads(4, 1), grads(2, 2)
    assert one and set(one) == set(accumulated)
    for name in one:
        assert torch.allclose(accumulated[name], one[name], rtol=1e-4, atol=1e-8), name


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
    assert result["steps"] == 2
    saved = tmp_path / condition / "adapter"  # as measured and as published: bf16 weights, config, added tokens
    assert sorted(p.name for p in saved.iterdir()) == sorted(ADAPTER_FILES)
    assert {t.dtype for t in _adapter_weights(tmp_path / condition).values()} == {torch.bfloat16}
    assert result["task"] == ("causal" if condition == "CAUSAL" else "mc")
    assert result["architecture"] == ("encoder-decoder" if student == TINY_T5 else "decoder-only")
    assert result["adapter"] == f"{condition}/adapter" and result["finetune"] == "lora"
    assert result["rationale_source"] == "unrevised"
    from lib.files import read_jsonl

    terms = {r["term"] for r in read_jsonl(tmp_path / condition / "losses.jsonl")}
    assert terms == set(task_weights(condition, 0.5)) | {"total"}
    losses = read_jsonl(tmp_path / condition / "losses.jsonl")
    assert all(r["loss"] > 0 and r["loss"] == r["loss"] for r in losses)  # finite, positive cross-entropy per term
    again = train_run(StudentRun(condition, student, 0), examples, params, tmp_path / condition, "cpu", tokens)
    assert again == result  # a finished run with the same config is skipped, not retrained


def _interrupt_at_call(monkeypatch, n):
    """Make the n-th loss computation raise, as if the run were stopped there."""
    import lib.training

    real, calls = lib.training.weighted_target_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(lib.training, "weighted_target_loss", loss)


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    examples = all_examples("MT")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["MT"], max_steps=4, batch_size=2, max_length=128,
                            save_steps=2)
    out = tmp_path / "MT"
    with monkeypatch.context() as m:
        _interrupt_at_call(m, 3)  # batch size 2, no accumulation: the 3rd loss is step 3's, after checkpoint-2
        with pytest.raises(KeyboardInterrupt):
            train_run(StudentRun("MT", TINY_GEMMA, 0), examples, params, out, "cpu")
    assert not (out / "done.json").exists() and (out / "trainer" / "checkpoint-2" / "term_log.jsonl").exists()
    log_file = out / "trainer" / "checkpoint-2" / "term_log.jsonl"
    write_jsonl(log_file, [{**r, "loss": 123.0} for r in read_jsonl(log_file)])  # marks what the checkpoint held
    result = train_run(StudentRun("MT", TINY_GEMMA, 0), examples, params, out, "cpu")
    assert result["steps"] == 4 and result["resumed_from"] == "checkpoint-2"
    steps = sorted({r["step"] for r in read_jsonl(out / "losses.jsonl") if r["term"] == "total"})
    assert steps == [1, 2, 3, 4]
    resumed = {r["step"] for r in read_jsonl(out / "losses.jsonl") if r["loss"] == 123.0}
    assert resumed == {1, 2}  # steps 1-2 come from the checkpoint, not retrained; 3-4 were trained after resuming


def _adapter_weights(folder):
    """The LoRA weights a run saved, by name."""
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("change,steps", [({"lr": 2e-3}, 2), ({"epochs": 2.0}, 4), ("examples", 2)])
def test_checkpoint_of_another_config_is_deleted_not_resumed(change, steps, tmp_path, caplog):
    # A finished run leaves its last checkpoint; a changed run must not restore it (and save its weights as its own).
    examples = all_examples("FT")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], epochs=1.0, batch_size=2, max_length=128,
                            lr=1e-3, save_steps=2)  # 3 examples: 2 steps per epoch
    out = tmp_path / "FT"
    train_run(StudentRun("FT", TINY_GEMMA, 0), examples, params, out, "cpu")
    old_weights = _adapter_weights(out)
    log_file = out / "trainer" / "checkpoint-2" / "term_log.jsonl"
    write_jsonl(log_file, [{**r, "loss": 123.0} for r in read_jsonl(log_file)])
    if change == "examples":
        examples = [dataclasses.replace(examples[0], target=" Boxes hold things."), *examples[1:]]
    else:
        params = params.model_copy(update=change)
    with caplog.at_level(logging.WARNING, logger="lib.training"):
        result = train_run(StudentRun("FT", TINY_GEMMA, 0), examples, params, out, "cpu")
    assert result["resumed_from"] is None and result["steps"] == steps
    assert "deleted 1 checkpoint(s)" in caplog.text and "another run config" in caplog.text
    assert not any(r["loss"] == 123.0 for r in read_jsonl(out / "losses.jsonl"))
    new_weights = _adapter_weights(out)
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in old_weights)
    checkpoint = out / "trainer" / f"checkpoint-{steps}" / "run_config.json"
    assert read_json(checkpoint)["config_sha256"] == result["config_sha256"]


def test_training_code_sha256_covers_the_training_modules():
    import lib.training

    digests = training_code_sha256()
    assert set(digests) == {f"lib/{name}.py" for name in ("training", "examples", "head_loss", "models", "batching",
                                                          "conditions", "precision")}
    assert digests["lib/training.py"] == sha256_file(lib.training.__file__)


def test_a_change_to_the_task_weights_code_changes_a_runs_config(monkeypatch):
    """MT's weights are computed in lib/conditions.py (0.5/0.5 there and 0.9/0.1 must not hash the same): it is keyed."""
    import lib.training

    run, examples = StudentRun("MT", TINY_GEMMA, 0), all_examples("MT")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["MT"])
    before = run_config(run, examples, params)
    real = lib.training.sha256_file
    monkeypatch.setattr(lib.training, "sha256_file",
                        lambda path: "edited" if Path(path).name == "conditions.py" else real(path))
    assert lib.training.sha256_json(run_config(run, examples, params)) != lib.training.sha256_json(before)


def test_a_negative_training_loss_stops_the_run_with_what_to_do(tmp_path, monkeypatch):
    """A cross-entropy below 0 is a defect in the loss, never a result: training stops at that step and says so."""
    import lib.training

    real = lib.training.weighted_target_loss
    monkeypatch.setattr(lib.training, "weighted_target_loss",
                        lambda model, inputs, weights: (lambda loss, terms: (loss - loss.detach() - 0.3, terms))(
                            *real(model, inputs, weights)))
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], max_steps=2, batch_size=4, max_length=128,
                            save_steps=0)
    with pytest.raises(lib.training.NegativeLoss, match=r"step 1 is -0\.3000 \(bf16\).*run\.precision: fp32"):
        train_run(StudentRun("FT", TINY_GEMMA, 0), all_examples("FT"), params, tmp_path / "FT", "cpu", fmt="bf16")


def test_finished_run_retrains_when_code_weights_or_saved_adapter_change(tmp_path, monkeypatch):
    import lib.models
    import lib.training

    run, examples = StudentRun("FT", TINY_GEMMA, 0), all_examples("FT")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], max_steps=1, batch_size=4, max_length=128,
                            save_steps=1)
    out = tmp_path / "FT"

    def skipped() -> bool:
        """Run again; True when train_run returned the marked done.json instead of training."""
        done = out / "done.json"
        write_json(done, {**read_json(done), "marker": True})
        return "marker" in train_run(run, examples, params, out, "cpu")

    train_run(run, examples, params, out, "cpu")
    assert skipped()  # nothing changed
    with monkeypatch.context() as m:
        m.setattr(lib.training, "training_code_sha256", lambda: {"lib/training.py": "a fix"})
        assert not skipped()
    assert not skipped()  # back to today's code: a different config again
    with monkeypatch.context() as m:
        m.setattr(lib.models, "model_provenance", lambda spec: {"spec": spec, "sha256": "other weights"})
        assert not skipped()
    assert not skipped()
    shutil.rmtree(out / "adapter")
    assert not skipped() and (out / "adapter" / "adapter_model.safetensors").exists()
    done = out / "done.json"
    write_json(done, {**read_json(done), "marker": True})
    forced = train_run(run, examples, params, out, "cpu", force=True)
    assert "marker" not in forced and forced["resumed_from"] is None  # checkpoint-1 of this config not used either
    assert skipped()


def test_train_grid_passes_force_down(tmp_path, monkeypatch):
    import lib.training

    calls = []
    monkeypatch.setattr(lib.training, "train_run", lambda run, *a, force=False, **k: calls.append(force) or
                        {"run": run.name})
    params = SimpleNamespace(run=RunParams(device="cpu"), counterfactual=CounterfactualParams(),
                             training=TrainingParams(students=[TINY_GEMMA], conditions=["FT"], seeds=[0, 1]))
    examples = {("FT", "unrevised"): all_examples("FT")}
    train_grid(SimpleNamespace(params=params, out=tmp_path, force=True), examples)
    train_grid(SimpleNamespace(params=params, out=tmp_path), examples)  # a context without force
    assert calls == [True, True, False, False]


def test_read_losses_reads_only_the_runs_of_the_current_grid(tmp_path):
    for name in ("FT__m__seed0", "MT__m__seed0"):  # MT was trained by an earlier grid; its folder stays on disk
        write_jsonl(tmp_path / name / "losses.jsonl", [{"run": name, "step": 1, "term": "total", "loss": 1.0}])
    write_jsonl(tmp_path / "runs.jsonl", [{"run": "FT__m__seed0"}])
    losses = read_losses(tmp_path)
    assert set(losses["run"]) == {"FT__m__seed0"} and list(losses.columns) == ["run", "step", "term", "loss"]
    write_jsonl(tmp_path / "runs.jsonl", [{"run": "FT__m__seed0"}, {"run": "CF__m__seed0"}])
    with pytest.raises(FileNotFoundError, match="CF__m__seed0"):
        read_losses(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs.jsonl is missing"):
        read_losses(tmp_path / "nowhere")


def test_trained_seq2seq_student_generates_with_its_adapter(tmp_path):
    params = TrainingParams(students=[TINY_T5], conditions=["FT"], max_steps=1, batch_size=4, max_length=64,
                            lora={"target_modules": ["q", "v"]})
    train_run(StudentRun("FT", TINY_T5, 0), all_examples("FT"), params, tmp_path / "FT", "cpu")
    from peft import PeftModel

    from lib.evaluation import adapter_tokenizer

    tok = adapter_tokenizer(TINY_T5, tmp_path / "FT" / "adapter")
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

    from lib.evaluation import adapter_tokenizer, load_student

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

    tok = adapter_tokenizer(student, adapter)  # the student's tokenizer knows each strategy string as one special token
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

    model, tok = load_student(student, adapter, "cpu", finetune=finetune)
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


# ---------------------------------------------------------------- the Revised factor, BASE, per-condition settings

EVERY_CONDITION = ["BASE", *ALL_CONDITIONS]


def test_grid_crosses_the_rationale_sources_with_the_rationale_conditions_only():
    params = TrainingParams(students=["s"], conditions=EVERY_CONDITION, seeds=[0, 1],
                            rationale_sources=["unrevised", "revised"])
    names = [r.name for r in grid(params)]
    assert StudentRun("MT", "gemma3-270m-gguf", 0, "revised").name == "MT__revised__gemma3-270m-gguf__seed0"
    for c in ("FT-CoT", "MT", "CF", "MT+CF"):  # targets with teacher rationales: both sources, every seed
        assert {n for n in names if n.startswith(c + "__")} == {f"{c}__{src}__s__seed{k}" for src in ("unrevised", "revised")
                                                                for k in (0, 1)}
    for c in ("FT", "CFD", "CAUSAL"):  # one run per seed, recorded as unrevised
        assert {n for n in names if n.startswith(c + "__")} == {f"{c}__unrevised__s__seed0", f"{c}__unrevised__s__seed1"}
    assert [n for n in names if n.startswith("BASE")] == ["BASE__unrevised__s__seed0"]  # untrained: no seed to vary
    assert len(names) == len(set(names)) == 4 * 4 + 3 * 2 + 1
    only_revised = grid(params.model_copy(update={"rationale_sources": ["revised"], "seeds": [0]}))
    assert {(r.condition, r.rationale_source) for r in only_revised} >= {("MT", "revised"), ("FT", "unrevised")}


def test_train_grid_writes_a_base_row_and_every_row_names_its_adapter(tmp_path):
    params = SimpleNamespace(run=RunParams(device="cpu"), counterfactual=CounterfactualParams(),
                             training=TrainingParams(students=[TINY_GEMMA], conditions=["BASE", "FT", "MT"], seeds=[0],
                                                     rationale_sources=["unrevised", "revised"], max_steps=1,
                                                     batch_size=4, max_length=128, save_steps=0))
    revised = {q: f"Revised: {t}" for q, t in RATIONALES.items()}
    examples = {("FT", "unrevised"): all_examples("FT"), ("MT", "unrevised"): all_examples("MT"),
                ("MT", "revised"): condition_examples("MT", questions()[:2], revised)}
    train_grid(SimpleNamespace(params=params, out=tmp_path), examples)
    rows = read_jsonl(tmp_path / "runs.jsonl")
    assert [r["run"] for r in rows] == [f"BASE__unrevised__{TINY_GEMMA}__seed0", f"FT__unrevised__{TINY_GEMMA}__seed0",
                                        f"MT__unrevised__{TINY_GEMMA}__seed0", f"MT__revised__{TINY_GEMMA}__seed0"]
    base, ft, mt, mt_revised = rows
    assert (base["condition"], base["task"], base["steps"], base["adapter"]) == ("BASE", "mc", 0, None)
    assert base["finetune"] == "lora" and base["n_trainable"] == 0 and base["n_params"] == ft["n_params"] > 0
    assert not (tmp_path / base["run"]).exists()  # no folder, no adapter
    for r in (ft, mt, mt_revised):
        assert r["adapter"] == f"{r['run']}/adapter" and (tmp_path / r["adapter"] / "adapter_config.json").exists()
        assert r["finetune"] == "lora" and r["steps"] == 1
    assert [r["rationale_source"] for r in rows] == ["unrevised", "unrevised", "unrevised", "revised"]
    assert mt_revised["n_examples"] == 4 and mt["n_examples"] == 6  # the revised run keeps its 2 questions only
    assert set(read_losses(tmp_path)["run"]) == {ft["run"], mt["run"], mt_revised["run"]}  # BASE has no losses


def test_an_override_changes_its_condition_only_and_is_recorded(tmp_path):
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT", "CAUSAL"], max_steps=2, batch_size=4,
                            max_length=128, save_steps=0, overrides={"CAUSAL": {"max_steps": 1, "lr": 1e-3,
                                                                                "lora": {"r": 4}}})
    ft, causal = StudentRun("FT", TINY_GEMMA, 0), StudentRun("CAUSAL", TINY_GEMMA, 0)
    ft_config, causal_config = run_config(ft, all_examples("FT"), params), run_config(causal, all_examples("CAUSAL"), params)
    assert causal_config["training"]["lr"] == 1e-3 and causal_config["training"]["lora"]["r"] == 4
    assert causal_config["training"]["lora"]["alpha"] == params.lora.alpha and ft_config["training"]["lr"] == params.lr
    assert "overrides" not in ft_config["training"] and "conditions" not in ft_config["training"]
    changed = params.model_copy(update={"overrides": {"CAUSAL": params.overrides["CAUSAL"].model_copy(
        update={"lr": 2e-3})}})
    assert run_config(ft, all_examples("FT"), changed) == ft_config  # another condition's override: same config
    assert run_config(causal, all_examples("CAUSAL"), changed) != causal_config
    result = train_run(causal, all_examples("CAUSAL"), params, tmp_path / "CAUSAL", "cpu")
    assert result["steps"] == 1 and result["training"]["max_steps"] == 1 and result["training"]["lr"] == 1e-3
    assert read_json(tmp_path / "CAUSAL" / "config.json")["training"] == result["training"]
    assert read_json(tmp_path / "CAUSAL" / "done.json")["training"]["lora"]["r"] == 4


def test_read_losses_skips_base_rows(tmp_path):
    write_jsonl(tmp_path / "FT__unrevised__m__seed0" / "losses.jsonl",
                [{"run": "FT__unrevised__m__seed0", "step": 1, "term": "total", "loss": 1.0}])
    write_jsonl(tmp_path / "runs.jsonl", [{"run": "BASE__unrevised__m__seed0", "condition": "BASE", "adapter": None},
                                          {"run": "FT__unrevised__m__seed0", "condition": "FT",
                                           "adapter": "FT__unrevised__m__seed0/adapter"}])
    assert set(read_losses(tmp_path)["run"]) == {"FT__unrevised__m__seed0"}
    write_jsonl(tmp_path / "runs.jsonl", [{"run": "BASE__unrevised__m__seed0", "condition": "BASE", "adapter": None}])
    assert read_losses(tmp_path).empty


def test_a_bf16_run_trains_under_autocast_and_is_not_reused_for_fp32(tmp_path, monkeypatch):
    """run.precision: the training format is part of a run's config; bf16 runs the forward pass in bf16."""
    import lib.training

    seen = []
    real = lib.training.weighted_target_loss

    def spy(model, inputs, weights):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(model, inputs, weights)

    monkeypatch.setattr(lib.training, "weighted_target_loss", spy)
    run, examples = StudentRun("FT", TINY_GEMMA, 0), all_examples("FT")
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], max_steps=1, batch_size=4, max_length=128,
                            save_steps=0)
    out = tmp_path / "FT"
    bf16 = train_run(run, examples, params, out, "cpu", fmt="bf16")
    assert seen == [True] and read_json(out / "config.json")["precision"] == "bf16"
    fp32 = train_run(run, examples, params, out, "cpu", fmt="fp32")
    assert seen == [True, False] and fp32["config_sha256"] != bf16["config_sha256"]


def test_a_run_reports_its_progress(tmp_path):
    """Long runs say how far they are: the lines go to <run>/progress.log through the step context."""
    lines = []
    params = TrainingParams(students=[TINY_GEMMA], conditions=["FT"], max_steps=2, batch_size=2, max_length=128,
                            save_steps=0)
    train_run(StudentRun("FT", TINY_GEMMA, 0), all_examples("FT"), params, tmp_path / "FT", "cpu", progress=lines.append)
    assert lines[0].endswith("training 2 steps (from step 0)")
    assert lines[-1].startswith("FT__unrevised__tiny-random-gemma3__seed0: step 2/2, loss ")


def test_step_04_runs_outside_its_notebook_for_accelerate(tmp_path):
    """`python -m lib.training RUN_DIR` trains the grid of a run folder, as notebook 04 does (runs.jsonl, done.json)."""
    from lib import training
    from lib.params import load_params

    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml",
                         {"training.conditions": ["BASE", "FT"], "training.max_steps": 1, "training.save_steps": 0})
    write_json(tmp_path / "params.json", params.model_dump(mode="json"))
    write_jsonl(tmp_path / "01_data" / "train.jsonl", questions())
    write_jsonl(tmp_path / "02_teacher" / "rationales.jsonl",
                [{"id": q.id, "split": "train", "rationale": RATIONALES[q.id], "failure": None, "correct": True}
                 for q in questions()])
    assert training.main([str(tmp_path)]) == 0
    rows = read_jsonl(tmp_path / "04_training" / "runs.jsonl")
    trained = [r for r in rows if r["condition"] == "FT"]
    assert {r["condition"] for r in rows} == {"BASE", "FT"} and trained and all(r["steps"] == 1 for r in trained)
    assert all((tmp_path / "04_training" / r["run"] / "done.json").exists() for r in trained)
    assert training.main([]) == 2  # no run folder: the usage, not a traceback
