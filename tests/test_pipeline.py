"""The experiment pipeline end to end on a tiny local model: extract -> train -> evaluate ->
table, kill-and-rerun resumption, validation before any folder, and the gold-target label."""

import json
import threading

import pytest

from distill.pipeline import run_plan
from distill.plan import Plan, PlanError, make_plan, validate
from distill.runs import RunDir


def _plan(model_dir, datasets_dir, out, **kw) -> Plan:
    base = dict(
        data=str(datasets_dir / "cqa/cqa_train.json"),
        teacher=model_dir,
        student=model_dir,
        modes=["standard", "saliency"],
        train_size=6,
        dev_size=3,
        steps=2,
        epochs=None,
        batch_size=2,
        top_k=2,
        max_new_tokens=2,
        dev_limit=3,
    )
    return Plan(task="cqa", out=str(out), **(base | kw))


def test_run_plan_end_to_end_and_resume(tiny_model_dir, datasets_dir, tmp_path, one_thread):
    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp")
    stop = threading.Event()
    stages = []

    def progress(p):  # "kill" the job as soon as the saliency student starts training
        stages.append(p["stage"])
        if "train saliency" in p["stage"] and p.get("loss") is not None:
            stop.set()

    first = run_plan(plan, progress=progress, stop=stop)
    assert first.status == "stopped" and first.stage == "train-saliency-s0"
    assert RunDir(tmp_path / "exp/extract").is_finished
    assert RunDir(tmp_path / "exp/train-standard-s0").is_finished
    assert not RunDir(tmp_path / "exp/train-saliency-s0").is_finished
    assert not (tmp_path / "exp/results.md").exists()
    assert any("extract rationales" in s for s in stages)

    # The same plan again continues: extraction and standard reused, saliency resumed.
    seen = []
    second = run_plan(plan, progress=lambda p: seen.append(p["stage"]))
    assert second.status == "finished"
    assert second.extraction["cached"] is True
    by_name = {m.name: m for m in second.models}
    assert set(by_name) == {"zero-shot-s0", "standard-s0", "saliency-s0"}
    assert by_name["standard-s0"].cached and not by_name["saliency-s0"].cached
    assert all(m.n == 3 and 0.0 <= m.accuracy <= 1.0 for m in second.models)
    md = (tmp_path / "exp/results.md").read_text()
    assert "rationale target: generated" in md and "| saliency | generated |" in md
    payload = json.loads((tmp_path / "exp/results.json").read_text())
    assert payload["rationale_target"] == "generated" and payload["test_sha256"] is None
    assert "dev split" in payload["evaluation"]
    # Every pair of models was compared on the same 3 examples, with McNemar and a paired CI.
    pairs = {(p["model_a"], p["model_b"]): p for p in payload["paired"]}
    assert len(pairs) == 3 and all(p["n"] == 3 for p in pairs.values())
    for p in pairs.values():
        assert p["ci_low"] <= p["difference"] <= p["ci_high"] and 0 < p["mcnemar_p"] <= 1
        assert p["both_correct"] + p["a_only"] + p["b_only"] + p["both_wrong"] == 3
    assert "Paired comparisons" in md and "McNemar p" in md
    assert payload["seed_pooled"] == [] and "Seed-averaged" not in md  # one seed: no pooling
    # Extraction covered exactly the training split of seed 0 (no dev example).
    rec_ids = {json.loads(x)["id"] for x in (tmp_path / "exp/extract/rationales.jsonl").open()}
    train_ids = {json.loads(x)["id"] for x in open(datasets_dir / "cqa/cqa_train.json")}
    assert len(rec_ids) == 6 and rec_ids <= train_ids
    dev = {json.loads(x)["id"] for x in (tmp_path / "exp/predictions-zero-shot-s0.jsonl").open()}
    assert not rec_ids & dev

    # Another plan in the same folder is refused, naming what differs.
    from distill.runs import RunError

    with pytest.raises(RunError, match="top_k"):
        run_plan(_plan(tiny_model_dir, datasets_dir, tmp_path / "exp", top_k=3))

    # A finished run recorded before a training setting existed is still reused: the setting
    # reads as its default (without that rule: "finished with other settings").
    path = tmp_path / "exp/train-standard-s0/config.json"
    record = json.loads(path.read_text())
    del record["settings"]["freeze_layers"]
    path.write_text(json.dumps(record))
    third = run_plan(plan)
    assert {m.name: m for m in third.models}["standard-s0"].cached
    # A finished stage made with another setting is refused, naming it, never reused.
    record["settings"]["lr"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"finished with other settings \(settings\.lr\)"):
        run_plan(plan)


