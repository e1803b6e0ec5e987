"""float32 against bfloat16, per operation of the study, on this machine: speed and agreement of results.

For each operation it runs the same work twice, once in float32 and once under `lib.precision.autocast("bf16")`
(the way `run.precision` runs it), and prints seconds, the speed-up and how far the results moved:

- training: LoRA steps (forward + backward, r 16 on every linear layer) of Gemma 3 270M on real CommonsenseQA
  questions with their PaLM-540B rationales in the FT-CoT format, through `lib.training.weighted_target_loss`;
  agreement = the largest loss difference over the same batches;
- scoring: the log-likelihood of every option of `--items` CommonsenseQA dev questions
  (`lib.scoring.continuation_logliks`, the `answer_text` scoring); agreement = share of identical picks and the
  accuracy of each;
- embedding: CEC (`lib.metrics.cec_batch` with all-MiniLM-L6-v2) of `--pairs` real rationale pairs, PaLM-540B's
  against CoS-E's human explanation of the same training question; agreement = mean |CEC difference|;
- decoding: greedy generation of 32 tokens for 8 prompts (`lib.models.generate_texts`); agreement = share of
  identical outputs;
- decoding_accuracy (not in the default `--ops`): 2-shot chain-of-thought answers of the untrained model to
  `--decode-items` dev questions, 48 tokens, read strictly; agreement = accuracy in each format and the items only one
  format gets right.

    .venv/bin/python benchmarks/precision.py [--data ../shared/data] [--ops training,scoring,embedding,decoding]
        [--items 40] [--pairs 1000] [--steps 3] [--threads N]

It also prints what `run.precision: auto` picks here. On a CPU without native bf16 (no avx512_bf16 / amx_bf16 in
/proc/cpuinfo) torch emulates bf16, so the bf16 column shows what auto avoids; the load average before and after
says whether other processes shared the cores.

Measured (2026-11-30, 2-core AMD EPYC at 2.0 GHz, Zen 1: AVX2, no native bf16, so auto = fp32 everywhere; cores
idle): training 3.04 s/step in fp32 against 95.0 s in emulated bf16 (0.03x; max |loss diff| 0.011 on a loss of
3.33; `--steps 3`); scoring 25 options 2.89 s against 17.39 s (0.17x; same picks; `--items 5`); CEC of 100
PaLM/CoS-E pairs 1.08 s against 7.78 s (0.14x; mean |CEC diff| 0.0004; `--pairs 100`). Decoding was not run
here. On such a CPU bf16 is 6-30x slower, which is why auto keeps fp32 without avx512_bf16 / amx_bf16.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.precision import autocast, cpu_flags, precision_plan  # noqa: E402

FORMATS = ("fp32", "bf16")


def timed(fn, *args):
    """(result, seconds) of fn(*args)."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def csqa(data: Path, split: str, n: int):
    """The first n CommonsenseQA questions of a split (train / dev)."""
    from lib.data import load_multiple_choice

    return load_multiple_choice(str(data / "commonsenseqa" / f"{split}_rand_split.jsonl"), "commonsenseqa", limit=n)


