"""The task registry: the built-in entries, and a new task added as one entry, end to end."""

import json

import pytest
import tiny

from distill import data, tasks
from distill.data import DataError, Example, load_task
from distill.evaluate import evaluate
from distill.metrics import score_answer
from distill.tasks import TASKS, TaskSpec, get_task, register_task, task_names


def test_builtin_tasks():
    assert task_names() == ["cqa", "esnli", "anli1", "svamp"]
    cqa, esnli, svamp = get_task("cqa"), get_task("esnli"), get_task("svamp")
    assert cqa.input_fields == ("question", "choices")
    assert esnli.input_fields == ("premise", "hypothesis")
    assert svamp.input_fields == ("body", "question")
    assert esnli.labels == ("entailment", "neutral", "contradiction")
    assert "choice_accuracy" in cqa.metrics and "hit" in cqa.metrics
    assert "hit" not in esnli.metrics and svamp.metrics == ("accuracy",)
    assert cqa.options({"question": "q", "choices": "x | y"}) == ["x", "y"]
    assert esnli.options({}) == ["entailment", "neutral", "contradiction"]
    assert svamp.options({"body": "b"}) is None
    assert get_task(cqa) is cqa
    with pytest.raises(DataError, match="unknown task 'nope'"):
        get_task("nope")


def test_the_registry_has_one_home():
    assert not hasattr(data, "TASKS") and not hasattr(data, "register_task")
    assert set(tasks.task_names()) >= {"cqa", "esnli", "anli1", "svamp"}


def test_spec_checks():
    with pytest.raises(ValueError, match="unknown label kind 'vote'"):
        TaskSpec("x", "free", "vote")
    with pytest.raises(ValueError, match="needs its labels"):
        TaskSpec("x", "free", "label")
    with pytest.raises(ValueError, match="unknown metrics"):
        TaskSpec("x", "free", "equation", metrics=("accuracy", "bleu"))
    assert TaskSpec("x", "free", "label", labels=("yes", "no")).metrics == (
        "accuracy",
        "choice_accuracy",
        "choice_accuracy_sum",
    )


def test_canonical_answers():
    cqa, nli, svamp = get_task("cqa"), get_task("anli1"), get_task("svamp")
    opts = ["bus depot", "beach", "bridge"]
    assert cqa.parse_answer("(c)", opts) == "bridge"
    assert cqa.parse_answer("A refrigerator", opts) is None
    assert nli.parse_answer("Answer: not entailment") is None
    assert nli.parse_answer("Neutral.") == "neutral"
    assert svamp.parse_answer("$1,000") == 1000.0
    assert svamp.normalize_gold("( 12.0 / 3.0 )") == 4.0


@pytest.fixture
def sentiment(monkeypatch):
    """A new task, registered as the module docstring says (removed after the test)."""
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))
    return register_task(
        TaskSpec(
            name="sentiment",
            template="free",
            label_kind="label",
            input_fields=("text",),
            labels=("positive", "negative"),
            description="Sentiment: one sentence, positive or negative",
        )
    )


def test_new_task_end_to_end(sentiment, tmp_path, one_thread):
    assert "sentiment" in task_names() and get_task("sentiment") is sentiment
    f = tmp_path / "sentiment.jsonl"
    rows = [
        {"id": "s1", "text": "Sam had 12 apples, what a café.", "label": "positive"},
        {"id": "s2", "text": "The plate is in the sink.", "label": 1},  # the label's index
        {"id": "s3", "text": "A man plays a guitar.", "label": "Positive"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = load_task("sentiment", f)
    assert [e.label for e in exs] == ["positive", "negative", "positive"]
    assert exs[0].fields == {"text": "Sam had 12 apples, what a café."}
    assert exs[0].options == ["positive", "negative"]

    assert score_answer("sentiment", "Positive.", exs[0])
    assert score_answer("sentiment", "The answer is negative", exs[1])
    assert not score_answer("sentiment", "negative", exs[0])
    assert not score_answer("sentiment", "not positive", exs[0])  # negated: no answer
    assert not score_answer("sentiment", "positive or negative", exs[0])  # two: no answer

    r = evaluate(tiny.loaded("llama"), "sentiment", exs, max_new_tokens=2, batch_size=2)
    assert r.n == 3 and r.choice_accuracy is not None and r.choice_accuracy_sum is not None
    for p in r.predictions:
        assert p["choice_prediction"] in ("positive", "negative")
        assert set(p["option_logprobs"]) == {"positive", "negative"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "meh"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl line 1: field 'label': 'meh' is not one of"):
        load_task("sentiment", bad)


def test_new_equation_task(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))
    register_task(TaskSpec("arith", "free", "equation", input_fields=("text",)))
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "Add 2 and 3.", "label": "( 2.0 + 3.0 )"}) + "\n")
    (ex,) = load_task("arith", f)
    assert ex.fields == {"text": "Add 2 and 3."} and ex.options is None
    assert score_answer("arith", "5 apples", ex) and not score_answer("arith", "6", ex)
    assert score_answer("arith", "5", Example("x", "arith", {}, "5"))
