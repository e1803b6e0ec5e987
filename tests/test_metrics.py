"""Tests of lib.metrics: sentence splitting, answer extraction, rationale length and CEC."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lib.metrics import cec_batch, cec_from_embeddings, CECScore, extract_answer, rationale_length, split_sentences

CHOICES = ["ice", "fire", "wooded area", "ice cream", "bed"]


# --- split_sentences -------------------------------------------------------------------------------

def test_split_sentences_on_end_punctuation_and_newlines():
    text = "Ice is cold. Fire is hot! Is it wet? Yes\n\n  Next line  \n"
    assert split_sentences(text) == ["Ice is cold.", "Fire is hot!", "Is it wet?", "Yes", "Next line"]


def test_split_sentences_keeps_abbreviations_initialisms_and_decimals():
    text = "Frozen food, e.g. ice cream, melts. Dr. Lee lives in the U.S. now. It is 3.5 m tall."
    assert split_sentences(text) == ["Frozen food, e.g. ice cream, melts.", "Dr. Lee lives in the U.S. now.",
                                     "It is 3.5 m tall."]


def test_split_sentences_closing_quote_and_empty_input():
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]
    assert split_sentences("") == []
    assert split_sentences(" \n\t\n ") == []


def test_rationale_length_counts_words():
    assert rationale_length("Ice  is\ncold, so it melts.") == 6
    assert rationale_length("   ") == 0


# --- extract_answer --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Ice melts in heat. So the answer is (b) wooded area.", 1),
    ("the answer is (B)", 1),
    ("Answer: b", 1),
    ("ANSWER: C.", 2),
    ("So the answer is wooded area.", 2),
    ("So the answer is Wooded Area", 2),
    ("(c)", 2),
    ("I pick (D) here", 3),
    ("**Answer:** (e)", 4),
    ("so the answer is option c", 2),
    ("Answer: d) ice cream", 3),
    ("The answer is A.", 0),
])
def test_extract_answer_common_forms(text, expected):
    assert extract_answer(text, CHOICES) == expected


def test_extract_answer_prefers_last_conclusion():
    text = "At first the answer is (a). Wait, fire burns wood, so the answer is (b) fire."
    assert extract_answer(text, CHOICES) == 1
    assert extract_answer("The answer is (a)? No. The answer is clearly (c).", CHOICES) == 2


def test_extract_answer_conclusion_beats_earlier_bracketed_letters():
    text = "(a) ice is wrong and (e) bed is wrong. So the answer is (c)."
    assert extract_answer(text, CHOICES) == 2


def test_extract_answer_longest_option_text_wins():
    assert extract_answer("So the answer is ice cream.", CHOICES) == 3
    assert extract_answer("So the answer is ice.", CHOICES) == 0
    # the same overlap with the short option listed after the long one
    assert extract_answer("the answer is ice cream", ["ice cream", "ice"]) == 0


def test_extract_answer_letter_out_of_range_is_none():
    assert extract_answer("So the answer is (f).", CHOICES) is None
    assert extract_answer("So the answer is (c).", ["yes", "no"]) is None
    assert extract_answer("(e)", ["yes", "no"]) is None


def test_extract_answer_ignores_hallucinated_next_question():
    text = ("Fire is hot. So the answer is (b).\n\nQ: What is cold?\nAnswer Choices:\n(a) ice\n(b) fire\n"
            "A: Ice is cold. So the answer is (a).")
    assert extract_answer(text, CHOICES) == 1
    # the next block alone must not leak an answer either
    assert extract_answer("Hmm.\nQ: Which?\nA: So the answer is (a).", CHOICES) is None


def test_extract_answer_article_a_is_not_letter_a():
    assert extract_answer("So the answer is a bed.", CHOICES) == 4


def test_extract_answer_echoed_choices_are_not_an_answer():
    assert extract_answer("Answer Choices:\n(a) ice\n(b) fire\n(c) wooded area", CHOICES) is None


@pytest.mark.parametrize("text", ["", "   ", "I do not know.", "So the answer is unclear.", "Fire and ice mix."])
def test_extract_answer_nothing_parseable_is_none(text):
    assert extract_answer(text, CHOICES) is None


def test_extract_answer_whole_output_is_letter_or_option():
    assert extract_answer(" B ", CHOICES) == 1
    assert extract_answer("Ice Cream.", CHOICES) == 3


# --- CEC -------------------------------------------------------------------------------------------

def test_cec_from_embeddings_hand_computed_2d_asymmetric():
    gen = np.array([[1.0, 0.0], [0.0, 1.0]])
    ref = np.array([[0.6, 0.8]])
    # cos = [0.6, 0.8]; FC = (0.6 + 0.8) / 2 = 0.7; BF = max(0.6, 0.8) = 0.8; CEC = 0.75
    s = cec_from_embeddings(gen, ref)
    assert s.fc == pytest.approx(0.7)
    assert s.bf == pytest.approx(0.8)
    assert s.cec == pytest.approx(0.75)


def test_cec_from_embeddings_hand_computed_3d():
    gen = np.array([[1.0, 0.0, 0.0]])
    ref = np.eye(3)
    # FC = 1 (the one g matches r0 exactly); BF = (1 + 0 + 0) / 3; CEC = (1 + 1/3) / 2 = 2/3
    s = cec_from_embeddings(gen, ref)
    assert (s.fc, s.bf, s.cec) == pytest.approx((1.0, 1 / 3, 2 / 3))
    swapped = cec_from_embeddings(ref, gen)
    assert (swapped.fc, swapped.bf) == pytest.approx((1 / 3, 1.0))


def test_cec_from_embeddings_opposite_vectors_and_empty_sides():
    assert cec_from_embeddings(np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])).cec == pytest.approx(-1.0)
    empty = np.zeros((0, 2))
    assert cec_from_embeddings(empty, np.array([[1.0, 0.0]])) == CECScore(0.0, 0.0, 0.0)
    assert cec_from_embeddings(np.array([[1.0, 0.0]]), empty) == CECScore(0.0, 0.0, 0.0)


class CountingEmbed:
    """A fake sentence encoder with fixed, deliberately unnormalised vectors that records what it sees."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def __call__(self, sentences: list[str]) -> np.ndarray:
        self.calls.append(list(sentences))
        return np.array([self.vectors[s] for s in sentences], dtype=float)


