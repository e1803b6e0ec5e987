"""The teacher's response cache: every response ever received, in one SQLite file a run owns.

A response is stored under the sha256 of its request (backend, model, template hash, rendered messages,
sampling params, sample index and re-ask number; for the local model also the device, cpu or cuda), in its own
committed transaction, in WAL mode. So a rerun makes no calls, and a process killed at any moment (kill -9 included)
loses at most the responses that were still in flight: on restart every request whose response was stored is answered
from here.
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
CREATE TABLE IF NOT EXISTS published (
    prefix TEXT PRIMARY KEY,         -- the first PUBLISHED_KEY_CHARS of a request's key (lib.reuse)
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    source TEXT NOT NULL             -- the published folder it came from
);
CREATE TABLE IF NOT EXISTS published_used (prefix TEXT PRIMARY KEY);  -- published answers `get` has served here
"""
PUBLISHED_KEY_CHARS = 20  # 80 bits of the sha256: a false hit among a study's ~10^6 answers has odds of about 10^-12
ANSWER_FIELDS = ("text", "finish_reason", "prompt_tokens", "completion_tokens")


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
        """The stored response for `key` (asked here, else a published one under its key's prefix), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens, cost_usd FROM responses WHERE key = ?",
                (key,)).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT text, finish_reason, prompt_tokens, completion_tokens, 0.0 FROM published WHERE prefix = ?",
                    (key[:PUBLISHED_KEY_CHARS],)).fetchone()
                if row is not None:  # asked here too: `answers` exports it with this run's own
                    self._db.execute("INSERT OR IGNORE INTO published_used VALUES (?)", (key[:PUBLISHED_KEY_CHARS],))
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

    def answers(self) -> list[list[Any]]:
        """Every response asked here, computed here or served from a published part (not the part's answers nobody
        asked for), compact: [key prefix, text, finish_reason, prompt_tokens, completion_tokens], by prefix; what
        `add_published` takes back. So a part made with `--reuse` holds all its own students' answers."""
        fields = ", ".join(ANSWER_FIELDS)
        with self._lock:
            own = self._db.execute(f"SELECT key, {fields} FROM responses").fetchall()
            served = self._db.execute(f"SELECT p.prefix, {', '.join('p.' + f for f in ANSWER_FIELDS)} FROM published p "
                                      "JOIN published_used u ON p.prefix = u.prefix").fetchall()
        found = {key[:PUBLISHED_KEY_CHARS]: rest for key, *rest in served}
        found.update({key[:PUBLISHED_KEY_CHARS]: rest for key, *rest in own})
        return [[prefix, *found[prefix]] for prefix in sorted(found)]

    def add_published(self, answers: list[list[Any]], source: str) -> int:
        """Store answers exported by `answers` (a published run's), answered by `get` under their key's prefix; keys
        already here are kept. Returns how many were new; a malformed answer is refused before any is stored."""
        for n, a in enumerate(answers, 1):
            if (not isinstance(a, list) or len(a) != 1 + len(ANSWER_FIELDS) or not isinstance(a[0], str)
                    or len(a[0]) != PUBLISHED_KEY_CHARS or any(c not in "0123456789abcdef" for c in a[0])
                    or not isinstance(a[1], str)):
                raise ValueError(f"{source}: answer {n} is not [key prefix of {PUBLISHED_KEY_CHARS} hex digits, text, "
                                 f"finish_reason, prompt_tokens, completion_tokens]: {str(a)[:120]}; the file was "
                                 "edited or truncated: publish the run again (python -m lib.publish)")
        with self._lock:
            before = self._db.execute("SELECT COUNT(*) FROM published").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO published VALUES (?, ?, ?, ?, ?, ?)",
                                     [(a[0], a[1], str(a[2]), int(a[3]), int(a[4]), source) for a in answers])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.execute("SELECT COUNT(*) FROM published").fetchone()[0] - before

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
