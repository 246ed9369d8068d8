"""Word merging, rationale selection and input validation."""

import pytest

from explain.errors import InputError
from explain.pipeline import explain
from explain.templates import get_template, render
from explain.words import Word, merge_words, select_rationale, split_words

TRICKY = "Sam's café sold 1,000 naïve apples (3.5 kg) — apples, apples! Über-cool e-mail?"


def _merge(tokenizer, text, spans=None, how="sum"):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    scores = [float(i % 7) + 0.5 for i in range(len(ids))]
    special = [i in set(tokenizer.all_special_ids) for i in ids]
    words = merge_words(text, offsets, scores, special, spans or [(0, len(text))], how)
    return ids, offsets, scores, words


def _check_merge(tokenizer):
    ids, offsets, scores, words = _merge(tokenizer, TRICKY)
    texts = [w.text for w in words]
    assert texts == [TRICKY[s:e] for s, e in split_words(TRICKY)]
    assert texts.count("apples") == 3  # repeated words stay separate, in order
    for expected in ["Sam's", "café", "1,000", "naïve", "3.5", "Über-cool", "e-mail", "—", "("]:
        assert expected in texts
    for w in words:  # a word's score is the sum of its pieces
        assert w.score == pytest.approx(sum(scores[i] for i in w.tokens))
        assert TRICKY[w.start : w.end] == w.text
    assigned = sorted(i for w in words for i in w.tokens)
    nonspace = [i for i, (s, e) in enumerate(offsets) if TRICKY[s:e].strip()]
    assert assigned == nonspace  # every non-space piece lands in exactly one word
    assert sum(w.score for w in words) == pytest.approx(sum(scores[i] for i in nonspace))
    assert any(len(w.tokens) > 1 for w in words)  # something was actually merged
    punct = {w.text for w in words if w.is_punct}
    assert {"(", ")", "—", ",", "!", "?"} <= punct and "1,000" not in punct
    for how, agg in [("max", max), ("mean", lambda xs: sum(xs) / len(xs))]:
        same = _merge(tokenizer, TRICKY, how=how)[3]
        assert [w.tokens for w in same] == [w.tokens for w in words]  # same words, other scores
        for w in same:
            assert w.score == pytest.approx(agg([scores[i] for i in w.tokens]))


def test_merge_words_tiny_tokenizer():
    import tiny

    _check_merge(tiny.tiny_tokenizer())


@pytest.mark.integration
def test_merge_words_real_smollm2_tokenizer(smollm2):
    _check_merge(smollm2.tokenizer)


def test_select_rationale_order_and_k():
    words = [
        Word("The", 0, 3, 0.1, [0], True),
        Word("cat", 4, 7, 0.9, [1], True),
        Word(",", 7, 8, 5.0, [2], True, True),
        Word("sat", 9, 12, 0.5, [3], True),
        Word("Answer", 13, 19, 9.0, [4], False),
        Word("mat", 20, 23, 0.7, [5], True),
    ]
    assert [w.text for w in select_rationale(words, 2)] == ["cat", "mat"]  # input order
    assert [w.text for w in select_rationale(words, 3)] == ["cat", "sat", "mat"]
    assert [w.text for w in select_rationale(words, 99)] == ["The", "cat", "sat", "mat"]
    with pytest.raises(ValueError):
        select_rationale(words, 0)


def test_rationale_never_holds_template_special_or_punctuation(tiny):
    fields = {"question": "Where, exactly, would you put a plate?!", "choices": "cup|sink|(a)|..."}
    with pytest.raises(InputError):  # an empty choice is rejected
        render("cqa", {"question": "q", "choices": "a|"})
    result = explain(tiny, fields, template="cqa", method="saliency", top_k=100, max_new_tokens=2)
    prompt = render("cqa", fields)
    inputs = [w for w in result.words if w.is_input and not w.is_punct]
    assert [w.text for w in result.rationale] == [w.text for w in inputs]  # k > count: all
    for w in result.rationale:
        assert any(a <= w.start and w.end <= b for a, b in result.input_spans)
        assert not w.is_punct and any(ch.isalnum() for ch in w.text)
        assert w.text not in {"Question", "Answer", "choices", "correct"}
    template_words = {w.text for w in result.words if not w.is_input}
    assert {"Question", "Answer", "choices"} <= template_words
    assert "Where" in prompt.text


