"""Run folders: the study's steps, a step's context (params, folder, upstream artifacts) and its seeds."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from lib.params import load_params, validate_params

STEPS = ("01_data", "02_teacher", "03_counterfactuals", "04_training", "05_evaluation", "06_statistics")
# Steps whose folder keeps costly work between executions, and what decides its reuse. Every other step's
# folder is emptied when the step opens, so nothing an earlier configuration wrote can be read as new.
KEEPS_ITS_FOLDER = {"04_training": "trained runs, reused only when done.json matches config, code and weights"}
PROGRESS_LOG = "progress.log"  # <run>/progress.log: one timestamped line per milestone of a long step (`tail -f` it)


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

    def progress(self, text: str) -> None:
        """Append one line to the run's progress log: what a long step has done so far."""
        note_progress(self.run_dir, self.step, text)


def open_step(step: str, params: dict, params_file: str, run_dir: str, force: bool = False) -> StepContext:
    """Validate a notebook's parameters and prepare its run folder, logging and seeds."""
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


def note_progress(run_dir: Path, step: str, text: str) -> None:
    """Append `<time> <step> <text>` to <run>/progress.log (a log, not an artifact: appended, never rewritten)."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(Path(run_dir) / PROGRESS_LOG, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {step} {text}\n")


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
