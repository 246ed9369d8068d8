"""The Gradio build: header (model pickers and each model's state), the four tabs, styles,
the heatmap script, and the launch settings (local only, analytics off, upload limit)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER

from . import compare_tab, distill_tab, explain_tab, overlap_tab
from .common import AppContext, device_note, model_choices

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "assets" / "style.css"
MAX_FILE_SIZE = "20mb"

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
.kd-ok{color:#1a7f37;font-weight:600}.kd-loading{color:#9a6700;font-weight:600}.kd-bad{color:#cf222e;font-weight:600}.kd-na{opacity:.7}
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


def build_app(
    teacher: str | None = None,
    student: str | None = None,
    model_loader: Callable | None = None,
    runs_dir: str | Path | None = None,
    datasets_dir: str | Path | None = None,
    cache_capacity: int = 4,
    ctx: AppContext | None = None,
) -> gr.Blocks:
    """The four-tab app. ``model_loader(spec, **kw)`` replaces ``load_model`` (tests); a
    given ``ctx`` (e.g. with preloaded models) is used as it is."""
    from distill.runs import runs_root

    if ctx is None:
        kw = {"model_loader": model_loader} if model_loader else {}
        if datasets_dir:
            kw["data_root"] = Path(datasets_dir)
        ctx = AppContext(
            teacher=teacher or DEFAULT_TEACHER,
            student=student or DEFAULT_STUDENT,
            runs_root=Path(runs_dir) if runs_dir else runs_root(),
            cache_capacity=cache_capacity,
            **kw,
        )
    device = device_note()
    ui: dict = {}
    with gr.Blocks(title="KD-Lens", analytics_enabled=False) as demo:
        ui["demo"] = demo
        gr.Markdown(
            "# KD-Lens\nWhich input words drive a teacher's answer, and does a small student "
            "learn better from them? (Ballout et al. 2024, *Efficient Knowledge Distillation*)"
            f"  \n{device}"
        )
        with gr.Row(elem_classes=["kd-stack"]):
            ui["teacher_dd"] = gr.Dropdown(
                model_choices(ctx.teacher), value=ctx.teacher, label="Teacher model",
                allow_custom_value=True, info="pack name, hub id, or a model folder in the runs "
                "folder (others: start the app with --teacher)",
            )  # fmt: skip
            ui["student_dd"] = gr.Dropdown(
                model_choices(ctx.student), value=ctx.student, label="Student model",
                allow_custom_value=True, info="loaded once and shared; switching frees the old",
            )  # fmt: skip
        ui["models_md"] = gr.Markdown(ctx.models_markdown(), elem_id="kd-models")
        models_timer = gr.Timer(1.0)

        with gr.Tabs():
            with gr.Tab("Explain", id="explain"):
                explain_tab.layout(ctx, ui)
            with gr.Tab("Compare", id="compare"):
                compare_tab.layout(ctx, ui)
            with gr.Tab("Distill", id="distill"):
                distill_tab.layout(ctx, ui, device)
            with gr.Tab("Overlap", id="overlap"):
                overlap_tab.layout(ctx, ui)
        for tab in (explain_tab, compare_tab, distill_tab, overlap_tab):
            tab.wire(ctx, ui)

        def on_models(teacher, student, last):
            """The header's model states, redrawn only when they change (a load elsewhere,
            the Distill job, another browser)."""
            try:
                md = ctx.models_markdown(str(teacher or ""), str(student or ""))
            except Exception:  # noqa: BLE001 - a status line must never fail
                return gr.skip(), last
            return (md if md != last else gr.skip()), md

        seen = gr.State(None)
        models_timer.tick(on_models, [ui["teacher_dd"], ui["student_dd"], seen],
                          [ui["models_md"], seen], api_visibility="private",
                          concurrency_limit=None, show_progress="hidden")  # fmt: skip
        for dd in (ui["teacher_dd"], ui["student_dd"]):
            dd.change(on_models, [ui["teacher_dd"], ui["student_dd"], seen],
                      [ui["models_md"], seen], api_visibility="private", queue=False)  # fmt: skip

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
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
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
