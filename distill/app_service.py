"""Glue for the app (app.py): pure functions that turn library results into display-ready data,
and the Distill tab's job (extract with the teacher, train each mode, compare).

Nothing here builds Gradio components: callbacks in app.py call these and pass the results
(strings of HTML/Markdown, plotly figures, DataFrames, file paths) straight to the UI, so
each piece can be tested without a browser.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from explain.errors import InputError, KDLensError
from explain.models import LoadedModel, ModelCache, load_model, resolve_spec
from explain.packs import PACKS
from explain.result import AttributionResult
from explain.templates import get_template

from .data import TASKS, DataError, Example, default_path, get_task, load_task
from .jobs import JobManager, one_line
from .runs import RunDir, list_runs, safe_run_dir
from .train import MODES

log = logging.getLogger("kdlens.app")

# The bundled demo data: <repo>/../shared/datasets (DESIGN section 7), or $KDLENS_DATASETS.
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Input kinds shown in the UI -> explain template names.
INPUT_KINDS: dict[str, str] = {
    "Free text": "free",
    "Multiple choice": "cqa",
    "Premise / hypothesis": "nli",
    "Math word problem": "svamp",
}
KIND_OF_TEMPLATE = {v: k for k, v in INPUT_KINDS.items()}
# A template's default task for the student (a run's own task wins when its template matches).
TEMPLATE_TASK = {"cqa": "cqa", "nli": "esnli", "svamp": "svamp"}
DATA_SUFFIXES = (".jsonl", ".json", ".csv")
ALL_TOKENS = "all"


def datasets_dir() -> Path:
    return Path(os.environ.get("KDLENS_DATASETS") or SHARED_DATASETS)


def user_message(e: BaseException) -> str:
    """One readable line for any exception (library errors as they are)."""
    if isinstance(e, KDLensError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory: try a smaller model, fewer examples or a shorter input"
    return one_line(e)


def log_error(where: str, e: BaseException) -> None:
    """Tracebacks go to the server log only (not for user errors); the UI shows
    :func:`user_message`."""
    if isinstance(e, KDLensError):
        log.info("%s: %s", where, e)
    else:
        log.warning("%s failed: %s\n%s", where, user_message(e), traceback.format_exc())


# ---------------------------------------------------------------------------------------------
# Shared state of one app instance


@dataclass
class AppContext:
    """What every callback shares: the model caches, the one job slot, the runs folder.

    Two caches: the teacher's holds one model (picking another teacher frees the old one);
    the students' holds the student and trained runs (least recently used goes first). A
    spec loaded in one is shared with the other, never loaded twice.
    """

    teacher: str
    student: str
    runs_root: Path
    model_loader: Callable[..., LoadedModel] = load_model
    cache_capacity: int = 4
    data_root: Path = field(default_factory=datasets_dir)
    teachers: ModelCache = field(init=False)
    students: ModelCache = field(init=False)
    jobs: JobManager = field(init=False)

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).expanduser().resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.teachers = ModelCache(1, self.model_loader)
        self.students = ModelCache(max(self.cache_capacity - 1, 1), self.model_loader)
        self.jobs = JobManager()

    def _get(self, spec: str, mine: ModelCache, other: ModelCache, role: str, **kw) -> LoadedModel:
        spec = (spec or "").strip()
        if not spec:
            raise InputError(f"no {role} model given; pick one or type a spec")
        if spec in other.loaded_specs() and spec not in mine.loaded_specs():
            return other.get(spec, **kw)  # already loaded in the other role: share it
        if spec not in mine.loaded_specs() and spec not in PACKS:
            # ModelCache evicts before it loads: refuse a mistyped folder before that.
            resolve_spec(spec)
        return mine.get(spec, **kw)

    def teacher_model(self, spec: str) -> LoadedModel:
        return self._get(spec, self.teachers, self.students, "teacher")

    def student_model(self, spec: str, **kw) -> LoadedModel:
        return self._get(spec, self.students, self.teachers, "student", **kw)

    def loaded_specs(self) -> list[str]:
        return self.teachers.loaded_specs() + self.students.loaded_specs()


def device_note() -> str:
    """Which device models run on, said once in the header."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"GPU: **{html.escape(name)}** (models and training use it)"
    return (
        "No GPU found: running on the **CPU** (default sizes are small so runs finish in minutes)"
    )


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def short_spec(spec: str) -> str:
    """A model spec for display: a folder by its name (runs by ``run/model``)."""
    spec = str(spec or "")
    if "/" not in spec or not Path(spec).expanduser().exists():
        return spec
    p = Path(spec)
    return f"{p.parent.name}/{p.name}" if p.name == "model" else p.name


