"""Issue 9: every bad input to the two CLIs and the app's API is a clear one-line error.

Each case asserts exit status 2 (CLI) or the app's error message, one line with no traceback and
no internal exception type name, that no model was loaded (settings are checked first), and
that nothing was left behind: the runs folder, the current folder and the data folder hold
exactly what they held before. The CLIs run in-process (``main(argv)``); one case per CLI
runs the real entry point in a subprocess. App cases go through gradio_client to the app that
tests/test_app.py launches on a tiny random model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
from test_app import QUESTION, call, explain_args, is_error, start_args
from test_app import world as world  # noqa: F401 - the launched app, shared (a fixture)

from distill.cli import main as distill_main
from explain.cli import main as explain_main
from explain.limits import MAX_ANSWER_CHARS, MAX_INPUT_CHARS

ROOT = Path(__file__).resolve().parents[1]
# An internal exception's type name in a user message means it escaped unhandled.
INTERNAL = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception|Iteration)\b|\bKeyError\b")
LONG = "Where would you put a plate after washing it? " * 2200  # about 100k characters


def _record(i: int, rid: str | None = None) -> dict:
    q, choices, answer = tiny.CQA_ITEMS[i % len(tiny.CQA_ITEMS)]
    return {"id": rid or f"q{i}", "question": q, "choices": choices, "answer": answer}


def _jsonl(recs: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)


def write_data(folder: Path) -> None:
    """Good and bad data files, one per problem."""
    folder.mkdir()
    good = [_record(i) for i in range(10)]
    (folder / "good.jsonl").write_text(_jsonl(good), encoding="utf-8")
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl(good[:3]).encode())
    (folder / "bom.csv").write_bytes(
        b"\xef\xbb\xbfid,question,choices,answer\n"
        + b"".join(
            f"{r['id']},{r['question']},{'|'.join(r['choices'])},{r['answer']}\n".encode()
            for r in good[:3]
        )  # fmt: skip
    )
    latin = dict(good[1], question="Where does the café's chef put a plate?")
    (folder / "latin1.jsonl").write_bytes(_jsonl([good[0], latin]).encode("latin-1"))
    (folder / "latin1.csv").write_bytes(
        "id,question,choices,answer\nq0,Where?,a|b,a\nq1,Café?,a|b,b\n".encode("latin-1")
    )
    (folder / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (folder / "dup.jsonl").write_text(_jsonl([good[0], good[1], _record(2, "q0")]))
    (folder / "empty.jsonl").write_text("\n\n")
    (folder / "malformed.jsonl").write_text(_jsonl(good[:1]) + "{not json\n")
    (folder / "badanswer.jsonl").write_text(_jsonl([dict(good[0], answer="zebra")]))
    (folder / "rationales.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (folder / "existing.md").write_text("not a run\n")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A runs folder ($KDLENS_RUNS), an empty current folder, data files, and a model loader
    that records calls and fails (no bad input may get as far as a model load)."""
    import explain.models

    runs, cwd, data = tmp_path / "runs", tmp_path / "cwd", tmp_path / "data"
    runs.mkdir()
    cwd.mkdir()
    write_data(data)
    monkeypatch.setenv("KDLENS_RUNS", str(runs))
    monkeypatch.chdir(cwd)
    loads: list[str] = []

    def no_load(spec, **kw):
        loads.append(spec)
        raise AssertionError(f"model {spec} loaded for a bad input")

    # Every module that holds its own reference to load_model (imported before the patch, so
    # none keeps the patched one afterwards).
    import distill.evaluate
    import distill.pipeline
    import distill.train

    for mod in (explain.models, distill.evaluate, distill.pipeline, distill.train):
        monkeypatch.setattr(mod, "load_model", no_load)
    return {"root": tmp_path, "runs": runs, "cwd": cwd, "data": data, "loads": loads}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(msg: str, expect: str) -> None:
    lines = msg.strip().splitlines()
    assert len(lines) == 1, msg
    assert expect in lines[0], msg
    assert not INTERNAL.search(lines[0]), msg


def fill(argv: list[str], env: dict) -> list[str]:
    """``{data}``, ``{tmp}`` and ``{runs}`` in a case's arguments."""
    return [a.format(data=env["data"], tmp=env["root"], runs=env["runs"]) for a in argv]


# ---------------------------------------------------------------------------------------------
# python -m explain

