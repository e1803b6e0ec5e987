"""A published student on another test set, without retraining.

    python -m lib.published outputs/reference-csqa FT__unrevised__gemma3-270m-gguf__seed0 \
        --test ../shared/data/arc/ARC-Easy/ARC-Easy-Dev.jsonl --format arc --max-items 200 -o arc-easy-dev.jsonl

The student is the run's base model with its published adapter (`adapters/<run>/`; BASE, the untrained student, has
none) and is asked and scored exactly as step 05 asked and scored it, under the run's own params (`params.json`:
prompts, answer format, generation length, option scoring, number formats). Faithfulness probes are left out: they
belong to the in-distribution test set of the study. Written: one ItemResult per question (jsonl, the schema of
05_evaluation/items.jsonl without the reference-based metrics, which need the teacher's rationales), and the
accuracy printed with its 95% interval.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lib.data import load_multiple_choice
from lib.evaluation import evaluate_run, ItemResult, items_frame
from lib.files import read_json, read_jsonl, write_jsonl
from lib.models import pick_device
from lib.params import validate_params
from lib.stats import accuracy_table

log = logging.getLogger(__name__)


def published_run(dest: Path, run: str) -> tuple[dict, Path | None]:
    """The runs.jsonl row of `run` in a published or run folder and its adapter folder (None for BASE)."""
    runs = {r["run"]: r for r in read_jsonl(dest / "04_training" / "runs.jsonl")}
    if run not in runs:
        raise KeyError(f"{dest}/04_training/runs.jsonl has no run {run!r}; it has: {', '.join(runs)}")
    info = runs[run]
    if not info.get("adapter"):
        return info, None
    for adapter in (dest / "adapters" / run, dest / "04_training" / info["adapter"]):  # published, or a run folder
        if (adapter / "adapter_model.safetensors").exists():
            return info, adapter
    raise FileNotFoundError(f"{dest} holds no adapter of {run} (adapters/README.md says how to retrain it)")


def evaluate_published(dest: Path, run: str, source: str, fmt: str, max_items: int | None = None,
                       device: str = "auto") -> list[ItemResult]:
    """Ask the published student `run` of `dest` the questions of `source` (format `fmt`) as step 05 would."""
    dest = Path(dest)
    params = validate_params(read_json(dest / "params.json"), where=str(dest / "params.json"))
    params.evaluation.faithfulness = False
    info, adapter = published_run(dest, run)
    questions = load_multiple_choice(source, fmt, limit=max_items)
    name = Path(source).stem if Path(source).suffix else source
    return evaluate_run(info, adapter, {name: questions}, params, pick_device(device), progress=log.info)


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.published DEST RUN --test FILE --format FMT [--max-items N] [-o items.jsonl]`."""
    ap = argparse.ArgumentParser(prog="python -m lib.published", description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="a published run folder (python -m lib.publish)")
    ap.add_argument("run", help="a run of its 04_training/runs.jsonl, e.g. FT__unrevised__gemma3-270m-gguf__seed0")
    ap.add_argument("--test", required=True, help="questions: a local jsonl in its original format, or a hub id")
    ap.add_argument("--format", required=True, help="the questions' format (commonsenseqa, arc, ...)")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("-o", "--out", type=Path, default=None, help="write every item's result here (jsonl)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = evaluate_published(args.dest, args.run, args.test, args.format, args.max_items, args.device)
    if args.out is not None:
        write_jsonl(args.out, rows)
    table = accuracy_table(items_frame(rows), by=["condition", "test_set"])
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
