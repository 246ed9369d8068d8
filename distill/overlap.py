"""How teacher rationales relate to the gold answer and to human rationales, vs random-k words.

Input: the ``rationales.jsonl`` an extraction run writes (one JSON object per example). Every
figure is defined in :data:`DEFINITIONS`, which the CLI, the app and the README print as is.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from explain.words import WORD_RE

from .rationales import read_records

DEFINITIONS: dict[str, str] = {
    "hit": "share of examples where at least one rationale word is a word of the gold answer "
    "(words lowercased, punctuation stripped); the paper reports 68% on CommonsenseQA",
    "precision": "|rationale words ∩ gold answer words| / |rationale words| (word sets)",
    "recall": "|rationale words ∩ gold answer words| / |gold answer words| (word sets)",
    "human_f1": "token F1 (SQuAD-style, word counts) between the rationale words and the words "
    "of the human rationale (CQA: the annotators' extractive explanation)",
    "auprc": "average precision of the teacher's word scores over task-input words (punctuation "
    "excluded) against labels 'the word occurs in the human rationale'",
    "random": "random-k baseline: k task-input words (punctuation excluded) drawn uniformly, "
    "k = the rationale's length, averaged over n_random seeded draws per example; its AUPRC "
    "ranks the words by uniform random scores",
    "comprehensiveness": "ERASER: p(answer | input) - p(answer | input without the top-k words); "
    "higher means the rationale matters more (random: k random words removed)",
    "sufficiency": "ERASER: p(answer | input) - p(answer | only the top-k words); lower means "
    "the rationale alone suffices (random: only k random words kept)",
}

FIGURES = ("hit", "precision", "recall", "human_f1", "auprc")
FAITHFULNESS = ("comprehensiveness", "sufficiency")

# A small English stop-word list, used only when drop_stopwords=True.
STOPWORDS = frozenset(
    "a an the of to in on at by for with from and or but is are was were be been being it its "
    "this that these those he she they them his her their we you i me my your our what which "
    "who whom where when why how do does did not no as if than then so there here".split()
)


# ---------------------------------------------------------------------------------------------
# Loading


def load_rationales(path: str | Path) -> list[dict]:
    """Records of ``<dir>/rationales.jsonl`` (or the file itself); bad lines raise DataError.

    The one reader is :func:`distill.rationales.read_records`; the analysis needs labels.
    """
    return read_records(path, require_label=True)


# ---------------------------------------------------------------------------------------------
# Word-level figures (pure functions)


def norm_word(text: str) -> str:
    """Lowercase, punctuation stripped; numbers canonical so "84.0" (equations) matches "84"."""
    w = "".join(ch for ch in str(text).lower() if ch.isalnum() or ch == ".")
    try:
        x = float(w.replace(",", ""))
    except ValueError:
        return w.replace(".", "")
    return str(int(x)) if x.is_integer() else repr(x)


def text_words(text: str | None, drop_stopwords: bool = False) -> list[str]:
    """Normalized words of a text (punctuation-only pieces dropped)."""
    return words_of([m.group() for m in WORD_RE.finditer(text or "")], drop_stopwords)


def words_of(texts: list[str], drop_stopwords: bool = False) -> list[str]:
    out = [norm_word(t) for t in texts]
    return [w for w in out if w and not (drop_stopwords and w in STOPWORDS)]


def precision_recall(rationale: list[str], gold: list[str]) -> tuple[float | None, float | None]:
    """Set precision and recall of rationale words against gold words (None when undefined)."""
    r, g = set(rationale), set(gold)
    common = len(r & g)
    return (common / len(r) if r else None, common / len(g) if g else None)


def token_f1(pred: list[str], ref: list[str]) -> float | None:
    """SQuAD token F1 on word counts; None when the reference is empty."""
    if not ref:
        return None
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def average_precision(scores: list[float], labels: list[bool]) -> float | None:
    """AP = sum over thresholds of (recall gained) x (precision there); tied scores form one
    threshold, as in scikit-learn's average_precision_score. None without a positive label."""
    n_pos = sum(bool(y) for y in labels)
    if n_pos == 0:
        return None
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    ap, tp, i = 0.0, 0, 0
    while i < len(pairs):
        j, gained = i, 0
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            gained += bool(pairs[j][1])
            j += 1
        tp += gained
        ap += (gained / n_pos) * (tp / j)
        i = j
    return ap


def random_k_indices(n_candidates: int, k: int, rng: random.Random) -> list[int]:
    """k distinct indices out of range(n_candidates), uniformly, sorted (input order)."""
    return sorted(rng.sample(range(n_candidates), min(max(k, 0), n_candidates)))


# ---------------------------------------------------------------------------------------------
# Per-example and dataset figures