Q = ["--question", "Where is the plate?", "--choices", "cupboard|table|sink"]
IG = ["--method", "integrated_gradients"]

# fmt: off
EXPLAIN_CASES = [
    ("device-cuda7", [*Q, "--device", "cuda:7"], "cuda:7"),
    ("device-garbage", [*Q, "--device", "gpu!!"], "unknown device 'gpu!!'"),
    ("device-other", [*Q, "--device", "meta"], "unsupported device 'meta'"),
    ("max-new-tokens-0", [*Q, "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    ("max-new-tokens-neg", [*Q, "--max-new-tokens", "-5"], "--max-new-tokens must be at least 1"),
    ("max-new-tokens-word", [*Q, "--max-new-tokens", "ten"], "invalid int value: 'ten'"),
    ("ig-steps-0", [*Q, *IG, "--steps", "0"], "--steps must be at least 1"),
    ("ig-steps-neg", [*Q, *IG, "--steps", "-3"], "--steps must be at least 1"),
    ("steps-not-ig", [*Q, "--steps", "4"], "--steps applies to integrated_gradients only"),
    ("ig-steps-huge", [*Q, *IG, "--steps", "100000"], "n_steps must be a whole number from 1"),
    ("baseline-saliency", [*Q, "--baseline", "pad"], "--baseline applies to"),
    ("baseline-bad", [*Q, *IG, "--baseline", "noise"], "invalid choice: 'noise'"),
    ("top-k-0", [*Q, "--top-k", "0"], "--top-k must be at least 1"),
    ("top-k-neg", [*Q, "--top-k", "-1"], "--top-k must be at least 1"),
    ("top-k-word", [*Q, "--top-k", "abc"], "invalid int value: 'abc'"),
    ("method-unknown", [*Q, "--method", "magic"], "invalid choice: 'magic'"),
    ("rows-unknown", [*Q, "--rows", "columns"], "invalid choice: 'columns'"),
    ("aggregate-unknown", [*Q, "--aggregate", "median"], "invalid choice: 'median'"),
    ("dtype-unknown", [*Q, "--dtype", "fp8"], "invalid choice: 'fp8'"),
    ("no-input", [], "give --question"),
    ("blank-text", ["--text", "   "], "the text is empty"),
    ("blank-answer", [*Q, "--answer", "  "], "the given answer is empty"),
    ("premise-only", ["--premise", "A man sings."], "give both --premise and --hypothesis"),
    ("one-choice", ["--question", "Where?", "--choices", "sink"], "choices"),
    ("long-question", ["--question", LONG], f"the limit is {MAX_INPUT_CHARS:,} characters"),
    ("long-text", ["--text", LONG], f"the limit is {MAX_INPUT_CHARS:,} characters"),
    ("long-answer", [*Q, "--answer", "sink " * 600], f"limit is {MAX_ANSWER_CHARS:,} characters"),
    ("unknown-flag", [*Q, "--temperature", "0.7"], "unrecognized arguments: --temperature"),
]
# fmt: on


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in EXPLAIN_CASES],
                         ids=[c[0] for c in EXPLAIN_CASES])  # fmt: skip
def test_explain_cli_bad_input(env, capsys, argv, expect):
    before = tree(env["root"])
    rc, err = run_main(explain_main, ["attribute", "--model", "tiny", *fill(argv, env)], capsys)
    assert rc == 2, err
    assert_one_line(err, expect)
    assert env["loads"] == []  # refused before the model load
    assert tree(env["root"]) == before


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        ([], "the following arguments are required: command"),
        (["fetch", "no-such-pack"], "no-such-pack"),
        (["explain", "--text", "hi"], "invalid choice: 'explain'"),
    ],  # fmt: skip
    ids=["no-command", "unknown-pack", "unknown-command"],
)
def test_explain_cli_bad_command(env, capsys, argv, expect):
    before = tree(env["root"])
    rc, err = run_main(explain_main, argv, capsys)
    assert rc == 2 and env["loads"] == []
    assert_one_line(err, expect)
    assert tree(env["root"]) == before


# ---------------------------------------------------------------------------------------------
# python -m distill

D = ["--task", "cqa", "--data", "{data}/good.jsonl"]
EXTRACT = ["extract", "--teacher", "tiny", *D]
TRAIN = ["train", "--student", "tiny", *D]
EVAL = ["eval", "--model", "tiny", *D]


def data(name: str) -> list[str]:
    return ["--task", "cqa", "--data", "{data}/" + name]


