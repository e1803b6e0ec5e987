"""Student training: the grid of runs, one weighted loss, LoRA on a causal LM or an encoder-decoder.

Each run trains on its condition's `Example`s (lib.examples) with `transformers.Trainer` and two overrides:
- `compute_loss`: cross-entropy on target tokens only, averaged per task and combined with the condition's task
  weights (MT: alpha * L_answer + (1 - alpha) * L_rationale), with the LM head applied only at target positions
  (with Gemma's 262k-token vocabulary the full logits tensor would dominate CPU time and memory);
- the batch order (lib.batching): a question's examples share a batch, so MT's loss weighs both tasks of the same
  questions in every step, as Distilling step-by-step trains; batches are still grouped by length.

A finished run is skipped, and an interrupted one resumed, only when its config matches: params, examples, the
training code and the student's weights (`run_config`).

The grid crosses conditions, students and seeds with Hendriks et al.'s Revised factor (`training.rationale_sources`)
for the conditions whose targets hold teacher rationales; each run trains with the `training` section plus its
condition's `training.overrides`. BASE is the untrained student: it has a row in runs.jsonl but no training run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lib.batching import QuestionGroupedSampler
from lib.conditions import condition_sources, condition_task, task_weights, UNTRAINED
from lib.examples import collate, Example, load_condition_examples, tokenize_examples
from lib.files import read_json, read_jsonl, sha256_file, sha256_json, write_json, write_jsonl
from lib.params import TrainingParams
from lib.precision import autocast
from lib.runs import open_step

log = logging.getLogger(__name__)

# training keys that describe the grid, not one run: left out of a run's recorded settings and config hash
GRID_KEYS = frozenset({"students", "conditions", "seeds", "rationale_sources", "overrides"})


@dataclasses.dataclass
class StudentRun:
    """One cell of the grid: a condition, a student, a seed and a rationale source, and where it is saved.

    `rationale_source` is `unrevised` (the step-02 CoT rationale) or `revised` (the critique-revised explanation of
    02_teacher/revisions.jsonl). Conditions without teacher rationales in their targets (BASE, FT, CFD, CAUSAL) have
    one run, recorded as `unrevised`, so that the factor keeps exactly two levels.
    """

    condition: str
    student: str
    seed: int
    rationale_source: str = "unrevised"

    @property
    def name(self) -> str:
        """Folder name, e.g. `MT__revised__gemma3-270m-gguf__seed0`."""
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", self.student.strip("/"))[-60:]
        return f"{self.condition}__{self.rationale_source}__{slug}__seed{self.seed}"


def weighted_target_loss(model: Any, inputs: dict[str, Any], weights: list[float]) -> tuple[Any, dict[int, float]]:
    """Σ_task w_task · mean CE over that task's target tokens, computing logits only where labels are set."""
    import torch.nn.functional as F

    from lib.head_loss import target_nll

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "is_encoder_decoder", False):
        labels = inputs["labels"]
        is_target = labels != -100
        token_loss = F.cross_entropy(_seq2seq_target_logits(base, inputs, is_target), labels[is_target],
                                     reduction="none")
    else:
        hidden = base.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        labels = inputs["labels"][:, 1:]
        is_target = labels != -100
        token_loss = target_nll(hidden[:, :-1][is_target], base.get_output_embeddings(), labels[is_target],
                                getattr(base.config, "final_logit_softcapping", None))
    token_task = inputs["task_ids"][:, None].expand_as(labels)[is_target]
    total, terms = token_loss.new_zeros(()), {}
    for t, w in enumerate(weights):
        sel = token_task == t
        if sel.any():
            term = token_loss[sel].mean()
            terms[t] = float(term.detach())
            total = total + w * term
    return total, terms


def _seq2seq_target_logits(base: Any, inputs: dict[str, Any], is_target: Any) -> Any:
    """An encoder-decoder's logits at the decoder positions where `is_target` is set (labels go to the decoder).

    A pre-hook on the LM head hands it only the kept decoder states, so the model's own forward (T5's
    output scaling, BART's logits bias) runs unchanged while the vocabulary projection is done only there.
    """
    decoder_ids = base.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
    handle = base.get_output_embeddings().register_forward_pre_hook(lambda _mod, args: (args[0][is_target],))
    try:
        out = base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                   decoder_input_ids=decoder_ids, use_cache=False)
    finally:
        handle.remove()
    return out.logits.float()


