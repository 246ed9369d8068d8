"""Distill tab: pick a task, data, modes and a preset; one background job runs the experiment
of :mod:`distill.pipeline` (the same as ``python -m distill experiment``): extract the
teacher's rationales, train the student in each mode, evaluate, write the results table. The
page follows its progress from the experiment folder's stage runs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from distill.data import DataError, default_path, load_task
from distill.modes import MODES
from distill.pipeline import run_plan
from distill.plan import PRESETS, Plan, make_plan, validate
from distill.plan import preset_train_size as plan_train_size
from distill.rationales import TARGETS
from distill.runs import safe_run_dir
from distill.tasks import TASKS, get_task
from explain.attr import METHODS
from explain.errors import InputError, KDLensError
from explain.models import LoadedModel

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
from .distill_status import (
    RUNNING_STATES,
    progress_figure,
    results_table,
    runs_table,
    status_markdown,
)
from .forms import text
from .paths import discard_upload, store_upload

DATA_SOURCES = ("demo set", "path", "upload")
DATA_SUFFIXES = (".jsonl", ".json", ".csv")

# The CLI's presets (distill.plan.PRESETS) plus "demo": a 2-core CPU finishes it in a few
# minutes with the 135M student (8 steps of 4 examples, 16 teacher extractions).
DEMO_PRESET = {"train_size": 16, "dev_size": 8, "steps": 8, "epochs": None, "batch_size": 4,
               "lr": 1e-4, "extract_batch": 4, "dev_limit": 8}  # fmt: skip
APP_PRESETS: dict[str, dict] = {"demo": DEMO_PRESET, **PRESETS}


def default_preset(gpu: bool | None = None) -> str:
    """The form's preset: ``demo`` on a CPU (minutes), ``gpu`` with one."""
    return "gpu" if (has_gpu() if gpu is None else gpu) else "demo"


def preset_train_size(name: str, task: str | None = None) -> int:
    """A preset's training examples for ``task`` (0 = the whole file)."""
    if name in PRESETS:
        return plan_train_size(name, task) or 0
    return APP_PRESETS[name].get("train_size") or 0


def preset_fields(name: str, task: str | None = None) -> dict:
    """A preset's sizes as the form shows them (0 = the whole file / train by epochs)."""
    p = APP_PRESETS[name]
    return {"train_size": preset_train_size(name, task), "dev_size": p["dev_size"],
            "steps": p.get("steps") or 0, "epochs": p.get("epochs") or 0,
            "batch_size": p["batch_size"], "lr": p["lr"]}  # fmt: skip


def preset_markdown(name: str) -> str:
    """One line per preset with its sizes, the picked one in bold."""
    lines = []
    for key, p in APP_PRESETS.items():
        size = p.get("train_size") or "all"
        if isinstance(size, dict):  # per task
            size = ", ".join(f"{t} {n}" for t, n in size.items())
        length = f"{p['steps']} steps" if p.get("steps") else f"{p['epochs']:g} epochs"
        line = (f"{key}: {size} training / {p['dev_size']} dev examples, {length}, "
                f"batch {p['batch_size']}, lr {p['lr']:g}")  # fmt: skip
        lines.append(f"**{line}**" if key == name else line)
    cli = "same sizes as `python -m distill experiment --preset {cpu,gpu}`"
    return "Presets (" + cli + "):  \n" + "  \n".join(lines)


def resolve_data(ctx: AppContext, task: str, source: str, path: str | None,
                 upload: str | None) -> Path:  # fmt: skip
    """The data file for a run: the demo set (the task's file in the datasets folder: the
    full data, or the bundled sample on a clone without it), a typed path inside the allowed
    folders, or a validated upload (copied under ``<runs>/uploads`` so the run keeps its data
    after Gradio clears its cache; a rejected upload is removed)."""
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
                with contextlib.suppress(OSError):  # the folder too, when this made it
                    created.parent.rmdir()
            discard_upload(Path(upload))
        raise
    return p


