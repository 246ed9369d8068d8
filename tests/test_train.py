"""Student training: formatting, loss masking, the four modes, checkpoints and exact resume."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import tiny
import torch

from distill import train as tr
from distill.data import Example, load_task
from distill.runs import RunDir, RunError
from explain.models import LoadedModel, load_model, prepare

# A tiny memorisable CQA problem: 10 records (2 go to dev), words from tiny.CORPUS.
ITEMS = tiny.CQA_ITEMS


pytestmark = pytest.mark.usefixtures("one_thread")


def write_cqa(folder: Path) -> Path:
    """cqa.json, rationales.jsonl (first 3 question words) and PaLM-style llm/ files."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "cqa.json").open("w") as f:
        for i, (q, c, a) in enumerate(ITEMS):
            f.write(json.dumps({"id": f"q{i}", "question": q, "choices": c, "answer": a}) + "\n")
    with (folder / "rationales.jsonl").open("w") as f:
        for i, (q, _c, _a) in enumerate(ITEMS):
            words = [{"text": w, "start": 0, "end": 0, "score": 1.0} for w in q.split()[:3]]
            f.write(json.dumps({"id": f"q{i}", "rationale": words}) + "\n")
    (folder / "llm").mkdir(exist_ok=True)
    cot = [f"A {a} fits {q.lower()} So the answer is {a}.\n\nQ: more" for q, _c, a in ITEMS]
    (folder / "llm" / "train_CoT_0.json").write_text(json.dumps(cot))
    return folder / "cqa.json"


def tiny_loader(family: str = "llama"):
    """A model_loader returning a fresh tiny random model (grads are re-enabled by train)."""

    def load(spec, device=None, dtype=None, use_chat_template=True, **kwargs) -> LoadedModel:
        model = tiny.tiny_llama(0) if family == "llama" else tiny.tiny_t5(0)
        return prepare(spec, model, tiny.tiny_tokenizer(), torch.device("cpu"))

    return load


def config(tmp_path: Path, mode: str = "standard", name: str = "run", **kw) -> tr.TrainConfig:
    data = write_cqa(tmp_path / "data")
    settings = dict(
        student="tiny",
        task="cqa",
        data=str(data),
        mode=mode,
        rationales=str(tmp_path / "data") if mode in ("saliency", "hint") else None,
        steps=30,
        batch_size=8,
        lr=1e-2,
        schedule="constant",
        dev_size=2,
        eval_every=0,
        save_every=0,
        out=str(tmp_path / name),
        max_new_tokens=4,
    )
    settings.update(kw)
    return tr.TrainConfig(**settings)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).metrics() if "loss" in r]


def example(i: int = 0) -> Example:
    q, c, a = ITEMS[i]
    return Example(
        id=f"q{i}",
        task="cqa",
        fields={"question": q, "choices": c},
        label=a,
        options=c,
        llm_rationale="because plates go there",
    )


# ---------------------------------------------------------------------------------------------
# Formatting and masking


def test_format_example_modes():
    lm = tiny.loaded("llama")
    ex = example()
    src, tgt = tr.format_example(ex, "standard", "predict", None, lm)
    assert src.startswith("Question: Where would") and src.endswith("\nAnswer:")
    assert tgt == "cupboard"
    src, tgt = tr.format_example(ex, "saliency", "predict", ["plate", "washing"], lm)
    assert src.startswith("predict: Question:") and tgt == "cupboard"
    src, tgt = tr.format_example(ex, "saliency", "explain", ["plate", "washing"], lm)
    assert src.startswith("explain: Question:") and src.endswith("\nExplanation:")
    assert tgt == "plate washing"
    _, tgt = tr.format_example(ex, "dss", "explain", None, lm)
    assert tgt == "because plates go there"
    src, _ = tr.format_example(ex, "hint", "predict", ["plate", "washing"], lm)
    assert "\nHint: plate washing\nAnswer:" in src and not src.startswith("predict")
    src, _ = tr.format_example(ex, "hint", "predict", None, lm)  # evaluation without hints
    assert "Hint" not in src
    src, _ = tr.format_example(ex, "standard", "predict", None, tiny.loaded("t5"))
    assert src.endswith("correct choice.")  # encoder-decoder: no cue
    with pytest.raises(tr.TrainError):
        tr.format_example(ex, "saliency", "explain", None, lm)
    with pytest.raises(tr.TrainError):
        tr.format_example(ex, "standard", "explain", None, lm)


