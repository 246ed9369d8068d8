"""Answer scoring (exact match after normalisation) and accuracy intervals. Pure functions."""

from __future__ import annotations

import ast
import math
import operator
import re
import string

from explain.templates import LETTERS, NLI_LABELS

from .data import Example, TaskSpec, get_task

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """SQuAD-style: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = str(text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


# ---------------------------------------------------------------------------------------------
# Safe arithmetic (SVAMP): an AST walk over numbers, + - * /, parentheses and unary signs only.

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}  # fmt: skip
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPR = 500  # longer "expressions" are not answers; also bounds recursion depth


def _walk(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_walk(node.left), _walk(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_walk(node.operand))
    raise ValueError(f"not allowed: {type(node).__name__}")


def safe_eval(expr: str) -> float | None:
    """The value of an arithmetic expression, or None when it is not one (never ``eval``)."""
    expr = str(expr or "").strip()
    if not expr or len(expr) > _MAX_EXPR:
        return None
    try:
        value = _walk(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


_EXPR_RUN = re.compile(r"[\d.()+\-*/\s]+")


def _balance(s: str) -> str:
    """Drop parentheses that have no partner, e.g. a truncated "(120 / 3"."""
    keep, stack = list(s), []
    for i, ch in enumerate(s):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            if stack:
                stack.pop()
            else:
                keep[i] = ""
    for i in stack:
        keep[i] = ""
    return "".join(keep)


def parse_number(text: str) -> float | None:
    """The value of the last arithmetic expression or number in free text."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(text or ""))  # 1,000 -> 1000
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    runs = [r for r in _EXPR_RUN.findall(text) if any(ch.isdigit() for ch in r)]
    for run in reversed(runs):
        cand = _balance(run).strip().lstrip(".*/+").rstrip(".+-*/").strip()
        value = safe_eval(cand)
        if value is not None:
            return value
        # A run mixing sentence dots and numbers: fall back to its last number.
        nums = re.findall(r"-?\d+(?:\.\d+)?", run)
        if nums:
            return float(nums[-1])
    return None


# ---------------------------------------------------------------------------------------------
# Parsing predictions

_ANSWER_PREFIX = re.compile(
    r"^\s*(?:so\s+)?(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE
)


def parse_letter(prediction: str, n_options: int) -> int | None:
    """The option index of a letter answer: "b", "(b)", "b)", "B.", "Answer: b", "(b) text"."""
    s = _ANSWER_PREFIX.sub("", str(prediction or "")).strip().lower()
    letters = LETTERS[:n_options]
    m = re.fullmatch(rf"\(?([{letters}])\)?[.:]?", s)
    if m is None:  # letter followed by the choice text: "(b) garden center", "b) garden"
        m = re.match(rf"(?:\(([{letters}])\)|([{letters}])[).:])(?:\s|$)", s)
    if m is None:
        return None
    return LETTERS.index(next(g for g in m.groups() if g))


def _occurrences(hay: str, needle: str) -> list[tuple[int, int]]:
    """Word-bounded occurrences of a normalized phrase in a normalized text."""
    if not needle:
        return []
    return [(m.start(), m.end()) for m in re.finditer(rf"(?<!\S){re.escape(needle)}(?!\S)", hay)]


def parse_choice(prediction: str, options: list[str]) -> int | None:
    """The index of the chosen option, or None when the prediction names none or several.

    Order: exact text match, a letter, then the text of exactly one option (occurrences inside
    a longer matched option do not count, so "golden gate bridge" is not also "bridge").
    """
    norm_opts = [normalize(o) for o in options]
    pred = normalize(prediction)
    if pred and pred in norm_opts:
        return norm_opts.index(pred)
    letter = parse_letter(prediction, len(options))
    if letter is not None:
        return letter
    spans = {o: _occurrences(pred, o) for o in set(norm_opts) if o}
    named = []
    for o, occ in spans.items():
        longer = [s for p, ss in spans.items() if p != o and o in p for s in ss]
        if any(not any(a <= s and e <= b for a, b in longer) for s, e in occ):
            named.append(o)
    if len(named) != 1:
        return None
    return norm_opts.index(named[0])


def parse_nli(prediction: str) -> str | None:
    """The first NLI label word anywhere in the prediction."""
    m = re.search(rf"\b({'|'.join(NLI_LABELS)})\b", str(prediction or "").lower())
    return m.group(1) if m else None


def score_answer(task: str | TaskSpec, prediction: str, example: Example) -> bool:
    """Whether a generated prediction is correct for the example (see DESIGN.md section 5)."""
    kind = get_task(task).label_kind
    if kind == "choice":
        options = example.options or example.fields.get("choices") or []
        idx = parse_choice(prediction, options)
        return idx is not None and normalize(options[idx]) == normalize(example.label)
    if kind == "nli":
        return parse_nli(prediction) == normalize(example.label)
    if kind == "equation":
        gold, pred = safe_eval(example.label), parse_number(prediction)
        if gold is None:
            gold = parse_number(example.label)
        return gold is not None and pred is not None and abs(gold - pred) < 1e-4
    raise ValueError(f"unknown label kind {kind!r}")


def accuracy_ci(correct: list[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Accuracy and its Wilson score interval (95% for z=1.96); (0, 0, 1) when empty."""
    n = len(correct)
    if n == 0:
        return 0.0, 0.0, 1.0
    p = sum(bool(c) for c in correct) / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, center - half), min(1.0, center + half)
