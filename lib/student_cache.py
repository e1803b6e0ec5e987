"""The student cache: students' generated outputs and option scores, kept in `<run_dir>/student_cache.sqlite`.

Each entry is keyed (lib.response_cache.request_key) by what it depends on: the student's weights hash (its saved
folder and base model), how it is loaded, the device and the code that loads and generates, or loads and scores
(`lib.evaluation.output_code_sha256`), the item, the prompt and the generation settings. So a rerun of step 05
loads a student only for what the cache lacks, and the cache sits outside the step folders so that a hit never
changes an artifact.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lib.precision import autocast
from lib.response_cache import request_key, ResponseCache
from lib.scoring import Scorer

log = logging.getLogger(__name__)


STUDENT_CACHE = "student_cache.sqlite"  # in the run folder


def student_cache_path(ctx: Any) -> Path:
    """The run's student cache, outside the step folders so that cache hits never change a step's artifacts."""
    return ctx.run_dir / STUDENT_CACHE


def discard_student_cache(ctx: Any) -> bool:
    """With `--force` (ctx.force), delete the run's student cache so every output is generated again; True if deleted."""
    path = student_cache_path(ctx)
    if not getattr(ctx, "force", False) or not path.exists():
        return False
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
    log.info("force: deleted the student cache %s; every output is generated and scored again", path)
    return True


def open_cache(cache: ResponseCache | str | Path | None) -> tuple[ResponseCache | None, bool]:
    """The cache to use and whether the caller opened it (and must close it): a path is opened here."""
    if cache is None or isinstance(cache, ResponseCache):
        return cache, False
    return ResponseCache(cache), True


def student_weights_hash(base_spec: str, adapter_dir: Path | None) -> str:
    """sha256 over the base model's provenance and every file of a run's saved folder (adapter or full weights,
    tokenizer); without a saved folder (BASE), of the base model's provenance alone."""
    from lib.files import sha256_file, sha256_json
    from lib.models import model_provenance

    if adapter_dir is None:
        return sha256_json({"base": model_provenance(base_spec)})
    files = {p.relative_to(adapter_dir).as_posix(): sha256_file(p) for p in sorted(Path(adapter_dir).rglob("*"))
             if p.is_file()}
    if not files:
        raise FileNotFoundError(f"{adapter_dir} is empty or missing: no trained student to evaluate; rerun step "
                                f"04_training (python -m lib.study PARAMS --steps 04 --force)")
    return sha256_json({"base": model_provenance(base_spec), "files": files})


def cached_scorer(score: Scorer, cache: ResponseCache | None, identity: dict[str, Any]) -> Scorer:
    """`score` behind the cache: only pairs never scored for `identity` (weights hash, device) reach the model."""
    if cache is None:
        return score

    def scored(pairs: Sequence[tuple[str, str]]) -> list[float]:
        requests = [{"kind": "student_loglik", **identity, "context": c, "continuation": t} for c, t in pairs]
        keys = [request_key(r) for r in requests]
        found = [cache.get(k) for k in keys]
        todo = [j for j, hit in enumerate(found) if hit is None]
        fresh = dict(zip(todo, score([pairs[j] for j in todo]) if todo else []))
        for j, value in fresh.items():
            cache.put(keys[j], requests[j], repr(value), "loglik", 0, 0)  # repr round-trips a float exactly
        return [fresh[j] if hit is None else float(hit["text"]) for j, hit in enumerate(found)]

    return scored


def generate_cached(student: Callable[[], tuple[Any, Any]], prompts: list[str], item_ids: list[str],
                    settings: dict[str, Any], batch_size: int, cache: ResponseCache | None,
                    desc: str) -> tuple[list[str], list[float]]:
    """Greedy outputs of a student and generation seconds per item (NaN for an output the cache already held).

    `settings` (weights hash, device, number format, max_new_tokens, stop) and the item and prompt key each output
    in the cache; `student()` loads the model, and is called only when some prompt is missing.
    """
    from lib.models import generate_texts

    requests = [{"kind": "student_generation", **settings, "temperature": 0.0, "item": i, "prompt": p}
                for i, p in zip(item_ids, prompts)]
    keys = [request_key(r) for r in requests]
    hits = [cache.get(k) for k in keys] if cache is not None else [None] * len(keys)
    texts: list[str | None] = [None if hit is None else hit["text"] for hit in hits]
    seconds = [math.nan] * len(prompts)
    todo = [j for j, t in enumerate(texts) if t is None]
    if todo:
        model, tokenizer = student()
        t0 = time.perf_counter()
        with autocast(settings.get("precision", "fp32"), settings["device"]):
            outs = generate_texts(model, tokenizer, [prompts[j] for j in todo], settings["max_new_tokens"],
                                  batch_size=batch_size, stop=settings["stop"], desc=desc)
        per_item = round((time.perf_counter() - t0) / len(todo), 3)
        for j, (c,) in zip(todo, outs):
            texts[j], seconds[j] = c.text, per_item
            if cache is not None:
                cache.put(keys[j], requests[j], c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
    log.info("%s: %d outputs generated, %d from the student cache", desc, len(todo), len(prompts) - len(todo))
    return [t or "" for t in texts], seconds
