"""What every tab shares: the app context (model caches with their load states, the job slot,
the folders the app may read), one-line errors, input checks and small display helpers."""

from __future__ import annotations

import functools
import html
import logging
import math
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from distill.datasets import datasets_dir
from distill.jobs import JobManager, one_line
from explain.errors import InputError, KDLensError
from explain.models import LoadedModel, ModelCache, load_model, resolve_spec
from explain.packs import PACKS

from .paths import PathPolicy

log = logging.getLogger("kdlens.app")

Progress = Callable[[str, float | None], None]


def _quiet(msg: str, frac: float | None) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Errors: every callback's first output is a status Markdown. Events that take user input run
# with ``preprocess=False``: an API caller can send any value (k='abc', a method not in the
# list), and the callback's own checks answer it with the UI's one-line message instead of
# Gradio's generic conversion error.


def user_message(e: BaseException) -> str:
    """One readable line for any exception (library errors as they are)."""
    if isinstance(e, KDLensError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory: try a smaller model, fewer examples or a shorter input"
    return one_line(e)


def log_error(where: str, e: BaseException) -> None:
    """Tracebacks go to the server log only (not for user errors)."""
    if isinstance(e, KDLensError):
        log.info("%s: %s", where, e)
    else:
        log.warning("%s failed: %s\n%s", where, user_message(e), traceback.format_exc())


def error_md(message: str) -> str:
    return f'<div class="kd-error">⚠ {html.escape(message, quote=False)}</div>'


def guarded(where: str, n_out: int) -> Callable:
    """Wrap a callback: any exception becomes a one-line message (first output) and a toast;
    the other outputs keep their values."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - the app must keep serving
                log_error(where, e)
                msg = user_message(e)
                gr.Warning(msg)
                if n_out == 1:
                    return error_md(msg)
                return (error_md(msg),) + (gr.skip(),) * (n_out - 1)

        return wrapper

    return deco


def file_path(value) -> str | None:
    """The server path of an upload given raw (events run with ``preprocess=False``)."""
    if isinstance(value, dict):
        value = value.get("path")
    if value is not None and not isinstance(value, str):
        raise InputError("an upload must be a file")
    return value or None


def whole(value, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as a whole number in [lo, hi], or an InputError naming the setting."""
    span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
    try:
        f = float(value)
        ok = math.isfinite(f) and f == int(f)
    except (TypeError, ValueError):
        ok = False
    if not ok or int(f) < lo or (hi is not None and int(f) > hi):
        raise InputError(f"{name} must be a whole number {span}; got {value!r}")
    return int(f)


def positive(value, name: str) -> float:
    """``value`` as a finite number above 0, or an InputError naming the setting."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f <= 0:
        raise InputError(f"{name} must be a number above 0; got {value!r}")
    return f


def one_of(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise InputError(f"unknown {name} {value!r}; use one of {', '.join(map(str, options))}")
    return value


def num(v) -> float | None:
    """A finite float, or None (NaN, None, text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def choices_update(choices: list[tuple[str, str]], keep: list | str | None = None):
    """A dropdown's new choices, keeping the selection that is still there."""
    values = {v for _, v in choices}
    if isinstance(keep, list):
        return gr.update(choices=choices, value=[v for v in keep if v in values])
    return gr.update(choices=choices, value=keep if keep in values else None)


# ---------------------------------------------------------------------------------------------
# Devices and model specs


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def device_note() -> str:
    """Which device models run on, said once in the header."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"GPU: **{html.escape(name)}** (models and training use it)"
    return (
        "No GPU found: running on the **CPU** (default sizes are small so runs finish in minutes)"
    )


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
# Shared state of one app instance


@dataclass
class AppContext:
    """What every callback shares: the model caches, the one job slot, the folders.

    Two caches: the teacher's holds one model (picking another teacher frees the old one);
    the students' holds the student and trained runs (least recently used goes first). A
    spec loaded in one is shared with the other, never loaded twice. Each spec's state (not
    loaded, loading, ready on a device) is shown in the header.
    """

    teacher: str
    student: str
    runs_root: Path
    model_loader: Callable[..., LoadedModel] = load_model
    cache_capacity: int = 4
    data_root: Path = field(default_factory=datasets_dir)  # distill.datasets' one rule
    exports_root: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "kdlens-exports"
    )
    teachers: ModelCache = field(init=False)
    students: ModelCache = field(init=False)
    jobs: JobManager = field(init=False)
    paths: PathPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).expanduser().resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.data_root = Path(self.data_root).expanduser()
        self.teachers = ModelCache(1, self.model_loader)
        self.students = ModelCache(max(self.cache_capacity - 1, 1), self.model_loader)
        self.jobs = JobManager()
        self.paths = PathPolicy(self.runs_root, self.data_root, [self.teacher, self.student])
        self._lock = threading.Lock()
        self._loading: dict[str, int] = {}
        self._device: dict[str, str] = {}
        self.load_seconds: dict[str, float] = {}

    def _get(self, spec: str, mine: ModelCache, other: ModelCache, role: str,
             progress: Progress | None = None, **kw) -> LoadedModel:  # fmt: skip
        if spec is not None and not isinstance(spec, str):
            raise InputError(f"the {role} model must be a spec (text); got {spec!r}")
        spec = (spec or "").strip()
        if not spec:
            raise InputError(f"no {role} model given; pick one or type a spec")
        self.paths.check_model(spec)
        if spec in other.loaded_specs() and spec not in mine.loaded_specs():
            return other.get(spec, **kw)  # already loaded in the other role: share it
        if spec in mine.loaded_specs():
            return mine.get(spec, **kw)
        if spec not in PACKS:
            resolve_spec(spec)  # ModelCache evicts before it loads: refuse a typo first
        note = progress or _quiet
        with self._lock:
            self._loading[spec] = self._loading.get(spec, 0) + 1
        t0 = time.perf_counter()
        try:
            note(f"loading {role} {short_spec(spec)}…", None)
            loaded = mine.get(spec, progress=note, **kw)
        finally:
            with self._lock:
                self._loading[spec] -= 1
        self.load_seconds[spec] = time.perf_counter() - t0
        self._device[spec] = str(loaded.device)
        note(f"{role} {short_spec(spec)} ready on {loaded.device}", 1.0)
        return loaded

    def teacher_model(self, spec: str, progress: Progress | None = None) -> LoadedModel:
        return self._get(spec, self.teachers, self.students, "teacher", progress)

    def student_model(self, spec: str, progress: Progress | None = None, **kw) -> LoadedModel:
        return self._get(spec, self.students, self.teachers, "student", progress, **kw)

    def loaded_specs(self) -> list[str]:
        return self.teachers.loaded_specs() + self.students.loaded_specs()

    def model_state(self, spec: str) -> str:
        """'not loaded', 'loading…' or 'ready on <device>'."""
        spec = (spec or "").strip()
        with self._lock:
            if self._loading.get(spec):
                return "loading…"
        if spec in self.loaded_specs():
            return f"ready on {self._device.get(spec, 'its device')}"
        return "not loaded"

    def models_markdown(self, teacher: str | None = None, student: str | None = None) -> str:
        """The header's model line: each model's state."""
        parts = []
        for role, spec in (
            ("Teacher", teacher or self.teacher),
            ("Student", student or self.student),
        ):
            state = self.model_state(spec)
            cls = {"loading…": "kd-loading", "not loaded": "kd-na"}.get(state, "kd-ok")
            parts.append(f"{role} `{html.escape(short_spec(spec))}`: "
                         f'<span class="{cls}">{state}</span>')  # fmt: skip
        return "Models: " + " · ".join(parts)


def gradio_progress(progress: gr.Progress) -> Progress:
    """A ``progress(msg, frac)`` callback (packs, load_model) drawn by Gradio's progress bar."""

    def note(msg: str, frac: float | None) -> None:
        progress(0.0 if frac is None else frac, desc=msg)  # Gradio hides a text without one

    return note
