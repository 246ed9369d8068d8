"""The Distill tab's live view: the job's status line, the loss and dev-accuracy curves read
from the experiment's stage folders (``train-<mode>-s<seed>/metrics.jsonl``), its results
table (``results.md``) and the table of run folders."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from distill.runs import RunDir, list_runs, read_json

from .common import log_error, num, short_spec

RUNNING_STATES = ("running", "stopping")


def _fmt_s(s) -> str:
    s = num(s)
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
    eps = num(status.get("examples_per_s"))
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
    models = (status.get("result") or {}).get("models") or []
    if models:
        accs = ", ".join(
            f"{m['name']} {m['accuracy']:.3f}" if num(m.get("accuracy")) is not None
            else f"{m['name']} —"
            for m in models
        )  # fmt: skip
        lines.append(f"dev accuracy: {accs}")
    if status.get("run_dir"):
        lines.append(f"experiment folder: `{status['run_dir']}`")
    return "  \n".join(lines)


# ---------------------------------------------------------------------------------------------
# The experiment folder (distill.pipeline's layout)


def stage_runs(out: str | Path | None) -> list[tuple[str, Path]]:
    """(label, folder) of the plan's training stages in training order (plan.json's modes and
    seeds); folders not made yet are left out."""
    if not out:
        return []
    plan = read_json(Path(out) / "plan.json") or {}
    found = []
    for mode in plan.get("modes") or []:
        for seed in plan.get("seeds") or [0]:
            d = Path(out) / f"train-{mode}-s{seed}"
            if RunDir(d).exists:
                found.append((mode if len(plan.get("seeds") or [0]) == 1 else f"{mode} s{seed}", d))
    return found


def experiment_curves(out: str | Path | None) -> list[tuple[str, list, list]]:
    """(label, loss points, dev-accuracy points) per training stage, from metrics.jsonl."""
    curves = []
    for label, d in stage_runs(out):
        metrics = RunDir(d).metrics()
        losses = [(r["step"], r["loss"]) for r in metrics if r.get("loss") is not None]
        dev = [(r["step"], r["dev_accuracy"]) for r in metrics
               if r.get("dev_accuracy") is not None]  # fmt: skip
        curves.append((label, losses, dev))
    return curves


def results_table(status: dict) -> str:
    """The finished experiment's results.md (the paper-style table), or an empty string."""
    path = (status.get("result") or {}).get("table_md")
    try:
        md = Path(path).read_text() if path else ""
        # The file's title as a small heading: the tab has its own.
        return "#### " + md[2:] if md.startswith("# ") else md
    except OSError as e:
        log_error("reading results", e)
        return ""


def progress_figure(out: str | Path | None = None) -> go.Figure:
    """Training loss per stage (left axis) and dev accuracy points (right axis)."""
    fig = go.Figure()
    palette = ["#2166ac", "#e6550d", "#31a354", "#756bb1", "#636363"]
    for i, (name, losses, dev) in enumerate(experiment_curves(out)):
        color = palette[i % len(palette)]
        if losses:
            fig.add_trace(go.Scatter(x=[s for s, _ in losses], y=[v for _, v in losses],
                                     mode="lines", name=f"{name} loss",
                                     line={"color": color}))  # fmt: skip
        if dev:
            fig.add_trace(go.Scatter(x=[s for s, _ in dev], y=[v for _, v in dev],
                                     mode="markers+lines", name=f"{name} dev acc", yaxis="y2",
                                     line={"dash": "dot", "color": color},
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
    """Every run folder (experiment stages as ``<experiment>/<stage>``): mode, settings,
    accuracy (finished training runs get their key settings from
    :func:`distill.evaluate.compare`)."""
    from distill.compare import compare

    df = list_runs(root)
    settings: dict[str, str] = {}
    for row in df.itertuples(index=False):
        if row.kind == "train" and row.status == "finished":
            try:
                settings[row.name] = compare([row.path]).iloc[0]["settings"]
            except Exception as e:  # one odd folder must not hide the others
                log_error(f"reading run {row.name}", e)
    out = df.assign(settings=[settings.get(n, "") for n in df["name"]])
    out["accuracy"] = [round(a, 4) if num(a) is not None else None for a in out["accuracy"]]
    out["student"] = [short_spec(s) if isinstance(s, str) else s for s in out["student"]]
    return out[RUNS_TABLE_COLUMNS]


__all__ = ["experiment_curves", "progress_figure", "results_table", "runs_table",
           "stage_runs", "status_markdown"]  # fmt: skip
