"""Publishing a finished run: the files a reader needs, in the run folder's own layout, small enough for git.

    python -m lib.publish outputs/reference-csqa results/reference-csqa

What goes (everything else in outputs/ stays there):
- manifest.json and params.json (params, versions, code and input hashes, each step's status, wall time and number
  formats), timings.csv: the wall time of every step's last run, and progress.log: every line the runner and the
  long steps wrote (each stage's and each trained or evaluated run's time, where a study ran in stages);
- 03_counterfactuals/acceptance.json; 04_training/runs.jsonl and each run's losses.jsonl and config.json;
- 05_evaluation: items.jsonl.gz (every item's output and scores, gzip), summary.csv, ood_matrix.csv, picks.csv,
  faithfulness.csv, summary.json and the ratings a run has; student_answers.jsonl.gz, every output and option score
  step 05 computed in this run folder under its cache key's prefix, which `python -m lib.study PARAMS --reuse
  <published folder>` reuses (lib.reuse), and 02_teacher/teacher_answers.jsonl.gz, the generative teacher's responses
  of steps 02 and 03 alike; 06_statistics: every table, findings.md and report.html;
- notebooks/<step>.html: the executed notebooks of the run as HTML handouts (what lib.study wrote beside them), so a
  class can read the real study step by step without running it;
- adapters/<run>/: each trained LoRA adapter with its weights in bf16 ("16-bit"), where that file is at most
  `max_adapter_mb` (10 MB: the project's limit per adapter in git); a larger one is listed in adapters/README.md with the
  command that retrains it.

Because the layout is the run folder's, `python -m lib.report results/<run> -o report.html` rebuilds the report
from the published files alone. Publishing again replaces what an earlier publish wrote (the run's folders and files
above) and keeps what a person wrote beside them (a recipe sweep's notes, the data-size curve).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import sys
from pathlib import Path

from lib.files import atomic_write_bytes, atomic_write_text, read_json, read_jsonl, write_json
from lib.models import ADAPTER_FILES, ADDED_TOKENS
from lib.ratings import HUMAN_RATINGS, JUDGE_RATINGS
from lib.results_table import results_table
from lib.reuse import export_answers, RUN_FILES, STUDENT_ANSWERS, TEACHER_ANSWERS
from lib.runs import PROGRESS_LOG, STEPS
from lib.student_cache import STUDENT_CACHE
from lib.teacher import teacher_cache_path

log = logging.getLogger(__name__)

FILES = ("manifest.json", "params.json", HUMAN_RATINGS, PROGRESS_LOG, "01_data/summary.json",
         "03_counterfactuals/acceptance.json", "04_training/runs.jsonl", "05_evaluation/summary.csv",
         "05_evaluation/summary.json", "05_evaluation/ood_matrix.csv", "05_evaluation/picks.csv",
         "05_evaluation/faithfulness.csv", "05_evaluation/correlations.csv", f"05_evaluation/{JUDGE_RATINGS}",
         "05_evaluation/causal_items.jsonl")
# what publish writes in dest, and replaces on the next publish
HANDOUTS = "notebooks"  # the executed notebooks as HTML, to read the real study step by step without running it
OWNED = ("01_data", "03_counterfactuals", "04_training", "05_evaluation", "06_statistics", "adapters", HANDOUTS, "manifest.json",
         "params.json", HUMAN_RATINGS, "timings.csv", PROGRESS_LOG)
MAX_REPORT_MB = 2.0
MAX_ADAPTER_MB = 10.0  # the project's limit per adapter in git; a larger one is listed with the command that retrains it
ITEMS_GZ = "05_evaluation/items.jsonl.gz"


def publish(run_dir: Path, dest: Path, max_adapter_mb: float = MAX_ADAPTER_MB) -> list[Path]:
    """Copy a run's publishable files to `dest`, replacing an earlier publish's (`OWNED`); returns the files written."""
    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir} has no manifest.json: publish a run folder written by python -m lib.study")
    for name in OWNED:
        old = dest / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    written = [_copy(run_dir / name, dest / name) for name in FILES if (run_dir / name).exists()]
    items = run_dir / "05_evaluation" / "items.jsonl"
    if items.exists():  # every item's output: gzip keeps it small enough for git, and lib.files reads it as it is
        written.append(atomic_write_bytes(dest / ITEMS_GZ, gzip.compress(items.read_bytes(), mtime=0)))
    for cache, export in ((run_dir / STUDENT_CACHE, STUDENT_ANSWERS), (_teacher_cache(run_dir), TEACHER_ANSWERS)):
        exported = export_answers(cache, dest / export)
        if exported is not None:  # what the students and the teacher answered, by cache key: reused by lib.reuse
            written.append(exported)
    for path in sorted((run_dir / "06_statistics").glob("*")):
        if path.suffix in (".csv", ".md", ".html"):
            written.append(_copy(path, dest / "06_statistics" / path.name))
    written += [_copy(run_dir / f"{step}.html", dest / HANDOUTS / f"{step}.html") for step in STEPS
                if (run_dir / f"{step}.html").exists()]
    for page in [dest / "06_statistics" / "report.html", *sorted((dest / HANDOUTS).glob("*.html"))]:
        if page.exists() and page.stat().st_size > MAX_REPORT_MB * 2**20:
            log.warning("%s is %.1f MB, over the %.0f MB meant for git", page, page.stat().st_size / 2**20, MAX_REPORT_MB)
    runs = read_jsonl(run_dir / "04_training" / "runs.jsonl") if (run_dir / "04_training" / "runs.jsonl").exists() else []
    for row in runs:
        for name in RUN_FILES:
            src = run_dir / "04_training" / row["run"] / name
            if src.exists():
                written.append(_copy(src, dest / "04_training" / row["run"] / name))
    written += publish_adapters(run_dir, dest, runs, max_adapter_mb)
    written.append(write_timings(read_json(run_dir / "manifest.json"), dest / "timings.csv"))
    return written


def _teacher_cache(run_dir: Path) -> Path:
    """The teacher response cache a run used (its params.json's `teacher.cache`, else the run folder's)."""
    params = read_json(run_dir / "params.json") if (run_dir / "params.json").exists() else {}
    return teacher_cache_path((params.get("teacher") or {}).get("cache"), run_dir)


def _copy(src: Path, dst: Path) -> Path:
    """Copy one file, creating its folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def publish_adapters(run_dir: Path, dest: Path, runs: list[dict], max_mb: float) -> list[Path]:
    """Each trained run's adapter in bf16 under dest/adapters/<run>/, unless larger than `max_mb` (then listed)."""
    import torch
    from safetensors.torch import load_file, save_file

    written, too_large = [], []
    for row in runs:
        if not row.get("adapter"):
            continue  # BASE: nothing trained
        src = run_dir / "04_training" / row["adapter"]
        weights = load_file(str(src / "adapter_model.safetensors"))
        half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
        size_mb = sum(v.numel() * v.element_size() for v in half.values()) / 2**20
        if size_mb > max_mb:
            too_large.append((row, size_mb))
            continue
        out = dest / "adapters" / row["run"]
        out.mkdir(parents=True, exist_ok=True)
        if all(v.dtype == torch.bfloat16 for v in weights.values() if v.is_floating_point()) \
                and (src / ADDED_TOKENS).exists():  # saved as measured (lib.models.save_adapter): the same bytes
            written += [_copy(src / name, out / name) for name in ADAPTER_FILES]
            continue
        # a run saved in float32 (before training saved in bf16): published rounded, so it differs from the measured
        save_file(half, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        written += [out / "adapter_model.safetensors", _copy(src / "adapter_config.json", out / "adapter_config.json"),
                    write_json(out / ADDED_TOKENS, list(row.get("added_tokens") or []))]
    lines = ["# Adapters", "", "LoRA adapters of the trained runs, weights in bf16. To ask one of these students another",
             "test set as step 05 asked it: `python -m lib.published <this run's folder> <run> --test FILE --format FMT`;",
             "in Python, `lib.evaluation.load_student(student, adapter_folder, device, 'lora')` loads it on its base.", ""]
    for row, size_mb in too_large:
        lines.append(f"- {row['run']}: {size_mb:.1f} MB in bf16, over {max_mb:.0f} MB, not published; retrain it with "
                     f"`python -m lib.study params/<study>.yaml --set 'training.conditions=[{row['condition']}]' "
                     f"--set 'training.seeds=[{row['seed']}]' --steps 01-04`")
    written.append(atomic_write_text(dest / "adapters" / "README.md", "\n".join(lines) + "\n"))
    return written


def write_timings(manifest: dict, path: Path) -> Path:
    """One row per step: status, wall seconds, when it finished and the number formats it used."""
    rows = ["step,status,wall_s,finished,precision"]
    for step, rec in manifest.get("steps", {}).items():
        formats = ";".join(f"{k}={v}" for k, v in (rec.get("precision") or {}).items())
        rows.append(f"{step},{rec.get('status', '')},{rec.get('wall_s', '')},{rec.get('finished', '')},{formats}")
    return atomic_write_text(path, "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.publish RUN_DIR DEST [--max-adapter-mb 10]`, or `python -m lib.publish --table DEST`."""
    ap = argparse.ArgumentParser(prog="python -m lib.publish", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("dest", type=Path, nargs="?")
    ap.add_argument("--max-adapter-mb", type=float, default=MAX_ADAPTER_MB, help="larger adapters are listed with "
                    "the command that retrains them, not copied (large binaries do not belong in git)")
    ap.add_argument("--table", type=Path, metavar="DEST", help="print the README's results table of a published run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.table:
        print(results_table(args.table), end="")
        return 0
    if args.dest is None:
        ap.error("give RUN_DIR and DEST (or --table DEST)")
    written = publish(args.run_dir, args.dest, args.max_adapter_mb)
    total = sum(p.stat().st_size for p in written) / 2**20
    print(f"published {len(written)} files ({total:.1f} MB) to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
