"""The teacher engine: cached, validated and budgeted requests to a generative teacher.

One engine serves every generative teacher backend (params `teacher.backend`):
- `openai`: any OpenAI-compatible server, through `lib.openai_api.OpenAIBackend` (concurrency, rate limits,
  retries, the OpenAI Batch API);
- `local`: an in-process transformers causal LM, batched generation (`LocalBackend`; loaded only when a request
  misses the cache, so a fully cached rerun never loads it).

Every response is stored in the run's `ResponseCache` the moment it arrives. Each request may carry a
validator; a response that fails it is re-asked (a new sample at `reask_temperature`) at most
`max_reasks` times, and one that never validates comes back as a failure with its reason. A budget
(`max_cost_usd`, `max_requests`, counted over the whole cache file, i.e. the run) stops sending before it
would be passed: the requests left over come back as failures that say so, and a rerun with a larger
budget continues from the cache.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from lib.files import sha256_json
from lib.models import Completion, generate_texts, load_causal_lm, load_tokenizer, pick_device
from lib.params import TeacherParams
from lib.questions import NEXT_QUESTION
from lib.response_cache import request_key, ResponseCache
from lib.runs import seed_everything

log = logging.getLogger(__name__)

Validator = Callable[[Completion], "str | None"]


@dataclasses.dataclass
class Ask:
    """One request to the teacher: a rendered prompt, its sampling params and how to check the answer."""

    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    sample: int = 0  # sample index: the k-th of n samples of the same prompt is cached separately
    template: str = ""  # template name (provenance; its hash is part of the cache key)
    template_sha256: str = ""
    validate: Validator | None = None  # returns None when the completion is usable, else the failure reason
    stop: str = NEXT_QUESTION  # generation stops at this string (free-text tasks stop at a blank line)


@dataclasses.dataclass
class Answer:
    """What the engine made of one Ask: the last completion received, and why it failed (None = valid)."""

    completion: Completion
    failure: str | None
    responses: int  # responses used (1 + re-asks); 0 when none was received
    cached: int  # of which came from the cache


@dataclasses.dataclass
class Call:
    """One request on the wire (an Ask at one re-ask number)."""

    index: int
    request: dict[str, Any]
    key: str
    est_tokens: int  # prompt estimate + max tokens, for rate limits and the budget


class BudgetExhausted(RuntimeError):
    """Raised inside the engine when a request would pass `teacher.max_cost_usd` / `teacher.max_requests`."""


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's tokens (about four characters each), used before sending."""
    return max(1, math.ceil(len(text) / 4))


