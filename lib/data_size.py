"""The data-size curve: how each condition's accuracy grows with the number of training questions.

Distilling step-by-step claims that multi-task training on rationales (MT) reaches fine-tuning's (FT) accuracy with
less data. The curve is read from several runs of one study that differ only in `data.max_train` (run folders or
published ones, which keep the same layout):

    python -m lib.data_size results/reference-csqa/data_size outputs/reference-csqa-600 outputs/reference-csqa ...

Each folder gives its number of training questions (`01_data/summary.json`, `train`) and its accuracy with 95%
intervals per condition and test set (`06_statistics/accuracy.csv`). Folders whose params differ anywhere else than
the run's name, the training-set size, the conditions and step 03 are refused, naming the params key: such a curve
would not be one study's. Written atomically in the output folder:

- `data_size.csv`: one row per (run folder, test set, student, condition): `train_questions`, `test_set`,
  `student`, `condition`, `n` (item-seed pairs), `n_seeds`, `accuracy`, `ci_low`, `ci_high` (the generated answer,
  read strictly; cluster bootstrap over items), `parse_rate`, and each option-scoring reading the run has with its
  interval (`loglik_norm_accuracy`: the trained format, the option's text after "So the answer is";
  `cloze_accuracy`, `cloze_norm_accuracy`: lm-evaluation-harness's cloze acc and acc_norm; each with `_ci_low`,
  `_ci_high`; empty where the run did not score options), `run` (the folder's name);
- `data_size.png`: accuracy against training questions, one line per condition, a panel per test set and reading
  (the generated answer and lm-eval's cloze acc_norm).

A point may pool any number of seeds (`n_seeds`), and whether the faithfulness probe ran changes no reading, so
`training.seeds` and `evaluation.faithfulness` may differ along the curve too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from lib import run_tables
from lib.figures import plot_data_size
from lib.files import atomic_write_text, read_json

log = logging.getLogger(__name__)

# what may differ along the curve: the size, the run's name, which conditions and seeds ran, and the faithfulness
# probe (a table of its own: no reading of the curve depends on it)
FREE_KEYS = {"run.name", "data.max_train", "training.conditions", "training.seeds", "evaluation.faithfulness"}
FREE_SECTIONS = {"counterfactual"}  # step 03 feeds CFD only, which the curve does not plot
SCORED_READINGS = ("loglik_norm_accuracy", "cloze_accuracy", "cloze_norm_accuracy")  # option scores, when present
COLUMNS = ["train_questions", "test_set", "student", "condition", "n", "n_seeds", "accuracy", "ci_low", "ci_high",
           "parse_rate", *[f"{r}{end}" for r in SCORED_READINGS for end in ("", "_ci_low", "_ci_high")], "run"]


def check_same_study(run_dirs: list[Path]) -> None:
    """Raise unless every folder's params equal the first's outside FREE_KEYS and FREE_SECTIONS."""
    run_tables.check_same_study(run_dirs, FREE_KEYS, FREE_SECTIONS, "a data-size curve")


def run_points(run_dir: Path) -> pd.DataFrame:
    """One folder's rows of the curve: its accuracy table with its number of training questions."""
    for name in ("01_data/summary.json", "06_statistics/accuracy.csv"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name} is missing: a point of the curve is a run that finished step 06 "
                                    f"(python -m lib.study ... --run-dir {run_dir})")
    table = pd.read_csv(run_dir / "06_statistics" / "accuracy.csv")
    table = table[table["condition"] != "TEACHER"].copy()
    table["train_questions"] = int(read_json(run_dir / "01_data" / "summary.json")["train"])
    table["run"] = run_dir.name
    for column in COLUMNS:
        if column not in table:  # a run without option scores, or from before a reading existed
            table[column] = float("nan")
    return table[COLUMNS]


def data_size_table(run_dirs: list[Path]) -> pd.DataFrame:
    """The curve's rows over every folder, by test set, condition and size (schema in the module docstring)."""
    run_dirs = [Path(d) for d in run_dirs]
    check_same_study(run_dirs)
    curve = pd.concat([run_points(d) for d in run_dirs], ignore_index=True)
    sizes = curve.groupby("train_questions")["run"].nunique()
    if (sizes > 1).any():
        raise ValueError(f"two folders trained on the same number of questions ({list(sizes[sizes > 1].index)}): "
                         "give one folder per size")
    return curve.sort_values(["test_set", "condition", "train_questions"], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.data_size OUT RUN_DIR [RUN_DIR ...]`."""
    ap = argparse.ArgumentParser(prog="python -m lib.data_size", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for data_size.csv and data_size.png")
    ap.add_argument("run_dirs", type=Path, nargs="+", help="run or published folders, one per training-set size")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    curve = data_size_table(args.run_dirs)
    atomic_write_text(args.out / "data_size.csv", curve.to_csv(index=False))
    plot_data_size(curve, args.out / "data_size.png")
    print(curve.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
