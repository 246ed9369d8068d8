"""Run folders: safe names, atomic writes, resume rules, checkpoints and the run list."""

from __future__ import annotations

import json
import os

import pytest

from distill import runs
from distill.runs import RunDir, RunError


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a/b", "a\\b", "..", ".", "", "  ", "x..y", "a b", "é", "a:b", "~"]
)
def test_unsafe_run_names_are_rejected(tmp_path, name):
    with pytest.raises(RunError):
        runs.safe_run_dir(tmp_path, name)


def test_safe_run_names_stay_inside_root(tmp_path):
    p = runs.safe_run_dir(tmp_path, "saliency-cqa_v1.2")
    assert p == (tmp_path / "saliency-cqa_v1.2").resolve() and p.parent == tmp_path.resolve()


def test_runs_root_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("KDLENS_RUNS", raising=False)
    assert runs.runs_root() == runs.Path("runs")
    monkeypatch.setenv("KDLENS_RUNS", str(tmp_path))
    assert runs.runs_root() == tmp_path


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    f = tmp_path / "sub" / "config.json"
    runs.atomic_write_json(f, {"a": 1})
    assert json.loads(f.read_text()) == {"a": 1}

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError):
        runs.atomic_write_text(f, "half")
    assert json.loads(f.read_text()) == {"a": 1}  # old content intact
    assert [p.name for p in f.parent.iterdir()] == ["config.json"]  # no temp file left


def test_append_jsonl_and_torn_last_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    runs.append_jsonl(f, {"step": 1, "loss": 2.0})
    runs.append_jsonl(f, {"step": 2, "loss": 1.0})
    with f.open("a") as fh:
        fh.write('{"step": 3, "lo')  # killed mid-line
    assert runs.read_jsonl(f) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]


def test_create_resume_and_refuse(tmp_path):
    run = RunDir(tmp_path / "r")
    cfg = {"kind": "train", "settings": {"lr": 1e-3, "mode": "standard"}, "seed": 0}
    assert run.create(cfg) is False
    stored = run.config()
    assert stored["versions"]["torch"] and stored["versions"]["kdlens"] and stored["created"]
    assert run.create(dict(cfg)) is True  # unfinished, same settings: resume
    with pytest.raises(RunError, match=r"other settings \(settings\.lr\)"):
        run.create({**cfg, "settings": {"lr": 2e-3, "mode": "standard"}})
    run.finish({"steps": 3, "accuracy": 0.5})
    with pytest.raises(RunError, match="finished"):
        run.create(cfg)
    assert run.summary()["status"] == "finished" and run.status()["status"] == "finished"


def test_create_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run folder"):
        RunDir(tmp_path / "r").create({"kind": "train"})


def test_metrics_truncation_on_resume(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create({"kind": "train"})
    for s in range(1, 6):
        run.log({"step": s, "loss": float(s)})
    run.truncate_metrics(3)
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]


def test_checkpoints_staged_committed_and_pruned(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create({"kind": "train"})
    for step in (2, 4, 6):
        tmp = run.staging_dir(step)
        (tmp / "state.json").write_text("{}")
        run.commit_checkpoint(tmp, step, keep=2)
    assert [s for s, _ in run.checkpoints()] == [4, 6]
    run.staging_dir(8)  # a kill while writing step 8 leaves only a staging folder
    assert run.latest_checkpoint()[0] == 6
    run.clean_checkpoints()
    assert run.latest_checkpoint() is None


def test_list_runs(tmp_path):
    def make(name, status, steps=None, accuracy=None):
        run = RunDir(tmp_path / name)
        run.create(
            {"kind": "train", "settings": {"mode": "saliency", "student": "s", "task": "cqa"}}
        )
        run.log({"step": 1, "loss": 1.0})
        if status == "finished":
            run.finish({"steps": steps, "accuracy": accuracy})
        elif status:
            run.set_status(status, step=1)
        return run

    make("done", "finished", 10, 0.75)
    make("broken", "failed")
    make("paused", "stopped")
    make("killed", None)
    (tmp_path / "stray").mkdir()  # not a run: ignored
    df = runs.list_runs(tmp_path).set_index("name")
    assert list(runs.list_runs(tmp_path).columns) == runs.RUN_COLUMNS
    assert set(df.index) == {"done", "broken", "paused", "killed"}
    assert df.loc["done", "status"] == "finished" and df.loc["done", "accuracy"] == 0.75
    assert df.loc["done", "steps"] == 10 and df.loc["done", "mode"] == "saliency"
    assert df.loc["broken", "status"] == "failed"
    assert df.loc["paused", "status"] == "stopped" and df.loc["killed", "status"] == "unfinished"
    assert df.loc["killed", "steps"] == 1
    assert runs.list_runs(tmp_path / "none").empty


def test_no_temp_files_after_writes(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create({"kind": "extract"})
    run.set_status("running")
    run.finish({"n": 1})
    leftovers = [p for p in os.listdir(run.path) if p.endswith(".tmp")]
    assert leftovers == []


def test_list_runs_reads_flat_extraction_configs(tmp_path):
    run = RunDir(tmp_path / "ext")
    run.create({"kind": "extract", "task": "cqa", "teacher": "t", "method": "saliency"})
    run.finish({"kind": "extract", "n": 4, "teacher_accuracy": 0.25})
    row = runs.list_runs(tmp_path).iloc[0]
    assert (row["kind"], row["task"], row["accuracy"], row["status"]) == (
        "extract",
        "cqa",
        0.25,
        "finished",
    )


def test_killed_run_shows_interrupted(tmp_path):
    """Issue 9: status.json stayed "running" after a kill; a run whose writer process is gone
    now reads as interrupted (resumable), a live one as running."""
    import subprocess
    import sys

    run = RunDir(tmp_path / "r")
    run.create({"kind": "extract"})
    run.set_status("running", stage="extract")
    assert run.status()["status"] == "running"  # this process wrote it and is alive
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    st = json.loads(run.status_path.read_text())
    st["pid"] = int(child.stdout)  # a process that has exited: a killed job
    run.status_path.write_text(json.dumps(st))
    assert run.status()["status"] == "interrupted"
    assert runs.list_runs(tmp_path).iloc[0]["status"] == "interrupted"
    st["host"] = "another-machine"  # cannot tell for another host: left as written
    run.status_path.write_text(json.dumps(st))
    assert run.status()["status"] == "running"


def test_list_runs_includes_experiment_stages(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "plan.json").write_text("{}")
    RunDir(exp / "extract").create({"kind": "extract", "task": "cqa"})
    RunDir(tmp_path / "solo").create({"kind": "train", "settings": {"mode": "standard"}})
    names = set(runs.list_runs(tmp_path)["name"])
    assert names == {"exp/extract", "solo"}
