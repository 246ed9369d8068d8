"""Pure functions: merge subword pieces into words by character offsets, pick rationales."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

# A word: letters/digits joined by inner apostrophes, hyphens, dots or commas (don't, e-mail,
# 3.5, 1,000); any other non-space character stands alone as punctuation.
WORD_RE = re.compile(r"\w+(?:['’\-.,]\w+)*|[^\w\s]", re.UNICODE)


# How a word's score comes from its pieces' scores. "sum" favours words split into many pieces
# (a rare word in three pieces outranks a one-piece word of equal saliency). The default is
# "mean": on 30 CQA questions with the Qwen teacher it equals "max" on hit rate and human F1,
# is within noise of "sum", and has the best AUPRC (bench/results/word_aggregation.md).
PIECE_AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "max": max,
    "mean": lambda xs: sum(xs) / len(xs),
    "sum": sum,
}
DEFAULT_PIECE_AGGREGATION = "mean"


def piece_aggregator(name: str) -> Callable[[list[float]], float]:
    from .errors import InputError

    try:
        return PIECE_AGGREGATIONS[name]
    except KeyError:
        raise InputError(
            f"unknown piece aggregation {name!r}; use one of {', '.join(PIECE_AGGREGATIONS)}"
        ) from None


@dataclass
class Word:
    text: str
    start: int
    end: int
    score: float
    tokens: list[int] = field(default_factory=list)  # indices into the input tokens
    is_input: bool = False  # inside a task-input span (not template text)
    is_punct: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def split_words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD_RE.finditer(text)]


def _inside(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in spans)


def merge_words(
    text: str,
    offsets: list[tuple[int, int] | None],
    scores: list[float],
    special: list[bool],
    input_spans: list[tuple[int, int]],
    piece_aggregation: str = DEFAULT_PIECE_AGGREGATION,
) -> list[Word]:
    """Group tokens into words; a word's score aggregates its pieces' scores
    (``piece_aggregation``: max, mean or sum, see :data:`PIECE_AGGREGATIONS`).

    A token belongs to the word holding its first non-space character, so leading-space
    pieces (``Ġword``) and pieces split mid-word both land in the right word. Special tokens
    and whitespace-only pieces belong to no word.
    """
    agg = piece_aggregator(piece_aggregation)
    spans = split_words(text)
    starts = [s for s, _ in spans]
    members: dict[int, list[int]] = {}
    for i, off in enumerate(offsets):
        if special[i] or off is None or off[1] <= off[0]:
            continue
        j = off[0]
        while j < off[1] and text[j].isspace():
            j += 1
        if j >= off[1]:
            continue
        w = bisect.bisect_right(starts, j) - 1
        if w < 0 or j >= spans[w][1]:
            continue
        members.setdefault(w, []).append(i)
    words = []
    for w in sorted(members):
        s, e = spans[w]
        piece = text[s:e]
        words.append(
            Word(
                text=piece,
                start=s,
                end=e,
                score=float(agg([scores[i] for i in members[w]])),
                tokens=members[w],
                is_input=_inside((s, e), input_spans),
                is_punct=not any(ch.isalnum() for ch in piece),
            )
        )
    return words


def rescore(
    words: list[Word], scores: list[float], piece_aggregation: str = DEFAULT_PIECE_AGGREGATION
) -> list[Word]:
    """The same words scored from new token scores (e.g. one output row)."""
    agg = piece_aggregator(piece_aggregation)
    return [
        Word(
            w.text,
            w.start,
            w.end,
            float(agg([scores[i] for i in w.tokens])),
            list(w.tokens),
            w.is_input,
            w.is_punct,
        )
        for w in words
    ]


def select_rationale(words: list[Word], k: int) -> list[Word]:
    """Top-k task-input words by score (ties: earlier first), returned in input order."""
    if k < 1:
        raise ValueError("top-k must be at least 1")
    candidates = [w for w in words if w.is_input and not w.is_punct]
    ranked = sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, i))[:k]
    return [candidates[i] for i in sorted(ranked)]
