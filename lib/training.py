"""Student training: one text-to-text format per condition, one weighted loss, LoRA on a causal LM.

Every condition of METHOD.md becomes a list of `Example`s (prompt, target, task); the trainer is
`transformers.Trainer` with one override of `compute_loss`:
- the loss is cross-entropy on target tokens only, averaged per task and combined with the
  condition's task weights (MT: alpha * L_answer + (1 - alpha) * L_rationale);
- the LM head is applied only at target positions: with Gemma's 262k-token vocabulary the full
  logits tensor would dominate CPU time and memory.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

from lib.data import MCQuestion, format_question
from lib.params import TrainingParams
from lib.prompts import answer_sentence
from lib.runs import read_json, sha256_json, write_json, write_jsonl

log = logging.getLogger(__name__)

ANSWER_PREFIX, RATIONALE_PREFIX = "[answer]", "[rationale]"


@dataclasses.dataclass
class Example:
    """One training pair: the model reads `prompt` and learns to write `target`."""

    prompt: str
    target: str
    task: str  # loss term the example counts towards
    qid: str


@dataclasses.dataclass
class StudentRun:
    """One cell of the grid: a condition, a student and a seed, and where it is saved."""

    condition: str
    student: str
    seed: int

    @property
    def name(self) -> str:
        """Folder name, e.g. `MT__gemma3-270m-gguf__seed0`."""
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", self.student.strip("/"))[-60:]
        return f"{self.condition}__{slug}__seed{self.seed}"


def task_weights(condition: str, alpha: float) -> dict[str, float]:
    """The loss weight of each task of a condition."""
    return {
        "FT": {"answer": 1.0},
        "FT-CoT": {"cot": 1.0},
        "MT": {"answer": alpha, "rationale": 1.0 - alpha},
        "CFD": {"cfd": 1.0},
    }[condition]


def qa_prompt(q: MCQuestion, prefix: str = "") -> str:
    """The student's input: an optional task or strategy prefix, the question and `A:`."""
    return f"{prefix + ' ' if prefix else ''}{format_question(q)}\nA:"


def condition_examples(condition: str, questions: list[MCQuestion], rationales: dict[str, str],
                       views: list[dict] | None = None, strategy: dict[str, str] | None = None,
                       counterfactuals: list[MCQuestion] | None = None) -> list[Example]:
    """Training examples of one condition from the questions and the teacher's artifacts."""
    ex: list[Example] = []
    if condition == "FT":
        ex = [Example(qa_prompt(q), " " + answer_sentence(q, q.answer), "answer", q.id) for q in questions]
    elif condition == "FT-CoT":
        ex = [Example(qa_prompt(q), f" {rationales[q.id]} {answer_sentence(q, q.answer)}", "cot", q.id)
              for q in questions if rationales.get(q.id)]
    elif condition == "MT":
        for q in questions:
            ex.append(Example(qa_prompt(q, ANSWER_PREFIX), " " + answer_sentence(q, q.answer), "answer", q.id))
            if rationales.get(q.id):
                ex.append(Example(qa_prompt(q, RATIONALE_PREFIX), " " + rationales[q.id], "rationale", q.id))
    elif condition == "CFD":
        if views is None or strategy is None:
            raise ValueError("CFD needs the multi-view artifacts of step 03 (03_counterfactuals/multiview.jsonl)")
        by_id = {q.id: q for q in questions + (counterfactuals or [])}
        for v in views:
            q = by_id.get(v["id"])
            if q is None:
                continue
            token = strategy["positive"] if v["strategy"] == "positive" else strategy["negative"]
            ex.append(Example(qa_prompt(q, token), f" {v['text']} {answer_sentence(q, q.answer)}", "cfd", q.id))
    else:
        raise ValueError(f"condition {condition!r} has no training format yet")
    if not ex:
        raise ValueError(f"condition {condition} has no training examples: check the artifacts of steps 02-03")
    return ex