def model_choices(*specs: str) -> list[str]:
    """Model dropdown choices: the given specs first, then the offline packs."""
    out: list[str] = []
    for s in [*specs, *PACKS]:
        if s and s not in out:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# Task input


def parse_choices(text: str | list | None) -> list[str]:
    """Choices typed as "a | b | c" or one per line."""
    if isinstance(text, list):
        return [str(c).strip() for c in text if str(c).strip()]
    parts = re.split(r"\s*\|\s*|\n", text or "")
    return [p.strip() for p in parts if p.strip()]


def task_fields(
    kind: str,
    question: str = "",
    choices: str = "",
    premise: str = "",
    hypothesis: str = "",
    body: str = "",
) -> tuple[str, dict]:
    """(template, fields) from the input form; raises InputError on an empty or bad input."""
    template = INPUT_KINDS.get(kind, kind)
    if template == "free":
        fields = {"text": question}
    elif template == "cqa":
        fields = {"question": question, "choices": parse_choices(choices)}
    elif template == "nli":
        fields = {"premise": premise, "hypothesis": hypothesis}
    elif template == "svamp":
        fields = {"body": body, "question": question}
    else:
        raise InputError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")
    get_template(template).render(fields)  # validates: empty text, too few choices...
    return template, fields


def example_rows(records: list[dict]) -> tuple[list[list], list[str]]:
    """Rows for the form's examples: [kind, question, choices, premise, hypothesis, body, gold]."""
    rows, labels = [], []
    for r in records:
        t = r["template"]
        question = r.get("question") or r.get("text") or ""
        rows.append(
            [
                KIND_OF_TEMPLATE.get(t, "Free text"),
                question,
                " | ".join(r.get("choices") or []),
                r.get("premise", ""),
                r.get("hypothesis", ""),
                r.get("body", ""),
                r.get("answer", ""),
            ]
        )
        shown = question or r.get("hypothesis") or r.get("body") or ""
        labels.append(f"[{t}] {shorten(shown, 70)}")
    return rows, labels


def shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Explain tab


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
    answer_md = f"**Teacher's answer{given}:** {answer}"
    info = [
        f"`{result.model}` · {result.method} · k = {result.settings.get('top_k')} · "
        f"{result.seconds:.2f} s · scores for {scope}",
    ]
    info += [f"⚠ {html.escape(w)}" for w in result.warnings]
    heat = _keep_width(figures.heatmap(result, level=level))
    if token not in (None, "", ALL_TOKENS):
        _mark_row(heat, int(view.settings["output_token"]))
    return ExplainView(
        answer_md=answer_md,
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
        fig.add_shape(
            type="rect",
            x0=-0.5,
            x1=n - 0.5,
            y0=row - 0.5,
            y1=row + 0.5,
            xref="x",
            yref="y",
            line={"color": "#111", "width": 2},
        )


def export_result(result: AttributionResult, out_root: Path) -> list[str]:
    """JSON, CSV and standalone HTML of the result in a fresh folder; their paths."""
    from explain.export import write_exports

    out_root.mkdir(parents=True, exist_ok=True)
    folder = Path(
        os.path.join(out_root, time.strftime("%Y%m%d-%H%M%S-") + f"{time.time_ns() % 10**6}")
    )
    stem = f"kdlens-{result.method}"
    if "output_token" in result.settings:
        stem += f"-token{result.settings['output_token']}"
    paths = write_exports(result, folder, stem)
    return [str(paths[k]) for k in ("json", "csv", "html")]


# ---------------------------------------------------------------------------------------------
# Compare tab


def finished_runs(root: Path) -> list[tuple[str, str]]:
    """(label, path) of finished training runs that hold a final model, newest first."""
    out = []
    try:
        df = list_runs(root)
    except Exception as e:  # a broken folder must not break the page
        log_error("listing runs", e)
        return out
    for row in df.itertuples(index=False):
        if row.kind != "train" or row.status != "finished":
            continue
        if not (Path(row.path) / "model" / "config.json").is_file():
            continue
        acc = f", acc {row.accuracy:.2f}" if _num(row.accuracy) is not None else ""
        out.append((f"{row.name} ({row.mode}, {row.task}{acc})", str(row.path)))
    return out


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


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


COMPARE_COLUMNS = ["model", "mode", "answer", "probability", "correct", "note"]


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
) -> tuple[AttributionResult, pd.DataFrame]:
    """The teacher's answer and rationale, and the student's answers side by side.

    Rows: the base student without rationale, with the teacher's rationale as a hint, then
    each selected training run (hint-mode runs get the teacher's rationale too).
    """
    from explain.pipeline import explain

    from .evaluate import predict_one

    gold = (gold or "").strip() or None
    task = compare_task(template)
    t_loaded = ctx.teacher_model(teacher)
    result = explain(t_loaded, fields, template=template, method=method, top_k=int(top_k))
    words = [w.text for w in result.rationale]
    s_loaded = ctx.student_model(student)
    rows = []

    def add(name: str, loaded: LoadedModel, mode: str, task_name: str, note: str = "") -> None:
        p = predict_one(loaded, task_name, fields, gold=gold, mode=mode, rationale_words=words)
        if p.choice and p.choice.strip().lower() not in p.answer.lower():
            # An answer naming no option gets its likeliest option's probability: say which.
            note = "; ".join(x for x in (note, f"likeliest option: {p.choice}") if x)
        rows.append([name, mode, p.answer, round(float(p.probability), 4), p.correct, note])

    add("student, no rationale", s_loaded, "standard", task)
    add("student + teacher rationale (hint)", s_loaded, "hint", task, "hint: " + " ".join(words))
    for path in run_paths or []:
        run = RunDir(path)
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
        loaded = ctx.student_model(str(run.model_dir), **kw)
        add(name, loaded, mode, compare_task(template, run_task))
    return result, pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def teacher_correct(template: str, fields: dict, answer: str, gold: str | None) -> bool | None:
    from .metrics import score_answer

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
        prob = _num(row.probability)
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
# Distill tab: the request, its data, and the job


DATA_SOURCES = ("demo set", "path", "upload")


def default_sizes(gpu: bool | None = None) -> dict:
    """Form defaults: CPU sizes finish in minutes; a GPU affords a real run."""
    gpu = has_gpu() if gpu is None else gpu
    if gpu:
        return {"limit": 2000, "steps": 500, "batch_size": 16, "top_k": 5, "dev_size": 0.1}
    # CPU: about 10 s per example for the 1.5B teacher's extraction, 2-3 s per student step.
    return {"limit": 20, "steps": 12, "batch_size": 4, "top_k": 5, "dev_size": 0.25}


