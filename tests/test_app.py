"""The app through gradio_client (a launched app on tiny random models), and the functions
of its tab modules (the app/ package) directly.

The app runs in this process on a free port; models are a tiny random Llama saved to a
temporary folder (loaded by the real ``load_model``), data is ten tiny CQA records.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiny

from app import (
    common,
    compare_tab,
    distill_status,
    distill_tab,
    explain_tab,
    forms,
    overlap_tab,
)
from explain.errors import KDLensError

ITEMS = tiny.CQA_ITEMS
QUESTION = ("Where would you put a plate after washing it?", "cupboard | table | sink")


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_browser.py and bench/screenshots.py


def save_tiny_model(folder: Path) -> Path:
    """A tiny random Llama + tokenizer as a model folder (loads with the real load_model)."""
    if not (folder / "config.json").is_file():
        tiny.tiny_llama(0).save_pretrained(folder)
        tiny.tiny_tokenizer().save_pretrained(folder)
    return folder


def write_cqa(folder: Path) -> Path:
    """``cqa/cqa_train.json`` in the shared/datasets layout (so 'demo set' finds it)."""
    path = folder / "cqa" / "cqa_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, (q, c, a) in enumerate(ITEMS):
            rec = {"id": f"q{i}", "question": q, "choices": c, "answer": a,
                   "extractive_explanation": f"{a} {q.split()[-1]}"}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingLoader:
    """``load_model`` that counts loads per spec (models must load once and be shared)."""

    def __init__(self) -> None:
        from explain.models import load_model

        self.load, self.counts, self.lock = load_model, {}, threading.Lock()

    def __call__(self, spec, **kw):
        with self.lock:
            self.counts[spec] = self.counts.get(spec, 0) + 1
        return self.load(spec, **kw)


def launch(model: Path, runs: Path, data_root: Path, loader=None):
    """Build and serve the app on a free port; returns (demo, url)."""
    import app

    demo = app.build_app(str(model), str(model), model_loader=loader, runs_dir=runs,
                         datasets_dir=data_root)  # fmt: skip
    _, url, _ = app.launch_app(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    return demo, url


def make_fixture_runs(model: Path, data: Path, runs: Path) -> tuple[Path, Path]:
    """A finished standard training run and a finished extraction, made by the library."""
    from distill.data import load_task
    from distill.extract import extract
    from distill.train import TrainConfig, train
    from explain.models import load_model

    train_dir = runs / "fixture-standard"
    if not (train_dir / "summary.json").is_file():
        cfg = TrainConfig(student=str(model), task="cqa", data=str(data), mode="standard",
                          steps=3, batch_size=4, lr=1e-2, dev_size=2, eval_every=0,
                          save_every=0, out=str(train_dir), max_new_tokens=4)  # fmt: skip
        train(cfg)
    extract_dir = runs / "fixture-extract"
    if not (extract_dir / "rationales.jsonl").is_file():
        teacher = load_model(str(model))
        extract(teacher, load_task("cqa", data), extract_dir, task="cqa", top_k=3,
                target="gold", max_new_tokens=4)  # fmt: skip
    return train_dir, extract_dir / "rationales.jsonl"


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread_module):
    root = tmp_path_factory.mktemp("app")
    model = save_tiny_model(root / "tiny-llama")
    data = write_cqa(root / "datasets")
    runs = root / "runs"
    runs.mkdir()
    train_dir, rationales = make_fixture_runs(model, data, runs)
    loader = CountingLoader()
    demo, url = launch(model, runs, root / "datasets", loader)
    from gradio_client import Client

    client = Client(url, verbose=False)
    yield {"root": root, "model": model, "data": data, "runs": runs, "train_dir": train_dir,
           "rationales": rationales, "loader": loader, "demo": demo, "url": url,
           "client": client}  # fmt: skip
    demo.kdlens.jobs.stop()
    demo.kdlens.jobs.wait(30)
    demo.close()


def call(client, api: str, *args, timeout: float = 60):
    return client.submit(*args, api_name=api).result(timeout=timeout)


def explain_args(model, question=QUESTION[0], choices=QUESTION[1], kind="Multiple choice",
                 method="saliency", k=3):  # fmt: skip
    return (str(model), kind, question, choices, "", "", "", "", method, k, "", "word")


def is_error(md: str) -> bool:
    return "kd-error" in str(md)


# ---------------------------------------------------------------------------------------------
# Explain


def test_explain_returns_answer_figures_and_rationale(world):
    c = world["client"]
    (
        status,
        answer,
        hl,
        heat,
        bar,
        rat,
        token,
        models,
    ) = call(c, "/explain", *explain_args(world["model"]))
    assert not is_error(status) and "saliency" in status
    assert answer.startswith("**Teacher's answer")
    assert "kd-highlight" in hl and "kd-rationale" in hl
    fig = json.loads(heat["plot"])
    z = fig["data"][0]["z"]
    n_tokens = len(token["choices"]) - 1  # 'all' + one per answer token
    assert len(z) == n_tokens >= 1
    # word columns: every task-input word of the question and the three choices
    assert len(z[0]) == len(fig["layout"]["xaxis"]["ticktext"]) >= 12
    assert all("score: " in h for h in fig["data"][0]["text"][0])  # hover shows exact scores
    assert rat.count('class="kd-chip"') == 3  # k = 3
    assert json.loads(bar["plot"])["data"]
    assert token["value"] == "all"


def test_explain_one_answer_token_and_export(world):
    c = world["client"]
    call(c, "/explain", *explain_args(world["model"]))
    status, hl, heat, bar, rat = call(c, "/explain_token", "0", "word")
    assert "answer token 0" in status and not is_error(status)
    fig = json.loads(heat["plot"])
    assert fig["layout"]["shapes"][0]["y0"] == -0.5  # the picked row is outlined
    status, files = call(c, "/export", "0")
    assert "Exported 3 files" in status
    assert files["visible"] is True  # the downloads box shows up with the files
    files = files["value"]
    names = sorted(Path(f).suffix for f in files)
    assert names == [".csv", ".html", ".json"]
    data = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert data["settings"]["output_token"] == 0 and data["matrix"]
    assert "<!DOCTYPE html>" in Path(next(f for f in files if f.endswith(".html"))).read_text()


@pytest.mark.parametrize(
    ("kind", "question", "choices", "premise", "hyp", "expect"),
    [
        ("Multiple choice", "", "a | b", "", "", "question is empty"),
        ("Free text", "   ", "", "", "", "text is empty"),
        ("Multiple choice", "Where?", "only one", "", "", "at least two"),
        ("Premise / hypothesis", "", "", "A man sings.", "", "hypothesis is empty"),
    ],
)
def test_explain_bad_input_gives_a_message(world, kind, question, choices, premise, hyp, expect):
    args = (str(world["model"]), kind, question, choices, premise, hyp, "", "", "saliency", 3,
            "", "word")  # fmt: skip
    out = call(world["client"], "/explain", *args)
    assert is_error(out[0]) and expect in out[0]
    assert "Traceback" not in out[0]


def test_bad_model_gives_a_message_and_app_keeps_serving(world):
    c = world["client"]
    args = list(explain_args(world["model"]))
    args[0] = str(world["root"] / "no-such-model")
    status = call(c, "/explain", *args)[0]
    assert is_error(status) and "no-such-model" in status
    status = call(c, "/export", "all")[0]  # a fresh session has nothing to export... yet
    assert call(c, "/explain", *explain_args(world["model"]))[1].startswith("**Teacher")


def test_eight_concurrent_explains_all_succeed(world):
    c = world["client"]
    questions = [f"Where would you put plate number {i}?" for i in range(8)]

    def one(q: str):
        return c.submit(*explain_args(world["model"], question=q), api_name="/explain").result(
            timeout=90
        )

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, questions))
    assert len(outs) == 8
    for q, out in zip(questions, outs):
        assert not is_error(out[0]), out[0]
        assert q.split()[-1].rstrip("?") in out[2]  # each got its own input back


def test_models_load_once_and_are_shared(world):
    c = world["client"]
    for _ in range(2):
        call(c, "/explain", *explain_args(world["model"]))
    # Teacher and student are the same folder: one load serves both roles.
    assert world["loader"].counts.get(str(world["model"])) == 1


def test_gold_answer_marks_the_teachers_answer(world):
    args = list(explain_args(world["model"]))
    args[7] = "cupboard"  # gold
    answer = call(world["client"], "/explain", *args)[1]
    assert "✓ correct" in answer or "✗ wrong (gold: cupboard)" in answer


def test_switching_teacher_frees_the_old_one(tmp_path):
    ctx = common.AppContext("a", "b", tmp_path, model_loader=lambda spec, **kw: tiny.loaded())
    ctx.teacher_model("a")
    ctx.student_model("b")
    assert ctx.teacher_model("a") is ctx.teachers.get("a")  # cached
    ctx.teacher_model("c")
    assert ctx.teachers.loaded_specs() == ["c"] and ctx.students.loaded_specs() == ["b"]
    assert ctx.student_model("c") is ctx.teachers.get("c")  # shared, not loaded again
    with pytest.raises(KDLensError, match="no teacher model"):
        ctx.teacher_model(" ")
    with pytest.raises(KDLensError, match="not an existing folder"):
        ctx.teacher_model(str(tmp_path / "typo" / "model"))
    assert ctx.teachers.loaded_specs() == ["c"]  # a mistyped spec evicts nothing


# ---------------------------------------------------------------------------------------------
# Compare


def test_compare_student_modes_and_runs_side_by_side(world):
    c = world["client"]
    run = str(world["train_dir"])
    out = call(c, "/compare", str(world["model"]), str(world["model"]), "Multiple choice",
               QUESTION[0], QUESTION[1], "", "", "", "cupboard", [run], "saliency", 3)  # fmt: skip
    status, cards, table, models = out
    assert not is_error(status) and "ready on cpu" in models
    rows = table["data"]
    assert [r[0] for r in rows] == ["student, no rationale",
                                    "student + teacher rationale (hint)",
                                    "run fixture-standard"]  # fmt: skip
    for _model, _mode, answer, prob, correct, _note in rows:
        assert isinstance(answer, str)
        assert 0.0 <= float(prob) <= 1.0
        assert correct in (True, False)
    assert "kd-teacher" in cards and cards.count('kd-card"') >= 3


def test_compare_bad_input_and_unusable_run(world, tmp_path):
    c = world["client"]
    out = call(c, "/compare", str(world["model"]), str(world["model"]), "Multiple choice",
               "", "a | b", "", "", "", "", [], "saliency", 3)  # fmt: skip
    assert is_error(out[0]) and "question is empty" in out[0]
    # A folder that is no finished run: its row says so, the others still answer.
    not_a_run = world["runs"] / "not-a-run"
    not_a_run.mkdir(exist_ok=True)
    out = call(c, "/compare", str(world["model"]), str(world["model"]), "Premise / hypothesis",
               "", "", "A man plays a guitar.", "A person makes music.", "", "",
               [str(not_a_run)], "saliency", 2)  # fmt: skip
    rows = out[2]["data"]
    assert rows[-1][-1].startswith("not finished") and rows[0][4] is None  # no gold: no verdict


# ---------------------------------------------------------------------------------------------
# Distill


def start_args(world, source="path", path=None, upload=None, modes=("standard",), steps=4,
               train=6, dev=2, name="", seeds="0"):  # fmt: skip
    """/distill_start's inputs: task, data source, path, upload, teacher, student, modes,
    training examples, steps, k, batch, lr, method, target, name, dev examples, epochs,
    preset, seeds."""
    return ("cqa", source, str(path or world["data"]) if source == "path" else "", upload,
            str(world["model"]), str(world["model"]), list(modes), train, steps, 3, 4, 1e-2,
            "saliency", "gold", name, dev, 1, "demo", seeds)  # fmt: skip


def wait_job(c, until: tuple[str, ...], timeout: float = 90) -> str:
    end = time.time() + timeout
    while time.time() < end:
        md = call(c, "/distill_status", None, [], None, "", "")[0]
        if md.startswith(tuple(f"**{s}**" for s in until)):
            return md
        time.sleep(0.3)
    raise AssertionError(f"job did not reach {until}: {md}")


def test_distill_bad_requests_give_messages(world, tmp_path):
    from gradio_client import handle_file

    c = world["client"]
    md = call(c, "/distill_start", *start_args(world, modes=()))[0]
    assert is_error(md) and "at least one mode" in md
    missing = world["data"].parent / "x.jsonl"
    md = call(c, "/distill_start", *start_args(world, source="path", path=missing))[0]
    assert is_error(md) and "not found" in md
    bad = tmp_path / "bad.csv"
    bad.write_text("question,choices,answer\nWhere?,a|b,zebra\n")
    md = call(c, "/distill_start", *start_args(world, source="upload",
                                               upload=handle_file(str(bad))))[0]  # fmt: skip
    assert is_error(md) and "line 2" in md and "not one of the choices" in md
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    md = call(
        c, "/distill_start", *start_args(world, source="upload", upload=handle_file(str(txt)))
    )
    assert is_error(md[0]) and "notes.txt: upload a .jsonl, .json, .csv file" in md[0]
    md = call(c, "/distill_start", *start_args(world, name="../escape"))[0]
    assert is_error(md) and "path separators" in md


def test_upload_over_the_size_limit_is_refused(world, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        f.truncate(21 * 1024 * 1024)
    with pytest.raises(Exception, match="(?i)size|large|413"):
        call(world["client"], "/distill_start",
             *start_args(world, source="upload", upload=handle_file(str(big))))  # fmt: skip


def test_distill_runs_the_pipeline_plan_and_lists_its_stages(world):
    c = world["client"]
    args = start_args(world, source="demo set", modes=("saliency", "standard"), name="e2e")
    md = call(c, "/distill_start", *args)[0]
    assert not is_error(md), md
    md = wait_job(c, ("finished", "failed", "stopped"))
    assert md.startswith("**finished**"), md
    assert "dev accuracy: zero-shot-s0" in md and "standard-s0" in md and "saliency-s0" in md
    exp = world["runs"] / "e2e"
    plan = json.loads((exp / "plan.json").read_text())  # distill.pipeline's experiment folder
    assert plan["modes"] == ["standard", "saliency"] and plan["train_size"] == 6
    assert plan["steps"] == 4 and plan["dev_size"] == 2 and plan["preset"] == "demo"
    assert (exp / "extract" / "rationales.jsonl").is_file()
    # The curves come from the stage folders: 4 losses and the final dev point per mode.
    curves = distill_status.experiment_curves(exp)
    assert [(n, len(loss), len(dev)) for n, loss, dev in curves] == [
        ("standard", 4, 1),
        ("saliency", 4, 1),
    ]
    # The finished job shows results.md in the tab.
    out = call(c, "/distill_status", None, [], None, "", "")
    assert out[-1].startswith("#### cqa: student") and "| saliency |" in out[-1]
    out = call(c, "/runs", [], None)
    names = [r[0] for r in out[1]["data"]]
    assert {"e2e/train-standard-s0", "e2e/train-saliency-s0", "e2e/extract"} <= set(names)
    row = out[1]["data"][names.index("e2e/train-saliency-s0")]
    assert row[2] == "saliency" and row[7] == "finished" and "alpha" in row[8]
    choices = [v for _, v in out[2]["choices"]]
    assert str(exp / "train-saliency-s0") in choices  # appears in Compare
    sources = [v for _, v in out[3]["choices"]]
    assert str(exp / "extract" / "rationales.jsonl") in sources  # and Overlap
    # The same name again is refused (finished), before any job starts.
    md = call(c, "/distill_start", *args)[0]
    assert is_error(md) and "already exists and is finished" in md


def test_distill_with_two_seeds_shows_seed_averaged_comparisons(world):
    c = world["client"]
    md = call(c, "/distill_start", *start_args(world, name="two-seeds", seeds="0 1", steps=2))[0]
    assert not is_error(md), md
    md = wait_job(c, ("finished", "failed", "stopped"))
    assert md.startswith("**finished**"), md
    exp = world["runs"] / "two-seeds"
    assert json.loads((exp / "plan.json").read_text())["seeds"] == [0, 1]
    assert (exp / "train-standard-s1" / "model").is_dir()
    labels = [n for n, _ in distill_status.stage_runs(exp)]
    assert labels == ["standard s0", "standard s1"]
    out = call(c, "/distill_status", None, [], None, "", "")
    table = out[-1]
    assert "| standard | — |" in table and "s0: " in table and "; s1: " in table
    # Without a test file each seed has its own dev split: nothing to pool, and it says so.
    assert "Seed-averaged comparisons" not in table and "cannot be paired" in table


def test_distill_one_job_at_a_time_and_stop_keeps_a_checkpoint(world):
    c = world["client"]
    md = call(c, "/distill_start", *start_args(world, steps=5000, name="long"))[0]
    assert not is_error(md), md
    end = time.time() + 60
    jobs = world["demo"].kdlens.jobs
    while not (jobs.status()["total"] == 5000 and jobs.status()["step"] >= 2):
        assert time.time() < end, jobs.status()
        time.sleep(0.2)
    # While a stage trains, the job names the experiment folder and the curve is drawn from
    # its stage folder.
    assert jobs.status()["run_dir"] == str(world["runs"] / "long")
    fig = distill_status.progress_figure(jobs.status()["run_dir"])
    assert fig.data and fig.data[0].name == "standard loss" and len(fig.data[0].x) >= 2
    md = call(c, "/distill_start", *start_args(world, name="second"))[0]
    assert is_error(md) and "already running" in md
    assert not (world["runs"] / "second").exists()
    # Explain keeps answering while the job trains.
    assert not is_error(call(c, "/explain", *explain_args(world["model"]))[0])
    assert "Stopping" in call(c, "/distill_stop")
    md = wait_job(c, ("stopped", "failed", "finished"))
    assert md.startswith("**stopped**"), md
    run = world["runs"] / "long" / "train-standard-s0"
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"
    assert list((run / "checkpoints").glob("step-*/model.safetensors"))
    assert call(c, "/distill_stop") == "No job is running."


# ---------------------------------------------------------------------------------------------
# Overlap


def test_overlap_figures_table_and_pages(world):
    c = world["client"]
    out = call(c, "/overlap", str(world["rationales"]), None, "all")
    note, table, fig, hist, examples, page = out
    assert not is_error(note) and "10 examples" in note
    figures = {r[0] for r in table["data"]}
    assert {"hit", "precision", "recall", "human_f1", "comprehensiveness"} <= figures
    assert all(len(r) == len(table["headers"]) for r in table["data"])
    traces = json.loads(fig["plot"])["data"]
    assert [t["name"] for t in traces] == ["teacher rationale", "random-k"]
    assert json.loads(hist["plot"])["data"][0]["type"] == "histogram"
    assert examples.count("<tr>") == 11 and "kd-g" in examples and "kd-r" in examples
    assert page == 1
    _, html_ = call(c, "/overlap_page", 1, "misses")
    assert "page 1 of 1" in html_


def test_overlap_bad_file_gives_a_message(world, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "rationales.jsonl"
    bad.write_text('{"id": 1, "label": "x", "rationale": []}\nnot json\n')
    out = call(world["client"], "/overlap", None, handle_file(str(bad)), "all")
    assert is_error(out[0]) and "line 2" in out[0]
    out = call(world["client"], "/overlap", "", None, "all")
    assert is_error(out[0]) and "pick a rationale file" in out[0]


# ---------------------------------------------------------------------------------------------
# Glue functions, directly


def test_task_fields_and_choices():
    assert forms.parse_choices("a | b\nc||") == ["a", "b", "c"]
    t, f = forms.task_fields("Multiple choice", "Q?", "x|y")
    assert t == "cqa" and f == {"question": "Q?", "choices": ["x", "y"]}
    assert forms.task_fields("Math word problem", "How many?", body="Sam has 3.")[0] == "svamp"
    with pytest.raises(KDLensError, match="unknown input kind"):
        forms.task_fields("Poem", "x")
    with pytest.raises(KDLensError, match="Compare needs a task input"):
        compare_tab.compare_task("free")
    assert (
        compare_tab.compare_task("nli") == "esnli"
        and compare_tab.compare_task("nli", "anli1") == "anli1"
    )


def test_examples_rows_fill_every_form_field():
    from explain.examples import load_examples

    rows, labels = forms.example_rows(load_examples())
    assert len(rows) == len(labels) > 0
    assert all(len(r) == 7 and r[0] in forms.INPUT_KINDS and r[6] for r in rows)


def test_token_views():
    from explain.pipeline import explain

    res = explain(tiny.loaded("llama"), {"text": "Sam had apples"}, max_new_tokens=3,
                  token_matrix=True)  # fmt: skip
    assert [v for _, v in explain_tab.token_choices(res)][:2] == ["all", "0"]
    assert explain_tab.pick_token(res, "all") is res
    assert explain_tab.pick_token(res, "1").settings["output_token"] == 1
    with pytest.raises(KDLensError, match="out of range"):
        explain_tab.pick_token(res, "99")


def test_status_markdown_and_progress_figure(tmp_path):
    from distill.runs import RunDir, atomic_write_json

    assert "No job yet" in distill_status.status_markdown({"state": "idle"})
    st = {"state": "running", "stage": "[2/3] train standard (seed 0): training", "step": 3,
          "total": 10, "examples_per_s": 2.5, "eta_s": 75, "message": "", "error": None,
          "run_dir": str(tmp_path)}  # fmt: skip
    md = distill_status.status_markdown(st, "CPU")
    assert "step 3/10" in md and "2.50 examples/s" in md and "ETA 1 min 15 s" in md
    assert str(tmp_path) in md
    # Curves are read from the plan's stage folders, in the plan's mode order.
    atomic_write_json(tmp_path / "plan.json", {"modes": ["saliency", "standard"], "seeds": [0]})
    for mode, losses in (("standard", [2.0, 1.5]), ("saliency", [3.0])):
        run = RunDir(tmp_path / f"train-{mode}-s0")
        run.create({"kind": "train"})
        for i, loss in enumerate(losses, 1):
            run.log({"step": i, "loss": loss})
    RunDir(tmp_path / "train-standard-s0").log({"step": 2, "dev_accuracy": 0.5})
    fig = distill_status.progress_figure(tmp_path)
    names = [t.name for t in fig.data]
    assert names == ["saliency loss", "standard loss", "standard dev acc"]
    assert list(fig.data[1].y) == [2.0, 1.5] and list(fig.data[2].y) == [0.5]
    assert not distill_status.progress_figure(None).data  # no experiment yet: the hint only
    failed = dict(st, state="failed", error="boom")
    assert "⚠ boom" in distill_status.status_markdown(failed)


def test_plan_and_data_validation(tmp_path, monkeypatch):
    data = write_cqa(tmp_path / "ds")
    form = distill_tab.check_form("cqa", "demo set", ["saliency", "standard"], 6, 2, 3, 1, 3,
                                  2, 1e-3, "saliency", "generated")  # fmt: skip
    plan = distill_tab.build_plan(tmp_path, "cqa", data, "t", "s", ["saliency", "standard"],
                                  form, name="p", preset="demo")  # fmt: skip
    assert plan.modes == ["standard", "saliency"]  # training order follows the registry
    assert plan.out == str(tmp_path / "p") and plan.needs_rationales and plan.steps == 3
    assert (plan.train_size, plan.dev_size, plan.dev_limit, plan.epochs) == (6, 2, 2, None)
    whole = distill_tab.check_form("cqa", "demo set", ["standard"], 0, 2, 0, 2, 3, 2, 1e-3,
                                   "saliency", "generated")  # fmt: skip
    plan = distill_tab.build_plan(tmp_path, "cqa", data, "t", "s", ["standard"], whole,
                                  preset="cpu")  # fmt: skip
    assert plan.train_size is None and plan.steps is None and plan.epochs == 2.0
    # The CLI preset's recipe comes with it (it did not: the app trained in the chat template).
    from distill.plan import PRESETS

    assert plan.train_settings == PRESETS["cpu"]["train_settings"]
    assert plan.extract_batch == PRESETS["cpu"]["extract_batch"] and plan.preset == "cpu"
    assert plan.seeds == [0]  # the form's default
    two = distill_tab.check_form("cqa", "demo set", ["standard"], 6, 2, 3, 1, 3, 2, 1e-3,
                                 "saliency", "generated", " 3, 1 ")  # fmt: skip
    plan = distill_tab.build_plan(tmp_path, "cqa", data, "t", "s", ["standard"], two)
    assert plan.seeds == [3, 1]
    assert distill_tab.parse_seeds(7) == [7] and distill_tab.parse_seeds([0, 2]) == [0, 2]
    for bad, msg in [("", "at least one seed"), ("0 x", "each seed must be a whole number"),
                     ("-1", "each seed must be a whole number"), ("1 2 1", "1 repeats"),
                     ("0 1 2 3 4 5 6 7 8", "at most 8 seeds"), (True, "whole numbers"),
                     ({"a": 1}, "whole numbers")]:  # fmt: skip
        with pytest.raises(KDLensError, match=msg):
            distill_tab.parse_seeds(bad)
    with pytest.raises(KDLensError, match="dss needs"):
        distill_tab.build_plan(tmp_path, "cqa", data, "t", "s", ["dss"], form)
    with pytest.raises(KDLensError, match="dev examples must be a whole number"):
        distill_tab.check_form("cqa", "demo set", ["standard"], 6, 0, 3, 1, 3, 2, 1e-3,
                               "saliency", "generated")  # fmt: skip
    ctx = common.AppContext("t", "s", tmp_path / "runs", data_root=tmp_path / "ds")
    assert distill_tab.resolve_data(ctx, "cqa", "demo set", None, None) == data
    with pytest.raises(KDLensError, match="demo set for svamp is not here"):
        distill_tab.resolve_data(ctx, "svamp", "demo set", None, None)
    stored = distill_tab.resolve_data(ctx, "cqa", "upload", None, str(data))
    assert stored.parent == ctx.runs_root / "uploads" and stored.read_bytes() == data.read_bytes()
    with pytest.raises(KDLensError, match="give the path"):
        distill_tab.resolve_data(ctx, "cqa", "path", " ", None)


def test_demo_set_works_without_the_shared_datasets(tmp_path, monkeypatch):
    """A clone without ../shared: the app's datasets folder is distill.datasets' rule, so the
    demo set of every task is the bundled sample (assets/data)."""
    import distill.datasets as dsets

    monkeypatch.delenv("KDLENS_DATASETS", raising=False)
    monkeypatch.setattr(dsets, "SHARED_DATASETS", tmp_path / "no-shared")
    ctx = common.AppContext("t", "s", tmp_path / "runs")
    assert ctx.data_root == dsets.SAMPLE_DATASETS
    for task in ("cqa", "esnli", "anli1", "svamp"):
        p = distill_tab.resolve_data(ctx, task, "demo set", None, None)
        assert p.is_relative_to(dsets.SAMPLE_DATASETS)


def test_presets_match_the_cli_and_demo_is_the_cpu_default():
    from distill.plan import PRESETS

    assert distill_tab.default_preset(gpu=False) == "demo"
    assert distill_tab.default_preset(gpu=True) == "gpu"
    for name, sizes in PRESETS.items():  # the CLI's presets, unchanged
        assert distill_tab.APP_PRESETS[name] == sizes
    demo = distill_tab.preset_fields("demo")
    assert demo["train_size"] <= 32 and 0 < demo["steps"] <= 20
    md = distill_tab.preset_markdown("cpu")
    assert "**cpu: esnli 256, cqa 208, anli1 112, svamp 176 training / 100 dev examples, 4 " in md
    assert "gpu: all training" in md
    # the cpu preset sizes its training set per task, in the form as on the command line
    assert distill_tab.preset_fields("cpu", "cqa")["train_size"] == 208
    assert distill_tab.preset_fields("cpu", "esnli")["train_size"] == 256
    assert distill_tab.preset_fields("gpu", "cqa")["train_size"] == 0  # the whole file


def test_overlap_page_filters_and_marks_words():
    rows = [{"id": "a", "rationale": ["plate"], "gold": "cupboard", "hit": False},
            {"id": "b", "rationale": ["sink"], "gold": "sink", "hit": True}]  # fmt: skip
    recs = [{"fields": {"question": "Where is a plate?", "choices": ["cupboard", "sink"]}},
            {"fields": {"question": "Wash in the sink", "choices": ["sink", "bed"]}}]  # fmt: skip
    html_, pages = overlap_tab.overlap_page(rows, recs, show="hits")
    assert pages == 1 and ">b<" in html_ and ">a<" not in html_
    assert '<span class="kd-r kd-g">sink</span>' in html_
    html_, _ = overlap_tab.overlap_page(rows, recs, page=9, per_page=1)
    assert "page 2 of 2" in html_


def test_cli_flags_and_env_overrides(monkeypatch):
    import app

    args = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)  # local only by default
    monkeypatch.setenv("KDLENS_TEACHER", "/models/t")
    monkeypatch.setenv("KDLENS_PORT", "9999")
    monkeypatch.setenv("KDLENS_RUNS", "/tmp/r")
    args = app.parse_args(["--student", "s", "--host", "0.0.0.0"])
    assert (args.teacher, args.student, args.port, args.runs, args.host) == (
        "/models/t", "s", 9999, "/tmp/r", "0.0.0.0")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Hardening: typed paths, API-only inputs, analytics, clean-up (issue 9)


def test_analytics_are_off_by_default(world):
    import os

    assert world["demo"].analytics_enabled is False
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"


def _outside_message(md: str, typed: Path) -> str:
    """The message with the typed path blanked, to compare a file that exists with one that
    does not."""
    return md.replace(repr(str(typed)), "<path>")


@pytest.mark.parametrize("which", ["distill path", "overlap path", "compare run", "model"])
def test_typed_paths_outside_the_allowed_folders_are_refused_alike(world, tmp_path, which):
    """A secret file outside the runs/datasets folders (and one that does not exist) get the
    same one-line refusal: no content is read and nothing tells whether it exists."""
    secret = tmp_path / "secret" / "id_rsa.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"id": "x"}\n')
    (secret.parent / "config.json").write_text("{}")
    c, model = world["client"], str(world["model"])
    outs = []
    for typed in (secret, tmp_path / "secret" / "missing.jsonl"):
        if which == "distill path":
            md = call(c, "/distill_start", *start_args(world, source="path", path=typed))[0]
        elif which == "overlap path":
            md = call(c, "/overlap", str(typed), None, "all")[0]
        elif which == "compare run":
            md = call(c, "/compare", model, model, "Multiple choice", QUESTION[0], QUESTION[1],
                      "", "", "", "", [str(typed.parent)], "saliency", 3)[0]  # fmt: skip
            typed = typed.parent
        else:
            md = call(c, "/explain", *explain_args(typed.parent))[0]
            typed = typed.parent
        assert is_error(md) and "not inside the runs folder" in md, md
        assert "malformed" not in md and "not found" not in md and "config.json" not in md
        outs.append(_outside_message(md, typed))
    assert outs[0] == outs[1]


def test_a_link_out_of_the_runs_folder_is_refused(world, tmp_path):
    secret = tmp_path / "shadow.jsonl"
    secret.write_text("root:x:0:0\n")
    link = world["runs"] / "innocent.jsonl"
    link.symlink_to(secret)
    md = call(world["client"], "/overlap", str(link), None, "all")[0]
    link.unlink()
    assert is_error(md) and "not inside the runs folder" in md and "root:x" not in md


@pytest.mark.parametrize(
    ("api", "args", "expect"),
    [
        ("/explain", {9: "abc"}, "k must be a whole number from 1 to 20; got 'abc'"),
        ("/explain", {9: 0}, "k must be a whole number from 1 to 20"),
        ("/explain", {9: 2.5}, "k must be a whole number"),
        ("/explain", {8: "bogus"}, "unknown attribution method 'bogus'"),
        ("/explain", {1: "Poem"}, "unknown input kind 'Poem'"),
        ("/explain", {11: "pixels"}, "unknown heatmap columns 'pixels'"),
        ("/explain", {7: 5}, "gold answer must be text"),
        ("/explain", {3: 7}, "choices must be text"),
        ("/explain", {0: 3}, "the teacher model must be a spec"),
        ("/overlap_page", "abc", "page must be a whole number of at least 1; got 'abc'"),
        ("/overlap_page", -3, "page must be a whole number"),
        ("/distill_start", {7: "abc"}, "training examples must be a whole number"),
        ("/distill_start", {8: "abc"}, "steps must be a whole number"),
        ("/distill_start", {11: "nan"}, "learning rate must be a number above 0"),
        ("/distill_start", {11: "inf"}, "learning rate must be a number above 0"),
        ("/distill_start", {6: ["standard", "magic"]}, "unknown mode 'magic'"),
        ("/distill_start", {0: "poetry"}, "unknown task 'poetry'"),
        ("/distill_start", {1: "ftp"}, "unknown data source 'ftp'"),
        ("/distill_start", {13: "oracle"}, "unknown rationale target 'oracle'"),
        ("/distill_start", {14: 3}, "run name must be text"),
        ("/distill_start", {2: ["a"], 1: "path"}, "give the path"),
        ("/distill_start", {18: "0 0"}, "each seed once: 0 repeats"),
        ("/distill_start", {18: "zero"}, "each seed must be a whole number"),
    ],
)
def test_api_only_inputs_get_the_uis_message(world, api, args, expect):
    """Values the UI cannot send (a word as k, a page 'abc') come back as the same one-line
    message, not Gradio's generic error."""
    c = world["client"]
    if api == "/explain":
        full = list(explain_args(world["model"]))
    elif api == "/distill_start":
        full = list(start_args(world, name="api-bad"))
    else:
        full = [args, "all"]
        args = {}
    for i, v in args.items():
        full[i] = v
    md = call(c, api, *full)[0]
    assert is_error(md) and expect in md, md
    assert not (world["runs"] / "api-bad").exists()


