"""Task data: load the step-by-step JSON-lines files (or a user's .jsonl/.csv) into Examples.

Loading is all or nothing: the first bad record raises a :class:`DataError` naming the file,
its 1-based line and the field, so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from explain.errors import KDLensError
from explain.templates import LETTERS

from .tasks import TaskSpec, get_task


class DataError(KDLensError):
    """A data file that cannot be used, e.g. ``cqa_train.json line 17: field 'answer': ...``."""


@dataclass
class Example:
    id: str
    task: str
    fields: (
        dict  # template fields: cqa question+choices, nli premise+hypothesis, svamp body+question
    )
    label: str  # gold answer text: CQA choice text, NLI label word, SVAMP equation string
    options: list[str] | None = None  # closed answer set (CQA choices, NLI label words)
    human_rationale: str | None = None
    llm_rationale: str | None = None
    line: int = 0  # 1-based line in the source file
    index: int = 0  # 0-based record index in the source file (aligns with the LLM rationales)

    def to_dict(self) -> dict:
        return asdict(self)


def default_path(task: str, datasets_dir: str | Path) -> Path:
    """The task's file inside a datasets folder laid out like ``shared/datasets``."""
    spec = get_task(task)
    if not spec.data_file:
        raise DataError(f"task {task!r} has no default data file; give a path")
    return Path(datasets_dir) / spec.data_file


# ---------------------------------------------------------------------------------------------
# Reading records


