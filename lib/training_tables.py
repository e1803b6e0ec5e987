"""Step 04's results as tables: the loss curves of the trained runs and what each run cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.conditions import UNTRAINED
from lib.files import read_jsonl


def read_losses(train_dir: Path) -> Any:
    """The per-step losses (columns run, step, term, loss) of the trained runs of the grid, listed in runs.jsonl.

    Folders of runs no longer in the params (an earlier condition or student) stay on disk, as they are expensive
    to retrain, but are never read. BASE rows (untrained, `adapter: null`) have no losses and are skipped.
    """
    import pandas as pd

    runs_file = Path(train_dir) / "runs.jsonl"
    if not runs_file.exists():
        raise FileNotFoundError(f"{runs_file} is missing: step 04_training writes it once every run of the grid has "
                                "finished; run that step first")
    frames = []
    for row in read_jsonl(runs_file):
        if row.get("condition") in UNTRAINED:
            continue
        path = Path(train_dir) / row["run"] / "losses.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing although {runs_file} lists run {row['run']}; "
                                    "rerun step 04_training (with --force if its outputs were deleted)")
        frames.append(pd.DataFrame(read_jsonl(path)))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "step", "term", "loss"])


def multi_term_losses(losses: Any) -> Any:
    """The per-term loss rows of runs whose condition has several terms (MT, CF, MT+CF), for the term plots."""
    runs = losses["run"].astype(str)
    multi = runs.str.split("__").str[0].isin(["MT", "CF", "MT+CF"])
    return losses[multi].reset_index(drop=True)


def run_costs(results: Any) -> Any:
    """What each run cost: optimiser steps, wall time, target tokens per second and trainable parameters."""
    df = results.copy()
    df["trainable_%"] = (100 * df["n_trainable"] / df["n_params"]).round(3)
    cols = ["run", "task", "condition", "rationale_source", "student", "seed", "n_examples", "n_truncated", "steps", "wall_s", "train_s",
            "target_tokens_per_s", "n_trainable", "trainable_%"]
    return df[[c for c in cols if c in df]]