def _trainer_class() -> type:
    """transformers.Trainer with the weighted target-only loss and a per-term loss log."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss is `weighted_target_loss`; per-term losses go to `term_log`."""

        # compute_loss returns each micro-batch's mean, not a sum over the tokens of the accumulated batch: the
        # Trainer must divide it by the accumulation steps. It would not, since the student's forward accepts
        # **kwargs (transformers 5 then assumes a loss normalised by num_items_in_batch), and grad_accum > 1
        # would give a gradient grad_accum times too large.
        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, task_names: list[str], task_weight_list: list[float], config_sha256: str = "",
                     precision: tuple[str, str] = ("fp32", "cpu"), **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.precision = precision  # (format, device) of the forward pass
            self.task_names, self.task_weight_list, self.term_log = task_names, task_weight_list, []
            self.config_sha256 = config_sha256  # written into each checkpoint: only the same config resumes it
            self.target_tokens = 0  # target tokens trained on in this session (after a resume: since it)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D401
            with autocast(*self.precision):
                loss, terms = weighted_target_loss(model, inputs, self.task_weight_list)
            self.target_tokens += int((inputs["labels"] != -100).sum())
            step = self.state.global_step + 1
            total = float(loss.detach())
            if total < NEGATIVE_LOSS_TOLERANCE:
                raise NegativeLoss(f"{Path(self.args.output_dir).name}: the training loss at step {step} is {total:.4f} "
                                   f"({self.precision[0]}); a cross-entropy is never below 0, so the loss computation is "
                                   f"wrong (lib/head_loss.py, lib/training.py). Report it; retrain with run.precision: "
                                   f"fp32 to go on meanwhile")
            self.term_log.extend({"step": step, "term": self.task_names[t], "loss": v} for t, v in terms.items())
            self.term_log.append({"step": step, "term": "total", "loss": total})
            return (loss, None) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):  # noqa: D401
            """A question's examples in one batch (MT: both tasks), batches of similar length: lib.batching."""
            rows = train_dataset if train_dataset is not None else self.train_dataset
            return QuestionGroupedSampler(rows, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                          self.args.seed)

        def _save_checkpoint(self, model, trial):  # noqa: D401
            if self.args.should_save:  # before the rest, so a checkpoint with a trainer state has its loss log
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / CHECKPOINT_CONFIG, {"config_sha256": self.config_sha256})
                write_jsonl(folder / TERM_LOG, self.term_log)
            super()._save_checkpoint(model, trial)

    return DistillTrainer


NEGATIVE_LOSS_TOLERANCE = -1e-4  # float32 rounding of log(sum exp) - z_y for a token at p ~ 1; anything lower is a defect


class NegativeLoss(RuntimeError):
    """A training step computed a cross-entropy below 0: the loss is wrong, and training on it would be too."""


TERM_LOG = "term_log.jsonl"  # the per-term losses so far, saved inside each checkpoint
CHECKPOINT_CONFIG = "run_config.json"  # the config_sha256 of the run that wrote a checkpoint
# the lib modules that decide what a run trains on and computes (its examples and tokens, task weights, loss, number
# format, model loading)
CODE_FILES = ("training.py", "examples.py", "head_loss.py", "models.py", "batching.py", "conditions.py", "precision.py")


def training_code_sha256() -> dict[str, str]:
    """sha256 of the source of each module in CODE_FILES, by path (`lib/training.py`: hex digest)."""
    here = Path(__file__).resolve().parent
    return {f"lib/{name}": sha256_file(here / name) for name in CODE_FILES}


def run_settings(params: TrainingParams, condition: str) -> dict:
    """The training settings a run of `condition` uses (its overrides applied), without the grid's keys (GRID_KEYS)."""
    return params.for_condition(condition).model_dump(mode="json", exclude=set(GRID_KEYS))


