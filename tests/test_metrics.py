import pytest

from distill.data import Example
from distill.metrics import (
    accuracy_ci,
    normalize,
    parse_choice,
    parse_letter,
    parse_nli,
    parse_number,
    safe_eval,
    score_answer,
)
from distill.tasks import TASKS

CHOICES = ["bus depot", "beach", "train station", "bridge", "golden gate bridge"]
CQA = Example("1", "cqa", {"question": "Where?", "choices": CHOICES}, "bridge", list(CHOICES))
NLI = Example("2", "esnli", {}, "neutral", ["entailment", "neutral", "contradiction"])
SVAMP = Example("3", "svamp", {}, "( 10.0 * 45.0 )")


def test_normalize():
    assert normalize("  The Train-Station! ") == "train station"
    assert normalize("An apple, a pear") == "apple pear"


@pytest.mark.parametrize(
    "pred, ok",
    [
        ("bridge", True),
        ("Bridge.", True),
        ("d", True),
        ("(d)", True),
        ("d)", True),
        ("D.", True),
        ("Answer: d", True),
        ("The answer is (d) bridge", True),
        ("They sleep under a bridge", True),
        ("(b)", False),
        ("beach", False),
        ("golden gate bridge", False),  # another choice, not the gold one
        ("the golden gate bridge, obviously", False),
        ("bridge or beach", False),  # names two choices
        ("", False),
        ("(f)", False),  # no sixth choice
    ],
)
def test_cqa_scoring(pred, ok):
    assert score_answer("cqa", pred, CQA) is ok


def test_cqa_longer_gold_choice_contains_shorter():
    ex = Example("1", "cqa", {}, "golden gate bridge", list(CHOICES))
    assert score_answer(TASKS["cqa"], "the golden gate bridge", ex)
    assert parse_choice("I think golden gate bridge", CHOICES) == 4
    assert parse_choice("a bridge", CHOICES) == 3


def test_cqa_duplicate_choices():
    choices = ["bus depot", "beach", "train station", "bridge", "bridge"]
    ex = Example("1", "cqa", {}, "bridge", choices)
    assert score_answer("cqa", "(e)", ex) and score_answer("cqa", "(d)", ex)
    assert score_answer("cqa", "bridge", ex)


@pytest.mark.parametrize(
    "pred, ok",
    [
        ("neutral", True),
        ("Neutral.", True),
        ("The answer is neutral, not contradiction", True),
        ("contradiction, or maybe neutral", False),  # first label word wins
        ("entail", False),
        ("", False),
    ],
)
def test_nli_scoring(pred, ok):
    assert score_answer("esnli", pred, NLI) is ok
    assert score_answer("anli1", pred, NLI) is ok


@pytest.mark.parametrize(
    "pred, ok",
    [
        ("450", True),
        ("450.0", True),
        ("( 10.0 * 45.0 )", True),
        ("(45 * 10)", True),
        ("The answer is (10 * 45).", True),
        ("10 * 45 = 450.", True),
        ("He has 10 boxes of 45, so 450", True),
        ("451", False),
        ("(10 + 45)", False),
        ("no number", False),
        ("__import__('os').system('true')", False),
    ],
)
def test_svamp_scoring(pred, ok):
    assert score_answer("svamp", pred, SVAMP) is ok


def test_svamp_division_tolerance():
    ex = Example("4", "svamp", {}, "( 10.0 / 3.0 )")
    assert score_answer("svamp", "10 / 3", ex)
    assert score_answer("svamp", "3.33333", ex)
    assert not score_answer("svamp", "3.33", ex)


def test_safe_eval():
    assert safe_eval("( ( 17.0 + 15.0 ) + 2.0 )") == 34.0
    assert safe_eval("-(3 - 5) * 2") == 4.0
    assert safe_eval("84.0 / 2.0") == 42.0
    for bad in ["2 ** 3", "1 / 0", "abs(-1)", "x + 1", "1 if 1 else 2", "", "(1 + 2", "[1]"]:
        assert safe_eval(bad) is None, bad
    assert safe_eval("+" * 2000 + "1") is None  # too long: not an answer


def test_parse_number_takes_last():
    assert parse_number("There are 120 students. 120 / 3 = 40.") == 40.0
    assert parse_number("It costs 1,000 dollars") == 1000.0
    assert parse_number("nothing") is None


