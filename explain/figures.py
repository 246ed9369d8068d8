"""Display objects for one AttributionResult: plotly figures and self-contained HTML snippets.

Pure functions: nothing here runs a model. Every string that came from the user or the
tokenizer is HTML-escaped, because plotly renders a subset of HTML in labels and the app shows
the snippets as raw HTML.
"""

from __future__ import annotations

import html
import math
import unicodedata

import plotly.graph_objects as go

from .result import AttributionResult
from .words import Word

# Fallback when the method registry cannot say (e.g. a result from a method not installed
# here): these produce signed scores; saliency is a gradient norm, never negative.
SIGNED_METHODS = frozenset({"input_x_gradient", "integrated_gradients", "occlusion"})

# One palette for every figure: blue = positive, red = negative, orange = magnitude.
POSITIVE_RGB = (33, 102, 172)
NEGATIVE_RGB = (178, 24, 43)
MAGNITUDE_RGB = (230, 85, 13)
TEMPLATE_COLOUR = "#8a8a8a"
RATIONALE_BAR = "#08519c"
OTHER_BAR = "#bdbdbd"

COL_PX = 18  # heatmap width per column, so 200 columns stay legible (the container scrolls)
ROW_PX = 24
LABEL_CHARS = 24


# ----------------------------------------------------------------------------- helpers


def is_signed(result: AttributionResult) -> bool:
    """Whether the method's scores carry a sign (diverging colours) or are magnitudes."""
    try:
        from .attr import METHODS

        if result.method in METHODS:
            return bool(METHODS[result.method].signed)
    except Exception:  # registry unavailable (no torch): fall back to the known names
        pass
    if result.method in SIGNED_METHODS:
        return True
    if result.method == "saliency":
        return False
    return any(v < 0 for row in result.matrix for v in row)


