"""Distill tab: pick a task, data and modes; one background job extracts the teacher's
rationales, trains the student in each mode and evaluates; the page follows its progress."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from distill.data import TASKS, DataError, default_path, get_task, load_task
from explain.attr import METHODS
from explain.errors import InputError, KDLensError

from .common import (
    AppContext,
    choices_update,
    file_path,
    guarded,
    has_gpu,
    log_error,
    one_of,
    positive,
    whole,
)

# ORCHESTRATION, TO SWITCH AT MERGE: the only use of the job functions; point this import at
# distill.pipeline once it holds plan/run (helper h-extract) and delete app/distill_job.py.
from .distill_job import MODES, plan_distill, run_distill
from .distill_status import RUNNING_STATES, progress_figure, runs_table, status_markdown
from .forms import text
from .paths import discard_upload, store_upload

DATA_SOURCES = ("demo set", "path", "upload")
DATA_SUFFIXES = (".jsonl", ".json", ".csv")
TARGETS = ("generated", "gold")


def default_sizes(gpu: bool | None = None) -> dict:
    """Form defaults: CPU sizes finish in minutes; a GPU affords a real run."""
    gpu = has_gpu() if gpu is None else gpu
    if gpu:
        return {"limit": 2000, "steps": 500, "batch_size": 16, "top_k": 5, "dev_size": 0.1}
    # CPU: about 10 s per example for the 1.5B teacher's extraction, 2-3 s per student step.
    return {"limit": 20, "steps": 12, "batch_size": 4, "top_k": 5, "dev_size": 0.25}


def resolve_data(ctx: AppContext, task: str, source: str, path: str | None,
                 upload: str | None) -> Path:  # fmt: skip
    """The data file for a run: the demo set, a typed path inside the allowed folders, or a
    validated upload (copied under ``<runs>/uploads`` so the run keeps its data after Gradio
    clears its cache; a rejected upload is removed)."""
    one_of(task, "task", list(TASKS))
    source = one_of(source, "data source", DATA_SOURCES)
    created = None
    if source == "demo set":
        p = default_path(task, ctx.data_root)
        if not p.is_file():
            raise DataError(f"the demo set for {task} is not here ({p}); give a path or upload")
    elif source == "path":
        if not isinstance(path, str) or not path.strip():
            raise InputError("give the path of a .jsonl or .csv data file")
        p = ctx.paths.check(path)
    else:
        if not upload:
            raise InputError("upload a .jsonl or .csv data file first")
        src = ctx.paths.check(upload)
        p, new = store_upload(src, ctx.runs_root / "uploads", DATA_SUFFIXES)
        created = p if new else None
    try:
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise DataError(f"{p.name}: use a .jsonl, .json or .csv file")
        if not p.is_file():
            raise DataError(f"data file not found: {p}")
        load_task(task, p, limit=50)  # early, located errors instead of a failed job
    except KDLensError:
        if source == "upload":  # nothing of a rejected upload stays behind
            if created:
                created.unlink(missing_ok=True)
            discard_upload(Path(upload))
        raise
    return p


# ---------------------------------------------------------------------------------------------
# UI


def layout(ctx: AppContext, ui: dict, device: str) -> None:
    sizes = default_sizes()
    gr.Markdown(
        "Extract the teacher's top-k rationales, fine-tune the student in each "
        "mode, evaluate on a held-out dev split. One job at a time. " + device
    )
    with gr.Row(elem_classes=["kd-stack"]):
        with gr.Column(scale=2, min_width=280):
            ui["task"] = gr.Dropdown(list(TASKS), value="cqa", label="Task")
            ui["source"] = gr.Radio(list(DATA_SOURCES), value="demo set", label="Data")
            ui["data_path"] = gr.Textbox(
                label="Data file path (.jsonl or .csv)", visible=False,
                placeholder="a file inside the runs or datasets folder",
            )  # fmt: skip
            ui["upload"] = gr.File(label="Upload .jsonl/.csv (max 20 MB)", visible=False,
                                   height=140, file_types=list(DATA_SUFFIXES))  # fmt: skip
            ui["source"].change(
                lambda s: (gr.update(visible=s == "path"), gr.update(visible=s == "upload")),
                ui["source"], [ui["data_path"], ui["upload"]], queue=False,
                api_visibility="private",
            )  # fmt: skip
            ui["modes"] = gr.CheckboxGroup(list(MODES), value=["standard", "saliency"],
                                           label="Modes")  # fmt: skip
            with gr.Row():
                ui["limit"] = gr.Number(sizes["limit"], precision=0, label="Examples")
                ui["steps"] = gr.Number(sizes["steps"], precision=0, label="Steps")
                ui["d_k"] = gr.Number(sizes["top_k"], precision=0, label="k")
            with gr.Accordion("More settings", open=False):
                ui["batch"] = gr.Number(sizes["batch_size"], precision=0, label="Batch")
                ui["lr"] = gr.Number(5e-5, label="Learning rate")
                ui["d_method"] = gr.Dropdown(sorted(METHODS), value="saliency",
                                             label="Attribution method")  # fmt: skip
                ui["target"] = gr.Radio(list(TARGETS), value="generated",
                                        label="Rationale explains the teacher's own answer "
                                        "(generated) or the gold answer")  # fmt: skip
                ui["run_name"] = gr.Textbox(label="Run name prefix (optional)")
            with gr.Row():
                ui["start_btn"] = gr.Button("Start", variant="primary", elem_id="kd-start")
                ui["stop_btn"] = gr.Button("Stop", variant="stop", elem_id="kd-stop")
        with gr.Column(scale=3, min_width=280):
            ui["job_md"] = gr.Markdown(status_markdown(ctx.jobs.status()), elem_id="kd-job")
            ui["curve"] = gr.Plot(progress_figure({}), label="Progress")
    ui["runs_df"] = gr.Dataframe(label="Runs", interactive=False, wrap=True)
    ui["refresh_btn"] = gr.Button("Refresh runs", size="sm")
    ui["timer"] = gr.Timer(1.0, active=False)
    ui["plan_modes"] = gr.State([])
    ui["seen"] = gr.State(None)


def check_form(tsk, src, mds, n, st, k, bs, rate, meth, tgt) -> dict:
    """The form's values checked with one-line messages (the API can send anything)."""
    one_of(tsk, "task", list(TASKS))
    one_of(src, "data source", DATA_SOURCES)
    if not isinstance(mds, list) or not all(isinstance(m, str) for m in mds):
        raise InputError(f"modes must be a list of: {', '.join(MODES)}")
    for m in mds:
        one_of(m, "mode", list(MODES))
    get_task(tsk)
    return {
        "limit": whole(n, "examples", 4), "steps": whole(st, "steps", 1),
        "top_k": whole(k, "k", 1, 50), "batch_size": whole(bs, "batch size", 1),
        "lr": positive(rate, "learning rate"),
        "method": one_of(meth, "attribution method", sorted(METHODS)),
        "target": one_of(tgt, "rationale target", TARGETS),
    }  # fmt: skip


