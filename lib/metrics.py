"""Per-item metrics: answer extraction, sentence splitting, rationale length, CEC, BLEU, ROUGE-L and BERTScore.

Answer extraction is strict: `extract_answer` reads a generated answer only from the answer sentence the students are
trained, and the teachers prompted, to write ("So the answer is (b) bed.", `ANSWER_SENTENCE`); anything else is
unparseable (None), and the parse rate is reported. `extract_answer_lenient` is the old, lenient reading ("The answer
must be ...", "Answer: b", a last bracketed letter ...): it may stand beside the strict one, labelled, never as the
headline.

CEC (Causal Explanation Coherence, Muhebwa & Osman 2025) compares a generated explanation G with a
reference R sentence by sentence in embedding space:

    FC  = mean over g in G of  max over r in R of cos(g, r)   (forward coverage)
    BF  = mean over r in R of  max over g in G of cos(r, g)   (backward faithfulness)
    CEC = (FC + BF) / 2

Beside CEC, the usual reference-based scores: sentence BLEU (sacrebleu), ROUGE-L (rouge-score) and
BERTScore (bert-score, with a local encoder folder so it runs offline); `metric_rating_correlations`
tables how each one tracks the ratings.

At import this module needs only the standard library and NumPy; the sentence encoder is passed in by
the caller (`embed`) and the text-metric libraries load inside their functions, so nothing heavy
loads when `lib` is imported.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

# Words that end in a full stop without ending the sentence (lowercased, with their dots).
ABBREVIATIONS = frozenset({
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "ca.", "no.", "fig.", "eq.", "al.",
    "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "inc.", "ltd.", "co.",
})

# Sentence-final punctuation, optional closing quotes/brackets, then whitespace or the end.
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
# Dotted initialisms such as "U.S." or "a.m." (two or more letter-dot pairs).
_INITIALISM = re.compile(r"(?:[A-Za-z]\.){2,}$")

# "answer is", "answer would be", "answer:", "correct option is" ... (the last one decides).
_CONCLUSION = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|must\s+be|=|:)\s*:?",
    re.IGNORECASE,
)
_PAREN_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)")
_LEADING_FILLER = re.compile(r"^(?:[\s*_\"'`]|option\b|choice\b|letter\b)*", re.IGNORECASE)
# A letter standing alone: "b", "b)", "b." then a space, punctuation or the end (not "bed", not "e.g.").
_BARE_LETTER = re.compile(r"([A-Za-z])(?:[.)](?!\w))?(?=\s|$|[,;:!?\]])")
_CHOICES_BLOCK = re.compile(r"answer\s+choices\s*:?[^\n]*(?:\n[ \t]*\([A-Za-z]\)[^\n]*)*", re.IGNORECASE)

# The answer sentence (lib.prompts.answer_sentence): "So the answer is (b) bed." or "So the answer is bed.". This
# matches its opening words "so the answer is" (any case, "So," too; "so" a whole word after whitespace or at the
# start, so "also the answer is" is none) and, as group `answer`, the rest of its line (in a lookahead, so that a
# later answer sentence on the same line is found too). What the answer must be is read by `extract_answer`: "(b)",
# "(b) bed" or "bed" (an option's text), then "." or "!" or nothing, and the end of the sentence. "The answer must
# be ...", "Answer: b", "Of the choices, bed ..." and echoed option lists open no answer sentence.
ANSWER_SENTENCE = re.compile(r"(?<!\S)so,?[ \t]+the[ \t]+answer[ \t]+is\b[ \t]*(?=(?P<answer>[^\n]*))", re.IGNORECASE)
# The answer's bracketed positional letter, "(b)" or "(B)", at the start of the answer.
_ANSWER_LETTER = re.compile(r"\(([A-Za-z])\)")
# The end of the answer: optional spaces, then "." or "!" before whitespace or the end, or the end of the line.
_ANSWER_END = re.compile(r"[ \t]*(?:[.!](?=\s|$)|$)")


@dataclasses.dataclass
class CECScore:
    """Forward coverage, backward faithfulness and their mean (CEC) for one generated/reference pair."""

    fc: float
    bf: float
    cec: float


def split_sentences(text: str) -> list[str]:
    """Split text into stripped, non-empty sentences at newlines and at `.`, `!`, `?` before a space or the end.

    A full stop does not end a sentence after a known abbreviation (`ABBREVIATIONS`, e.g. "e.g.",
    "etc.", "Dr.") or a dotted initialism ("U.S."); decimals such as "3.5" never split because no
    space follows the dot.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY.finditer(line):
            if m.group().startswith(".") and _is_abbreviation(line[start:m.end()].split()[-1]):
                continue
            sentences.append(line[start:m.end()])
            start = m.end()
        sentences.append(line[start:])
    return [s.strip() for s in sentences if s.strip()]


