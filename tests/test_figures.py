"""Figures and HTML snippets built from real (tiny-model) and synthetic attribution results."""

from __future__ import annotations

import html
import re

import pytest
import tiny

from explain import figures
from explain.pipeline import explain
from explain.result import AttributionResult
from explain.words import merge_words, select_rationale

CQA = {
    "question": "Where would you put a <script> plate after washing it?",
    "choices": "cupboard|table|sink|restaurant|kitchen",
}


@pytest.fixture(scope="module")
def llama():
    return tiny.loaded("llama")


@pytest.fixture(scope="module")
def saliency(llama) -> AttributionResult:
    return explain(llama, CQA, template="cqa", method="saliency", top_k=3, max_new_tokens=4,
                   token_matrix=True)  # fmt: skip


@pytest.fixture(scope="module")
def signed(llama) -> AttributionResult:
    # A given answer with a repeated token: row labels must still be unique.
    return explain(llama, CQA, template="cqa", method="input_x_gradient", top_k=3,
                   answer="table table", token_matrix=True)  # fmt: skip


def synthetic(n_words: int = 200, method: str = "input_x_gradient") -> AttributionResult:
    """A result with one token per word and known, distinct scores (no model needed)."""
    prefix = "Text: "
    body = " ".join(f"w{i}" for i in range(n_words))
    prompt = prefix + body + "\nAnswer:"
    offsets = [m.span() for m in re.finditer(r"\S+", prompt)]
    n = len(offsets)
    neg = -1 if method != "saliency" else 1  # signed methods: every third column negative
    matrix = [
        [(neg if i % 3 == 0 else 1) * (i + 1) / n * (1 + r / 10) for i in range(n)]
        for r in range(3)
    ]
    scores = [sum(col) / 3 for col in zip(*matrix, strict=True)]
    spans = [(len(prefix), len(prefix) + len(body))]
    words = merge_words(prompt, offsets, scores, [False] * n, spans)
    return AttributionResult(
        prompt=prompt,
        answer="yes yes",
        method=method,
        model="synthetic",
        template="free",
        input_tokens=[prompt[a:b] for a, b in offsets],
        input_offsets=[list(o) for o in offsets],
        output_tokens=[" yes", " yes", "\n"],
        matrix=matrix,
        token_scores=scores,
        words=words,
        rationale=select_rationale(words, 5),
        input_spans=[list(s) for s in spans],
        settings={"top_k": 5},
    )


def input_words(r: AttributionResult):
    return [w for w in r.words if w.is_input]


# ----------------------------------------------------------------------------- heatmap


@pytest.mark.parametrize("which", ["saliency", "signed"])
def test_heatmap_word_z_is_word_matrix_on_input_columns(which, request):
    r = request.getfixturevalue(which)
    fig = figures.heatmap(r)
    tr = fig.data[0]
    cols = [i for i, w in enumerate(r.words) if w.is_input]
    wm = r.word_matrix()
    assert [list(row) for row in tr.z] == [[row[c] for c in cols] for row in wm]
    ticks = [html.unescape(t) for t in fig.layout.xaxis.ticktext]
    assert ticks == [r.words[c].text for c in cols]
    assert "Question" not in ticks and "Answer" not in ticks  # template words excluded
    assert fig.layout.width == max(600, 18 * len(cols))


def test_heatmap_token_level_equals_matrix_columns(saliency):
    r = saliency
    fig = figures.heatmap(r, level="token")
    cols = figures.input_token_columns(r)
    assert cols and len(cols) < len(r.input_tokens)  # template tokens dropped
    assert [list(row) for row in fig.data[0].z] == [[row[c] for c in cols] for row in r.matrix]
    for c in cols:  # every kept token lies inside a task-input span
        a, b = r.input_offsets[c]
        assert any(s <= b and a < e for s, e in r.input_spans)
    full = figures.heatmap(r, level="token", input_only=False)
    assert len(full.data[0].z[0]) == sum(o is not None for o in r.input_offsets)


def test_heatmap_rows_unique_and_hover_has_exact_score(signed):
    r = signed
    assert len(r.output_tokens) != len(set(r.output_tokens))  # the case plotly would merge
    fig = figures.heatmap(r)
    y = list(fig.data[0].y)
    assert len(y) == len(r.output_tokens) == len(set(y))
    assert all(lab.startswith(f"{i}: ") for i, lab in enumerate(y))
    cols = [i for i, w in enumerate(r.words) if w.is_input]
    wm = r.word_matrix()
    for row in range(len(y)):
        for k in (0, len(cols) - 1):
            text = fig.data[0].text[row][k]
            assert f"score: {wm[row][cols[k]]!r}" in text
            assert html.escape(r.words[cols[k]].text) in text
            assert y[row] in text


