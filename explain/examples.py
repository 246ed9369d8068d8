"""Demo questions shipped with the app (assets/examples.json), loaded and validated."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import KDLensError
from .templates import TEMPLATES

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "examples.json"


class ExamplesError(KDLensError):
    """An examples file that is missing, not JSON, or holds an invalid record."""


def _check(rec: object, i: int) -> None:
    """Raise ExamplesError naming record ``i`` when it cannot be run or scored."""

    def bad(why: str) -> ExamplesError:
        return ExamplesError(f"example record {i}: {why}")

    if not isinstance(rec, dict):
        raise bad("not a JSON object")
    name = rec.get("template")
    if name not in TEMPLATES:
        raise bad(f"unknown template {name!r}; templates: {', '.join(TEMPLATES)}")
    template = TEMPLATES[name]
    for f in template.required:
        v = rec.get(f)
        if isinstance(v, list):
            if not v or any(not isinstance(x, str) or not x.strip() for x in v):
                raise bad(f"field {f!r} must be a list of non-empty strings")
        elif not isinstance(v, str) or not v.strip():
            raise bad(f"missing or empty field {f!r}")
    try:
        options = template.answer_options(fields(rec))
    except KDLensError as e:
        raise bad(str(e)) from None
    answer = rec.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise bad("missing or empty answer")
    if options is not None:
        if len(set(options)) != len(options):
            raise bad("the options repeat, so the gold answer is ambiguous")
        if answer not in options:
            raise bad(f"answer {answer!r} is not one of the options {options}")


def fields(rec: dict) -> dict:
    """The record's task fields, as ``explain(..., fields, template)`` takes them."""
    template = TEMPLATES[rec["template"]]
    return {f: rec[f] for f in template.required if f in rec}


def load_examples(path: str | Path | None = None) -> list[dict]:
    """Read and validate the examples file (a JSON list of records).

    A record has ``template``, that template's required fields and ``answer`` (the gold
    answer, one of the template's options when it has a closed set). Errors name the record.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ExamplesError(f"cannot read examples file {p}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ExamplesError(f"examples file {p} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ExamplesError(f"examples file {p} must hold a JSON list of records")
    for i, rec in enumerate(data):
        _check(rec, i)
    return data
