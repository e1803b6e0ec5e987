"""The teacher engine's OpenAI-compatible backend: requests, retries, rate limits, response parsing, Batch API.

`OpenAIBackend` talks to any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through the `openai`
package: asyncio with at most `max_in_flight` requests in flight, client-side requests/tokens-per-minute limits,
retries with exponential backoff and jitter on 429 / 5xx / timeouts / connection errors / malformed bodies (a
`Retry-After` header wins) and a per-request timeout. The API key is read from the environment variable that
`teacher.api_key_env` names, held in memory only, and scrubbed from every message.

For large runs (`teacher.batch_api: true`) every request that missed the cache goes into one OpenAI batch
(`run_batch`: half price on OpenAI, results within the 24-hour window). The batch id is stored in the response
cache before polling starts, so a run killed while waiting resumes the same batch instead of paying for a second
one; each result is stored the moment the output file is read. A request the batch did not answer comes back as a
failure with the batch's reason, and the next run asks again.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import logging
import os
import random
import time
from typing import Any, Callable

from lib.files import sha256_json
from lib.models import Completion
from lib.params import TeacherParams
from lib.questions import NEXT_QUESTION
from lib.response_cache import ResponseCache
from lib.teacher_engine import BudgetExhausted, Call, estimate_tokens

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 60.0
RETRY_AFTER_CAP_S = 600.0
PENDING = ("validating", "in_progress", "finalizing", "cancelling")  # batch states that are not final yet


class RateLimiter:
    """Client-side requests-per-minute and tokens-per-minute limits over a sliding 60-second window."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0):
        self.rpm, self.tpm, self.window = rpm, tpm, window_s
        self.events: collections.deque[tuple[float, int]] = collections.deque()

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of `tokens` tokens fits in the window, then record it."""
        if self.rpm is None and self.tpm is None:
            return
        while True:
            now = time.monotonic()
            while self.events and self.events[0][0] <= now - self.window:
                self.events.popleft()
            fits_r = self.rpm is None or len(self.events) < self.rpm
            fits_t = self.tpm is None or not self.events or sum(t for _, t in self.events) + tokens <= self.tpm
            if fits_r and fits_t:
                self.events.append((now, tokens))
                return
            await asyncio.sleep(max(0.01, self.events[0][0] + self.window - now))


def retry_after_s(headers: Any) -> float | None:
    """Seconds a `Retry-After` (or `retry-after-ms`) header asks the client to wait, or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return float(ms) / 1000
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff_s(attempt: int, base: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^attempt, capped, times a random factor in [0.5, 1]."""
    return min(BACKOFF_CAP_S, base * 2 ** attempt) * rng.uniform(0.5, 1.0)


class MalformedResponse(ValueError):
    """A response body that is not a completion (bad JSON, no choices)."""


def classify(exc: BaseException) -> tuple[bool, float | None, str]:
    """(retryable, seconds the server asked to wait, reason) for an exception raised by one request."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        wait = retry_after_s(getattr(exc.response, "headers", None))
        retryable = status in (408, 409, 429) or status >= 500
        return retryable, wait, f"HTTP {status}: {str(exc)[:200]}"
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError)):
        return True, None, "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return True, None, f"connection error: {exc}"
    if isinstance(exc, (MalformedResponse, ValueError, KeyError, TypeError, AttributeError, IndexError)):
        return True, None, f"malformed response: {type(exc).__name__}: {str(exc)[:200]}"
    return False, None, f"{type(exc).__name__}: {str(exc)[:200]}"


class OpenAIBackend:
    """Requests to an OpenAI-compatible server, with bounded concurrency, rate limits and retries."""

    name = "openai"

    def __init__(self, params: TeacherParams, seed: int = 0):
        self.params = params
        self.model = params.model
        env = params.api_key_env
        self._key = os.environ.get(env, "") if env else ""
        if env and not self._key:
            raise RuntimeError(f"teacher.api_key_env is {env!r} but that environment variable is empty or unset: "
                               f"export {env}=... before the run (a server that needs no key: teacher.api_key_env: null)")
        self._rng = random.Random(seed)
        self.limiter = RateLimiter(params.requests_per_minute, params.tokens_per_minute)
        self.cache: ResponseCache | None = None  # set by CachedTeacher; the Batch API keeps its batch ids there
        for noisy in ("openai", "httpx", "httpx2", "httpcore"):
            logging.getLogger(noisy).setLevel(max(logging.getLogger(noisy).level, logging.WARNING))

    def scrub(self, text: str) -> str:
        """A message with the API key blanked out (servers sometimes echo it)."""
        return text.replace(self._key, "***") if self._key else text

    def client(self) -> Any:
        """A fresh async client (one per event loop); the library's own retries are off, ours apply."""
        from openai import AsyncOpenAI

        return AsyncOpenAI(api_key=self._key or "no-key", base_url=self.params.base_url,
                           timeout=self.params.request_timeout_s, max_retries=0)

    def request(self, prompt: str, max_tokens: int, temperature: float, stop: str = NEXT_QUESTION) -> dict[str, Any]:
        """The body of one request (without the model; no credentials)."""
        body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "stop": [stop]}
        if self.params.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def body(self, call: Call) -> dict[str, Any]:
        """The API body of a call (its cached request minus the bookkeeping keys)."""
        keys = ("messages", "prompt", "max_tokens", "temperature", "stop", "seed")
        return {k: v for k, v in call.request.items() if k in keys}

    async def _create(self, client: Any, body: dict[str, Any]) -> Completion:
        """Send one request and parse its completion; raises on any transport or shape problem."""
        api = client.chat.completions if self.params.endpoint == "chat" else client.completions
        resp = await api.create(model=self.model, **body)
        return parse_response(resp, self.params.endpoint, body)

    async def send(self, client: Any, call: Call) -> tuple[Completion | None, str | None]:
        """One request with retries: (completion, None) or (None, why it failed for good)."""
        body = self.body(call)
        reason = ""
        for attempt in range(self.params.max_retries + 1):
            await self.limiter.acquire(call.est_tokens)
            try:
                # the client's timeout bounds each read; this bounds the whole request (a slow trickle too)
                return await asyncio.wait_for(self._create(client, body), self.params.request_timeout_s * 1.5), None
            except Exception as exc:  # every failure is classified: retried, or returned as the reason
                retryable, wait, reason = classify(exc)
                reason = self.scrub(reason)
                if not retryable or attempt == self.params.max_retries:
                    break
                delay = min(wait, RETRY_AFTER_CAP_S) if wait is not None else backoff_s(attempt, self.params.backoff_s, self._rng)
                log.debug("retry %d of %s in %.2f s: %s", attempt + 1, call.key[:8], delay, reason)
                await asyncio.sleep(delay)
        tries = attempt + 1
        return None, f"request failed after {tries} tr{'y' if tries == 1 else 'ies'}: {reason}"

    async def run(self, calls: list[Call], admit: Callable[[Call], float],
                  done: Callable[[Call, Completion | None, str | None, float], None]) -> None:
        """Send every call with at most `max_in_flight` in flight; `done` stores each result as it arrives."""
        if self.params.batch_api:
            await run_batch(self, calls, admit, done)
            return
        client = self.client()
        gate = asyncio.Semaphore(self.params.max_in_flight)

        async def one(call: Call) -> None:
            async with gate:
                try:
                    reserved = admit(call)
                except BudgetExhausted as exc:
                    done(call, None, str(exc), 0.0)
                    return
                completion, failure = await self.send(client, call)
                done(call, completion, failure, reserved)

        try:
            await asyncio.gather(*(one(c) for c in calls))
        finally:
            await client.close()