def _is_abbreviation(word: str) -> bool:
    """Whether a word ending in a full stop is an abbreviation rather than a sentence end."""
    word = word.lstrip("\"'([").rstrip("\"')]")
    return word.lower() in ABBREVIATIONS or bool(_INITIALISM.search(word))


def rationale_length(text: str) -> int:
    """Number of whitespace-separated words in a rationale."""
    return len(text.split())


def extract_answer(text: str, choices: list[str]) -> int | None:
    """Index of the option a model's output states in its answer sentence, or None when it is unparseable.

    The output is cut at the first "\\nQ:" (a hallucinated next question). The last answer sentence
    (`ANSWER_SENTENCE`, "So the answer is ...", any case) decides, and only when it is well formed: a bracketed
    positional letter "(b)", optionally followed by that option's text "(b) bed", or an option's text alone "bed"
    (case- and spacing-insensitive), then at most "." or "!" and the sentence's end. Anything else is None: no
    answer sentence, a letter beyond the choices, a letter and a text that disagree ("(b) lake" when (b) is sofa),
    a bare letter "b", an article "a bed", more words in the sentence ("(b) bed, not (a) ice").
    """
    text = text.split("\nQ:", 1)[0]
    sentences = list(ANSWER_SENTENCE.finditer(text))
    return _read_answer(sentences[-1].group("answer"), choices) if sentences else None


def _read_answer(answer: str, choices: list[str]) -> int | None:
    """The option a well-formed answer ("(b)", "(b) bed" or "bed", then its end) names, or None."""
    m = _ANSWER_LETTER.match(answer)
    if m is None:
        named = [i for i, choice in enumerate(choices) if _states_option(answer, choice)]
        return named[0] if named else None
    index = _letter_index(m.group(1), len(choices))
    rest = answer[m.end():]
    if index is None or _ANSWER_END.match(rest):
        return index
    return index if rest[:1].isspace() and _states_option(rest.lstrip(), choices[index]) else None


def _states_option(answer: str, choice: str) -> bool:
    """Whether `answer` is exactly the option's text (whole words, any case and spacing), then the answer's end."""
    words = choice.split()
    if not words:
        return False
    m = re.match(r"\s+".join(map(re.escape, words)) + r"(?!\w)", answer, re.IGNORECASE)
    return m is not None and _ANSWER_END.match(answer, m.end()) is not None


def extract_answer_lenient(text: str, choices: list[str]) -> int | None:
    """The labelled lenient reading of a model's output: the option it seems to choose, or None; never the headline.

    This is the reader before the strict rule (`extract_answer`); it credits conclusions the student did not state
    as an answer sentence ("The answer must be ... only (b) fits", an echoed option list's last letter), so it is
    reported only beside the strict reading, labelled as lenient.

    Options are shown with positional letters (a), (b), ... The output is cut at the first "\\nQ:"
    (a hallucinated next question). The last conclusion ("answer is", "Answer:", "option is")
    that names something decides: a letter in brackets "(b)"/"(B)", a bare letter "b" that stands
    alone, or an option's text (case-insensitive; earliest match, longest on ties, so "ice cream"
    wins over "ice"). Without a conclusion, the last bracketed letter counts, ignoring an echoed
    "Answer Choices:" list; failing that, an output that is just one letter or one option text.
    A letter beyond the number of choices is not an answer (None).
    """
    text = text.split("\nQ:", 1)[0]
    for m in reversed(list(_CONCLUSION.finditer(text))):
        found, index = _read_conclusion(text[m.end():].split("\n", 1)[0], choices)
        if found:
            return index
    bracketed = list(_PAREN_LETTER.finditer(_CHOICES_BLOCK.sub("", text)))
    if bracketed:
        return _letter_index(bracketed[-1].group(1), len(choices))
    return _read_whole(text, choices)


