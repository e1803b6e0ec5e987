"""The teacher comparison: one student trained on the same questions from different teachers' rationales.

Does it matter whose rationales a student distils? PaLM-540B's few-shot chains of thought (which predict the answer
and are right on about 74% of CommonsenseQA's training questions), LLaMA-2-13B's (Hendriks et al.: rationalising
the gold answer) and CoS-E's human explanations are each one run of one study that differs only in
`teacher.replay_source` / `teacher.replay_dir` (run folders or published ones, which keep the same layout):

    python -m lib.teacher_comparison results/reference-csqa/teachers outputs/palm outputs/hendriks outputs/cose \
        [--condition MT] [--source unrevised] [--reading cloze_norm_correct]

Each folder gives its per-item results (`05_evaluation/items.jsonl`, or `items.jsonl.gz` in a published folder):
the rows of `--condition` trained on `--source` rationales, labelled with the folder's teacher (TEACHERS), and,
from the first folder only, the untrained student (BASE, teacher "none (BASE)") as the reference. Folders whose
params differ anywhere else than the run's name, the teacher's replay, the conditions, rationale sources and seeds
trained, and step 03 are refused, naming the params key, and so are two folders of one teacher. Written atomically
in the output folder:

- `teachers.csv`: one row per (teacher, test set, reading of the answer, `lib.run_tables.READINGS`): `teacher`,
  `replay_source` (empty for BASE), `condition`, `rationale_source`, `test_set`, `reading`, `n` (item-seed pairs),
  `n_items`, `n_seeds`, `accuracy`, `ci_low`, `ci_high` (95% cluster bootstrap over items, lib.stats.mean_table),
  `parse_rate` (the share of the student's generated answers whose answer sentence names an option; the same on every
  reading's row) and `run` (the folder's name);
- `teacher_tests.csv`: exact McNemar between every pair of teachers and between each teacher and BASE on the same
  items, per test set, student, seed (BASE beside every seed) and reading (lib.stats.mcnemar_pairs with group
  "teacher"; the exact binomial test on the discordant items at any count; `only1` = items group1 got right and group2
  wrong), Holm-adjusted (`p_holm`) within a test set, student and reading;
- `teachers.png`: one reading's accuracy by teacher with 95% CI bars, a panel per test set, BASE a dashed line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from lib.conditions import UNTRAINED
from lib.figures import plot_teachers
from lib.files import atomic_write_text, read_json
from lib.run_tables import beside_every_seed, check_same_study, read_items, READINGS, SOURCE, UNREVISED
from lib.stats import has_values, mcnemar_pairs, mean_table, over_readings

log = logging.getLogger(__name__)

TEACHERS = {  # teacher.replay_source -> the teacher's name in tables and figures
    "palm": "PaLM-540B (few-shot CoT)",
    "hendriks": "LLaMA-2-13B (Hendriks et al., rationalising the gold answer)",
    "cose": "CoS-E (human)",
}
BASE_TEACHER = "none (BASE)"  # the untrained student's rows: no teacher
FREE_KEYS = {"run.name", "teacher.replay_dir", "teacher.replay_source", "teacher.revise_max_questions",
             "training.conditions", "training.rationale_sources", "training.seeds"}  # what may differ between teachers
FREE_SECTIONS = {"counterfactual"}  # step 03 feeds CFD only, which the comparison does not read
EXACT_BELOW = 2**31  # McNemar exact (binomial on the discordant pairs) at any count, not chi-square above 25
COLUMNS = ["teacher", "replay_source", "condition", SOURCE, "test_set", "reading", "n", "n_items", "n_seeds",
           "accuracy", "ci_low", "ci_high", "parse_rate", "run"]


def replay_source(run_dir: Path) -> str:
    """The folder's teacher: `teacher.replay_source` of its params.json, for a replayed teacher."""
    teacher = read_json(run_dir / "params.json").get("teacher") or {}
    if teacher.get("backend", "replay") != "replay" or teacher.get("replay_source") not in TEACHERS:
        raise ValueError(f"{run_dir}/params.json has teacher.backend {teacher.get('backend')!r}, teacher.replay_source "
                         f"{teacher.get('replay_source')!r}: the teacher comparison reads runs of replayed teachers "
                         f"(teacher.backend: replay, teacher.replay_source one of {', '.join(TEACHERS)})")
    return str(teacher["replay_source"])


def teacher_rows(run_dir: Path, condition: str, source: str) -> pd.DataFrame:
    """One folder's items of `condition` trained on `source` rationales, labelled with its teacher and folder."""
    items, code = read_items(run_dir), replay_source(run_dir)
    keep = items[(items["condition"] == condition) & (items[SOURCE] == source)]
    if keep.empty:
        have = sorted(set(zip(items["condition"].astype(str), items[SOURCE].astype(str))))
        raise ValueError(f"{run_dir}/05_evaluation has no items of condition {condition} trained on {source} "
                         f"rationales; it has {', '.join(f'{c} ({s})' for c, s in have) or 'none'}: pass --condition "
                         "and --source of a student every folder trained")
    return _labelled(keep, TEACHERS[code], code, run_dir)