def wire(ctx: AppContext, ui: dict) -> None:
    from .compare_tab import finished_runs
    from .overlap_tab import rationale_sources

    def lists(keep_runs=None, keep_src=None) -> tuple:
        """Runs table, Compare's run list, Overlap's rationale files (fresh from disk)."""
        return (
            runs_table(ctx.runs_root),
            choices_update(finished_runs(ctx.runs_root), keep_runs or []),
            choices_update(rationale_sources(ctx.runs_root), keep_src),
        )

    @guarded("start", 3)
    def on_start(tsk, src, path, up, teacher, student, mds, n, st, k, bs, rate, meth, tgt,
                 name):  # fmt: skip
        if ctx.jobs.busy:
            raise KDLensError("a job is already running; stop it or wait for it to finish")
        s = check_form(tsk, src, mds, n, st, k, bs, rate, meth, tgt)
        name = text(name, "run name")
        if mds and any(m != "standard" for m in mds):
            ctx.paths.check_model(str(teacher or ""))
        ctx.paths.check_model(str(student or ""))
        data = resolve_data(ctx, tsk, src, path, file_path(up))
        plan = plan_distill(ctx.runs_root, tsk, data, teacher, student, mds, name=name or "",
                            **s)  # fmt: skip
        ctx.jobs.start("distill", run_distill, plan=plan, teacher_loader=ctx.teacher_model,
                       student_loader=ctx.model_loader)  # fmt: skip
        return status_markdown(ctx.jobs.status()), gr.Timer(active=True), plan.modes

    ui["start_btn"].click(
        on_start,
        [ui["task"], ui["source"], ui["data_path"], ui["upload"], ui["teacher_dd"],
         ui["student_dd"], ui["modes"], ui["limit"], ui["steps"], ui["d_k"], ui["batch"],
         ui["lr"], ui["d_method"], ui["target"], ui["run_name"]],
        [ui["job_md"], ui["timer"], ui["plan_modes"]], api_name="distill_start",
        concurrency_limit=None, preprocess=False,
    )  # fmt: skip

    @guarded("stop", 1)
    def on_stop():
        if ctx.jobs.stop():
            return "Stopping after the current step; the last checkpoint is kept."
        return "No job is running."

    ui["stop_btn"].click(on_stop, None, ui["job_md"], api_name="distill_stop",
                         concurrency_limit=None)  # fmt: skip

    @guarded("status", 8)
    def on_tick(mds, last, runs_sel, src_sel, teacher, student):
        st = ctx.jobs.status()
        sig = [st["state"], st["id"], st["step"], len(st["losses"]), len(st["dev"]),
               st["stage"]]  # fmt: skip
        running = st["state"] in RUNNING_STATES
        md = status_markdown(st)
        fig = progress_figure(st, mds) if sig != last else gr.skip()
        models = ctx.models_markdown(teacher, student)
        if running:
            return md, fig, gr.skip(), gr.skip(), gr.skip(), gr.skip(), sig, models
        # The job ended: stop polling and show its runs everywhere.
        return (md, fig, gr.Timer(active=False), *lists(runs_sel, src_sel), sig, models)

    ui["timer"].tick(
        on_tick,
        [ui["plan_modes"], ui["seen"], ui["cmp_runs"], ui["ov_src"], ui["teacher_dd"],
         ui["student_dd"]],
        [ui["job_md"], ui["curve"], ui["timer"], ui["runs_df"], ui["cmp_runs"], ui["ov_src"],
         ui["seen"], ui["models_md"]],
        api_name="distill_status", concurrency_limit=None, show_progress="hidden",
    )  # fmt: skip

    @guarded("refresh", 4)
    def on_refresh(runs_sel, src_sel):
        busy = ctx.jobs.busy
        return (status_markdown(ctx.jobs.status()) if busy else gr.skip(),
                *lists(runs_sel, src_sel))  # fmt: skip

    ui["refresh_btn"].click(on_refresh, [ui["cmp_runs"], ui["ov_src"]],
                            [ui["job_md"], ui["runs_df"], ui["cmp_runs"], ui["ov_src"]],
                            api_name="runs", concurrency_limit=None)  # fmt: skip

    def on_load(runs_sel, src_sel):
        try:
            return (gr.Timer(active=ctx.jobs.busy), *lists(runs_sel, src_sel))
        except Exception as e:  # noqa: BLE001 - a page load must never fail
            log_error("page load", e)
            return (gr.skip(),) * 4

    ui["demo"].load(on_load, [ui["cmp_runs"], ui["ov_src"]],
                    [ui["timer"], ui["runs_df"], ui["cmp_runs"], ui["ov_src"]],
                    api_visibility="private", concurrency_limit=None)  # fmt: skip
