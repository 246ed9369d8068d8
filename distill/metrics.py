"""Answer scoring (exact match after normalisation) and accuracy intervals. Pure functions."""

from __future__ import annotations

import ast
import math
import operator
import re
import string
from typing import TYPE_CHECKING

from explain.templates import LETTERS, NLI_LABELS

if TYPE_CHECKING:
    from .data import Example
    from .tasks import TaskSpec

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

# "Answer:", "The answer is", "So the correct answer is option", "Choice:" (repeatable).
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:(?:so\s+)?(?:the\s+)?(?:correct\s+|final\s+|right\s+)?"
    r"(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*)+",
    re.IGNORECASE,
)


def _strip_prefix(prediction: str) -> str:
    return _ANSWER_PREFIX.sub("", str(prediction or "")).strip()


def _letter_form(prediction: str, n_options: int) -> tuple[int, str] | None:
    """(option index, the text after the letter) for a clear letter form, else None.

    Clear forms (any case, after an optional "Answer:"/"The answer is"/"Option" prefix): the
    whole answer is one letter, "(b)", "b)", "B." or "b:"; or the answer starts with "(b)",
    "b)", "B." or "B:" followed by a space and more text. A letter followed by a space and a
    word is the article, never a letter: "A refrigerator", "a person".
    """
    s = _strip_prefix(prediction)
    letters = LETTERS[:n_options]
    if not letters:
        return None
    m = re.fullmatch(rf"\(?([{letters}])\)?[.:)]?", s, re.IGNORECASE)
    if m is None:
        m = re.match(rf"(?:\(([{letters}])\)|([{letters}])[).:])(?=\s|$)", s, re.IGNORECASE)
    if m is None:
        return None
    letter = next(g for g in m.groups() if g).lower()
    return LETTERS.index(letter), s[m.end() :].strip()


def parse_letter(prediction: str, n_options: int) -> int | None:
    """The option index of a clear letter answer ("b", "(b)", "b)", "B.", "Answer: b",
    "(b) text"), or None; "A refrigerator" is an article, not option (a)."""
    form = _letter_form(prediction, n_options)
    return None if form is None else form[0]


def _occurrences(hay: str, needle: str) -> list[tuple[int, int]]:
    """Word-bounded occurrences of a normalized phrase in a normalized text."""
    if not needle:
        return []
    return [(m.start(), m.end()) for m in re.finditer(rf"(?<!\S){re.escape(needle)}(?!\S)", hay)]


def _named_option(text: str, norm_opts: list[str]) -> int | None:
    """The option a text names: exact match, else the text of exactly one option (occurrences
    inside a longer matched option do not count: "golden gate bridge" is not also "bridge")."""
    pred = normalize(text)
    if pred and pred in norm_opts:
        return norm_opts.index(pred)
    spans = {o: _occurrences(pred, o) for o in set(norm_opts) if o}
    named = []
    for o, occ in spans.items():
        longer = [s for p, ss in spans.items() if p != o and o in p for s in ss]
        if any(not any(a <= s and e <= b for a, b in longer) for s, e in occ):
            named.append(o)
    return norm_opts.index(named[0]) if len(named) == 1 else None


def parse_choice(prediction: str, options: list[str]) -> int | None:
    """The index of the chosen option, or None when the prediction names none or several.

    A clear letter form (:func:`parse_letter`) picks its option unless the text after it names
    a different one ("(a) bridge" when (a) is "bus depot": ambiguous, None). Without a letter
    form, the option whose text the prediction is or names uniquely.
    """
    norm_opts = [normalize(o) for o in options]
    form = _letter_form(prediction, len(options))
    if form is None:
        return _named_option(prediction, norm_opts)
    letter, rest = form
    named = _named_option(rest, norm_opts) if rest else None
    if named is None or norm_opts[named] == norm_opts[letter]:
        return letter
    return None


# Words that negate a label mentioned right after them ("not entailment", "no contradiction").
_NEGATION = re.compile(r"\b(?:not|no|non|never|neither|nor|cannot|without)\b|n't\b")
_CLAUSE = re.compile(r"[.;!?,]|\bbut\b")


def parse_label(prediction: str, labels: list[str] | tuple[str, ...]) -> str | None:
    """The one label a prediction asserts, or None when it asserts none, a negated one only
    ("not entailment"), or several.

    An answer that opens with a label as its own sentence wins ("Neutral. It is not a
    contradiction or an entailment"). Otherwise label words count unless a negation precedes
    them in the same clause (up to 3 words back); exactly one asserted label is the answer.
    """
    s = _strip_prefix(prediction).lower()
    words = [str(w).lower() for w in labels]
    if not s or not words:
        return None
    alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    first = re.match(rf"[\s\"'(*]*({alt})[\s\"')*]*(?:[.!:;\n]|$)", s)
    if first:
        return first.group(1)
    asserted, prev_end = set(), 0
    for m in re.finditer(rf"\b({alt})\b", s):
        before = s[prev_end : m.start()]
        clause = _CLAUSE.split(before)[-1]
        if not _NEGATION.search(" ".join(clause.split()[-3:])):
            asserted.add(m.group(1))
        prev_end = m.end()
    return asserted.pop() if len(asserted) == 1 else None


def parse_nli(prediction: str) -> str | None:
    """The NLI label a prediction asserts (:func:`parse_label` over the three label words)."""
    return parse_label(prediction, NLI_LABELS)


def score_answer(task: str | TaskSpec, prediction: str, example: Example) -> bool:
    """Whether a generated prediction is correct for the example (see DESIGN.md section 5).

    The task's spec parses the prediction into a canonical answer (option text, label word,
    number) and normalises the gold label; see :mod:`distill.tasks`.
    """
    from .tasks import get_task

    spec = get_task(task)
    options = example.options or spec.options(example.fields)
    return spec.is_correct(prediction, example.label, options)


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