def test_heatmap_colour_scales(saliency, signed):
    s = figures.heatmap(saliency).data[0]
    d = figures.heatmap(signed).data[0]
    assert d.zmid == 0 and d.colorscale != s.colorscale
    assert s.zmin == 0 and s.zmid is None


def test_heatmap_200_words_is_wide_and_angled():
    r = synthetic(200)
    fig = figures.heatmap(r)
    assert len(fig.data[0].z[0]) == 200
    assert fig.layout.width == 18 * 200
    assert fig.layout.xaxis.tickangle == -60
    assert len(set(fig.data[0].y)) == 3  # " yes", " yes", "\n" stay three rows
    assert fig.data[0].y[2] == "2: ⏎"


def test_heatmap_max_cols_keeps_largest_in_order():
    r = synthetic(50)
    fig = figures.heatmap(r, max_cols=10)
    ticks = list(fig.layout.xaxis.ticktext)
    words = input_words(r)
    best = sorted(words, key=lambda w: -abs(w.score))[:10]
    assert ticks == [w.text for w in sorted(best, key=lambda w: w.start)]
    assert fig.layout.width == 600
    with pytest.raises(ValueError):
        figures.heatmap(r, level="char")


# ----------------------------------------------------------------------------- bar chart


@pytest.mark.parametrize("which", ["saliency", "signed"])
def test_top_words_bar(which, request):
    r = request.getfixturevalue(which)
    fig = figures.top_words_bar(r, n=5)
    bars = [
        (y, x, name)
        for tr in fig.data
        for y, x, name in zip(tr.y, tr.x, tr.customdata, strict=True)
    ]
    assert len(bars) == 5
    top = max((w for w in r.words if w.is_input and not w.is_punct), key=lambda w: w.score)
    first = min(bars)  # position 0 is drawn at the top (reversed axis)
    assert first[2] == top.text and first[1] == top.score
    assert fig.layout.yaxis.autorange == "reversed"
    assert [b[1] for b in sorted(bars)] == sorted((b[1] for b in bars), reverse=True)
    rat = next(tr for tr in fig.data if tr.name == "rationale")
    other = [tr for tr in fig.data if tr.name != "rationale"]
    assert set(rat.customdata) <= {w.text for w in r.rationale}
    assert all(tr.marker.color != rat.marker.color for tr in other)


# ----------------------------------------------------------------------------- HTML


def test_highlight_escapes_and_contains_every_input_word(saliency):
    r = saliency
    out = figures.highlight_html(r)
    assert "<script>" not in out and "&lt;" in out
    for w in input_words(r):
        assert html.escape(w.text) in out
    assert not out.count("Question:")  # the region starts at the first input span
    assert "<br>" in out  # choices sit on their own lines
    assert 'class="kd-legend"' in out


def test_highlight_marks_rationale_and_titles_scores(signed):
    r = signed
    out = figures.highlight_html(r)
    marked = re.findall(r'<span class="kd-word kd-rationale" title="([^"]*)"', out)
    assert len(marked) == len(r.rationale)
    for w, title in zip(r.rationale, marked, strict=True):
        assert html.unescape(title) == f"{w.text}: {w.score!r}"
    assert out.count("font-weight:700;text-decoration:underline") == len(r.rationale)
    n_input = len(input_words(r))
    assert out.count('class="kd-word') == n_input


def test_highlight_colours_follow_sign():
    r = synthetic(12)
    out = figures.highlight_html(r)
    neg = [w for w in input_words(r) if w.score < 0]
    pos = [w for w in input_words(r) if w.score > 0]
    assert neg and pos
    assert "rgba(178,24,43," in out and "rgba(33,102,172," in out
    top = max(input_words(r), key=lambda w: abs(w.score))
    col = figures.score_colour(top.score, abs(top.score), True)
    assert col.endswith(",1.000)")  # the largest |score| gets full intensity
    sal = figures.highlight_html(synthetic(12, method="saliency"))
    assert "rgba(230,85,13," in sal and "rgba(178,24,43," not in sal


def test_rationale_html_chips(signed):
    r = signed
    out = figures.rationale_html(r)
    assert out.count('class="kd-chip"') == len(r.rationale)
    for w in r.rationale:
        assert f"<b>{html.escape(w.text)}</b>" in out
        assert figures.fmt(w.score) in out


def test_long_input_is_cut_in_the_middle_and_shown_as_seen(llama):
    text = " ".join(f"w{i} apples to Ann." for i in range(200))
    r = explain(llama, {"text": text}, template="free", method="saliency", max_new_tokens=2)
    assert any("truncated" in w for w in r.warnings)
    shown = r.prompt[r.input_spans[0][0] : r.input_spans[0][1]]
    head, tail = shown.split(" … ")
    assert text.startswith(head) and text.endswith(tail)  # both ends of the input kept
    out = figures.highlight_html(r)
    assert "kd-truncated" not in out  # the model saw every character of the prompt
    assert out.count('class="kd-word') == len(input_words(r))
