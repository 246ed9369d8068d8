"""Task data through Hugging Face ``datasets``: the public hub datasets and any local file it reads.

``load_task(task, "hf:<dataset id>[:split]")`` (or ``hf:<id>:<config>:<split>``) loads a hub
dataset into the usual ``datasets`` cache and maps its columns and labels onto the task's
Examples; ``hf:<local file or folder>`` and a path ending in ``.parquet`` load a local file
(Parquet, JSON lines, CSV, Arrow) the same way. Rows are checked by the same code as the
step-by-step JSON-lines files, so a bad row gives the same located one-line ``DataError``.

Hub layouts recognised by their columns (so a local file laid out like them works too):

- CommonsenseQA (``tau/commonsense_qa``): question, choices{label,text}, answerKey letter;
  joined by id with CoS-E v1.11 (``Salesforce/cos_e``) for the human rationales when it loads.
- CoS-E (``Salesforce/cos_e``, config v1.11), e-SNLI (``esnli``), ANLI (``facebook/anli``,
  splits train_r1/dev_r1/test_r1): already the step-by-step columns and label codes
  (0 entailment, 1 neutral, 2 contradiction).
- SVAMP (``ChilleD/SVAMP``): ID, Body, Question, Equation (the label), Answer.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from .data import DataError, Example, _example, _Rec
from .tasks import get_task

PREFIX = "hf:"
LOCAL_BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


@dataclass(frozen=True)
class HubDataset:
    task: str
    split: str  # default split: the one the step-by-step files come from
    config: str | None = None
    rationales: str | None = None  # a source joined by id for the human rationales


# Hub ids that work (both the current owner/name and the old canonical names).
HUB: dict[str, HubDataset] = {}
for _ids, _info in (
    (("tau/commonsense_qa", "commonsense_qa"),
     HubDataset("cqa", "train", rationales="hf:Salesforce/cos_e:v1.11")),
    (("Salesforce/cos_e", "cos_e"), HubDataset("cqa", "train", config="v1.11")),
    (("esnli", "esnli/esnli"), HubDataset("esnli", "validation")),
    (("facebook/anli", "anli"), HubDataset("anli1", "dev_r1")),
    (("ChilleD/SVAMP",), HubDataset("svamp", "train")),
):  # fmt: skip
    for _id in _ids:
        HUB[_id] = _info


@dataclass(frozen=True)
class Source:
    """A parsed ``--data`` value that goes through ``datasets``."""

    text: str  # as given
    name: str  # hub id, or local path
    local: bool
    config: str | None
    split: str | None

    @property
    def label(self) -> str:  # shown in error messages in place of a file name
        if self.local:
            return Path(self.name).name
        return f"{self.name}[{self.split}]" if self.split else self.name


def is_hf_source(path: str | Path) -> bool:
    """True for ``hf:...`` and for Parquet/Arrow files (the formats only ``datasets`` reads)."""
    s = str(path)
    return s.startswith(PREFIX) or Path(s).suffix.lower() in (".parquet", ".arrow")


def parse_source(path: str | Path) -> Source:
    s = str(path)
    rest = s[len(PREFIX) :] if s.startswith(PREFIX) else s
    if not rest.strip():
        raise DataError(f"{s!r}: give a dataset id or file after 'hf:', e.g. hf:esnli:validation")
    looks_local = Path(rest).suffix.lower() in LOCAL_BUILDERS or rest.startswith(("/", ".", "~"))
    if not s.startswith(PREFIX) or looks_local or Path(rest).exists():
        return Source(s, str(Path(rest).expanduser()), True, None, None)
    parts = rest.split(":")
    if len(parts) > 3 or not all(parts):
        raise DataError(f"{s!r}: expected hf:<dataset id>[:split] or hf:<id>:<config>:<split>")
    name = parts[0]
    info = HUB.get(name)
    config = parts[1] if len(parts) == 3 else (info.config if info else None)
    split = parts[-1] if len(parts) >= 2 else (info.split if info else "train")
    return Source(s, name, False, config, split)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint, so an unreachable hub fails in seconds, not after
    ``datasets``' retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_source(text: str):
    """The ``datasets.Dataset`` behind a source string (cached per process; a local file is
    reread when it changes)."""
    src = parse_source(text)
    stamp = None
    if src.local and Path(src.name).is_file():
        st = Path(src.name).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    return _load(text, stamp)


@lru_cache(maxsize=8)
def _load(text: str, stamp: tuple | None):
    src = parse_source(text)
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{src.label}: reading it needs the 'datasets' package: pip install datasets pyarrow"
        ) from None
    datasets.logging.set_verbosity_error()
    if src.local:
        path = Path(src.name)
        if not path.exists():
            raise DataError(f"data file not found: {path}")
        try:
            if path.is_dir():
                ds = datasets.load_dataset(str(path), split=src.split or "train")
            else:
                builder = LOCAL_BUILDERS.get(path.suffix.lower())
                if builder is None:
                    raise DataError(
                        f"{path.name}: unknown format; use .parquet, .jsonl, .json, .csv or .arrow"
                    )
                ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{path.name}: cannot be read ({first})") from None
        return ds
    if not _offline() and not _hub_reachable():
        raise DataError(
            f"cannot reach the Hugging Face hub to load {src.name!r}; download the data and "
            "pass a local .jsonl, .csv or .parquet file (or set HF_HUB_OFFLINE=1 to use a "
            "cached copy)"
        )
    try:
        ds = datasets.load_dataset(src.name, src.config, split=src.split)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; one line each
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        known = ", ".join(sorted(HUB))
        raise DataError(
            f"cannot load {src.label} from the Hugging Face hub ({first}); hub ids that work: "
            f"{known}"
        ) from None
    return ds


def _layout(columns: set[str]) -> str:
    if {"question", "choices", "answerKey"} <= columns:
        return "commonsense_qa"
    if {"Body", "Question", "Equation"} <= columns:
        return "svamp"
    return "records"  # step-by-step columns already (CoS-E, e-SNLI, ANLI, user files)


def _cqa_record(row: dict, where: str) -> dict:
    """A tau/commonsense_qa row in the step-by-step cqa layout (answer as choice text)."""
    choices = row.get("choices") or {}
    labels, texts = list(choices.get("label") or []), list(choices.get("text") or [])
    key = (row.get("answerKey") or "").strip()
    if not key:
        raise DataError(
            f"{where}: field 'answerKey': empty (the hub's test split has no gold answers; "
            "use train or validation)"
        )
    if key not in labels or len(labels) != len(texts):
        raise DataError(f"{where}: field 'answerKey': {key!r} is not one of {labels}")
    return {
        "id": row.get("id"),
        "question": row.get("question"),
        "choices": texts,
        "answer": texts[labels.index(key)],
    }


def _svamp_record(row: dict) -> dict:
    rec = {"body": row.get("Body"), "question": row.get("Question"), "label": row.get("Equation")}
    if row.get("ID") is not None:
        rec["id"] = str(row["ID"])
    return rec


def _rationales_by_id(text: str) -> dict[str, dict]:
    ds = load_source(text)
    missing = {"id", "extractive_explanation"} - set(ds.column_names)
    if missing:
        raise DataError(f"{parse_source(text).label}: not a CoS-E layout, lacks {sorted(missing)}")
    keep = [
        c for c in ("abstractive_explanation", "extractive_explanation") if c in ds.column_names
    ]
    return {row["id"]: {c: row[c] for c in keep} for row in ds}


def _join_split(rationales: str, split: str | None) -> str:
    """The rationale source for the same split (CoS-E has train and validation)."""
    if not rationales.startswith(PREFIX) or split is None:
        return rationales
    src = parse_source(rationales)
    if src.local:
        return rationales
    return (
        f"{PREFIX}{src.name}:{src.config}:{split}" if src.config else f"{PREFIX}{src.name}:{split}"
    )


def load_hf_task(
    task: str,
    path: str | Path,
    limit: int | None = None,
    mapping: dict | None = None,
    rationales: str | Path | None = None,
) -> list[Example]:
    """Load a task from a ``datasets`` source (see the module doc) into Examples.

    ``rationales``: a CoS-E-like source (hub or local) joined by id to give CommonsenseQA rows
    their human rationales; for ``tau/commonsense_qa`` from the hub it defaults to CoS-E
    v1.11, and a failure to load it only warns (the examples then lack human rationales).
    """
    spec = get_task(task)
    src = parse_source(path)
    info = HUB.get(src.name)  # hub ids; a local path is normally not listed
    if info and info.task != spec.name:
        raise DataError(f"{src.name} holds task {info.task!r}, not {spec.name!r}")
    ds = load_source(src.text)
    if limit is not None:
        ds = ds.select(range(min(max(limit, 0), len(ds))))
    layout = _layout(set(ds.column_names))
    joined: dict[str, dict] = {}
    if layout == "commonsense_qa":
        join = rationales or (info.rationales if info else None)
        if join:
            try:
                joined = _rationales_by_id(_join_split(str(join), src.split))
            except DataError as e:
                if rationales:  # asked for explicitly: an error, not a warning
                    raise
                warnings.warn(f"no CoS-E human rationales: {e}", stacklevel=2)
    mapping = dict(mapping or {})
    out: list[Example] = []
    for index, row in enumerate(ds):
        line = index + 1  # 1-based row number stands in for the line of a text file
        where = f"{src.label} line {line}"
        if layout == "commonsense_qa":
            rec = _cqa_record(row, where)
            rec.update(joined.get(rec["id"], {}))
        elif layout == "svamp":
            rec = _svamp_record(row)
        else:
            rec = dict(row)
        out.append(_example(spec, _Rec(rec, mapping, src.label, line), index))
    if not out and (limit is None or limit > 0):
        raise DataError(f"{src.label}: no records")
    return out


def fingerprint(path: str | Path) -> str:
    """A content fingerprint for a ``datasets`` source (the run configs' data hash)."""
    return load_source(str(path))._fingerprint


__all__ = [
    "HUB",
    "HubDataset",
    "Source",
    "fingerprint",
    "is_hf_source",
    "load_hf_task",
    "load_source",
    "parse_source",
]