def resolve_data(
    task: str,
    source: str,
    path: str | None,
    upload: str | None,
    root: Path,
    data_root: Path | None = None,
) -> Path:
    """The data file for a run: the demo set, a given path, or a validated upload (copied
    under ``<runs>/uploads`` so the run keeps its data after Gradio clears its cache)."""
    get_task(task)
    if source == "demo set":
        folder = data_root or datasets_dir()
        p = default_path(task, folder)
        if not p.is_file():
            raise DataError(
                f"the demo set for {task} is not here ({p}); give a path or upload a file"
            )
    elif source == "path":
        if not (path or "").strip():
            raise InputError("give the path of a .jsonl or .csv data file")
        p = Path(path.strip()).expanduser()
    elif source == "upload":
        if not upload:
            raise InputError("upload a .jsonl or .csv data file first")
        p = store_upload(Path(upload), root / "uploads")
    else:
        raise InputError(f"unknown data source {source!r}; use one of {', '.join(DATA_SOURCES)}")
    if p.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"{p.name}: use a .jsonl, .json or .csv file")
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    load_task(task, p, limit=50)  # early, located errors instead of a failed job
    return p


def store_upload(src: Path, folder: Path) -> Path:
    if src.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"{src.name}: upload a .jsonl, .json or .csv file")
    if not src.is_file():
        raise DataError("the upload is gone; upload the file again")
    from .data import data_hash

    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", src.name).strip("._") or "data"
    dest = folder / f"{data_hash(src)[:12]}-{name}"
    if not dest.exists():
        tmp = folder / f".{dest.name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return dest


@dataclass
class DistillPlan:
    """All settings of one Distill job; run folders are fixed up front."""

    task: str
    data: str
    teacher: str
    student: str
    modes: list[str]
    limit: int
    steps: int
    batch_size: int
    top_k: int
    lr: float = 5e-5
    method: str = "saliency"
    target: str = "generated"
    dev_size: float = 0.25
    seed: int = 0
    extract_dir: str | None = None
    run_dirs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


NEEDS_RATIONALES = ("saliency", "hint")


def plan_distill(
    root: Path,
    task: str,
    data: Path,
    teacher: str,
    student: str,
    modes: list[str],
    limit: int,
    steps: int,
    batch_size: int,
    top_k: int,
    lr: float = 5e-5,
    method: str = "saliency",
    target: str = "generated",
    dev_size: float = 0.25,
    name: str = "",
) -> DistillPlan:
    """Validate the form and name the run folders (``<name>-extract``, ``<name>-<mode>``)."""
    from explain.attr import METHODS

    modes = [m for m in MODES if m in (modes or [])]
    if not modes:
        raise InputError(f"pick at least one mode: {', '.join(MODES)}")
    for label_, v, lo in (("size", limit, 4), ("steps", steps, 1), ("batch size", batch_size, 1),
                          ("k", top_k, 1)):  # fmt: skip
        if v is None or int(v) < lo:
            raise InputError(f"{label_} must be at least {lo}")
    if method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}")
    if target not in ("generated", "gold"):
        raise InputError("rationale target must be 'generated' or 'gold'")
    if not (teacher or "").strip() and any(m in NEEDS_RATIONALES for m in modes):
        raise InputError("modes saliency and hint need a teacher model")
    if not (student or "").strip():
        raise InputError("pick a student model")
    if "dss" in modes and not (Path(data).parent / "llm").is_dir():
        raise InputError("mode dss needs the data's LLM rationales (llm/ next to the data file)")
    base = (name or "").strip() or f"{time.strftime('%Y%m%d-%H%M%S')}-{task}"
    safe_run_dir(root, base)  # refuse a bad name before any work
    plan = DistillPlan(
        task=task, data=str(data), teacher=teacher.strip(), student=student.strip(),
        modes=modes, limit=int(limit), steps=int(steps), batch_size=int(batch_size),
        top_k=int(top_k), lr=float(lr), method=method, target=target,
        dev_size=float(dev_size),
    )  # fmt: skip
    if any(m in NEEDS_RATIONALES for m in modes):
        plan.extract_dir = str(safe_run_dir(root, f"{base}-extract"))
    for m in modes:
        d = safe_run_dir(root, f"{base}-{m}")
        if RunDir(d).is_finished:
            raise InputError(f"run {d.name} already exists and is finished; choose another name")
        plan.run_dirs[m] = str(d)
    return plan


