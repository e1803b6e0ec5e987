"""How much faster is option scoring when a question's options share one read of its prompt?

Scores every option of the first `--n` CommonsenseQA dev questions with the `answer_text` scoring (as the
reference study does) twice with the packaged Gemma 3 270M: each (prompt, option) read as one sequence
(`lib.scoring._joint_logliks`, what step 05 did before) and through `continuation_logliks`, which reads a
prompt once and runs each option on its key/value cache. The prompts are the FT student's, and with
`--rationale` the prompt is followed by the teacher's rationale (as the faithfulness probe reads an answer
after a rationale; longer contexts, so more to share). Prints seconds per path, their ratio, and the largest
difference between the two scores of any option (float rounding only; the picks are compared too).

    .venv/bin/python benchmarks/shared_context_scoring.py [--n 40] [--rationale] [--batch-size 20] [--threads N]

Measured (2026-11-30, 2-core AMD EPYC (Zen 1, AVX2), torch 2.13.0 CPU, 2 threads, fp32, N = 40, 200 options, the
study itself paused so the cores were idle):

    prompt                                 each option read whole   prompt read once   speed-up   largest gap
    the FT prompt (55 tokens on average)          18.9 s                  6.5 s          2.92x     3.3e-05 nats
    with a 40-word rationale (92 tokens)          29.8 s                  9.1 s          3.29x     1.9e-05 nats

The picks were identical. Both paths pay the same LM head at the options' tokens (Gemma's 262k-token vocabulary):
in a profile of 20 questions beside other work it was 2.0 s of the shared path's 14.6 s.
"""

from __future__ import annotations

import argparse
import time

DEFAULT_DATA = "/work/shared/data/commonsenseqa/dev_rand_split.jsonl"
RATIONALE = (" People keep things where they can reach them and where they stay safe; a thing that is used every day"
             " is kept close at hand, while one used once a year is stored away.")  # made up, about 40 words


def main() -> None:
    """Time both scoring paths on the same pairs and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="dev questions scored (the first N of the file)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="CommonsenseQA dev file in the original jsonl format")
    ap.add_argument("--rationale", action="store_true",
                    help="put a rationale after the prompt (a fixed made-up one of about 40 words)")
    ap.add_argument("--batch-size", type=int, default=20, help="sequences (joint) or prompts (shared) per pass")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch
    from loglik_bias import _cpu_name  # this folder is on sys.path when a benchmark runs as a script

    from lib.conditions import eval_prompts
    from lib.data import load_multiple_choice
    from lib.models import GEMMA_GGUF, load_causal_lm, load_tokenizer
    from lib.params import StrategyTokens
    from lib.scoring import _joint_logliks, continuation_logliks, encode_pairs, option_continuations

    if args.threads:
        torch.set_num_threads(args.threads)
    questions = load_multiple_choice(args.data, "commonsenseqa", limit=args.n)
    rationale = RATIONALE if args.rationale else ""
    pairs = [pair for q in questions
             for pair in option_continuations(eval_prompts("FT", q, StrategyTokens().positive)["answer"] + rationale,
                                              q, "answer_text")]
    model, tokenizer = load_causal_lm(GEMMA_GGUF), load_tokenizer(GEMMA_GGUF)
    model.eval()
    encoded = encode_pairs(tokenizer, pairs)
    print(f"{len(questions)} CommonsenseQA dev questions, {len(pairs)} options, prompt "
          f"{'with' if rationale else 'without'} a rationale (mean {sum(len(c) for c, _ in encoded) / len(encoded):.0f}"
          f" prompt tokens); {GEMMA_GGUF}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {_cpu_name()}")
    timings = {}
    for name, run in (("each option read with its prompt", lambda: _joint_logliks(model, tokenizer, encoded,
                                                                                  args.batch_size, "joint")),
                      ("prompt read once, options on its cache", lambda: continuation_logliks(
                          model, tokenizer, pairs, args.batch_size, "shared"))):
        t0 = time.perf_counter()
        scores = run()
        timings[name] = (time.perf_counter() - t0, scores)
        print(f"{name:<40} {timings[name][0]:7.1f} s")
    (joint_s, joint), (shared_s, shared) = timings.values()
    starts = [sum(len(p.choices) for p in questions[:i]) for i in range(len(questions))]
    picks = [[max(range(k, k + len(q.choices)), key=s.__getitem__) for k, q in zip(starts, questions)]
             for s in (joint, shared)]
    gap = max(abs(a - b) for a, b in zip(joint, shared))
    same = "identical" if picks[0] == picks[1] else "DIFFER"
    print(f"speed-up {joint_s / shared_s:.2f}x; largest score difference {gap:.2e} nats; picks {same}")


if __name__ == "__main__":
    main()