def build_plan(root: Path, task: str, data: Path, teacher: str, student: str,
               modes: list[str], settings: dict, name: str = "",
               preset: str | None = None) -> Plan:  # fmt: skip
    """The experiment's :class:`~distill.plan.Plan` in ``<runs>/<name>``, validated.

    ``settings``: the checked form (:func:`check_form`); a train size or steps of 0 mean the
    whole file and training by epochs. Rerunning the same name and settings resumes."""
    s = dict(settings)
    train_size, steps = s.pop("train_size") or None, s.pop("steps") or None
    epochs = s.pop("epochs")
    base = (name or "").strip() or f"{time.strftime('%Y%m%d-%H%M%S')}-{task}"
    out = safe_run_dir(root, base)  # refuses a bad name before any work
    if (out / "results.md").is_file():
        raise InputError(f"experiment {out.name} already exists and is finished; "
                         "choose another name")  # fmt: skip
    # A CLI preset brings its recipe (train_settings: prompt format, precision, warmup; the
    # gpu preset's batch sizes from the GPU), as `python -m distill experiment --preset` does.
    base = preset if preset in PRESETS else None
    plan = make_plan(
        task, str(out), preset=base, data=str(data), teacher=teacher.strip(),
        student=student.strip(), modes=[m for m in MODES if m in modes],  # registry order
        extract_batch=None if base else min(s["batch_size"], 4), dev_limit=s["dev_size"], **s,
    )  # fmt: skip
    # make_plan ignores None settings; here None is meant (whole file, by epochs / steps).
    plan.train_size, plan.steps, plan.epochs, plan.preset = train_size, steps, epochs, preset
    validate(plan)
    return plan


def run_distill(plan: Plan, progress: Callable[[dict], None], stop: threading.Event,
                teacher_loader: Callable[[str], LoadedModel] | None = None,
                model_loader: Callable[..., LoadedModel] | None = None) -> dict:  # fmt: skip
    """The job: :func:`distill.pipeline.run_plan`, with the job's records counting examples
    done as steps (the status line shows one counter for every stage) and naming the
    experiment folder (the page reads its stage folders), not a stage's."""

    def emit(record: dict) -> None:
        record = dict(record, run_dir=plan.out)
        if record.get("step") is None and record.get("done") is not None:
            record["step"] = record["done"]
        progress(record)

    emit({"stage": "starting", "run_dir": plan.out, "message": f"experiment {plan.out}"})
    kw = {"model_loader": model_loader} if model_loader else {}
    result = run_plan(plan, emit, stop, teacher_loader, **kw)
    return dict(result.to_dict(), run_dir=plan.out)


# ---------------------------------------------------------------------------------------------
# UI