def eval_prompts(condition: str, q: MCQuestion, strategy_positive: str) -> dict[str, str]:
    """The prompts a student trained under `condition` is asked with at test time, by role (answer / rationale)."""
    if condition == "MT":
        return {"answer": qa_prompt(q, ANSWER_PREFIX), "rationale": qa_prompt(q, RATIONALE_PREFIX)}
    if condition == "CFD":
        return {"answer": qa_prompt(q, strategy_positive)}
    return {"answer": qa_prompt(q)}


def tokenize_examples(examples: list[Example], tokenizer: Any, max_length: int, tasks: list[str]) -> list[dict]:
    """Token ids with labels = -100 on prompt tokens, cut to max_length, plus each example's task index."""
    rows = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", True) and tokenizer.bos_token_id is not None else []
    for e in examples:
        p = bos + tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(e.target, add_special_tokens=False)["input_ids"] + eos
        ids = (p + t)[:max_length]
        labels = ([-100] * len(p) + t)[:max_length]
        if all(x == -100 for x in labels):
            continue  # the prompt alone fills max_length: nothing to learn from this example
        rows.append({"input_ids": ids, "labels": labels, "task_id": tasks.index(e.task)})
    return rows


def collate(batch: list[dict], pad_id: int) -> dict[str, Any]:
    """Pad a batch to its own longest example (right padding), never to a fixed length."""
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "task_ids": torch.tensor([b["task_id"] for b in batch], dtype=torch.long)}