def parse_response(resp: Any, endpoint: str, body: dict[str, Any]) -> Completion:
    """A Completion from a chat or text completion response (object or dict); raises MalformedResponse otherwise."""
    data = resp.model_dump() if hasattr(resp, "model_dump") else resp
    if not isinstance(data, dict) or not data.get("choices"):
        raise MalformedResponse(f"no choices in the response body ({str(resp)[:80]!r})")
    choice = data["choices"][0]
    text = (choice.get("message") or {}).get("content") if endpoint == "chat" else choice.get("text")
    if not isinstance(text, str):
        raise MalformedResponse("the response's first choice has no text")
    usage = data.get("usage") or {}
    prompt_text = body.get("prompt") or "".join(m["content"] for m in body.get("messages", []))
    prompt_tokens = usage.get("prompt_tokens") or estimate_tokens(prompt_text)
    completion_tokens = usage.get("completion_tokens") or estimate_tokens(text)
    stop = (body.get("stop") or [NEXT_QUESTION])[0]
    return Completion(text=text.split(stop)[0].strip(), finish_reason=str(choice.get("finish_reason") or "stop"),
                      prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens))


async def run_batch(backend: OpenAIBackend, calls: list[Call], admit: Callable[[Call], float],
                    done: Callable[[Call, Completion | None, str | None, float], None]) -> None:
    """Send `calls` as one OpenAI batch (resuming one stored in the backend's cache); hand each result to `done`."""
    admitted = []
    for call in calls:
        try:
            admitted.append((call, admit(call)))
        except BudgetExhausted as exc:
            done(call, None, str(exc), 0.0)
    if not admitted:
        return
    url = "/v1/chat/completions" if backend.params.endpoint == "chat" else "/v1/completions"
    marker = "batch:" + sha256_json(sorted(c.key for c, _ in admitted))
    client = backend.client()
    cache = backend.cache
    try:
        batch_id = cache.get_meta(marker) if cache else None
        if batch_id is None:
            lines = [json.dumps({"custom_id": c.key, "method": "POST", "url": url,
                                 "body": {"model": backend.model, **backend.body(c)}}) for c, _ in admitted]
            upload = await client.files.create(file=("teacher_batch.jsonl", ("\n".join(lines) + "\n").encode()),
                                               purpose="batch")
            batch = await client.batches.create(input_file_id=upload.id, endpoint=url, completion_window="24h")
            batch_id = batch.id
            if cache:
                cache.put_meta(marker, batch_id)
            log.info("submitted OpenAI batch %s with %d requests", batch_id, len(admitted))
        else:
            log.info("resuming OpenAI batch %s (%d requests)", batch_id, len(admitted))
        batch = await client.batches.retrieve(batch_id)
        while batch.status in PENDING:
            await asyncio.sleep(backend.params.batch_poll_s)
            batch = await client.batches.retrieve(batch_id)
        results: dict[str, Any] = {}
        if getattr(batch, "output_file_id", None):
            content = await client.files.content(batch.output_file_id)
            for line in content.text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    results[row["custom_id"]] = row
        for call, reserved in admitted:
            row = results.get(call.key)
            response = (row or {}).get("response") or {}
            if response.get("status_code") != 200:
                why = (row or {}).get("error") or f"batch {batch_id} ended {batch.status} without this request"
                done(call, None, backend.scrub(f"batch: {why}"), reserved)
                continue
            try:
                done(call, parse_response(response["body"], backend.params.endpoint, backend.body(call)), None, reserved)
            except MalformedResponse as exc:
                done(call, None, f"batch: malformed response: {exc}", reserved)
    finally:
        await client.close()
