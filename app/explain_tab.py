"""Explain tab: the teacher's answer, the input shaded by word score, the heatmap of answer
tokens x input words, the top-k rationale, one answer token at a time, and exports."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go

from explain.attr import METHODS
from explain.errors import InputError
from explain.limits import check_input, check_tokens
from explain.packs import DEFAULT_STUDENT
from explain.result import AttributionResult

from . import forms
from .common import AppContext, error_md, gradio_progress, guarded, one_of, short_spec, whole
from .paths import new_export_folder

ALL_TOKENS = "all"
MAX_K = 20
# On a CPU a teacher this large takes tens of seconds per answer: suggest a smaller one.
LARGE_TEACHER_PARAMS = 1_000_000_000


def token_choices(result: AttributionResult) -> list[tuple[str, str]]:
    """(label, value) for the answer-token picker: all tokens, then each token by index."""
    from explain.figures import label

    out = [("all answer tokens", ALL_TOKENS)]
    for i, t in enumerate(result.output_tokens):
        out.append((f"{i}: {html.unescape(label(t, 16))}", str(i)))
    return out


def pick_token(result: AttributionResult, token: str | int | None) -> AttributionResult:
    """The result scored by one answer token (``token`` an index), or as is for 'all'."""
    if token in (None, "", ALL_TOKENS):
        return result
    try:
        t = int(str(token).split(":")[0])
    except ValueError:
        raise InputError(f"unknown answer token {token!r}") from None
    if not 0 <= t < len(result.output_tokens):
        raise InputError(f"answer token {t} is out of range 0..{len(result.output_tokens) - 1}")
    return result.for_output(t)


def timing_note(seconds: float, load_s: float | None, n_params: int, device: str) -> str:
    """How long the teacher took (and the load, when this call loaded it); on a CPU with a
    large teacher, that a smaller teacher answers faster."""
    note = f"the teacher took {seconds:.1f} s to answer and attribute"
    if load_s is not None:
        note += f" (plus {load_s:.1f} s loading the model)"
    if device == "cpu" and n_params >= LARGE_TEACHER_PARAMS:
        note += (f"; on the CPU a smaller teacher such as `{DEFAULT_STUDENT}` answers "
                 "several times faster")  # fmt: skip
    return note


@dataclass
class ExplainView:
    answer_md: str
    info_md: str
    highlight: str
    heatmap: go.Figure
    bar: go.Figure
    rationale: str


def explain_view(
    result: AttributionResult, token: str | None = None, level: str = "word"
) -> ExplainView:
    """Everything the Explain tab shows for a result (optionally for one answer token)."""
    from explain import figures

    view = pick_token(result, token)
    scope = (
        "all answer tokens"
        if token in (None, "", ALL_TOKENS)
        else f"answer token {view.settings.get('output_token')}: "
        f"`{view.output_tokens[int(view.settings['output_token'])].strip() or '␣'}`"
    )
    answer = html.escape(result.answer) or "<em>(empty answer)</em>"
    given = " (given answer)" if result.target == "given" else ""
    info = [
        f"`{short_spec(result.model)}` · {result.method} · k = {result.settings.get('top_k')} · "
        f"{result.seconds:.2f} s · scores for {scope}",
    ]
    info += [f"⚠ {html.escape(w)}" for w in result.warnings]
    heat = _keep_width(figures.heatmap(result, level=level))
    if token not in (None, "", ALL_TOKENS):
        _mark_row(heat, int(view.settings["output_token"]))
    return ExplainView(
        answer_md=f"**Teacher's answer{given}:** {answer}",
        info_md="  \n".join(info),
        highlight=figures.highlight_html(view),
        heatmap=heat,
        bar=figures.top_words_bar(view),
        rationale=figures.rationale_html(view),
    )


def _keep_width(fig: go.Figure, min_height: int = 420) -> go.Figure:
    """Let the heatmap fill its box, but no narrower than its own width (about 18 px per
    column): the app's script widens a squeezed plot and the box scrolls instead."""
    if fig.layout.width:
        fig.update_layout(meta={"kd_width": int(fig.layout.width)}, width=None)
    fig.update_layout(height=max(int(fig.layout.height or 0), min_height))
    return fig


def _mark_row(fig: go.Figure, row: int) -> None:
    """Outline the picked answer token's row in the heatmap."""
    trace = fig.data[0]
    n = len(trace.x) if trace.x is not None else 0
    if n:
        fig.add_shape(type="rect", x0=-0.5, x1=n - 0.5, y0=row - 0.5, y1=row + 0.5, xref="x",
                      yref="y", line={"color": "#111", "width": 2})  # fmt: skip


def export_result(result: AttributionResult, out_root) -> list[str]:
    """JSON, CSV and standalone HTML of the result in a fresh folder; their paths."""
    from explain.export import write_exports

    folder = new_export_folder(out_root)
    stem = f"kdlens-{result.method}"
    if "output_token" in result.settings:
        stem += f"-token{result.settings['output_token']}"
    paths = write_exports(result, folder, stem)
    return [str(paths[k]) for k in ("json", "csv", "html")]


# ---------------------------------------------------------------------------------------------
# UI


