"""The distill CLI end to end on a tiny local model: extract -> overlap, and error handling."""

import json

import pytest

from distill.cli import main
from distill.tasks import get_task


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_extract_then_overlap(model_dir, datasets_dir, tmp_path, capsys):
    data = str(datasets_dir / "cqa/cqa_train.json")
    out = str(tmp_path / "ext")
    rc = main(
        [
            "extract",
            "--teacher",
            model_dir,
            "--task",
            "cqa",
            "--data",
            data,
            "--limit",
            "5",
            "--top-k",
            "3",
            "--max-new-tokens",
            "3",
            "--out-dir",
            out,
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 5 and summary["top_k"] == 3
    lines = (tmp_path / "ext" / "rationales.jsonl").read_text().splitlines()
    assert len(lines) == 5
    cfg = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert len(cfg["data_hash"]) == 64 and cfg["teacher"] == model_dir

    rc = main(["overlap", "--rationales", out, "--task", "cqa", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["hit"]["n"] == 5
    assert 0.0 <= report["summary"]["hit"]["rationale"] <= 1.0
    assert "random" in report["summary"]["hit"]
    assert "hit" in report["definitions"]

    rc = main(["overlap", "--rationales", out, "--task", "esnli"])
    assert rc == 2 and "holds task 'cqa'" in capsys.readouterr().err


def test_extract_split_is_disjoint(model_dir, datasets_dir, tmp_path, capsys):
    data = str(datasets_dir / "cqa/cqa_train.json")
    ids = {}
    for part in ("train", "dev"):
        rc = main(
            [
                "extract",
                "--teacher",
                model_dir,
                "--task",
                "cqa",
                "--data",
                data,
                "--limit",
                "10",
                "--dev-size",
                "3",
                "--split",
                part,
                "--no-faithfulness",
                "--max-new-tokens",
                "2",
                "--out-dir",
                str(tmp_path / part),
            ]
        )
        assert rc == 0
        capsys.readouterr()
        lines = (tmp_path / part / "rationales.jsonl").read_text().splitlines()
        ids[part] = {json.loads(x)["id"] for x in lines}
    assert len(ids["train"]) == 7 and len(ids["dev"]) == 3
    assert not ids["train"] & ids["dev"]


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["overlap", "--rationales", "/no/such/file.jsonl"], "error: "),
        (["extract", "--task", "cqa", "--data", "/no/such.json", "--out", "x"], "error: "),
        (["extract", "--task", "cqa", "--data", "README.md", "--out", "../escape"], "error: "),
        (["extract", "--task", "cqa", "--data", "README.md", "--out", "/abs/x"], "error: --out "),
        (["train", "--task", "cqa", "--data", "README.md", "--out", "a/../../x"], "error: --out "),
    ],
)
def test_bad_input_one_line(argv, msg, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(msg) and err.count("\n") == 1


def test_extract_sharded_over_two_processes(model_dir, datasets_dir, tmp_path):
    """torchrun (what `accelerate launch` uses) with 2 CPU processes: shards merged in order."""
    import subprocess
    import sys
    from pathlib import Path

    data = str(datasets_dir / "cqa/cqa_train.json")
    args = [
        "--teacher",
        model_dir,
        "--task",
        "cqa",
        "--data",
        data,
        "--limit",
        "7",
        "--top-k",
        "2",
        "--max-new-tokens",
        "2",
        "--no-faithfulness",
    ]
    torchrun = Path(sys.executable).parent / "torchrun"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "distill",
            "extract",
            *args,
            "--out-dir",
            str(tmp_path / "sharded"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = sorted(p.name for p in (tmp_path / "sharded" / "parts").iterdir())
    assert parts == ["rank0-of2.jsonl", "rank1-of2.jsonl"]
    assert main(["extract", *args, "--out-dir", str(tmp_path / "single")]) == 0
    sharded = [
        json.loads(x) for x in (tmp_path / "sharded/rationales.jsonl").read_text().split("\n") if x
    ]
    single = [
        json.loads(x) for x in (tmp_path / "single/rationales.jsonl").read_text().split("\n") if x
    ]
    assert [r["index"] for r in sharded] == list(range(7))
    assert [r["id"] for r in sharded] == [r["id"] for r in single]
    assert [[w["text"] for w in r["rationale"]] for r in sharded] == [
        [w["text"] for w in r["rationale"]] for r in single
    ]


def test_train_eval_compare(model_dir, datasets_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDLENS_RUNS", str(tmp_path / "runs"))
    data = str(datasets_dir / "cqa/cqa_train.json")
    common = ["--task", "cqa", "--data", data, "--limit", "10", "--dev-size", "3"]
    rc = main(
        [
            "train",
            "--student",
            model_dir,
            *common,
            "--mode",
            "standard",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--eval-every",
            "0",
            "--dev-limit",
            "3",
            "--out",
            "std",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished" and summary["steps"] == 3
    run = tmp_path / "runs" / "std"
    assert (run / "model" / "model.safetensors").is_file()

    rc = main(["eval", "--model", str(run), *common, "--split", "dev", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert result["n"] == 3 and 0.0 <= result["accuracy"] <= 1.0
    preds = (run / "predictions-cqa-dev.jsonl").read_text().splitlines()
    assert len(preds) == 3 and {"prediction", "gold", "correct"} <= set(json.loads(preds[0]))

    rc = main(["compare", str(run)])
    assert rc == 0
    assert "standard" in capsys.readouterr().out
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "comparison.md").is_file()

    # a finished run is never overwritten
    rc = main(
        [
            "train",
            "--student",
            model_dir,
            *common,
            "--mode",
            "standard",
            "--steps",
            "3",
            "--out",
            "std",
        ]
    )
    assert rc == 2 and "never overwritten" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-1"], "--limit must be at least 1"),
        (["--batch-size", "-2"], "batch size"),
        (["--batch-size", "0"], "batch size"),
        (["--top-k", "0"], "top-k"),
        (["--method", "magic"], "unknown method"),
        (["--max-new-tokens", "0"], "max new tokens"),
        (["--split", "dev", "--dev-size", "0"], "no examples in the dev split"),
    ],
)
def test_extract_bad_settings_leave_no_run(datasets_dir, tmp_path, capsys, extra, msg):
    """Issue 9: these wrote a finished n=0 run (or failed after loading the teacher and
    creating the folder); now: exit 2, one line, before any model load, no folder."""
    data = str(datasets_dir / "cqa/cqa_train.json")
    out = tmp_path / "run"
    argv = ["extract", "--teacher", "/no/such/teacher", "--task", "cqa", "--data", data]
    rc = main(argv + ["--limit", "5", *extra, "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert not out.exists()


def test_experiment_command(model_dir, datasets_dir, tmp_path, capsys):
    argv = ["experiment", "--task", "cqa", "--data", str(datasets_dir / "cqa/cqa_train.json")]
    argv += ["--teacher", model_dir, "--student", model_dir, "--modes", "standard", "saliency"]
    argv += ["--train-size", "4", "--dev-size", "2", "--steps", "1", "--batch-size", "2"]
    argv += ["--top-k", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "exp")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| saliency | generated |" in captured.out
    assert "train saliency" in captured.err  # the one progress display names the stage
    assert (tmp_path / "exp/results.json").is_file()
    assert main(argv) == 0  # a rerun reuses every finished stage
    assert json.loads((tmp_path / "exp/results.json").read_text())["models"][1]["cached"]
    capsys.readouterr()
    assert main(argv[:-1] + [str(tmp_path / "exp2"), "--batch-size", "0"]) == 2
    assert "batch size must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "exp2").exists()


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--epochs", "nan")])
def test_train_refuses_non_finite_numbers(flag, value, tmp_path, capsys):
    argv = ["train", "--task", "cqa", "--data", "x.json", flag, value, "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "finite number" in capsys.readouterr().err


def test_train_preset_recipe_and_flags(model_dir, datasets_dir, tmp_path, capsys):
    """`distill train --preset cpu` trains with the experiment's recipe; flags given win; a
    freeze count the student cannot take is one line, before any run folder."""
    data = str(datasets_dir / "cqa/cqa_train.json")
    base = ["train", "--student", model_dir, "--task", "cqa", "--data", data, "--limit", "8",
            "--dev-size", "2", "--dev-limit", "2", "--eval-every", "0"]  # fmt: skip
    argv = base + ["--preset", "cpu", "--steps", "2", "--lr", "1e-3", "--freeze-layers", "1"]
    assert main(argv + ["--out-dir", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "a/config.json").read_text())["settings"]
    assert got["lr"] == 1e-3 and got["steps"] == 2 and got["epochs"] is None  # flags win
    assert got["batch_size"] == 8 and got["warmup"] == 5 and got["bf16"] is True
    assert got["chat_template"] is False and got["freeze_embeddings"] is True
    assert got["freeze_layers"] == 1
    assert (got["limit"], got["dev_size"], got["dev_limit"]) == (8, 2, 2)  # sizes given win
    capsys.readouterr()
    # Without --preset: TrainConfig's defaults; --no-chat-template and --bf16 off map through.
    argv = base + ["--steps", "1", "--no-chat-template", "--bf16", "off", "--warmup", "2",
                   "--freeze-layers", "1"]  # fmt: skip
    assert main(argv + ["--out-dir", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "b/config.json").read_text())["settings"]
    assert (got["lr"], got["batch_size"], got["freeze_embeddings"]) == (5e-5, 8, True)
    assert got["chat_template"] is False and got["bf16"] is False and got["warmup"] == 2
    capsys.readouterr()
    for flag, msg in (("9", "the student has 2 blocks"), ("-1", "must not be negative")):
        rc = main(base + ["--freeze-layers", flag, "--out-dir", str(tmp_path / "c")])
        err = capsys.readouterr().err  # (9 is found once the model loaded: a bar precedes it)
        last = err.strip().splitlines()[-1]
        assert rc == 2 and last.startswith("error: ") and msg in last, err
        assert "Traceback" not in err
        assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("task,mode,seed", [("esnli", "standard", 0), ("cqa", "random", 1)])
def test_train_preset_is_the_experiments_student(model_dir, datasets_dir, task, mode, seed):
    """`distill train --preset cpu` gets the TrainConfig the experiment trains for that task,
    mode and seed: its recipe and its records (read limit = train + dev, dev split); only the
    run folder, rationales and report cadence are the command's own."""
    from dataclasses import asdict

    from distill.cli import build_parser
    from distill.commands import recipe_settings
    from distill.pipeline import train_config
    from distill.plan import make_plan, preset_train_size

    data = str(datasets_dir / get_task(task).data_file)
    argv = ["train", "--student", model_dir, "--task", task, "--data", data, "--preset", "cpu",
            "--mode", mode, "--seed", str(seed), "--out", "x"]  # fmt: skip
    got = recipe_settings(build_parser().parse_args(argv))
    plan = make_plan(task, "y", "cpu", student=model_dir, data=data)
    want = asdict(train_config(plan, mode, seed))
    own = {"student", "task", "data", "mode", "seed", "rationales", "out", "steps", "eval_every",
           "save_every", "llm_rationales"}  # fmt: skip
    assert {k: got.get(k) for k in want if k not in own} == {
        k: v for k, v in want.items() if k not in own
    }
    # The values themselves (a change to the preset must show up here too).
    assert got["limit"] == preset_train_size("cpu", task) + 100
    assert (got["dev_size"], got["dev_limit"], got["epochs"], got["lr"]) == (100, 100, 4.0, 1e-4)
    assert got["freeze_embeddings"] is True and got["chat_template"] is False
    # --steps drops the preset's epochs; a size given wins.
    got = recipe_settings(build_parser().parse_args(argv + ["--steps", "3", "--limit", "50"]))
    assert got["epochs"] is None and got["limit"] == 50 and got["dev_size"] == 100