def test_wilson_interval():
    acc, low, high = accuracy_ci([True] * 50 + [False] * 50)
    assert acc == 0.5
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    acc, low, high = accuracy_ci([True] * 8 + [False] * 2)
    assert acc == 0.8
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert accuracy_ci([True] * 5)[2] == 1.0 and accuracy_ci([False] * 5)[1] == 0.0
    assert accuracy_ci([]) == (0.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Defect 5: one table of answers, scored through each task's spec. "bug" marks the rows that
# the previous parser got wrong (each fails on the old code).


def _ex(task: str, label: str) -> Example:
    if task == "cqa":
        return Example("t", "cqa", {"question": "?", "choices": CHOICES}, label, list(CHOICES))
    if task in ("esnli", "anli1"):
        return Example("t", task, {}, label, ["entailment", "neutral", "contradiction"])
    return Example("t", task, {}, label)


# (task, gold, prediction, correct, bug)
ANSWER_TABLE = [
    # CQA: text, letters, and the article "a" (never option (a) unless it stands alone)
    ("cqa", "bridge", "bridge", True, False),
    ("cqa", "bridge", "A bridge.", True, False),  # article, not a letter
    ("cqa", "bridge", "D.", True, False),
    ("cqa", "bridge", "Answer: (D)", True, False),
    ("cqa", "bridge", "Option D", True, True),
    ("cqa", "bridge", "The correct answer is option d) bridge", True, False),
    ("cqa", "bridge", "(a) bridge", False, True),  # letter (a) and text (d) disagree
    ("cqa", "bridge", "A) bridge", False, True),
    ("cqa", "bridge", "A: bridge", False, True),
    ("cqa", "beach", "A. beach", False, True),
    ("cqa", "bridge", "A", False, False),
    ("cqa", "bus depot", "A", True, False),  # the whole answer is one letter
    ("cqa", "bus depot", "a", True, False),
    ("cqa", "bus depot", "(A).", True, False),
    ("cqa", "bus depot", "A refrigerator", False, False),
    ("cqa", "bus depot", "a person waits there", False, False),
    ("cqa", "bus depot", "A bus depot", True, False),
    ("cqa", "bridge", "I choose bridge over beach", False, False),  # names two
    # NLI: label words, negation, ambiguity
    ("esnli", "neutral", "neutral.", True, False),
    ("esnli", "contradiction", "Contradiction", True, False),
    ("esnli", "entailment", "ENTAILMENT", True, False),
    ("anli1", "entailment", "The answer is: entailment", True, False),
    ("esnli", "entailment", "not entailment", False, True),
    ("esnli", "entailment", "Not entailment.", False, True),
    ("esnli", "entailment", "There is no entailment here", False, True),
    ("esnli", "entailment", "non-entailment", False, True),
    ("esnli", "contradiction", "It is not a contradiction", False, True),
    ("esnli", "neutral", "Not entailment, it is neutral", True, True),
    ("anli1", "contradiction", "It isn't neutral; it's a contradiction", True, True),
    ("esnli", "entailment", "entailment or contradiction", False, True),
    ("esnli", "neutral", "Neutral. The premise does not say if it is an entailment.", True, False),
    ("esnli", "neutral", "The answer is neutral, not contradiction", True, False),
    # SVAMP: numbers compare as numbers; the gold is an equation string
    ("svamp", "( 12.0 / 3.0 )", "4", True, False),
    ("svamp", "( 12.0 / 3.0 )", "4.0", True, False),
    ("svamp", "( 12.0 / 3.0 )", "$4", True, False),
    ("svamp", "( 12.0 / 3.0 )", "4 apples", True, False),
    ("svamp", "( 12.0 / 3.0 )", "Answer: 4.", True, False),
    ("svamp", "( 12.0 / 3.0 )", "( 12 / 3 )", True, False),
    ("svamp", "( 12.0 / 3.0 )", "12 / 3 = 4 apples", True, False),
    ("svamp", "( 12.0 / 3.0 )", "5", False, False),
    ("svamp", "( 500.0 * 2.0 )", "1,000", True, False),
    ("svamp", "( 500.0 * 2.0 )", "$1,000", True, False),
    ("svamp", "( 500.0 * 2.0 )", "1000.0 dollars", True, False),
    ("svamp", "5", "5.0", True, False),
    ("svamp", "5", "5 apples", True, False),
    ("svamp", "5", "-5", False, False),
]


@pytest.mark.parametrize("task, gold, pred, ok, bug", ANSWER_TABLE)
def test_answer_table(task, gold, pred, ok, bug):
    assert score_answer(task, pred, _ex(task, gold)) is ok


def test_answer_table_size():
    assert len(ANSWER_TABLE) >= 30 and sum(b for *_, b in ANSWER_TABLE) >= 12


@pytest.mark.parametrize(
    "pred, idx",
    [
        ("A refrigerator", None),
        ("a person", None),
        ("A", 0),
        ("(b) beach", 1),
        ("b: beach", 1),
        ("Answer: C", 2),
        ("I think A", None),  # a letter inside a sentence is not a clear form
        ("(f)", None),
    ],
)
def test_parse_letter_forms(pred, idx):
    assert parse_letter(pred, 5) == idx


@pytest.mark.parametrize(
    "pred, label",
    [
        ("not entailment", None),
        ("neutral.", "neutral"),
        ("Contradiction", "contradiction"),
        ("no contradiction, so entailment", "entailment"),
        ("maybe", None),
        ("", None),
    ],
)
def test_parse_nli(pred, label):
    assert parse_nli(pred) == label
