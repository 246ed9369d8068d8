"""The one formatting path: prompts, truncation, answer-first generation and answer spans."""

from __future__ import annotations

import pytest
import tiny

from explain.errors import InputError
from explain.formatting import build_source, encode_target, render_prompt
from explain.pipeline import answer_target, generate
from explain.templates import get_template

CQA = {"question": "Where would you put a plate after washing it?",
       "choices": ["cupboard", "table", "sink"]}  # fmt: skip


@pytest.mark.parametrize(
    "template,fields,text,span",
    [
        ("cqa", CQA, "cupboard", "cupboard"),
        ("cqa", CQA, "(a) cupboard", "cupboard"),
        ("cqa", CQA, "(c)", "(c)"),
        ("cqa", CQA, "The answer is the sink, because", "sink"),
        ("cqa", CQA, "I do not know", None),
        ("nli", {"premise": "p", "hypothesis": "h"}, "Neutral.", "Neutral"),
        ("nli", {"premise": "p", "hypothesis": "h"}, "It is a contradiction", "contradiction"),
        ("svamp", {"body": "b", "question": "q"}, "( 12.0 / 3.0 )", "( 12.0 / 3.0 )"),
        ("svamp", {"body": "b", "question": "q"}, "12 / 3 = 4.", "12 / 3"),
        ("svamp", {"body": "b", "question": "q"}, "To find out, divide (120 / 3)", "(120 / 3)"),
        ("svamp", {"body": "b", "question": "q"}, "We need to divide the total", None),
        ("free", {"text": "t"}, "  Paris\nmore text", "Paris"),
    ],
)
def test_answer_spans(template, fields, text, span):
    got = get_template(template).answer_span(text, fields)
    assert (text[got[0] : got[1]] if got else None) == span


def test_prefix_and_hint_keep_input_spans():
    lm = tiny.loaded("t5")
    p = render_prompt(lm, "cqa", CQA, prefix="explain", hint=["plate", "sink"])
    assert p.text.startswith("explain: Question: Where") and p.text.endswith("Hint: plate sink")
    assert [p.text[a:b] for a, b in p.input_spans] == [CQA["question"], *CQA["choices"]]


def test_truncation_error_when_nothing_can_be_cut():
    lm = tiny.loaded("llama")
    with pytest.raises(InputError, match="does not fit"):
        build_source(lm, "cqa", CQA, budget=20)
    with pytest.raises(InputError, match="no room"):
        build_source(lm, "cqa", CQA, budget=0)


def test_generation_stops_at_the_end_of_the_first_line(tiny):
    """A model that would run on past a line break is cut there (answers come first)."""
    prompt = build_source(tiny, "free", {"text": "apples"}, 200).ids
    free = generate(tiny, [prompt], 12, first_line=False)[0]
    cut = generate(tiny, [prompt], 12)[0]
    assert cut == free[: len(cut)]
    with pytest.raises(InputError, match="at least 1"):
        generate(tiny, [prompt], 0)


def test_answer_target_drops_the_preamble():
    lm = tiny.loaded("llama")
    tok = lm.tokenizer
    ids = tok("(a) cupboard", add_special_tokens=False)["input_ids"]
    target, notes = answer_target(lm, "cqa", CQA, ids + tok(". more", add_special_tokens=False)[
        "input_ids"])  # fmt: skip
    assert tok.decode(target) == "(a) cupboard" and notes == []
    long = tok("Well, thinking about plates, the sink", add_special_tokens=False)["input_ids"]
    target, notes = answer_target(lm, "cqa", CQA, long)
    assert target == encode_target(lm, "sink", eos=False) and "alone" in notes[0]
    none = tok("no idea", add_special_tokens=False)["input_ids"]
    target, notes = answer_target(lm, "cqa", CQA, none)
    assert target == none and "no cqa answer" in notes[0]


def test_first_line_cut_keeps_a_leading_break_and_stops_at_the_next():
    from explain.pipeline import _first_line

    tok = tiny.tiny_tokenizer()
    ids = tok("\nsink\nBecause plates", add_special_tokens=False)["input_ids"]
    assert tok.decode(_first_line(tok, ids)) == "\nsink"
    one = tok("sink", add_special_tokens=False)["input_ids"]
    assert _first_line(tok, one) == one


def test_line_stop_is_built_once_per_tokenizer(tiny, monkeypatch):
    """The vocabulary scan of the end-of-line stop runs once, not on every generate call."""
    import transformers

    from explain import pipeline

    pipeline.line_stop.cache_clear()
    built = []
    real = transformers.StopStringCriteria

    def counting(*a, **k):
        built.append(1)
        return real(*a, **k)

    monkeypatch.setattr(transformers, "StopStringCriteria", counting)
    prompt = build_source(tiny, "free", {"text": "apples"}, 200).ids
    first = [generate(tiny, [prompt], 12) for _ in range(3)]
    assert len(built) == 1
    assert first[0] == first[1] == first[2]
    pipeline.line_stop.cache_clear()
