"""Files: the project root, params paths, atomic writes, JSON / JSON-lines, hashes and UTF-8 decoding.

The leaf of `lib`: it imports nothing of ours, and every other module may import it.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it), then put back
os.umask(_UMASK)


class DataError(ValueError):
    """A data file or set the study cannot use; the message says what is wrong, where, and what to do."""


def resolve_path(value: str | Path) -> Path:
    """Resolve a params path: absolute as given, relative to the project root otherwise."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports and tables from a shared folder's readers
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
    """Read a JSON-lines file (gzip-compressed when named *.gz); blank lines are skipped and a bad line is reported."""
    rows = []
    with (gzip.open if Path(path).suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:  # published: .gz
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


def read_text(path: str | Path) -> str:
    """A data file's text, decoded as UTF-8 with or without a byte-order mark; other bytes are a DataError with the line."""
    raw = Path(path).read_bytes()
    if raw.startswith(_WIDE_BOMS):
        raise DataError(f"{path}:1: the file is UTF-16 or UTF-32 (it starts with that byte-order mark); "
                        "re-save it as UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)  # Excel and Windows editors start UTF-8 files with one
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise DataError(f"{path}:{line}: byte 0x{raw[exc.start]:02x} at byte {column} of the line is not UTF-8; "
                        "re-save the file as UTF-8 (an editor's 'Save with encoding: UTF-8', Excel's 'CSV UTF-8', "
                        "or `iconv -f cp1252 -t utf-8 OLD > NEW`)") from exc
