"""Study parameters: one YAML file per study, validated before any work starts.

Every section of `params/<study>.yaml` is a pydantic model that forbids unknown keys, so a
typo ends the run at once with the file, the line, the dotted key and a close-match
suggestion. This module must stay light to import (no torch, no transformers): the runner
validates params in well under a second, before any model is loaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator, ValidationError, ValidationInfo

from lib.conditions import CONDITIONS
from lib.files import PROJECT_ROOT, resolve_path
from lib.questions import MC_FORMATS


HENDRIKS_FOLDERS = ("cqa-llama-train", "cqa-llama-test")  # replay_source hendriks: the split folders of replay_dir


class ParamsError(ValueError):
    """A params file or override that cannot be used; the message says where and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunParams(_Section):
    name: str = "quickstart"  # folder name under outputs/
    seed: int = 0  # seeds data splits, sampling and training
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    # number format of training, scoring, embedding and decoding: fp32, bf16, or auto = bf16 for each operation where
    # the device computes bf16 natively and it measured faster (CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class DataSource(_Section):
    name: str  # short name used in tables (e.g. csqa, arc_easy)
    format: str  # one of lib.questions.MC_FORMATS: commonsenseqa, arc, qasc, openbookqa
    source: str  # local file in the original format (relative to the project root) or a hub dataset id
    split: str = "train"  # hub split; ignored for local files

    @field_validator("source")
    @classmethod
    def _local_file_exists(cls, v: str) -> str:
        """A source that names a file must exist; anything else is taken as a hub id."""
        return check_local_source(v)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        """The loader must know the format."""
        if v not in MC_FORMATS:
            hint = difflib.get_close_matches(v, MC_FORMATS, n=1, cutoff=0.4)
            raise ValueError(f"unknown format {v!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" Known: {', '.join(MC_FORMATS)}")
        return v


class ClaimsSource(_Section):
    source: str  # Climate-FEVER jsonl (original schema) or the hub id climate_fever

    @field_validator("source")
    @classmethod
    def _local_file_exists(cls, v: str) -> str:
        """A source that names a file must exist; anything else is taken as a hub id."""
        return check_local_source(v)


class DataParams(_Section):
    train: DataSource  # in-distribution questions the students are trained on
    test: DataSource | None = None  # in-distribution test set; null = hold out test_fraction of train
    test_fraction: float = Field(0.3, gt=0, lt=1)  # share of train held out when test is null
    ood: list[DataSource] = []  # extra test sets (train on one, test on the others)
    claims: ClaimsSource | None = None  # Climate-FEVER claim-evidence pairs for the CAUSAL condition
    max_train: int | None = Field(None, ge=2)  # cap on training questions (null = all)
    max_test: int | None = Field(None, ge=1)  # cap on each test set (null = all)
    max_claims: int | None = Field(None, ge=1)  # cap on claims (null = all)


class TeacherParams(_Section):
    backend: Literal["local", "replay", "openai"] = "local"  # local = in-process transformers model; replay = recorded outputs; openai = any OpenAI-compatible server
    model: str = "gemma3-270m-gguf"  # local: a model spec (see lib.models); openai: the served model name
    # backend=replay: the distilling step-by-step cqa folder (palm), the CoS-E v1.11 folder (cose), or the folder
    # holding cqa-llama-train/ and cqa-llama-test/ (hendriks: Hendriks et al.'s llm_outputs/consolidated)
    replay_dir: str | None = None
    # recorded outputs replayed: PaLM-540B few-shot CoT, CoS-E human explanations, or Hendriks et al.'s LLaMA-2-13B
    # explanations of the gold answer it was shown (no predictions), their revisions and counterfactual rationales
    replay_source: Literal["palm", "cose", "hendriks"] = "palm"
    n_shots: int = Field(2, ge=0, le=7)  # worked examples in the few-shot CoT prompt
    max_new_tokens: int = Field(64, ge=8)  # tokens per teacher completion
    batch_size: int = Field(8, ge=1)  # local: prompts per generate() call
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    base_url: str | None = None  # openai: server base URL, e.g. http://127.0.0.1:8000/v1 (null = api.openai.com)
    api_key_env: str | None = "OPENAI_API_KEY"  # openai: NAME of the environment variable holding the key (never the key); null = no key
    endpoint: Literal["chat", "completions"] = "chat"  # openai: /chat/completions (prompt as one user message) or /completions (raw prompt)
    max_in_flight: int = Field(8, ge=1)  # openai: requests in flight at once
    requests_per_minute: int | None = Field(None, ge=1)  # openai: client-side request rate limit (null = none)
    tokens_per_minute: int | None = Field(None, ge=1)  # openai: client-side prompt+completion token rate limit (null = none)
    request_timeout_s: float = Field(60.0, gt=0)  # openai: seconds before one request is abandoned and retried
    max_retries: int = Field(6, ge=0)  # openai: retries per request on 429, 5xx, timeouts, connection errors, bad bodies
    backoff_s: float = Field(1.0, gt=0)  # openai: first retry delay; doubles per retry (with jitter) up to 60 s unless Retry-After says otherwise
    batch_api: bool = False  # openai: send uncached requests through the OpenAI Batch API (cheaper, slower; for large runs)
    batch_poll_s: float = Field(30.0, gt=0)  # openai batch_api: seconds between status polls
    max_reasks: int = Field(1, ge=0)  # re-asks of a response that fails validation (unparseable, truncated, bad JSON)
    reask_temperature: float = Field(0.7, ge=0)  # sampling temperature of re-asks (a greedy re-ask would repeat itself)
    price_input_usd_per_mtok: float | None = Field(None, ge=0)  # dollars per million prompt tokens (null = cost not tracked)
    price_output_usd_per_mtok: float | None = Field(None, ge=0)  # dollars per million completion tokens
    max_cost_usd: float | None = Field(None, gt=0)  # budget: stop sending before the run's teacher cost would pass this
    max_requests: int | None = Field(None, ge=1)  # budget: stop before the run's teacher requests would pass this
    cache: str | None = None  # SQLite response cache (null = <run_dir>/teacher_cache.sqlite, outside the step folders)
    revise_max_questions: int | None = Field(None, ge=1)  # training questions given critique-revision (3 calls each; null = all)
    causal_max_pairs: int | None = Field(None, ge=1)  # claim-evidence pairs per split given a causal explanation (null = all)
    revise_max_new_tokens: int = Field(96, ge=8)  # tokens per critique-revision completion
    causal_max_new_tokens: int = Field(128, ge=16)  # tokens per causal explanation (a JSON object of three sentences)

    @model_validator(mode="after")
    def _backend_needs(self) -> "TeacherParams":
        """The replay backend reads recorded files; a cost budget needs prices."""
        if self.backend == "replay":
            if not self.replay_dir:
                raise ValueError("backend 'replay' needs teacher.replay_dir (the folder holding cqa_train.json and llm/, "
                                 "the CoS-E v1.11 folder with replay_source: cose, or the folder holding "
                                 "cqa-llama-train and cqa-llama-test with replay_source: hendriks)")
            check_local_source(self.replay_dir, must_exist=True)
            _check_replay_dir(self.replay_dir, self.replay_source)
        if self.max_cost_usd is not None and (self.price_input_usd_per_mtok is None or self.price_output_usd_per_mtok is None):
            raise ValueError("teacher.max_cost_usd needs teacher.price_input_usd_per_mtok and "
                             "teacher.price_output_usd_per_mtok (dollars per million tokens) to count cost")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError("teacher.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                             "never the key itself")
        return self


# what each replay source reads in teacher.replay_dir, and an example of such a folder
REPLAY_FILES = {"palm": (("cqa_train.json", "llm"),
                         "../shared/data/teacher_rationales/distilling_step_by_step_cqa"),
                "cose": (("cose_train_v1.11.jsonl", "cose_dev_v1.11.jsonl"), "../shared/data/cos_e/v1.11"),
                "hendriks": (tuple(f"{name}/shard_0" for name in HENDRIKS_FOLDERS), "../shared/data/hendriks_llm_outputs")}


def _check_replay_dir(replay_dir: str, source: str) -> None:
    """The replay folder holds what `source` reads (REPLAY_FILES), so a wrong folder is refused before any step runs."""
    folder = resolve_path(replay_dir)
    needed, example = REPLAY_FILES[source]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise ValueError(f"teacher.replay_dir {replay_dir} (resolved to {folder}) lacks {', '.join(missing)}; with "
                         f"replay_source: {source} point it at the folder holding {', '.join(needed)} "
                         f"(e.g. {example})")


class StrategyTokens(_Section):
    positive: str = "[Direct election]"  # marks a positive-view (argue for the answer) target
    negative: str = "[Elimination method]"  # marks a negative-view (refute a wrong option) target


class CounterfactualParams(_Section):
    max_questions: int = Field(8, ge=1)  # training questions to build counterfactuals from
    topic_source: Literal["teacher", "concept"] = "teacher"  # who picks the words to mask: the teacher (concept as fallback) or CommonsenseQA's concept
    # the new answer: a former distractor (the first, or one drawn with run.seed), or new_option: a new answer the teacher
    # proposes for the masked question, which takes the place of a drawn distractor (option count and letters unchanged)
    new_target: Literal["first_distractor", "random_distractor", "new_option"] = "first_distractor"
    votes: int = Field(3, ge=1)  # k teacher reasoning paths sampled per counterfactual
    vote_temperature: float = Field(0.8, gt=0)  # sampling temperature of the k paths
    accept_threshold: float = Field(0.6, gt=0, le=1)  # share of paths that must reach the new target
    negative_views: int | None = Field(None, ge=0)  # refutations per question, of wrong options drawn with run.seed (null = every wrong option, as seed 002; 0 = none)
    cf_rationale_questions: int | None = Field(None, ge=1)  # training questions given a counterfactual rationale (null = all)
    max_new_tokens: int = Field(48, ge=8)  # tokens per teacher call in this step, votes aside
    vote_max_new_tokens: int = Field(96, ge=8)  # tokens per vote: a reasoning path must reach its answer sentence
    strategy_tokens: StrategyTokens = StrategyTokens()


class LoraParams(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None  # null: peft's default for the architecture (q_proj, v_proj for Gemma; q, v for T5)


class TrainingOverride(_Section):
    """Training settings of one condition that differ from the `training` section (training.overrides.<condition>).

    Every key is optional: an absent (or null) key keeps the section's value; `lora` changes only the keys it names.
    """

    finetune: Literal["lora", "qlora", "full"] | None = None
    lora: LoraParams | None = None  # only the keys given here replace the section's (e.g. {r: 16})
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=-1)
    batch_size: int | None = Field(None, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    max_length: int | None = Field(None, ge=16)
    alpha: float | None = Field(None, ge=0, le=1)


class TrainingParams(_Section):
    students: list[str] = ["gemma3-270m-gguf"]  # model specs of the students
    conditions: list[str] = ["FT-CoT", "MT"]  # names from METHOD.md: BASE (untrained), FT, FT-CoT, MT, CF, MT+CF, CFD, CAUSAL
    seeds: list[int] = [0]  # one training run per seed
    # Hendriks et al.'s Revised factor, crossed with the conditions trained on teacher rationales (FT-CoT, MT, CF,
    # MT+CF): unrevised = the step-02 CoT rationale, revised = the critique-revised explanation (revisions.jsonl)
    rationale_sources: list[Literal["unrevised", "revised"]] = ["unrevised"]
    finetune: Literal["lora", "qlora", "full"] = "lora"  # qlora = LoRA on 4-bit NF4 weights
    lora: LoraParams = LoraParams()
    epochs: float = Field(1.0, gt=0)  # passes over each condition's examples
    max_steps: int = Field(-1, ge=-1)  # > 0 caps optimiser steps (overrides epochs)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)  # MT weight: alpha * L_answer + (1 - alpha) * L_rationale
    max_length: int = Field(256, ge=16)  # tokens per example (prompt + target); a longer one loses the end of its rationale, never its answer sentence and EOS (runs.jsonl n_truncated)
    # closing sentence of every target: "So the answer is (b) bed." (letter) or "So the answer is bed." (text; small
    # students bind an option's text, not its letter: pair it with evaluation.loglik_scoring: answer_text)
    answer_format: Literal["letter", "text"] = "letter"
    rationale_filter: Literal["any", "parsed", "correct"] = "parsed"  # teacher rationales trained on: any non-empty, those with a readable answer, or only correct ones (CAUSAL and revised: any keeps failed outputs as written)
    save_steps: int = Field(50, ge=0)  # checkpoint every N optimiser steps so an interrupted run resumes (0 = no checkpoints)
    overrides: dict[str, TrainingOverride] = {}  # per condition: settings that differ, e.g. {CAUSAL: {finetune: qlora, epochs: 10}}

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, v: list[str]) -> list[str]:
        """Condition names must be METHOD.md's (lib.conditions.CONDITIONS), each listed once."""
        for name in v:
            if name not in CONDITIONS:
                hint = difflib.get_close_matches(name, CONDITIONS, n=1, cutoff=0.4)
                raise ValueError(
                    f"unknown condition {name!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" Known: {', '.join(CONDITIONS)}"
                )
        if len(set(v)) != len(v):
            raise ValueError("conditions are listed twice")
        return v

    @field_validator("rationale_sources")
    @classmethod
    def _sources_once_each(cls, v: list[str]) -> list[str]:
        """At least one source, none listed twice."""
        if not v:
            raise ValueError("list at least one rationale source: unrevised, revised or both")
        if len(set(v)) != len(v):
            raise ValueError("a rationale source is listed twice")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides_name_trained_conditions(cls, v: dict[str, TrainingOverride],
                                           info: ValidationInfo) -> dict[str, TrainingOverride]:
        """Each override's key is a condition of training.conditions that is trained (not BASE)."""
        listed = info.data.get("conditions")  # None when the conditions themselves were refused
        for name in v:
            if name not in CONDITIONS:
                hint = difflib.get_close_matches(name, CONDITIONS, n=1, cutoff=0.4)
                raise ValueError(f"unknown condition {name!r} in training.overrides"
                                 + (f"; did you mean {hint[0]!r}?" if hint else "")
                                 + f" Known: {', '.join(CONDITIONS)}")
            if name == "BASE":
                raise ValueError("training.overrides.BASE: BASE is the untrained student and has no training "
                                 "settings; remove this override")
            if listed is not None and name not in listed:
                raise ValueError(f"training.overrides.{name}: {name} is not one of training.conditions "
                                 f"({', '.join(listed)}); add it there or remove this override")
        return v

    def for_condition(self, condition: str) -> "TrainingParams":
        """The settings a run of `condition` trains with: this section with `overrides[condition]` applied."""
        override = self.overrides.get(condition)
        if override is None:
            return self
        update = override.model_dump(exclude_unset=True, exclude_none=True, exclude={"lora"})
        if override.lora is not None:
            update["lora"] = self.lora.model_copy(update=override.lora.model_dump(exclude_unset=True))
        return self.model_copy(update=update)


class EvaluationParams(_Section):
    max_new_tokens: int = Field(64, ge=8)  # tokens the student may generate (rationale + answer)
    batch_size: int = Field(8, ge=1)
    embedder: str = "all-MiniLM-L6-v2"  # sentence-transformer for CEC (packaged default, a hub id or a folder)
    embed_batch_size: int = Field(128, ge=1)  # sentences per encoder call for CEC
    loglik: bool = True  # also pick the option by log-likelihood (second accuracy, causal LMs): loglik_pred (summed), loglik_norm_pred (per character)
    # what is scored per option after the prompt: option_text (' bed', as lm-evaluation-harness), answer_text
    # (' So the answer is' + ' bed.') or answer_sentence (' So the answer is (b) bed.', the old scoring: the letter
    # decides which option wins; benchmarks/loglik_bias.py counts each letter's picks). Faithfulness reads answers
    # with it too (per character).
    loglik_scoring: Literal["option_text", "answer_text", "answer_sentence"] = "option_text"
    # every student also read zero-shot as lm-evaluation-harness reads small models (lib.standard_readings): arc_easy's
    # cloze formulation (acc, acc_norm) and commonsense_qa's lettered one (acc); causal LMs, score_max_items items
    standard_readings: bool = True
    text_metrics: bool = True  # BLEU (sacrebleu), ROUGE-L (rouge-score) and BERTScore against the teacher's rationale
    bertscore_model: str = "all-MiniLM-L6-v2"  # BERT-style encoder for BERTScore: an embedder spec (packaged, tiny-random-minilm, folder, hub id)
    bertscore_layers: int | None = Field(None, ge=1)  # encoder layer whose token embeddings BERTScore uses (null = the last)
    faithfulness: bool = True  # answer-change rate when the student's rationale is replaced (perturbed / counterfactual)
    perturbation: Literal["other_item", "shuffle"] = "other_item"  # perturbed rationale: another item's rationale, or this one's sentences shuffled
    score_max_items: int | None = Field(None, ge=2)  # items per test set given log-likelihood scoring and faithfulness (each scores every option; null = all)
    judge: bool = True  # rate explanations with an LLM judge through the teacher (completeness, contrastiveness, soundness, 1-7)
    judge_max_items: int = Field(8, ge=1)  # explanations judged per run (in-distribution items, in test-set order)
    judge_max_new_tokens: int = Field(64, ge=16)  # tokens per judgement
    human_sheet_items: int = Field(30, ge=1)  # explanations exported to the blinded human rating sheet


class StatisticsParams(_Section):
    # per-item outcomes tested across conditions; one a run lacks is reported as absent
    outcomes: list[Literal["correct", "cec", "bleu", "rouge_l", "bertscore", "loglik_correct", "loglik_norm_correct",
                           "cloze_correct", "cloze_norm_correct", "lettered_correct"]] = ["correct", "cec"]
    n_boot: int = Field(1000, ge=100)  # bootstrap resamples for confidence intervals
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of every test (Tukey, ANOVA, Dunn, McNemar)
    reference: str | None = None  # baseline condition of the regressions, one of training.conditions (null = the first listed)


class StudyParams(_Section):
    run: RunParams = RunParams()
    data: DataParams
    teacher: TeacherParams = TeacherParams()
    counterfactual: CounterfactualParams = CounterfactualParams()
    training: TrainingParams = TrainingParams()
    evaluation: EvaluationParams = EvaluationParams()
    statistics: StatisticsParams = StatisticsParams()

    @model_validator(mode="after")
    def _reference_is_a_condition(self) -> "StudyParams":
        """The regressions' reference must be one of the conditions trained."""
        ref = self.statistics.reference
        if ref is not None and ref not in self.training.conditions:
            raise ValueError(f"statistics.reference {ref!r} is not one of training.conditions "
                             f"({', '.join(self.training.conditions)}); name one of them, or null for the first")
        return self

    @model_validator(mode="after")
    def _given_answers_have_no_correct_filter(self) -> "StudyParams":
        """The Hendriks replay records no teacher answer (it was given the gold one), so no rationale is `correct`."""
        t = self.teacher
        if t.backend == "replay" and t.replay_source == "hendriks" and self.training.rationale_filter == "correct":
            raise ValueError("training.rationale_filter is correct, but the Hendriks replay's rationales explain the "
                             "gold answer the teacher was shown and record no answer of its own, so none would be "
                             "kept; use parsed (every non-empty recorded rationale) or any")
        return self

    @model_validator(mode="after")
    def _scoring_reads_the_trained_answer(self) -> "StudyParams":
        """Students trained to answer with the option's text are not scored on a sentence with its letter."""
        if self.training.answer_format == "text" and self.evaluation.loglik_scoring == "answer_sentence":
            raise ValueError("training.answer_format is text but evaluation.loglik_scoring is answer_sentence, which "
                             "scores 'So the answer is (b) bed.', a sentence these students never saw; use answer_text "
                             "(or option_text)")
        return self


def check_local_source(value: str, must_exist: bool = False) -> str:
    """Reject a source that names a local file or folder that is not there."""
    looks_local = must_exist or value.startswith((".", "/", "~")) or Path(value).suffix in {".json", ".jsonl"}
    if looks_local and not resolve_path(value).exists():
        raise ValueError(f"file not found: {value} (resolved to {resolve_path(value)}); relative paths start at {PROJECT_ROOT}")
    return value


def key_lines(text: str) -> dict[str, int]:
    """Map each dotted key of a YAML document to its 1-based line number."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = f"{prefix}.{i}"
                lines.setdefault(key, item.start_mark.line + 1)
                walk(item, key)

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted-key overrides (`{"teacher.max_new_tokens": 32}`) to a raw params dict."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return raw


def _split_override(text: str) -> tuple[str, Any]:
    """Parse one `--set section.key=value`."""
    if "=" not in text:
        raise ParamsError(f"--set {text!r}: expected section.key=value, e.g. --set teacher.max_new_tokens=32")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_of(arg)) is not None:
            return found
    return None


def _fields_at(loc: tuple) -> list[str]:
    """The field names allowed where a pydantic error points (the parent of its last key)."""
    model: type[BaseModel] | None = StudyParams
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        model = _model_of(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields)


def format_errors(exc: ValidationError, where: str, lines: dict[str, int], overridden: set[str] = frozenset()) -> str:
    """Turn pydantic errors into one message per problem: place, dotted key, what is wrong, a hint."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        dotted = ".".join(str(p) for p in loc)
        line = next((lines[k] for k in _prefixes(dotted) if k in lines), None)
        set_by = next((k for k in _prefixes(dotted) if k in overridden), None)
        place = f"--set {set_by}" if set_by else f"{where}:{line}" if line else where
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.5)
            msg = f"unknown key '{dotted}'" + (f"; did you mean '{hint[0]}'?" if hint else "") + (
                f" Allowed here: {', '.join(_fields_at(loc))}" if _fields_at(loc) else ""
            )
        elif err["type"] == "missing":
            msg = f"'{dotted}' is required but missing"
        else:
            msg = f"'{dotted}': {msg} (got {err.get('input')!r})"
        out.append(f"{place}: {msg}")
    return "\n".join(out)


def _prefixes(dotted: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]: the closest key with a known line wins."""
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def load_params(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> StudyParams:
    """Read, override and validate a study params file; raises ParamsError with every problem."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}; the studies are in {PROJECT_ROOT / 'params'}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections (run, data, teacher, ...)")
    overrides = overrides or []
    pairs = dict(overrides) if isinstance(overrides, dict) else dict(_split_override(o) for o in overrides)
    return validate_params(apply_overrides(raw, pairs), str(path), key_lines(text), set(pairs))


def validate_params(raw: dict, where: str = "params", lines: dict[str, int] | None = None,
                    overridden: set[str] = frozenset()) -> StudyParams:
    """Validate a raw params dict; raises ParamsError naming each bad key."""
    try:
        return StudyParams.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_errors(exc, where, lines or {}, overridden)) from None


def section_for(params: StudyParams, names: tuple[str, ...]) -> dict[str, Any]:
    """The plain-dict values of the named params sections (for hashing and manifests)."""
    dumped = params.model_dump(mode="json")
    return {n: dumped[n] for n in names}
