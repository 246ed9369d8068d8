"""Compare tab: one question through the teacher (answer and rationale) and through the
student without rationale, with the teacher's rationale as a hint, and through trained runs."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from distill.config import recorded_settings
from distill.data import Example
from distill.runs import RunDir
from distill.tasks import get_task
from explain.errors import InputError
from explain.models import LoadedModel
from explain.result import AttributionResult
from explain.templates import get_template

from . import forms
from .common import (
    AppContext,
    Progress,
    gradio_progress,
    guarded,
    log_error,
    num,
    short_spec,
)

# A template's default task for the student (a run's own task wins when its template matches).
TEMPLATE_TASK = {"cqa": "cqa", "nli": "esnli", "svamp": "svamp"}
COMPARE_COLUMNS = ["model", "mode", "answer", "probability", "correct", "note"]


def finished_runs(root) -> list[tuple[str, str]]:
    """(label, path) of finished training runs that hold a final model, newest first."""
    from distill.runs import list_runs

    out = []
    try:
        df = list_runs(root)
    except Exception as e:  # a broken folder must not break the page
        log_error("listing runs", e)
        return out
    for row in df.itertuples(index=False):
        if row.kind != "train" or row.status != "finished":
            continue
        if not (RunDir(row.path).model_dir / "config.json").is_file():
            continue
        acc = f", acc {row.accuracy:.2f}" if num(row.accuracy) is not None else ""
        out.append((f"{row.name} ({row.mode}, {row.task}{acc})", str(row.path)))
    return out


def compare_task(template: str, run_task: str | None = None) -> str:
    """The student task for an input template (a run's own task when its template matches)."""
    if run_task and get_task(run_task).template == template:
        return run_task
    if template not in TEMPLATE_TASK:
        raise InputError(
            "Compare needs a task input (multiple choice, premise/hypothesis or a math word "
            "problem): the student was trained on one of those formats"
        )
    return TEMPLATE_TASK[template]


def compare_one(
    ctx: AppContext,
    teacher: str,
    student: str,
    template: str,
    fields: dict,
    gold: str | None,
    run_paths: list[str],
    method: str = "saliency",
    top_k: int = 5,
    progress: Progress | None = None,
) -> tuple[AttributionResult, pd.DataFrame]:
    """The teacher's answer and rationale, and the student's answers side by side.

    Rows: the base student without rationale, with the teacher's rationale as a hint, then
    each selected training run (hint-mode runs get the teacher's rationale too).
    """
    from distill.evaluate import predict_one
    from explain.pipeline import explain

    gold = (gold or "").strip() or None
    task = compare_task(template)
    runs = [RunDir(ctx.paths.check(p)) for p in run_paths or []]  # refuse before any work
    t_loaded = ctx.teacher_model(teacher, progress)
    result = explain(t_loaded, fields, template=template, method=method, top_k=int(top_k))
    words = [w.text for w in result.rationale]
    s_loaded = ctx.student_model(student, progress)
    rows = []

    def add(name: str, loaded: LoadedModel, mode: str, task_name: str, note: str = "",
            marker: str = "cue") -> None:  # fmt: skip
        p = predict_one(loaded, task_name, fields, gold=gold, mode=mode, rationale_words=words,
                        marker=marker)  # fmt: skip
        if p.choice and p.choice.strip().lower() not in p.answer.lower():
            # An answer naming no option gets its likeliest option's probability: say which.
            note = "; ".join(x for x in (note, f"likeliest option: {p.choice}") if x)
        rows.append([name, mode, p.answer, round(float(p.probability), 4), p.correct, note])

    add("student, no rationale", s_loaded, "standard", task)
    add("student + teacher rationale (hint)", s_loaded, "hint", task, "hint: " + " ".join(words))
    for run in runs:
        settings = run.config().get("settings") or {}
        mode, run_task = settings.get("mode", "standard"), settings.get("task")
        name = f"run {run.name}"
        if not run.is_finished or not (run.model_dir / "config.json").is_file():
            rows.append([name, mode, "", None, None, "not finished: no final model"])
            continue
        if run_task and get_task(run_task).template != template:
            rows.append([name, mode, "", None, None, f"trained on {run_task}; not this format"])
            continue
        # Prompt the run's model as it was trained (with or without the chat template).
        kw = {} if settings.get("chat_template", True) else {"use_chat_template": False}
        loaded = ctx.student_model(str(run.model_dir), progress, **kw)
        marker = recorded_settings(run.config())["task_marker"]  # as it was trained
        add(name, loaded, mode, compare_task(template, run_task), marker=marker)
    return result, pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def teacher_correct(template: str, fields: dict, answer: str, gold: str | None) -> bool | None:
    from distill.metrics import score_answer

    if not gold:
        return None
    task = get_task(compare_task(template))
    options = get_template(task.template).answer_options(fields)
    ex = Example(id="input", task=task.name, fields=dict(fields), label=gold, options=options)
    return score_answer(task, answer, ex)


def gold_verdict(template: str, fields: dict, answer: str, gold: str | None) -> str:
    """' · ✓ correct' / ' · ✗ wrong (gold: …)' after the teacher's answer, when a gold is given."""
    gold = (gold or "").strip()
    if not gold:
        return ""
    if template not in TEMPLATE_TASK:  # free text: no scorer, just show the gold
        return f" · gold answer: {html.escape(gold)}"
    ok = teacher_correct(template, fields, answer, gold)
    return " · ✓ correct" if ok else f" · ✗ wrong (gold: {html.escape(gold)})"


def _verdict(correct) -> str:
    if correct is True:
        return '<span class="kd-ok">✓ correct</span>'
    if correct is False:
        return '<span class="kd-bad">✗ wrong</span>'
    return '<span class="kd-na">no gold answer</span>'


def compare_cards(result: AttributionResult, df: pd.DataFrame, gold_ok: bool | None) -> str:
    """Teacher card, then one card per student row (answer, probability, verdict)."""
    from explain.figures import rationale_html

    cards = [
        '<div class="kd-card kd-teacher"><div class="kd-card-title">Teacher '
        f"<code>{html.escape(short_spec(result.model))}</code></div>"
        f'<div class="kd-card-answer">{html.escape(result.answer) or "<em>(empty)</em>"}</div>'
        f"<div>{_verdict(gold_ok)}</div><div class='kd-card-sub'>rationale "
        f"({html.escape(result.method)}, top-{len(result.rationale)})</div>"
        f"{rationale_html(result)}</div>"
    ]
    for row in df.itertuples(index=False):
        prob = num(row.probability)
        bar = (
            f'<div class="kd-prob"><span style="width:{prob * 100:.0f}%"></span></div>'
            f"<small>p(answer) = {prob:.3f}</small>"
            if prob is not None
            else ""
        )
        answer = html.escape(str(row.answer)) if row.answer else "<em>—</em>"
        verdict = _verdict(row.correct) if prob is not None else ""
        note = f"<div class='kd-card-sub'>{html.escape(str(row.note))}</div>" if row.note else ""
        cards.append(
            f'<div class="kd-card"><div class="kd-card-title">{html.escape(str(row.model))}'
            f" <small>({html.escape(str(row.mode))})</small></div>"
            f'<div class="kd-card-answer">{answer}</div>{bar}<div>{verdict}</div>{note}</div>'
        )
    return f'<div class="kd-cards">{"".join(cards)}</div>'


# ---------------------------------------------------------------------------------------------
# UI


def layout(ctx: AppContext, ui: dict) -> None:
    gr.Markdown(
        "The same question through the student: without rationale, with the "
        "teacher's rationale as a hint, and through trained runs."
    )
    with gr.Row(elem_classes=["kd-stack"]):
        with gr.Column(scale=2, min_width=280):
            ui["cmp_in"] = forms.input_group(forms.TASK_KINDS, "Multiple choice")
            ui["cmp_runs"] = gr.Dropdown(
                finished_runs(ctx.runs_root), value=[], multiselect=True,
                allow_custom_value=True, label="Trained runs to compare",
                info="finished training runs (or a run folder path)",
            )  # fmt: skip
            ui["cmp_btn"] = gr.Button("Compare", variant="primary", elem_id="kd-compare")
            forms.add_examples(ui["cmp_in"], forms.TASK_KINDS)
        with gr.Column(scale=3, min_width=280):
            ui["cmp_status"] = gr.Markdown()
            ui["cmp_cards"] = gr.HTML()
            with gr.Accordion("Answers as a table", open=False):
                ui["cmp_table"] = gr.Dataframe(headers=COMPARE_COLUMNS, label="Answers",
                                               interactive=False, wrap=True)  # fmt: skip


def wire(ctx: AppContext, ui: dict) -> None:
    from explain.limits import check_input

    from .explain_tab import check_settings

    cmp_in = ui["cmp_in"]

    @guarded("compare", 4)
    def on_compare(teacher, student, kind, q, ch, pr, hy, bo, gold, runs, meth, k,
                   progress=gr.Progress()):  # fmt: skip
        meth, k = check_settings(meth, k)
        gold = forms.text(gold, "gold answer")
        template, fields = forms.task_fields(kind, q, ch, pr, hy, bo)
        check_input(fields)  # the Explain tab's limit, before any model work
        if isinstance(runs, str):
            runs = [runs]
        if not isinstance(runs, list | None) or not all(isinstance(r, str) for r in runs or []):
            raise InputError("trained runs must be a list of run folder paths")
        result, df = compare_one(ctx, teacher, student, template, fields, gold, runs or [],
                                 meth, k, gradio_progress(progress))  # fmt: skip
        ok = teacher_correct(template, fields, result.answer, (gold or "").strip())
        note = (f"Teacher `{short_spec(teacher)}`, student `{short_spec(student)}`;"
                f" {len(df)} student answers.")  # fmt: skip
        return note, compare_cards(result, df, ok), df, ctx.models_markdown(teacher, student)

    ui["cmp_btn"].click(
        on_compare,
        [ui["teacher_dd"], ui["student_dd"], *cmp_in["inputs"], cmp_in["gold"], ui["cmp_runs"],
         ui["method"], ui["top_k"]],
        [ui["cmp_status"], ui["cmp_cards"], ui["cmp_table"], ui["models_md"]],
        api_name="compare", concurrency_id="compute", concurrency_limit=2, preprocess=False,
    )  # fmt: skip