class Budget:
    """Requests and dollars this run may still spend; checked before every request is sent."""

    def __init__(self, params: TeacherParams, spent: dict[str, float]):
        self.params = params
        self.requests = int(spent["responses"])  # stored responses of earlier sessions count as spent
        self.cost = float(spent["cost_usd"])
        self.reserved = 0.0
        self.stopped: str | None = None

    def price(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollar cost of a response at the configured prices (0 when none are configured)."""
        p_in, p_out = self.params.price_input_usd_per_mtok or 0.0, self.params.price_output_usd_per_mtok or 0.0
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6

    def admit(self, prompt_tokens: int, max_tokens: int) -> float:
        """Reserve a request's worst-case cost, or raise BudgetExhausted (and stay stopped) if it would not fit."""
        if self.stopped:
            raise BudgetExhausted(self.stopped)
        worst = self.price(prompt_tokens, max_tokens)
        if self.params.max_requests is not None and self.requests + 1 > self.params.max_requests:
            self.stopped = f"budget: teacher.max_requests={self.params.max_requests} reached"
        elif self.params.max_cost_usd is not None and self.cost + self.reserved + worst > self.params.max_cost_usd:
            self.stopped = (f"budget: teacher.max_cost_usd={self.params.max_cost_usd} would be passed "
                            f"(spent ${self.cost:.4f}, ${self.reserved:.4f} in flight)")
        if self.stopped:
            log.warning("%s; no further requests are sent. Raise it and rerun: stored responses are reused.", self.stopped)
            raise BudgetExhausted(self.stopped)
        self.requests += 1
        self.reserved += worst
        return worst

    def settle(self, reserved: float, cost: float) -> None:
        """Replace a request's reservation by what it actually cost."""
        self.reserved -= reserved
        self.cost += cost


def sampling_seed(run_seed: int, sample: int, reask: int) -> int:
    """The seed of one sampled request: distinct per sample and re-ask, fixed by the run's seed."""
    return int(sha256_json([run_seed, sample, reask])[:8], 16)


class Backend(Protocol):
    """What the engine needs of a backend (`LocalBackend`, `lib.openai_api.OpenAIBackend`)."""

    name: str  # "local" or "openai", part of every cache key
    model: str
    cache: ResponseCache | None  # set by CachedTeacher

    def request(self, prompt: str, max_tokens: int, temperature: float, stop: str = NEXT_QUESTION) -> dict[str, Any]:
        """The settings of one request, as cached."""

    async def run(self, calls: list[Call], admit: Callable[[Call], float],
                  done: Callable[[Call, Completion | None, str | None, float], None]) -> None:
        """Send every call; `admit` reserves its budget (or raises BudgetExhausted), `done` takes each result."""


class LocalBackend:
    """A transformers causal LM in this process, batched; loaded on the first request that misses the cache."""

    name = "local"

    def __init__(self, params: TeacherParams, device: str = "auto"):
        self.params = params
        self.model = params.model
        self.device = device
        self._loaded: tuple[Any, Any] | None = None
        self.cache: ResponseCache | None = None

    def request(self, prompt: str, max_tokens: int, temperature: float, stop: str = NEXT_QUESTION) -> dict[str, Any]:
        """The generation settings of one request; the device is in them, since a GPU decodes in bf16 (lib.models)."""
        return {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stop": [stop],
                "device": pick_device(self.device)}

    def load(self) -> tuple[Any, Any]:
        """The model and tokenizer (loaded once)."""
        if self._loaded is None:
            self._loaded = (load_causal_lm(self.model, pick_device(self.device)), load_tokenizer(self.model))
        return self._loaded

    async def run(self, calls: list[Call], admit: Callable[[Call], float],
                  done: Callable[[Call, Completion | None, str | None, float], None]) -> None:
        """Generate in batches of `batch_size` prompts with the same settings; each result is stored at once."""
        admitted: list[tuple[Call, float]] = []
        for call in calls:
            try:
                admitted.append((call, admit(call)))
            except BudgetExhausted as exc:
                done(call, None, str(exc), 0.0)
        groups: dict[tuple[int, float, str], list[tuple[Call, float]]] = collections.defaultdict(list)
        for call, reserved in admitted:
            key = (call.request["max_tokens"], call.request["temperature"], call.request["stop"][0])
            groups[key].append((call, reserved))
        for (max_tokens, temperature, stop), members in groups.items():
            members.sort(key=lambda m: -len(m[0].request["prompt"]))  # similar lengths pad less
            model, tokenizer = self.load()
            for start in range(0, len(members), self.params.batch_size):
                chunk = members[start:start + self.params.batch_size]
                if temperature > 0:  # a sampled batch draws from the seed of its first request
                    seed_everything(chunk[0][0].request["seed"])
                outs = generate_texts(model, tokenizer, [c.request["prompt"] for c, _ in chunk], max_tokens,
                                      batch_size=len(chunk), temperature=temperature, stop=stop, progress=False)
                for (call, reserved), (completion,) in zip(chunk, outs):
                    done(call, completion, None, reserved)
                await asyncio.sleep(0)


class CachedTeacher:
    """A generative teacher behind the response cache: the `Teacher` protocol plus validated `ask`."""

    def __init__(self, backend: Backend, cache: ResponseCache, params: TeacherParams,
                 usage_log: Path | None = None, seed: int = 0, progress: Callable[[str], None] | None = None,
                 progress_every_s: float = 60.0):
        self.backend = backend
        self.progress = progress  # e.g. StepContext.progress: a line in the run's progress.log
        self.progress_every_s = progress_every_s  # how often a long task notes how far it is
        self.seed = seed  # the run's seed: sampled requests carry a seed derived from it
        self.cache = cache
        self.params = params
        self.name = backend.model
        backend.cache = cache
        self.budget = Budget(params, cache.totals())
        self.usage: dict[str, dict[str, Any]] = {}
        self.usage_log = usage_log
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")

    # ---- the Teacher protocol (lib.teacher.Teacher)
    def complete(self, prompts: list[str], max_new_tokens: int | None = None, temperature: float | None = None,
                 n: int = 1, desc: str = "teacher", template: Any = None,
                 validate: Validator | None = None) -> list[list[Completion]]:
        """`n` completions for each prompt; a request that failed for good comes back empty with finish_reason 'error'."""
        max_new = max_new_tokens or self.params.max_new_tokens
        temp = self.params.temperature if temperature is None else temperature
        asks = [Ask(prompt=p, max_new_tokens=max_new, temperature=temp, sample=k,
                    template=getattr(template, "name", ""), template_sha256=getattr(template, "sha256", ""),
                    validate=validate) for p in prompts for k in range(n)]
        answers = self.ask(asks, desc=desc)
        return [[a.completion for a in answers[i * n:(i + 1) * n]] for i in range(len(prompts))]

    # ---- validated requests
    def ask(self, asks: list[Ask], desc: str = "teacher") -> list[Answer]:
        """Answer every Ask (from the cache where possible), re-asking invalid responses; never raises per item."""
        if not asks:
            return []
        return self._pool.submit(asyncio.run, self._ask(asks, desc)).result()

    def request_for(self, ask: Ask, reask: int) -> dict[str, Any]:
        """The cached request of an Ask at re-ask number `reask` (its hash is the cache key)."""
        temperature = ask.temperature if reask == 0 else max(ask.temperature, self.params.reask_temperature)
        body = self.backend.request(ask.prompt, ask.max_new_tokens, temperature, ask.stop)
        if temperature > 0:
            body["seed"] = sampling_seed(self.seed, ask.sample, reask)
        return {"backend": self.backend.name, "model": self.backend.model,
                "endpoint": self.params.endpoint if self.backend.name == "openai" else "generate",
                "template_sha256": ask.template_sha256, **body, "sample": ask.sample, "reask": reask}

    async def _ask(self, asks: list[Ask], desc: str) -> list[Answer]:
        """Rounds of: look up, send the misses, validate; invalid answers go to the next round as re-asks."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        stats = self.usage.setdefault(desc, dict(items=0, calls=0, cached=0, failed=0, reasks=0, prompt_tokens=0,
                                                 completion_tokens=0, cost_usd=0.0, new_cost_usd=0.0, wall_s=0.0))
        stats["items"] += len(asks)
        empty = Completion(text="", finish_reason="error", prompt_tokens=0, completion_tokens=0)
        answers: list[Answer | None] = [None] * len(asks)
        last: list[Answer] = [Answer(empty, "no response", 0, 0) for _ in asks]
        bar = tqdm(total=len(asks), desc=desc, unit="item")

        def show() -> None:
            bar.set_postfix(cached=stats["cached"], calls=stats["calls"], failed=stats["failed"],
                            cost=f"${stats['new_cost_usd']:.4f}", refresh=False)

        def settle(i: int, completion: Completion, cached: bool, cost: float, reask: int) -> None:
            prev = last[i]
            stats["prompt_tokens"] += completion.prompt_tokens
            stats["completion_tokens"] += completion.completion_tokens
            stats["cost_usd"] += cost
            validate = asks[i].validate
            failure = validate(completion) if validate else None
            last[i] = Answer(completion, failure, prev.responses + 1, prev.cached + int(cached))
            if failure is None or reask == self.params.max_reasks:
                finish(i, last[i])

        noted = [t0]
        before = {k: stats[k] for k in ("cached", "calls", "failed")}  # stats add up over a task's calls to ask

        def finish(i: int, answer: Answer) -> None:
            answers[i] = answer
            stats["failed"] += answer.failure is not None
            bar.update(1)
            show()
            now = time.perf_counter()
            if self.progress is not None and now - noted[0] >= self.progress_every_s:
                noted[0] = now
                self.progress(self._progress_line(desc, bar.n, len(asks), now - t0, stats["calls"] - before["calls"]))

        for reask in range(self.params.max_reasks + 1):
            todo = [i for i in range(len(asks)) if answers[i] is None]
            if not todo:
                break
            if reask:
                stats["reasks"] += len(todo)
            misses: list[Call] = []
            for i in todo:
                request = self.request_for(asks[i], reask)
                key = request_key(request)
                hit = self.cache.get(key)
                if hit is not None:
                    stats["cached"] += 1
                    completion = Completion(hit["text"], hit["finish_reason"], hit["prompt_tokens"],
                                            hit["completion_tokens"])
                    settle(i, completion, True, hit["cost_usd"], reask)
                else:
                    misses.append(Call(i, request, key, estimate_tokens(asks[i].prompt) + asks[i].max_new_tokens))
            show()

            def admit(call: Call) -> float:
                return self.budget.admit(estimate_tokens(asks[call.index].prompt), asks[call.index].max_new_tokens)

            def done(call: Call, completion: Completion | None, failure: str | None, reserved: float) -> None:
                if completion is None:  # never answered: not stored, so the next run asks again
                    self.budget.settle(reserved, 0.0)
                    prev = last[call.index]  # a re-ask that got no answer keeps the earlier (invalid) completion
                    finish(call.index, Answer(prev.completion, failure or "no response", prev.responses, prev.cached))
                    return
                cost = self.budget.price(completion.prompt_tokens, completion.completion_tokens)
                self.cache.put(call.key, call.request, completion.text, completion.finish_reason,
                               completion.prompt_tokens, completion.completion_tokens, cost)
                self.budget.settle(reserved, cost)
                stats["calls"] += 1
                stats["new_cost_usd"] += cost
                settle(call.index, completion, False, cost, reask)

            if misses:
                await self.backend.run(misses, admit, done)
        bar.close()
        stats["wall_s"] += time.perf_counter() - t0
        if self.progress is not None:
            new = {k: stats[k] - before[k] for k in before}
            self.progress(f"{desc}: {len(asks)} items in {time.perf_counter() - t0:.0f} s ({new['cached']} from the "
                          f"cache, {new['calls']} generated, {new['failed']} failed)")
        self._log_usage(desc, stats)
        return [a if a is not None else last[i] for i, a in enumerate(answers)]

    @staticmethod
    def _progress_line(desc: str, done: int, total: int, elapsed_s: float, calls: int) -> str:
        """How far a task is, with the time left at the rate of its generated calls so far."""
        left = f", about {(total - done) * elapsed_s / calls / 60:.1f} min left" if calls else ""
        return f"{desc}: {done}/{total} items, {elapsed_s / 60:.1f} min{left}"

    def _log_usage(self, desc: str, stats: dict[str, Any]) -> None:
        """Log a task's accounting and append it to the run's usage log (outside the step folders)."""
        log.info("%s: %d items, %d cached, %d calls, %d failed, %d re-asks, %d+%d tokens, $%.4f new ($%.4f in all)",
                 desc, stats["items"], stats["cached"], stats["calls"], stats["failed"], stats["reasks"],
                 stats["prompt_tokens"], stats["completion_tokens"], stats["new_cost_usd"], stats["cost_usd"])
        if self.usage_log is not None:
            row = {"time": time.time(), "task": desc, "backend": self.backend.name, "model": self.name, **stats}
            with open(self.usage_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    def usage_frame(self) -> Any:
        """This session's accounting per task, as a table: items, cached, calls, failures, tokens, cost, time."""
        import pandas as pd

        return pd.DataFrame([{"task": k, **v} for k, v in self.usage.items()])

    def close(self) -> None:
        """Release the worker thread and the cache file."""
        self._pool.shutdown(wait=True)
        self.cache.close()