@pytest.mark.parametrize(
    "template,fields",
    [
        ("free", {"text": ""}),
        ("free", {"text": "  \n\t "}),
        ("cqa", {"question": " ", "choices": "a|b"}),
        ("nli", {"premise": "p", "hypothesis": "   "}),
        ("cqa", {"question": "q", "choices": "only"}),
    ],
)
def test_empty_input_rejected(tiny, template, fields):
    with pytest.raises(InputError, match="empty|choices"):
        explain(tiny, fields, template=template)


def test_unknown_template():
    with pytest.raises(InputError, match="unknown template"):
        get_template("poem")


def test_long_input_truncated_with_warning(tiny):
    text = " ".join(["apples and plates"] * 200)  # far past the tiny models' 256 positions
    result = explain(tiny, {"text": text}, template="free", method="saliency", max_new_tokens=3)
    assert result.warnings and "truncated" in result.warnings[0]
    assert len(result.input_tokens) + len(result.output_tokens) <= 256
    assert len(result.rationale) == 5


def test_result_json_roundtrip(tiny):
    from explain.result import AttributionResult

    result = explain(
        tiny,
        {"premise": "A dog runs.", "hypothesis": "An animal moves."},
        template="nli",
        method="input_x_gradient",
        max_new_tokens=2,
    )
    back = AttributionResult.from_dict(__import__("json").loads(result.to_json()))
    assert back == result
    one = result.for_output(0)
    assert one.token_scores == result.matrix[0]


def _two_words(how=None):
    # "a" is one piece scoring 1.0; "xyz" is three pieces of 0.5 each
    text = "a xyz"
    offsets = [(0, 1), (1, 3), (3, 4), (4, 5)]
    scores, special = [1.0, 0.5, 0.5, 0.5], [False] * 4
    kwargs = {} if how is None else {"piece_aggregation": how}
    return merge_words(text, offsets, scores, special, [(0, 5)], **kwargs)


def test_default_piece_aggregation_does_not_favour_multi_piece_words():
    from explain.words import DEFAULT_PIECE_AGGREGATION

    assert DEFAULT_PIECE_AGGREGATION != "sum"
    assert [w.text for w in select_rationale(_two_words(), 1)] == ["a"]
    assert [w.text for w in select_rationale(_two_words("sum"), 1)] == ["xyz"]  # 1.5 > 1.0
    assert [w.score for w in _two_words("mean")] == [1.0, 0.5]
    with pytest.raises(InputError, match="unknown piece aggregation 'median'"):
        _two_words("median")


def test_piece_aggregation_is_recorded_and_reused(tiny):
    from explain.result import AttributionResult

    for how in ("sum", "max"):
        result = explain(
            tiny,
            {"text": "Über-cool e-mail from Sam"},
            answer="yes",
            method="input_x_gradient",
            piece_aggregation=how,
        )
        assert result.settings["piece_aggregation"] == how
        multi = next(w for w in result.words if len(w.tokens) > 1)
        agg = sum if how == "sum" else max
        assert multi.score == pytest.approx(agg(result.token_scores[i] for i in multi.tokens))
        one = result.for_output(0)  # re-scoring one answer row keeps the recorded aggregation
        w0 = next(w for w in one.words if w.text == multi.text)
        assert w0.score == pytest.approx(agg(result.matrix[0][i] for i in multi.tokens))
        assert result.word_matrix()[0] == [w.score for w in one.words]
    old = result.to_dict()
    del old["settings"]["piece_aggregation"]  # results saved before the setting: sums
    assert AttributionResult.from_dict(old).piece_aggregation == "sum"
