import pytest

from distill.data import TASKS, Example
from distill.metrics import (
    accuracy_ci,
    normalize,
    parse_choice,
    parse_number,
    safe_eval,
    score_answer,
)

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