def test_test_file_and_gold_label(tiny_model_dir, datasets_dir, tmp_path, one_thread):
    test = tmp_path / "test.jsonl"
    lines = open(datasets_dir / "cqa/cqa_train.json").read().splitlines()[-4:]
    test.write_text("\n".join(lines) + "\n")
    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp", modes=["saliency"],
                 target="gold", test_data=str(test), zero_shot=False)  # fmt: skip
    res = run_plan(plan)
    assert res.status == "finished" and [m.n for m in res.models] == [4]
    md = (tmp_path / "exp/results.md").read_text()
    assert "rationale target: gold (analysis only)" in md
    assert "| saliency | gold (analysis only) |" in md
    payload = json.loads((tmp_path / "exp/results.json").read_text())
    assert len(payload["test_sha256"]) == 64 and "test file" in payload["evaluation"]
    # Beside the test accuracy: the student's own dev accuracy and its training time.
    (model,) = payload["models"]
    summary = json.loads((tmp_path / "exp/train-saliency-s0/summary.json").read_text())
    assert model["dev_accuracy"] == summary["accuracy"] is not None
    assert model["train_seconds"] == summary["elapsed_s"] > 0
    assert "| dev accuracy | training s |" in md
    assert f"| 4 | {summary['accuracy']:.3f} | {summary['elapsed_s']:.0f} |" in md
    assert (tmp_path / "exp/predictions-saliency-s0.jsonl").read_text().count("\n") == 4


def test_test_file_repeating_training_records_is_refused(tiny_model_dir, datasets_dir,
                                                        tmp_path):  # fmt: skip
    """A test record equal to a training or dev record in content (case and spacing aside)
    is refused before any folder or model: ids alone cannot show it (e-SNLI's are line
    numbers)."""
    lines = open(datasets_dir / "cqa/cqa_train.json").read().splitlines()
    repeat = json.loads(lines[1])  # record 2 of the file: inside train+dev (9 records)
    repeat["id"] = "another-id"
    repeat["question"] = "  " + repeat["question"].upper() + " "
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join([lines[-1], json.dumps(repeat)]) + "\n")
    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp", test_data=str(test))
    with pytest.raises(PlanError, match=r"1 of the 2 records .*\(line 2 = .* line 2\)"):
        run_plan(plan, teacher_loader=lambda spec: pytest.fail("loaded a model"))
    assert not (tmp_path / "exp").exists()


def test_two_seeds_give_seed_averaged_comparisons(tiny_model_dir, datasets_dir, tmp_path,
                                                  one_thread):  # fmt: skip
    test = tmp_path / "test.jsonl"
    lines = open(datasets_dir / "cqa/cqa_train.json").read().splitlines()[-4:]
    test.write_text("\n".join(lines) + "\n")
    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp", modes=["standard"],
                 seeds=[0, 1], test_data=str(test))  # fmt: skip
    res = run_plan(plan)
    assert [m.name for m in res.models] == ["zero-shot-s0", "standard-s0", "standard-s1"]
    payload = json.loads((tmp_path / "exp/results.json").read_text())
    (pooled,) = payload["seed_pooled"]
    assert (pooled["model_a"], pooled["model_b"]) == ("zero-shot", "standard")
    assert (pooled["seeds_a"], pooled["seeds_b"], pooled["n"]) == (1, 2, 4)
    accs = [m.accuracy for m in res.models]
    assert pooled["accuracy_b"] == pytest.approx((accs[1] + accs[2]) / 2)
    assert pooled["per_seed"] == [pytest.approx(accs[0] - accs[1]),
                                  pytest.approx(accs[0] - accs[2])]  # fmt: skip
    md = (tmp_path / "exp/results.md").read_text()
    assert "Seed-averaged comparisons" in md and "cannot be paired" not in md
    md = (tmp_path / "exp/results.md").read_text()
    assert "Seed-averaged comparisons" in md and "| zero-shot | standard | 4 | 1/2 |" in md


@pytest.mark.parametrize(
    "change, msg",
    [
        ({"modes": []}, "at least one mode"),
        ({"modes": ["magic"]}, "unknown mode"),
        ({"target": "label"}, "target"),
        ({"modes": ["hint"], "target": "gold"}, "teacher's own answer"),
        ({"top_k": 0}, "top k"),
        ({"train_size": 0}, "train size"),
        ({"batch_size": -2}, "batch size"),
        ({"lr": float("inf")}, "learning rate"),
        ({"seeds": []}, "seeds"),
        ({"method": "magic"}, "attribution method"),
    ],
)
def test_bad_plans_leave_nothing(tmp_path, datasets_dir, change, msg):
    plan = _plan("unused", datasets_dir, tmp_path / "exp", **change)
    with pytest.raises(PlanError, match=msg):
        validate(plan)
    with pytest.raises(PlanError, match=msg):
        run_plan(plan)
    assert not (tmp_path / "exp").exists()