# fmt: off
DISTILL_CASES = [
    # extract: every setting before the teacher loads or the folder exists
    ("extract-limit-0", [*EXTRACT, "--limit", "0", "--out", "r"], "--limit must be at least 1"),
    ("extract-limit-neg", [*EXTRACT, "--limit", "-1", "--out", "r"], "--limit must be at least 1"),
    ("extract-batch-0", [*EXTRACT, "--batch-size", "0", "--out", "r"], "batch size must be"),
    ("extract-batch-neg", [*EXTRACT, "--batch-size", "-2", "--out", "r"], "batch size must be"),
    ("extract-top-k-0", [*EXTRACT, "--top-k", "0", "--out", "r"], "top-k must be"),
    ("extract-method", [*EXTRACT, "--method", "magic", "--out", "r"], "unknown method 'magic'"),
    ("extract-max-new-0", [*EXTRACT, "--max-new-tokens", "0", "--out", "r"], "max new tokens"),
    ("extract-max-new-neg", [*EXTRACT, "--max-new-tokens", "-5", "--out", "r"], "max new tokens"),
    ("extract-ig-steps-0", [*EXTRACT, *IG, "--steps", "0", "--out", "r"],
     "--steps must be at least 1"),
    ("extract-ig-steps-neg", [*EXTRACT, *IG, "--steps", "-3", "--out", "r"],
     "--steps must be at least 1"),
    ("extract-ig-steps-huge", [*EXTRACT, *IG, "--steps", "100000", "--out", "r"],
     "n_steps must be a whole number from 1 to 256"),
    ("extract-steps-not-ig", [*EXTRACT, "--steps", "8", "--out", "r"],
     "--steps applies to integrated_gradients only"),
    ("extract-empty-dev", [*EXTRACT, "--split", "dev", "--dev-size", "0", "--out", "r"],
     "no examples in the dev split"),
    ("extract-dev-fraction", [*EXTRACT, "--dev-size", "1.5", "--split", "dev", "--out", "r"],
     "dev fraction must be in [0, 1)"),
    ("extract-dev-size-word", [*EXTRACT, "--dev-size", "abc", "--out", "r"],
     "--dev-size: expected a count (100) or a fraction (0.1), got 'abc'"),
    ("extract-dev-size-neg", [*EXTRACT, "--dev-size", "-1", "--out", "r"],
     "--dev-size: expected a count"),
    ("train-dev-size-nan", [*TRAIN, "--dev-size", "nan.", "--out", "r"], "--dev-size: expected"),
    ("extract-faith-neg", [*EXTRACT, "--faithfulness-limit", "-1", "--out", "r"],
     "faithfulness limit must not be negative"),
    ("extract-device-cuda7", [*EXTRACT, "--device", "cuda:7", "--out", "r"], "cuda:7"),
    ("extract-device-bad", [*EXTRACT, "--device", "gpu!!", "--out", "r"], "unknown device"),
    ("extract-dtype", [*EXTRACT, "--dtype", "fp8", "--out", "r"], "invalid choice: 'fp8'"),
    ("extract-target", [*EXTRACT, "--target", "oracle", "--out", "r"], "invalid choice"),
    ("extract-out-up", [*EXTRACT, "--out", "../../x"], "--out takes a run name"),
    ("extract-out-abs", [*EXTRACT, "--out", "{tmp}/abs"], "--out takes a run name"),
    ("extract-out-dotdot", [*EXTRACT, "--out", ".."], "run name"),
    ("extract-out-and-dir", [*EXTRACT, "--out", "r", "--out-dir", "{tmp}/r"], "not allowed with"),
    ("extract-no-out", EXTRACT, "one of the arguments --out --out-dir is required"),
    ("extract-out-dir-file", [*EXTRACT, "--out-dir", "{data}/existing.md"], "existing.md"),
    ("extract-out-dir-proc", [*EXTRACT, "--out-dir", "/proc/kdlens-x"], "cannot write the run"),
    ("extract-out-dir-under-file", [*EXTRACT, "--out-dir", "{data}/existing.md/run"],
     "is not a folder"),
    ("train-out-dir-proc", [*TRAIN, "--out-dir", "/proc/kdlens-x"], "cannot write the run"),
    ("train-epochs-huge", [*TRAIN, "--epochs", "1e9", "--out", "r"], "epochs must be at most"),
    ("train-steps-huge", [*TRAIN, "--steps", "100000000", "--out", "r"], "steps must be at most"),
    ("experiment-epochs-huge", ["experiment", *D, "--epochs", "1e9", "--out", "{tmp}/exp"],
     "epochs must be at most"),
    ("experiment-out-proc", ["experiment", *D, "--modes", "standard", "--out", "/proc/kdlens-x"],
     "cannot write the run folder"),
    ("extract-binary", ["extract", *data("binary.jsonl"), "--out", "r"], "line 2: not UTF-8"),
    ("extract-latin1", ["extract", *data("latin1.jsonl"), "--out", "r"], "line 2"),
    ("extract-latin1-csv", ["extract", *data("latin1.csv"), "--out", "r"], "line 3"),
    ("extract-dup-ids", ["extract", *data("dup.jsonl"), "--out", "r"], "lines 1 and 3"),
    ("extract-empty-file", ["extract", *data("empty.jsonl"), "--out", "r"], "no records"),
    ("extract-malformed", ["extract", *data("malformed.jsonl"), "--out", "r"],
     "line 2: malformed JSON"),
    ("extract-bad-answer", ["extract", *data("badanswer.jsonl"), "--out", "r"],
     "line 1: field 'answer'"),
    ("extract-missing-data", ["extract", *data("nope.jsonl"), "--out", "r"], "not found"),
    ("extract-task", ["extract", "--task", "poetry", "--data", "x", "--out", "r"],
     "invalid choice: 'poetry'"),
    # train
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "--out", "r"], "expected a finite number"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf", "--out", "r"], "expected a finite number"),
    ("train-epochs-nan", [*TRAIN, "--epochs", "nan", "--out", "r"], "expected a finite number"),
    ("train-alpha-nan", [*TRAIN, "--alpha", "nan", "--out", "r"], "expected a finite number"),
    ("train-lr-neg", [*TRAIN, "--lr", "-1", "--out", "r"], "learning rate"),
    ("train-lr-zero", [*TRAIN, "--lr", "0", "--out", "r"], "learning rate"),
    ("train-batch-0", [*TRAIN, "--batch-size", "0", "--out", "r"], "batch"),
    ("train-steps-0", [*TRAIN, "--steps", "0", "--out", "r"], "steps"),
    ("train-epochs-neg", [*TRAIN, "--epochs", "-1", "--out", "r"], "epochs"),
    ("train-grad-accum-0", [*TRAIN, "--grad-accum", "0", "--out", "r"], "grad"),
    ("train-limit-0", [*TRAIN, "--limit", "0", "--out", "r"], "--limit must be at least 1"),
    ("train-out-up", [*TRAIN, "--out", "../../x"], "--out takes a run name"),
    ("train-out-abs", [*TRAIN, "--out", "/tmp/x"], "--out takes a run name"),
    ("train-runs-out-up", [*TRAIN, "--runs", "{tmp}/r2", "--out", "../x"], "--out takes"),
    ("train-latin1", ["train", *data("latin1.jsonl"), "--out", "r"], "line 2"),
    ("train-dup-ids", ["train", *data("dup.jsonl"), "--out", "r"], "lines 1 and 3"),
    ("train-mode", [*TRAIN, "--mode", "magic", "--out", "r"], "invalid choice: 'magic'"),
    ("train-no-rationales", [*TRAIN, "--mode", "saliency", "--out", "r"], "rationales"),
    (
        "train-rationales-missing",
        [*TRAIN, "--mode", "saliency", "--rationales", "{tmp}/none", "--out", "r"],
        "none",
        ),  # fmt: skip
        # eval
        ("eval-batch-0", [*EVAL, "--batch-size", "0"], "--batch-size must be at least 1"),
        ("eval-batch-neg", [*EVAL, "--batch-size", "-2"], "--batch-size must be at least 1"),
        (
        "eval-zero-examples",
        [*EVAL, "--split", "dev", "--dev-size", "0"],
        "no examples in the dev split",
    ),
    ("eval-limit-0", [*EVAL, "--limit", "0"], "--limit must be at least 1"),
    ("eval-binary", ["eval", "--model", "tiny", *data("binary.jsonl")], "not UTF-8"),
    ("eval-dup-ids", ["eval", "--model", "tiny", *data("dup.jsonl")], "lines 1 and 3"),
    ("eval-rationales-missing", [*EVAL, "--with-rationales", "{tmp}/none"], "none"),
    ("eval-predictions-dir", [*EVAL, "--predictions", "{data}"], "--predictions"),
    # compare, overlap, experiment
    ("compare-out-file", ["compare", "{data}/good.jsonl", "--out", "{data}/existing.md"],
     "existing.md"),
    ("compare-missing-run", ["compare", "{tmp}/no-run"], "no-run"),
    ("compare-data-file", ["compare", "{data}/good.jsonl"], "line 1: not a predictions record"),
    ("compare-binary", ["compare", "{data}/rationales.bin"], "line 1: not UTF-8"),
    ("compare-empty", ["compare", "{data}/empty.jsonl"], "no predictions"),
    ("compare-n-boot-0", ["compare", "{tmp}/no-run", "--n-boot", "0"], "--n-boot"),
    ("combine-one", ["combine", "{tmp}/no-exp", "--out", "{tmp}/c"], "at least two"),
    ("combine-missing", ["combine", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/c"],
     "no finished experiment"),
    ("combine-not-experiments", ["combine", "{data}", "{data}", "--out", "{tmp}/c"],
     "no finished experiment"),
    ("overlap-missing", ["overlap", "--rationales", "{tmp}/none.jsonl"], "none.jsonl"),
    ("overlap-binary", ["overlap", "--rationales", "{data}/rationales.bin"], "not UTF-8"),
    (
        "overlap-n-random-neg",
        ["overlap", "--rationales", "{data}/good.jsonl", "--n-random", "-1"],
        "--n-random",
        ),  # fmt: skip
        (
        "experiment-batch-0",
        ["experiment", *D, "--batch-size", "0", "--out", "{tmp}/exp"],
        "batch size must be at least 1",
    ),
    ("experiment-lr-nan", ["experiment", *D, "--lr", "nan", "--out", "{tmp}/exp"],
     "expected a finite number"),
    ("experiment-mode", ["experiment", *D, "--modes", "magic", "--out", "{tmp}/exp"], "magic"),
    ("experiment-test-repeats-train",
     ["experiment", *D, "--modes", "standard", "--dev-size", "2",
      "--test-data", "{data}/bom.jsonl", "--out", "{tmp}/exp"],
     "3 of the 3 records of the test file"),
    (
        "experiment-binary",
        ["experiment", *data("binary.jsonl"), "--modes", "standard", "--out", "{tmp}/exp"],
        "not UTF-8",
    ),
    ("no-command", [], "the following arguments are required: command"),
]
# fmt: on


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in DISTILL_CASES],
                         ids=[c[0] for c in DISTILL_CASES])  # fmt: skip
