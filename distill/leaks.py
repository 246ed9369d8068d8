"""Test records that repeat a training or dev record by content.

Record ids cannot prove two files disjoint: e-SNLI records carry no id and the loader numbers
lines per file, so ``esnli-12`` names a different record in every file. Two records are the
same here when their task fields (premise and hypothesis, question and choices, ...) match after
case and whitespace are folded; the label is left out, since seeing the input is already a leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .data import Example


def _fold(value) -> object:
    if isinstance(value, str):
        return " ".join(value.split()).lower()
    if isinstance(value, list | tuple):
        return [_fold(v) for v in value]
    if isinstance(value, dict):
        return {k: _fold(v) for k, v in sorted(value.items())}
    return value


def content_key(example: Example) -> str:
    """The example's task fields, case and whitespace folded, as one comparable string."""
    return json.dumps([example.task, _fold(example.fields)], sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Repeat:
    """A test record and the pool record it repeats."""

    test_id: str
    test_line: int
    pool_id: str
    pool_line: int


def repeats(test: list[Example], pool: list[Example]) -> list[Repeat]:
    """Every test record whose content is also in ``pool``, in test-file order."""
    seen: dict[str, Example] = {}
    for ex in pool:
        seen.setdefault(content_key(ex), ex)
    out = []
    for ex in test:
        hit = seen.get(content_key(ex))
        if hit is not None:
            out.append(Repeat(ex.id, ex.line, hit.id, hit.line))
    return out


def describe(found: list[Repeat], n_test: int, test_file: str, pool_file: str) -> str:
    """One line for a refusal: how many, and the first few by line number."""
    first = ", ".join(f"line {r.test_line} = {pool_file} line {r.pool_line}" for r in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (
        f"{len(found)} of the {n_test} records of the test file {test_file} repeat a training "
        f"or dev record by content ({first}{more}); the test file must take no part in "
        "training: remove them or pass another file"
    )