def _letter_index(letter: str, n_choices: int) -> int | None:
    """The option index of a positional letter, or None when it is beyond the choices."""
    index = string.ascii_lowercase.index(letter.lower())
    return index if index < n_choices else None


def _read_conclusion(segment: str, choices: list[str]) -> tuple[bool, int | None]:
    """(whether the text after a conclusion marker names an answer, its index or None when invalid)."""
    segment = _LEADING_FILLER.sub("", segment)
    m = _BARE_LETTER.match(segment)
    if m:
        index = _letter_index(m.group(1), len(choices))
        tail = segment[m.end():].strip()
        # A bare letter followed by words only counts when the words are its own option ("b wooded
        # area"); otherwise it may be an article or a pronoun ("the answer is a bed", "I think").
        if not tail or m.group().endswith((")", ".")) or not tail[0].isalnum():
            return True, index
        if index is not None and _option_at(tail, choices[index]) == 0:
            return True, index
    # Otherwise whichever comes first: a bracketed letter ("clearly (c)") or an option's text.
    paren = _PAREN_LETTER.search(segment)
    text = _find_option_text(segment, choices)
    if paren and (text is None or paren.start() <= text[0]):
        return True, _letter_index(paren.group(1), len(choices))
    return (text is not None), (None if text is None else text[1])


def _option_at(text: str, choice: str) -> int | None:
    """Where option text `choice` first occurs in `text` as whole words (case- and spacing-insensitive)."""
    words = choice.split()
    if not words:
        return None
    m = re.search(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", text, re.IGNORECASE)
    return None if m is None else m.start()


def _find_option_text(segment: str, choices: list[str]) -> tuple[int, int] | None:
    """(start, index) of the option whose text occurs first in `segment`, the longest on ties; or None."""
    found = [(start, -len(choice.strip()), i) for i, choice in enumerate(choices)
             if (start := _option_at(segment, choice)) is not None]
    if not found:
        return None
    start, _, index = min(found)
    return start, index


def _read_whole(text: str, choices: list[str]) -> int | None:
    """An output that is only a letter ("b", "B.") or only an option's text."""
    body = text.strip().strip("*_\"'`").strip()
    m = re.fullmatch(r"([A-Za-z])[.)]?", body)
    if m:
        return _letter_index(m.group(1), len(choices))
    body = re.sub(r"\s+", " ", body.rstrip(".!").strip()).lower()
    matches = [i for i, c in enumerate(choices) if c.strip() and re.sub(r"\s+", " ", c.strip()).lower() == body]
    return matches[0] if matches else None


def cec_from_embeddings(gen: np.ndarray, ref: np.ndarray) -> CECScore:
    """CEC of one pair from L2-normalised sentence embeddings (rows); 0.0 for all three when a side is empty."""
    gen, ref = np.asarray(gen, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if gen.size == 0 or ref.size == 0 or len(gen) == 0 or len(ref) == 0:
        return CECScore(0.0, 0.0, 0.0)
    sim = gen @ ref.T
    fc, bf = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
    return CECScore(fc=fc, bf=bf, cec=(fc + bf) / 2)


def cec_batch(pairs: list[tuple[str, str]], embed: Callable[[list[str]], np.ndarray],
              chunk: int = 4096) -> list[CECScore]:
    """CEC for many (generated, reference) text pairs, embedding each distinct sentence once in one call.

    `embed` maps a list of n sentences to an (n, d) array (e.g. `SentenceTransformer.encode`); rows
    are L2-normalised here. A pair where either text has no sentence scores 0.0 (see
    `cec_from_embeddings`) and its sentences are not embedded. `chunk` caps how many pairs share
    one matrix product (memory).
    """
    sentences_of: dict[str, list[str]] = {}  # references repeat across runs: split each text once
    for text in (t for pair in pairs for t in pair):
        if text not in sentences_of:
            sentences_of[text] = split_sentences(text)
    split = [(sentences_of[g], sentences_of[r]) for g, r in pairs]
    scores = [CECScore(0.0, 0.0, 0.0) for _ in pairs]
    vocab: dict[str, int] = {}
    by_shape: dict[tuple[int, int], list[int]] = {}  # pairs with equal (|G|, |R|) are scored as one batch
    for k, (gen, ref) in enumerate(split):
        if gen and ref:
            by_shape.setdefault((len(gen), len(ref)), []).append(k)
            for s in (*gen, *ref):
                vocab.setdefault(s, len(vocab))
    if not vocab:
        return scores
    emb = _normalised(embed(list(vocab)), len(vocab))
    for shape_ks in by_shape.values():
        for lo in range(0, len(shape_ks), chunk):
            ks = shape_ks[lo:lo + chunk]
            g_ids = np.array([[vocab[s] for s in split[k][0]] for k in ks], dtype=np.int64)
            r_ids = np.array([[vocab[s] for s in split[k][1]] for k in ks], dtype=np.int64)
            sim = np.matmul(emb[g_ids], emb[r_ids].transpose(0, 2, 1))  # (pairs, |G|, |R|) cosines
            fc = sim.max(axis=2).mean(axis=1, dtype=np.float64)
            bf = sim.max(axis=1).mean(axis=1, dtype=np.float64)
            for k, f, b in zip(ks, fc.tolist(), bf.tolist()):
                scores[k] = CECScore(fc=f, bf=b, cec=(f + b) / 2)
    log.debug("CEC: %d pairs, %d distinct sentences, %d shapes", len(pairs), len(vocab), len(by_shape))
    return scores


def _normalised(emb: np.ndarray, n: int) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero); checks the embedder's output shape."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(
            f"embed returned an array of shape {emb.shape} for {n} sentences; it must return one row per "
            "sentence, shape (n, d) (e.g. SentenceTransformer.encode(sentences))"
        )
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------- reference-based text metrics