def test_loss_masking_decoder_only():
    lm = tiny.loaded("llama")
    src, tgt = tr.format_example(example(), "standard", "predict", None, lm)
    f = tr.build_features(lm, src, tgt, max_len=256)
    prompt = tr.encode_source(lm, src)
    target = lm.tokenizer(" " + tgt, add_special_tokens=False)["input_ids"] + [
        lm.tokenizer.eos_token_id
    ]
    assert f.input_ids == prompt + target
    assert f.labels == [-100] * len(prompt) + target
    short = tr.build_features(lm, "Question: x\nAnswer:", "sink", max_len=256)
    batch = tr.collate_features([f, short], lm.tokenizer.pad_token_id, encoder_decoder=False)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert labels.shape == batch["input_ids"].shape
    row = labels[1]
    n_prompt = len(short.input_ids) - (len(short.labels) - short.labels.count(-100))
    assert (row[:n_prompt] == -100).all()  # prompt
    assert (row[len(short.input_ids) :] == -100).all()  # padding
    assert (row[n_prompt : len(short.input_ids)] != -100).all()  # the target + EOS
    assert mask[1].sum() == len(short.input_ids)


def test_loss_masking_encoder_decoder():
    lm = tiny.loaded("t5")
    src, tgt = tr.format_example(example(), "saliency", "explain", ["plate", "washing"], lm)
    f = tr.build_features(lm, src, tgt, max_len=256)
    target = lm.tokenizer(tgt, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
    assert f.labels == target and -100 not in f.labels
    assert f.input_ids == tr.encode_source(lm, src)
    other = tr.build_features(lm, "predict: x", "sink", max_len=256)
    batch = tr.collate_features([f, other], lm.tokenizer.pad_token_id, encoder_decoder=True)
    assert batch["labels"].shape == (2, len(target))
    assert batch["labels"][1, len(other.labels) :].eq(-100).all()
    assert batch["labels"][1, : len(other.labels)].tolist() == other.labels


def test_truncation_keeps_target_and_cue():
    lm = tiny.loaded("llama")
    src, tgt = tr.format_example(example(), "standard", "predict", None, lm)
    f = tr.build_features(lm, src, tgt, max_len=16)
    assert len(f.input_ids) == 16
    target = [t for t in f.labels if t != -100]
    assert target[-1] == lm.tokenizer.eos_token_id
    cue = lm.tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    n = len(f.input_ids) - len(target)
    assert f.input_ids[n - len(cue) : n] == cue  # the prompt lost its beginning, not its end


def test_batch_order_is_deterministic_and_covers_each_epoch():
    a, b = tr.BatchOrder(10, 4, seed=3), tr.BatchOrder(10, 4, seed=3)
    assert a.per_epoch == 3
    first = [a.batch(g) for g in range(3)]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    # Any access order gives the same batches (resumption jumps straight to batch g).
    assert [b.batch(g) for g in reversed(range(6))] == [a.batch(g) for g in reversed(range(6))]
    assert [a.batch(g) for g in range(3, 6)] != first  # a new epoch reshuffles
    assert [tr.BatchOrder(10, 4, seed=4).batch(g) for g in range(3)] != first


def test_load_rationale_map(tmp_path):
    f = tmp_path / "rationales.jsonl"
    f.write_text(
        json.dumps(
            {
                "id": "a",
                "rationale": [
                    {"text": "plate", "start": 0, "end": 5, "score": 1},
                    {"text": "sink", "start": 9, "end": 13, "score": 0.5},
                ],
            }
        )
        + "\n"
        + json.dumps({"id": 7, "rationale": ["x", "y"]})
        + "\n"
        + '{"id": "torn", "ra'
    )
    got = tr.load_rationale_map(tmp_path)
    assert got == {"a": ["plate", "sink"], "7": ["x", "y"]}
    assert tr.load_rationale_map(f) == got
    f.write_text('{"bad": 1}\n{"id": "a", "rationale": []}\n')
    with pytest.raises(tr.TrainError, match="line 1"):
        tr.load_rationale_map(f)
    with pytest.raises(tr.TrainError, match="no rationales"):
        tr.load_rationale_map(tmp_path / "missing")


def test_config_validation(tmp_path):
    with pytest.raises(tr.TrainError, match="unknown mode"):
        tr.train(config(tmp_path, mode="magic"), model_loader=tiny_loader())
    with pytest.raises(tr.TrainError, match="needs rationales"):
        tr.train(config(tmp_path, mode="saliency", rationales=None), model_loader=tiny_loader())
    with pytest.raises(tr.TrainError, match="alpha"):
        tr.train(config(tmp_path, alpha=1.5), model_loader=tiny_loader())
    assert not (tmp_path / "run").exists()  # nothing was created


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize(
    "family,mode",
    [("llama", "standard"), ("llama", "saliency"), ("llama", "dss"), ("llama", "hint"),
     ("t5", "standard"), ("t5", "saliency")],
)  # fmt: skip
def test_each_mode_reduces_loss(tmp_path, family, mode):
    summary = tr.train(config(tmp_path, mode), model_loader=tiny_loader(family))
    assert summary["status"] == "finished" and summary["steps"] == 30
    ls = losses(tmp_path / "run")
    assert len(ls) == 30
    assert ls[-1] < 0.4 * ls[0], ls
    recs = [r for r in RunDir(tmp_path / "run").metrics() if "loss" in r]
    if mode in ("saliency", "dss"):
        assert all(r["rationale_loss"] is not None for r in recs)
        r = recs[-1]
        assert r["loss"] == pytest.approx(0.5 * r["label_loss"] + 0.5 * r["rationale_loss"])
    else:
        assert all(r["rationale_loss"] is None for r in recs)
    assert {"step", "lr", "examples_per_s", "elapsed", "eta_s"} <= set(recs[0])
    if mode == "hint":
        assert "accuracy_no_hint" in summary


def test_memorised_model_is_saved_and_loadable(tmp_path):
    summary = tr.train(
        config(tmp_path, steps=40, dev_size=1, batch_size=9), model_loader=tiny_loader()
    )
    run = RunDir(tmp_path / "run")
    assert run.is_finished and (run.model_dir / "model.safetensors").is_file()
    assert not run.checkpoints()  # the final model replaces them
    assert summary["n"] == 1 and 0.0 <= summary["ci_low"] <= summary["ci_high"] <= 1.0
    loaded = load_model(str(run.model_dir), device="cpu")
    assert loaded.family == "decoder-only"
    from distill.evaluate import evaluate

    train_ex = load_task("cqa", tmp_path / "data" / "cqa.json")
    result = evaluate(run.path, "cqa", train_ex, max_new_tokens=4, choices=False)
    assert result.accuracy >= 0.7  # the 9 training questions are (mostly) memorised
    cfg = run.config()
    assert cfg["seed"] == 0 and cfg["data"]["sha256"] and cfg["versions"]["torch"]
    assert cfg["settings"]["mode"] == "standard" and cfg["models"]["student"] == "tiny"
    pred_lines = (run.path / "dev_predictions.jsonl").read_text().splitlines()
    assert len(pred_lines) == 1 and "choice_prediction" in json.loads(pred_lines[0])


def test_finished_run_is_never_overwritten(tmp_path):
    cfg = config(tmp_path, steps=2)
    tr.train(cfg, model_loader=tiny_loader())
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(RunError, match="finished"):
        tr.train(cfg, model_loader=tiny_loader())
    assert (tmp_path / "run" / "summary.json").read_text() == before


def test_periodic_dev_eval_and_checkpoints(tmp_path):
    seen = []
    cfg = config(tmp_path, steps=6, eval_every=2, save_every=2, keep_checkpoints=2)
    stop = threading.Event()

    def progress(rec):
        seen.append(rec)
        if rec.get("step") == 5 and "loss" in rec:
            stop.set()

    out = tr.train(cfg, progress=progress, stop=stop, model_loader=tiny_loader())
    assert out["status"] == "stopped" and out["step"] == 5
    run = RunDir(tmp_path / "run")
    assert [s for s, _ in run.checkpoints()] == [4, 5]  # pruned to keep_checkpoints=2
    dev = [r for r in run.metrics() if "dev_accuracy" in r]
    assert [r["step"] for r in dev] == [2, 4]
    assert any(r.get("dev_accuracy") is not None for r in seen)
    assert run.status()["status"] == "stopped" and not run.is_finished
    ck = run.checkpoint_dir(5)
    assert {p.name for p in ck.iterdir()} == {
        "model.safetensors",
        "state.safetensors",
        "state.json",
    }


def _params(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("family,mode,accum", [("llama", "saliency", 2), ("t5", "standard", 1)])
def test_stop_and_resume_matches_uninterrupted(tmp_path, family, mode, accum):
    kw = dict(
        steps=10,
        batch_size=4,
        grad_accum=accum,
        eval_every=3,
        save_every=4,
        lr=5e-3,
        schedule="linear",
        warmup=2,
    )
    tr.train(config(tmp_path, mode, name="full", **kw), model_loader=tiny_loader(family))

    cfg = config(tmp_path, mode, name="resumed", **kw)
    stop = threading.Event()

    def progress(rec):
        if rec.get("step") == 6 and "loss" in rec:
            stop.set()

    out = tr.train(cfg, progress=progress, stop=stop, model_loader=tiny_loader(family))
    assert out["status"] == "stopped"
    seen = []
    summary = tr.train(cfg, progress=seen.append, model_loader=tiny_loader(family))
    assert summary["status"] == "finished" and summary["steps"] == 10
    assert any(r.get("message") == "resumed from step 6" for r in seen)
    assert [r["step"] for r in seen if "loss" in r] == [7, 8, 9, 10]  # steps 1-6 not redone

    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    full, resumed = _params(tmp_path / "full"), _params(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.allclose(full[k], resumed[k], atol=0, rtol=0), k


def test_kill_then_resume_from_last_checkpoint(tmp_path):
    kw = dict(steps=8, batch_size=4, save_every=3, lr=5e-3)
    tr.train(config(tmp_path, name="full", **kw), model_loader=tiny_loader())
    cfg = config(tmp_path, name="killed", **kw)

    def crash(rec):
        if rec.get("step") == 7 and "loss" in rec:
            raise RuntimeError("power cut")  # like a kill after step 7: last checkpoint is 6

    with pytest.raises(RuntimeError):
        tr.train(cfg, progress=crash, model_loader=tiny_loader())
    run = RunDir(tmp_path / "killed")
    assert run.status()["status"] == "failed" and run.latest_checkpoint()[0] == 6
    assert len(losses(run.path)) == 7  # step 7 was logged before the "kill"
    seen = []
    tr.train(cfg, progress=seen.append, model_loader=tiny_loader())
    assert [r["step"] for r in seen if "loss" in r] == [7, 8]
    assert losses(run.path) == losses(tmp_path / "full")
    full, again = _params(tmp_path / "full"), _params(run.path)
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_resume_with_other_settings_is_refused(tmp_path):
    stop = threading.Event()
    stop.set()
    tr.train(config(tmp_path, steps=5), stop=stop, model_loader=tiny_loader())
    with pytest.raises(RunError, match=r"other settings \(settings\.lr\)"):
        tr.train(config(tmp_path, steps=5, lr=1e-3), model_loader=tiny_loader())


def test_model_load_error_leaves_no_run_folder(tmp_path):
    from explain.errors import ModelSpecError

    def bad_loader(spec, **kwargs):
        raise ModelSpecError(f"unknown model spec {spec!r}")

    with pytest.raises(ModelSpecError):
        tr.train(config(tmp_path), model_loader=bad_loader)
    assert not (tmp_path / "run").exists()  # the corrected command may reuse the name


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    lm = tiny.loaded("llama")
    model = lm.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = config(tmp_path, steps=10, warmup=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, tr.lr_lambda(cfg, 10))
    for _ in range(2):
        model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
        opt.step()
        sched.step()
    run = RunDir(tmp_path / "ck")
    run.path.mkdir()
    torch.manual_seed(123)
    path = tr.save_checkpoint(run, 2, model, opt, sched, {"elapsed": 1.5})
    expected = torch.rand(3)

    model2 = tiny.tiny_llama(1).train()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, tr.lr_lambda(cfg, 10))
    torch.manual_seed(0)
    meta = tr.load_checkpoint(path, model2, opt2, sched2)
    assert meta["step"] == 2 and meta["elapsed"] == 1.5
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k])
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
    assert sched.state_dict()["last_epoch"] == sched2.state_dict()["last_epoch"] == 2


def test_rationale_source_records_the_extraction_settings(tmp_path):
    ext = RunDir(tmp_path / "ext")
    ext.create({"kind": "extract", "task": "cqa", "teacher": "big", "top_k": 3})
    (ext.path / "rationales.jsonl").write_text('{"id": "q0", "rationale": ["plate"]}\n')
    src = tr.rationale_source(ext.path)
    assert src["settings"]["teacher"] == "big" and src["settings"]["top_k"] == 3
    assert len(src["sha256"]) == 64 and "versions" not in src["settings"]
