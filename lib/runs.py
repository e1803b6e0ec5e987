"""Run folders: atomic artifact writes, hashing and provenance helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Turn dataclasses and paths into JSON-serialisable values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write one JSON document atomically, pretty-printed with sorted keys."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write rows (dicts or dataclasses) as JSON lines atomically."""
    lines = [json.dumps(r, ensure_ascii=False, default=_jsonable) for r in rows]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; blank lines are skipped and a bad line is reported with its number."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove that line") from exc
    return rows


def read_json(path: str | Path) -> Any:
    """Read one JSON document."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a string (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable))


STEPS = ("01_data", "02_teacher", "03_counterfactuals", "04_training", "05_evaluation", "06_statistics")
# Steps whose folder keeps costly work between executions, and what decides its reuse. Every other step's
# folder is emptied when the step opens, so nothing an earlier configuration wrote can be read as new.
KEEPS_ITS_FOLDER = {"04_training": "trained runs, reused only when done.json matches config, code and weights"}


class MissingArtifact(FileNotFoundError):
    """An upstream artifact a step needs is not in the run folder."""


@dataclasses.dataclass
class StepContext:
    """What a notebook step knows: its validated params, its run folder and where it writes."""

    step: str
    params: Any  # lib.params.StudyParams
    run_dir: Path
    force: bool = False  # recompute what the step would otherwise reuse (finished training runs, cached outputs)

    @property
    def out(self) -> Path:
        """This step's artifact folder (created on first use)."""
        path = self.run_dir / self.step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact(self, step: str, name: str) -> Path:
        """An upstream artifact; a missing one names the step that makes it and how to run it."""
        path = self.run_dir / step / name
        if not path.exists():
            raise MissingArtifact(
                f"{path} is missing: step {step} makes it. Run it first, e.g. "
                f"`python -m lib.study PARAMS.yaml --run-dir {self.run_dir} --steps {step[:2]}`"
            )
        return path


def open_step(step: str, params: dict, params_file: str, run_dir: str, force: bool = False) -> StepContext:
    """Validate a notebook's parameters and prepare its run folder, logging and seeds."""
    from lib.params import load_params, validate_params

    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
    validated = validate_params(params, "injected params") if params else load_params(params_file)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns at import that an optional CPU kernel package is absent; it falls back by itself.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # weight-loading bars; the study's own bars stay
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    seed_everything(validated.run.seed)
    ctx = StepContext(step=step, params=validated, run_dir=Path(run_dir).resolve(), force=bool(force))
    if step not in KEEPS_ITS_FOLDER:
        empty_folder(ctx.run_dir / step)
    ctx.out  # noqa: B018 - creates the folder
    return ctx


def empty_folder(folder: Path) -> None:
    """Remove everything inside `folder` (a step's artifacts from its previous execution)."""
    import shutil

    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (when installed) for a reproducible step."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