def label(text: str, limit: int = LABEL_CHARS) -> str:
    """A short, visible, HTML-escaped label for a token or word (plotly reads HTML)."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥").strip(" ")
    shown = "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in shown
    )
    if not shown:
        shown = "␣"
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown)


def row_labels(result: AttributionResult) -> list[str]:
    """Answer-token labels, prefixed by index: plotly merges equal category labels."""
    return [f"{i}: {label(t)}" for i, t in enumerate(result.output_tokens)]


def token_words(result: AttributionResult) -> list[Word | None]:
    """For each input token, the word it belongs to (None: special or whitespace-only)."""
    owner: list[Word | None] = [None] * len(result.input_tokens)
    for w in result.words:
        for i in w.tokens:
            if 0 <= i < len(owner):
                owner[i] = w
    return owner


def input_word_columns(result: AttributionResult) -> list[int]:
    """Indices into ``result.words`` of the task-input words (template text excluded)."""
    return [i for i, w in enumerate(result.words) if w.is_input]


def input_token_columns(result: AttributionResult) -> list[int]:
    """Indices of input tokens inside task-input words (no template, special or blank pieces)."""
    return [i for i, w in enumerate(token_words(result)) if w is not None and w.is_input]


def _finite(v: float) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _scale(scores: list[float]) -> float:
    """Max |score|, the normaliser for colour intensity (1.0 when all are zero)."""
    m = max((abs(_finite(s)) for s in scores), default=0.0)
    return m if m > 0 else 1.0


def score_colour(score: float, scale: float, signed: bool, floor: float = 0.0) -> str:
    """Background colour whose opacity is |score| / scale; hue by sign (or one hue)."""
    s = _finite(score)
    alpha = min(1.0, abs(s) / scale) if scale > 0 else 0.0
    alpha = max(floor, alpha)
    rgb = (POSITIVE_RGB if s >= 0 else NEGATIVE_RGB) if signed else MAGNITUDE_RGB
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _ink(score: float, scale: float) -> str:
    # White text on dark backgrounds keeps strong words readable.
    return "#ffffff" if abs(_finite(score)) / scale > 0.6 else "inherit"


def fmt(v: float) -> str:
    return f"{v:.3g}"


def _empty_figure(message: str, title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
    )
    fig.update_layout(title=title, width=600, height=240, xaxis_visible=False, yaxis_visible=False)
    return fig


def _top_columns(scores: list[float], keep: list[int], n: int) -> list[int]:
    """The ``n`` kept columns with the largest |score|, back in input order."""
    ranked = sorted(keep, key=lambda c: (-abs(_finite(scores[c])), c))[:n]
    return sorted(ranked)


# ----------------------------------------------------------------------------- figures


def heatmap(
    result: AttributionResult,
    level: str = "word",
    max_cols: int | None = None,
    input_only: bool = True,
) -> go.Figure:
    """Answer tokens (rows) x input words or tokens (columns), coloured by score.

    ``input_only`` keeps task-input columns (no template text); special tokens are never
    shown. ``max_cols`` keeps the columns with the largest aggregated |score|, in input order.
    The figure is ``max(600, 18 * columns)`` px wide: put it in a scrolling container.
    """
    if level == "word":
        full = result.word_matrix()
        names = [w.text for w in result.words]
        col_scores = [w.score for w in result.words]
        keep = input_word_columns(result) if input_only else list(range(len(result.words)))
    elif level == "token":
        full = result.matrix
        names = list(result.input_tokens)
        col_scores = list(result.token_scores)
        keep = (
            input_token_columns(result)
            if input_only
            else [i for i, o in enumerate(result.input_offsets) if o is not None]
        )
    else:
        raise ValueError(f"level must be 'word' or 'token', not {level!r}")

    signed = is_signed(result)
    title = f"{result.method}: answer tokens × input {level}s"
    if not keep:
        return _empty_figure(f"no task-input {level}s to show", title)
    total = len(keep)
    if max_cols is not None and max_cols > 0 and total > max_cols:
        keep = _top_columns(col_scores, keep, max_cols)
        title += f" (top {len(keep)} of {total} by |score|)"

    rows = row_labels(result)
    z = [[full[r][c] for c in keep] for r in range(len(full))]
    hover = [
        [
            f"answer token {rows[r]}<br>{level}: {html.escape(names[c])}<br>score: {full[r][c]!r}"
            for c in keep
        ]
        for r in range(len(full))
    ]
    # Columns are numeric positions with text ticks: equal words ("a", "the") stay apart.
    x = list(range(len(keep)))
    trace = go.Heatmap(
        z=z,
        x=x,
        y=rows,
        text=hover,
        hoverinfo="text",
        colorscale="RdBu" if signed else "Oranges",
        colorbar={"title": {"text": "score"}},
    )
    if signed:
        trace.update(zmid=0)  # white = no effect; red against, blue toward the answer
    else:
        trace.update(zmin=0)
    fig = go.Figure(trace)
    width = max(600, COL_PX * len(keep))
    fig.update_layout(
        title=title,
        width=width,
        height=max(320, ROW_PX * len(rows) + 200),
        margin={"l": 120, "r": 40, "t": 60, "b": 140},
        xaxis={
            "tickmode": "array",
            "tickvals": x,
            "ticktext": [label(names[c]) for c in keep],
            "tickangle": -60,
            "tickfont": {"size": 11},
            "showgrid": False,
        },
        yaxis={"autorange": "reversed", "type": "category", "showgrid": False},
    )
    return fig


def top_words(result: AttributionResult, n: int = 10) -> list[Word]:
    """The ``n`` highest-scoring task-input words (non-punctuation), best first."""
    cands = [w for w in result.words if w.is_input and not w.is_punct]
    order = sorted(range(len(cands)), key=lambda i: (-_finite(cands[i].score), i))
    return [cands[i] for i in order[:n]]


def _rationale_keys(result: AttributionResult) -> set[tuple[int, int]]:
    return {(w.start, w.end) for w in result.rationale}


def top_words_bar(result: AttributionResult, n: int = 10) -> go.Figure:
    """Horizontal bars for the top-``n`` input words, best at the top; rationale in blue."""
    words = top_words(result, n)
    title = f"Top {n} input words ({result.method})"
    if not words:
        return _empty_figure("no task-input words to rank", title)
    rat = _rationale_keys(result)
    fig = go.Figure()
    for name, colour, want in (
        ("rationale", RATIONALE_BAR, True),
        ("other words", OTHER_BAR, False),
    ):
        idx = [i for i, w in enumerate(words) if ((w.start, w.end) in rat) == want]
        if not idx:
            continue
        fig.add_trace(
            go.Bar(
                x=[words[i].score for i in idx],
                y=idx,
                orientation="h",
                name=name,
                marker_color=colour,
                customdata=[words[i].text for i in idx],
                hovertext=[
                    f"{html.escape(words[i].text)}<br>score: {words[i].score!r}" for i in idx
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title,
        width=600,
        height=max(260, 28 * len(words) + 120),
        margin={"l": 140, "r": 30, "t": 60, "b": 40},
        yaxis={
            "tickmode": "array",
            "tickvals": list(range(len(words))),
            "ticktext": [label(w.text) for w in words],
            "autorange": "reversed",
        },
        xaxis={"title": {"text": "score"}, "zeroline": True},
        legend={"orientation": "h", "y": -0.15},
        barmode="overlay",
    )
    return fig


# ----------------------------------------------------------------------------- HTML


def _text_html(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _legend_html(signed: bool, scale: float, method: str) -> str:
    def swatch(rgb: tuple[int, int, int]) -> str:
        return (
            f'<span style="display:inline-block;width:2.2em;height:0.9em;'
            f"vertical-align:middle;border-radius:2px;background:linear-gradient(90deg,"
            f'rgba({rgb[0]},{rgb[1]},{rgb[2]},0.05),rgb({rgb[0]},{rgb[1]},{rgb[2]}))">'
            f"</span>"
        )

    if signed:
        colours = (
            f"{swatch(POSITIVE_RGB)} toward the answer (positive) &nbsp; "
            f"{swatch(NEGATIVE_RGB)} against it (negative)"
        )
    else:
        colours = f"{swatch(MAGNITUDE_RGB)} importance (gradient magnitude)"
    return (
        '<div class="kd-legend" style="font-size:0.85em;margin-top:0.6em;opacity:0.9">'
        f"{html.escape(method)}: {colours}; intensity = |score| / {fmt(scale)} &nbsp;·&nbsp; "
        '<b style="text-decoration:underline">bold underlined</b> = rationale &nbsp;·&nbsp; '
        f'<span style="color:{TEMPLATE_COLOUR}">grey</span> = template text'
        "</div>"
    )


def highlight_html(result: AttributionResult) -> str:
    """The task-input region of the prompt, each word shaded by its score, with a legend.

    Spans from the first input span's start to the last one's end, so template text between
    fields (e.g. "(b)") shows in grey; hover a word for its exact score. A long input is
    shortened in its middle before the model sees it (explain.formatting), so the prompt shown
    is exactly what the model read.
    """
    prompt = result.prompt
    spans = result.input_spans or [[0, len(prompt)]]
    a, b = min(s[0] for s in spans), max(s[1] for s in spans)
    signed = is_signed(result)
    scale = _scale([w.score for w in result.words if w.is_input])
    rat = _rationale_keys(result)
    parts, pos = [], a
    for w in sorted(result.words, key=lambda w: w.start):
        if w.start < pos or w.end > b:
            continue
        parts.append(_text_html(prompt[pos : w.start]))
        text = _text_html(prompt[w.start : w.end])
        if not w.is_input:
            parts.append(f'<span style="color:{TEMPLATE_COLOUR}">{text}</span>')
        else:
            is_rat = (w.start, w.end) in rat
            style = (
                f"background:{score_colour(w.score, scale, signed)};"
                f"color:{_ink(w.score, scale)};border-radius:3px;padding:0 1px;"
            )
            if is_rat:
                style += "font-weight:700;text-decoration:underline;"
            cls = "kd-word kd-rationale" if is_rat else "kd-word"
            title = html.escape(f"{w.text}: {w.score!r}", quote=True)
            parts.append(f'<span class="{cls}" title="{title}" style="{style}">{text}</span>')
        pos = w.end
    parts.append(_text_html(prompt[pos:b]))
    body = "".join(parts)
    return (
        '<div class="kd-highlight-wrap">'
        '<div class="kd-highlight" style="line-height:1.9;overflow-wrap:anywhere;'
        f'font-size:1em">{body}</div>'
        f"{_legend_html(signed, scale, result.method)}</div>"
    )


def rationale_html(result: AttributionResult) -> str:
    """The rationale words as small chips, in input order, each with its score."""
    if not result.rationale:
        return '<div class="kd-chips"><em>no rationale words</em></div>'
    signed = is_signed(result)
    scale = _scale([w.score for w in result.words if w.is_input])
    chips = []
    for w in result.rationale:
        title = html.escape(f"{w.text}: {w.score!r}", quote=True)
        bg = score_colour(w.score, scale, signed, floor=0.15)
        chips.append(
            f'<span class="kd-chip" title="{title}" style="display:inline-block;'
            f"margin:2px 6px 2px 0;padding:2px 10px;border-radius:999px;background:{bg};"
            f'color:{_ink(w.score, scale)};border:1px solid rgba(0,0,0,0.15)">'
            f'<b>{html.escape(w.text)}</b> <small style="opacity:0.8">{fmt(w.score)}</small>'
            "</span>"
        )
    return f'<div class="kd-chips">{"".join(chips)}</div>'
