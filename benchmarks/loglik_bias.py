"""Does log-likelihood scoring favour one option letter? The untrained Gemma 3 270M on CommonsenseQA dev.

Reads the first `--n` questions of the CommonsenseQA dev file, asks them with the FT student's prompt
(`lib.conditions.eval_prompts("FT", q, ...)["answer"]`: the question, its lettered options and "A:") and
scores every option with each scoring of `lib.scoring.LOGLIK_SCORINGS`. For each scoring it prints
the accuracy of the summed log-likelihood (lm-evaluation-harness's `acc`) and of the log-likelihood per
character of the continuation (`acc_norm`), how often each letter was picked, and the largest share of
one letter; the gold letters' counts come first. An unbiased scorer of an untrained model picks each
letter about as often as gold does.

    .venv/bin/python benchmarks/loglik_bias.py [--n 300] [--data DEV.jsonl] [--batch-size 8] [--threads N]

The model is the packaged `gemma3-270m-gguf` (converted once into .cache/models, about a minute).

Measured with <bos> (2026-12-02, 2-core Intel Xeon, AVX-512, torch 2.13.0 CPU, 2 threads, fp32, N = 100, cores idle):

    scoring (pick)                acc %   (a)  (b)  (c)  (d)  (e)   max share
    gold                                   17   20   17   23   23    23.0%
    answer_sentence (sum)          22.0    20    9   16   24   31    31.0%   25 s
    answer_sentence (per char)     23.0    20   13   17   28   22    28.0%
    option_text (sum)              23.0    64   10   10    7    9    64.0%   15 s
    option_text (per char)         21.0    44   12   15   19   10    44.0%
    answer_text (sum)              25.0    34   14   13   17   22    34.0%   15 s
    answer_text (per char)         22.0    26   16   17   22   19    26.0%

With <bos> the letter no longer decides the answer-sentence scoring; the option's text after a prompt that lists the
options leans to the first one. The table below, and what follows it, was measured WITHOUT <bos> (every input lacked
it before 2026-12-02), on 2026-11-29, 2-core AMD EPYC at 2.0 GHz (Zen 1, AVX2), torch 2.13.0 CPU, 2 threads, N = 300;
the first scoring ran while other processes loaded the cores, the others on idle cores:

    scoring (pick)                acc %   (a)  (b)  (c)  (d)  (e)   max share
    gold                                   57   55   59   58   71    23.7%
    answer_sentence (sum)          19.7   251   31   10    5    3    83.7%   1386 s
    answer_sentence (per char)     21.7   185   48   25   22   20    61.7%
    option_text (sum)              20.7   144   34   23   48   51    48.0%   174 s
    option_text (per char)         23.0   118   41   38   44   59    39.3%
    answer_text (sum)              17.0   140   38   27   40   55    46.7%   176 s
    answer_text (per char)         23.3   117   49   43   37   54    39.0%

The letter decides the old answer-sentence scoring (84% (a)). Without the letter the untrained model still
leans to the first listed option (it copies it), least so per character: option_text per character is
the default (lm-eval's `acc_norm`; answer_text is equal within one question). Calibrating by the same
prompt with the question replaced by "N/A" (Zhao et al. 2021) made it worse (75% (a)): without a question
the model favours the LAST option instead. Dividing by the option's log-likelihood after "A:" alone (PMI,
lm-eval's `acc_mutual_info`) lowered the largest share to 28% but also accuracy to 17.7%, below chance.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections import Counter

DEFAULT_DATA = "/work/shared/data/commonsenseqa/dev_rand_split.jsonl"


def letter_counts(picks: list[int], n_options: int) -> list[int]:
    """How often each option index was picked."""
    counts = Counter(picks)
    return [counts.get(k, 0) for k in range(n_options)]


def row(name: str, counts: list[int], accuracy: float | None) -> str:
    """One printed line: name, accuracy, counts per letter and the largest share."""
    acc = "" if accuracy is None else f"{100 * accuracy:5.1f}"
    return (f"{name:<28} {acc:>6}  " + " ".join(f"{c:4d}" for c in counts)
            + f"   {100 * max(counts) / max(1, sum(counts)):5.1f}%")


def main() -> None:
    """Score the first N dev questions under every scoring and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="dev questions scored (the first N of the file)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="CommonsenseQA dev file in the original jsonl format")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from lib.conditions import eval_prompts
    from lib.data import load_multiple_choice
    from lib.models import GEMMA_GGUF, load_causal_lm, load_tokenizer
    from lib.params import StrategyTokens
    from lib.questions import option_letters
    from lib.scoring import continuation_logliks, loglik_choices, LOGLIK_SCORINGS

    if args.threads:
        torch.set_num_threads(args.threads)
    questions = load_multiple_choice(args.data, "commonsenseqa", limit=args.n)
    n_options = max(len(q.choices) for q in questions)
    prompts = [eval_prompts("FT", q, StrategyTokens().positive)["answer"] for q in questions]
    model, tokenizer = load_causal_lm(GEMMA_GGUF), load_tokenizer(GEMMA_GGUF)
    score = functools.partial(continuation_logliks, model, tokenizer, batch_size=args.batch_size)
    gold = [q.answer for q in questions]

    print(f"{len(questions)} CommonsenseQA dev questions ({args.data}), untrained {GEMMA_GGUF}, FT student prompt; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {_cpu_name()}")
    print(f"{'scoring (pick)':<28} {'acc %':>6}  " + " ".join(f"{f'({c})':>4}" for c in option_letters(n_options))
          + "   max share")
    print(row("gold", letter_counts(gold, n_options), None))
    for scoring in LOGLIK_SCORINGS:
        t0 = time.perf_counter()
        picks = loglik_choices(score, prompts, questions, scoring)
        seconds = time.perf_counter() - t0
        for kind in ("total", "per_char"):
            chosen = [getattr(p, kind) for p in picks]
            accuracy = sum(c == g for c, g in zip(chosen, gold)) / len(gold)
            print(row(f"{scoring} ({'sum' if kind == 'total' else 'per char'})", letter_counts(chosen, n_options),
                      accuracy) + ("" if kind == "per_char" else f"   {seconds:.0f} s"))


def _cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    import platform

    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
