"""Reusing published runs in a new run folder: a study built over several sessions, without stale numbers.

    python -m lib.study params/reference-csqa.yaml --reuse results/reference-csqa/parts/base-mt-seed0

A study too long for one sitting (days of CPU for the reference study) is run in parts, each published by lib.publish
with what it trained (`adapters/<run>/`, exactly the measured student: lib.models.save_adapter) and what its students
answered (`05_evaluation/student_answers.jsonl.gz`: every output and option score step 05 asked for in that run
folder, computed there or served from a part it reused, each under the first 80 bits of its cache key, without the
request: a few hundred kB a student, so parts travel in git; a part made with `--reuse` stands on its own), and
what its generative teacher answered in steps 02 and 03 (`02_teacher/teacher_answers.jsonl.gz`, alike: the local
model's counterfactuals, votes and negative views, which CFD's examples are made of, so a CFD run trained in one part
is the same run in the study that reuses it, on any CPU). Reusing a part seeds a run folder with all three; then the
study runs as ever, and nothing is taken on trust:

- a reused run counts as trained only where step 04 computes the same run config (params, examples, training code,
  student weights, number format) as the part's `config_sha256`; otherwise it is trained again over the seed;
- a reused output is read only where step 05 asks exactly the same request (student weights hash, loading and
  scoring code, device, number format, prompt, item: the key is their sha256); everything else is computed;
- a reused teacher response is read only where steps 02 and 03 ask exactly the same request (backend, model,
  template, prompt, sampling settings and seed, device: lib.teacher_engine); everything else is generated.

So the finished study equals what one uninterrupted run on this code would have written, and a part made by other
code or on a machine of another number format costs its recomputation, never a mixed result.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lib.files import atomic_write_bytes, read_json, read_jsonl, write_json
from lib.models import ADAPTER_FILES
from lib.response_cache import ResponseCache
from lib.runs import note_progress
from lib.teacher import TEACHER_CACHE

log = logging.getLogger(__name__)

STUDENT_ANSWERS = "05_evaluation/student_answers.jsonl.gz"  # a published run's student outputs, by cache key prefix
TEACHER_ANSWERS = "02_teacher/teacher_answers.jsonl.gz"  # its generative teacher's responses (steps 02 and 03), alike
RUN_FILES = ("losses.jsonl", "config.json")  # per trained run, under 04_training/<run>/: published and reused


@dataclass
class Reused:
    """What one published part gave a run folder."""

    source: Path
    runs: list[str]  # trained runs seeded (adapter and done.json)
    kept: list[str]  # runs the folder already had (never overwritten)
    outputs: int  # cached outputs added to the run's student cache
    outputs_in_part: int
    skipped: str = ""  # why the part was not used at all (another number format), or ""
    teacher_outputs: int = 0  # teacher responses added to the run's teacher cache
    teacher_outputs_in_part: int = 0

    def summary(self) -> str:
        """One line for the log."""
        if self.skipped:
            return f"not reused: {self.source}: {self.skipped}"
        kept = f"; {len(self.kept)} already in the run folder, kept: {', '.join(self.kept)}" if self.kept else ""
        return (f"reused from {self.source}: {len(self.runs)} trained run(s) ({', '.join(self.runs) or 'none'}){kept}; "
                f"{self.outputs} of its {self.outputs_in_part} cached student outputs and {self.teacher_outputs} of its "
                f"{self.teacher_outputs_in_part} teacher responses were new to the run's caches. "
                "Each is used only where this code and these params ask for exactly it (lib.reuse)")


def export_answers(cache_path: Path, dest: Path) -> Path | None:
    """Write what was asked in a run's response cache (its students' or its teacher's) to `dest` (gzip jsonl, one
    compact answer a line: ResponseCache.answers); None if the run has no such cache."""
    if not Path(cache_path).exists():
        return None
    cache = ResponseCache(cache_path)
    try:
        answers = cache.answers()
    finally:
        cache.close()
    text = "".join(json.dumps(a, ensure_ascii=False, separators=(",", ":")) + "\n" for a in answers)
    return atomic_write_bytes(dest, gzip.compress(text.encode("utf-8"), mtime=0))


def part_training_format(part: Path) -> str | None:
    """The number format a published part trained in (its manifest's record of step 04), or None if unrecorded."""
    manifest = Path(part) / "manifest.json"
    steps = read_json(manifest).get("steps", {}) if manifest.exists() else {}
    return ((steps.get("04_training") or {}).get("precision") or {}).get("training")


def seed_cache(export: Path, cache_path: Path) -> tuple[int, int]:
    """Add a published export's answers to the response cache at `cache_path`: (how many were new, how many it has);
    (0, 0) where the part has no such export."""
    if not export.exists():
        return 0, 0
    answers = read_jsonl(export)
    cache = ResponseCache(cache_path)
    try:
        return cache.add_published(answers, str(export)), len(answers)
    finally:
        cache.close()


def reuse_published(part: Path, run_dir: Path, training_format: str | None = None,
                    teacher_cache: Path | None = None) -> Reused:
    """Seed `run_dir` with a published part's trained adapters (as finished runs), its students' cached outputs and
    its generative teacher's responses (into `teacher_cache`, by default the run folder's `TEACHER_CACHE`): so step
    03's counterfactuals, and the CFD examples made of them, come out as the part's where the same is asked.

    A part trained in another number format than `training_format` (this study's, lib.models.number_formats) is not
    used at all: its runs would be trained again, and seeding them would keep another part's runs of that name out.
    Of two parts holding the same run, the first given is used (a warning names both when their configs differ).
    """
    from lib.student_cache import STUDENT_CACHE

    part, run_dir = Path(part), Path(run_dir)
    runs_file = part / "04_training" / "runs.jsonl"
    if not runs_file.exists():
        raise FileNotFoundError(f"--reuse {part}: no 04_training/runs.jsonl there; give a folder written by "
                                "python -m lib.publish (results/<study>/...)")
    trained_in = part_training_format(part)
    if training_format is not None and trained_in is not None and trained_in != training_format:
        result = Reused(part, [], [], 0, 0, skipped=f"trained in {trained_in}, and this study trains in "
                        f"{training_format} (run.precision): its runs would be trained again and its answers never "
                        "asked for")
        log.warning("%s", result.summary())
        run_dir.mkdir(parents=True, exist_ok=True)
        note_progress(run_dir, "reuse", result.summary())
        return result
    seeded, kept = [], []
    for row in read_jsonl(runs_file):
        adapter = part / "adapters" / row["run"]
        if not row.get("adapter"):
            continue  # BASE: nothing trained
        if not all((adapter / name).exists() for name in ADAPTER_FILES):
            log.warning("--reuse %s: %s has no published adapter (%s); it will be trained", part, row["run"], adapter)
            continue
        out = run_dir / "04_training" / row["run"]
        if (out / "done.json").exists():
            kept.append(row["run"])
            held = read_json(out / "done.json")
            if held.get("config_sha256") != row.get("config_sha256"):
                log.warning("--reuse %s: %s is already in %s from %s under another config; that one is kept (give "
                            "the parts in the order to prefer)", part, row["run"], run_dir,
                            held.get("reused_from", "this run folder"))
            continue
        shutil.rmtree(out / "adapter", ignore_errors=True)
        for name in ADAPTER_FILES:
            (out / "adapter").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(adapter / name, out / "adapter" / name)
        for name in RUN_FILES:
            if (part / "04_training" / row["run"] / name).exists():
                shutil.copyfile(part / "04_training" / row["run"] / name, out / name)
        write_json(out / "done.json", {**row, "reused_from": str(part)})
        seeded.append(row["run"])
    added, in_part = seed_cache(part / STUDENT_ANSWERS, run_dir / STUDENT_CACHE)
    teacher_added, teacher_in_part = seed_cache(part / TEACHER_ANSWERS, Path(teacher_cache or run_dir / TEACHER_CACHE))
    result = Reused(part, seeded, kept, added, in_part, teacher_outputs=teacher_added,
                    teacher_outputs_in_part=teacher_in_part)
    log.info("%s", result.summary())
    run_dir.mkdir(parents=True, exist_ok=True)
    note_progress(run_dir, "reuse", result.summary())
    return result

