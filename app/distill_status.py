"""The Distill tab's live view: the job's status line, its loss and dev-accuracy curves, and
the table of run folders."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from distill.runs import list_runs

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
    result = status.get("result") or {}
    if result.get("accuracy"):
        accs = ", ".join(
            f"{m} {a:.3f}" if num(a) is not None else f"{m} —"
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
    from distill.evaluate import compare

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