def test_presets(tmp_path):
    plan = make_plan("esnli", str(tmp_path), preset="cpu", student="s")
    assert plan.target == "generated" and plan.train_size and plan.epochs
    assert plan.data.endswith("esnli/esnli_valid.json")
    assert make_plan("cqa", str(tmp_path), preset="gpu").train_size is None
    # the cpu preset's training set is sized per task (the same compute for each)
    assert make_plan("esnli", str(tmp_path), preset="cpu").train_size == 256
    assert make_plan("cqa", str(tmp_path), preset="cpu").train_size == 208
    assert make_plan("cqa", str(tmp_path), preset="cpu", train_size=40).train_size == 40
    with pytest.raises(PlanError, match="preset"):
        make_plan("cqa", str(tmp_path), preset="tpu")


def test_hint_mode_uses_the_teachers_own_answer(tiny_model_dir, datasets_dir, tmp_path, one_thread):
    """Defect 3: hints at evaluation come from a generated-target extraction of the evaluation
    examples themselves, checked before use; the result states the hint coverage."""
    from distill.rationales import read_meta, read_records

    test = tmp_path / "test.jsonl"
    lines = open(datasets_dir / "cqa/cqa_train.json").read().splitlines()[-3:]
    test.write_text("\n".join(lines) + "\n")
    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp", modes=["hint"],
                 test_data=str(test), zero_shot=False)  # fmt: skip
    res = run_plan(plan)
    assert res.status == "finished"
    (model,) = res.models
    assert model.hint_coverage == 1.0 and model.n == 3
    assert read_meta(tmp_path / "exp/extract-eval").target == "generated"
    test_ids = {json.loads(x)["id"] for x in lines}
    assert {r["id"] for r in read_records(tmp_path / "exp/extract-eval")} == test_ids
    # The training extraction covered train and dev (dev hints for the dev evaluation).
    assert len(read_records(tmp_path / "exp/extract")) == 9


def test_train_settings_override_the_stage_defaults(tmp_path, datasets_dir):
    from distill.pipeline import train_config

    plan = make_plan("cqa", str(tmp_path / "exp"), preset="cpu",
                     data=str(datasets_dir / "cqa/cqa_train.json"),
                     train_settings={"eval_every": 5, "alpha": 0.3})  # fmt: skip
    cfg = train_config(plan, "saliency", 0)
    assert cfg.eval_every == 5 and cfg.alpha == 0.3 and cfg.save_every == 25
    # The cpu preset's recipe reaches every stage: frozen embeddings (dev search), 4 epochs.
    assert cfg.freeze_embeddings is True and cfg.epochs == 4.0 and cfg.chat_template is False
    with pytest.raises(PlanError, match="unknown training setting.*colour"):
        validate(make_plan("cqa", str(tmp_path / "x"), train_settings={"colour": 1}))


def test_a_stored_evaluation_is_reused_only_for_the_same_inputs(tiny_model_dir, datasets_dir,
                                                               tmp_path, one_thread):  # fmt: skip
    import copy

    from distill.data import load_task
    from distill.pipeline import _evaluate_stage
    from explain.models import load_model

    plan = _plan(tiny_model_dir, datasets_dir, tmp_path / "exp")
    (tmp_path / "exp").mkdir()
    exs = load_task("cqa", plan.data, limit=4)
    dev, train = exs[:2], exs[2:]

    def run(examples, cap_from):
        return _evaluate_stage(plan, "zs", tiny_model_dir, "standard", examples, None, "dev",
                               load_model, None, cap_from)[1]  # fmt: skip

    assert run(dev, train) is False and run(dev, train) is True
    edited = copy.deepcopy(dev)
    edited[0].label = dev[1].label  # same count, same ids: other gold
    assert run(edited, train) is False
    assert run(edited, train[:1]) is False  # another cap source


def test_zero_shot_baseline_in_both_prompt_formats(tiny_model_dir, datasets_dir, tmp_path,
                                                    one_thread):  # fmt: skip
    """Students trained without the chat template are compared with the untrained student in
    their own format and in its chat template (the stronger baseline of the two); a model
    without a chat template gets only the first."""
    import shutil

    chat_dir = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model_dir, chat_dir)
    cfg_path = chat_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}<s>"
    cfg_path.write_text(json.dumps(cfg))
    settings = {"chat_template": False}
    for student, want in ((str(chat_dir), {"zero-shot", "zero-shot-chat", "standard"}),
                          (tiny_model_dir, {"zero-shot", "standard"})):  # fmt: skip
        out = tmp_path / f"exp-{len(want)}"
        plan = _plan(tiny_model_dir, datasets_dir, out, student=student, modes=["standard"],
                     train_settings=settings)  # fmt: skip
        res = run_plan(plan)
        assert {m.mode for m in res.models} == want
        chats = {m.mode: json.loads((out / f"eval-{m.mode}-s0.json").read_text())["result"]
                 ["settings"]["chat_template"] for m in res.models
                 if m.mode.startswith("zero")}  # fmt: skip
        assert chats["zero-shot"] is False
        if "zero-shot-chat" in want:
            assert chats["zero-shot-chat"] is True
        train_cfg = json.loads((out / "train-standard-s0/config.json").read_text())
        assert train_cfg["settings"]["chat_template"] is False