def test_a_rejected_upload_leaves_nothing_behind(world, tmp_path):
    import uuid

    from gradio_client import handle_file

    from app.paths import upload_root

    name = f"rejected-{uuid.uuid4().hex[:8]}.csv"
    bad = tmp_path / name
    bad.write_text("question,choices,answer\nWhere?,a|b,zebra\n")
    before = set((world["runs"] / "uploads").glob("*"))
    md = call(world["client"], "/distill_start",
              *start_args(world, source="upload", upload=handle_file(str(bad))))[0]  # fmt: skip
    assert is_error(md) and "not one of the choices" in md
    assert set((world["runs"] / "uploads").glob("*")) == before  # no stored copy
    assert not list(upload_root().rglob(name))  # nor Gradio's own copy
    bad_rat = tmp_path / f"r-{uuid.uuid4().hex[:8]}.jsonl"
    bad_rat.write_text("not json\n")
    md = call(world["client"], "/overlap", None, handle_file(str(bad_rat)), "all")[0]
    assert is_error(md) and not list(upload_root().rglob(bad_rat.name))


def test_old_exports_are_removed(world):
    import os

    from app.paths import EXPORT_TTL_S

    root = world["demo"].kdlens.exports_root
    old = root / "20200101-000000-1"
    old.mkdir(parents=True, exist_ok=True)
    (old / "kdlens-saliency.json").write_text("{}")
    stale = time.time() - EXPORT_TTL_S - 60
    os.utime(old, (stale, stale))
    c = world["client"]
    call(c, "/explain", *explain_args(world["model"]))
    files = call(c, "/export", "all")[1]["value"]
    assert not old.exists()
    assert all(Path(f).is_file() for f in files)  # the new export stays