def base_rows(run_dir: Path) -> pd.DataFrame:
    """The untrained student's items of one folder (BASE), the reference every teacher is compared with."""
    items = read_items(run_dir)
    base = items[items["condition"].isin(UNTRAINED)]
    if base.empty:
        raise ValueError(f"{run_dir}/05_evaluation has no BASE items: put first a folder whose training.conditions "
                         "hold BASE, the untrained reference")
    return _labelled(base, BASE_TEACHER, "", run_dir)


def _labelled(items: pd.DataFrame, teacher: str, code: str, run_dir: Path) -> pd.DataFrame:
    """`items` with their teacher, and each training run named with its folder (folders repeat run names)."""
    return items.assign(teacher=teacher, replay_source=code, folder=run_dir.name,
                        run=run_dir.name + "/" + items["run"].astype(str))


def comparison_items(run_dirs: Sequence[Path], condition: str = "MT", source: str = UNREVISED) -> pd.DataFrame:
    """Every folder's items of `condition` and `source` and the first folder's BASE items, with a `teacher` column."""
    run_dirs = [Path(d) for d in run_dirs]
    if condition in UNTRAINED:
        raise ValueError(f"--condition {condition} is untrained, the reference every comparison already holds: name "
                         "a condition trained on the teachers' rationales (e.g. MT)")
    check_same_study(run_dirs, FREE_KEYS, FREE_SECTIONS, "a teacher comparison")
    codes = [replay_source(d) for d in run_dirs]
    repeated = sorted({c for c in codes if codes.count(c) > 1})
    if repeated:
        raise ValueError(f"several folders replay the same teacher ({', '.join(repeated)}: "
                         f"{', '.join(str(d) for d, c in zip(run_dirs, codes) if c in repeated)}): give one folder "
                         "per teacher")
    parts = [base_rows(run_dirs[0]), *(teacher_rows(d, condition, source) for d in run_dirs)]
    return pd.concat(parts, ignore_index=True)


def readings(items: pd.DataFrame) -> list[str]:
    """The readings of the answer (READINGS) that some item has a value for."""
    return [r for r in READINGS if has_values(items, r)]


def teacher_table(items: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per teacher, test set and reading: accuracy with its interval and the parse rate (module docstring)."""
    by = ["teacher", "replay_source", "condition", SOURCE, "test_set", "folder"]
    unparseable = items["unparseable"] if "unparseable" in items else pd.Series(float("nan"), index=items.index)
    parsed = items.assign(parsed=1.0 - pd.to_numeric(unparseable, errors="coerce"))
    rate = parsed.groupby(by, sort=False)["parsed"].mean().rename("parse_rate").reset_index()
    parts = [mean_table(items, r, by, n_boot, seed).assign(reading=r) for r in readings(items)]
    table = pd.concat(parts, ignore_index=True).merge(rate, on=by, how="left")
    table = table.rename(columns={"mean": "accuracy", "folder": "run"})
    order = {name: i for i, name in enumerate([BASE_TEACHER, *TEACHERS.values()])}
    table = table.assign(_t=table["teacher"].map(order), _r=table["reading"].map(list(READINGS).index))
    return table.sort_values(["test_set", "_r", "_t"], ignore_index=True)[COLUMNS]


def teacher_tests(items: pd.DataFrame) -> pd.DataFrame:
    """McNemar between every pair of teachers and BASE per test set, student, seed and reading (module docstring)."""
    paired = beside_every_seed(items)
    return over_readings(mcnemar_pairs, paired, readings(items), group="teacher",
                         within=("test_set", "student", "seed"), family=("test_set", "student"),
                         exact_below=EXACT_BELOW)


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.teacher_comparison OUT RUN_DIR [RUN_DIR ...] [--condition MT] [--source unrevised]`."""
    ap = argparse.ArgumentParser(prog="python -m lib.teacher_comparison", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for teachers.csv, teacher_tests.csv and teachers.png")
    ap.add_argument("run_dirs", type=Path, nargs="+",
                    help="run or published folders, one per teacher; BASE is read from the first")
    ap.add_argument("--condition", default="MT", help="the trained condition compared across teachers (default MT)")
    ap.add_argument("--source", default=UNREVISED, choices=["unrevised", "revised"],
                    help="the teacher rationales it was trained on (default unrevised)")
    ap.add_argument("--reading", default="cloze_norm_correct", choices=list(READINGS),
                    help="the reading of the answer the figure shows (default cloze_norm_correct)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    items = comparison_items(args.run_dirs, args.condition, args.source)
    if args.reading not in readings(items):
        raise ValueError(f"--reading {args.reading}: no item of these folders has it; they have "
                         f"{', '.join(readings(items))}: pass one of them")
    table, tests = teacher_table(items), teacher_tests(items)
    atomic_write_text(args.out / "teachers.csv", table.to_csv(index=False))
    atomic_write_text(args.out / "teacher_tests.csv", tests.to_csv(index=False))
    plot_teachers(table, reading=args.reading, path=args.out / "teachers.png")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
