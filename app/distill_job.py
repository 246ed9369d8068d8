"""The Distill job: plan the run folders, extract rationales, train each mode, compare.

ORCHESTRATION, TO MOVE: this is the extract -> train -> evaluate sequence the app runs; it is
being moved into ``distill.pipeline`` (one home for the CLI and the app). At the merge, point
:mod:`app.distill_tab` (its one import of this module) at ``distill.pipeline`` and delete this
file. Nothing here builds UI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from distill.data import load_task
from distill.runs import RunDir, safe_run_dir
from distill.train import MODES
from explain.errors import InputError
from explain.models import LoadedModel, load_model


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
    from distill.evaluate import compare
    from distill.train import TrainConfig, train

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
    from distill.data import data_hash
    from distill.extract import extract

    loader = teacher_loader or load_model
    teacher = loader(plan.teacher)
    examples = load_task(plan.task, plan.data, limit=plan.limit)
    config = {"data": plan.data, "data_hash": data_hash(plan.data), "limit": plan.limit}
    return extract(
        teacher, examples, plan.extract_dir, task=plan.task, method=plan.method,
        top_k=plan.top_k, target=plan.target, batch_size=min(plan.batch_size, 4),
        config=config, progress=progress, stop=stop,
    ) or {}  # fmt: skip