def run_config(run: StudentRun, examples: list[Example], params: TrainingParams,
               strategy_tokens: list[str] | None = None, fmt: str = "fp32") -> dict:
    """What a trained run depends on: the run, its settings and examples, the training code and the student's weights.

    The settings are the run's own (`run_settings`): another condition's override, or a condition, student or seed
    added to the grid, leaves the config of this run unchanged. `fmt` is the number format it trains in (fp32 / bf16).
    """
    from lib.models import model_provenance

    config = {"run": dataclasses.asdict(run), "training": run_settings(params, run.condition),
              "n_examples": len(examples),
              "examples_sha256": sha256_json([dataclasses.asdict(e) for e in examples]),
              "code_sha256": training_code_sha256(), "student_provenance": model_provenance(run.student),
              "precision": fmt}
    if run.condition == "CFD":
        config["strategy_tokens"] = list(strategy_tokens or [])
    return config


def _has_weights(adapter_dir: Path) -> bool:
    """Whether a run's saved weights are there: its adapter (or full-model) folder with a weight file."""
    return any(adapter_dir.glob("*.safetensors")) or any(adapter_dir.glob("*.bin"))


def _finished_result(run_name: str, out_dir: Path, config_sha: str) -> dict | None:
    """The done.json of a run finished with this config whose weights are still there, or None (then train it)."""
    done = out_dir / "done.json"
    if not done.exists():
        return None
    result = read_json(done)
    if result.get("config_sha256") != config_sha:
        log.info("%s: %s was written under another config (params, examples, training code or student weights); "
                 "retraining", run_name, done)
        return None
    if not _has_weights(out_dir / "adapter"):
        log.warning("%s: %s is there but the weights in %s are missing; retraining", run_name, done,
                    out_dir / "adapter")
        return None
    return result


def _checkpoint_step(folder: Path) -> int:
    """N of a `checkpoint-N` folder (-1 when the name has no number)."""
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _resumable_checkpoint(run_name: str, ckpt_dir: Path, config_sha: str, force: bool = False) -> Path | None:
    """The newest complete checkpoint written under this config, or None; the others are deleted first.

    A checkpoint of another config (changed params, examples, code or weights; or one from before checkpoints
    recorded their config) would restore the wrong adapter, optimiser and schedule, so it is removed; with `force`
    every checkpoint is. A checkpoint of this config that was cut short (no trainer state yet) is left for the
    Trainer to overwrite.
    """
    found = sorted(ckpt_dir.glob("checkpoint-*"), key=_checkpoint_step)
    stale = [p for p in found if force or _checkpoint_config(p) != config_sha]
    complete = [p for p in found if p not in stale and (p / "trainer_state.json").exists() and (p / TERM_LOG).exists()]
    for p in stale:
        shutil.rmtree(p)
    if stale:
        log.warning("%s: deleted %d checkpoint(s) in %s (%s) %s%s", run_name, len(stale), ckpt_dir,
                    ", ".join(p.name for p in stale), "as forced" if force else "written under another run config",
                    "" if complete else "; training from scratch")
    return complete[-1] if complete else None


def _checkpoint_config(folder: Path) -> str | None:
    """The config_sha256 a checkpoint was written under, or None when it does not say."""
    path = folder / CHECKPOINT_CONFIG
    return read_json(path).get("config_sha256") if path.exists() else None