def _stage_progress(emit: Callable[[dict], None], label: str) -> Callable[[dict], None]:
    """Prefix a stage's progress records with what the job is doing (e.g. 'train saliency')."""

    def progress(record: dict) -> None:
        rec = dict(record)
        rec.setdefault("message", "")  # a stale message ("loading …") would linger
        if rec.get("step") is None and rec.get("done") is not None:
            rec["step"] = rec["done"]  # extraction counts examples done
        rec["stage"] = f"{label}: {rec['stage']}" if rec.get("stage") else label
        emit(rec)

    return progress


def run_distill(
    plan: DistillPlan,
    progress: Callable[[dict], None],
    stop: threading.Event,
    teacher_loader: Callable[[str], LoadedModel] | None = None,
    student_loader: Callable[..., LoadedModel] = load_model,
) -> dict:
    """The Distill job: extract rationales (when a mode needs them), train each mode, compare.

    ``teacher_loader`` gives the shared (frozen) teacher; ``student_loader`` must return a
    fresh model each call because training changes it in place. Stopping keeps the current
    run's last checkpoint and returns ``status: stopped``.
    """
    from .evaluate import compare
    from .train import TrainConfig, train

    done: dict[str, dict] = {}
    n_stages = len(plan.modes) + (1 if plan.extract_dir else 0)
    stage_no = 0
    if plan.extract_dir:
        stage_no += 1
        label = f"extract rationales ({stage_no}/{n_stages})"
        progress({"stage": label, "message": f"loading teacher {plan.teacher}",
                  "run_dir": plan.extract_dir})  # fmt: skip
        summary = extract_rationales(plan, _stage_progress(progress, label), stop, teacher_loader)
        if stop.is_set() or summary.get("status") == "stopped":
            return {"status": "stopped", "run_dir": plan.extract_dir, "stage": "extract"}
    for mode in plan.modes:
        stage_no += 1
        label = f"train {mode} ({stage_no}/{n_stages})"
        config = TrainConfig(
            student=plan.student, task=plan.task, data=plan.data, mode=mode,
            rationales=plan.extract_dir if mode in NEEDS_RATIONALES else None,
            steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, seed=plan.seed,
            dev_size=plan.dev_size, limit=plan.limit, out=plan.run_dirs[mode],
            eval_every=max(plan.steps // 4, 1), save_every=max(plan.steps // 4, 1),
            dev_limit=50,
        )  # fmt: skip
        summary = train(config, _stage_progress(progress, label), stop, student_loader)
        done[mode] = summary
        if summary.get("status") == "stopped":
            return {"status": "stopped", "run_dir": plan.run_dirs[mode], "stage": mode,
                    "step": summary.get("step"), "runs": list(plan.run_dirs.values())}  # fmt: skip
    finished = [plan.run_dirs[m] for m in plan.modes if done.get(m, {}).get("status") == "finished"]
    table = compare(finished) if finished else pd.DataFrame()
    return {
        "status": "finished",
        "run_dir": finished[-1] if finished else None,
        "runs": finished,
        "accuracy": {m: done[m].get("accuracy") for m in plan.modes if m in done},
        "comparison": table.to_dict(orient="records"),
    }


def extract_rationales(
    plan: DistillPlan,
    progress: Callable[[dict], None],
    stop: threading.Event,
    teacher_loader: Callable[[str], LoadedModel] | None,
) -> dict:
    """The teacher's top-k rationales for every example, via ``distill.extract``."""
    from .data import data_hash
    from .extract import extract

    loader = teacher_loader or load_model
    teacher = loader(plan.teacher)
    examples = load_task(plan.task, plan.data, limit=plan.limit)
    config = {"data": plan.data, "data_hash": data_hash(plan.data), "limit": plan.limit}
    return extract(
        teacher, examples, plan.extract_dir, task=plan.task, method=plan.method,
        top_k=plan.top_k, target=plan.target, batch_size=min(plan.batch_size, 4),
        config=config, progress=progress, stop=stop,
    ) or {}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Distill tab: live status


RUNNING_STATES = ("running", "stopping")


def _fmt_s(s) -> str:
    s = _num(s)
    if s is None:
        return "—"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def status_markdown(status: dict, device: str | None = None) -> str:
    """One-glance job status: state, stage, step, speed, ETA, message or error."""
    state = status.get("state", "idle")
    if state == "idle":
        return "No job yet. Pick the settings and press **Start**."
    stage = str(status.get("stage") or "")
    parts = [f"**{state}**", html.escape(stage) if stage != state else ""]
    if status.get("total"):
        parts.append(f"step {status.get('step', 0)}/{status['total']}")
    eps = _num(status.get("examples_per_s"))
    if eps is not None and state in RUNNING_STATES:
        parts.append(f"{eps:.2f} examples/s")
    if status.get("eta_s") is not None and state in RUNNING_STATES:
        parts.append(f"ETA {_fmt_s(status['eta_s'])}")
    if status.get("elapsed_s") is not None:
        parts.append(f"elapsed {_fmt_s(status['elapsed_s'])}")
    if device:
        parts.append(device)
    lines = [" · ".join(p for p in parts if p)]
    if status.get("error"):
        lines.append(f"⚠ {html.escape(status['error'])}")
    elif status.get("message") and status["message"] != state:
        lines.append(html.escape(str(status["message"])))
    result = status.get("result") or {}
    if result.get("accuracy"):
        accs = ", ".join(
            f"{m} {a:.3f}" if _num(a) is not None else f"{m} —"
            for m, a in result["accuracy"].items()
        )
        lines.append(f"dev accuracy: {accs}")
    if status.get("run_dir"):
        lines.append(f"run folder: `{status['run_dir']}`")
    return "  \n".join(lines)


def _segments(points: list, labels: list[str]) -> list[tuple[str, list, list]]:
    """Split (step, value) points where the step goes back (the next run started)."""
    segs: list[tuple[list, list]] = []
    last = None
    for step, v in points:
        if last is None or step <= last:
            segs.append(([], []))
        segs[-1][0].append(step)
        segs[-1][1].append(v)
        last = step
    return [(labels[i] if i < len(labels) else f"run {i + 1}", x, y) for i, (x, y) in
            enumerate(segs)]  # fmt: skip


def progress_figure(status: dict, modes: list[str] | None = None) -> go.Figure:
    """Training loss per run (left axis) and dev accuracy points (right axis)."""
    modes = modes or []
    fig = go.Figure()
    palette = ["#2166ac", "#e6550d", "#31a354", "#756bb1"]
    for i, (name, x, y) in enumerate(_segments(status.get("losses") or [], modes)):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{name} loss",
                                 line={"color": palette[i % 4]}))  # fmt: skip
    for i, (name, x, y) in enumerate(_segments(status.get("dev") or [], modes)):
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers+lines", name=f"{name} dev acc",
                                 yaxis="y2", line={"dash": "dot", "color": palette[i % 4]},
                                 marker={"size": 9, "symbol": "diamond"}))  # fmt: skip
    fig.update_layout(
        height=320,
        margin={"l": 50, "r": 50, "t": 40, "b": 40},
        title="training loss and dev accuracy",
        xaxis={"title": {"text": "step"}},
        yaxis={"title": {"text": "loss"}},
        yaxis2={
            "title": {"text": "dev accuracy"},
            "overlaying": "y",
            "side": "right",
            "range": [0, 1],
        },  # fmt: skip
        legend={"orientation": "h", "y": -0.25},
    )
    if not fig.data:
        fig.add_annotation(text="the loss curve appears here while a run trains",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")  # fmt: skip
    return fig


RUNS_TABLE_COLUMNS = ["name", "kind", "mode", "task", "student", "steps", "accuracy",
                      "status", "settings"]  # fmt: skip


def runs_table(root: Path) -> pd.DataFrame:
    """Every run folder: mode, settings, accuracy (finished training runs get their key
    settings from :func:`distill.evaluate.compare`)."""
    from .evaluate import compare

    df = list_runs(root)
    settings: dict[str, str] = {}
    for row in df.itertuples(index=False):
        if row.kind == "train" and row.status == "finished":
            try:
                settings[row.name] = compare([row.path]).iloc[0]["settings"]
            except Exception as e:  # one odd folder must not hide the others
                log_error(f"reading run {row.name}", e)
    out = df.assign(settings=[settings.get(n, "") for n in df["name"]])
    out["accuracy"] = [round(a, 4) if _num(a) is not None else None for a in out["accuracy"]]
    out["student"] = [short_spec(s) if isinstance(s, str) else s for s in out["student"]]
    return out[RUNS_TABLE_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Overlap tab


def rationale_sources(root: Path) -> list[tuple[str, str]]:
    """(label, path) of every rationales.jsonl under the runs folder, newest first."""
    found = []
    if root.is_dir():
        for p in root.glob("*/rationales.jsonl"):
            found.append((p.stat().st_mtime, p))
    found.sort(reverse=True)
    return [(p.parent.name, str(p)) for _, p in found]


def overlap_source(choice: str | None, upload: str | None) -> Path:
    """The rationale file to analyse: an upload wins over the picked/typed path."""
    if upload:
        p = Path(upload)
        if p.suffix.lower() not in (".jsonl", ".json"):
            raise DataError(f"{p.name}: upload a rationales .jsonl file")
        return p
    if not (choice or "").strip():
        raise InputError("pick a rationale file from a run, type its path, or upload one")
    return Path(choice.strip()).expanduser()


@dataclass
class OverlapView:
    summary: pd.DataFrame
    summary_fig: go.Figure
    histograms: go.Figure
    rows: list[dict]  # per-example figures
    records: list[dict]  # the rationale records, same order
    note: str


def overlap_view(path: Path, seed: int = 0, n_random: int = 10) -> OverlapView:
    from .overlap import load_rationales, overlap_report

    records = load_rationales(path)
    if not records:
        raise DataError(f"{path.name}: no rationale records")
    report = overlap_report(records, seed=seed, n_random=n_random)
    summary = report.summary_dataframe()
    for col in ("rationale", "random"):
        if col in summary:
            summary[col] = [round(v, 4) if _num(v) is not None else None for v in summary[col]]
    note = f"{len(records)} examples from `{path}`"
    acc = report.summary.get("teacher_accuracy")
    if _num(acc) is not None:
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
        vals = [_num(summary[n].get(key)) for n in names]
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

    names = [n for n in HIST_FIGURES if any(_num(r.get(n)) is not None for r in rows)]
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
            vals = [v for v in (_num(row.get(key)) for row in rows) if v is not None]
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
    from .overlap import DEFINITIONS

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
    from explain.words import WORD_RE

    from .overlap import norm_word

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
    from .overlap import text_words, words_of

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
    v = _num(v)
    return "—" if v is None else f"{v:.2f}"


__all__ = [
    "MODES",
    "TASKS",
    "ALL_TOKENS",
    "AppContext",
    "DistillPlan",
    "INPUT_KINDS",
    "compare_cards",
    "compare_one",
    "default_sizes",
    "device_note",
    "example_rows",
    "explain_view",
    "export_result",
    "finished_runs",
    "gold_verdict",
    "overlap_page",
    "overlap_view",
    "plan_distill",
    "progress_figure",
    "rationale_sources",
    "resolve_data",
    "run_distill",
    "runs_table",
    "status_markdown",
    "task_fields",
    "token_choices",
]