def bleu_scores(pairs: list[tuple[str, str]]) -> list[float]:
    """Sentence-level BLEU (sacrebleu, 0-100, exponential smoothing) of each (generated, reference) pair."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return [float(bleu.sentence_score(g, [r]).score) for g, r in pairs]


def rouge_l_scores(pairs: list[tuple[str, str]]) -> list[float]:
    """ROUGE-L F-measure (rouge-score, Porter stemming, 0-1) of each (generated, reference) pair."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(r, g)["rougeL"].fmeasure) for g, r in pairs]


def bertscore_scores(pairs: list[tuple[str, str]], model_path: str, num_layers: int | None = None,
                     batch_size: int = 32, device: str = "cpu") -> list[float]:
    """BERTScore F1 (bert-score, no baseline rescaling, 0-1 for this encoder) of each pair, from a local encoder folder.

    `model_path` is a folder holding a BERT-style transformers model (e.g. the all-MiniLM-L6-v2
    folder); `num_layers` picks the layer whose token embeddings are matched (None = the last).
    """
    if not pairs:
        return []
    from bert_score import BERTScorer
    from transformers import AutoConfig

    layers = num_layers or AutoConfig.from_pretrained(model_path).num_hidden_layers
    scorer = BERTScorer(model_type=model_path, num_layers=layers, batch_size=batch_size, device=device)
    _, _, f1 = scorer.score([g for g, _ in pairs], [r for _, r in pairs])
    return [float(x) for x in f1.tolist()]


def metric_rating_correlations(items: Any, ratings: Any,
                               metrics: tuple[str, ...] = ("cec", "cec_fc", "cec_bf", "bleu", "rouge_l", "bertscore"),
                               dimensions: tuple[str, ...] = ("completeness", "contrastiveness", "soundness")) -> Any:
    """Spearman correlation of every metric with every rating dimension over rated explanations.

    `items` and `ratings` are tables (run, item_id, ... ); ratings are averaged over raters per
    explanation first. A cell is NaN where fewer than 3 explanations have both values.
    """
    import pandas as pd

    rows = []
    rated = ratings.dropna(subset=list(dimensions), how="all") if len(ratings) else ratings
    if len(rated):
        means = rated.groupby(["run", "item_id"], as_index=False)[list(dimensions)].mean()
        joined = items.merge(means, on=["run", "item_id"], how="inner")
    else:
        joined = pd.DataFrame(columns=[*metrics, *dimensions])
    for m in metrics:
        row: dict = {"metric": m}
        for d in dimensions:
            both = joined[[m, d]].dropna() if m in joined and d in joined else pd.DataFrame()
            ok = len(both) >= 3 and both[m].nunique() > 1 and both[d].nunique() > 1
            row[d] = float(both[m].astype(float).corr(both[d].astype(float), method="spearman")) if ok else float("nan")
        row["n"] = int(len(joined[[m]].dropna())) if m in joined else 0
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", *dimensions, "n"])
