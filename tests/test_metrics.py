"""Tests of lib.metrics: sentence splitting, answer extraction (strict and lenient), rationale length and CEC."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lib.metrics import (ANSWER_SENTENCE, cec_batch, cec_from_embeddings, CECScore, extract_answer,
                         extract_answer_lenient, rationale_length, split_sentences)

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


# --- extract_answer: the strict reader (only the answer sentence counts) ------------------------------------------

SOFA = ["bed", "sofa", "lake"]
MASK = ["gloves", "breathing mask", "hat"]
FEELINGS = ["joy", "frustration", "calm"]


@pytest.mark.parametrize("text, choices", [
    # PaLM's rationales open with "The answer must be ...": a premise, not an answer sentence
    ("The answer must be something that keeps spores out. Of the above choices, only (b) breathing mask fits.", MASK),
    ("The answer must be something that keeps spores out. Of the above choices, only breathing mask fits.", MASK),
    # an echoed option list, with and without its header, on one line and on several
    ("(a) bed (b) sofa (c) lake", SOFA),
    ("(a) bed\n(b) sofa\n(c) lake", SOFA),
    ("Answer Choices: (a) bed (b) sofa (c) lake", SOFA),
    ("Answer Choices:\n(a) bed\n(b) sofa\n(c) lake", SOFA),
    ("Choices:\n(a) bed\n(b) sofa\n(c) lake", SOFA),
    ("Options: (a) bed (b) sofa (c) lake", SOFA),
    # a rationale that names an option is not an answer sentence
    ("Of the choices, frustration is the feeling of ...", FEELINGS),
    ("Of the choices, (b) frustration is the feeling of losing.", FEELINGS),
    ("Of the choices, the best choice is frustration, the feeling of losing.", FEELINGS),
])
def test_extract_answer_reads_no_answer_from_rationales_or_echoed_options(text, choices):
    assert extract_answer(text, choices) is None


@pytest.mark.parametrize("text, expected", [
    ("So the answer is (b) sofa.", 1),
    ("Lakes are wet and beds are for sleeping. So the answer is (c)", 2),
    ("so the answer is sofa", 1),
    ("SO THE ANSWER IS (B) SOFA.", 1),
    ("So, the answer is  Sofa!", 1),
    ("So the answer is (a).", 0),
    ("People sit on a sofa, so the answer is (b) sofa.", 1),
    ("So the answer is (b) sofa.\n\nAnswer Choices:\n(a) bed\n(b) sofa\n(c) lake", 1),  # an echo after it
    ("So the answer is (b). People sit on sofas.", 1),
])
def test_extract_answer_reads_the_answer_sentence(text, expected):
    assert extract_answer(text, SOFA) == expected


def test_extract_answer_rationale_then_answer_sentence():
    text = ("The answer must be something that keeps spores out. Of the above choices, only gloves and a breathing "
            "mask cover something, and spores are breathed in. So the answer is (b) breathing mask.")
    assert extract_answer(text, MASK) == 1
    assert extract_answer("Of the choices, (a) bed is for sleeping. So the answer is (c) lake.", SOFA) == 2


def test_extract_answer_last_answer_sentence_decides():
    assert extract_answer("So the answer is (a) bed. Wait, people sit on it. So the answer is (b) sofa.", SOFA) == 1
    assert extract_answer("So the answer is (a).\nSo the answer is lake.", SOFA) == 2
    # a malformed last answer sentence is not made good by an earlier one
    assert extract_answer("So the answer is (a) bed. So the answer is unclear.", SOFA) is None


@pytest.mark.parametrize("text", [
    "So the answer is (b) lake.",                 # the letter names sofa, the text lake
    "So the answer is (d) pond.",                 # a letter beyond the choices
    "So the answer is (d).",
    "So the answer is either (a) bed or (b) sofa.",
    "So the answer is (b) sofa, not (a) bed.",
    "So the answer is (b) sofa because people sit on it.",
    "So the answer is b.",                        # a bare letter is not the trained form
    "So the answer is a sofa.",                   # nor is an article before the option
    "So the answer is (b) sofa?",
    "So the answer is: (b)",
    "The answer is (b) sofa.",                    # "so" opens the answer sentence
    "Answer: (b)",
    "Also the answer is (b) sofa.",
    "(b)",
    "sofa",
    "Hmm.\nQ: Which?\nA: So the answer is (b) sofa.",  # a hallucinated next question never counts
])
def test_extract_answer_anything_but_a_well_formed_answer_sentence_is_none(text):
    assert extract_answer(text, SOFA) is None


def test_extract_answer_option_text_needs_its_whole_words():
    assert extract_answer("So the answer is ice cream.", CHOICES) == 3
    assert extract_answer("So the answer is ice.", CHOICES) == 0
    assert extract_answer("so the answer is ice cream", ["ice cream", "ice"]) == 0
    assert extract_answer("So the answer is (d) Ice  Cream.", CHOICES) == 3
    assert extract_answer("So the answer is (a) ice cream.", CHOICES) is None  # (a) is ice


def test_answer_sentence_marks_where_the_answer_is_read():
    text = "Beds are soft. So the answer is (b) sofa.\nSo the answer is lake."
    assert [m.group("answer") for m in ANSWER_SENTENCE.finditer(text)] == ["(b) sofa.", "lake."]
    assert ANSWER_SENTENCE.search("The answer must be something that keeps spores out.") is None


def test_extract_answer_reads_the_sentences_the_study_writes():
    from lib.prompts import answer_sentence, cot_prompt, few_shot_examples
    from lib.questions import MCQuestion

    q = MCQuestion("q", "Where do people sit?", SOFA, ["a", "b", "c"], 1)
    for fmt in ("letter", "text"):
        assert extract_answer("People sit on sofas. " + answer_sentence(q, 1, fmt), q.choices) == 1
    # the teacher's few-shot demonstrations end with the same sentence, and it reads back as the shot's answer
    shots = few_shot_examples()
    demos = cot_prompt(q, len(shots)).split("\n\n")[:len(shots)]
    assert [extract_answer(d.rsplit("\nA:", 1)[1], s.choices) for d, (s, _) in zip(demos, shots)] == \
        [s.answer for s, _ in shots]


@pytest.mark.parametrize("text, expected", [
    # the lenient reader's forms (below); the strict reader credits only the answer sentences among them
    ("Ice melts in heat. So the answer is (b) wooded area.", None),  # (b) is fire: letter and text disagree
    ("the answer is (B)", None),
    ("Answer: b", None),
    ("ANSWER: C.", None),
    ("So the answer is wooded area.", 2),
    ("So the answer is Wooded Area", 2),
    ("(c)", None),
    ("I pick (D) here", None),
    ("**Answer:** (e)", None),
    ("so the answer is option c", None),
    ("Answer: d) ice cream", None),
    ("The answer is A.", None),
    ("At first the answer is (a). Wait, fire burns wood, so the answer is (b) fire.", 1),
    ("The answer is (a)? No. The answer is clearly (c).", None),
    ("(a) ice is wrong and (e) bed is wrong. So the answer is (c).", 2),
    ("So the answer is (f).", None),
    ("So the answer is a bed.", None),
    ("Answer Choices:\n(a) ice\n(b) fire\n(c) wooded area", None),
    (" B ", None),
    ("Ice Cream.", None),
    ("So the answer is (b).\nQ: next\nA: So the answer is (c).", 1),
    ("Answer:\n(c)", None),
    ("the answer is: **(D)**", None),
    ("So the answer is (B) fire, not (a) ice.", None),
    ('Therefore, the answer is "wooded area".', None),
    ("answer is e)", None),
    ("So the answer is (z)", None),
])
def test_extract_answer_strict_on_the_lenient_forms(text, expected):
    assert extract_answer(text, CHOICES) == expected


def test_extract_answer_strict_out_of_range_and_next_question():
    assert extract_answer("So the answer is (c).", ["yes", "no"]) is None
    text = ("Fire is hot. So the answer is (b).\n\nQ: What is cold?\nAnswer Choices:\n(a) ice\n(b) fire\n"
            "A: Ice is cold. So the answer is (a).")
    assert extract_answer(text, CHOICES) == 1


@pytest.mark.parametrize("text", ["", "   ", "I do not know.", "So the answer is unclear.", "Fire and ice mix."])
def test_extract_answer_nothing_parseable_is_none(text):
    assert extract_answer(text, CHOICES) is None
    assert extract_answer_lenient(text, CHOICES) is None


# --- extract_answer_lenient: the labelled lenient reading (today's reader before the strict rule) -----------------

def test_lenient_reader_credits_what_the_strict_one_does_not():
    """The readings the strict rule was made against: the lenient reader credits them, the strict one does not."""
    spores = "The answer must be something that keeps spores out. Of the above choices, only (b) breathing mask fits."
    assert extract_answer_lenient(spores, MASK) == 1
    assert extract_answer_lenient("(a) bed (b) sofa (c) lake", SOFA) == 2
    assert extract_answer_lenient("So the answer is (b) lake.", SOFA) == 1
    assert [extract_answer(t, c) for t, c in [(spores, MASK), ("(a) bed (b) sofa (c) lake", SOFA),
                                              ("So the answer is (b) lake.", SOFA)]] == [None, None, None]


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
def test_extract_answer_lenient_common_forms(text, expected):
    assert extract_answer_lenient(text, CHOICES) == expected


def test_extract_answer_lenient_prefers_last_conclusion():
    text = "At first the answer is (a). Wait, fire burns wood, so the answer is (b) fire."
    assert extract_answer_lenient(text, CHOICES) == 1
    assert extract_answer_lenient("The answer is (a)? No. The answer is clearly (c).", CHOICES) == 2


def test_extract_answer_lenient_conclusion_beats_earlier_bracketed_letters():
    text = "(a) ice is wrong and (e) bed is wrong. So the answer is (c)."
    assert extract_answer_lenient(text, CHOICES) == 2


def test_extract_answer_lenient_longest_option_text_wins():
    assert extract_answer_lenient("So the answer is ice cream.", CHOICES) == 3
    assert extract_answer_lenient("So the answer is ice.", CHOICES) == 0
    # the same overlap with the short option listed after the long one
    assert extract_answer_lenient("the answer is ice cream", ["ice cream", "ice"]) == 0


def test_extract_answer_lenient_letter_out_of_range_is_none():
    assert extract_answer_lenient("So the answer is (f).", CHOICES) is None
    assert extract_answer_lenient("So the answer is (c).", ["yes", "no"]) is None
    assert extract_answer_lenient("(e)", ["yes", "no"]) is None


def test_extract_answer_lenient_ignores_hallucinated_next_question():
    text = ("Fire is hot. So the answer is (b).\n\nQ: What is cold?\nAnswer Choices:\n(a) ice\n(b) fire\n"
            "A: Ice is cold. So the answer is (a).")
    assert extract_answer_lenient(text, CHOICES) == 1
    # the next block alone must not leak an answer either
    assert extract_answer_lenient("Hmm.\nQ: Which?\nA: So the answer is (a).", CHOICES) is None


def test_extract_answer_lenient_article_a_is_not_letter_a():
    assert extract_answer_lenient("So the answer is a bed.", CHOICES) == 4


def test_extract_answer_lenient_echoed_choices_are_not_an_answer():
    assert extract_answer_lenient("Answer Choices:\n(a) ice\n(b) fire\n(c) wooded area", CHOICES) is None


def test_extract_answer_lenient_whole_output_is_letter_or_option():
    assert extract_answer_lenient(" B ", CHOICES) == 1
    assert extract_answer_lenient("Ice Cream.", CHOICES) == 3


@pytest.mark.parametrize("text, expected", [
    ("So the answer is (b).\nQ: next\nA: So the answer is (c).", 1),  # the hallucinated block never counts
    ("Answer:\n(c)", 2),                                                # conclusion marker, letter on the next line
    ("the answer is: **(D)**", 3),
    ("So the answer is (B) fire, not (a) ice.", 1),                     # the named option, not a later mention
    ('Therefore, the answer is "wooded area".', 2),
    ("answer is e)", 4),
    ("So the answer is (z)", None),
])
def test_extract_answer_lenient_tricky_outputs(text, expected):
    assert extract_answer_lenient(text, CHOICES) == expected


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
