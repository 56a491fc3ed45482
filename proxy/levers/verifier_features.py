"""The verifier's text features of a question pair: what cosine similarity blurs.

Contract: `pair_features(a, b, cosine, df)` is a float vector in `FEATURE_NAMES` order;
`same_words_or` forces 1.0 where both sides have the same words in the same order. Why
separate: serving (`verifier.Verifier`) and fitting (`training/verifier_fit.py`)
must compute identical features, so both import this one module.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CAPITALISED = re.compile(r"(?<![.?!]\s)(?<!^)\b[A-Z][a-zA-Z0-9]+")
NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "cant", "can't", "don't", "doesn't", "didn't", "isn't", "aren't", "won't", "wasn't", "shouldn't", "wouldn't", "nothing", "none", "nor"})
QUESTION_WORDS = frozenset({"what", "how", "why", "which", "who", "whom", "whose", "when", "where", "is", "are", "can", "could", "do", "does", "did", "should", "would", "will", "was", "were", "has", "have"})
STOPWORDS = frozenset(
    "a an the of to in on for and or is are was were be been am do does did i you he she it we they my your his her its our their me him them "
    "this that these those what how why which who when where can could should would will with at by from as about into than then so if "
    "there here some any get got have has had".split()
)
CONTRAST = frozenset({"best", "worst", "most", "least", "more", "less", "before", "after", "first", "last", "good", "bad", "buy", "sell", "lose", "gain", "increase", "decrease", "start", "stop", "male", "female", "men", "women", "old", "new", "cheap", "expensive", "difference", "same"})

PERSON = {"i": "1", "me": "1", "my": "1", "myself": "1", "we": "1", "our": "1", "you": "2", "your": "2", "yourself": "2",
          "he": "3", "she": "3", "his": "3", "her": "3", "they": "3", "their": "3",
          "anyone": "g", "someone": "g", "one": "g", "people": "g", "somebody": "g", "anybody": "g"}
_LCS_MAX_WORDS = 60  # bounds the quadratic longest-common-subsequence on long questions

FEATURE_NAMES = (
    "cosine",
    "cosine_sq",
    "word_jaccard",
    "content_jaccard",
    "bigram_jaccard",
    "only_one_side_content",
    "numbers_differ",
    "negation_differs",
    "entities_differ",
    "question_word_differs",
    "order_agreement",
    "length_ratio",
    "same_after_normalising",
    "contrast_word_differs",
    "only_in_query_stemmed",
    "only_in_candidate_stemmed",
    "cosine_above_0.9",
    "cosine_above_0.95",
    "cosine_x_content_jaccard",
    "idf_jaccard",
    "idf_only_in_query",
    "idf_only_in_candidate",
    "max_idf_of_differing_word",
    "lcs_ratio",
    "char3_jaccard",
    "first_word_same",
    "last_word_same",
    "number_count_difference",
    "word_count_difference",
    "shorter_word_count",
    "idf_shared",
    "cosine_x_idf_jaccard",
    "content_order_agreement",
    "grammatical_person_differs",
    "content_words_swapped",
)
@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """Crude suffix stripping: enough to match exercise/exercises, learn/learning."""
    for suffix in ("ing", "ies", "es", "ed", "ly", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _jaccard(a: set, b: set) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _order_agreement(a: list[str], b: list[str]) -> float:
    """Share of shared-word pairs that appear in the same order on both sides."""
    pos_b: dict[str, int] = {}
    for i, w in enumerate(b):
        pos_b.setdefault(w, i)
    seen: set[str] = set()
    shared = []
    for w in a:
        if w in pos_b and w not in seen:
            seen.add(w)
            shared.append(pos_b[w])
    if len(shared) < 2:
        return 1.0
    agree = total = 0
    for i in range(len(shared)):
        for j in range(i + 1, len(shared)):
            total += 1
            agree += shared[i] < shared[j]
    return agree / total


def _lcs_length(a: list[str], b: list[str]) -> int:
    a, b = a[:_LCS_MAX_WORDS], b[:_LCS_MAX_WORDS]
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, w in enumerate(b):
            cur.append(prev[j] + 1 if x == w else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _char3(text: str) -> set[str]:
    t = " " + " ".join(_words(text)) + " "
    return {t[i : i + 3] for i in range(len(t) - 2)}


class DocumentFrequency:
    """IDF of stemmed words, counted on training texts (rare differing words matter more)."""

    def __init__(self, counts: dict[str, int], documents: int) -> None:
        self.counts = counts
        self.documents = documents
        self._log_n = math.log(documents + 1)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "DocumentFrequency":
        counts: dict[str, int] = {}
        n = 0
        for text in texts:
            n += 1
            for w in {_stem(w) for w in _words(text)}:
                counts[w] = counts.get(w, 0) + 1
        return cls(counts, n)

    def idf(self, stem: str) -> float:
        return self._log_n - math.log(self.counts.get(stem, 0) + 1)


def pair_features(a: str, b: str, cosine: float, df: DocumentFrequency) -> np.ndarray:
    wa, wb = _words(a), _words(b)
    sa, sb = set(wa), set(wb)
    ca, cb = sa - STOPWORDS, sb - STOPWORDS
    bigrams_a = set(zip(wa, wa[1:]))
    bigrams_b = set(zip(wb, wb[1:]))
    ents_a = {e.lower() for e in _CAPITALISED.findall(a)} - {"i"}
    ents_b = {e.lower() for e in _CAPITALISED.findall(b)} - {"i"}
    neg_a = sum(w in NEGATIONS or w.endswith("n't") for w in wa)
    neg_b = sum(w in NEGATIONS or w.endswith("n't") for w in wb)
    first_a = next((w for w in wa if w in QUESTION_WORDS), "")
    first_b = next((w for w in wb if w in QUESTION_WORDS), "")
    sta, stb = {_stem(w) for w in ca}, {_stem(w) for w in cb}
    nums_a, nums_b = _NUMBER.findall(a), _NUMBER.findall(b)
    content_jaccard = _jaccard(ca, cb)
    # rarity of what the two sides share and of what only one side has
    stems_a, stems_b = {_stem(w) for w in wa}, {_stem(w) for w in wb}
    idf_a = {w: df.idf(w) for w in stems_a}
    idf_b = {w: df.idf(w) for w in stems_b}
    shared = sum(idf_a[w] for w in stems_a & stems_b)
    only_a = [idf_a[w] for w in stems_a - stems_b]
    only_b = [idf_b[w] for w in stems_b - stems_a]
    total = shared + sum(only_a) + sum(only_b)
    idf_jaccard = shared / total if total else 1.0
    content_a = [_stem(w) for w in wa if w not in STOPWORDS]
    content_b = [_stem(w) for w in wb if w not in STOPWORDS]
    content_order = _order_agreement(content_a, content_b)
    person_a = {PERSON[w] for w in wa if w in PERSON}
    person_b = {PERSON[w] for w in wb if w in PERSON}
    return np.array(
        [
            cosine,
            cosine * cosine,
            _jaccard(sa, sb),
            content_jaccard,
            _jaccard(bigrams_a, bigrams_b),
            math.log1p(len(ca ^ cb)),
            float(set(nums_a) != set(nums_b)),
            float((neg_a > 0) != (neg_b > 0)),
            float(len(ents_a ^ ents_b) > 0) if (ents_a or ents_b) else 0.0,
            float(first_a != first_b),
            _order_agreement(wa, wb),
            min(len(wa), len(wb)) / max(len(wa), len(wb), 1),
            float(wa == wb),
            float(bool((sa ^ sb) & CONTRAST)),
            math.log1p(len(sta - stb)),
            math.log1p(len(stb - sta)),
            float(cosine >= 0.9),
            float(cosine >= 0.95),
            cosine * content_jaccard,
            idf_jaccard,
            math.log1p(sum(only_a)),
            math.log1p(sum(only_b)),
            max(only_a + only_b, default=0.0),
            _lcs_length(wa, wb) / max(len(wa), len(wb), 1),
            _jaccard(_char3(a), _char3(b)),
            float(bool(wa) and bool(wb) and wa[0] == wb[0]),
            float(bool(wa) and bool(wb) and wa[-1] == wb[-1]),
            abs(len(nums_a) - len(nums_b)),
            math.log1p(abs(len(wa) - len(wb))),
            math.log1p(min(len(wa), len(wb))),
            math.log1p(shared),
            cosine * idf_jaccard,
            content_order,
            float(person_a != person_b),
            float(content_order < 1.0 and set(content_a) == set(content_b)),
        ],
        dtype=np.float64,
    )


def same_words_or(pairs: Sequence[tuple[str, str]], probabilities: np.ndarray) -> np.ndarray:
    """1.0 where both sides have the same words in the same order (the same question), else the model's."""
    same = np.array([_words(a) == _words(b) for a, b in pairs], dtype=bool)
    return np.where(same, 1.0, probabilities)