def test_cec_batch_hand_computed_normalises_and_embeds_each_sentence_once():
    embed = CountingEmbed({"Ice is cold.": [3.0, 0.0], "Fire is hot.": [0.0, 2.0], "Heat melts ice.": [3.0, 4.0]})
    pairs = [
        ("Ice is cold. Fire is hot.", "Heat melts ice."),   # the 2-D case above: 0.7 / 0.8 / 0.75
        ("Heat melts ice.", "Ice is cold. Fire is hot."),   # swapped: FC 0.8, BF 0.7
        ("Ice is cold.", "Ice is cold."),                   # identical: 1 / 1 / 1
        ("", "Ice is cold."),                               # empty generated side
        ("Fire is hot.", "   "),                            # empty reference side
    ]
    scores = cec_batch(pairs, embed)
    assert len(embed.calls) == 1
    assert Counter(embed.calls[0]) == Counter({"Ice is cold.": 1, "Fire is hot.": 1, "Heat melts ice.": 1})
    assert (scores[0].fc, scores[0].bf, scores[0].cec) == pytest.approx((0.7, 0.8, 0.75))
    assert (scores[1].fc, scores[1].bf, scores[1].cec) == pytest.approx((0.8, 0.7, 0.75))
    assert (scores[2].fc, scores[2].bf, scores[2].cec) == pytest.approx((1.0, 1.0, 1.0))
    assert scores[3] == CECScore(0.0, 0.0, 0.0)
    assert scores[4] == CECScore(0.0, 0.0, 0.0)


def test_cec_batch_all_empty_does_not_call_embed():
    embed = CountingEmbed({})
    assert cec_batch([("", ""), ("  ", "\n")], embed) == [CECScore(0.0, 0.0, 0.0)] * 2
    assert embed.calls == []
    assert cec_batch([], embed) == []


def test_cec_batch_matches_per_pair_reference_on_random_pairs():
    rng = np.random.default_rng(7)
    pool = [f"Sentence number {i}." for i in range(40)]
    vectors = {s: rng.normal(size=5).tolist() for s in pool}
    pairs = []
    for _ in range(200):
        gen = rng.choice(pool, size=rng.integers(0, 6))  # repeats inside one text are kept
        ref = rng.choice(pool, size=rng.integers(0, 4))
        pairs.append((" ".join(gen), "\n".join(ref)))
    embed = CountingEmbed(vectors)
    scores = cec_batch(pairs, embed, chunk=7)  # a tiny chunk exercises the chunked similarity loop

    def unit(texts: str) -> np.ndarray:
        rows = np.array([vectors[s] for s in split_sentences(texts)]).reshape(-1, 5)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    for (g, r), s in zip(pairs, scores):
        want = cec_from_embeddings(unit(g), unit(r))
        assert (s.fc, s.bf, s.cec) == pytest.approx((want.fc, want.bf, want.cec), abs=1e-5)
    assert len(embed.calls) == 1 and len(embed.calls[0]) == len(set(embed.calls[0]))


def test_cec_batch_rejects_wrong_embedding_shape():
    with pytest.raises(ValueError, match="one row per sentence"):
        cec_batch([("A b.", "C d.")], lambda s: np.zeros((1, 3)))