def weighted_target_loss(model: Any, inputs: dict[str, Any], weights: list[float]) -> tuple[Any, dict[int, float]]:
    """Σ_task w_task · mean CE over that task's target tokens, computing logits only where labels are set."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    token_loss = F.cross_entropy(logits, labels[keep], reduction="none")
    token_task = inputs["task_ids"][:, None].expand_as(labels)[keep]
    total, terms = token_loss.new_zeros(()), {}
    for t, w in enumerate(weights):
        sel = token_task == t
        if sel.any():
            term = token_loss[sel].mean()
            terms[t] = float(term.detach())
            total = total + w * term
    return total, terms


def _trainer_class() -> type:
    """transformers.Trainer with the weighted target-only loss and a per-term loss log."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss is `weighted_target_loss`; per-term losses go to `term_log`."""

        def __init__(self, *args: Any, task_names: list[str], task_weight_list: list[float], **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.task_names, self.task_weight_list, self.term_log = task_names, task_weight_list, []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D401
            loss, terms = weighted_target_loss(model, inputs, self.task_weight_list)
            step = self.state.global_step + 1
            self.term_log.extend({"step": step, "term": self.task_names[t], "loss": v} for t, v in terms.items())
            self.term_log.append({"step": step, "term": "total", "loss": float(loss.detach())})
            return (loss, None) if return_outputs else loss

    return DistillTrainer


def lora_model(model: Any, params: TrainingParams) -> Any:
    """Wrap a model with LoRA adapters (after k-bit preparation for QLoRA); `full` trains every weight."""
    if params.finetune == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if params.finetune == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                     target_modules=params.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def train_run(run: StudentRun, examples: list[Example], params: TrainingParams, out_dir: Path, device: str) -> dict:
    """Train one student on one condition's examples and save its adapter, losses and timings."""
    from transformers import TrainingArguments, set_seed

    from lib.models import load_causal_lm, load_tokenizer

    config = {"run": dataclasses.asdict(run), "training": params.model_dump(mode="json"), "n_examples": len(examples),
              "examples_sha256": sha256_json([dataclasses.asdict(e) for e in examples])}
    done = out_dir / "done.json"
    if done.exists() and read_json(done).get("config_sha256") == sha256_json(config):
        log.info("%s: finished earlier with the same config, skipped", run.name)
        return read_json(done)
    set_seed(run.seed)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(run.student, padding_side="right")
    model = lora_model(load_causal_lm(run.student, device, load_in_4bit=params.finetune == "qlora"), params)
    weights = task_weights(run.condition, params.alpha)
    tasks = list(weights)
    data = tokenize_examples(examples, tokenizer, params.max_length, tasks)
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum, learning_rate=params.lr, num_train_epochs=params.epochs,
        max_steps=params.max_steps, logging_steps=1, save_strategy="no", report_to="none", seed=run.seed,
        use_cpu=device == "cpu", bf16=device == "cuda", remove_unused_columns=False,
        train_sampling_strategy="group_by_length", dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = _trainer_class()(model=model, args=args, train_dataset=data,
                               data_collator=lambda b: collate(b, tokenizer.pad_token_id),
                               task_names=tasks, task_weight_list=[weights[t] for t in tasks])
    trainer.train()
    model.save_pretrained(out_dir / "adapter")
    tokenizer.save_pretrained(out_dir / "adapter")
    target_tokens = sum(sum(x != -100 for x in d["labels"]) for d in data)
    trainable, total = (model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters")
                        else (model.num_parameters(), model.num_parameters()))
    result = {
        "run": run.name, "condition": run.condition, "student": run.student, "seed": run.seed,
        "n_examples": len(data), "steps": trainer.state.global_step, "wall_s": round(time.perf_counter() - t0, 1),
        "target_tokens_per_epoch": target_tokens, "final_loss": trainer.term_log[-1]["loss"] if trainer.term_log else None,
        "config_sha256": sha256_json(config), "finetune": params.finetune,
        "n_params": int(total), "n_trainable": int(trainable),
    }
    write_jsonl(out_dir / "losses.jsonl", [{"run": run.name, **r} for r in trainer.term_log])
    write_json(out_dir / "config.json", config)
    write_json(done, result)
    return result


def grid(params: TrainingParams) -> list[StudentRun]:
    """Every condition × student × seed of the params."""
    return [StudentRun(c, s, seed) for s in params.students for c in params.conditions for seed in params.seeds]


def load_condition_examples(ctx: Any) -> dict[str, list[Example]]:
    """Each configured condition's examples, built from the artifacts of steps 01-03."""
    from lib.data import read_questions
    from lib.runs import read_jsonl
    from lib.teacher import read_rationales

    params = ctx.params
    train = read_questions(ctx.artifact("01_data", "train.jsonl"))
    rationales = read_rationales(ctx.artifact("02_teacher", "rationales.jsonl"), "train", params.training.rationale_filter)
    needs_views = "CFD" in params.training.conditions
    views = read_jsonl(ctx.artifact("03_counterfactuals", "multiview.jsonl")) if needs_views else None
    cfs = read_questions(ctx.artifact("03_counterfactuals", "cf_questions.jsonl")) if needs_views else None
    strategy = params.counterfactual.strategy_tokens.model_dump()
    return {c: condition_examples(c, train, rationales, views, strategy, cfs) for c in params.training.conditions}


def examples_frame(examples: dict[str, list[Example]]) -> Any:
    """One example per condition and task, for display."""
    import pandas as pd

    rows = [{"condition": c, **dataclasses.asdict(e)} for c, exs in examples.items() for e in exs]
    return pd.DataFrame(rows).groupby(["condition", "task"]).head(1).reset_index(drop=True)


def train_grid(ctx: Any, examples: dict[str, list[Example]]) -> Any:
    """Train every condition × student × seed; writes 04_training/runs.jsonl and returns it as a table."""
    import pandas as pd

    from lib.models import pick_device

    device = pick_device(ctx.params.run.device)
    runs = grid(ctx.params.training)
    results = []
    for i, run in enumerate(runs, 1):
        log.info("training run %d/%d: %s (%d examples)", i, len(runs), run.name, len(examples[run.condition]))
        results.append(train_run(run, examples[run.condition], ctx.params.training, ctx.out / run.name, device))
    write_jsonl(ctx.out / "runs.jsonl", results)
    return pd.DataFrame(results)


def read_losses(train_dir: Path) -> Any:
    """Every run's per-step losses (columns run, step, term, loss)."""
    import pandas as pd

    from lib.runs import read_jsonl

    frames = [pd.DataFrame(read_jsonl(p)) for p in sorted(Path(train_dir).glob("*/losses.jsonl"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "step", "term", "loss"])
