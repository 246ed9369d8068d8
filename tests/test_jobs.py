"""JobManager: one job at a time, stop, progress folding, errors kept as one line."""

from __future__ import annotations

import threading

import pytest
import torch
from test_train import config, tiny_loader

from distill import train as tr
from distill.jobs import JobManager
from distill.runs import RunDir
from explain.errors import KDLensError


def test_job_runs_and_folds_progress():
    jm = JobManager()
    assert jm.status()["state"] == "idle"

    def fn(n, progress, stop):
        for step in range(1, n + 1):
            progress(
                {
                    "stage": "training",
                    "step": step,
                    "total": n,
                    "loss": 1.0 / step,
                    "examples_per_s": 10.0,
                    "eta_s": n - step,
                    "run_dir": "/runs/x",
                }
            )
        progress({"step": n, "dev_accuracy": 0.5})
        return {"status": "finished", "accuracy": 0.5}

    jm.start("train", fn, n=3)
    assert jm.wait(10)
    st = jm.status()
    assert st["state"] == "finished" and st["step"] == 3 and st["total"] == 3
    assert st["losses"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert st["dev"] == [(3, 0.5)] and st["run_dir"] == "/runs/x"
    assert st["result"]["accuracy"] == 0.5 and st["error"] is None and st["eta_s"] == 0


def test_second_job_is_refused_and_stop_works():
    jm = JobManager()
    started = threading.Event()

    def fn(progress, stop):
        started.set()
        step = 0
        while not stop.wait(0.01):
            step += 1
            progress({"step": step})
        return {"status": "stopped", "run_dir": "/runs/y"}

    job_id = jm.start("train", fn)
    assert started.wait(5)
    with pytest.raises(KDLensError, match="a job is already running: train " + job_id):
        jm.start("extract", fn)
    assert jm.stop() is True
    assert jm.status()["state"] in ("stopping", "stopped")
    assert jm.wait(5)
    st = jm.status()
    assert st["state"] == "stopped" and st["run_dir"] == "/runs/y"
    assert jm.stop() is False  # nothing runs now
    jm.start("train", lambda progress, stop: {"status": "finished"})  # free again
    assert jm.wait(5) and jm.status()["state"] == "finished"


def test_failing_job_keeps_a_one_line_error():
    jm = JobManager()

    def boom(progress, stop):
        progress({"step": 2, "loss": 0.1})
        raise ValueError("bad\nthings happened")

    jm.start("train", boom)
    assert jm.wait(5)
    st = jm.status()
    assert st["state"] == "failed" and st["error"] == "ValueError: bad things happened"
    assert "\n" not in st["message"] and st["losses"] == [(2, 0.1)]

    jm.start("extract", lambda progress, stop: (_ for _ in ()).throw(KDLensError("no data")))
    assert jm.wait(5) and jm.status()["error"] == "no data"


def test_training_job_stops_with_a_checkpoint(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jm = JobManager()
        cfg = config(tmp_path, steps=200)
        ready = threading.Event()

        def run_train(progress, stop, config):
            def watch(rec):
                progress(rec)
                if rec.get("step") == 3 and "loss" in rec:
                    ready.set()

            return tr.train(config, progress=watch, stop=stop, model_loader=tiny_loader())

        jm.start("train", run_train, config=cfg)
        assert ready.wait(60)
        jm.stop()
        assert jm.wait(60)
        st = jm.status()
        assert st["state"] == "stopped", st
        run = RunDir(st["run_dir"])
        assert run.latest_checkpoint() is not None and not run.is_finished
        assert run.status()["status"] == "stopped" and st["losses"]
    finally:
        torch.set_num_threads(n)