def test_cec_batch_zero_vector_scores_zero_not_nan():
    scores = cec_batch([("Zero.", "One.")], lambda s: np.array([[0.0, 0.0] if x == "Zero." else [1.0, 0.0] for x in s]))
    assert not math.isnan(scores[0].cec) and scores[0].cec == 0.0


def test_metrics_import_is_light():
    code = "import sys, lib.metrics; bad = {'torch', 'sentence_transformers'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("text, expected", [
    ("So the answer is (b).\nQ: next\nA: So the answer is (c).", 1),  # the hallucinated block never counts
    ("Answer:\n(c)", 2),                                                # conclusion marker, letter on the next line
    ("the answer is: **(D)**", 3),
    ("So the answer is (B) fire, not (a) ice.", 1),                     # the named option, not a later mention
    ('Therefore, the answer is "wooded area".', 2),
    ("answer is e)", 4),
    ("So the answer is (z)", None),
])
def test_extract_answer_tricky_outputs(text, expected):
    assert extract_answer(text, CHOICES) == expected


# --- BLEU, ROUGE-L, BERTScore, correlations ----------------------------------------------------------

def test_bleu_and_rouge_l_identical_disjoint_and_partial():
    from lib.metrics import bleu_scores, rouge_l_scores

    pairs = [("Ice is cold so it melts.", "Ice is cold so it melts."), ("Fire burns wood", "Snow falls at night"),
             ("the cat sat", "the cat sat on the mat")]
    bleu, rouge = bleu_scores(pairs), rouge_l_scores(pairs)
    assert bleu[0] == pytest.approx(100.0) and rouge[0] == pytest.approx(1.0)
    assert bleu[1] == pytest.approx(0.0, abs=1e-6) and rouge[1] == 0.0
    # ROUGE-L by hand: LCS 3, precision 3/3, recall 3/6, F = 2PR / (P + R) = 2/3
    assert rouge[2] == pytest.approx(2 / 3)
    # BLEU by hand: every n-gram of the hypothesis matches (precision 1), brevity penalty exp(1 - 6/3)
    assert bleu[2] == pytest.approx(100 * math.exp(-1))


def test_bertscore_with_a_local_encoder_folder():
    from lib.metrics import bertscore_scores
    from lib.models import resolve_embedder

    path = resolve_embedder("tiny-random-minilm")
    same, other = bertscore_scores([("Ice is cold.", "Ice is cold."), ("Ice is cold.", "Fire is hot today.")], path)
    assert same == pytest.approx(1.0, abs=1e-4) and other < same
    assert bertscore_scores([], path) == []


def test_encode_sentences_batches_by_token_length_and_keeps_input_order():
    from lib.models import encode_sentences, load_embedder, TINY_MINILM

    embedder = load_embedder(TINY_MINILM)
    sentences = ["Ice is cold and melts in the warm sun of the afternoon.", "Ice.", "Fire is hot.",
                 "So the answer is a box because things are kept in boxes.", "Snow falls at night.", "Q:"]
    calls = []
    encode = embedder.encode
    embedder.encode = lambda batch, **kw: calls.append(batch) or encode(batch, **kw)
    got = encode_sentences(embedder, sentences, batch_size=2, progress=False)
    embedder.encode = encode
    np.testing.assert_allclose(got, embedder.encode(sentences), atol=1e-5)  # row i belongs to sentence i
    lengths = [[len(embedder.tokenizer(s)["input_ids"]) for s in batch] for batch in calls]
    assert len(calls) == 3 and all(max(a) <= min(b) for a, b in zip(lengths, lengths[1:]))
    assert encode_sentences(embedder, [], progress=False).shape == (0, got.shape[1])


def test_metric_rating_correlations_by_hand():
    import pandas as pd

    from lib.metrics import metric_rating_correlations

    items = pd.DataFrame({"run": ["r"] * 4, "item_id": list("abcd"), "cec": [0.1, 0.2, 0.3, 0.4],
                          "bleu": [4.0, 3.0, 2.0, 1.0]})
    ratings = pd.DataFrame({"run": ["r"] * 5, "item_id": list("abcdd"), "completeness": [1, 2, 3, 3, 5],
                            "contrastiveness": [None] * 5, "soundness": [2, 2, 2, 2, 2]})
    table = metric_rating_correlations(items, ratings, metrics=("cec", "bleu"),
                                       dimensions=("completeness", "contrastiveness", "soundness")).set_index("metric")
    # per-item mean completeness: 1, 2, 3, 4 -> Spearman +1 with CEC, -1 with BLEU
    assert table.loc["cec", "completeness"] == pytest.approx(1.0)
    assert table.loc["bleu", "completeness"] == pytest.approx(-1.0)
    assert math.isnan(table.loc["cec", "contrastiveness"])  # no ratings on that dimension
    assert math.isnan(table.loc["cec", "soundness"])        # constant ratings have no rank correlation
    assert table.loc["cec", "n"] == 4