def bench_training(data: Path, steps: int, batch: int = 4) -> dict:
    """LoRA forward + backward steps in each format on the same batches."""
    from lib.examples import collate, condition_examples, tokenize_examples
    from lib.models import load_student_lm, load_tokenizer
    from lib.params import TrainingParams
    from lib.recorded import load_palm_rationales
    from lib.training import lora_model, weighted_target_loss

    questions = csqa(data, "train", batch * (steps + 1))
    rationales = load_palm_rationales(str(data / "teacher_rationales" / "distilling_step_by_step_cqa"), "train")
    examples = condition_examples("FT-CoT", questions, rationales)
    tok = load_tokenizer("gemma3-270m-gguf")
    rows = tokenize_examples(examples, tok, 256, ["cot"])
    batches = [collate(rows[i:i + batch], tok.pad_token_id) for i in range(0, batch * (steps + 1), batch)]
    params = TrainingParams(lora={"r": 16, "alpha": 32, "target_modules": "all-linear"})
    model = lora_model(load_student_lm("gemma3-270m-gguf"), params)
    model.train()
    out = {}
    for fmt in FORMATS:
        losses, seconds = [], 0.0
        for k, inputs in enumerate(batches):
            start = time.perf_counter()
            with autocast(fmt, "cpu"):
                loss, _ = weighted_target_loss(model, inputs, [1.0])
            loss.backward()
            model.zero_grad(set_to_none=True)
            if k:  # the first batch warms up
                seconds += time.perf_counter() - start
            losses.append(float(loss))
        out[fmt] = {"s": seconds / steps, "losses": losses}
    targets = sum(int((b["labels"] != -100).sum()) for b in batches[1:])
    diff = max(abs(a - b) for a, b in zip(out["fp32"]["losses"], out["bf16"]["losses"]))
    return {"unit": f"s/step (batch {batch})", "fp32": out["fp32"]["s"], "bf16": out["bf16"]["s"],
            "agreement": f"max |loss diff| {diff:.4f} (fp32 loss {out['fp32']['losses'][1]:.4f}); "
                         f"{targets / steps / out['fp32']['s']:.1f} vs {targets / steps / out['bf16']['s']:.1f} "
                         "target tokens/s"}


def bench_scoring(data: Path, items: int) -> dict:
    """Option log-likelihoods of CommonsenseQA dev questions in each format."""
    from lib.conditions import qa_prompt
    from lib.models import load_student_lm, load_tokenizer
    from lib.scoring import continuation_logliks, option_continuations

    questions = csqa(data, "dev", items)
    pairs = [p for q in questions for p in option_continuations(qa_prompt(q), q, "answer_text")]
    tok, model = load_tokenizer("gemma3-270m-gguf"), load_student_lm("gemma3-270m-gguf")
    picks, seconds = {}, {}
    for fmt in FORMATS:
        with autocast(fmt, "cpu"):
            scores, seconds[fmt] = timed(continuation_logliks, model, tok, pairs)
        picks[fmt], start = [], 0
        for q in questions:
            per_char = [s / max(len(c), 1) for s, (_, c) in zip(scores[start:start + len(q.choices)],
                                                                 pairs[start:start + len(q.choices)])]
            picks[fmt].append(max(range(len(per_char)), key=per_char.__getitem__))
            start += len(q.choices)
    same = sum(a == b for a, b in zip(picks["fp32"], picks["bf16"])) / len(questions)
    acc = {fmt: sum(p == q.answer for p, q in zip(picks[fmt], questions)) / len(questions) for fmt in FORMATS}
    return {"unit": f"s for {len(pairs)} options", **seconds,
            "agreement": f"same pick {same:.0%}; accuracy {acc['fp32']:.1%} vs {acc['bf16']:.1%} ({items} items)"}


def bench_embedding(data: Path, n_pairs: int) -> dict:
    """CEC of real rationale pairs (PaLM-540B vs CoS-E) in each format."""
    from lib.metrics import cec_batch
    from lib.models import encode_sentences, load_embedder
    from lib.recorded import load_cose, load_palm_rationales

    palm = load_palm_rationales(str(data / "teacher_rationales" / "distilling_step_by_step_cqa"), "train")
    cose = load_cose(str(data / "cos_e" / "v1.11" / "cose_train_v1.11_processed.jsonl"))
    pairs = [(palm[i], cose[i]) for i in palm if cose.get(i)][:n_pairs]
    embedder = load_embedder("all-MiniLM-L6-v2")
    cec, seconds = {}, {}
    for fmt in FORMATS:
        with autocast(fmt, "cpu"):
            scores, seconds[fmt] = timed(cec_batch, pairs, lambda s: encode_sentences(embedder, s, progress=False))
        cec[fmt] = [s.cec for s in scores]
    mad = sum(abs(a - b) for a, b in zip(cec["fp32"], cec["bf16"])) / len(pairs)
    return {"unit": f"s for {len(pairs)} pairs", **seconds,
            "agreement": f"mean |CEC diff| {mad:.4f} (mean CEC {sum(cec['fp32']) / len(pairs):.3f})"}


