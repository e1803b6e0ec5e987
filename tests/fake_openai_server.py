"""A fake OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, with injectable faults.

    server = FakeOpenAI(latency_s=0.05, plan={"Q7": ["429", "500", "ok"]}, key="sk-...").start()
    ... base_url = server.url ...
    server.stop()

`plan` maps a marker (a substring of the prompt) to the faults served on the 1st, 2nd, ... request whose
prompt holds it; after the list, requests are answered normally. Faults:
- `429`: rate limited, with `Retry-After: <retry_after_s>`;
- `500`: an internal server error;
- `stall`: sleeps `stall_s` (longer than the client's timeout) before answering;
- `malformed`: a 200 whose body is not valid JSON;
- `truncated`: a completion cut off by the token limit (finish_reason "length", no answer);
- `garbage`: a complete answer with no readable answer letter.
A normal answer is a CoT sentence ending "So the answer is (<letter>) ." (the letter given by `answer`, a
marker -> letter map, default "a"), or a JSON causal explanation when the prompt asks for JSON.
Every request is logged in `requests` (prompt, path, temperature, max_tokens, fault served).
Also serves a minimal OpenAI Batch API (/files, /batches) that completes a batch on its first poll.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """The server object: configure, start, read its request log, stop."""

    def __init__(self, latency_s: float = 0.0, plan: dict[str, list[str]] | None = None, key: str | None = None,
                 answer: dict[str, str] | None = None, retry_after_s: float = 0.2, stall_s: float = 3.0):
        self.latency_s, self.plan, self.key = latency_s, dict(plan or {}), key
        self.answer = dict(answer or {})
        self.retry_after_s, self.stall_s = retry_after_s, stall_s
        self.requests: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (…/v1)."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        """Listen on a free port in a background thread."""
        server = self

        class Handler(_Handler):
            fake = server

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def fault_for(self, prompt: str) -> str:
        """The fault planned for this request (counting per marker), or "ok"."""
        with self.lock:
            for marker, faults in self.plan.items():
                if marker in prompt:
                    n = self.seen.get(marker, 0)
                    self.seen[marker] = n + 1
                    return faults[n] if n < len(faults) else "ok"
        return "ok"

    def reply(self, prompt: str) -> str:
        """The normal completion for a prompt."""
        if "JSON" in prompt:
            return json.dumps({"cause": "Warming air holds more water.", "mechanism": "The evidence says heat raises "
                               "evaporation.", "effect": "Heavier rain follows."})
        letter = next((v for k, v in self.answer.items() if k in prompt), "a")
        return f"The question points to it, and the others do not fit. So the answer is ({letter}) ."

    def completion(self, body: dict[str, Any], chat: bool) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one completion request (faults applied)."""
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        fault = self.fault_for(prompt)
        with self.lock:
            self.requests.append({"prompt": prompt, "chat": chat, "temperature": body.get("temperature"),
                                  "max_tokens": body.get("max_tokens"), "seed": body.get("seed"), "fault": fault,
                                  "time": time.time()})
        if fault == "stall":
            time.sleep(self.stall_s)
        if fault == "429":
            return 429, {"Retry-After": str(self.retry_after_s)}, _error("rate limited")
        if fault == "500":
            return 500, {}, _error("internal error")
        if fault == "malformed":
            return 200, {}, b'{"id": "x", "choices": [ {"text": '
        text, finish = self.reply(prompt), "stop"
        if fault == "truncated":
            text, finish = "The question points to it, and the", "length"
        elif fault == "garbage":
            text = "I like turtles."
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if chat
                  else {"index": 0, "text": text, "finish_reason": finish})
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        out = {"id": f"cmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": body.get("model", ""), "choices": [choice], "usage": usage}
        return 200, {}, json.dumps(out).encode()

    def batch_output(self, input_file: str) -> str:
        """Run every request of a batch input file and return the output file's id."""
        lines = []
        for line in self.files[input_file].decode().splitlines():
            req = json.loads(line)
            status, _, body = self.completion(req["body"], chat=req["url"].endswith("chat/completions"))
            lines.append(json.dumps({"id": uuid.uuid4().hex, "custom_id": req["custom_id"],
                                     "response": {"status_code": status, "body": json.loads(body) if status == 200 else {}},
                                     "error": None}))
        fid = f"file-{uuid.uuid4().hex[:8]}"
        self.files[fid] = ("\n".join(lines) + "\n").encode()
        return fid


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog (5) drops connections when 16 open at once


def _error(message: str) -> bytes:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"message": message, "type": "server_error"}}).encode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _authorised(self) -> bool:
        if self.fake.key is None or self.headers.get("Authorization") == f"Bearer {self.fake.key}":
            return True
        self._send(401, {}, _error("bad key"))
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if not self._authorised():
            return
        fake = self.fake
        if self.path.endswith("/files"):
            fid = f"file-{uuid.uuid4().hex[:8]}"
            # multipart upload: keep the JSONL part (between the blank line after the part headers and the boundary)
            boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
            part = [p for p in raw.split(b"--" + boundary) if b'name="file"' in p][0]
            fake.files[fid] = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
            self._send(200, {}, json.dumps({"id": fid, "object": "file", "bytes": len(fake.files[fid]),
                                            "created_at": 0, "filename": "batch.jsonl", "purpose": "batch",
                                            "status": "processed"}).encode())
            return
        if self.path.endswith("/batches"):
            body = json.loads(raw)
            bid = f"batch_{uuid.uuid4().hex[:8]}"
            fake.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "status": "in_progress",
                                 "input_file_id": body["input_file_id"], "completion_window": "24h", "created_at": 0}
            self._send(200, {}, json.dumps(fake.batches[bid]).encode())
            return
        chat = self.path.endswith("/chat/completions")
        with fake.lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            time.sleep(fake.latency_s)
            self._send(*fake.completion(json.loads(raw), chat))
        finally:
            with fake.lock:
                fake.in_flight -= 1

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        fake = self.fake
        if "/batches/" in self.path:
            batch = fake.batches[self.path.rsplit("/", 1)[1]]
            if batch["status"] == "in_progress":
                batch.update(status="completed", output_file_id=fake.batch_output(batch["input_file_id"]))
            self._send(200, {}, json.dumps(batch).encode())
            return
        if self.path.endswith("/content"):
            fid = self.path.split("/files/")[1].split("/")[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(fake.files[fid])))
            self.end_headers()
            self.wfile.write(fake.files[fid])
            return
        self._send(404, {}, _error("not found"))