# ---------------------------------------------------------------------------------------------
# Progress and model states (issue 10)


def test_first_load_reports_progress_and_states(tmp_path):
    """The callback gets the loader's own messages (pack download, checksum, conversion) and
    the app's (loading, ready on a device); the state reads loading during the load."""
    seen, states = [], []

    def loader(spec, progress=None, **kw):
        states.append(ctx.model_state(spec))
        progress("pack: downloading 10.0 of 20.0 MB (50%)", 0.5)
        progress("pack: verified sha256 abc...", 1.0)
        return tiny.loaded()

    ctx = common.AppContext("a", "b", tmp_path, model_loader=loader)
    assert ctx.model_state("a") == "not loaded"
    ctx.teacher_model("a", lambda m, f: seen.append((m, f)))
    assert states == ["loading…"]
    assert [m for m, _ in seen] == [
        "loading teacher a…",
        "pack: downloading 10.0 of 20.0 MB (50%)",
        "pack: verified sha256 abc...",
        "teacher a ready on cpu",
    ]
    assert ctx.model_state("a") == "ready on cpu"
    md = ctx.models_markdown()
    assert (
        "Teacher `a`" in md and "ready on cpu" in md and "Student `b`" in md and "not loaded" in md
    )
    seen.clear()
    ctx.teacher_model("a", lambda m, f: seen.append((m, f)))
    assert seen == []  # cached: nothing to report