def bench_decoding(data: Path) -> dict:
    """Greedy generation of 32 tokens for 8 prompts in each format."""
    from lib.conditions import qa_prompt
    from lib.models import generate_texts, load_student_lm, load_tokenizer

    prompts = [qa_prompt(q) for q in csqa(data, "dev", 8)]
    tok, model = load_tokenizer("gemma3-270m-gguf"), load_student_lm("gemma3-270m-gguf")
    texts, seconds = {}, {}
    for fmt in FORMATS:
        with autocast(fmt, "cpu"):
            out, seconds[fmt] = timed(generate_texts, model, tok, prompts, 32, 8)
        texts[fmt] = [c[0].text for c in out]
    same = sum(a == b for a, b in zip(texts["fp32"], texts["bf16"])) / len(prompts)
    return {"unit": "s for 8 x 32 tokens", **seconds, "agreement": f"identical outputs {same:.0%}"}


def bench_decoding_accuracy(data: Path, n: int, max_new_tokens: int = 48) -> dict:
    """Greedy chain-of-thought answers (2-shot, as the local teacher asks) to n dev questions in each format, read
    strictly (lib.metrics.extract_answer): does bf16 decoding change the generated accuracy?"""
    from lib.metrics import extract_answer
    from lib.models import generate_texts, load_student_lm, load_tokenizer
    from lib.prompts import cot_prompt

    qs = csqa(data, "dev", n)
    tok, model = load_tokenizer("gemma3-270m-gguf"), load_student_lm("gemma3-270m-gguf")
    texts, seconds, right = {}, {}, {}
    for fmt in FORMATS:
        with autocast(fmt, "cpu"):
            out, seconds[fmt] = timed(generate_texts, model, tok, [cot_prompt(q, 2) for q in qs], max_new_tokens, 8)
        texts[fmt] = [c[0].text for c in out]
        right[fmt] = [extract_answer(t, q.choices) == q.answer for t, q in zip(texts[fmt], qs)]
    same = sum(a == b for a, b in zip(texts["fp32"], texts["bf16"]))
    only = {fmt: sum(r and not o for r, o in zip(right[fmt], right[other]))
            for fmt, other in (("fp32", "bf16"), ("bf16", "fp32"))}
    return {"unit": f"s for {n} x {max_new_tokens} tokens", **seconds,
            "agreement": f"accuracy {sum(right['fp32'])}/{n} fp32, {sum(right['bf16'])}/{n} bf16 (right in one "
                         f"only: {only['fp32']} fp32, {only['bf16']} bf16); identical outputs {same}/{n}"}


def main() -> None:
    """Run the chosen operations and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--ops", default="training,scoring,embedding,decoding")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--decode-items", type=int, default=200, help="dev questions of decoding_accuracy")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    flags = cpu_flags()
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), "?")
    print(f"CPU: {model_name}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}); native bf16 flags: "
          f"{sorted(flags & {'avx512_bf16', 'amx_bf16'}) or 'none'}")
    print(f"run.precision auto picks here: {precision_plan('auto', 'cpu')}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    runs = {"training": lambda: bench_training(args.data, args.steps), "scoring": lambda: bench_scoring(args.data, args.items),
            "embedding": lambda: bench_embedding(args.data, args.pairs), "decoding": lambda: bench_decoding(args.data),
            "decoding_accuracy": lambda: bench_decoding_accuracy(args.data, args.decode_items)}
    print("\n| operation | unit | fp32 | bf16 | bf16 speed-up | agreement |\n|---|---|---|---|---|---|")
    for op in args.ops.split(","):
        r = runs[op]()
        print(f"| {op} | {r['unit']} | {r['fp32']:.2f} | {r['bf16']:.2f} | {r['fp32'] / r['bf16']:.2f}x | {r['agreement']} |",
              flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
