"""The one reader and validator of ``rationales.jsonl`` (what :mod:`distill.extract` writes).

Every consumer (training, evaluation, overlap analysis, the app) reads rationale files here, so
they agree on what a valid record is:

- a JSON object per line with ``id`` and ``rationale`` (a list of ``{"text", ...}`` objects or
  plain strings); ``words`` when present holds ``{"text", "score"}`` objects; ``faithfulness``
  is an object or null;
- errors name the file and the line (``rationales.jsonl line 7: field 'rationale': missing``);
- a torn last line (a kill mid-write leaves a line without its newline) is skipped.

:func:`read_meta` gives the extraction's settings (teacher, method, k, target) for the record,
and :func:`check_hint_source` refuses gold-target rationales as hints at evaluation (the hint
would then contain words chosen to explain the gold label: an answer leak).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .data import DataError, jsonl_records

RATIONALES = "rationales.jsonl"
TARGETS = ("generated", "gold")


class RationaleError(DataError):
    """A rationale file that cannot be used as asked (malformed, missing, wrong target)."""


def rationale_file(path: str | Path) -> Path:
    """``<run>/rationales.jsonl`` for an extraction run folder, else the file itself."""
    path = Path(path)
    file = path / RATIONALES if path.is_dir() else path
    if not file.is_file():
        raise RationaleError(
            f"rationale file not found: no rationales at {path} (expected {RATIONALES})"
        )
    return file


def check_record(rec: object, fname: str, n: int, require_label: bool = False) -> dict:
    """``rec`` when it is a valid rationale record; else a RationaleError naming file and line."""

    def bad(problem: str) -> RationaleError:
        return RationaleError(f"{fname} line {n}: {problem}")

    if not isinstance(rec, dict):
        raise bad(f"expected a JSON object, got {type(rec).__name__}")
    for key in ("id", "rationale") + (("label",) if require_label else ()):
        if key not in rec:
            raise bad(f"field {key!r}: missing")
    if not isinstance(rec["id"], str | int) or isinstance(rec["id"], bool):
        raise bad(f"field 'id': expected a string, got {type(rec['id']).__name__}")
    for key in ("rationale", "words"):
        items = rec.get(key)
        if key == "words" and items is None:
            continue
        if not isinstance(items, list):
            raise bad(f"field {key!r}: expected a list, got {type(items).__name__}")
        for w in items:
            if key == "rationale" and isinstance(w, str):
                continue  # older files and hand-made ones list plain words
            if not isinstance(w, dict) or not isinstance(w.get("text"), str):
                raise bad(f"field {key!r}: each entry needs a 'text'")
            if key == "words" and not isinstance(w.get("score"), int | float):
                raise bad(f"field {key!r}: each entry needs a numeric 'score'")
    faith = rec.get("faithfulness")
    if faith is not None and not isinstance(faith, dict):
        raise bad("field 'faithfulness': expected an object")
    target = rec.get("target")
    if target is not None and target not in TARGETS + ("given",):
        raise bad(f"field 'target': expected one of {', '.join(TARGETS)}, got {target!r}")
    return rec


def read_records(path: str | Path, require_label: bool = False) -> list[dict]:
    """Every record of a rationale file (or extraction run folder), validated, in file order."""
    file = rationale_file(path)
    # A kill mid-append leaves a last line without its newline: that line alone may be torn.
    records = jsonl_records(file, RationaleError, torn_tail_ok=True)
    return [check_record(rec, file.name, n, require_label) for n, rec in records]


def words_of_record(rec: dict) -> list[str]:
    """The rationale words of a record, in input order, blanks dropped."""
    words = [w["text"] if isinstance(w, dict) else str(w) for w in rec["rationale"]]
    return [w for w in words if w.strip()]


def rationale_map(path: str | Path) -> dict[str, list[str]]:
    """Example id -> rationale words, for training and hint evaluation.

    Two records for one id with different words are an error (a merged or hand-edited file):
    silently keeping one would train on whichever came first.
    """
    file = rationale_file(path)
    out: dict[str, list[str]] = {}
    for rec in read_records(file):
        key, words = str(rec["id"]), words_of_record(rec)
        if key in out and out[key] != words:
            raise RationaleError(f"{file.name}: id {key!r} appears twice with other words")
        out[key] = words
    return out


@dataclass
class RationaleMeta:
    """How a rationale file was made: the extraction's settings, read from its run folder."""

    path: str
    target: str | None  # "generated" (teacher's own answer), "gold", or None when unknown
    teacher: str | None = None
    method: str | None = None
    top_k: int | None = None
    task: str | None = None
    cache_key: str | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def read_meta(path: str | Path) -> RationaleMeta:
    """Settings of the extraction behind ``path`` (run folder or file).

    The target comes from the run's ``config.json``; a bare file without one falls back to the
    records' own ``target`` field (``given`` -- an answer was supplied -- counts as gold).
    """
    file = rationale_file(path)
    cfg: dict = {}
    config = file.parent / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8")) or {}
        except json.JSONDecodeError:
            raise RationaleError(f"{config}: malformed JSON") from None
    settings = cfg.get("settings") if isinstance(cfg.get("settings"), dict) else cfg
    target = settings.get("target")
    if target is None:
        seen = {r.get("target") for r in read_records(file)} - {None}
        seen = {"gold" if t == "given" else t for t in seen}
        target = "gold" if "gold" in seen else (seen.pop() if seen else None)
    return RationaleMeta(
        path=str(file),
        target=target,
        teacher=settings.get("teacher"),
        method=settings.get("method"),
        top_k=settings.get("top_k"),
        task=settings.get("task"),
        cache_key=settings.get("cache_key"),
        settings=settings,
    )


def check_hint_source(meta: RationaleMeta | str | Path, allow_gold: bool = False) -> RationaleMeta:
    """Refuse rationales extracted with the gold label as target for use as evaluation hints.

    Hints at evaluation must come from the teacher's own answer (target ``generated``): words
    chosen to explain the gold label leak it. ``allow_gold`` is for explicit analysis only.
    An unknown target is refused too, since it cannot be shown not to leak.
    """
    if not isinstance(meta, RationaleMeta):
        meta = read_meta(meta)
    if meta.target == "generated" or allow_gold:
        return meta
    what = "the gold label" if meta.target == "gold" else "an unknown target"
    raise RationaleError(
        f"rationales at {meta.path} were extracted with {what} as target; as hints at evaluation "
        "they would leak the answer. Extract with --target generated (the teacher's own answer)"
    )


def target_label(target: str | None) -> str:
    """How tables name a rationale target; gold is marked as not the paper's method."""
    if target == "gold":
        return "gold (analysis only)"
    return target or "unknown"


__all__ = [
    "RATIONALES",
    "TARGETS",
    "RationaleError",
    "RationaleMeta",
    "check_hint_source",
    "check_record",
    "rationale_file",
    "rationale_map",
    "read_meta",
    "read_records",
    "target_label",
    "words_of_record",
]