def layout(ctx: AppContext, ui: dict) -> None:
    """The tab's components, added to ``ui`` (Compare reuses the method and k)."""
    with gr.Row(elem_classes=["kd-stack"]):
        with gr.Column(scale=2, min_width=280):
            ui["ex_in"] = forms.input_group(forms.KINDS, "Multiple choice")
            with gr.Row():
                ui["method"] = gr.Dropdown(sorted(METHODS), value="saliency",
                                           label="Attribution method")  # fmt: skip
                ui["top_k"] = gr.Slider(1, MAX_K, value=5, step=1, label="k (rationale words)")
            with gr.Accordion("More settings", open=False):
                ui["given"] = gr.Textbox(label="Explain this answer instead (optional)")
                ui["level"] = gr.Radio(["word", "token"], value="word", label="Heatmap columns")
            ui["explain_btn"] = gr.Button("Explain", variant="primary", elem_id="kd-explain")
            forms.add_examples(ui["ex_in"], forms.KINDS)
        with gr.Column(scale=3, min_width=280):
            ui["ex_status"] = gr.Markdown(elem_id="kd-explain-status")
            ui["answer_md"] = gr.Markdown(elem_id="kd-answer")
            ui["highlight"] = gr.HTML(label="Input, shaded by word score")
            ui["rationale"] = gr.HTML(label="Rationale")
            ui["token"] = gr.Radio([(ALL_TOKENS, ALL_TOKENS)], value=ALL_TOKENS,
                                   label="Scores for answer token (or click a heatmap row)",
                                   elem_id="kd-token")  # fmt: skip
    ui["heat"] = gr.Plot(label="Answer tokens × input words", elem_id="kd-heatmap",
                         elem_classes=["kd-heatmap"])  # fmt: skip
    ui["bar"] = gr.Plot(label="Top words", elem_classes=["kd-heatmap"])
    with gr.Row():
        ui["export_btn"] = gr.Button("Export JSON, CSV and HTML", scale=0, min_width=240)
        ui["files"] = gr.File(label="Downloads", file_count="multiple", interactive=False,
                              visible=False, scale=1)  # fmt: skip
    ui["result_state"] = gr.State(None)


def check_settings(method, k, level: str = "word") -> tuple[str, int]:
    """The API's method, k and heatmap level, checked with the UI's messages."""
    one_of(level, "heatmap columns", ("word", "token"))
    return one_of(method, "attribution method", sorted(METHODS)), whole(k, "k", 1, MAX_K)


def wire(ctx: AppContext, ui: dict) -> None:
    ex_in, models_md = ui["ex_in"], ui["models_md"]

    @guarded("explain", 9)
    def on_explain(teacher, kind, q, ch, pr, hy, bo, gold, meth, k, answer, lvl,
                   progress=gr.Progress()):  # fmt: skip
        from explain.pipeline import explain

        from .compare_tab import gold_verdict

        meth, k = check_settings(meth, k, lvl)
        gold, answer = forms.text(gold, "gold answer"), forms.text(answer, "given answer")
        template, fields = forms.task_fields(kind, q, ch, pr, hy, bo)
        check_input(fields, answer)  # issue 9: a 100k-character question, refused at once
        cold = str(teacher).strip() not in ctx.loaded_specs()
        loaded = ctx.teacher_model(teacher, gradio_progress(progress))
        check_tokens(loaded.tokenizer, fields)
        # The per-token rows feed the heatmap; the rationale is the whole answer's, as in
        # extraction (explain.rationale).
        result = explain(loaded, fields, template=template, method=meth, top_k=k,
                         answer=(answer or "").strip() or None, token_matrix=True)  # fmt: skip
        v = explain_view(result, None, lvl)
        load_s = ctx.load_seconds.get(loaded.spec) if cold else None
        note = timing_note(result.seconds, load_s, loaded.n_params, loaded.device.type)
        answer_md = v.answer_md + gold_verdict(template, fields, result.answer, gold)
        radio = gr.update(choices=token_choices(result), value=ALL_TOKENS)
        return (f"{v.info_md}  \nTime: {note}", answer_md, v.highlight, v.heatmap, v.bar,
                v.rationale, radio, result.to_dict(), ctx.models_markdown(teacher))  # fmt: skip

    ui["explain_btn"].click(
        on_explain,
        [ui["teacher_dd"], *ex_in["inputs"], ex_in["gold"], ui["method"], ui["top_k"],
         ui["given"], ui["level"]],
        [ui["ex_status"], ui["answer_md"], ui["highlight"], ui["heat"], ui["bar"],
         ui["rationale"], ui["token"], ui["result_state"], models_md],
        api_name="explain", concurrency_id="compute", concurrency_limit=2, preprocess=False,
    )  # fmt: skip

    @guarded("picking an answer token", 5)
    def on_token(state, tok, lvl):
        one_of(lvl, "heatmap columns", ("word", "token"))
        if not state:
            return (gr.skip(),) * 5
        v = explain_view(AttributionResult.from_dict(state), tok, lvl)
        return v.info_md, v.highlight, v.heatmap, v.bar, v.rationale

    outs = [ui["ex_status"], ui["highlight"], ui["heat"], ui["bar"], ui["rationale"]]
    for trigger, name in ((ui["token"].input, "explain_token"), (ui["level"].input, None)):
        trigger(on_token, [ui["result_state"], ui["token"], ui["level"]], outs, api_name=name,
                api_visibility="public" if name else "private",
                concurrency_limit=None, preprocess=False)  # fmt: skip

    @guarded("export", 2)
    def on_export(state, tok):
        if not state:
            return error_md("explain a question first, then export it"), gr.skip()
        res = pick_token(AttributionResult.from_dict(state), tok)
        paths = export_result(res, ctx.exports_root)
        return f"Exported {len(paths)} files.", gr.update(value=paths, visible=True)

    ui["export_btn"].click(on_export, [ui["result_state"], ui["token"]],
                           [ui["ex_status"], ui["files"]], api_name="export",
                           concurrency_limit=None, preprocess=False)  # fmt: skip
