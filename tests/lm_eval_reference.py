"""lm-evaluation-harness itself, offline: its own task configs and its HFLM, run on our questions.

Used by tests/test_standard_readings.py and benchmarks/lm_eval_agreement.py to hold lib.standard_readings against
the tool the field uses: the task YAML files that ship with lm-eval (`arc_easy`, `commonsense_qa`) are loaded as they
are, only their dataset pointed at a local JSON file of our questions in the hub's schema, so lm-eval renders the
prompts, scores the pairs and computes acc / acc_norm by its own rules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lib.questions import MCQuestion

TASKS = {"arc_easy": "arc/arc_easy.yaml", "commonsense_qa": "commonsense_qa/default.yaml"}


def hub_doc(q: MCQuestion) -> dict[str, Any]:
    """A question in the schema of the hub's ai2_arc / commonsense_qa rows, which lm-eval's task templates read."""
    return {"id": q.id, "question": q.question, "choices": {"text": list(q.choices), "label": list(q.labels)},
            "answerKey": q.labels[q.answer]}


def lm_eval_task(name: str, questions: list[MCQuestion], folder: Path) -> Any:
    """lm-eval's task `name` (its own YAML) over `questions`, written to `folder` as the test split."""
    import lm_eval
    import yaml
    from lm_eval.api.task import ConfigurableTask

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(hub_doc(q)) + "\n" for q in questions), encoding="utf-8")
    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / TASKS[name]).read_text(encoding="utf-8"))
    config.pop("tag", None)
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"test": str(data)}},
                  training_split=None, validation_split=None, test_split="test", fewshot_split=None)
    return ConfigurableTask(config=config)


def lm_eval_requests(task: Any) -> list[list[tuple[str, str]]]:
    """Per document of `task`, the (context, continuation) pairs lm-eval scores: its prompt and each choice."""
    out = []
    for doc in task.test_docs():
        context = task.doc_to_text(doc)
        out.append([(context, task.config.target_delimiter + choice) for choice in task.doc_to_choice(doc)])
    return out


def lm_eval_scores(task: Any, logliks: list[list[float]]) -> dict[str, float]:
    """lm-eval's own metrics (acc, and acc_norm where the task has it) from per-choice log-likelihoods."""
    totals: dict[str, float] = {}
    docs = list(task.test_docs())
    for doc, values in zip(docs, logliks):
        for metric, value in task.process_results(doc, [(v, False) for v in values]).items():
            totals[metric] = totals.get(metric, 0.0) + float(value)
    return {metric: total / len(docs) for metric, total in totals.items()}


def hflm(model: Any, tokenizer: Any, batch_size: int = 8) -> Any:
    """lm-eval's HFLM around a loaded causal LM and its tokenizer (on the model's device)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))


def hflm_logliks(lm: Any, pairs: list[tuple[str, str]]) -> list[float]:
    """lm-eval's log-likelihood of each (context, continuation) pair."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    return [float(ll) for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)]
