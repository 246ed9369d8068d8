"""Overlap tab: how the teacher's rationale words relate to the gold answer and to human
rationales, each figure next to its random-k baseline, and the examples page by page."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from distill.data import DataError
from explain.errors import InputError

from .common import AppContext, file_path, guarded, num, one_of, shorten, whole
from .paths import discard_upload


def rationale_sources(root: Path) -> list[tuple[str, str]]:
    """(label, path) of every rationales.jsonl under the runs folder (experiment stages
    included, labelled ``<experiment>/<stage>``), newest first."""
    found = []
    if root.is_dir():
        for p in [*root.glob("*/rationales.jsonl"), *root.glob("*/*/rationales.jsonl")]:
            found.append((p.stat().st_mtime, p))
    found.sort(reverse=True)
    return [(p.parent.relative_to(root).as_posix(), str(p)) for _, p in found]


def overlap_source(ctx: AppContext, choice: str | None, upload: str | None) -> Path:
    """The rationale file to analyse: an upload wins over the picked/typed path; a typed path
    must lie inside the runs or datasets folder."""
    if upload:
        p = ctx.paths.check(upload)
        if p.suffix.lower() not in (".jsonl", ".json"):
            discard_upload(p)
            raise DataError(f"{p.name}: upload a rationales .jsonl file")
        return p
    if not isinstance(choice, str) or not choice.strip():
        raise InputError("pick a rationale file from a run, type its path, or upload one")
    return ctx.paths.check(choice)


@dataclass
class OverlapView:
    summary: pd.DataFrame
    summary_fig: go.Figure
    histograms: go.Figure
    rows: list[dict]  # per-example figures
    records: list[dict]  # the rationale records, same order
    note: str


def overlap_view(path: Path, seed: int = 0, n_random: int = 10) -> OverlapView:
    from distill.overlap import load_rationales, overlap_report

    records = load_rationales(path)
    if not records:
        raise DataError(f"{path.name}: no rationale records")
    report = overlap_report(records, seed=seed, n_random=n_random)
    summary = report.summary_dataframe()
    for col in ("rationale", "random"):
        if col in summary:
            summary[col] = [round(v, 4) if num(v) is not None else None for v in summary[col]]
    note = f"{len(records)} examples from `{path}`"
    acc = report.summary.get("teacher_accuracy")
    if num(acc) is not None:
        note += f" · teacher accuracy {acc:.3f}"
    return OverlapView(
        summary=summary,
        summary_fig=overlap_summary_figure(report.summary),
        histograms=overlap_histograms(report.per_example),
        rows=report.per_example,
        records=records,
        note=note,
    )


def overlap_summary_figure(summary: dict) -> go.Figure:
    """Each figure's mean for the rationale next to its random-k baseline."""
    names = [k for k, v in summary.items() if isinstance(v, dict)]
    fig = go.Figure()
    for key, colour in (("rationale", "#2166ac"), ("random", "#bdbdbd")):
        vals = [num(summary[n].get(key)) for n in names]
        fig.add_trace(go.Bar(
            x=names, y=vals, name="teacher rationale" if key == "rationale" else "random-k",
            marker_color=colour, text=[f"{v:.2f}" if v is not None else "" for v in vals],
            textposition="outside",
            hovertext=[f"{n}: {v!r} (n={summary[n].get('n')})" for n, v in zip(names, vals)],
            hoverinfo="text",
        ))  # fmt: skip
    fig.update_traces(cliponaxis=False)  # value labels above the tallest bar stay visible
    fig.update_layout(
        barmode="group", height=340, title="dataset figures: rationale vs random-k",
        margin={"l": 40, "r": 20, "t": 70, "b": 60}, legend={"orientation": "h", "y": -0.2},
    )  # fmt: skip
    return fig


HIST_FIGURES = ("precision", "recall", "human_f1", "auprc", "comprehensiveness", "sufficiency")


