"""Does the project read the untrained Gemma 3 270M as lm-evaluation-harness reads it? The standard readings, side by side.

For the first `--n` ARC-Easy test questions and the first `--n` CommonsenseQA dev questions, the same items are read
twice, zero-shot:

- by lm-eval itself (0.4.13): its own `arc_easy` task (the cloze formulation: "Question: {q}\\nAnswer:", each
  option's text as the continuation) and its own `commonsense_qa` task (options listed "A. ...", the letter as the
  continuation), loaded from the YAML files it ships with (tests/lm_eval_reference.py), its HFLM scoring each pair and
  its `process_results` computing acc and acc_norm;
- by the project: lib.standard_readings through lib.scoring.continuation_logliks, as step 05 reads every student.

It prints acc / acc_norm of both, how many items the two pick differently, and the mean and largest difference in the
log-likelihood of one option. They should agree within a point (the issue's bar); the log-likelihoods within about
1e-3 nats (lm-eval tokenises context and continuation together and splits, the project apart).

    .venv/bin/python benchmarks/lm_eval_agreement.py [--n 250] [--data ../shared/data] [--threads 2]

It runs in float32 (`run.precision: fp32`'s scoring) so that both tools compute the same arithmetic.

Measured (2026-12-02, 2-core Intel Xeon with AVX-512 and avx512_bf16 (family 6 model 207), torch 2.13.0 CPU,
transformers 5.23.0, lm-eval 0.4.13, float32, N = 250; the cores otherwise idle):

    set                 formulation   lm-eval acc  ours  acc_norm  ours  picks differ  mean |Δ|  max |Δ|
    ARC-Easy test       cloze                55.6  55.6      58.8  58.8             0   9.7e-05  3.3e-04
    CommonsenseQA dev   cloze                38.8  38.8      46.0  46.0             0   6.8e-05  2.3e-04
    CommonsenseQA dev   lettered             18.0  18.0         -     -             0   4.7e-05  6.4e-05

The same figures lm-eval gave the issue that found the missing <bos> (ARC-Easy 55.6 / 58.8, CommonsenseQA 38.8 /
46.0); before the fix this scorer read ARC-Easy at 40.8 / 39.6. Lettered, the untrained model is below chance
(20%): it cannot bind a letter to its option yet.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = {  # name -> (file under --data, format, lm-eval tasks that read it)
    "ARC-Easy test": ("arc/ARC-Easy/ARC-Easy-Test.jsonl", "arc", ("arc_easy",)),
    "CommonsenseQA dev": ("commonsenseqa/dev_rand_split.jsonl", "commonsenseqa", ("arc_easy", "commonsense_qa")),
}
READING = {"arc_easy": ("cloze", "cloze_norm"), "commonsense_qa": ("lettered", None)}


def main() -> None:
    """Read the first N items of each set with lm-eval and with the project, and print both."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=250, help="questions per set (the first N of each file)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder of the original data files")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (both tools)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from lib.data import load_multiple_choice
    from lib.models import GEMMA_GGUF, load_causal_lm, load_tokenizer
    from lib.scoring import continuation_logliks
    from lib.standard_readings import reading_pairs, standard_picks
    from tests.lm_eval_reference import hflm, hflm_logliks, lm_eval_requests, lm_eval_scores, lm_eval_task

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(GEMMA_GGUF), load_tokenizer(GEMMA_GGUF)
    lm = hflm(model, tok, batch_size=args.batch_size)
    folder = Path(tempfile.mkdtemp(prefix="lm-eval-agreement-"))
    print(f"{'set':<19} {'formulation':<15} {'lm-eval acc':>11} {'ours':>6} {'acc_norm':>9} {'ours':>6} "
          f"{'picks differ':>12} {'mean |Δ|':>9} {'max |Δ|':>8} {'lm-eval s':>9} {'ours s':>7}")
    print("(ours s: both formulations of every item, as step 05 reads one student; lm-eval s: this one alone)")
    for name, (path, fmt, tasks) in SETS.items():
        qs = load_multiple_choice(str(Path(args.data) / path), fmt, limit=args.n)
        for task_name in tasks:
            task = lm_eval_task(task_name, qs, folder / name.replace(" ", "_"))
            requests = lm_eval_requests(task)
            t0 = time.perf_counter()
            flat = hflm_logliks(lm, [pair for pairs in requests for pair in pairs])
            t_theirs = time.perf_counter() - t0
            theirs, k = [], 0
            for pairs in requests:
                theirs.append(flat[k:k + len(pairs)])
                k += len(pairs)
            scores = lm_eval_scores(task, theirs)
            column = 0 if task_name == "arc_easy" else 1
            ours_ll = continuation_logliks(model, tok, [p for q in qs for p in reading_pairs(q)[column]], args.batch_size)
            t0 = time.perf_counter()  # both formulations of every item, as step 05 reads a student
            picks = standard_picks(lambda pairs: continuation_logliks(model, tok, pairs, args.batch_size), qs)
            t_ours = time.perf_counter() - t0
            acc_reading, norm_reading = READING[task_name]
            acc = np.mean([getattr(p, acc_reading) == q.answer for p, q in zip(picks, qs)])
            norm = np.mean([getattr(p, norm_reading) == q.answer for p, q in zip(picks, qs)]) if norm_reading else None
            their_picks = [int(np.argmax(v)) for v in theirs]
            differ = sum(getattr(p, acc_reading) != t for p, t in zip(picks, their_picks))
            delta = np.abs(np.array(ours_ll) - np.array(flat))
            formulation = "cloze" if task_name == "arc_easy" else "lettered"
            print(f"{name:<19} {formulation:<15} {100 * scores['acc']:>11.1f} {100 * acc:>6.1f} "
                  f"{100 * scores['acc_norm'] if 'acc_norm' in scores else float('nan'):>9.1f} "
                  f"{100 * norm if norm is not None else float('nan'):>6.1f} {differ:>12d} {delta.mean():>9.1e} "
                  f"{delta.max():>8.1e} {t_theirs:>9.0f} {t_ours:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
