"""The OpenAI Batch API as a teacher transport: one uploaded JSONL of requests, polled until done.

For large runs (`teacher.batch_api: true`): every request that missed the cache goes into one batch
(half price on OpenAI, results within the 24-hour window). The batch id is stored in the response
cache before polling starts, so a run killed while waiting resumes the same batch instead of paying
for a second one; each result is stored the moment the output file is read. A request the batch did
not answer comes back as a failure with the batch's reason, and the next run asks again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from lib.response_cache import ResponseCache
from lib.files import sha256_json

log = logging.getLogger(__name__)

PENDING = ("validating", "in_progress", "finalizing", "cancelling")


async def run_batch(backend: Any, calls: list[Any], admit: Callable[[Any], float],
                    done: Callable[..., None], cache: ResponseCache | None) -> None:
    """Send `calls` as one OpenAI batch (resuming a stored one), then hand every result to `done`."""
    from lib.teacher_engine import BudgetExhausted, MalformedResponse, parse_response

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