def add_special_tokens(tokenizer: Any, model: Any, strings: list[str]) -> list[int]:
    """Add the strings that are not single tokens yet to the tokenizer as special tokens; returns their new ids.

    The embedding matrix grows to the tokenizer when it is too small, and each new row (input embeddings, and the
    output head when it is not tied to them) starts as the mean of the rows of the tokens the string was split
    into before, so the new token starts from what its text meant to the model.
    """
    import torch

    def pieces(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    new = [s for s in dict.fromkeys(strings) if len(pieces(s)) != 1 or pieces(s)[0] == tokenizer.unk_token_id]
    if not new:
        return []
    old = {s: pieces(s) for s in new}
    tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(new)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # new rows are set just below
    layers = {id(m.weight): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    with torch.no_grad():
        for layer in layers.values():
            for s, i in zip(new, ids):
                layer.weight[i] = layer.weight[old[s]].mean(0)
    log.info("added %s to the tokenizer as special tokens (ids %s)", new, ids)
    return ids


def _trainable_token_indices(model: Any, token_ids: list[int]) -> list[int] | dict[str, list[int]]:
    """peft's `trainable_token_indices` for new token rows: the input embeddings, plus an untied output head.

    With tied embeddings (Gemma, T5) peft wraps the tied LM head with the same trained rows itself.
    """
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is emb.weight:
        return token_ids
    name = {m: n for n, m in model.named_modules()}
    return {name[emb]: token_ids, name[head]: token_ids}


def lora_model(model: Any, params: TrainingParams, token_ids: list[int] | None = None) -> Any:
    """Wrap a model with LoRA adapters (after k-bit preparation for QLoRA); `full` trains every weight.

    `token_ids`: embedding rows to train as well (added special tokens), stored in the adapter.
    """
    if params.finetune == "full":
        return model
    from peft import get_peft_model, LoraConfig, prepare_model_for_kbit_training

    if params.finetune == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    cfg = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                     target_modules=params.lora.target_modules, task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
                     trainable_token_indices=_trainable_token_indices(model, token_ids) if token_ids else None)
    return get_peft_model(model, cfg)


def count_parameters(model: Any) -> int:
    """A model's parameters, counted as peft counts them (a 4-bit weight stores two values per byte)."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2 * (p.element_size() if hasattr(p, "element_size") else 1)
        total += n
    return total


def untrained_result(run: StudentRun, params: TrainingParams) -> dict:
    """The runs.jsonl row of an untrained (BASE) student: no training, no adapter (`adapter: null`), no files written.

    Its `finetune` is the training section's, so that a QLoRA study's BASE is asked on the same 4-bit base as its
    students; `n_params` is the student's own size, as in every trained row.
    """
    from lib.models import is_encoder_decoder, load_student_lm, model_provenance

    t0 = time.perf_counter()
    n_params = count_parameters(load_student_lm(run.student, "cpu"))
    config = {"run": dataclasses.asdict(run), "student_provenance": model_provenance(run.student)}
    return {
        "run": run.name, "task": condition_task(run.condition), "condition": run.condition,
        "rationale_source": run.rationale_source, "student": run.student, "seed": run.seed,
        "n_examples": 0, "n_truncated": 0, "n_skipped": 0, "steps": 0, "wall_s": round(time.perf_counter() - t0, 1),
        "target_tokens_per_epoch": 0, "train_s": 0.0, "target_tokens_per_s": 0.0, "resumed_from": None,
        "final_loss": None, "config_sha256": sha256_json(config), "finetune": params.finetune,
        "architecture": "encoder-decoder" if is_encoder_decoder(run.student) else "decoder-only",
        "n_params": n_params, "n_trainable": 0, "added_tokens": [], "adapter": None, "training": None,
    }


def train_run(run: StudentRun, examples: list[Example], params: TrainingParams, out_dir: Path, device: str,
              strategy_tokens: list[str] | None = None, force: bool = False, fmt: str = "fp32",
              progress: Callable[[str], None] | None = None) -> dict:
    """Train one student on one condition's examples and save its adapter, losses and timings.

    The run trains with `params.for_condition(run.condition)`: the training section with that condition's
    `training.overrides` applied, recorded in config.json and done.json (`training`). A BASE run trains nothing and
    writes nothing: its row (`untrained_result`) has `steps: 0` and `adapter: null`.
    A run finished under the same `run_config` with its weights still saved is skipped (its done.json is returned);
    an interrupted one resumes from its last checkpoint of that config. `force` retrains from scratch regardless.
    A CFD run adds `strategy_tokens` (params counterfactual.strategy_tokens) to the student's tokenizer as special
    tokens and trains their embedding rows (with LoRA: peft's trainable tokens, saved in the adapter).
    `fmt` (run.precision's choice for training, lib.precision) is the format of the forward pass: `bf16` runs it under
    autocast, weights and optimiser state stay float32. `progress` receives a line about every 5% of the steps.
    """
    if run.condition in UNTRAINED:
        return untrained_result(run, params)
    from transformers import set_seed

    from lib.models import load_student_lm, load_tokenizer, save_adapter

    params = params.for_condition(run.condition)
    if run.condition == "CFD" and not strategy_tokens:
        raise ValueError(f"{run.name}: a CFD run needs the strategy tokens (params counterfactual.strategy_tokens); "
                         "pass them as train_run(..., strategy_tokens=[positive, negative])")
    config = run_config(run, examples, params, strategy_tokens, fmt)
    config_sha = sha256_json(config)
    done = out_dir / "done.json"
    finished = None if force else _finished_result(run.name, out_dir, config_sha)
    if finished is not None:
        log.info("%s: finished earlier with the same config, skipped", run.name)
        return finished
    done.unlink(missing_ok=True)  # until this run finishes, no done.json describes the adapter folder
    set_seed(run.seed)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(run.student, padding_side="right")
    model = load_student_lm(run.student, device, load_in_4bit=params.finetune == "qlora")
    n_params = count_parameters(model)  # the student's own size, before added tokens and adapters
    new_ids = add_special_tokens(tokenizer, model, strategy_tokens or []) if run.condition == "CFD" else []
    model = lora_model(model, params, new_ids)
    if new_ids and hasattr(model, "peft_config"):
        # The trained rows are in the adapter; with a resized vocabulary peft would otherwise save the whole
        # embedding matrix in every checkpoint and in the adapter (hundreds of MB for Gemma's 262k tokens).
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    weights = task_weights(run.condition, params.alpha)
    tasks = list(weights)
    data = tokenize_examples(examples, tokenizer, params.max_length, tasks, seq2seq)
    n_truncated, n_skipped = sum(d["truncated"] for d in data), len(examples) - len(data)
    if n_truncated or n_skipped:
        log.warning("%s: %d of %d examples are longer than training.max_length=%d tokens and were cut (rationale "
                    "shortened, answer sentence and EOS kept); %d did not fit at all and were skipped. "
                    "Raise training.max_length (or its training.overrides) to keep them whole.", run.name, n_truncated,
                    len(examples), params.max_length, n_skipped)
    ckpt_dir = out_dir / "trainer"
    resume = _resumable_checkpoint(run.name, ckpt_dir, config_sha, force)
    trainer = _trainer_class()(model=model, args=_training_arguments(params, ckpt_dir, device, run.seed),
                               train_dataset=data, data_collator=lambda b: collate(b, tokenizer.pad_token_id),
                               task_names=tasks, task_weight_list=[weights[t] for t in tasks], config_sha256=config_sha,
                               precision=(fmt, device))
    if progress is not None:
        trainer.add_callback(_progress_callback(run.name, progress))
    if resume is not None:
        done_steps = _checkpoint_step(resume)
        trainer.term_log = [r for r in read_jsonl(resume / TERM_LOG) if r["step"] <= done_steps]
        log.info("%s: resuming from %s (step %d)", run.name, resume, done_steps)
    t_train = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    train_s = time.perf_counter() - t_train
    target_tokens = sum(sum(x != -100 for x in d["labels"]) for d in data)
    trainable = (model.get_nb_trainable_parameters()[0] if hasattr(model, "get_nb_trainable_parameters")
                 else sum(p.numel() for p in model.parameters() if p.requires_grad))
    result = {
        "run": run.name, "task": condition_task(run.condition), "condition": run.condition,
        "rationale_source": run.rationale_source, "student": run.student, "seed": run.seed,
        "n_examples": len(data), "n_truncated": n_truncated, "n_skipped": n_skipped,
        "steps": trainer.state.global_step, "wall_s": round(time.perf_counter() - t0, 1),
        "target_tokens_per_epoch": target_tokens,
        "train_s": round(train_s, 1), "target_tokens_per_s": round(trainer.target_tokens / max(train_s, 1e-9), 1),
        "resumed_from": resume.name if resume is not None else None, "final_loss": trainer.term_log[-1]["loss"] if trainer.term_log else None,
        "config_sha256": config_sha, "finetune": params.finetune,
        "architecture": "encoder-decoder" if seq2seq else "decoder-only", "n_params": int(n_params), "n_trainable": int(trainable),
        "added_tokens": tokenizer.convert_ids_to_tokens(new_ids),
        "adapter": f"{out_dir.name}/adapter", "training": config["training"],
    }
    if trainer.is_world_process_zero():  # under `accelerate launch` every process holds the same trained weights
        if params.finetune == "full":  # the whole model in float32, with its tokenizer
            model.save_pretrained(out_dir / "adapter")
            tokenizer.save_pretrained(out_dir / "adapter")
        else:  # LoRA / QLoRA: the adapter in bf16, as it is measured and published
            save_adapter(model, out_dir / "adapter", result["added_tokens"])
        write_jsonl(out_dir / "losses.jsonl", [{"run": run.name, **r} for r in trainer.term_log])
        write_json(out_dir / "config.json", config)
        write_json(done, result)
    return result


def _progress_callback(name: str, say: Callable[[str], None]) -> Any:
    """A TrainerCallback that reports step, loss, elapsed and remaining time about every 5% of a run."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Progress lines for <run>/progress.log while a run trains."""

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
            self.t0, self.first = time.perf_counter(), state.global_step
            say(f"{name}: training {state.max_steps} steps (from step {state.global_step})")

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
            every = max(1, state.max_steps // 20)
            if state.global_step % every and state.global_step != state.max_steps:
                return
            done = state.global_step - self.first
            spent = time.perf_counter() - self.t0
            left = spent / max(done, 1) * (state.max_steps - state.global_step)
            loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), float("nan"))
            say(f"{name}: step {state.global_step}/{state.max_steps}, loss {loss:.4f}, "
                f"{spent / 60:.1f} min, about {left / 60:.1f} min left")

    return Progress()


def _training_arguments(params: TrainingParams, ckpt_dir: Path, device: str, seed: int) -> Any:
    """The Trainer's arguments for one run: batches, schedule, checkpoints, device."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum, learning_rate=params.lr, num_train_epochs=params.epochs,
        max_steps=params.max_steps, logging_steps=1, report_to="none", seed=seed,
        save_strategy="steps" if params.save_steps else "no", save_steps=params.save_steps or 500, save_total_limit=1,
        use_cpu=device == "cpu", remove_unused_columns=False,  # bf16: compute_loss's own autocast (run.precision)
        dataloader_num_workers=0, disable_tqdm=False,  # batch order: DistillTrainer._get_train_sampler
    )


def grid(params: TrainingParams) -> list[StudentRun]:
    """Every condition × rationale source × student × seed of the params (one BASE run per student: it is untrained).

    A condition with teacher rationales in its targets (RATIONALE_CONDITIONS) is crossed with
    `training.rationale_sources`; the others have one run per seed, recorded as `unrevised` (`condition_sources`).
    The untrained BASE student does not depend on a training seed: its one run per student carries the first seed.
    """
    return [StudentRun(c, student, seed, source) for student in params.students for c in params.conditions
            for source in condition_sources(c, params.rationale_sources)
            for seed in (params.seeds[:1] if c in UNTRAINED else params.seeds)]


def train_grid(ctx: Any, examples: dict[tuple[str, str], list[Example]]) -> Any:
    """Train every run of the grid (BASE: a row, no training); writes 04_training/runs.jsonl and returns it as a table.

    `examples` is `load_condition_examples(ctx)`: keyed by (condition, rationale source).
    """
    import pandas as pd

    from lib.models import number_formats, pick_device

    device = pick_device(ctx.params.run.device)
    fmt = number_formats(ctx.params.run)["training"]
    force = bool(getattr(ctx, "force", False))  # `--force`: retrain every run, ignoring done.json and checkpoints
    runs = grid(ctx.params.training)
    results = []
    for i, run in enumerate(runs, 1):
        exs = [] if run.condition in UNTRAINED else examples[(run.condition, run.rationale_source)]
        log.info("training run %d/%d: %s (%d examples)", i, len(runs), run.name, len(exs))
        results.append(train_run(run, exs, ctx.params.training, ctx.out / run.name, device,
                                 strategy_tokens=list(ctx.params.counterfactual.strategy_tokens.model_dump().values()),
                                 force=force, fmt=fmt, progress=getattr(ctx, "progress", None)))
    if int(os.environ.get("RANK", "0")) == 0:  # the main process of `accelerate launch` (or the only one)
        write_jsonl(ctx.out / "runs.jsonl", results)
    return pd.DataFrame(results)


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.training RUN_DIR`: step 04 outside its notebook, for `accelerate launch` (one process per GPU).

    Trains the grid of a run folder whose steps 01-03 are done, with the params recorded in RUN_DIR/params.json;
    `python -m lib.study PARAMS --steps 04-06` afterwards finds every run finished and reuses it.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    ctx = open_step("04_training", read_json(run_dir / "params.json"), "", str(run_dir))
    train_grid(ctx, load_condition_examples(ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