def overlap_histograms(rows: list[dict]) -> go.Figure:
    """Per-example distributions of each figure: rationale vs random-k (only defined ones)."""
    from plotly.subplots import make_subplots

    names = [n for n in HIST_FIGURES if any(num(r.get(n)) is not None for r in rows)]
    if not names:
        fig = go.Figure()
        fig.add_annotation(text="no per-example figures defined", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")  # fmt: skip
        return fig.update_layout(height=200)
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        for key, colour, label_ in ((name, "#2166ac", "teacher rationale"),
                                    (f"random_{name}", "#969696", "random-k")):  # fmt: skip
            vals = [v for v in (num(row.get(key)) for row in rows) if v is not None]
            fig.add_trace(go.Histogram(x=vals, name=label_, marker_color=colour, opacity=0.65,
                                       nbinsx=20, legendgroup=label_, showlegend=i == 0),
                          row=r, col=c)  # fmt: skip
    fig.update_layout(
        barmode="overlay",
        height=260 * nrows + 60,
        margin={"l": 40, "r": 20, "t": 60, "b": 40},
        title="per-example distributions",
        legend={"orientation": "h", "y": -0.1},
    )
    return fig


def definitions_markdown() -> str:
    from distill.overlap import DEFINITIONS

    return "\n".join(f"- **{k}**: {html.escape(v)}" for k, v in DEFINITIONS.items())


OVERLAP_FILTERS = ("all", "hits", "misses")


def _record_text(rec: dict) -> str:
    """The task input of a rationale record, as plain text."""
    f = rec.get("fields") or {}
    parts = []
    for key in ("text", "question", "premise", "hypothesis", "body"):
        if f.get(key):
            parts.append(str(f[key]))
    if f.get("choices"):
        parts.append(" | ".join(map(str, f["choices"])))
    if parts:
        return "\n".join(parts)
    for key in ("input", "text", "question"):
        if isinstance(rec.get(key), str):
            return rec[key]
    words = [w["text"] for w in rec.get("words") or [] if w.get("is_input", True)]
    return " ".join(words)


def _marked(text: str, rationale: set[str], gold: set[str]) -> str:
    """Input text with rationale words highlighted and gold-answer words underlined."""
    from distill.overlap import norm_word
    from explain.words import WORD_RE

    out, pos = [], 0
    for m in WORD_RE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        w, key = m.group(), norm_word(m.group())
        cls = [c for c, on in (("kd-r", key in rationale), ("kd-g", key in gold)) if on]
        esc = html.escape(w)
        out.append(f'<span class="{" ".join(cls)}">{esc}</span>' if cls and key else esc)
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out).replace("\n", "<br>")


def overlap_page(
    rows: list[dict], records: list[dict], page: int = 1, per_page: int = 20,
    show: str = "all",
) -> tuple[str, int]:  # fmt: skip
    """One page of the examples table as HTML, and the number of pages."""
    from distill.overlap import text_words, words_of

    pairs = list(zip(rows, records))
    if show == "hits":
        pairs = [p for p in pairs if p[0].get("hit") is True]
    elif show == "misses":
        pairs = [p for p in pairs if p[0].get("hit") is False]
    pages = max(1, math.ceil(len(pairs) / per_page))
    page = min(max(int(page or 1), 1), pages)
    body = []
    for row, rec in pairs[(page - 1) * per_page : page * per_page]:
        rat = set(words_of(row["rationale"]))
        gold = set(text_words(row["gold"]))
        hit = {True: "✓", False: "✗"}.get(row.get("hit"), "—")
        teacher = rec.get("teacher_answer")
        body.append(
            "<tr>"
            f"<td title='{html.escape(str(row['id']), quote=True)}'>"
            f"{html.escape(shorten(row['id'], 14))}</td>"
            f"<td class='kd-input'>{_marked(_record_text(rec), rat, gold)}</td>"
            f"<td>{html.escape(' '.join(row['rationale']))}</td>"
            f"<td><span class='kd-g'>{html.escape(row['gold'])}</span></td>"
            f"<td>{html.escape(str(teacher)) if teacher is not None else '—'}</td>"
            f"<td>{hit}</td>"
            f"<td>{_cell(row.get('precision'))}</td><td>{_cell(row.get('human_f1'))}</td>"
            "</tr>"
        )
    if not body:
        body.append("<tr><td colspan='8'><em>no examples</em></td></tr>")
    head = ("<tr><th>id</th><th>input (<span class='kd-r'>rationale</span>, "
            "<span class='kd-g'>gold answer</span>)</th><th>rationale</th><th>gold</th>"
            "<th>teacher</th><th>hit</th><th>precision</th><th>human F1</th></tr>")  # fmt: skip
    table = (f"<div class='kd-scroll'><table class='kd-table'>{head}{''.join(body)}"
             f"</table></div><div class='kd-card-sub'>page {page} of {pages} · "
             f"{len(pairs)} examples</div>")  # fmt: skip
    return table, pages


