"""The teacher's response cache: every response ever received, in one SQLite file a run owns.

A response is stored under the sha256 of its request (backend, model, template hash, rendered messages,
sampling params, sample index and re-ask number), in its own committed transaction, in WAL mode. So a
rerun makes no calls, and a process killed at any moment (kill -9 included) loses at most the responses
that were still in flight: on restart every request whose response was stored is answered from here.
Only received responses are stored; a request that never got one (retries exhausted, budget) is asked
again by the next run. The file also keeps the running totals that the budget is checked against.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from lib.files import sha256_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,           -- canonical JSON of what was asked (no credentials)
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def request_key(request: dict[str, Any]) -> str:
    """The cache key of a request: sha256 of its canonical JSON."""
    return sha256_json(request)


class ResponseCache:
    """SQLite store of teacher responses keyed by request hash; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a killed process (not a power cut) with one fsync per checkpoint, not per row.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for `key`, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens, cost_usd FROM responses WHERE key = ?",
                (key,)).fetchone()
        if row is None:
            return None
        return dict(zip(("text", "finish_reason", "prompt_tokens", "completion_tokens", "cost_usd"), row))

    def put(self, key: str, request: dict[str, Any], text: str, finish_reason: str, prompt_tokens: int,
            completion_tokens: int, cost_usd: float = 0.0) -> None:
        """Store one response in its own committed transaction (a second put of the same key keeps the first)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, json.dumps(request, sort_keys=True, ensure_ascii=False), text, finish_reason,
                     int(prompt_tokens), int(completion_tokens), float(cost_usd), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_meta(self, name: str) -> str | None:
        """A bookkeeping value (e.g. the id of a submitted OpenAI batch), or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def put_meta(self, name: str, value: str) -> None:
        """Store a bookkeeping value (committed at once)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def totals(self) -> dict[str, float]:
        """Responses stored, their tokens and their cost: what this cache's run has spent so far."""
        with self._lock:
            n, pt, ct, cost = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                "COALESCE(SUM(cost_usd), 0) FROM responses").fetchone()
        return {"responses": n, "prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost}

    def rows(self) -> list[dict[str, Any]]:
        """Every stored response with its key and request, oldest first (what `add_rows` takes back)."""
        columns = ("key", "request", "text", "finish_reason", "prompt_tokens", "completion_tokens", "cost_usd", "created")
        with self._lock:
            found = self._db.execute(f"SELECT {', '.join(columns)} FROM responses ORDER BY created, key").fetchall()
        return [{**dict(zip(columns, r)), "request": json.loads(r[1])} for r in found]

    def add_rows(self, rows: list[dict[str, Any]]) -> int:
        """Store responses exported by `rows` (another cache's) in one transaction; keys already here are kept.

        Returns how many were new. A row's key is the hash of its request, so a row whose request was edited is refused.
        """
        bad = [r["key"] for r in rows if request_key(r["request"]) != r["key"]]
        if bad:
            raise ValueError(f"{len(bad)} cached response(s) do not match their request's hash (first: {bad[0]}); "
                             "the export was edited or truncated: export it again from the run's cache")
        with self._lock:
            before = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r["key"], json.dumps(r["request"], sort_keys=True, ensure_ascii=False), r["text"],
                      r["finish_reason"], int(r["prompt_tokens"]), int(r["completion_tokens"]),
                      float(r.get("cost_usd", 0.0)), float(r.get("created", time.time()))) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] - before

    def requests(self) -> list[dict[str, Any]]:
        """Every stored request (for inspection and tests)."""
        with self._lock:
            return [json.loads(r) for (r,) in self._db.execute("SELECT request FROM responses ORDER BY created")]

    def __len__(self) -> int:
        """How many responses are stored."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Close the database (the WAL is checkpointed)."""
        with self._lock:
            self._db.close()