def test_explain_states_the_teachers_time_and_suggests_a_smaller_teacher_on_cpu(world):
    status, *_, models = call(world["client"], "/explain", *explain_args(world["model"]))
    assert "the teacher took" in status and "ready on cpu" in models
    assert "smaller teacher" not in status  # a tiny teacher is fast already
    slow = explain_tab.timing_note(40.0, 25.0, 1_500_000_000, "cpu")
    assert "40.0 s" in slow and "25.0 s loading" in slow and "smaller teacher" in slow
    assert "smaller teacher" not in explain_tab.timing_note(4.0, None, 1_500_000_000, "cuda")


def test_preload_loads_both_models_with_terminal_progress(tmp_path):
    import io

    from app.cli import parse_args, preload

    model = save_tiny_model(tmp_path / "m")
    ctx = common.AppContext(str(model), str(model), tmp_path / "runs")
    out = io.StringIO()
    preload(ctx, out)
    assert ctx.model_state(str(model)) == "ready on cpu"
    text = out.getvalue()
    assert "[preload]" in text and "loading teacher m" in text and "ready on cpu" in text
    assert parse_args(["--preload"]).preload and not parse_args([]).preload


def test_app_script_and_app_package_live_side_by_side():
    """``python app.py`` runs the script, whose ``import app`` (like the tests') finds the
    app/ package: a folder wins over a module of the same name."""
    import subprocess
    import sys

    import app

    root = Path(__file__).resolve().parents[1]
    assert Path(app.__file__) == root / "app" / "__init__.py"
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--preload" in out.stdout, out.stderr


def test_app_rationale_equals_the_extraction_record(world):
    """One definition of the rationale (issue 7, defect 6): for the same question, answer and
    settings, the Explain tab shows exactly the words (and scores) a student trains on."""
    import html as html_lib

    from distill.rationales import read_records

    rec = next(r for r in read_records(world["rationales"]) if r["id"] == "q0")
    q, choices, gold = ITEMS[0]
    args = list(explain_args(world["model"], question=q, choices=" | ".join(choices), k=3))
    args[10] = gold  # the extraction attributed the gold answer (target gold)
    out = call(world["client"], "/explain", *args)
    rat = out[5]
    chips = re.findall(r'class="kd-chip" title="([^"]*)"', rat)
    shown = [html_lib.unescape(t).rsplit(": ", 1) for t in chips]
    assert [w for w, _ in shown] == [w["text"] for w in rec["rationale"]]
    for (_, score), w in zip(shown, rec["rationale"]):
        assert float(score) == pytest.approx(w["score"], rel=1e-4, abs=1e-6)