def test_distill_cli_bad_input(env, capsys, argv, expect):
    before = tree(env["root"])
    rc, err = run_main(distill_main, fill(argv, env), capsys)
    assert rc == 2, err
    assert_one_line(err, expect)
    assert env["loads"] == []  # refused before any model load
    assert tree(env["root"]) == before  # no run folder, no file (runs, cwd, data)


# ---------------------------------------------------------------------------------------------
# The real entry points: exit 2 and one stderr line


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "explain", "attribute", "--text", "hi", "--device", "gpu!!"],
        [
            "-m",
            "distill",
            "extract",
            "--task",
            "cqa",
            "--data",
            "x.jsonl",
            "--limit",
            "0",
            "--out",
            "r",
        ],
    ],  # fmt: skip
    ids=["explain", "distill"],
)
def test_entry_point_exits_2_with_one_line(tmp_path, argv):
    env = {**__import__("os").environ, "KDLENS_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr, "error: ")
    assert proc.stdout == "" and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Good inputs that the rules above must not refuse


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.csv"])
def test_a_utf8_bom_is_accepted(tmp_path, name):
    from distill.data import load_task

    write_data(tmp_path / "data")
    examples = load_task("cqa", tmp_path / "data" / name)
    assert [e.id for e in examples] == ["q0", "q1", "q2"]
    assert examples[0].fields["question"] == tiny.CQA_ITEMS[0][0]


def test_eval_of_a_model_spec_writes_nothing_into_the_current_folder(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    write_data(tmp_path / "data")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("KDLENS_RUNS", str(tmp_path / "runs"))
    argv = ["eval", "--model", tiny_model_dir, "--task", "cqa", "--data",
            str(tmp_path / "data" / "good.jsonl"), "--limit", "3", "--no-choices"]  # fmt: skip
    rc, err = run_main(distill_main, argv, capsys)
    assert rc == 0, err
    assert list((tmp_path / "cwd").iterdir()) == []
    written = list((tmp_path / "runs").rglob("predictions-cqa-all*.jsonl"))
    assert len(written) == 1 and len(written[0].read_text().splitlines()) == 3
    assert str(written[0]) in err


def test_train_honours_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    write_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDLENS_RUNS", str(tmp_path / "env-runs"))
    argv = ["train", "--student", tiny_model_dir, "--task", "cqa", "--data",
            str(tmp_path / "data" / "good.jsonl"), "--limit", "6", "--dev-size", "2",
            "--steps", "1", "--batch-size", "2", "--eval-every", "0", "--dev-limit", "2",
            "--runs", str(tmp_path / "my-runs"), "--out", "std"]  # fmt: skip
    rc, err = run_main(distill_main, argv, capsys)
    assert rc == 0, err
    assert (tmp_path / "my-runs" / "std" / "summary.json").is_file()
    assert not (tmp_path / "env-runs").exists() and not (tmp_path / "runs").exists()


def test_token_limit_refuses_before_generation(tiny_model_dir, monkeypatch, capsys):
    """Under the character limit but over the token limit: refused after the load, before
    generation and attribution (the limit lowered to 50 tokens for a tiny model)."""
    import explain.limits as limits
    import explain.pipeline

    monkeypatch.setattr(limits, "MAX_INPUT_TOKENS", 50)
    calls = []
    monkeypatch.setattr(explain.pipeline, "explain", lambda *a, **k: calls.append(a))
    argv = ["attribute", "--model", tiny_model_dir, "--text", "Sam had apples " * 40]
    rc, err = run_main(explain_main, argv, capsys)
    assert rc == 2 and calls == []
    assert_one_line(err.splitlines()[-1], "the limit is 50 tokens")
    assert limits.check_tokens(tiny.tiny_tokenizer(), {"text": "Sam had apples"}) <= 50


# ---------------------------------------------------------------------------------------------
# The app's API (gradio_client against the app launched by test_app's ``world`` fixture)


def _explain(w, **change):
    args = list(explain_args(w["model"]))
    for i, v in change.items():
        args[int(i[1:])] = v
    return args


def _start(w, **change):
    args = list(start_args(w, name="bad-input"))
    for i, v in change.items():
        args[int(i[1:])] = v
    return args


def _upload(w, name: str, content: bytes):
    from gradio_client import handle_file

    path = w["root"] / "uploads-src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return handle_file(str(path))


SECRET_PATHS = ["/etc/shadow", "~/.ssh/id_rsa", "../../", "/etc/passwd"]
LATIN1 = "id,question,choices,answer\nq0,Café?,a|b,a\n".encode("latin-1")
DUP = _jsonl([_record(0), _record(1, "q0")]).encode()

# fmt: off
APP_CASES = [
    *[
        (f"explain-model-{p}", "/explain", lambda w, p=p: _explain(w, a0=p), "not inside")
        for p in SECRET_PATHS
    ],  # fmt: skip
    *[
        (f"overlap-path-{p}", "/overlap", lambda w, p=p: [p, None, "all"], "not inside")
        for p in SECRET_PATHS
    ],  # fmt: skip
    *[
        (f"distill-path-{p}", "/distill_start", lambda w, p=p: _start(w, a2=p), "not inside")
        for p in SECRET_PATHS[:3]
    ],  # fmt: skip
    (
        "compare-run-etc",
        "/compare",
        lambda w: [
        str(w["model"]),
        str(w["model"]),
        "Multiple choice",
        *QUESTION,
        "",
        "",
        "",
        "",
        ["/etc"],
        "saliency",
        3,
        ],
        "not inside",
    ),
    (
        "distill-binary-upload",
        "/distill_start",
        lambda w: _start(w, a1="upload", a2="", a3=_upload(w, "b.jsonl", bytes(range(256)))),
        "not UTF-8",
    ),
    (
        "distill-latin1-upload",
        "/distill_start",
        lambda w: _start(w, a1="upload", a2="", a3=_upload(w, "l.csv", LATIN1)),
        "line 2",
    ),
    (
        "distill-dup-upload",
        "/distill_start",
        lambda w: _start(w, a1="upload", a2="", a3=_upload(w, "d.jsonl", DUP)),
        "lines 1 and 2",
    ),
    (
        "distill-empty-upload",
        "/distill_start",
        lambda w: _start(w, a1="upload", a2="", a3=_upload(w, "e.jsonl", b"")),
        "no records",
    ),
    (
        "overlap-binary-upload",
        "/overlap",
        lambda w: [None, _upload(w, "r.jsonl", b"\x89PNG\r\n\x1a\n\xff\xfe"), "all"],
        "not UTF-8",
    ),
    ("explain-k-abc", "/explain", lambda w: _explain(w, a9="abc"), "k must be a whole number"),
    ("explain-k-huge", "/explain", lambda w: _explain(w, a9=10**9), "k must be a whole number"),
    ("explain-k-none", "/explain", lambda w: _explain(w, a9=None), "k must be a whole number"),
    ("explain-method-none", "/explain", lambda w: _explain(w, a8=None), "attribution method"),
    ("explain-question-list", "/explain", lambda w: _explain(w, a2=["a"]), "question must be"),
    ("explain-long-question", "/explain", lambda w: _explain(w, a2=LONG),
     f"the limit is {MAX_INPUT_CHARS:,} characters"),
    ("explain-long-choices", "/explain", lambda w: _explain(w, a3=" | ".join([LONG[:4000]] * 5)),
     f"the limit is {MAX_INPUT_CHARS:,} characters"),
    ("explain-long-answer", "/explain", lambda w: _explain(w, a10="sink " * 600),
     f"limit is {MAX_ANSWER_CHARS:,} characters"),
    ("overlap-page-abc", "/overlap_page", lambda w: ["abc", "all"], "page must be a whole"),
    ("overlap-page-0", "/overlap_page", lambda w: [0, "all"], "page must be a whole"),
    ("overlap-filter", "/overlap_page", lambda w: [1, "everything"], "unknown filter"),
    ("distill-batch-neg", "/distill_start", lambda w: _start(w, a10=-2), "batch"),
    ("distill-k-abc", "/distill_start", lambda w: _start(w, a9="abc"), "must be a whole number"),
    ("distill-lr-neg", "/distill_start", lambda w: _start(w, a11=-1), "learning rate"),
    ("distill-epochs-nan", "/distill_start", lambda w: _start(w, a8=0, a16="nan"), "epochs"),
    ("distill-name-abs", "/distill_start", lambda w: _start(w, a14="/tmp/x"), "path separators"),
    ("distill-name-dots", "/distill_start", lambda w: _start(w, a14=".."), "run name"),
    ("distill-preset", "/distill_start", lambda w: _start(w, a17="huge"), "preset"),
]
# fmt: on


@pytest.mark.parametrize(("api", "make", "expect"), [c[1:] for c in APP_CASES],
                         ids=[c[0] for c in APP_CASES])  # fmt: skip
def test_app_bad_input(world, monkeypatch, api, make, expect):  # noqa: F811
    import explain.pipeline

    calls = []
    monkeypatch.setattr(explain.pipeline, "explain", lambda *a, **k: calls.append(a))
    before = tree(world["runs"])
    loads = dict(world["loader"].counts)
    md = call(world["client"], api, *make(world))[0]
    assert is_error(md), md
    text = re.sub(r"<[^>]+>", "", md).replace("⚠", "").strip()
    assert_one_line(text, expect)
    assert calls == [] and world["loader"].counts == loads  # no model work
    assert tree(world["runs"]) == before  # no run folder, no stored upload


@pytest.mark.parametrize(
    ("argv", "port_env", "expect"),
    [
        (["--port", "abc"], None, "--port: expected a port from 1 to 65535, got 'abc'"),
        (["--port", "70000"], None, "--port: expected a port from 1 to 65535, got '70000'"),
        ([], "abc", "--port: expected a port from 1 to 65535, got 'abc'"),
        (["--share"], None, "unrecognized arguments: --share"),
    ],  # fmt: skip
    ids=["port-word", "port-range", "port-env", "unknown-flag"],
)
def test_app_cli_bad_flags(monkeypatch, capsys, argv, port_env, expect):
    """``python app.py``'s flags: one line, exit 2 (KDLENS_PORT=abc was a traceback)."""
    from app.cli import parse_args

    if port_env is not None:
        monkeypatch.setenv("KDLENS_PORT", port_env)
    rc, err = run_main(parse_args, argv, capsys)
    assert rc == 2
    assert_one_line(err, expect)
