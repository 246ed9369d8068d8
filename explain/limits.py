"""Input limits for one Explain request (CLI and app), checked before any model work.

A 100k-character question took 473 s and 12.5 GB in the app (issue 9): the prompt was
tokenized again and again to fit the context, then attributed at the full context. The limits
below refuse such input at once, with the limit in the message. ``MAX_INPUT_CHARS`` needs no
model; ``MAX_INPUT_TOKENS`` needs the tokenizer and runs before generation.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InputError

MAX_INPUT_CHARS = 16_000  # all task-input text of one request together (about 4,000 tokens)
MAX_ANSWER_CHARS = 2_000  # a given answer (its token limit is explain.pipeline's, 512)
# The task input's tokens. Below this, a prompt longer than the model's context is shortened
# to fit, with a warning (explain.formatting.build_source).
MAX_INPUT_TOKENS = 4_096
# Rows of the per-token heatmap (app, ``token_matrix``): one backward pass over the whole input
# each. A longer answer's heatmap shows its first rows, with a warning; the word scores and the
# rationale still come from the whole answer.
MAX_HEATMAP_ROWS = 64
# ...and at most this many (row x input token) cells, so a long input gets fewer rows: each
# row's backward pass costs in proportion to the input (and more, through attention). At the
# 4,096-token limit the heatmap keeps 3 rows; up to 256 input tokens it keeps 64.
HEATMAP_TOKEN_BUDGET = 16_384


def heatmap_rows(input_tokens: int, batch: int = 1) -> int:
    """Rows of the per-token heatmap for ``batch`` inputs padded to ``input_tokens``: at
    most :data:`MAX_HEATMAP_ROWS`, within :data:`HEATMAP_TOKEN_BUDGET` cells, at least 1."""
    cells = max(1, input_tokens) * max(1, batch)
    return max(1, min(MAX_HEATMAP_ROWS, HEATMAP_TOKEN_BUDGET // cells))


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def input_chars(fields: Mapping) -> int:
    """Characters of every text of the task input (choices included)."""
    return sum(len(t) for v in fields.values() for t in _texts(v))


def check_input(fields: Mapping, answer: str | None = None) -> None:
    """Refuse task input over :data:`MAX_INPUT_CHARS` or a given answer over
    :data:`MAX_ANSWER_CHARS`, before a model is loaded or run."""
    n = input_chars(fields)
    if n > MAX_INPUT_CHARS:
        raise InputError(
            f"the input has {n:,} characters; the limit is {MAX_INPUT_CHARS:,} characters "
            "per request: give a shorter input"
        )
    if answer is not None and len(answer) > MAX_ANSWER_CHARS:
        raise InputError(
            f"the given answer has {len(answer):,} characters; the limit is "
            f"{MAX_ANSWER_CHARS:,} characters"
        )


def check_tokens(tokenizer, fields: Mapping) -> int:
    """The task input's token count; an InputError over :data:`MAX_INPUT_TOKENS`. One
    tokenization per text: cheap next to generation and attribution."""
    limit = MAX_INPUT_TOKENS
    n = sum(
        len(tokenizer(t, add_special_tokens=False)["input_ids"])
        for v in fields.values()
        for t in _texts(v)
    )
    if n > limit:
        raise InputError(
            f"the input has {n:,} tokens; the limit is {limit:,} tokens: give a shorter input"
        )
    return n
