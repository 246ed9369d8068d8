"""One definition of "the rationale": the settings shared by the app, the CLI and extraction.

The words a student trains on (``distill`` extraction) and the words the Explain tab and
``python -m explain`` show come from :func:`explain.pipeline.explain_batch` with these
settings, so for the same question and settings they are the same words with the same scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .words import DEFAULT_PIECE_AGGREGATION

AGGREGATES = ("mean", "sum", "max", "abs_mean")  # over answer-token rows
ROWS = ("tokens", "answer")  # one output row per answer token, or one for the whole answer


@dataclass(frozen=True)
class RationaleSettings:
    """How answer-token attributions become rationale words.

    ``rows="answer"`` scores the whole answer's log-probability (DESIGN section 1, one backward
    pass); ``rows="tokens"`` scores every answer token and ``aggregate`` folds the rows into one
    score per input token; ``piece_aggregation`` folds a word's
    subword pieces into the word's score; the top ``top_k`` task-input words are the rationale.
    """

    method: str = "saliency"
    top_k: int = 5
    rows: str = "answer"  # the whole answer's log-prob (one backward); or "tokens", folded by
    # ``aggregate``. The app's per-token heatmap is drawn beside it (``token_matrix``).
    aggregate: str = "mean"  # over answer-token rows: mean | sum | max | abs_mean
    piece_aggregation: str = DEFAULT_PIECE_AGGREGATION  # over a word's pieces: max | mean | sum

    def as_kwargs(self) -> dict:
        """Keyword arguments for :func:`explain.pipeline.explain_batch` / ``explain``."""
        d = asdict(self)
        d["how"] = d.pop("aggregate")
        return d


RATIONALE_DEFAULTS = RationaleSettings()