def _cell(v) -> str:
    v = num(v)
    return "—" if v is None else f"{v:.2f}"


# ---------------------------------------------------------------------------------------------
# UI


def layout(ctx: AppContext, ui: dict) -> None:
    gr.Markdown(
        "How the teacher's rationale words relate to the gold answer and to human "
        "rationales, each figure next to its random-k baseline."
    )
    with gr.Row(elem_classes=["kd-stack"]):
        ui["ov_src"] = gr.Dropdown(
            rationale_sources(ctx.runs_root), label="Rationale file (from a run)",
            allow_custom_value=True, info="or type a path inside the runs folder",
        )  # fmt: skip
        ui["ov_upload"] = gr.File(label="…or upload rationales.jsonl", height=120,
                                  file_types=[".jsonl", ".json"])  # fmt: skip
    ui["ov_btn"] = gr.Button("Analyse", variant="primary", elem_id="kd-overlap")
    ui["ov_status"] = gr.Markdown()
    ui["ov_table"] = gr.Dataframe(label="Dataset figures", interactive=False)
    with gr.Row(elem_classes=["kd-stack"]):
        ui["ov_fig"] = gr.Plot(label="Rationale vs random-k")
    ui["ov_hist"] = gr.Plot(label="Distributions")
    with gr.Row():
        ui["ov_show"] = gr.Radio(list(OVERLAP_FILTERS), value="all", label="Show")
        ui["ov_page"] = gr.Number(1, precision=0, minimum=1, label="Page")
    ui["ov_examples"] = gr.HTML()
    ui["ov_state"] = gr.State(None)
    with gr.Accordion("Definitions", open=True):
        gr.Markdown(definitions_markdown())


def wire(ctx: AppContext, ui: dict) -> None:
    @guarded("overlap", 7)
    def on_overlap(choice, up, show):
        one_of(show, "filter", OVERLAP_FILTERS)
        up = file_path(up)
        path = overlap_source(ctx, choice, up)
        try:
            view = overlap_view(path)
        except DataError:
            if up:
                discard_upload(path)  # a rejected upload does not stay behind
            raise
        page, _ = overlap_page(view.rows, view.records, 1, show=show)
        state = {"rows": view.rows, "records": view.records}
        return (view.note, view.summary, view.summary_fig, view.histograms, page, 1, state)

    ui["ov_btn"].click(
        on_overlap, [ui["ov_src"], ui["ov_upload"], ui["ov_show"]],
        [ui["ov_status"], ui["ov_table"], ui["ov_fig"], ui["ov_hist"], ui["ov_examples"],
         ui["ov_page"], ui["ov_state"]],
        api_name="overlap", concurrency_id="overlap", concurrency_limit=2, preprocess=False,
    )  # fmt: skip

    @guarded("overlap page", 2)
    def on_page(state, page, show):
        page = whole(1 if page is None else page, "page", 1)
        one_of(show, "filter", OVERLAP_FILTERS)
        if not state:
            return gr.skip(), gr.skip()
        html_, _ = overlap_page(state["rows"], state["records"], page, show=show)
        return gr.skip(), html_

    for trigger, name in ((ui["ov_page"].change, "overlap_page"), (ui["ov_show"].change, None)):
        trigger(on_page, [ui["ov_state"], ui["ov_page"], ui["ov_show"]],
                [ui["ov_status"], ui["ov_examples"]], api_name=name,
                api_visibility="public" if name else "private",
                concurrency_limit=None, preprocess=False)  # fmt: skip