def _candidates(record: dict) -> list[dict] | None:
    words = record.get("words")
    if words is None:
        return None
    return [w for w in words if w.get("is_input", True) and not w.get("is_punct", False)]


def _figures(rat_texts: list[str], gold: list[str], human: list[str] | None,
             drop_stopwords: bool) -> dict:  # fmt: skip
    rat = words_of(rat_texts, drop_stopwords)
    prec, rec = precision_recall(rat, gold)
    return {
        "hit": bool(set(rat) & set(gold)) if gold else None,
        "precision": prec,
        "recall": rec,
        "human_f1": token_f1(rat, human) if human else None,
    }


def _auprc(cands: list[dict], scores: list[float], human: list[str] | None,
           drop_stopwords: bool) -> float | None:  # fmt: skip
    if not cands or not human:
        return None
    ref = set(human)
    labels = [bool(set(words_of([w["text"]], drop_stopwords)) & ref) for w in cands]
    return average_precision(scores, labels)


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return mean(vals) if vals else None


def example_figures(
    record: dict, seed: int = 0, n_random: int = 10, drop_stopwords: bool = False
) -> dict:
    """All figures for one rationale record, with their random-k counterparts."""
    gold = text_words(str(record.get("label", "")), drop_stopwords)
    human_text = record.get("human_rationale")
    human = text_words(human_text, drop_stopwords) if human_text else None
    rationale = [w["text"] for w in record.get("rationale") or []]
    row = {"id": str(record["id"]), "rationale": rationale, "gold": str(record.get("label", ""))}
    row |= _figures(rationale, gold, human, drop_stopwords)
    cands = _candidates(record)
    row["auprc"] = (
        _auprc(cands, [float(w["score"]) for w in cands], human, drop_stopwords) if cands else None
    )
    # Random-k: a per-example generator seeded by (seed, id), so an example's baseline does not
    # depend on which other examples are in the file.
    draws: list[dict] = []
    if cands:
        rng = random.Random(f"{seed}:{row['id']}")
        k = len(rationale)
        for _ in range(n_random):
            pick = [cands[i]["text"] for i in random_k_indices(len(cands), k, rng)]
            fig = _figures(pick, gold, human, drop_stopwords)
            fig["auprc"] = _auprc(cands, [rng.random() for _ in cands], human, drop_stopwords)
            draws.append(fig)
    for name in FIGURES:
        row[f"random_{name}"] = _mean([d[name] for d in draws]) if draws else None
    faith = record.get("faithfulness") or {}
    for name in FAITHFULNESS:
        row[name] = faith.get(name)
        row[f"random_{name}"] = faith.get(f"random_{name}")
    if "teacher_correct" in record:
        row["teacher_correct"] = record["teacher_correct"]
    return row


@dataclass
class OverlapReport:
    per_example: list[dict]
    summary: dict
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "summary": self.summary,
            "definitions": self.definitions,
            "settings": self.settings,
            "per_example": self.per_example,
        }

    def to_dataframe(self):
        """Per-example figures as a pandas DataFrame (rationale words joined by spaces)."""
        import pandas as pd  # only this method needs pandas

        rows = [dict(r, rationale=" ".join(r["rationale"])) for r in self.per_example]
        return pd.DataFrame(rows)

    def summary_dataframe(self):
        """One row per figure: rationale mean, random-k mean, n."""
        import pandas as pd

        return pd.DataFrame(
            [{"figure": k, **v} for k, v in self.summary.items() if isinstance(v, dict)]
        )


def summarize(rows: list[dict]) -> dict:
    """Mean of each figure for the rationale and for random-k, with n (examples defined)."""
    out: dict = {"n_examples": len(rows)}
    for name in FIGURES + FAITHFULNESS:
        vals = [r.get(name) for r in rows]
        if name in FAITHFULNESS and all(v is None for v in vals):
            continue  # extraction ran without faithfulness
        out[name] = {
            "rationale": _mean(vals),
            "random": _mean([r.get(f"random_{name}") for r in rows]),
            "n": sum(v is not None for v in vals),
        }
    if any("teacher_correct" in r for r in rows):
        out["teacher_accuracy"] = _mean([r.get("teacher_correct") for r in rows])
    return out


def overlap_report(
    records: list[dict], seed: int = 0, n_random: int = 10, drop_stopwords: bool = False
) -> OverlapReport:
    """Figures per example and their means; see DEFINITIONS."""
    rows = [example_figures(r, seed, n_random, drop_stopwords) for r in records]
    return OverlapReport(
        per_example=rows,
        summary=summarize(rows),
        settings={"seed": seed, "n_random": n_random, "drop_stopwords": drop_stopwords},
    )
