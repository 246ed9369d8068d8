"""Comparing runs: one row per run, and paired statistics for every pair on the same examples.

Sources are finished training runs (their summary and ``dev_predictions.jsonl``) or the
per-example predictions files ``distill eval`` writes. Pairs use :mod:`distill.stats`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import TrainError
from .runs import RunDir, atomic_write_text

COMPARE_COLUMNS = [
    "run",
    "mode",
    "student",
    "task",
    "steps",
    "accuracy",
    "ci_low",
    "ci_high",
    "ci",
    "choice_accuracy",
    "n",
    "settings",
]
_KEY_SETTINGS = (
    "alpha",
    "lr",
    "batch_size",
    "grad_accum",
    "seed",
    "max_len",
    "dev_size",
    "limit",
    "rationales",
)


PAIR_COLUMNS = [
    "model_a",
    "model_b",
    "n",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "ci_low",
    "ci_high",
    "mcnemar_p",
    "both_correct",
    "a_only",
    "b_only",
    "both_wrong",
]
RUN_PREDICTIONS = "dev_predictions.jsonl"  # a training run's per-example dev predictions


def _read_predictions(path: Path) -> list[dict]:
    """Per-example predictions, each with its ``correct``; any other file is refused with its
    line (a data file was compared as accuracy 0.0, a binary one ended in a traceback)."""
    from .data import jsonl_records

    preds = []
    for line, rec in jsonl_records(path, TrainError):
        if "correct" not in rec:
            raise TrainError(
                f"{path.name} line {line}: not a predictions record (no 'correct'); give a run "
                "folder or a `distill eval` predictions file"
            )
        preds.append(rec)
    if not preds:
        raise TrainError(f"{path.name}: no predictions (the file is empty)")
    return preds


def _mean_of(preds: list[dict], key: str) -> float | None:
    vals = [bool(p[key]) for p in preds if p.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _source_row(path: Path) -> tuple[dict, list[dict] | None]:
    """A comparison row and per-example predictions for a run folder or a predictions file."""
    from .metrics import accuracy_ci

    if path.is_file():  # a per-example predictions file written by ``distill eval``
        preds = _read_predictions(path)
        acc, lo, hi = accuracy_ci([bool(p.get("correct")) for p in preds])
        row = {c: None for c in COMPARE_COLUMNS} | {
            "run": str(path),
            "accuracy": acc,
            "ci_low": lo,
            "ci_high": hi,
            "ci": f"{lo:.3f}-{hi:.3f}",
            "choice_accuracy": _mean_of(preds, "choice_correct"),
            "n": len(preds),
            "settings": "{}",
        }
        return row, preds
    run = RunDir(path)
    summary = run.summary()
    if summary is None:
        raise TrainError(f"run {run.name!r} is not finished (no summary.json)")
    cfg = run.config()
    settings = cfg.get("settings") or summary.get("settings") or {}
    key = {k: settings.get(k) for k in _KEY_SETTINGS if k in settings}
    extraction = ((cfg.get("rationales") or {}).get("settings")) or None
    if extraction:
        key["extraction"] = extraction
    acc, lo, hi = summary.get("accuracy"), summary.get("ci_low"), summary.get("ci_high")
    row = {
        "run": run.name,
        "mode": summary.get("mode", settings.get("mode")),
        "student": summary.get("student", settings.get("student")),
        "task": summary.get("task", settings.get("task")),
        "steps": summary.get("steps"),
        "accuracy": acc,
        "ci_low": lo,
        "ci_high": hi,
        "ci": f"{lo:.3f}-{hi:.3f}" if lo is not None and hi is not None else "",
        "choice_accuracy": summary.get("choice_accuracy"),
        "n": summary.get("n"),
        "settings": json.dumps(key, sort_keys=True, default=str),
    }
    pred_file = run.path / RUN_PREDICTIONS
    return row, _read_predictions(pred_file) if pred_file.is_file() else None


def compare(run_dirs: list[str | Path]):
    """One row per finished training run (or ``distill eval`` predictions file): accuracy with
    its 95% interval and key settings."""
    import pandas as pd

    rows = [_source_row(Path(d))[0] for d in run_dirs]
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def compare_pairs(
    sources: list[str | Path], key: str = "correct", n_boot: int = 10_000, seed: int = 0
):
    """Every pair of runs / prediction files scored on the same examples: accuracy difference,
    its paired bootstrap 95% interval and McNemar's exact p (:mod:`distill.stats`).

    ``key`` picks the per-example correctness: ``correct`` (generation), ``choice_correct``
    (length-normalised option ranking) or ``choice_correct_sum``. Returns the table and the
    pairs skipped because their example sets differ.
    """
    import pandas as pd

    from .stats import pairwise

    named: dict[str, list[dict]] = {}
    for src in sources:
        row, preds = _source_row(Path(src))
        if preds is None:
            raise TrainError(
                f"run {row['run']!r} has no per-example predictions ({RUN_PREDICTIONS})"
            )
        name = row["run"] if row["run"] not in named else str(src)
        named[name] = preds
    pairs, skipped = pairwise(named, key=key, n_boot=n_boot, seed=seed)
    df = pd.DataFrame([p.to_dict() for p in pairs], columns=PAIR_COLUMNS)
    return df, skipped


def _markdown(df) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(df, out_dir: str | Path, name: str = "comparison") -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, _markdown(df))
    return csv_path, md_path


__all__ = [
    "COMPARE_COLUMNS",
    "PAIR_COLUMNS",
    "RUN_PREDICTIONS",
    "compare",
    "compare_pairs",
    "write_comparison",
]
