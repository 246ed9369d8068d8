"""KD-Lens web app: ``python app.py`` (or ``make run``) serves it on http://127.0.0.1:7860.

A thin layer over explain/ and distill/: this file only builds the Gradio UI; every callback
calls library functions (display glue lives in :mod:`distill.app_service`). Any error becomes
a one-line message in the UI and the app keeps serving.

Tests build the app with :func:`build_app` (tiny models, a temporary runs folder) and serve
it with :func:`launch_app`.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from distill import app_service as svc
from explain.attr import METHODS
from explain.errors import KDLensError
from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER

ROOT = Path(__file__).resolve().parent
STYLE = ROOT / "assets" / "style.css"
MAX_FILE_SIZE = "20mb"
KINDS = list(svc.INPUT_KINDS)
TASK_KINDS = KINDS[1:]  # Compare needs a task format, not free text

# App-only styles (assets/style.css holds the shared ones).
APP_CSS = """
.kd-cards{display:flex;flex-wrap:wrap;gap:10px}
.kd-card{flex:1 1 220px;border:1px solid var(--border-color-primary,#d0d7de);border-radius:8px;
  padding:8px 12px;background:var(--background-fill-secondary,#f6f8fa);min-width:0}
.kd-teacher{border-color:#2166ac}
.kd-card-title{font-weight:600;margin-bottom:4px;overflow-wrap:anywhere}
.kd-card-answer{font-size:1.1em;margin:4px 0;overflow-wrap:anywhere}
.kd-card-sub{font-size:.85em;opacity:.8;margin-top:4px}
.kd-prob{height:6px;background:#e5e7eb;border-radius:3px;overflow:hidden;margin-top:4px}
.kd-prob span{display:block;height:100%;background:#2166ac}
.kd-ok{color:#1a7f37;font-weight:600}.kd-bad{color:#cf222e;font-weight:600}.kd-na{opacity:.7}
.kd-table{border-collapse:collapse;font-size:.9em;width:100%}
.kd-table th,.kd-table td{border:1px solid var(--border-color-primary,#d0d7de);padding:4px 6px;
  vertical-align:top;text-align:left}
.kd-table td.kd-input{min-width:240px}
.kd-r{background:rgba(230,85,13,.35);border-radius:3px;font-weight:600}
.kd-g{text-decoration:underline 2px #1a7f37;text-underline-offset:2px}
#kd-heatmap{overflow-x:auto}
#kd-token label{padding:2px 8px;font-size:.85em}
#kd-token .wrap{gap:4px}
"""

# Two fixes for plots in .kd-heatmap boxes, checked every 0.7 s (plots re-render):
# - Gradio autosizes plotly figures to their box; a wide heatmap (layout.meta.kd_width, about
#   18 px per column) keeps its width instead, and the box scrolls, so 200-word inputs stay legible.
# - Clicking a heatmap cell picks that answer token in the list (plotly_click).
HEATMAP_JS = """
() => {
  const widen = () => document.querySelectorAll('.kd-heatmap').forEach(box => {
    const gd = box.querySelector('.js-plotly-plot');
    const want = gd && gd.layout && gd.layout.meta && gd.layout.meta.kd_width;
    if (!want || !gd._fullLayout || !window.Plotly) return;
    const narrow = want > box.clientWidth + 1;
    gd.style.minWidth = narrow ? want + 'px' : '';
    if (narrow && Math.abs(gd._fullLayout.width - want) > 1) {
      window.Plotly.relayout(gd, {autosize: false, width: want});
    }
  });
  const bind = () => document.querySelectorAll('#kd-heatmap .js-plotly-plot').forEach(gd => {
    if (gd._kdBound || typeof gd.on !== 'function') return;
    gd._kdBound = true;
    gd.on('plotly_click', ev => {
      const p = ev && ev.points && ev.points[0];
      if (!p) return;
      const idx = String(p.y).split(':')[0].trim();
      const box = document.querySelector(`#kd-token input[type=radio][value="${idx}"]`);
      if (box) box.click();
    });
  });
  setInterval(() => { widen(); bind(); }, 700);
}
"""


# ---------------------------------------------------------------------------------------------
# Error handling: every callback's first output is a status Markdown


def error_md(message: str) -> str:
    return f'<div class="kd-error">⚠ {message}</div>'


def guarded(where: str, n_out: int) -> Callable:
    """Wrap a callback: any exception becomes a one-line message (first output) and a toast;
    the other outputs keep their values."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - the app must keep serving
                svc.log_error(where, e)
                msg = svc.user_message(e)
                gr.Warning(msg)
                if n_out == 1:
                    return error_md(msg)
                return (error_md(msg),) + (gr.skip(),) * (n_out - 1)

        return wrapper

    return deco


# ---------------------------------------------------------------------------------------------
# UI pieces


def input_group(kinds: list[str], default: str) -> dict:
    """The task-input form (one per tab): kind, text fields, gold answer."""
    t = svc.INPUT_KINDS[default]
    c: dict = {}
    c["kind"] = gr.Radio(kinds, value=default, label="Input", elem_classes=["kd-kind"])
    c["question"] = gr.Textbox(label="Question", lines=2, placeholder="Type a question…",
                               visible=t != "nli")  # fmt: skip
    c["choices"] = gr.Textbox(label="Choices (separate with | or new lines)",
                              placeholder="key | spoon | pillow", visible=t == "cqa")  # fmt: skip
    c["premise"] = gr.Textbox(label="Premise", lines=2, visible=t == "nli")
    c["hypothesis"] = gr.Textbox(label="Hypothesis", lines=1, visible=t == "nli")
    c["body"] = gr.Textbox(label="Problem", lines=3, placeholder="The story of the problem",
                           visible=t == "svamp")  # fmt: skip
    c["gold"] = gr.Textbox(label="Gold answer (optional: marks answers correct/wrong)")
    fields = [c[k] for k in ("question", "choices", "premise", "hypothesis", "body")]
    c["kind"].change(_field_visibility, c["kind"], fields, queue=False, api_visibility="private")
    c["inputs"] = [c["kind"], *fields]
    return c


def _field_visibility(kind: str) -> list:
    t = svc.INPUT_KINDS.get(kind, "free")
    label = {"free": "Text", "svamp": "Question (last sentence)"}.get(t, "Question")
    return [
        gr.update(visible=t != "nli", label=label),
        gr.update(visible=t == "cqa"),
        gr.update(visible=t == "nli"),
        gr.update(visible=t == "nli"),
        gr.update(visible=t == "svamp"),
    ]


def add_examples(c: dict, kinds: list[str]) -> None:
    """Clickable demo questions from assets/examples.json (those this form can show)."""
    from explain.examples import load_examples

    try:
        records = load_examples()
    except KDLensError as e:
        gr.Markdown(error_md(str(e)))
        return
    records = [r for r in records if svc.KIND_OF_TEMPLATE.get(r["template"]) in kinds]
    rows, labels = svc.example_rows(records)
    if rows:
        gr.Examples(
            rows,
            [*c["inputs"], c["gold"]],
            example_labels=labels,
            label="Examples (click one)",
            examples_per_page=8,
        )


def _choices_update(choices: list[tuple[str, str]], keep: list | str | None = None):
    values = {v for _, v in choices}
    if isinstance(keep, list):
        return gr.update(choices=choices, value=[v for v in keep if v in values])
    return gr.update(choices=choices, value=keep if keep in values else None)


# ---------------------------------------------------------------------------------------------
# The app


def build_app(
    teacher: str | None = None,
    student: str | None = None,
    model_loader: Callable | None = None,
    runs_dir: str | Path | None = None,
    datasets_dir: str | Path | None = None,
    cache_capacity: int = 4,
) -> gr.Blocks:
    """The four-tab app. ``model_loader(spec, **kw)`` replaces ``load_model`` (tests)."""
    from distill.runs import runs_root

    kw = {"model_loader": model_loader} if model_loader else {}
    if datasets_dir:
        kw["data_root"] = Path(datasets_dir)
    ctx = svc.AppContext(
        teacher=teacher or DEFAULT_TEACHER,
        student=student or DEFAULT_STUDENT,
        runs_root=Path(runs_dir) if runs_dir else runs_root(),
        cache_capacity=cache_capacity,
        **kw,
    )
    exports = Path(tempfile.gettempdir()) / "kdlens-exports"
    device = svc.device_note()
    sizes = svc.default_sizes()

    with gr.Blocks(title="KD-Lens") as demo:
        gr.Markdown(
            "# KD-Lens\nWhich input words drive a teacher's answer, and does a small student "
            "learn better from them? (Ballout et al. 2024, *Efficient Knowledge Distillation*)"
            f"  \n{device}"
        )
        with gr.Row(elem_classes=["kd-stack"]):
            teacher_dd = gr.Dropdown(
                svc.model_choices(ctx.teacher), value=ctx.teacher, label="Teacher model",
                allow_custom_value=True, info="pack name, local model folder or hub id",
            )  # fmt: skip
            student_dd = gr.Dropdown(
                svc.model_choices(ctx.student), value=ctx.student, label="Student model",
                allow_custom_value=True, info="loaded once and shared; switching frees the old",
            )  # fmt: skip

        with gr.Tabs():
            # --------------------------------------------------------------- Explain
            with gr.Tab("Explain", id="explain"):
                with gr.Row(elem_classes=["kd-stack"]):
                    with gr.Column(scale=2, min_width=280):
                        ex_in = input_group(KINDS, "Multiple choice")
                        with gr.Row():
                            method = gr.Dropdown(sorted(METHODS), value="saliency",
                                                 label="Attribution method")  # fmt: skip
                            top_k = gr.Slider(1, 20, value=5, step=1, label="k (rationale words)")
                        with gr.Accordion("More settings", open=False):
                            given = gr.Textbox(label="Explain this answer instead (optional)")
                            level = gr.Radio(["word", "token"], value="word",
                                             label="Heatmap columns")  # fmt: skip
                        explain_btn = gr.Button("Explain", variant="primary", elem_id="kd-explain")
                        add_examples(ex_in, KINDS)
                    with gr.Column(scale=3, min_width=280):
                        ex_status = gr.Markdown(elem_id="kd-explain-status")
                        answer_md = gr.Markdown(elem_id="kd-answer")
                        highlight = gr.HTML(label="Input, shaded by word score")
                        rationale = gr.HTML(label="Rationale")
                        token = gr.Radio(
                            [(svc.ALL_TOKENS, svc.ALL_TOKENS)], value=svc.ALL_TOKENS,
                            label="Scores for answer token (or click a heatmap row)",
                            elem_id="kd-token",
                        )  # fmt: skip
                heat = gr.Plot(label="Answer tokens × input words", elem_id="kd-heatmap",
                               elem_classes=["kd-heatmap"])  # fmt: skip
                bar = gr.Plot(label="Top words", elem_classes=["kd-heatmap"])
                with gr.Row():
                    export_btn = gr.Button("Export JSON, CSV and HTML", scale=0, min_width=240)
                    files = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                    visible=False, scale=1)  # fmt: skip
                result_state = gr.State(None)

            # --------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "The same question through the student: without rationale, with the "
                    "teacher's rationale as a hint, and through trained runs."
                )
                with gr.Row(elem_classes=["kd-stack"]):
                    with gr.Column(scale=2, min_width=280):
                        cmp_in = input_group(TASK_KINDS, "Multiple choice")
                        cmp_runs = gr.Dropdown(
                            svc.finished_runs(ctx.runs_root), value=[], multiselect=True,
                            allow_custom_value=True, label="Trained runs to compare",
                            info="finished training runs (or a run folder path)",
                        )  # fmt: skip
                        cmp_btn = gr.Button("Compare", variant="primary", elem_id="kd-compare")
                        add_examples(cmp_in, TASK_KINDS)
                    with gr.Column(scale=3, min_width=280):
                        cmp_status = gr.Markdown()
                        cmp_cards = gr.HTML()
                        with gr.Accordion("Answers as a table", open=False):
                            cmp_table = gr.Dataframe(
                                headers=svc.COMPARE_COLUMNS, label="Answers", interactive=False,
                                wrap=True,
                            )  # fmt: skip

            # --------------------------------------------------------------- Distill
            with gr.Tab("Distill", id="distill"):
                gr.Markdown(
                    "Extract the teacher's top-k rationales, fine-tune the student in each "
                    "mode, evaluate on a held-out dev split. One job at a time. " + device
                )
                with gr.Row(elem_classes=["kd-stack"]):
                    with gr.Column(scale=2, min_width=280):
                        task = gr.Dropdown(list(svc.TASKS), value="cqa", label="Task")
                        source = gr.Radio(list(svc.DATA_SOURCES), value="demo set", label="Data")
                        data_path = gr.Textbox(label="Data file path (.jsonl or .csv)",
                                               visible=False)  # fmt: skip
                        upload = gr.File(
                            label="Upload .jsonl/.csv (max 20 MB)", visible=False, height=140,
                            file_types=list(svc.DATA_SUFFIXES),
                        )  # fmt: skip
                        source.change(
                            lambda s: (gr.update(visible=s == "path"),
                                       gr.update(visible=s == "upload")),
                            source, [data_path, upload], queue=False, api_visibility="private",
                        )  # fmt: skip
                        modes = gr.CheckboxGroup(list(svc.MODES), value=["standard", "saliency"],
                                                 label="Modes")  # fmt: skip
                        with gr.Row():
                            limit = gr.Number(sizes["limit"], precision=0, label="Examples")
                            steps = gr.Number(sizes["steps"], precision=0, label="Steps")
                            d_k = gr.Number(sizes["top_k"], precision=0, label="k")
                        with gr.Accordion("More settings", open=False):
                            batch = gr.Number(sizes["batch_size"], precision=0, label="Batch")
                            lr = gr.Number(5e-5, label="Learning rate")
                            d_method = gr.Dropdown(sorted(METHODS), value="saliency",
                                                   label="Attribution method")  # fmt: skip
                            target = gr.Radio(["generated", "gold"], value="generated",
                                              label="Rationale explains the teacher's own "
                                              "answer (generated) or the gold answer")  # fmt: skip
                            run_name = gr.Textbox(label="Run name prefix (optional)")
                        with gr.Row():
                            start_btn = gr.Button("Start", variant="primary", elem_id="kd-start")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="kd-stop")
                    with gr.Column(scale=3, min_width=280):
                        job_md = gr.Markdown(
                            svc.status_markdown(ctx.jobs.status()), elem_id="kd-job"
                        )
                        curve = gr.Plot(svc.progress_figure({}), label="Progress")
                runs_df = gr.Dataframe(label="Runs", interactive=False, wrap=True)
                refresh_btn = gr.Button("Refresh runs", size="sm")
                timer = gr.Timer(1.0, active=False)
                plan_modes = gr.State([])
                seen = gr.State(None)

            # --------------------------------------------------------------- Overlap
            with gr.Tab("Overlap", id="overlap"):
                gr.Markdown(
                    "How the teacher's rationale words relate to the gold answer and to human "
                    "rationales, each figure next to its random-k baseline."
                )
                with gr.Row(elem_classes=["kd-stack"]):
                    ov_src = gr.Dropdown(
                        svc.rationale_sources(ctx.runs_root), label="Rationale file (from a run)",
                        allow_custom_value=True, info="or type a path",
                    )  # fmt: skip
                    ov_upload = gr.File(label="…or upload rationales.jsonl", height=120,
                                        file_types=[".jsonl", ".json"])  # fmt: skip
                ov_btn = gr.Button("Analyse", variant="primary", elem_id="kd-overlap")
                ov_status = gr.Markdown()
                ov_table = gr.Dataframe(label="Dataset figures", interactive=False)
                with gr.Row(elem_classes=["kd-stack"]):
                    ov_fig = gr.Plot(label="Rationale vs random-k")
                ov_hist = gr.Plot(label="Distributions")
                with gr.Row():
                    ov_show = gr.Radio(list(svc.OVERLAP_FILTERS), value="all", label="Show")
                    ov_page = gr.Number(1, precision=0, minimum=1, label="Page")
                ov_examples = gr.HTML()
                ov_state = gr.State(None)
                with gr.Accordion("Definitions", open=True):
                    gr.Markdown(svc.definitions_markdown())

        # ------------------------------------------------------------------- callbacks
        @guarded("explain", 8)
        def on_explain(teacher, kind, q, ch, pr, hy, bo, gold, meth, k, answer, lvl):
            from explain.pipeline import explain

            template, fields = svc.task_fields(kind, q, ch, pr, hy, bo)
            loaded = ctx.teacher_model(teacher)
            result = explain(loaded, fields, template=template, method=meth, top_k=int(k),
                             answer=(answer or "").strip() or None)  # fmt: skip
            v = svc.explain_view(result, None, lvl)
            answer_md = v.answer_md + svc.gold_verdict(template, fields, result.answer, gold)
            radio = gr.update(choices=svc.token_choices(result), value=svc.ALL_TOKENS)
            return (v.info_md, answer_md, v.highlight, v.heatmap, v.bar, v.rationale, radio,
                    result.to_dict())  # fmt: skip

        explain_btn.click(
            on_explain,
            [teacher_dd, *ex_in["inputs"], ex_in["gold"], method, top_k, given, level],
            [ex_status, answer_md, highlight, heat, bar, rationale, token, result_state],
            api_name="explain", concurrency_id="compute", concurrency_limit=2,
        )  # fmt: skip

        @guarded("picking an answer token", 5)
        def on_token(state, tok, lvl):
            if not state:
                return (gr.skip(),) * 5
            v = svc.explain_view(svc.AttributionResult.from_dict(state), tok, lvl)
            return v.info_md, v.highlight, v.heatmap, v.bar, v.rationale

        for trigger, name in ((token.input, "explain_token"), (level.input, None)):
            trigger(on_token, [result_state, token, level],
                    [ex_status, highlight, heat, bar, rationale], api_name=name,
                    api_visibility="public" if name else "private",
                    concurrency_limit=None)  # fmt: skip

        @guarded("export", 2)
        def on_export(state, tok):
            if not state:
                return error_md("explain a question first, then export it"), gr.skip()
            res = svc.pick_token(svc.AttributionResult.from_dict(state), tok)
            paths = svc.export_result(res, exports)
            return f"Exported {len(paths)} files.", gr.update(value=paths, visible=True)

        export_btn.click(on_export, [result_state, token], [ex_status, files], api_name="export",
                         concurrency_limit=None)  # fmt: skip

        @guarded("compare", 3)
        def on_compare(teacher, student, kind, q, ch, pr, hy, bo, gold, runs, meth, k):
            template, fields = svc.task_fields(kind, q, ch, pr, hy, bo)
            result, df = svc.compare_one(ctx, teacher, student, template, fields, gold,
                                         runs or [], meth, int(k))  # fmt: skip
            ok = svc.teacher_correct(template, fields, result.answer, (gold or "").strip())
            note = (f"Teacher `{svc.short_spec(teacher)}`, student `{svc.short_spec(student)}`;"
                    f" {len(df)} student answers.")  # fmt: skip
            return note, svc.compare_cards(result, df, ok), df

        cmp_btn.click(
            on_compare,
            [teacher_dd, student_dd, *cmp_in["inputs"], cmp_in["gold"], cmp_runs, method, top_k],
            [cmp_status, cmp_cards, cmp_table],
            api_name="compare", concurrency_id="compute", concurrency_limit=2,
        )  # fmt: skip

        def lists(keep_runs=None, keep_src=None) -> tuple:
            """Runs table, Compare's run list, Overlap's rationale files (fresh from disk)."""
            return (
                svc.runs_table(ctx.runs_root),
                _choices_update(svc.finished_runs(ctx.runs_root), keep_runs or []),
                _choices_update(svc.rationale_sources(ctx.runs_root), keep_src),
            )

        @guarded("start", 3)
        def on_start(tsk, src, path, up, teacher, student, mds, n, st, k, bs, rate, meth, tgt,
                     name):  # fmt: skip
            if ctx.jobs.busy:
                raise KDLensError("a job is already running; stop it or wait for it to finish")
            data = svc.resolve_data(tsk, src, path, up, ctx.runs_root, ctx.data_root)
            plan = svc.plan_distill(ctx.runs_root, tsk, data, teacher, student, mds, n, st, bs,
                                    k, rate, meth, tgt, name=name)  # fmt: skip
            ctx.jobs.start("distill", svc.run_distill, plan=plan, teacher_loader=ctx.teacher_model,
                           student_loader=ctx.model_loader)  # fmt: skip
            return svc.status_markdown(ctx.jobs.status()), gr.Timer(active=True), plan.modes

        start_btn.click(
            on_start,
            [task, source, data_path, upload, teacher_dd, student_dd, modes, limit, steps, d_k,
             batch, lr, d_method, target, run_name],
            [job_md, timer, plan_modes], api_name="distill_start", concurrency_limit=None,
        )  # fmt: skip

        @guarded("stop", 1)
        def on_stop():
            if ctx.jobs.stop():
                return "Stopping after the current step; the last checkpoint is kept."
            return "No job is running."

        stop_btn.click(on_stop, None, job_md, api_name="distill_stop", concurrency_limit=None)

        @guarded("status", 7)
        def on_tick(mds, last, runs_sel, src_sel):
            st = ctx.jobs.status()
            sig = [st["state"], st["id"], st["step"], len(st["losses"]), len(st["dev"]),
                   st["stage"]]  # fmt: skip
            running = st["state"] in svc.RUNNING_STATES
            md = svc.status_markdown(st)
            fig = svc.progress_figure(st, mds) if sig != last else gr.skip()
            if running:
                return md, fig, gr.skip(), gr.skip(), gr.skip(), gr.skip(), sig
            # The job ended: stop polling and show its runs everywhere.
            return (md, fig, gr.Timer(active=False), *lists(runs_sel, src_sel), sig)

        timer.tick(on_tick, [plan_modes, seen, cmp_runs, ov_src],
                   [job_md, curve, timer, runs_df, cmp_runs, ov_src, seen],
                   api_name="distill_status", concurrency_limit=None)  # fmt: skip

        @guarded("refresh", 4)
        def on_refresh(runs_sel, src_sel):
            busy = ctx.jobs.busy
            return (svc.status_markdown(ctx.jobs.status()) if busy else gr.skip(),
                    *lists(runs_sel, src_sel))  # fmt: skip

        refresh_btn.click(on_refresh, [cmp_runs, ov_src], [job_md, runs_df, cmp_runs, ov_src],
                          api_name="runs", concurrency_limit=None)  # fmt: skip

        def on_load(runs_sel, src_sel):
            try:
                return (gr.Timer(active=ctx.jobs.busy), *lists(runs_sel, src_sel))
            except Exception as e:  # noqa: BLE001 - a page load must never fail
                svc.log_error("page load", e)
                return (gr.skip(),) * 4

        demo.load(on_load, [cmp_runs, ov_src], [timer, runs_df, cmp_runs, ov_src],
                  api_visibility="private", concurrency_limit=None)  # fmt: skip

        @guarded("overlap", 7)
        def on_overlap(choice, up, show):
            view = svc.overlap_view(svc.overlap_source(choice, up))
            page, _ = svc.overlap_page(view.rows, view.records, 1, show=show)
            state = {"rows": view.rows, "records": view.records}
            return (view.note, view.summary, view.summary_fig, view.histograms, page, 1, state)

        ov_btn.click(
            on_overlap, [ov_src, ov_upload, ov_show],
            [ov_status, ov_table, ov_fig, ov_hist, ov_examples, ov_page, ov_state],
            api_name="overlap", concurrency_id="overlap", concurrency_limit=2,
        )  # fmt: skip

        @guarded("overlap page", 2)
        def on_page(state, page, show):
            if not state:
                return gr.skip(), gr.skip()
            html_, _ = svc.overlap_page(state["rows"], state["records"], page or 1, show=show)
            return gr.skip(), html_

        for trigger, name in ((ov_page.change, "overlap_page"), (ov_show.change, None)):
            trigger(on_page, [ov_state, ov_page, ov_show], [ov_status, ov_examples],
                    api_name=name, api_visibility="public" if name else "private",
                    concurrency_limit=None)  # fmt: skip

    demo.kdlens = ctx  # tests and the screenshot script reach the shared state here
    return demo


def launch_app(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    prevent_thread_lock: bool = False,
    max_file_size: str | int = MAX_FILE_SIZE,
    quiet: bool = False,
):
    """Queue and serve the app (styles, the heatmap-click script, the upload limit)."""
    demo.queue(default_concurrency_limit=2, max_size=128)
    return demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        max_file_size=max_file_size,
        quiet=quiet,
        css=APP_CSS,
        css_paths=[STYLE] if STYLE.is_file() else None,
        js=HEATMAP_JS,
        theme=gr.themes.Soft(),
        footer_links=["api"],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="KD-Lens web app")
    p.add_argument(
        "--teacher",
        default=env("KDLENS_TEACHER", DEFAULT_TEACHER),
        help="teacher: pack name, local model folder or hub id ($KDLENS_TEACHER)",
    )
    p.add_argument(
        "--student",
        default=env("KDLENS_STUDENT", DEFAULT_STUDENT),
        help="student: pack name, local model folder or hub id ($KDLENS_STUDENT)",
    )
    p.add_argument(
        "--runs",
        default=env("KDLENS_RUNS", "runs"),
        help="folder for run folders ($KDLENS_RUNS, default ./runs)",
    )
    p.add_argument(
        "--datasets",
        default=env("KDLENS_DATASETS"),
        help="folder laid out like shared/datasets, for the demo sets",
    )
    p.add_argument(
        "--host",
        default=env("KDLENS_HOST", "127.0.0.1"),
        help="address to bind ($KDLENS_HOST; default 127.0.0.1, local only)",
    )
    p.add_argument("--port", type=int, default=int(env("KDLENS_PORT", "7860")),
                   help="port ($KDLENS_PORT, default 7860)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    args = parse_args(argv)
    demo = build_app(args.teacher, args.student, runs_dir=args.runs, datasets_dir=args.datasets)
    launch_app(demo, args.host, args.port)


if __name__ == "__main__":
    main()