def layout(ctx: AppContext, ui: dict, device: str) -> None:
    preset = default_preset()
    sizes = preset_fields(preset, "cqa")
    gr.Markdown(
        "Extract the teacher's top-k rationales, fine-tune the student in each mode, "
        "evaluate it and the untrained student on a held-out dev split "
        "(`python -m distill experiment`). One job at a time. " + device
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
            ui["preset"] = gr.Radio(list(APP_PRESETS), value=preset, label="Preset")
            ui["preset_md"] = gr.Markdown(preset_markdown(preset), elem_id="kd-presets")
            with gr.Row():
                ui["train_size"] = gr.Number(sizes["train_size"], precision=0,
                                             label="Training examples (0 = all)")  # fmt: skip
                ui["dev_size"] = gr.Number(sizes["dev_size"], precision=0, label="Dev examples")
            with gr.Row():
                ui["steps"] = gr.Number(sizes["steps"], precision=0,
                                        label="Steps (0 = by epochs)")  # fmt: skip
                ui["epochs"] = gr.Number(sizes["epochs"], label="Epochs")
                ui["d_k"] = gr.Number(5, precision=0, label="k")
            with gr.Accordion("More settings", open=False):
                ui["batch"] = gr.Number(sizes["batch_size"], precision=0, label="Batch")
                ui["lr"] = gr.Number(sizes["lr"], label="Learning rate")
                ui["d_method"] = gr.Dropdown(sorted(METHODS), value="saliency",
                                             label="Attribution method")  # fmt: skip
                ui["target"] = gr.Radio(
                    list(TARGETS), value="generated", label="Rationale explains the teacher's "
                    "own answer (generated) or the gold answer (analysis only)",
                )  # fmt: skip
                ui["seeds"] = gr.Textbox(
                    "0", label="Seeds (a student per mode and seed, e.g. 0 1; each seed carves its "
                    "own dev split)", elem_id="kd-seeds",
                )  # fmt: skip
                ui["run_name"] = gr.Textbox(label="Experiment name (optional; the same name "
                                            "and settings resume a stopped job)")  # fmt: skip
            with gr.Row():
                ui["start_btn"] = gr.Button("Start", variant="primary", elem_id="kd-start")
                ui["stop_btn"] = gr.Button("Stop", variant="stop", elem_id="kd-stop")
        with gr.Column(scale=3, min_width=280):
            ui["job_md"] = gr.Markdown(status_markdown(ctx.jobs.status()), elem_id="kd-job")
            ui["curve"] = gr.Plot(progress_figure(), label="Progress")
            ui["results_md"] = gr.Markdown("", elem_id="kd-results")
    ui["runs_df"] = gr.Dataframe(label="Runs", interactive=False, wrap=True)
    ui["refresh_btn"] = gr.Button("Refresh runs", size="sm")
    ui["timer"] = gr.Timer(1.0, active=False)
    ui["seen"] = gr.State(None)

    def on_preset(name, task):
        if name not in APP_PRESETS:
            return (gr.skip(),) * 7
        f = preset_fields(name, task)
        return (preset_markdown(name), f["train_size"], f["dev_size"], f["steps"],
                f["epochs"], f["batch_size"], f["lr"])  # fmt: skip

    def on_task(task, name):  # a preset sized per task: that task's training examples
        if name not in PRESETS or not isinstance(PRESETS[name].get("train_size"), dict):
            return gr.skip()
        return preset_train_size(name, task)

    ui["task"].change(on_task, [ui["task"], ui["preset"]], ui["train_size"], queue=False,
                      api_visibility="private")  # fmt: skip
    ui["preset"].change(
        on_preset, [ui["preset"], ui["task"]],
        [ui["preset_md"], ui["train_size"], ui["dev_size"], ui["steps"], ui["epochs"],
         ui["batch"], ui["lr"]], queue=False, api_visibility="private",
    )  # fmt: skip


MAX_SEEDS = 8


def parse_seeds(value) -> list[int]:
    """Seeds typed as "0 1" or "0, 1" (the API may send a number or a list): distinct whole
    numbers, at most :data:`MAX_SEEDS`."""
    if isinstance(value, bool):
        raise InputError(f"seeds must be whole numbers like 0 1; got {value!r}")
    if isinstance(value, int | float):
        items = [value]
    elif isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = [v for v in value.replace(",", " ").split() if v]
    else:
        raise InputError(f"seeds must be whole numbers like 0 1; got {type(value).__name__}")
    if not items:
        raise InputError("give at least one seed, like 0 or 0 1")
    if len(items) > MAX_SEEDS:  # before parsing: a pasted megabyte of numbers stops here
        raise InputError(f"at most {MAX_SEEDS} seeds; got {len(items)}")
    seeds = [whole(v, "each seed", 0, 2**31 - 1) for v in items]
    repeated = sorted({x for x in seeds if seeds.count(x) > 1})
    if repeated:
        raise InputError(f"each seed once: {', '.join(map(str, repeated))} repeats")
    return seeds


def check_form(tsk, src, mds, n, dev, st, ep, k, bs, rate, meth, tgt, sd="0") -> dict:
    """The form's values checked with one-line messages (the API can send anything)."""
    one_of(tsk, "task", list(TASKS))
    one_of(src, "data source", DATA_SOURCES)
    if not isinstance(mds, list) or not all(isinstance(m, str) for m in mds):
        raise InputError(f"modes must be a list of: {', '.join(MODES)}")
    for m in mds:
        one_of(m, "mode", list(MODES))
    get_task(tsk)
    steps = whole(st, "steps", 0)
    return {
        "train_size": whole(n, "training examples", 0), "dev_size": whole(dev, "dev examples", 1),
        "steps": steps, "epochs": None if steps else positive(ep, "epochs"),
        "top_k": whole(k, "k", 1, 50), "batch_size": whole(bs, "batch size", 1),
        "lr": positive(rate, "learning rate"),
        "method": one_of(meth, "attribution method", sorted(METHODS)),
        "target": one_of(tgt, "rationale target", TARGETS), "seeds": parse_seeds(sd),
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
                 name, dev, ep, preset, seeds="0"):  # fmt: skip
        if ctx.jobs.busy:
            raise KDLensError("a job is already running; stop it or wait for it to finish")
        s = check_form(tsk, src, mds, n, dev, st, ep, k, bs, rate, meth, tgt, seeds)
        name = text(name, "run name")
        preset = one_of(preset, "preset", list(APP_PRESETS)) if preset else None
        if mds and any(m != "standard" for m in mds):
            ctx.paths.check_model(str(teacher or ""))
        ctx.paths.check_model(str(student or ""))
        data = resolve_data(ctx, tsk, src, path, file_path(up))
        plan = build_plan(ctx.runs_root, tsk, data, str(teacher or ""), str(student or ""),
                          mds, s, name=name or "", preset=preset)  # fmt: skip
        ctx.jobs.start("distill", run_distill, plan=plan, teacher_loader=ctx.teacher_model,
                       model_loader=ctx.model_loader)  # fmt: skip
        return status_markdown(ctx.jobs.status()), gr.Timer(active=True), ""

    ui["start_btn"].click(
        on_start,
        [ui["task"], ui["source"], ui["data_path"], ui["upload"], ui["teacher_dd"],
         ui["student_dd"], ui["modes"], ui["train_size"], ui["steps"], ui["d_k"], ui["batch"],
         ui["lr"], ui["d_method"], ui["target"], ui["run_name"], ui["dev_size"], ui["epochs"],
         ui["preset"], ui["seeds"]],
        [ui["job_md"], ui["timer"], ui["results_md"]], api_name="distill_start",
        concurrency_limit=None, preprocess=False,
    )  # fmt: skip

    @guarded("stop", 1)
    def on_stop():
        if ctx.jobs.stop():
            return "Stopping after the current step; the last checkpoint is kept."
        return "No job is running."

    ui["stop_btn"].click(on_stop, None, ui["job_md"], api_name="distill_stop",
                         concurrency_limit=None)  # fmt: skip

    @guarded("status", 9)
    def on_tick(last, runs_sel, src_sel, teacher, student):
        st = ctx.jobs.status()
        sig = [st["state"], st["id"], st["step"], len(st["losses"]), len(st["dev"]),
               st["stage"]]  # fmt: skip
        running = st["state"] in RUNNING_STATES
        md = status_markdown(st)
        fig = progress_figure(st.get("run_dir")) if sig != last else gr.skip()
        models = ctx.models_markdown(teacher, student)
        if running:
            return md, fig, gr.skip(), gr.skip(), gr.skip(), gr.skip(), sig, models, gr.skip()
        # The job ended: stop polling, show its results table and its runs everywhere.
        return (md, fig, gr.Timer(active=False), *lists(runs_sel, src_sel), sig, models,
                results_table(st))  # fmt: skip

    ui["timer"].tick(
        on_tick,
        [ui["seen"], ui["cmp_runs"], ui["ov_src"], ui["teacher_dd"], ui["student_dd"]],
        [ui["job_md"], ui["curve"], ui["timer"], ui["runs_df"], ui["cmp_runs"], ui["ov_src"],
         ui["seen"], ui["models_md"], ui["results_md"]],
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