def read_text(path: Path, error: type[DataError] = DataError) -> str:
    """A data file's text: UTF-8 with or without a BOM; anything else refused in one line that
    names the line of the first bad byte (Latin-1 and binary files gave UnicodeDecodeError)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(
            f"{path.name} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
            f"{col}); save the file as UTF-8"
        ) from None


def jsonl_records(
    path: Path, error: type[DataError] = DataError, torn_tail_ok: bool = False
) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) for every non-blank line of a JSON-lines file.

    Errors name the file and line. A UTF-8 BOM is accepted; a file that is not UTF-8 is refused
    in one line. ``torn_tail_ok``: a last line without its newline (a kill mid-append) that is
    not valid JSON is skipped instead of refused.
    """
    text = read_text(path, error)
    lines = text.split("\n")
    torn_ok = torn_tail_ok and not text.endswith("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_ok and n == len(lines):
                return
            raise error(
                f"{path.name} line {n}: malformed JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(rec, dict):
            raise error(f"{path.name} line {n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    return jsonl_records(path)


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    import io

    # Decoded whole first: a BOM is dropped (it became part of the first column's name) and a
    # non-UTF-8 file is refused with its line.
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return
        for row in reader:
            n = reader.line_num  # the row's last physical line (a quoted cell may span lines)
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            yield n, {k: v for k, v in row.items() if k is not None}


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    return _read_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Turning one record into an Example


class _Rec:
    """One record seen through the user's column mapping, raising located errors."""

    def __init__(self, rec: dict, mapping: dict, fname: str, line: int) -> None:
        self.rec, self.mapping, self.fname, self.line = rec, mapping, fname, line

    def col(self, name: str) -> str:
        return self.mapping.get(name, name)

    def has(self, name: str) -> bool:
        v = self.rec.get(self.col(name))
        return v is not None and not (isinstance(v, str) and not v.strip())

    def error(self, name: str, problem: str) -> DataError:
        return DataError(f"{self.fname} line {self.line}: field {self.col(name)!r}: {problem}")

    def raw(self, name: str):
        if self.col(name) not in self.rec or self.rec[self.col(name)] is None:
            raise self.error(name, "missing")
        return self.rec[self.col(name)]

    def text(self, name: str) -> str:
        v = self.raw(name)
        if not isinstance(v, str):
            raise self.error(name, f"expected text, got {type(v).__name__}")
        if not v.strip():
            raise self.error(name, "empty")
        return v

    def optional_text(self, name: str | None) -> str | None:
        if not name or not self.has(name):
            return None
        v = self.rec[self.col(name)]
        if not isinstance(v, str):
            raise self.error(name, f"expected text, got {type(v).__name__}")
        return v


def _choices(r: _Rec) -> list[str]:
    v = r.raw("choices")
    if isinstance(v, str):  # CSV cells (and lenient JSON) hold "a|b|c"
        v = [c.strip() for c in v.split("|")]
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
        raise r.error("choices", f"expected a list of texts, got {type(v).__name__}")
    if not 2 <= len(v) <= len(LETTERS):
        raise r.error("choices", f"expected 2 to {len(LETTERS)} choices, got {len(v)}")
    if any(not c.strip() for c in v):
        raise r.error("choices", "a choice is empty")
    return v


def _choice_label(r: _Rec, choices: list[str]) -> str:
    ans = r.raw("answer")
    if not isinstance(ans, str):
        raise r.error("answer", f"expected text, got {type(ans).__name__}")
    if ans in choices:
        return ans
    stripped = [c.strip() for c in choices]
    if ans.strip() in stripped:
        return choices[stripped.index(ans.strip())]
    # A user file may give the letter instead: "b", "(b)", "B".
    m = re.fullmatch(r"\s*\(?([a-jA-J])\)?\s*", ans)
    if m and LETTERS.index(m.group(1).lower()) < len(choices):
        return choices[LETTERS.index(m.group(1).lower())]
    raise r.error("answer", f"{ans!r} is not one of the choices")


def _fixed_label(r: _Rec, labels: tuple[str, ...]) -> str:
    """A label word of a fixed set, given as the word (any case) or its index (0, "1", ...)."""
    v = r.raw("label")
    if isinstance(v, bool):
        v = None  # bool is an int in Python; true/false is no label index
    elif isinstance(v, int) and 0 <= v < len(labels):
        return labels[v]
    elif isinstance(v, str):
        s = v.strip().lower()
        if s.isdigit() and int(s) < len(labels):
            return labels[int(s)]
        if s in labels:
            return s
    names = ", ".join(labels)
    raise r.error("label", f"{v!r} is not one of 0..{len(labels) - 1} ({names})")


def split_svamp(text: str) -> tuple[str, str]:
    """Split a SVAMP input into body and question.

    The data separates them with a newline; a one-line input has its last sentence taken
    as the question (after the last ". "); with neither, the whole text is the body.
    """
    text = text.strip()
    body, sep, question = text.rpartition("\n")
    if sep and body.strip():
        return body.strip(), question.strip()
    at = text.rfind(". ")
    if at >= 0:
        return text[: at + 1].strip(), text[at + 2 :].strip()
    return text, ""


def _svamp_fields(r: _Rec) -> dict:
    if r.has("body"):  # a user file with separate columns
        q = r.optional_text("question") or ""
        return {"body": r.text("body").strip(), "question": q.strip()}
    body, question = split_svamp(r.text("input"))
    return {"body": body, "question": question}


def _record_id(r: _Rec, task: str) -> str:
    for name in ("id", "uid"):
        if r.has(name):
            return str(r.rec[r.col(name)])
    return f"{task}-{r.line}"


def _text_fields(spec: TaskSpec, r: _Rec, skip: tuple[str, ...] = ()) -> dict:
    return {f: r.text(f) for f in spec.input_fields if f not in skip}


def _read_choice(spec: TaskSpec, r: _Rec) -> tuple[dict, str, list[str] | None]:
    fields = _text_fields(spec, r, skip=("choices",))  # errors in file column order
    choices = _choices(r)
    fields["choices"] = choices
    return fields, _choice_label(r, choices), list(choices)


def _read_label(spec: TaskSpec, r: _Rec) -> tuple[dict, str, list[str] | None]:
    labels = tuple(spec.labels or ())
    return _text_fields(spec, r), _fixed_label(r, labels), list(labels)


def _read_equation(spec: TaskSpec, r: _Rec) -> tuple[dict, str, list[str] | None]:
    if spec.input_fields == ("body", "question"):  # SVAMP: one "input" or body+question columns
        fields = _svamp_fields(r)
    else:
        fields = _text_fields(spec, r)
    return fields, r.text("label").strip(), None


# Label kind -> record reader (fields, gold label, options); the kinds of distill.tasks.
READERS = {
    "choice": _read_choice,
    "label": _read_label,
    "nli": _read_label,
    "equation": _read_equation,
}


def _example(spec: TaskSpec, r: _Rec, index: int) -> Example:
    reader = READERS.get(spec.label_kind)
    if reader is None:
        raise DataError(f"task {spec.name!r} has unknown label kind {spec.label_kind!r}")
    fields, label, options = reader(spec, r)
    human = r.optional_text("human_rationale") if "human_rationale" in r.mapping else None
    if human is None:
        human = r.optional_text(spec.rationale_field)
    return Example(
        id=_record_id(r, spec.name),
        task=spec.name,
        fields=fields,
        label=label,
        options=options,
        human_rationale=human,
        line=r.line,
        index=index,
    )


def load_task(
    task: str, path: str | Path, limit: int | None = None, mapping: dict | None = None
) -> list[Example]:
    """Load a task file (JSON lines, or CSV by suffix) into Examples.

    ``mapping`` renames columns: our field name -> the file's column name, e.g.
    ``{"question": "q", "choices": "opts", "answer": "gold"}``. CSV choices are "a|b|c".
    """
    from .hf_data import is_hf_source  # hub ids and Parquet go through Hugging Face datasets

    if is_hf_source(path):
        from .hf_data import load_hf_task

        return load_hf_task(task, path, limit=limit, mapping=mapping)
    spec = get_task(task)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    mapping = dict(mapping or {})
    out: list[Example] = []
    seen: dict[str, int] = {}  # id -> line: two records with one id were merged downstream
    for index, (line, rec) in enumerate(_records(path)):
        if limit is not None and len(out) >= limit:
            break
        ex = _example(spec, _Rec(rec, mapping, path.name, line), index)
        if ex.id in seen:
            raise DataError(
                f"{path.name} lines {seen[ex.id]} and {line}: the same id {ex.id!r}; "
                "ids must be unique"
            )
        seen[ex.id] = line
        out.append(ex)
    if not out and (limit is None or limit > 0):
        raise DataError(f"{path.name}: no records (the file is empty)")
    return out


# ---------------------------------------------------------------------------------------------
# Splits, LLM rationales, hashes


def split(examples: list, dev_size: float | int = 0.1, seed: int = 0) -> tuple[list, list]:
    """Seeded split into (train, dev); an int is a count, a float a fraction.

    Membership comes from a seeded shuffle; both parts keep the original order so that
    outputs are easy to compare with the file.
    """
    n = len(examples)
    if isinstance(dev_size, bool) or not isinstance(dev_size, int | float):
        raise DataError(f"dev size must be a count or a fraction, got {dev_size!r}")
    if isinstance(dev_size, float):
        if not 0.0 <= dev_size < 1.0:
            raise DataError(f"dev fraction must be in [0, 1), got {dev_size}")
        n_dev = int(round(n * dev_size))
        if dev_size > 0 and n >= 2:
            n_dev = min(max(n_dev, 1), n - 1)
    else:
        n_dev = dev_size
    if not 0 <= n_dev <= n or (n_dev == n and n > 0):
        raise DataError(f"dev size {dev_size} leaves no training examples out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev_idx = set(order[:n_dev])
    train = [e for i, e in enumerate(examples) if i not in dev_idx]
    dev = [e for i, e in enumerate(examples) if i in dev_idx]
    return train, dev


# Markers after which a PaLM chain of thought states its answer ("So the answer is" for CQA and
# ANLI, "The answer is" for SVAMP, "\nAnswer:" for e-SNLI, ", so the answer is" mid-sentence).
_ANSWER_MARK = re.compile(r"(?:,?\s*\bso\s+)?\bthe answer is\b|\banswer\s*:", re.IGNORECASE)


def parse_llm_rationale(text: str) -> str:
    """The rationale part of a raw PaLM output: its first paragraph, cut before the answer."""
    text = (text or "").strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]  # the few-shot continuation follows
    m = _ANSWER_MARK.search(text)
    if m:
        text = text[: m.start()]
    return text.strip().rstrip(",;:").strip()


def _cot_files(task_dir: Path, split_name: str) -> list[Path]:
    pat = re.compile(rf"{re.escape(split_name)}_CoT_(\d+)\.json")
    found = []
    for p in (task_dir / "llm").glob(f"{split_name}_CoT_*.json"):
        m = pat.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    if not found:
        raise DataError(f"no LLM rationale files {split_name}_CoT_<i>.json in {task_dir / 'llm'}")
    for want, (i, _p) in enumerate(found):
        if i != want:
            raise DataError(f"LLM rationale file {split_name}_CoT_{want}.json is missing")
    return [p for _, p in found]


def load_llm_rationales(task_dir: str | Path, split_name: str, raw: bool = False) -> list[str]:
    """All ``<task_dir>/llm/<split>_CoT_<i>.json`` in ascending i, parsed (or raw)."""
    out: list[str] = []
    for p in _cot_files(Path(task_dir), split_name):
        try:
            items = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{p.name} line {e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise DataError(f"{p.name}: expected a JSON list of strings")
        out.extend(items if raw else (parse_llm_rationale(s) for s in items))
    return out


def attach_llm_rationales(examples: list[Example], rationales: list[str]) -> list[Example]:
    """Set each Example's ``llm_rationale`` by its record index in the file (in place)."""
    for ex in examples:
        if ex.index >= len(rationales):
            raise DataError(
                f"LLM rationales cover {len(rationales)} records; example {ex.id} "
                f"(line {ex.line}) is record {ex.index + 1}"
            )
        ex.llm_rationale = rationales[ex.index]
    return examples


def data_hash(path: str | Path) -> str:
    """sha256 of the file bytes, recorded in run configs and used as a cache key."""
    if str(path).startswith("hf:"):  # a hub dataset: its datasets fingerprint
        from .hf_data import fingerprint

        return fingerprint(path)
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "DataError",
    "Example",
    "default_path",
    "load_task",
    "split",
    "split_svamp",
    "parse_llm_rationale",
    "load_llm_rationales",
    "attach_llm_rationales",
    "data_hash",
]
